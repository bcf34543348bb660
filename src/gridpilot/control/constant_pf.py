"""Constant power factor (IEEE 1547-2018 clause 5.3.2) on one inverter, at grid-operator
priority.

The inverter holds reactive power in proportion to its active power,
``|Q| = |P| · tan(acos PF)``, injecting (over-excited) or absorbing (under-excited)
(:func:`gridpilot.control.ieee1547.constant_pf_var`); PF 1.0 is the 1547 default, 0.90
either way the least a Category B DER must support. Two ways, by ``mode``:

``sunspec_pf`` -- the inverter has SunSpec 704 ``PFWInj`` (power factor while injecting
    active power): the controller requests ``PFWInj.PF`` = ``pf``, ``PFWInj.Ext`` = 0
    (over-excited) or 1 (under-excited) and ``PFWInjEna`` = 1, once those points are in the
    device's telemetry; the inverter keeps Q on P itself, as fast as P moves. ``device``
    names the SunSpec inverter.

``setpoint`` -- for an inverter without a power-factor mode: each cycle the controller reads
    its active power and requests the matching reactive power on ``var_setpoint`` (var,
    positive = injecting), with the ``enable`` points alongside (e.g. 704 ``VarSetEna`` = 1,
    ``VarSetMod`` = 4). Q lags P by a cycle and a poll. A stale active power steers Q to
    0 var (unity) and says so once; nothing is sent before the first reading.

The utility's ``opModFixedPFInjectW``/``AbsorbW`` go through the grid-operator controller
(``control.grid_operator.power_factor``), not this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridpilot.control.base import (
    Decision,
    Forecasts,
    PointField,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.configured import ConfiguredController
from gridpilot.control.der_function import EnablePoints, setpoint_requests
from gridpilot.control.ieee1547 import (
    ConstantPowerFactor,
    CurveError,
    Excitation,
    constant_pf_var,
)

NAME = "constant_pf"
Point = PointField

# SunSpec 704 PFWInj.Ext
_OVER_EXCITED = 0.0
_UNDER_EXCITED = 1.0
_ENABLED = 1.0


class ConstantPfParams(BaseModel):
    """``control.constant_pf``: the power factor, its direction and how to apply it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["sunspec_pf", "setpoint"] = "sunspec_pf"
    pf: float = Field(default=1.0, gt=0.0, le=1.0)
    excitation: Excitation = Excitation.INJECTING
    """``injecting`` (over-excited, raises the voltage) or ``absorbing`` (under-excited)."""
    min_pf: float = Field(default=0.90, gt=0.0, le=1.0)
    """The lowest power factor accepted (Category B: 0.90)."""
    device: str | None = None
    """``sunspec_pf`` mode: the SunSpec inverter with 704 ``PFWInj``."""
    active_power: Point | None = None
    """``setpoint`` mode: the inverter's active power, W."""
    var_setpoint: Point | None = None
    """``setpoint`` mode: the writable reactive power setpoint, var, positive = injecting."""
    enable: EnablePoints = Field(default_factory=dict)
    """``setpoint`` mode: points requested with every setpoint."""
    max_age_s: float = Field(default=10.0, gt=0.0)
    priority: Priority = Priority.GRID_OPERATOR

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self.setting()
        except CurveError as exc:
            raise ValueError(str(exc)) from None
        if self.mode == "sunspec_pf" and self.device is None:
            raise ValueError("mode sunspec_pf needs device (the SunSpec inverter with 704)")
        if self.mode == "setpoint" and (self.active_power is None or self.var_setpoint is None):
            raise ValueError(
                "mode setpoint needs active_power (W) and var_setpoint (the writable var setpoint)"
            )
        return self

    def setting(self) -> ConstantPowerFactor:
        return ConstantPowerFactor(self.pf, self.excitation, self.min_pf)


@dataclass(frozen=True, slots=True)
class ConstantPfState:
    stale: bool = False


class ConstantPfController(ConfiguredController[ConstantPfParams]):
    """IEEE 1547 constant power factor on one inverter."""

    def __init__(self, params: ConstantPfParams, name: str = NAME) -> None:
        super().__init__(params, name)
        self._setting = params.setting()

    def initial_state(self) -> ConstantPfState:
        return ConstantPfState()

    def decide(
        self, snapshot: Snapshot, state: ConstantPfState, now: datetime, forecasts: Forecasts
    ) -> Decision[ConstantPfState]:
        p, s = self.params, self._setting
        reason = f"constant power factor {s.pf:g} {s.excitation.value}"
        if p.mode == "sunspec_pf":
            assert p.device is not None  # noqa: S101  # the params' validator requires it
            ext = _OVER_EXCITED if s.excitation is Excitation.INJECTING else _UNDER_EXCITED
            values = {"m704_pfwinj_pf": s.pf, "m704_pfwinj_ext_state": ext,
                      "m704_pfwinjena_state": _ENABLED}  # fmt: skip
            refs = {PointRef(p.device, point): value for point, value in values.items()}
            missing = [ref for ref in refs if snapshot.reading(ref) is None]
            if missing:
                # Not polled yet (or a device without PFWInj): the gateway would refuse a
                # point it does not know, and the engine resends only after resend_after.
                waiting = () if state.stale else (
                    f"constant power factor: waiting for {missing[0]} in the telemetry (a "
                    "device without SunSpec 704 PFWInj needs mode: setpoint)",
                )  # fmt: skip
                return Decision(ConstantPfState(stale=True), events=waiting)
            pf_requests = tuple(
                SetpointRequest(ref, value, p.priority, self.name, reason)
                for ref, value in refs.items()
            )
            return Decision(ConstantPfState(), pf_requests, (), {"pf": s.pf})
        assert p.active_power is not None  # noqa: S101  # the params' validator requires it
        assert p.var_setpoint is not None  # noqa: S101
        events: list[str] = []
        if snapshot.reading(p.active_power) is None:
            if not state.stale:
                events.append(f"constant power factor: waiting for a first reading of "
                              f"{p.active_power}")  # fmt: skip
            return Decision(ConstantPfState(stale=True), events=tuple(events))
        watts = snapshot.value(p.active_power, p.max_age_s)
        if watts is None:
            var = 0.0
            if not state.stale:
                events.append(
                    f"constant power factor: no fresh {p.active_power} (older than "
                    f"{p.max_age_s:g} s): reactive power steered to 0 var"
                )
        else:
            var = float(round(constant_pf_var(watts, s)))
            if state.stale:
                events.append(f"constant power factor: {p.active_power} fresh again")
        requests = setpoint_requests(
            p.var_setpoint, var, p.enable, priority=p.priority, source=self.name, reason=reason
        )
        metrics = {"pf": s.pf, "setpoint_var": var}
        return Decision(ConstantPfState(stale=watts is None), requests, (), metrics, tuple(events))
