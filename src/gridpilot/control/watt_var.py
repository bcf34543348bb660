"""Watt-var (IEEE 1547-2018 clause 5.3.4) on one inverter, at grid-operator priority.

``mode: sunspec_curve`` -- the inverter has SunSpec 712 (DERWattVar): the curve (P in % of
WMax, Q in % of VAMax, ``DeptRef`` VA_MAX_PCT) is written into its writable curve
``curve_index``, adopted and enabled, each step closed on the telemetry
(:func:`gridpilot.control.sunspec_curves.curve_step`); the inverter runs it itself.

``mode: setpoint`` (the default) -- for an inverter without an autonomous watt-var
function: each cycle the controller reads the inverter's active power, evaluates the curve
(:func:`gridpilot.control.ieee1547.watt_var_q_pu`; Category B by default:
(max(0.2, Pmin/Prated), 0), (0.5, 0), (1.0, -0.44) -- P in pu of ``rated_w``, Q in pu of
``rated_va``, absorbing negative), passes the result through the open-loop response filter
(90 % of a step in ``response_time_s``) and requests it on ``var_setpoint`` (var, positive =
injecting), with the ``enable`` points alongside (e.g. SunSpec 704 ``VarSetEna`` = 1,
``VarSetMod`` = 4 VARS).

The curve is the utility's 2030.5 ``opModWattVar`` (W_pct_of_setMaxW / var_pct_of_VA)
while the grid-operator controls hold one (``follow_utility``), else the configured one.

The filter starts from the measured reactive power (the optional ``reactive_power`` point),
else from 0 var. A stale active power steers Q to 0 var (unity) through the filter and says
so once; before the first reading nothing is sent. Volt-var and watt-var both command the
reactive power: configure one of them per inverter (IEEE 1547 runs one reactive mode at a
time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridpilot.control.base import (
    Decision,
    Forecasts,
    PointField,
    Priority,
    Snapshot,
)
from gridpilot.control.configured import ConfiguredController
from gridpilot.control.der_function import (
    CurveInForce,
    EnablePoints,
    curve_in_force,
    setpoint_requests,
    sunspec_curve_decision,
)
from gridpilot.control.grid_controls import Curve as UtilityCurve
from gridpilot.control.ieee1547 import Curve, CurveError, ResponseFilter, WattVar, watt_var_q_pu
from gridpilot.control.sunspec_curves import CurveTarget

NAME = "watt_var"
Point = PointField

UTILITY_MODE = "opModWattVar"
_UTILITY_AXES = ("W_pct_of_setMaxW", "var_pct_of_VA")

# SunSpec 712 symbols.
_VA_MAX_PCT = 3.0  # DeptRef
_REACTIVE = 1.0  # Pri


class WattVarParams(BaseModel):
    """``control.watt_var``: the measured active power, the ratings, the curve, the setpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["setpoint", "sunspec_curve"] = "setpoint"
    """``setpoint``: var setpoints from the measured power; ``sunspec_curve``: the curve
    written into the inverter's SunSpec 712 and enabled."""
    active_power: Point
    """The inverter's active power output, W (e.g. ``sunspec_inverter.m701_w``)."""
    rated_w: float = Field(gt=0.0)
    """P of 1.0 pu."""
    rated_va: float = Field(gt=0.0)
    """Q of 1.0 pu (the curve's -0.44 is 44 % of it)."""
    var_setpoint: Point | None = None
    """``setpoint`` mode: the writable reactive power setpoint, var, positive = injecting."""
    device: str | None = None
    """``sunspec_curve`` mode: the SunSpec device with model 712."""
    curve_index: int = Field(default=2, ge=2, le=10)
    """``sunspec_curve`` mode: the writable stored curve to write and adopt."""
    reactive_power: Point | None = None
    """Optional: the inverter's measured reactive power (the filter starts from it)."""
    enable: EnablePoints = Field(default_factory=dict)
    p_min_pu: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Pmin/Prated of the default curve's first point (max(0.2, Pmin/Prated))."""
    curve: tuple[tuple[float, float], ...] | None = None
    """(P in pu of ``rated_w``, Q in pu of ``rated_va``), 2-10 points; default Category B."""
    response_time_s: float = Field(default=10.0, ge=0.0, le=90.0)
    follow_utility: bool = True
    """Use the 2030.5 ``opModWattVar`` curve when the grid operator sends one."""
    max_age_s: float = Field(default=10.0, gt=0.0)
    priority: Priority = Priority.GRID_OPERATOR

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self.setting()
        except CurveError as exc:
            raise ValueError(f"curve: {exc}") from None
        if self.mode == "setpoint" and self.var_setpoint is None:
            raise ValueError("mode setpoint needs var_setpoint (the writable var setpoint)")
        if self.mode == "sunspec_curve" and self.device is None:
            raise ValueError("mode sunspec_curve needs device (the SunSpec device with 712)")
        return self

    def setting(self, curve: tuple[tuple[float, float], ...] | None = None) -> WattVar:
        """The IEEE 1547 watt-var setting of ``curve`` (default: the configured one, else
        Category B); raises CurveError."""
        curve = curve or self.curve
        if curve is None:
            return WattVar.category_b(self.p_min_pu)
        for index, (_, q) in enumerate(curve, start=1):
            if abs(q) > 1.0:
                raise CurveError(f"point {index}: Q {q:g} pu is beyond the rated VA (|Q| <= 1)")
        return WattVar(Curve(curve))


@dataclass(frozen=True, slots=True)
class WattVarState:
    filter: ResponseFilter | None = None
    """The filtered Q, var."""
    stale: bool = False
    step: str = ""
    """``sunspec_curve`` mode: where the curve is (see ``sunspec_curves``)."""
    source: str = ""
    """``configured`` / ``utility``: the curve in force, for the event on a change."""
    refused_utility_curve: str | None = None


class WattVarController(ConfiguredController[WattVarParams]):
    """IEEE 1547 watt-var on one inverter by var setpoints."""

    def __init__(self, params: WattVarParams, name: str = NAME) -> None:
        super().__init__(params, name)
        self._setting = params.setting()

    def initial_state(self) -> WattVarState:
        return WattVarState()

    def decide(
        self, snapshot: Snapshot, state: WattVarState, now: datetime, forecasts: Forecasts
    ) -> Decision[WattVarState]:
        p = self.params
        curve = self._curve(snapshot, now)
        setting, response_s = curve.setting
        points = ", ".join(f"({w:g}, {q:+g})" for w, q in setting.curve.points)
        events = curve.events(
            state.source,
            state.refused_utility_curve,
            f"watt-var curve now the {curve.source} one: {points} pu",
        )
        state = replace(state, source=curve.source, refused_utility_curve=curve.refused)
        if p.mode == "sunspec_curve":
            return self._sunspec_curve(snapshot, state, setting, events)
        assert p.var_setpoint is not None  # noqa: S101  # the params' validator requires it
        if snapshot.reading(p.active_power) is None:
            if not state.stale:
                events.append(f"watt-var: waiting for a first reading of {p.active_power}")
            return Decision(replace(state, stale=True), events=tuple(events))
        watts = snapshot.value(p.active_power, p.max_age_s)
        metrics: dict[str, float] = {}
        if watts is None:
            target_var = 0.0
            if not state.stale:
                events.append(
                    f"watt-var: no fresh {p.active_power} (older than {p.max_age_s:g} s): "
                    "reactive power steered to 0 var (unity power factor)"
                )
        else:
            if state.stale:
                events.append(f"watt-var: {p.active_power} fresh again, following the curve")
            p_pu = watts / p.rated_w
            target_var = watt_var_q_pu(p_pu, setting) * p.rated_va
            metrics["active_power_pct"] = 100.0 * p_pu
        previous = state.filter
        if previous is None:
            measured = (
                None if p.reactive_power is None else snapshot.value(p.reactive_power, p.max_age_s)
            )
            previous = ResponseFilter(response_s, measured or 0.0, now)
        if previous.response_time_s != response_s:
            previous = ResponseFilter(response_s, previous.value, previous.at)
        filtered = previous.update(target_var, now)
        assert filtered.value is not None  # noqa: S101  # update always sets it
        value = float(round(filtered.value))
        reason = (
            f"watt-var at {metrics['active_power_pct']:.1f} % P: target {target_var:.0f} var"
            if watts is not None
            else "watt-var: active power stale, unity power factor"
        )
        requests = setpoint_requests(
            p.var_setpoint, value, p.enable, priority=p.priority, source=self.name,
            reason=reason, enable_reason="watt-var by setpoint",
        )  # fmt: skip
        metrics |= {"target_var": target_var, "setpoint_var": value}
        new_state = replace(state, filter=filtered, stale=watts is None)
        return Decision(new_state, requests, (), metrics, tuple(events))

    def _curve(self, snapshot: Snapshot, now: datetime) -> CurveInForce[tuple[WattVar, float]]:
        """The setting in force and its response time."""

        def from_utility(value: UtilityCurve) -> tuple[WattVar, float]:
            setting = self.params.setting(tuple((w / 100.0, q / 100.0) for w, q in value.points))
            open_loop = value.open_loop_s
            return setting, self.params.response_time_s if open_loop is None else open_loop

        return curve_in_force(
            snapshot, now, follow_utility=self.params.follow_utility, mode=UTILITY_MODE,
            axes=_UTILITY_AXES, configured=(self._setting, self.params.response_time_s),
            from_utility=from_utility,
        )  # fmt: skip

    def curve_points(self, setting: WattVar | None = None) -> dict[str, float]:
        """712 point names (without the curve prefix) -> the values that encode ``setting``
        (default: the configured curve)."""
        points = (setting or self._setting).curve.points
        values = {
            "actpt_count": float(len(points)),
            "deptref_state": _VA_MAX_PCT,
            "pri_state": _REACTIVE,
        }
        for k, (w, q) in enumerate(points, start=1):
            values[f"pt_{k}_w_pct"] = round(100.0 * w, 1)
            values[f"pt_{k}_var_pct"] = round(100.0 * q, 1)
        return values

    def _sunspec_curve(
        self, snapshot: Snapshot, state: WattVarState, setting: WattVar, events: list[str]
    ) -> Decision[WattVarState]:
        p = self.params
        assert p.device is not None  # noqa: S101  # the params' validator requires it
        target = CurveTarget(p.device, 712, p.curve_index, self.curve_points(setting), "watt-var")
        measured: dict[str, float] = {}
        watts = snapshot.value(p.active_power, p.max_age_s)
        if watts is not None:
            measured["active_power_pct"] = 100.0 * watts / p.rated_w
            measured["target_var"] = watt_var_q_pu(watts / p.rated_w, setting) * p.rated_va
        return sunspec_curve_decision(
            snapshot, target, state.step, max_age_s=p.max_age_s, priority=p.priority,
            source=self.name, measured=measured, events=events,
            state=lambda step: replace(state, step=step),
        )  # fmt: skip
