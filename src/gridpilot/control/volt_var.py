"""Volt-var (IEEE 1547-2018) applied to an inverter, at grid-operator priority.

The curve is the utility's ``opModVoltVar`` when the 2030.5 client has one in force (the
snapshot's ``grid_controls``, not stale), otherwise the configured one (Category B by
default). Two ways to apply it, by ``mode``:

``setpoint`` -- for an inverter without an autonomous volt-var function (no SunSpec 705).
    Each cycle the controller reads the terminal voltage, evaluates the curve
    (:func:`gridpilot.control.ieee1547.volt_var_q_pu`), passes the result through the
    open-loop response filter (90 % of a step in ``response_time_s``, so the setpoint does
    not jump with every voltage blip) and requests it on ``var_setpoint`` (var, positive =
    injecting), with the ``enable`` points (e.g. SunSpec 704 ``VarSetEna`` = 1, ``VarSetMod``
    = 4 VARS) alongside. The filter starts from the measured reactive power (the optional
    ``reactive_power`` point), else from 0 var. With the voltage stale it steers to 0 var
    (unity power factor, the 1547 default mode) through the same filter and says so once;
    before the first reading of the voltage it sends nothing.

``sunspec_curve`` -- for an inverter with SunSpec 705 (DERVoltVar): the inverter runs the
    curve itself, at its own sampling rate, so the controller only has to put the curve in.
    It does so the way the SunSpec DER model asks, each step closed on the device's
    telemetry rather than on the controller's own memory of what it sent
    (:func:`gridpilot.control.sunspec_curves.curve_step`):

    1. write the curve into the writable stored curve ``curve_index`` (points in % of
       nominal voltage and % of VAMax, ``DeptRef`` VA_MAX_PCT, V_ref, response time);
    2. once the telemetry shows it there, request ``AdptCrvReq`` = ``curve_index`` (0, "no
       request", while writing, so that each adoption is a new command);
    3. once the active curve 1 reads back as the wanted one, ``Ena`` = 1.

    A device that loses the curve (reboot, another client) starts the sequence again by
    itself, since each cycle compares the telemetry with the wanted curve.

Priority: GRID_OPERATOR by default -- volt-var is an interconnection requirement, as hard as
the utility's export limit; only manual overrides and safety beat it.
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
from gridpilot.control.ieee1547 import (
    CATEGORY_B_VOLT_VAR,
    Curve,
    CurveError,
    ResponseFilter,
    VoltVar,
    volt_var_q_pu,
)
from gridpilot.control.sunspec_curves import CurveTarget

NAME = "volt_var"
Point = PointField

UTILITY_MODE = "opModVoltVar"
_UTILITY_AXES = ("V_pu", "var_pct_of_VA")

# SunSpec 705 symbols.
_VA_MAX_PCT = 3.0  # DeptRef
_REACTIVE = 1.0  # Pri


class VoltVarParams(BaseModel):
    """``control.volt_var``: the measured voltage, the inverter's rating, the curve and how
    to apply it. Voltages in V, reactive power in var (positive = injecting)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["setpoint", "sunspec_curve"] = "setpoint"
    """``setpoint``: the controller computes Q and commands ``var_setpoint``;
    ``sunspec_curve``: it writes the curve into the inverter's SunSpec 705 and enables it."""
    voltage: Point
    """Voltage at the inverter's terminals, V, phase to neutral (e.g.
    ``sunspec_inverter.m701_lnv_v``)."""
    nominal_voltage_v: float = Field(gt=0.0)
    """1.0 pu of ``voltage``."""
    rated_va: float = Field(gt=0.0)
    """The inverter's rated apparent power: Q of 1.0 pu (the curve's 0.44 is 44 % of it)."""
    curve: tuple[tuple[float, float], ...] = CATEGORY_B_VOLT_VAR
    """(V in pu of nominal, Q in pu of ``rated_va``), 2-10 points; Category B by default.
    The utility's ``opModVoltVar`` replaces it while in force."""
    v_ref_pu: float = Field(default=1.0, ge=0.95, le=1.05)
    """V_ref: moves the curve by ``v_ref_pu - 1``."""
    response_time_s: float = Field(default=5.0, ge=0.0, le=90.0)
    """Open-loop response time: 90 % of a step in this long (Category B default 5 s)."""
    follow_utility: bool = True
    """Use the 2030.5 ``opModVoltVar`` curve when the grid operator sends one."""
    max_age_s: float = Field(default=10.0, gt=0.0)
    """A voltage older than this is stale (``setpoint``: Q steers to 0)."""
    var_setpoint: Point | None = None
    """``setpoint`` mode: the writable reactive power setpoint, var, positive = injecting
    (e.g. ``sunspec_inverter.m704_varset_var``)."""
    reactive_power: Point | None = None
    """``setpoint`` mode, optional: the inverter's measured reactive power, var, positive =
    injecting (e.g. ``sunspec_inverter.m701_var``): the response filter starts from it
    (without it, from 0 var)."""
    enable: EnablePoints = Field(default_factory=dict)
    """``setpoint`` mode: points requested with every setpoint, e.g.
    ``{sunspec_inverter.m704_varsetena_state: 1, sunspec_inverter.m704_varsetmod_state: 4}``."""
    device: str | None = None
    """``sunspec_curve`` mode: the SunSpec device with model 705."""
    curve_index: int = Field(default=2, ge=2, le=10)
    """``sunspec_curve`` mode: the writable stored curve to write and adopt (curve 1 is the
    active, read-only one)."""
    priority: Priority = Priority.GRID_OPERATOR

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self.setting(self.curve, self.response_time_s)
        except CurveError as exc:
            raise ValueError(f"curve: {exc}") from None
        if self.mode == "setpoint" and self.var_setpoint is None:
            raise ValueError("mode setpoint needs var_setpoint (the writable var setpoint)")
        if self.mode == "sunspec_curve" and self.device is None:
            raise ValueError("mode sunspec_curve needs device (the SunSpec device with 705)")
        return self

    def setting(self, curve: tuple[tuple[float, float], ...], response_time_s: float) -> VoltVar:
        """The IEEE 1547 volt-var setting of ``curve`` with this V_ref; raises CurveError."""
        return VoltVar(Curve(curve), self.v_ref_pu, response_time_s)


@dataclass(frozen=True, slots=True)
class VoltVarState:
    """Carried from cycle to cycle."""

    filter: ResponseFilter | None = None
    """``setpoint`` mode: the filtered Q, var."""
    stale: bool = False
    """The last cycle had no fresh voltage (the event is sent on entry)."""
    source: str = ""
    """Where the curve in use came from (``utility`` / ``configured``), for the event on
    a change."""
    refused_utility_curve: str | None = None
    """The last utility curve refused (not repeated every cycle)."""
    step: str = ""
    """``sunspec_curve`` mode: write / adopt / enable / active, for the event on a change."""


class VoltVarController(ConfiguredController[VoltVarParams]):
    """IEEE 1547 volt-var on one inverter: by setpoints, or by its own SunSpec 705 curve."""

    def __init__(self, params: VoltVarParams, name: str = NAME) -> None:
        super().__init__(params, name)
        self._configured = params.setting(params.curve, params.response_time_s)

    def initial_state(self) -> VoltVarState:
        return VoltVarState()

    def decide(
        self, snapshot: Snapshot, state: VoltVarState, now: datetime, forecasts: Forecasts
    ) -> Decision[VoltVarState]:
        curve = self._curve(snapshot, now)
        setting = curve.setting
        events = curve.events(
            state.source,
            state.refused_utility_curve,
            f"volt-var curve now the {curve.source} one: {_describe(setting)}",
        )
        state = replace(state, source=curve.source, refused_utility_curve=curve.refused)
        if self.params.mode == "setpoint":
            return self._setpoint(snapshot, state, now, setting, events)
        return self._sunspec_curve(snapshot, state, setting, events)

    # ------------------------------------------------------------------ the curve

    def _curve(self, snapshot: Snapshot, now: datetime) -> CurveInForce[VoltVar]:
        def from_utility(value: UtilityCurve) -> VoltVar:
            open_loop = value.open_loop_s
            return self.params.setting(
                tuple((v, q / 100.0) for v, q in value.points),
                self.params.response_time_s if open_loop is None else open_loop,
            )

        return curve_in_force(
            snapshot, now, follow_utility=self.params.follow_utility, mode=UTILITY_MODE,
            axes=_UTILITY_AXES, configured=self._configured, from_utility=from_utility,
        )  # fmt: skip

    # ------------------------------------------------------------------ setpoint mode

    def _setpoint(
        self,
        snapshot: Snapshot,
        state: VoltVarState,
        now: datetime,
        setting: VoltVar,
        events: list[str],
    ) -> Decision[VoltVarState]:
        p = self.params
        assert p.var_setpoint is not None  # noqa: S101  # the params' validator requires it
        if snapshot.reading(p.voltage) is None:
            # Never measured (the gateway has not polled yet): nothing to base Q on, and
            # the inverter's points may not even be known to the gateway yet.
            if not state.stale:
                events.append(f"volt-var: waiting for a first reading of {p.voltage}")
            return Decision(replace(state, stale=True), events=tuple(events))
        volts = snapshot.value(p.voltage, p.max_age_s)
        metrics: dict[str, float] = {}
        if volts is None:
            target_var = 0.0
            if not state.stale:
                events.append(
                    f"volt-var: no fresh {p.voltage} (older than {p.max_age_s:g} s): "
                    "reactive power steered to 0 var (unity power factor)"
                )
        else:
            v_pu = volts / p.nominal_voltage_v
            target_var = volt_var_q_pu(v_pu, setting) * p.rated_va
            if state.stale:
                events.append(f"volt-var: {p.voltage} fresh again, following the curve")
            metrics["voltage_pct"] = 100.0 * v_pu
        previous = state.filter
        if previous is None:
            # The first setpoint starts from what the inverter does now (measured, when
            # configured; else unity power factor, its default), not from the target: the
            # response filter is there so that nothing jumps, the first step included.
            measured = (
                None if p.reactive_power is None else snapshot.value(p.reactive_power, p.max_age_s)
            )
            previous = ResponseFilter(setting.response_time_s, measured or 0.0, now)
        if previous.response_time_s != setting.response_time_s:
            previous = ResponseFilter(setting.response_time_s, previous.value, previous.at)
        filtered = previous.update(target_var, now)
        assert filtered.value is not None  # noqa: S101  # update always sets it
        # 1 var steps: finer than any inverter resolves, coarse enough not to resend noise.
        value = float(round(filtered.value))
        reason = (
            f"volt-var at {metrics['voltage_pct']:.1f} % V: target {target_var:.0f} var"
            if volts is not None
            else "volt-var: voltage stale, unity power factor"
        )
        requests = setpoint_requests(
            p.var_setpoint, value, p.enable, priority=p.priority, source=self.name,
            reason=reason, enable_reason="volt-var by setpoint",
        )  # fmt: skip
        metrics |= {"target_var": target_var, "setpoint_var": value}
        new_state = replace(state, filter=filtered, stale=volts is None)
        return Decision(new_state, requests, (), metrics, tuple(events))

    # ------------------------------------------------------------------ SunSpec 705 mode

    def curve_points(self, setting: VoltVar) -> dict[str, float]:
        """705 point names (without the curve prefix) -> the values that encode ``setting``."""
        values = {
            "actpt_count": float(len(setting.curve.points)),
            "deptref_state": _VA_MAX_PCT,
            "pri_state": _REACTIVE,
            "vref_pct": round(100.0 * setting.v_ref_pu, 1),
            "rsptms_s": float(round(setting.response_time_s)),
        }
        for k, (v, q) in enumerate(setting.curve.points, start=1):
            values[f"pt_{k}_v_pct"] = round(100.0 * v, 1)
            values[f"pt_{k}_var_pct"] = round(100.0 * q, 1)
        return values

    def _sunspec_curve(
        self, snapshot: Snapshot, state: VoltVarState, setting: VoltVar, events: list[str]
    ) -> Decision[VoltVarState]:
        p = self.params
        assert p.device is not None  # noqa: S101  # the params' validator requires it
        target = CurveTarget(p.device, 705, p.curve_index, self.curve_points(setting), "volt-var")
        measured: dict[str, float] = {}
        volts = snapshot.value(p.voltage, p.max_age_s)
        if volts is not None:
            v_pu = volts / p.nominal_voltage_v
            measured["voltage_pct"] = 100.0 * v_pu
            measured["target_var"] = volt_var_q_pu(v_pu, setting) * p.rated_va
        return sunspec_curve_decision(
            snapshot, target, state.step, max_age_s=p.max_age_s, priority=p.priority,
            source=self.name, measured=measured, events=events,
            state=lambda step: replace(state, step=step),
        )  # fmt: skip


def _describe(setting: VoltVar) -> str:
    points = ", ".join(f"({v:g}, {q:+g})" for v, q in setting.curve.points)
    return f"{points} pu, V_ref {setting.v_ref_pu:g}, {setting.response_time_s:g} s"
