"""Volt-watt (IEEE 1547-2018) on one inverter, at grid-operator priority.

``mode: sunspec_curve`` -- the inverter has SunSpec 706 (DERVoltWatt): the curve is written
into it, adopted and enabled (:mod:`gridpilot.control.sunspec_curves`), and the inverter
runs it itself.

``mode: setpoint`` -- for an inverter without an autonomous volt-watt function, or one whose
own is not trusted: each cycle the controller reads the terminal voltage, evaluates the curve
(:func:`gridpilot.control.ieee1547.volt_watt_p_pu`; Category B by default: 1.06 pu -> 100 %,
1.10 pu -> min(20 %, Pmin/Prated), or 0 for storage that can absorb), passes it through the
open-loop response filter (90 % of a step in ``response_time_s``, 10 s by default) and
bounds the inverter's active power limit ``pv_limit`` (% of its rating) with it:

* a :class:`~gridpilot.control.base.Constraint` (``maximum`` = the limit) at its priority, so
  that no request of the same or a lower priority -- the export loop, an economics
  controller, the grid operator's own limit -- lifts the output above it;
* a request of the same value while it curtails (a constraint only clips requests; it does
  not move an inverter nobody else commands), with the ``enable`` points alongside (e.g.
  SunSpec 704 ``WMaxLimPctEna`` = 1), and at 100 % when it has released fully -- again
  every cycle until the limit reads 100 % back, for at most a minute
  (:class:`~gridpilot.control.der_function.Release`); after that it is silent, so that it
  does not fight other users of the limit.

The utility's ``opModVoltWatt`` (V_pu / W_pct_of_setMaxW), while in force, replaces the
configured curve. A stale voltage holds the last limit (the function does not release on
a lost measurement: the voltage may still be high) and says so once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridpilot.control.base import (
    Constraint,
    Decision,
    Forecasts,
    PointField,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.configured import ConfiguredController
from gridpilot.control.der_function import (
    CurveInForce,
    EnablePoints,
    Release,
    curve_in_force,
    limit_in_force,
    next_release,
    setpoint_requests,
    sunspec_curve_decision,
)
from gridpilot.control.grid_controls import Curve as UtilityCurve
from gridpilot.control.ieee1547 import Curve, CurveError, ResponseFilter, VoltWatt, volt_watt_p_pu
from gridpilot.control.sunspec_curves import CurveTarget

NAME = "volt_watt"
Point = PointField

UTILITY_MODE = "opModVoltWatt"
_UTILITY_AXES = ("V_pu", "W_pct_of_setMaxW")
FULL_PCT = 100.0
_W_MAX_PCT = 0.0  # SunSpec 706 DeptRef
_RELEASED_PCT = 99.95
"""At or above this the filtered limit counts as released (it only approaches 100)."""


class VoltWattParams(BaseModel):
    """``control.volt_watt``: the measured voltage, the inverter's limit point, the curve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["setpoint", "sunspec_curve"] = "setpoint"
    """``setpoint``: the controller bounds ``pv_limit``; ``sunspec_curve``: it writes the
    curve into the inverter's SunSpec 706 and enables it."""
    voltage: Point
    """Voltage at the inverter's terminals, V, phase to neutral."""
    nominal_voltage_v: float = Field(gt=0.0)
    pv_limit: Point | None = None
    """``setpoint`` mode: the writable active power limit, % of the inverter's rating (e.g.
    ``sunspec_inverter.m704_wmaxlimpct_pct`` or ``pv_inverter.power_limit_pct``)."""
    device: str | None = None
    """``sunspec_curve`` mode: the SunSpec device with model 706."""
    curve_index: int = Field(default=2, ge=2, le=10)
    """``sunspec_curve`` mode: the writable stored curve to write and adopt."""
    enable: EnablePoints = Field(default_factory=dict)
    """Points requested with the limit while curtailing (e.g.
    ``{sunspec_inverter.m704_wmaxlimpctena_state: 1}``)."""
    p_min_pu: float = Field(default=0.0, ge=0.0, le=1.0)
    """Pmin/Prated of the default curve's second point (min(0.2, Pmin/Prated))."""
    storage_can_absorb: bool = False
    """Storage that can absorb: the default curve goes to 0 at 1.10 pu."""
    curve: tuple[tuple[float, float], ...] | None = None
    """(V in pu of nominal, P in pu of rating), 2-10 points; default Category B."""
    response_time_s: float = Field(default=10.0, ge=0.0, le=90.0)
    """Open-loop response time: 90 % of a step in this long (Category B default 10 s)."""
    follow_utility: bool = True
    """Use the 2030.5 ``opModVoltWatt`` curve when the grid operator sends one."""
    max_age_s: float = Field(default=10.0, gt=0.0)
    priority: Priority = Priority.GRID_OPERATOR

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self.setting(self.curve)
        except CurveError as exc:
            raise ValueError(f"curve: {exc}") from None
        if self.mode == "setpoint" and self.pv_limit is None:
            raise ValueError("mode setpoint needs pv_limit (the writable power limit, %)")
        if self.mode == "sunspec_curve" and self.device is None:
            raise ValueError("mode sunspec_curve needs device (the SunSpec device with 706)")
        return self

    def setting(self, curve: tuple[tuple[float, float], ...] | None) -> VoltWatt:
        """The IEEE 1547 volt-watt setting of ``curve`` (None: Category B); raises CurveError."""
        if curve is None:
            base = VoltWatt.category_b(self.p_min_pu, storage_can_absorb=self.storage_can_absorb)
            return VoltWatt(base.curve, self.response_time_s)
        for index, (_, p) in enumerate(curve, start=1):
            if not 0.0 <= p <= 1.0:
                raise CurveError(f"point {index}: P {p:g} pu is outside 0..1 of the rating")
        return VoltWatt(Curve(curve), self.response_time_s)


@dataclass(frozen=True, slots=True)
class VoltWattState:
    filter: ResponseFilter | None = None
    """The filtered limit, % of the rating."""
    curtailing: bool = False
    """The last request was below 100 % (one more request at 100 % releases it)."""
    release: Release | None = None
    """The limit given back at 100 %, until it reads back."""
    stale: bool = False
    source: str = ""
    refused_utility_curve: str | None = None
    step: str = ""
    """``sunspec_curve`` mode: where the curve is (see ``sunspec_curves``)."""


class VoltWattController(ConfiguredController[VoltWattParams]):
    """IEEE 1547 volt-watt: the inverter's active power limit from its terminal voltage."""

    def __init__(self, params: VoltWattParams, name: str = NAME) -> None:
        super().__init__(params, name)
        self._configured = params.setting(params.curve)

    def initial_state(self) -> VoltWattState:
        return VoltWattState()

    def decide(
        self, snapshot: Snapshot, state: VoltWattState, now: datetime, forecasts: Forecasts
    ) -> Decision[VoltWattState]:
        p = self.params
        curve = self._curve(snapshot, now)
        setting, source, refused = curve.setting, curve.source, curve.refused
        events = curve.events(
            state.source, state.refused_utility_curve, f"volt-watt curve now the {source} one"
        )
        if p.mode == "sunspec_curve":
            state = replace(state, source=source, refused_utility_curve=refused)
            return self._sunspec_curve(snapshot, state, setting, events)
        if snapshot.reading(p.voltage) is None:
            if not state.stale:
                events.append(f"volt-watt: waiting for a first reading of {p.voltage}")
            return Decision(
                replace(state, stale=True, source=source, refused_utility_curve=refused),
                events=tuple(events),
            )
        volts = snapshot.value(p.voltage, p.max_age_s)
        previous = state.filter or ResponseFilter(setting.response_time_s, FULL_PCT, now)
        if previous.response_time_s != setting.response_time_s:
            previous = ResponseFilter(setting.response_time_s, previous.value, previous.at)
        metrics: dict[str, float] = {}
        if volts is None:
            if not state.stale:
                events.append(
                    f"volt-watt: no fresh {p.voltage} (older than {p.max_age_s:g} s): "
                    "the last limit holds"
                )
            filtered = previous
        else:
            if state.stale:
                events.append(f"volt-watt: {p.voltage} fresh again, following the curve")
            v_pu = volts / p.nominal_voltage_v
            target_pct = FULL_PCT * volt_watt_p_pu(v_pu, setting)
            filtered = previous.update(target_pct, now)
            metrics |= {"voltage_pct": 100.0 * v_pu, "target_pct": target_pct}
        assert filtered.value is not None  # noqa: S101  # seeded at 100 %, never cleared
        limit_pct = round(filtered.value, 1)
        if limit_pct >= _RELEASED_PCT:
            limit_pct = FULL_PCT
        metrics["limit_pct"] = limit_pct
        assert p.pv_limit is not None  # noqa: S101  # the params' validator requires it
        constraints = (
            Constraint(
                p.pv_limit, p.priority, self.name, maximum=limit_pct, reason="volt-watt limit"
            ),
        )
        curtailing = limit_pct < FULL_PCT
        requests: list[SetpointRequest] = []
        release = next_release(
            state.release, steering=curtailing, released=state.curtailing, value=FULL_PCT,
            read=limit_in_force(snapshot, p.pv_limit, p.enable, p.max_age_s), now=now,
        )  # fmt: skip
        if curtailing or release is not None:
            reason = "volt-watt" if curtailing else "volt-watt released"
            requests += setpoint_requests(
                p.pv_limit, limit_pct, p.enable, priority=p.priority, source=self.name,
                reason=reason, enable_reason="volt-watt",
            )  # fmt: skip
        if curtailing and not state.curtailing:
            events.append(f"volt-watt: curtailing {p.pv_limit} (over-voltage)")
        new_state = replace(
            state,
            filter=filtered,
            curtailing=curtailing,
            release=release,
            stale=volts is None,
            source=source,
            refused_utility_curve=refused,
        )
        return Decision(new_state, tuple(requests), constraints, metrics, tuple(events))

    def curve_points(self, setting: VoltWatt) -> dict[str, float]:
        """706 point names (without the curve prefix) -> the values that encode ``setting``."""
        values = {
            "actpt_count": float(len(setting.curve.points)),
            "deptref_state": _W_MAX_PCT,
            "rsptms_s": float(round(setting.response_time_s)),
        }
        for k, (v, w) in enumerate(setting.curve.points, start=1):
            values[f"pt_{k}_v_pct"] = round(100.0 * v, 1)
            values[f"pt_{k}_w_pct"] = round(100.0 * w, 1)
        return values

    def _sunspec_curve(
        self, snapshot: Snapshot, state: VoltWattState, setting: VoltWatt, events: list[str]
    ) -> Decision[VoltWattState]:
        p = self.params
        assert p.device is not None  # noqa: S101  # the params' validator requires it
        target = CurveTarget(p.device, 706, p.curve_index, self.curve_points(setting), "volt-watt")
        measured: dict[str, float] = {}
        volts = snapshot.value(p.voltage, p.max_age_s)
        if volts is not None:
            v_pu = volts / p.nominal_voltage_v
            measured["voltage_pct"] = 100.0 * v_pu
            measured["target_pct"] = FULL_PCT * volt_watt_p_pu(v_pu, setting)
        return sunspec_curve_decision(
            snapshot, target, state.step, max_age_s=p.max_age_s, priority=p.priority,
            source=self.name, measured=measured, events=events,
            state=lambda step: replace(state, step=step),
        )  # fmt: skip

    def _curve(self, snapshot: Snapshot, now: datetime) -> CurveInForce[VoltWatt]:
        def from_utility(value: UtilityCurve) -> VoltWatt:
            setting = self.params.setting(tuple((v, w / 100.0) for v, w in value.points))
            if value.open_loop_s is None:
                return setting
            return VoltWatt(setting.curve, value.open_loop_s)

        return curve_in_force(
            snapshot, now, follow_utility=self.params.follow_utility, mode=UTILITY_MODE,
            axes=_UTILITY_AXES, configured=self._configured, from_utility=from_utility,
        )  # fmt: skip
