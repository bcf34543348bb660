"""The grid operator's controls (IEEE 2030.5) at ``GRID_OPERATOR`` priority.

The 2030.5 client publishes the utility's controls in force on ``{site}/grid/controls``
(:mod:`gridpilot.control.grid_controls`); the controller service puts the last good message
into the :class:`~gridpilot.control.base.Snapshot`, and this controller turns it into setpoint
requests and constraints that outrank peak shaving, economics and comfort (only an
operator's manual override and safety rank higher).

Limits are bounds, targets are targets. A limit (export, import, generation, load, max)
becomes a :class:`~gridpilot.control.base.Constraint` at ``GRID_OPERATOR`` priority on the
point it bounds -- the least the battery must charge, the most the PV may deliver -- plus a
request of the bounded value at ``COMFORT`` priority that moves the point when no other
controller asks for it. A controller that does ask keeps the point within the bound: self-
consumption that charges more than the export limit needs, or peak shaving, is not held
back, while a wish that would break the limit is clipped to it (the engine reports it as
``limited_by: grid_operator``). Targets (opModFixedW, opModTargetW, a disconnect, the power
factor) are ``GRID_OPERATOR`` requests and win the point outright.

What each mode does (a mode whose point is not configured is reported, not applied):

* ``opModExpLimW`` — keep the export at the grid meter under the limit: the battery charges
  with the surplus first, then the PV inverter is curtailed. This is the PV export
  controller's own loop (:class:`~gridpilot.control.pv_export.PvExportController`), run with
  the utility's limit at this priority: curtail at once to the middle of the hysteresis band,
  release slowly, fail safe on stale meter or PV readings.
* ``opModImpLimW`` — keep the import under the limit: the battery discharges at least what
  exceeds it, and may not charge beyond the import headroom.
* ``opModGenLimW`` — the PV limit is capped at the limit (in % of its rating) and the battery's
  discharge at what the PV leaves of it.
* ``opModLoadLimW`` — the battery may not charge faster than the limit (a constraint).
* ``opModMaxLimW`` (% of ``rated_power_w``) — the PV limit is capped.
* ``opModFixedW`` (% of ``rated_power_w``, positive = discharge) and ``opModTargetW`` (W) —
  the battery's setpoint, or, without a battery, the PV limit (non-negative values only).
* ``opModConnect`` / ``opModEnergize`` false — PV limit 0 %, battery 0 W (both held by
  constraints) and ``connect`` = 0 where the inverter has a connect point; true again —
  ``connect`` = 1 once and the PV limit released at the ramp.
* ``opModFixedPFInjectW`` — the ``power_factor`` point (signed: positive = over-excited).

The curve modes (volt-var, volt-watt, freq-watt, ...) are passed through in the snapshot for
the IEEE 1547 functions and reported here as not applied.

Ending. When a mode ends, what it drove is released: the PV limit at the ramp (the export
loop runs on with no limit until it reaches 100 %), the battery with one 0 W request at
``COMFORT`` priority, so that any other controller that wants the battery wins it at once
instead of waiting a cycle behind a 0 W grid-operator request.

Staleness. A message past its ``valid_until`` is stale (the client stopped, the broker lost
it): ``on_stale`` says what then holds — ``defaults`` (the DefaultDERControl's modes, the
utility's own fallback; the default), ``keep_last`` (everything, events included) or
``none``. Entering and leaving it is an event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridpilot.control.base import (
    Constraint,
    Decision,
    Forecasts,
    PointField,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.grid_controls import (
    CURVE_MODES,
    ControlMode,
    GridControls,
    PowerFactor,
)
from gridpilot.control.pv_export import FULL_PCT, PvExportController, PvExportParams, PvExportState

NAME = "grid_operator"
BOUND_PRIORITY = Priority.COMFORT
"""Priority of the requests that only move a point within the utility's bound (the bound is
a GRID_OPERATOR constraint): any other controller that asks for the point wins it, and is
clipped to the bound -- so self-consumption charging more than the export limit needs, or
peak shaving, keeps the battery, while a wish against the limit cannot pass."""
Point = PointField


class GridOperatorParams(BaseModel):
    """Which points enforce the utility's controls (``control.grid_operator``). Powers in W."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grid_power: Point = PointRef("grid_meter", "active_power_w")
    """Grid connection meter, W, positive = import."""
    pv_power: Point | None = PointRef("pv_inverter", "ac_power_w")
    """Measured PV AC output, W; null = no PV."""
    pv_limit: Point | None = PointRef("pv_inverter", "power_limit_pct")
    """Writable PV active power limit, % of ``pv_rated_power_w``; null = no PV."""
    pv_rated_power_w: float | None = Field(default=None, gt=0.0)
    """The PV inverter's AC rating (100 % of ``pv_limit``); needed with ``pv_limit``."""
    rated_power_w: float | None = Field(default=None, gt=0.0)
    """The DER's rated power (2030.5 setMaxW): 100 % of opModFixedW and opModMaxLimW;
    default ``pv_rated_power_w``."""
    battery_soc: Point | None = None
    """Battery state of charge, % (e.g. ``battery.soc_pct``); null = no battery."""
    battery_power: Point | None = None
    """Battery AC power, W, positive = discharge."""
    battery_setpoint: Point | None = None
    """Writable battery setpoint, W, positive = discharge."""
    battery_available_charge: Point | None = None
    """Optional: the charge power the battery offers now, W."""
    battery_max_charge_w: float = Field(default=0.0, ge=0.0)
    battery_max_discharge_w: float = Field(default=0.0, ge=0.0)
    battery_soc_max_pct: float = Field(default=95.0, gt=0.0, le=100.0)
    """No charging for the export limit at or above this SoC, %."""
    connect: Point | None = None
    """Optional writable connect point of the inverter: 1 = connect, 0 = disconnect."""
    power_factor: Point | None = None
    """Optional writable fixed power factor setpoint, signed: positive = over-excited
    (injecting reactive power), negative = under-excited."""
    margin_w: float = Field(default=300.0, ge=0.0)
    """The export and import limits are aimed at this far inside, W (meter error, noise)."""
    hysteresis_w: float = Field(default=400.0, gt=0.0)
    """Band above the export floor in which the PV limit is held, W."""
    release_rate_pct_per_s: float = Field(default=1.0, gt=0.0)
    """How fast the PV limit is released, % of its rating per second."""
    max_age_s: float = Field(default=5.0, gt=0.0)
    """Readings older than this are stale (the export limit then fails safe)."""
    min_site_load_w: float = Field(default=0.0, ge=0.0)
    """Load the site never goes below, W (export-limit fail-safe)."""
    battery_retry_s: float = Field(default=60.0, gt=0.0)
    battery_release_pct_per_s: float = Field(default=2.0, gt=0.0)
    """How fast the least charging the export limit asks of the battery may fall, % of
    ``battery_max_charge_w`` per second (it rises at once): the battery's own asymmetry,
    like the PV limit's. Without it, a battery that is read a moment before or after the
    meter makes the needed charge swing between full and nothing from cycle to cycle."""
    self_consumption: bool = False
    """During an export limit, False: the battery takes only what would exceed the limit;
    True: every exported watt (as the PV export controller's self-consumption)."""
    on_stale: Literal["defaults", "keep_last", "none"] = "defaults"
    """What holds once the message is past its ``valid_until``: the DefaultDERControl's modes,
    all the last modes, or none."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.pv_limit is not None and (self.pv_power is None or self.pv_rated_power_w is None):
            raise ValueError(
                "pv_limit needs pv_power and pv_rated_power_w: set pv_rated_power_w (the PV "
                "inverter's AC rating, W), or pv_limit: null for a site without PV"
            )
        battery = (self.battery_soc, self.battery_power, self.battery_setpoint)
        if any(b is not None for b in battery) and any(b is None for b in battery):
            raise ValueError(
                "battery_soc, battery_power and battery_setpoint go together: set all or none"
            )
        if self.battery_setpoint is not None and (
            self.battery_max_charge_w <= 0.0 or self.battery_max_discharge_w <= 0.0
        ):
            raise ValueError("a battery needs battery_max_charge_w and battery_max_discharge_w")
        if self.margin_w < self.hysteresis_w / 2.0:
            raise ValueError(
                f"margin_w ({self.margin_w}) must be at least hysteresis_w / 2 "
                f"({self.hysteresis_w / 2.0})"
            )
        return self

    @property
    def der_rated_w(self) -> float | None:
        return self.rated_power_w or self.pv_rated_power_w

    def export_params(self) -> PvExportParams | None:
        """The export loop's parameters at this priority (limit set per cycle)."""
        if self.pv_limit is None or self.pv_power is None or self.pv_rated_power_w is None:
            return None
        return PvExportParams(
            grid_power=self.grid_power,
            pv_power=self.pv_power,
            pv_limit=self.pv_limit,
            pv_rated_power_w=self.pv_rated_power_w,
            export_limit_w=0.0,
            margin_w=self.margin_w,
            hysteresis_w=self.hysteresis_w,
            release_rate_pct_per_s=self.release_rate_pct_per_s,
            max_age_s=self.max_age_s,
            min_site_load_w=self.min_site_load_w,
            battery_soc=self.battery_soc,
            battery_power=self.battery_power,
            battery_setpoint=self.battery_setpoint,
            battery_available_charge=self.battery_available_charge,
            battery_max_charge_w=self.battery_max_charge_w,
            battery_soc_max_pct=self.battery_soc_max_pct,
            battery_retry_s=self.battery_retry_s,
            self_consumption=self.self_consumption,
            priority=Priority.GRID_OPERATOR,
            limit_priority=Priority.GRID_OPERATOR,
        )


@dataclass(frozen=True, slots=True)
class GridOperatorState:
    export: PvExportState = field(default_factory=PvExportState)
    """The export loop's state (also carries the PV limit last requested, for the release)."""
    battery_requested: bool = False
    connect_value: float | None = None
    """The last value requested on ``connect``."""
    power_factor_requested: bool = False
    applied: tuple[str, ...] = ()
    """Descriptions of the modes applied in the last cycle (an event when they change)."""
    not_applied: tuple[str, ...] = ()
    stale: bool = False
    charge_floor_w: float = 0.0
    """The least charging the export limit asked of the battery in the last cycle, W."""


@dataclass(slots=True)
class _Cycle:
    """What one cycle gathers, piece by piece."""

    snapshot: Snapshot
    modes: dict[str, ControlMode]
    off: tuple[ControlMode, ...]
    """opModConnect / opModEnergize false: everything to 0."""
    requests: list[SetpointRequest] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)
    charge_w: float = 0.0
    """The least the battery must charge for the export limit this cycle, W."""
    pv_next_w: float | None = None
    """The PV output expected under this cycle's limit, W."""


@dataclass(slots=True)
class _Bounds:
    """The battery this cycle: the bounds the utility's limits put on its setpoint, and the
    value to request (at ``priority``) so that it moves when no one else asks for it."""

    lo: float = -math.inf
    hi: float = math.inf
    desired: float | None = None
    priority: Priority = BOUND_PRIORITY
    reasons: list[str] = field(default_factory=list)


class GridOperatorController:
    """Turns the utility's controls in force into requests and constraints."""

    def __init__(self, params: GridOperatorParams, name: str = NAME) -> None:
        self._params = params
        self._name = name
        export = params.export_params()
        self._export = export
        # The release: a limit the loop can never reach, and no charging of its own.
        self._release = (
            None
            if export is None
            else PvExportController(
                export.model_copy(
                    update={
                        "export_limit_w": export.pv_rated_power_w * 1000.0,
                        "self_consumption": False,
                    }
                ),
                name,
            )
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def priority(self) -> Priority:
        return Priority.GRID_OPERATOR

    @property
    def params(self) -> GridOperatorParams:
        return self._params

    def initial_state(self) -> GridOperatorState:
        return GridOperatorState()

    def decide(
        self, snapshot: Snapshot, state: GridOperatorState, now: datetime, forecasts: Forecasts
    ) -> Decision[GridOperatorState]:
        events: list[str] = []
        controls, stale = self._in_force(snapshot.grid_controls, state, now, events)
        modes = dict(controls.modes) if controls is not None else {}
        off = tuple(
            m
            for n in ("opModConnect", "opModEnergize")
            if (m := modes.get(n)) is not None and m.value is False
        )
        c = _Cycle(snapshot, modes, off, events=events)
        c.metrics["controls_in_force_count"] = float(len(modes))
        c.metrics["controls_stale_state"] = float(stale)
        c.applied.extend(m.describe() for m in modes.values() if m.value is True)

        export_state = self._pv(c, state, now, forecasts)
        battery_requested = self._battery(c, state)
        connect_value = self._connect(c, state)
        pf_requested = self._power_factor(c, state)
        self._unsupported(c, controls)

        applied = tuple(dict.fromkeys(c.applied))
        not_applied = tuple(dict.fromkeys(c.not_applied))
        if applied != state.applied:
            if applied:
                c.events.append("utility controls in force: " + "; ".join(applied))
            else:
                c.events.append("no utility control in force any more: " + "; ".join(state.applied))
        if not_applied != state.not_applied and not_applied:
            c.events.append("utility controls not applied: " + "; ".join(not_applied))
        c.metrics["controls_applied_count"] = float(len(applied))
        return Decision(
            state=GridOperatorState(
                export=export_state,
                battery_requested=battery_requested,
                connect_value=connect_value,
                power_factor_requested=pf_requested,
                applied=applied,
                not_applied=not_applied,
                stale=stale,
                charge_floor_w=c.charge_w,
            ),
            requests=tuple(c.requests),
            constraints=tuple(c.constraints),
            metrics=c.metrics,
            events=tuple(c.events),
        )

    # ------------------------------------------------------------------ pieces

    def _in_force(
        self,
        controls: GridControls | None,
        state: GridOperatorState,
        now: datetime,
        events: list[str],
    ) -> tuple[GridControls | None, bool]:
        """The controls to apply now, and whether the message is stale."""
        if controls is None:
            return None, False
        if not controls.is_stale(now):
            if state.stale:
                events.append(f"utility controls fresh again (from {controls.source})")
            return controls, False
        policy = self._params.on_stale
        if not state.stale:
            held = {
                "defaults": "keeping only the default control's modes",
                "keep_last": "keeping all the last modes",
                "none": "applying none",
            }[policy]
            events.append(
                f"utility controls from {controls.source} stale: valid until "
                f"{controls.valid_until.isoformat()}, now {now.isoformat()}; {held} "
                "(is the 2030.5 client running?)"
            )
        if policy == "keep_last":
            return controls, True
        if policy == "defaults":
            return controls.defaults_only(), True
        return None, True

    def _pv(
        self, c: _Cycle, state: GridOperatorState, now: datetime, forecasts: Forecasts
    ) -> PvExportState:
        """The PV limit: the export loop (or its release) capped by the other modes; sets
        the least charge the export limit asks of the battery (``c.charge_w``)."""
        p = self._params
        export_state = state.export
        cap_pct, cap_reasons = self._pv_caps(c)
        export_mode = c.modes.get("opModExpLimW") if not c.off else None
        request_pct: float | None = None
        if export_mode is not None and self._export is None:
            c.not_applied.append("opModExpLimW (no pv_limit configured)")
        elif export_mode is not None and self._export is not None:
            assert isinstance(export_mode.value, float)  # noqa: S101 - a W mode is a number
            limit_w = export_mode.value
            inner = self._export.model_copy(update={"export_limit_w": limit_w})
            decision = PvExportController(inner, self._name).decide(
                c.snapshot, export_state, now, forecasts
            )
            c.applied.append(export_mode.describe())
            export_state = decision.state
            request_pct = _pv_request(decision.requests, inner.pv_limit)
            c.charge_w = self._charge_floor(decision.metrics, state, now)
            c.events.extend(decision.events)
            c.metrics["export_limit_w"] = limit_w
            if "headroom_w" in decision.metrics:
                c.metrics["export_headroom_w"] = decision.metrics["headroom_w"]
        elif self._release is not None and _curtailing(export_state) and not c.off:
            decision = self._release.decide(c.snapshot, export_state, now, forecasts)
            export_state = replace(decision.state, charge_requests_w=(0.0, 0.0))
            request_pct = _pv_request(decision.requests, self._release.params.pv_limit)

        pv_w = c.snapshot.value(p.pv_power, p.max_age_s) if p.pv_power is not None else None
        c.pv_next_w = pv_w
        rated = p.pv_rated_power_w
        if p.pv_limit is None or rated is None:
            return export_state
        final_pct = request_pct
        if cap_pct < FULL_PCT:
            final_pct = cap_pct if final_pct is None else min(final_pct, cap_pct)
        if final_pct is None:
            return export_state
        if cap_reasons and final_pct == cap_pct:
            reason = "; ".join(cap_reasons)
        elif export_mode is not None:
            reason = f"utility export limit {c.metrics['export_limit_w']:g} W"
        else:
            reason = "utility limit ended: PV limit released at the ramp"
        # A limit is a bound (the constraint); the request moves the inverter when no one
        # else asks for it. Disconnected, it is a target.
        priority = Priority.GRID_OPERATOR if c.off else BOUND_PRIORITY
        c.requests.append(SetpointRequest(p.pv_limit, final_pct, priority, self._name, reason))
        if final_pct < FULL_PCT:
            c.constraints.append(
                Constraint(p.pv_limit, Priority.GRID_OPERATOR, self._name, maximum=final_pct,
                           reason=reason)
            )  # fmt: skip
        c.metrics["pv_limit_pct"] = final_pct
        if pv_w is not None:
            c.pv_next_w = min(pv_w, final_pct / FULL_PCT * rated)
        return replace(export_state, limit_pct=final_pct, last_decided=now)

    def _charge_floor(
        self, export_metrics: Mapping[str, float], state: GridOperatorState, now: datetime
    ) -> float:
        """The least the battery must charge: what the export loop needs now, or, when that
        fell, the last floor less ``battery_release_pct_per_s`` -- up at once, down slowly."""
        p = self._params
        if export_metrics.get("fail_safe_state", 0.0):
            return 0.0  # the surplus is unknown: the export loop withdrew its request
        needed_w = export_metrics.get("battery_charge_w", 0.0)
        last = state.export.last_decided
        dt_s = 0.0 if last is None else min(max((now - last).total_seconds(), 0.0), p.max_age_s)
        fall_w = p.battery_release_pct_per_s / FULL_PCT * p.battery_max_charge_w * dt_s
        return max(needed_w, state.charge_floor_w - fall_w)

    def _pv_caps(self, c: _Cycle) -> tuple[float, list[str]]:
        """The lowest PV limit the modes other than the export limit ask for, and why."""
        cap_pct = FULL_PCT
        cap_reasons: list[str] = []
        for mode in c.modes.values():
            cap = self._pv_cap_pct(mode)
            if cap is None:
                continue
            if self._params.pv_limit is None:
                c.not_applied.append(f"{mode.name} (no pv_limit configured)")
                continue
            c.applied.append(mode.describe())
            if cap < cap_pct:
                cap_pct = cap
                cap_reasons = [mode.describe()]
        if c.off:
            return 0.0, [m.describe() for m in c.off]
        return cap_pct, cap_reasons

    def _pv_cap_pct(self, mode: ControlMode) -> float | None:
        """The PV limit a mode caps at, % of the PV rating; None if it does not cap PV."""
        p = self._params
        rated = p.pv_rated_power_w or 1.0
        der_rated = p.der_rated_w or rated
        has_battery = p.battery_setpoint is not None
        value = mode.value
        if not isinstance(value, float):
            return None
        match mode.name:
            case "opModMaxLimW":
                return min(value * der_rated / rated, FULL_PCT)
            case "opModGenLimW":
                return min(value / rated * FULL_PCT, FULL_PCT)
            case "opModFixedW" if not has_battery:
                return min(max(value, 0.0) * der_rated / rated, FULL_PCT)
            case "opModTargetW" if not has_battery:
                return min(max(value, 0.0) / rated * FULL_PCT, FULL_PCT)
        return None

    def _battery(self, c: _Cycle, state: GridOperatorState) -> bool:
        """The battery's request and bounds; True when it was requested this cycle."""
        p = self._params
        if p.battery_setpoint is None:
            c.not_applied.extend(
                f"{n} (no battery configured)"
                for n in ("opModImpLimW", "opModLoadLimW", "opModFixedW", "opModTargetW")
                if n in c.modes and not c.off and (p.pv_limit is None or n in ("opModImpLimW",
                                                                              "opModLoadLimW"))
            )  # fmt: skip
            return False
        b = self._battery_bounds(c)
        requested = False
        if b.desired is not None:
            value = min(max(b.desired, b.lo), b.hi)
            c.requests.append(
                SetpointRequest(p.battery_setpoint, value, b.priority, self._name,
                                "; ".join(b.reasons))
            )  # fmt: skip
            c.metrics["battery_setpoint_w"] = value
            requested = True
        elif state.battery_requested:
            # Released at the lowest priority: whoever else wants the battery wins it at once.
            c.requests.append(
                SetpointRequest(p.battery_setpoint, 0.0, Priority.COMFORT, self._name,
                                "utility control ended: battery released")
            )  # fmt: skip
        if b.lo > -math.inf or b.hi < math.inf:
            c.constraints.append(
                Constraint(p.battery_setpoint, Priority.GRID_OPERATOR, self._name, minimum=b.lo,
                           maximum=b.hi, reason="; ".join(b.reasons))
            )  # fmt: skip
        return requested

    def _battery_bounds(self, c: _Cycle) -> _Bounds:
        p = self._params
        b = _Bounds()
        if c.off:
            b.lo = b.hi = b.desired = 0.0
            b.priority = Priority.GRID_OPERATOR
            b.reasons = [m.describe() for m in c.off]
            return b
        if "opModExpLimW" in c.modes and c.charge_w > 0.0:
            # At least this much charging; more (self-consumption, a recharge) is welcome.
            b.hi = min(b.hi, -c.charge_w)
            b.desired = -c.charge_w
            b.reasons.append(f"export limit: charge at least {c.charge_w:.0f} W of surplus")
        imp = c.modes.get("opModImpLimW")
        if imp is not None and isinstance(imp.value, float):
            self._import_limit(c, imp, imp.value, b)
        load = c.modes.get("opModLoadLimW")
        if load is not None and isinstance(load.value, float):
            c.applied.append(load.describe())
            b.lo = max(b.lo, -load.value)
            b.reasons.append(f"load limit {load.value:g} W")
        gen = c.modes.get("opModGenLimW")
        if gen is not None and isinstance(gen.value, float):
            c.applied.append(gen.describe())
            b.hi = min(b.hi, max(gen.value - (c.pv_next_w or 0.0), 0.0))
            b.reasons.append(f"generation limit {gen.value:g} W")
        fixed = c.modes.get("opModFixedW")
        if fixed is not None and isinstance(fixed.value, float):
            c.applied.append(fixed.describe())
            scale = p.battery_max_discharge_w if fixed.value >= 0.0 else p.battery_max_charge_w
            b.desired = fixed.value / FULL_PCT * scale
            b.priority = Priority.GRID_OPERATOR  # a target, not a bound
            b.reasons.append(fixed.describe())
        target = c.modes.get("opModTargetW")
        if target is not None and isinstance(target.value, float):
            c.applied.append(target.describe())
            b.desired = min(max(target.value, -p.battery_max_charge_w), p.battery_max_discharge_w)
            b.priority = Priority.GRID_OPERATOR
            b.reasons.append(target.describe())
        if b.lo > b.hi:
            # e.g. a load limit below the charging the export limit needs: the battery
            # charges what the load limit allows, and PV is curtailed for the rest.
            c.events.append(
                f"utility limits on the battery conflict ({'; '.join(b.reasons)}): "
                "the lower bound wins"
            )
            b.hi = b.lo
        return b

    def _import_limit(self, c: _Cycle, mode: ControlMode, limit_w: float, b: _Bounds) -> None:
        """Discharge what the import exceeds the limit by; bound charging to the headroom."""
        p = self._params
        grid_w = c.snapshot.value(p.grid_power, p.max_age_s)
        battery_w = (
            c.snapshot.value(p.battery_power, p.max_age_s) if p.battery_power is not None else None
        )
        if grid_w is None or battery_w is None:
            c.not_applied.append(f"{mode.name} (grid or battery reading stale)")
            return
        c.applied.append(mode.describe())
        net_w = grid_w + battery_w  # the site's import without the battery
        headroom_w = limit_w - p.margin_w - net_w
        c.metrics["import_limit_w"] = limit_w
        # Charging may use the headroom only; without headroom, the excess is discharged.
        b.lo = max(b.lo, min(-headroom_w, p.battery_max_discharge_w))
        if headroom_w < 0.0:
            b.desired = min(-headroom_w, p.battery_max_discharge_w)
            b.reasons.append(f"import limit {limit_w:g} W: discharge at least {-headroom_w:.0f} W")
            if -headroom_w > p.battery_max_discharge_w:
                c.metrics["import_excess_w"] = -headroom_w - p.battery_max_discharge_w
        else:
            b.reasons.append(f"import limit {limit_w:g} W: charge at most {headroom_w:.0f} W")

    def _connect(self, c: _Cycle, state: GridOperatorState) -> float | None:
        p = self._params
        if p.connect is None:
            if c.off:
                c.not_applied.append("disconnect (no connect point configured: held at 0 W)")
            return state.connect_value
        if c.off:
            reason = "; ".join(m.describe() for m in c.off)
            c.requests.append(
                SetpointRequest(p.connect, 0.0, Priority.GRID_OPERATOR, self._name, reason)
            )
            c.constraints.append(
                Constraint(p.connect, Priority.GRID_OPERATOR, self._name, maximum=0.0,
                           reason=reason)
            )  # fmt: skip
            return 0.0
        if state.connect_value == 0.0:
            c.requests.append(
                SetpointRequest(p.connect, 1.0, Priority.GRID_OPERATOR, self._name,
                                "utility: connect again")
            )  # fmt: skip
            return 1.0
        return state.connect_value

    def _power_factor(self, c: _Cycle, state: GridOperatorState) -> bool:
        p = self._params
        mode = c.modes.get("opModFixedPFInjectW")
        if mode is not None and isinstance(mode.value, PowerFactor) and not c.off:
            if p.power_factor is None:
                c.not_applied.append(f"{mode.name} (no power_factor point configured)")
            else:
                c.applied.append(mode.describe())
                c.requests.append(
                    SetpointRequest(p.power_factor, mode.value.signed, Priority.GRID_OPERATOR,
                                    self._name, mode.describe())
                )  # fmt: skip
                return True
        if state.power_factor_requested and p.power_factor is not None:
            c.requests.append(
                SetpointRequest(p.power_factor, 1.0, Priority.COMFORT, self._name,
                                "utility power factor ended: back to unity")
            )  # fmt: skip
        return False

    def _unsupported(self, c: _Cycle, controls: GridControls | None) -> None:
        for name in c.modes:
            if name in CURVE_MODES:
                c.not_applied.append(f"{name} (a curve: for the IEEE 1547 functions)")
            elif name in ("opModFixedPFAbsorbW", "opModFixedVar", "opModTargetVar"):
                c.not_applied.append(f"{name} (not supported by {self._name})")
        if controls is not None:
            c.not_applied.extend(f"{name} (unknown mode)" for name in controls.other)


def _pv_request(requests: tuple[SetpointRequest, ...], pv_limit: PointRef) -> float | None:
    """The export loop's PV limit request, if it made one (it is silent when released)."""
    return next((r.value for r in requests if r.target == pv_limit), None)


def _curtailing(state: PvExportState) -> bool:
    """The export loop still holds the PV below 100 % (its release is not finished)."""
    return state.limit_pct is not None and state.limit_pct < FULL_PCT
