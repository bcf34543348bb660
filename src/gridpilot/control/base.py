"""The vocabulary of the control engine: snapshots in, decisions out.

A controller is a pure function of ``(snapshot, its own state, now, forecasts)`` that returns
a :class:`Decision`: its next state, setpoint requests, constraints and metrics. It never
reads a clock, sleeps, or touches the bus; the engine (``engine.py``) calls it once per cycle
and the service (``service.py``) moves bytes.

Units: values are floats in the unit their name ends with (``_w``, ``_wh``, ``_degc``,
``_pct``, ``_s``), as in the point contract. The controllers are vectorised numeric code
(LP matrices over a horizon), where a quantity type per element would cost more than it
guards; the unit suffix on every name is the guard instead (STYLE.md item 5, adapted).

Sign conventions (the same as the simulator's and the meters'):

* grid power: positive = import from the grid, negative = export;
* battery power and its setpoint: positive = discharge, negative = charge;
* PV power: positive = generation; loads: positive = consumption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Annotated, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BeforeValidator

from gridpilot.control.grid_controls import GridControls


class Priority(IntEnum):
    """Who wins when two controllers want the same point: the higher value."""

    COMFORT = 10
    ECONOMICS = 20
    PEAK_SHAVING = 30
    GRID_OPERATOR = 40
    MANUAL = 45
    """An operator's override from the CLI or API: beats every controller but safety."""
    SAFETY = 50
    """Fail-safe states of stale inputs and the safety envelope."""


def _parse_point_ref(value: object) -> object:
    """Site files write a point as ``"device.point"``; accept that as well as a PointRef."""
    return PointRef.parse(value) if isinstance(value, str) else value


class PointRef(NamedTuple):
    """One point of one device, e.g. ``PointRef("battery", "active_power_setpoint_w")``."""

    device: str
    point: str

    def __str__(self) -> str:
        return f"{self.device}.{self.point}"

    @classmethod
    def parse(cls, text: str) -> PointRef:
        """``"device.point"`` -> ``PointRef``; raises ``ValueError`` naming the expected form."""
        device, sep, point = text.partition(".")
        if not sep or not device or not point or "." in point:
            raise ValueError(f"{text!r} is not DEVICE.POINT (e.g. 'battery.soc_pct')")
        return cls(device, point)


PointField = Annotated[PointRef, BeforeValidator(_parse_point_ref)]
"""A point in a controller's params: ``"device.point"`` in YAML, a ``PointRef`` in code."""


@dataclass(frozen=True, slots=True)
class Reading:
    """The latest value of a point and when it was measured (the telemetry ``ts``)."""

    value: float
    ts: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the engine knows at ``now``: the latest reading of every point it has seen."""

    now: datetime
    readings: Mapping[PointRef, Reading] = field(default_factory=dict)
    grid_controls: GridControls | None = None
    """The utility's controls from the last good ``{site}/grid/controls`` message (2030.5),
    stale or not (the consumer decides what staleness means); None when none was received."""

    def reading(self, ref: PointRef) -> Reading | None:
        return self.readings.get(ref)

    def age_s(self, ref: PointRef) -> float:
        """Seconds since the point was measured; ``inf`` if it never was."""
        reading = self.readings.get(ref)
        if reading is None:
            return math.inf
        return (self.now - reading.ts).total_seconds()

    def value(self, ref: PointRef, max_age_s: float = math.inf) -> float | None:
        """The latest value, or ``None`` when missing or older than ``max_age_s``."""
        reading = self.readings.get(ref)
        if reading is None or (self.now - reading.ts).total_seconds() > max_age_s:
            return None
        return reading.value


@dataclass(frozen=True, slots=True)
class Forecast:
    """Evenly spaced values from ``start``: ``values[k]`` holds over [start + k·step, +step)."""

    start: datetime
    step: timedelta
    values: tuple[float, ...]

    def at(self, when: datetime) -> float | None:
        """The value covering ``when``; ``None`` outside the forecast."""
        if not self.values:
            return None
        index = math.floor((when - self.start) / self.step)
        if index < 0 or index >= len(self.values):
            return None
        return self.values[index]

    def window(self, start: datetime, step: timedelta, count: int) -> tuple[float, ...] | None:
        """``count`` values resampled at ``step`` from ``start`` (value covering each
        instant); ``None`` if the forecast does not cover the whole window."""
        out: list[float] = []
        for k in range(count):
            value = self.at(start + k * step)
            if value is None:
                return None
            out.append(value)
        return tuple(out)


Forecasts = Mapping[str, Forecast]
"""Forecasts by name: ``load_w``, ``pv_w``, ``outdoor_degc``, ``irradiance_wm2``,
``price_per_kwh``. A controller that needs a missing one falls back and says so."""


@dataclass(frozen=True, slots=True)
class SetpointRequest:
    """A controller wants ``target`` set to ``value`` (an absolute target, never a delta)."""

    target: PointRef
    value: float
    priority: Priority
    source: str
    """Name of the controller (or ``manual``, ``fail_safe``)."""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Constraint:
    """A controller bounds what lower-or-equal-priority requests may set ``target`` to.

    E.g. the grid operator's export limit becomes ``PointRef("pv_inverter",
    "power_limit_pct")`` with ``maximum=40``; a request of any lower priority is clipped to it.
    """

    target: PointRef
    priority: Priority
    source: str
    minimum: float = -math.inf
    maximum: float = math.inf
    reason: str = ""


S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Job:
    """CPU-heavy work a controller hands out instead of doing it in ``decide`` (an LP
    solve, a model fit): ``fn(*args)``, run by the service in a worker process
    (``gridpilot.workers``) while the cycles go on. ``fn`` is a module-level function and
    ``args`` pure, pickleable inputs. The outcome comes back through the controller's
    ``finish`` (:class:`Offloading`) between two cycles; until then the controller decides
    without it (the plan it has, or its fallback)."""

    key: str
    """What the job computes, unique within its controller (``plan``,
    ``identify:hvac_zone_1``): a newer job of the same key replaces one still waiting."""
    fn: Callable[..., object]
    args: tuple[object, ...] = ()
    tag: object = None
    """The controller's mark of the request (when it was made): ``finish`` drops an
    outcome whose request its state no longer waits for."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What became of a :class:`Job`: its ``value``, or ``error`` (what it raised, a
    timeout, its worker lost, the pool full or shut down)."""

    value: object = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision(Generic[S]):
    """What one controller decided in one cycle."""

    state: S
    """The controller's state for the next cycle."""
    requests: tuple[SetpointRequest, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Figures worth recording, named like points with a unit suffix (``demand_w``,
    ``limit_w``, ``reserve_wh``): the engine publishes them as the controller's telemetry."""
    events: tuple[str, ...] = ()
    """Things an operator should hear about this cycle (a load shed, a fallback taken)."""
    jobs: tuple[Job, ...] = ()
    """Work to run off the cycle (an :class:`Offloading` controller's only)."""


class Controller(Protocol[S]):
    """A pure controller. ``name`` is an identifier; ``priority`` ranks its requests."""

    @property
    def name(self) -> str: ...

    @property
    def priority(self) -> Priority: ...

    def initial_state(self) -> S: ...

    def decide(
        self, snapshot: Snapshot, state: S, now: datetime, forecasts: Forecasts
    ) -> Decision[S]:
        """One cycle. May raise: the engine reports it and skips this controller."""
        ...


class Offloading(Protocol[S]):
    """A controller that can hand its CPU-heavy work out as :class:`Job` s.

    Built inline (the default: ``decide`` solves there and then, as the control benchmark
    drives it), :meth:`offloaded` gives the same controller in the mode where ``decide``
    returns jobs instead; the service switches to it when it has worker processes.
    """

    def offloaded(self) -> Controller[S]:
        """This controller, emitting jobs instead of solving in ``decide``."""
        ...

    def finish(self, state: S, job: Job, outcome: JobOutcome) -> tuple[S, tuple[str, ...]]:
        """``state`` with ``job``'s outcome taken in, and events for the operator. Pure."""
        ...
