"""Enter service (IEEE 1547-2018 clause 4.10) on one inverter, at grid-operator priority.

For an inverter that returns to service by itself as soon as the grid is back inside its
trip limits (no enter-service delay of its own). After a trip -- the inverter's
``connected`` point reads 0 (e.g. SunSpec 701 ``ConnSt`` DISCONNECTED) -- the controller
holds its active power limit ``pv_limit`` at 0 % until the voltage and frequency it
measures have stayed inside the enter-service window (Category B defaults: 0.917..1.05 pu,
59.5..60.1 Hz) for ``delay_s`` (300 s), any excursion starting the delay again; then it
raises the limit linearly from 0 to 100 % over ``ramp_s`` (300 s), and releases it
(100 %, once) when the ramp is over (:class:`gridpilot.control.ieee1547.EnterServiceState`).

While it holds or ramps, the limit is a :class:`~gridpilot.control.base.Constraint`
(``maximum``) as well as a request, with the ``enable`` points (e.g. SunSpec 704
``WMaxLimPctEna`` = 1), so that nothing of the same or a lower priority lifts it. A trip
during the ramp starts over. The controller starts in service (GridPilot starting on a
running site does not take the inverter out); stale measurements hold the present phase
and limit, and count as outside the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Self

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
from gridpilot.control.der_function import EnablePoints, setpoint_requests
from gridpilot.control.ieee1547 import (
    CurveError,
    EnterService,
    EnterServicePhase,
    EnterServiceState,
)

NAME = "enter_service"
Point = PointField

FULL_PCT = 100.0
_DISCONNECTED = 0.0
PHASE_NUMBERS = {
    EnterServicePhase.WAITING: 0.0,
    EnterServicePhase.DELAYING: 1.0,
    EnterServicePhase.RAMPING: 2.0,
    EnterServicePhase.IN_SERVICE: 3.0,
}


class EnterServiceParams(BaseModel):
    """``control.enter_service``: what the inverter measures, its trip indication, its limit
    point and the enter-service window, delay and ramp."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    voltage: Point
    """Voltage at the inverter's terminals, V, phase to neutral."""
    nominal_voltage_v: float = Field(gt=0.0)
    frequency: Point
    """The grid frequency the inverter measures, Hz."""
    connected: Point
    """1 while the inverter is connected, 0 once it has tripped (e.g.
    ``sunspec_inverter.m701_connst_state``)."""
    pv_limit: Point
    """The writable active power limit, % of the rating."""
    enable: EnablePoints = Field(default_factory=dict)
    v_min_pu: float = 0.917
    v_max_pu: float = 1.05
    f_min_hz: float = 59.5
    f_max_hz: float = 60.1
    """The window for a 60 Hz grid; a 50 Hz site sets its own (e.g. 49.5..50.1)."""
    delay_s: float = 300.0
    ramp_s: float = 300.0
    max_age_s: float = Field(default=10.0, gt=0.0)
    priority: Priority = Priority.GRID_OPERATOR

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self.setting()
        except CurveError as exc:
            raise ValueError(str(exc)) from None
        return self

    def setting(self) -> EnterService:
        return EnterService(
            self.v_min_pu, self.v_max_pu, self.f_min_hz, self.f_max_hz, self.delay_s,
            self.ramp_s,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class EnterServiceControlState:
    service: EnterServiceState = field(
        default_factory=lambda: EnterServiceState(EnterServicePhase.IN_SERVICE)
    )
    holding: bool = False
    """The limit was requested below 100 % (one request at 100 % releases it)."""
    waiting_for_readings: bool = False


class EnterServiceController(ConfiguredController[EnterServiceParams]):
    """IEEE 1547 enter service after a trip, by the inverter's active power limit."""

    def __init__(self, params: EnterServiceParams, name: str = NAME) -> None:
        super().__init__(params, name)
        self._setting = params.setting()

    def initial_state(self) -> EnterServiceControlState:
        return EnterServiceControlState()

    def decide(
        self,
        snapshot: Snapshot,
        state: EnterServiceControlState,
        now: datetime,
        forecasts: Forecasts,
    ) -> Decision[EnterServiceControlState]:
        p, s = self.params, self._setting
        events: list[str] = []
        if any(snapshot.reading(ref) is None for ref in (p.voltage, p.frequency, p.connected)):
            if not state.waiting_for_readings:
                events.append(
                    f"enter service: waiting for a first reading of {p.voltage}, "
                    f"{p.frequency} and {p.connected}"
                )
            return Decision(replace(state, waiting_for_readings=True), events=tuple(events))
        volts = snapshot.value(p.voltage, p.max_age_s)
        hz = snapshot.value(p.frequency, p.max_age_s)
        connected = snapshot.value(p.connected, p.max_age_s)
        v_pu = None if volts is None else volts / p.nominal_voltage_v
        service = state.service
        tripped = connected == _DISCONNECTED
        if tripped and service.phase in (EnterServicePhase.RAMPING, EnterServicePhase.IN_SERVICE):
            service = service.tripped()
            events.append(
                f"enter service: {p.connected} says tripped; {p.pv_limit} held at 0 % until "
                f"{s.v_min_pu:g}..{s.v_max_pu:g} pu and {s.f_min_hz:g}..{s.f_max_hz:g} Hz "
                f"for {s.delay_s:g} s, then a {s.ramp_s:g} s ramp"
            )
        if service.phase is not EnterServicePhase.IN_SERVICE:
            # Stale readings are None: outside the window while not yet in service.
            service = service.step(v_pu, hz, now, s)
        if service.phase != state.service.phase and not events:
            events.append(f"enter service: {service.phase.value.replace('_', ' ')}")
        metrics: dict[str, float] = {"phase_state": PHASE_NUMBERS[service.phase]}
        if v_pu is not None:
            metrics["voltage_pct"] = 100.0 * v_pu
        if hz is not None:
            metrics["frequency_hz"] = hz
        new_state = replace(state, service=service, waiting_for_readings=False)
        if service.phase is EnterServicePhase.IN_SERVICE:
            if not state.holding:
                return Decision(new_state, metrics=metrics, events=tuple(events))
            metrics["limit_pct"] = FULL_PCT
            requests = self._requests(FULL_PCT, "entered service: limit released")
            return Decision(replace(new_state, holding=False), requests, (), metrics, tuple(events))
        limit_pct = round(FULL_PCT * service.limit_pu(now, s), 1)
        metrics["limit_pct"] = limit_pct
        reason = f"enter service ({service.phase.value})"
        constraint = Constraint(p.pv_limit, p.priority, self.name, maximum=limit_pct, reason=reason)
        requests = self._requests(limit_pct, reason)
        return Decision(
            replace(new_state, holding=True), requests, (constraint,), metrics, tuple(events)
        )

    def _requests(self, limit_pct: float, reason: str) -> tuple[SetpointRequest, ...]:
        p = self.params
        return setpoint_requests(
            p.pv_limit, limit_pct, p.enable, priority=p.priority, source=self.name, reason=reason
        )
