"""PV export limit with self-consumption: keep the export at the grid connection under its limit.

The site's connection agreement allows at most ``export_limit_w`` of export (0 = zero export).
Each cycle the controller measures the grid (positive = import), the PV output and, when one
is configured, the battery (positive = discharge), and decides in this order:

1. the battery charges with the surplus first (self-consumption), within its charge power
   and below its maximum SoC;
2. only what the battery cannot take and the limit does not allow is curtailed at the
   inverter, through ``power_limit_pct`` (SunSpec WMaxLimPct).

The loop is closed on measurements, not on the controller's own earlier commands, so a lagging
inverter cannot wind it up. The site load without battery is ``L = grid + pv + battery``; the
PV output that puts the grid exactly on its floor (``margin_w - export_limit_w``) is::

    allowed_pv_w = L + battery_credit_w - floor_w        (``pv_allowed_w``)
    headroom_w   = allowed_pv_w - pv_w
    limit_pct    = 100 · (pv_w + headroom_w - hysteresis_w / 2) / rated     when headroom < 0

i.e. ``limit = (pv − excess export) / rated``, landing in the middle of the hysteresis band.
``pv_w + headroom_w`` does not depend on the PV measurement, which is why a slow inverter
does not make the loop overshoot. Inside the band ``0 <= headroom_w <= hysteresis_w`` nothing
changes; above it the limit is released at ``release_rate_pct_per_s`` and never by more than
the headroom (less half the band), so a release cannot itself break the limit. Curtailing is
immediate, releasing is slow: the asymmetry plus the band is what keeps the loop from hunting.

Battery credit. While the battery follows the charge requests, it is credited with its whole
charge power (``battery_credit_w = charge capacity``): that is what makes it absorb surplus
before PV is curtailed. When it falls short of what was asked (a higher-priority controller
owns it, it is power-limited, it tripped), it is credited only with what it measurably
charges for ``battery_retry_s``, and PV is curtailed on the measured grid alone. The battery
is compared with the smaller of the last two requests, since its reading lags a cycle. Where
the battery cannot tell how much it can take now, configure ``battery_available_charge``:
otherwise a battery that takes less than ``battery_max_charge_w`` is found out only by a
shortfall, once per ``battery_retry_s``, with up to one release step of extra export for a
cycle or two each time.

Stale inputs. Without a fresh grid meter or PV reading the export cannot be computed. The
controller then fails to the safe side: PV is limited to what cannot exceed the limit whatever
the load does (``export_limit_w - margin_w + min_site_load_w``), the battery charge request is
withdrawn, and an event says so. Once the inputs are fresh again, the limit is released with
the ramp like any other.

Priority. The controller's setpoint requests (PV limit, battery charge) carry ``priority``,
ECONOMICS by default: self-consumption is an economic choice, and peak shaving must be able to
take the battery. The export limit itself is not economics but the connection agreement, as
hard as a limit sent by the grid operator, so the PV limit is *also* emitted as a
:class:`Constraint` (``maximum`` = the limit) at ``limit_priority``, GRID_OPERATOR by default:
no lower-or-equal request (an economics optimiser, a 2030.5 "limit active power" event) can
lift the inverter above it. It is not SAFETY because a manual override during commissioning
should still be able to lift it. The constraint alone would not move the inverter (it only
clips requests), hence the request alongside it. The request is sent while the controller
curtails, and at 100 % when it has released fully -- again every cycle until the inverter's
limit reads 100 % back, for at most a minute (one command can be lost on the way); after that
it is silent, so that it does not fight other users of the inverter limit at its own priority.
The battery request is sent while charging, once more at 0 W when done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Self

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
from gridpilot.control.configured import ConfiguredController
from gridpilot.control.der_function import Release, limit_in_force, next_release

FULL_PCT = 100.0


Point = PointField


class PvExportParams(BaseModel):
    """Parameters of :class:`PvExportController`. Powers in W, rates in % of rating per s."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grid_power: Point = PointRef("grid_meter", "active_power_w")
    """Grid connection meter, W, positive = import, negative = export."""
    pv_power: Point = PointRef("pv_inverter", "ac_power_w")
    """Measured PV AC output, W."""
    pv_limit: Point = PointRef("pv_inverter", "power_limit_pct")
    """Writable PV active power limit, % of ``pv_rated_power_w`` (0..100)."""
    pv_rated_power_w: float = Field(gt=0.0)
    """The inverter's AC rating: 100 % of ``pv_limit``."""
    export_limit_w: float = Field(default=0.0, ge=0.0)
    """Most export the connection allows, W; 0 = zero export."""
    margin_w: float = Field(default=300.0, ge=0.0)
    """The controller aims this far inside the limit (meter error, load steps), W."""
    hysteresis_w: float = Field(default=400.0, gt=0.0)
    """Width of the band above the floor in which the PV limit is held, W."""
    release_rate_pct_per_s: float = Field(default=1.0, gt=0.0)
    """How fast curtailment is released, % of the rating per second (curtailing is at once)."""
    max_age_s: float = Field(default=5.0, gt=0.0)
    """Readings older than this are stale; a stale meter or PV reading means fail-safe."""
    min_site_load_w: float = Field(default=0.0, ge=0.0)
    """Load the site never goes below, W: in fail-safe PV may cover it plus the limit."""
    battery_soc: Point | None = None
    """Battery state of charge, % (e.g. ``battery.soc_pct``); None = no battery."""
    battery_power: Point | None = None
    """Battery AC power, W, positive = discharge (e.g. ``battery.active_power_w``)."""
    battery_setpoint: Point | None = None
    """Writable battery setpoint, W, positive = discharge (``battery.active_power_setpoint_w``)."""
    battery_available_charge: Point | None = None
    """Optional: the charge power the battery offers now, W (``available_charge_power_w``)."""
    battery_max_charge_w: float = Field(default=0.0, ge=0.0)
    """Most charge power this controller asks for, W."""
    battery_soc_max_pct: float = Field(default=95.0, gt=0.0, le=100.0)
    """No charging at or above this SoC, %."""
    battery_retry_s: float = Field(default=60.0, gt=0.0)
    """After the battery fell short of a request, credit it only with its measured charge
    for this long, s."""
    self_consumption: bool = True
    """True: the battery takes every exported watt (holds the grid at 0, or at the floor for
    zero export). False: it only takes what would exceed the export limit."""
    priority: Priority = Priority.ECONOMICS
    """Priority of the PV limit and battery requests."""
    limit_priority: Priority = Priority.GRID_OPERATOR
    """Priority of the export-limit constraint on ``pv_limit``."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        battery = (self.battery_soc, self.battery_power, self.battery_setpoint)
        if any(p is not None for p in battery) and any(p is None for p in battery):
            raise ValueError(
                "battery_soc, battery_power and battery_setpoint go together: set all or none"
            )
        if self.battery_setpoint is not None and self.battery_max_charge_w <= 0.0:
            raise ValueError("a battery needs battery_max_charge_w > 0")
        if self.margin_w < self.hysteresis_w / 2.0:
            # A release may leave the grid up to half the band below the floor when the
            # battery does not absorb it; the margin must cover that.
            raise ValueError(
                f"margin_w ({self.margin_w}) must be at least hysteresis_w / 2 "
                f"({self.hysteresis_w / 2.0})"
            )
        if self.limit_priority < self.priority:
            raise ValueError("limit_priority must not be below priority")
        return self

    @property
    def has_battery(self) -> bool:
        return self.battery_setpoint is not None

    @property
    def floor_w(self) -> float:
        """The grid power the controller keeps above: export of at most limit - margin."""
        return self.margin_w - self.export_limit_w

    @property
    def fail_safe_pv_w(self) -> float:
        """PV output that cannot break the limit whatever the load and battery do."""
        safe = self.export_limit_w - self.margin_w + self.min_site_load_w
        return min(max(safe, 0.0), self.pv_rated_power_w)


@dataclass(frozen=True, slots=True)
class PvExportState:
    """What the controller carries from one cycle to the next."""

    limit_pct: float | None = None
    """The PV limit last requested; None = none yet (the inverter's reading is used)."""
    charge_requests_w: tuple[float, float] = (0.0, 0.0)
    """The last two battery charge requests (>= 0, newest last): the battery lags one cycle."""
    distrust_until: datetime | None = None
    """Until then the battery is credited only with its measured charge."""
    last_decided: datetime | None = None
    fail_safe: bool = False
    """The last cycle was a fail-safe one (the event is sent on entry, not every cycle)."""
    release: Release | None = None
    """The PV limit given back at 100 %, until the inverter reads it back."""


@dataclass(frozen=True, slots=True)
class _Battery:
    """The battery as seen this cycle."""

    power_w: float
    """Measured, positive = discharge; 0 when there is no usable battery."""
    capacity_w: float
    """Charge power it can take now, W (0 when full, stale or absent)."""
    credit_w: float
    """Charge power counted on when computing the PV limit."""
    usable: bool
    shortfall_event: str | None = None


class PvExportController(ConfiguredController[PvExportParams]):
    """Export limit and self-consumption: battery first, then PV curtailment."""

    def __init__(self, params: PvExportParams, name: str = "pv_export") -> None:
        super().__init__(params, name)

    def initial_state(self) -> PvExportState:
        return PvExportState()

    def decide(
        self, snapshot: Snapshot, state: PvExportState, now: datetime, forecasts: Forecasts
    ) -> Decision[PvExportState]:
        p = self.params
        dt_s = _elapsed_s(state.last_decided, now, p.max_age_s)
        prev_pct = self._previous_limit_pct(snapshot, state)
        grid_w = snapshot.value(p.grid_power, p.max_age_s)
        pv_w = snapshot.value(p.pv_power, p.max_age_s)
        if grid_w is None or pv_w is None:
            stale = p.grid_power if grid_w is None else p.pv_power
            return self._fail_safe(snapshot, state, now, prev_pct, stale)

        events: list[str] = []
        if state.fail_safe:
            events.append(
                f"{p.grid_power} and {p.pv_power} fresh again: releasing the PV limit at "
                f"{p.release_rate_pct_per_s:g} %/s"
            )
        battery = self._battery(snapshot, state, now)
        if battery.shortfall_event is not None:
            events.append(battery.shortfall_event)
        distrust_until = state.distrust_until
        if battery.shortfall_event is not None:
            distrust_until = now + timedelta(seconds=p.battery_retry_s)

        rated = p.pv_rated_power_w
        load_w = grid_w + pv_w + battery.power_w
        allowed_pv_w = load_w + battery.credit_w - p.floor_w
        headroom_w = allowed_pv_w - pv_w
        prev_w = prev_pct / FULL_PCT * rated

        new_w = next_limit_w(p, prev_w, pv_w, headroom_w, dt_s)
        new_pct = new_w / rated * FULL_PCT
        if new_pct < FULL_PCT <= prev_pct:
            events.append(
                f"curtailing PV to {new_pct:.1f} %: export would exceed {p.export_limit_w:g} W "
                f"(less {p.margin_w:g} W margin) by {max(-headroom_w, 0.0):.0f} W"
            )

        # The PV output the battery should plan for: what the new limit lets through, and
        # when the limit binds and is being raised, the release the inverter will follow.
        binding = prev_pct < FULL_PCT and pv_w >= prev_w - p.hysteresis_w
        pv_next_w = min(pv_w, new_w)
        if binding and new_w > prev_w:
            pv_next_w = pv_w + (new_w - prev_w)

        requests: list[SetpointRequest] = []
        constraints: list[Constraint] = []
        release = next_release(
            state.release, steering=new_pct < FULL_PCT, released=prev_pct < FULL_PCT,
            value=FULL_PCT, read=limit_in_force(snapshot, p.pv_limit, {}, p.max_age_s), now=now,
        )  # fmt: skip
        if new_pct < FULL_PCT or release is not None:
            reason = (
                f"export limit {p.export_limit_w:g} W: PV may deliver {allowed_pv_w:.0f} W"
                if new_pct < FULL_PCT
                else "export limit no longer binding: curtailment released"
            )
            requests.append(
                SetpointRequest(p.pv_limit, new_pct, p.priority, self._name, reason=reason)
            )
        if new_pct < FULL_PCT:
            constraints.append(
                Constraint(
                    p.pv_limit,
                    p.limit_priority,
                    self._name,
                    maximum=new_pct,
                    reason=f"grid connection export limit {p.export_limit_w:g} W",
                )
            )

        charge_w = 0.0
        if battery.usable:
            target_grid_w = max(p.floor_w, 0.0) if p.self_consumption else p.floor_w
            grid_without_battery_w = load_w - pv_next_w
            charge_w = min(max(target_grid_w - grid_without_battery_w, 0.0), battery.capacity_w)
        last_charge_w = state.charge_requests_w[1]
        if p.battery_setpoint is not None and (charge_w > 0.0 or last_charge_w > 0.0):
            requests.append(
                SetpointRequest(
                    p.battery_setpoint,
                    -charge_w,
                    p.priority,
                    self._name,
                    reason="self-consumption: charge with the PV surplus"
                    if charge_w > 0.0
                    else "no PV surplus left to store"
                    if battery.usable
                    else "battery readings stale: charge request withdrawn",
                )
            )

        if new_pct >= FULL_PCT and prev_pct < FULL_PCT:
            events.append("PV curtailment fully released")
        metrics = {
            "grid_power_w": grid_w,
            "pv_power_w": pv_w,
            "site_load_w": load_w,
            "export_limit_w": p.export_limit_w,
            "pv_allowed_w": allowed_pv_w,
            "headroom_w": headroom_w,
            "pv_limit_pct": new_pct,
            "battery_charge_w": charge_w,
            "battery_credit_w": battery.credit_w,
            "fail_safe_state": 0.0,
        }
        next_state = PvExportState(
            limit_pct=new_pct,
            charge_requests_w=(last_charge_w, charge_w),
            distrust_until=distrust_until,
            last_decided=now,
            fail_safe=False,
            release=release,
        )
        return Decision(
            state=next_state,
            requests=tuple(requests),
            constraints=tuple(constraints),
            metrics=metrics,
            events=tuple(events),
        )

    def _previous_limit_pct(self, snapshot: Snapshot, state: PvExportState) -> float:
        """Our last request; before the first, what the inverter reports; else no limit."""
        if state.limit_pct is not None:
            return state.limit_pct
        measured = snapshot.value(self.params.pv_limit, self.params.max_age_s)
        if measured is None:
            return FULL_PCT
        return min(max(measured, 0.0), FULL_PCT)

    def _battery(self, snapshot: Snapshot, state: PvExportState, now: datetime) -> _Battery:
        p = self.params
        if p.battery_soc is None or p.battery_power is None:
            return _Battery(power_w=0.0, capacity_w=0.0, credit_w=0.0, usable=False)
        soc = snapshot.value(p.battery_soc, p.max_age_s)
        power_w = snapshot.value(p.battery_power, p.max_age_s)
        if soc is None or power_w is None:
            # Its power is unknown, so it counts as part of the load the meter sees and gets
            # no credit: PV is curtailed on the measured grid alone.
            return _Battery(power_w=0.0, capacity_w=0.0, credit_w=0.0, usable=False)
        capacity_w = p.battery_max_charge_w if soc < p.battery_soc_max_pct else 0.0
        if p.battery_available_charge is not None:
            available = snapshot.value(p.battery_available_charge, p.max_age_s)
            capacity_w = min(capacity_w, max(available, 0.0)) if available is not None else 0.0
        measured_charge_w = 0.0 - power_w  # not -power_w: a -0.0 would read "-0 W"
        # The battery lags a cycle: it follows if it charges at least the smaller of the last
        # two requests (charging more than asked only lowers the export).
        asked_w = min(*state.charge_requests_w, capacity_w)
        falls_short = capacity_w > 0.0 and measured_charge_w < asked_w - p.hysteresis_w
        was_distrusted = state.distrust_until is not None and now < state.distrust_until
        distrusted = falls_short or was_distrusted
        event = None
        # Said once when the battery stops following, not every cycle while it does not (a
        # higher priority holding it would otherwise fill the event log); the shortfall
        # still extends the retry time.
        if falls_short and not was_distrusted:
            event = (
                f"battery charges {measured_charge_w:.0f} W of {asked_w:.0f} W asked: PV is "
                f"curtailed on the measured grid for {p.battery_retry_s:g} s"
            )
        credit_w = measured_charge_w if distrusted else max(capacity_w, measured_charge_w)
        return _Battery(
            power_w=power_w,
            capacity_w=capacity_w,
            credit_w=credit_w,
            usable=True,
            shortfall_event=event,
        )

    def _fail_safe(
        self,
        snapshot: Snapshot,
        state: PvExportState,
        now: datetime,
        prev_pct: float,
        stale: PointRef,
    ) -> Decision[PvExportState]:
        p = self.params
        safe_pct = p.fail_safe_pv_w / p.pv_rated_power_w * FULL_PCT
        new_pct = min(prev_pct, safe_pct)
        events: tuple[str, ...] = ()
        if not state.fail_safe:
            age = snapshot.age_s(stale)
            age_text = "never read" if math.isinf(age) else f"{age:.1f} s old"
            events = (
                f"{stale} stale ({age_text}, limit {p.max_age_s:g} s): PV limited to "
                f"{new_pct:.1f} % ({new_pct / FULL_PCT * p.pv_rated_power_w:.0f} W), "
                f"which cannot exceed the export limit of {p.export_limit_w:g} W",
            )
        requests = [
            SetpointRequest(
                p.pv_limit, new_pct, p.priority, self._name, reason=f"fail-safe: {stale} stale"
            )
        ]
        last_charge_w = state.charge_requests_w[1]
        if p.battery_setpoint is not None and last_charge_w > 0.0:
            requests.append(
                SetpointRequest(
                    p.battery_setpoint,
                    0.0,
                    p.priority,
                    self._name,
                    reason=f"fail-safe: {stale} stale, surplus unknown",
                )
            )
        constraint = Constraint(
            p.pv_limit,
            p.limit_priority,
            self._name,
            maximum=new_pct,
            reason=f"fail-safe: {stale} stale",
        )
        return Decision(
            state=PvExportState(
                limit_pct=new_pct,
                charge_requests_w=(last_charge_w, 0.0),
                distrust_until=state.distrust_until,
                last_decided=now,
                fail_safe=True,
            ),
            requests=tuple(requests),
            constraints=(constraint,),
            metrics={
                "export_limit_w": p.export_limit_w,
                "pv_limit_pct": new_pct,
                "battery_charge_w": 0.0,
                "fail_safe_state": 1.0,
            },
            events=events,
        )


def _elapsed_s(last: datetime | None, now: datetime, cap_s: float) -> float:
    """Seconds since the last cycle, 0 on the first; a long gap counts as ``cap_s`` so a
    controller that was skipped for a while does not release in one jump."""
    if last is None:
        return 0.0
    return min(max((now - last).total_seconds(), 0.0), cap_s)


def next_limit_w(
    params: PvExportParams, prev_w: float, pv_w: float, headroom_w: float, dt_s: float
) -> float:
    """The PV limit in W after one cycle: curtail at once to the middle of the band, hold
    inside it, release at the ramp rate but never by more than the headroom allows."""
    half_band = params.hysteresis_w / 2.0
    if headroom_w < 0.0:
        new_w = min(prev_w, pv_w + headroom_w - half_band)
    elif headroom_w <= params.hysteresis_w:
        new_w = prev_w
    else:
        step_w = params.release_rate_pct_per_s / FULL_PCT * params.pv_rated_power_w * dt_s
        new_w = prev_w + max(0.0, min(step_w, headroom_w - half_band))
    return min(max(new_w, 0.0), params.pv_rated_power_w)
