"""The control engine's pure core: one cycle = decide, arbitrate, clip.

:meth:`Engine.cycle` takes a :class:`~gridpilot.control.base.Snapshot` and the forecasts
and returns a :class:`CycleResult`: the setpoint every commanded point should have now, and
why. It never reads a clock or touches the bus (the service in ``service.py`` does), so
the benchmark drives the very same engine in simulated time.

One cycle, in order:

1. **Fail-safe** — for every configured fail-safe whose inputs are older than its limit
   (or missing), its targets get ``SAFETY`` requests with the fail-safe value.
2. **Decide** — each enabled controller's ``decide``; one that raises is reported in
   ``errors`` and skipped (its state is kept), the others go on.
3. **Overrides** — an operator's manual value for a point, until it expires (``MANUAL``).
4. **Arbitrate** — per point, the request of the highest priority wins (ties: the
   controller listed first), then every constraint of that priority or higher clips it,
   lowest priority first so that the highest has the last word.
5. **Envelope** — device limits, the battery SoC window (no discharge at or below the
   minimum, no charge at or above the maximum, neither when the SoC is unknown) and the
   ramp rate from the last target (safety requests skip the ramp: a fail-safe acts at once).
6. **Release** — a point that was commanded but has no request any more goes to its
   configured idle value once (a battery back to 0 W), so nothing stays driven by a
   controller that was disabled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gridpilot.control.base import (
    Constraint,
    Controller,
    Forecasts,
    Job,
    JobOutcome,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)

MANUAL_SOURCE = "manual"
FAIL_SAFE_SOURCE = "fail_safe"
RELEASE_SOURCE = "release"


@dataclass(frozen=True, slots=True)
class PointLimits:
    """The safety envelope of one writable point."""

    target: PointRef
    minimum: float = -math.inf
    maximum: float = math.inf
    max_ramp_per_s: float | None = None
    """Largest change per second from the previous target (units of the point per s)."""
    idle: float | None = None
    """Value commanded once when no controller requests the point any more."""


@dataclass(frozen=True, slots=True)
class BatteryWindow:
    """Keep a battery inside its SoC window whatever a controller asks."""

    setpoint: PointRef
    soc: PointRef
    soc_min_pct: float = 10.0
    soc_max_pct: float = 90.0
    max_age_s: float = 30.0
    """An SoC older than this counts as unknown: the battery is held at 0 W."""


@dataclass(frozen=True, slots=True)
class FailSafe:
    """When any of ``inputs`` is older than ``max_age_s``, hold ``targets`` at their values."""

    name: str
    inputs: tuple[PointRef, ...]
    max_age_s: float
    targets: Mapping[PointRef, float]


@dataclass(frozen=True, slots=True)
class EngineParams:
    limits: tuple[PointLimits, ...] = ()
    batteries: tuple[BatteryWindow, ...] = ()
    fail_safes: tuple[FailSafe, ...] = ()


@dataclass(frozen=True, slots=True)
class Override:
    """An operator holds ``target`` at ``value`` until ``until``."""

    target: PointRef
    value: float
    until: datetime
    by: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Arbitration:
    """How one point's target came about this cycle."""

    target: PointRef
    value: float
    requested: float
    source: str
    priority: Priority
    limited_by: tuple[str, ...] = ()
    """What changed the requested value: constraint sources, ``limits``, ``soc_window``,
    ``ramp``."""
    overridden: tuple[str, ...] = ()
    """Sources of lower-priority requests for the same point that lost."""


@dataclass(frozen=True, slots=True)
class EngineEvent:
    source: str
    message: str
    kind: str = "info"
    """``info``, ``warning`` or ``alarm``."""


@dataclass(frozen=True, slots=True)
class CycleResult:
    now: datetime
    targets: Mapping[PointRef, float]
    """Every point to command now: arbitrated, clipped to the envelope."""
    arbitrations: Mapping[PointRef, Arbitration]
    metrics: Mapping[str, float]
    """``{controller}_{metric}`` from the controllers, plus the engine's own."""
    events: tuple[EngineEvent, ...]
    errors: Mapping[str, str]
    """Controller name -> what it raised this cycle."""
    fail_safes_active: tuple[str, ...]
    jobs: tuple[tuple[str, Job], ...] = ()
    """(controller name, job): work the controllers handed out this cycle; whoever runs
    them gives each outcome back through :meth:`Engine.finish_job`."""


@dataclass(slots=True)
class _ControllerSlot:
    controller: Controller[Any]
    state: Any
    enabled: bool = True
    failing: bool = False
    """Raised in the previous cycle (an event is emitted on the change, not every cycle)."""


@dataclass(slots=True)
class _Last:
    value: float
    at: datetime
    source: str


@dataclass(slots=True)
class _EngineState:
    last: dict[PointRef, _Last] = field(default_factory=dict)
    overrides: dict[PointRef, Override] = field(default_factory=dict)
    active_fail_safes: set[str] = field(default_factory=set)


class DuplicateControllerError(ValueError):
    """Two controllers share a name: their metrics and state would collide."""


class Engine:
    """Controllers plus the arbitration and envelope around them. No I/O, no clock."""

    def __init__(self, controllers: Sequence[Controller[Any]], params: EngineParams) -> None:
        self.params = params
        self._slots: dict[str, _ControllerSlot] = {}
        for controller in controllers:
            if controller.name in self._slots:
                raise DuplicateControllerError(
                    f"two controllers are named {controller.name!r}; give each a unique name"
                )
            self._slots[controller.name] = _ControllerSlot(controller, controller.initial_state())
        self._limits = {limit.target: limit for limit in params.limits}
        self._batteries = {battery.setpoint: battery for battery in params.batteries}
        self._state = _EngineState()
        self._started_at: datetime | None = None

    # ---------------------------------------------------------------------- operator input

    @property
    def controller_names(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def is_enabled(self, name: str) -> bool:
        return self._slot(name).enabled

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable a controller; a disabled one keeps its state but decides nothing."""
        self._slot(name).enabled = enabled

    def controller_state(self, name: str) -> Any:
        return self._slot(name).state

    def set_controller_state(self, name: str, state: Any) -> None:
        """Replace a controller's state between cycles (e.g. a re-identified model)."""
        self._slot(name).state = state

    def controllers(self) -> tuple[Controller[Any], ...]:
        return tuple(slot.controller for slot in self._slots.values())

    def replace_controller(self, controller: Controller[Any]) -> None:
        """Put ``controller`` in the place of the one with its name (new parameters), keeping
        that one's state and enabled flag: a new limit must not forget the month's billed
        peak or the zone's identified model."""
        self._slot(controller.name).controller = controller

    def set_override(self, override: Override) -> None:
        """Hold a point at a value until ``override.until`` (replaces an earlier override)."""
        self._state.overrides[override.target] = override

    def clear_override(self, target: PointRef) -> Override | None:
        return self._state.overrides.pop(target, None)

    @property
    def overrides(self) -> Mapping[PointRef, Override]:
        return dict(self._state.overrides)

    def last_target(self, target: PointRef) -> float | None:
        last = self._state.last.get(target)
        return None if last is None else last.value

    def _slot(self, name: str) -> _ControllerSlot:
        try:
            return self._slots[name]
        except KeyError:
            known = ", ".join(self._slots) or "none configured"
            raise KeyError(f"no controller named {name!r} (known: {known})") from None

    # ---------------------------------------------------------------------------- cycle

    def cycle(self, snapshot: Snapshot, forecasts: Forecasts) -> CycleResult:
        now = snapshot.now
        if self._started_at is None:
            self._started_at = now
        events: list[EngineEvent] = []
        errors: dict[str, str] = {}
        metrics: dict[str, float] = {}
        requests: list[SetpointRequest] = []
        constraints: list[Constraint] = []
        jobs: list[tuple[str, Job]] = []

        active = self._fail_safe_requests(snapshot, requests, events)

        for name, slot in self._slots.items():
            if not slot.enabled:
                continue
            try:
                decision = slot.controller.decide(snapshot, slot.state, now, forecasts)
            except Exception as exc:  # noqa: BLE001 - any bug in one controller must not stop the others
                errors[name] = f"{type(exc).__name__}: {exc}"
                if not slot.failing:
                    events.append(
                        EngineEvent(
                            name, f"controller raised and is skipped: {errors[name]}", "alarm"
                        )
                    )
                slot.failing = True
                continue
            if slot.failing:
                events.append(EngineEvent(name, "controller decides again", "info"))
            slot.failing = False
            slot.state = decision.state
            requests.extend(decision.requests)
            constraints.extend(decision.constraints)
            for metric, value in decision.metrics.items():
                metrics[f"{name}_{metric}"] = value
            events.extend(EngineEvent(name, message) for message in decision.events)
            jobs.extend((name, job) for job in decision.jobs)

        self._override_requests(now, requests, events)

        arbitrations = self._arbitrate(snapshot, requests, constraints)
        self._release(now, arbitrations, events)
        for target, arbitration in arbitrations.items():
            self._state.last[target] = _Last(arbitration.value, now, arbitration.source)
        metrics["fail_safes_active_count"] = float(len(active))
        metrics["controller_errors_count"] = float(len(errors))
        return CycleResult(
            now=now,
            targets={target: a.value for target, a in arbitrations.items()},
            arbitrations=arbitrations,
            metrics=metrics,
            events=tuple(events),
            errors=errors,
            fail_safes_active=tuple(active),
            jobs=tuple(jobs),
        )

    def finish_job(self, name: str, job: Job, outcome: JobOutcome) -> tuple[EngineEvent, ...]:
        """Give a job's outcome to the controller that handed it out (between cycles); its
        state takes it in. Returns the controller's events. A controller that is gone or
        cannot take outcomes is skipped; one whose ``finish`` raises is reported."""
        slot = self._slots.get(name)
        finish = getattr(slot.controller, "finish", None) if slot is not None else None
        if slot is None or finish is None:
            return ()
        try:
            state, messages = finish(slot.state, job, outcome)
        except Exception as exc:  # noqa: BLE001 - a controller's bug must not stop the service
            return (
                EngineEvent(
                    name, f"taking in job {job.key!r} raised: {type(exc).__name__}: {exc}", "alarm"
                ),
            )
        slot.state = state
        return tuple(EngineEvent(name, message) for message in messages)

    # ------------------------------------------------------------------------- stages

    def _fail_safe_requests(
        self, snapshot: Snapshot, requests: list[SetpointRequest], events: list[EngineEvent]
    ) -> list[str]:
        active: list[str] = []
        for fail_safe in self.params.fail_safes:
            stale = [ref for ref in fail_safe.inputs if snapshot.age_s(ref) > fail_safe.max_age_s]
            was_active = fail_safe.name in self._state.active_fail_safes
            if stale:
                active.append(fail_safe.name)
                reason = "stale input " + ", ".join(
                    f"{ref} ({_age_text(snapshot.age_s(ref))})" for ref in stale
                )
                requests.extend(
                    SetpointRequest(target, value, Priority.SAFETY, FAIL_SAFE_SOURCE, reason)
                    for target, value in fail_safe.targets.items()
                )
                if not was_active:
                    held = ", ".join(f"{t}={v:g}" for t, v in fail_safe.targets.items())
                    starting = (
                        self._started_at is None
                        or (snapshot.now - self._started_at).total_seconds() <= fail_safe.max_age_s
                    )
                    if starting and all(math.isinf(snapshot.age_s(ref)) for ref in stale):
                        # Just started: no reading has had time to arrive. Safe, not an alarm.
                        message = (
                            f"fail-safe {fail_safe.name!r} holds {held} until the first "
                            f"reading of {', '.join(str(ref) for ref in stale)} arrives"
                        )
                        kind = "info"
                    else:
                        message = (
                            f"fail-safe {fail_safe.name!r} entered: {reason} is older than "
                            f"{fail_safe.max_age_s:g} s; holding {held}"
                        )
                        kind = "alarm"
                    events.append(EngineEvent(FAIL_SAFE_SOURCE, message, kind))
                    self._state.active_fail_safes.add(fail_safe.name)
            elif was_active:
                self._state.active_fail_safes.discard(fail_safe.name)
                events.append(
                    EngineEvent(
                        FAIL_SAFE_SOURCE, f"fail-safe {fail_safe.name!r} left: inputs are fresh"
                    )
                )
        return active

    def _override_requests(
        self, now: datetime, requests: list[SetpointRequest], events: list[EngineEvent]
    ) -> None:
        for target, override in list(self._state.overrides.items()):
            if override.until <= now:
                del self._state.overrides[target]
                events.append(
                    EngineEvent(
                        MANUAL_SOURCE,
                        f"override of {target} by {override.by} expired; controllers take over",
                    )
                )
                continue
            requests.append(
                SetpointRequest(
                    target,
                    override.value,
                    Priority.MANUAL,
                    MANUAL_SOURCE,
                    override.reason or f"override by {override.by}",
                )
            )

    def _arbitrate(
        self,
        snapshot: Snapshot,
        requests: list[SetpointRequest],
        constraints: list[Constraint],
    ) -> dict[PointRef, Arbitration]:
        by_target: dict[PointRef, list[SetpointRequest]] = {}
        for request in requests:
            by_target.setdefault(request.target, []).append(request)
        constraints_by_target: dict[PointRef, list[Constraint]] = {}
        for constraint in constraints:
            constraints_by_target.setdefault(constraint.target, []).append(constraint)

        out: dict[PointRef, Arbitration] = {}
        for target, candidates in by_target.items():
            # max() keeps the first of equal priorities: the controller listed first wins.
            winner = max(candidates, key=lambda r: r.priority)
            losers = tuple(r.source for r in candidates if r is not winner)
            value = winner.value
            limited_by: list[str] = []
            applicable = sorted(
                (c for c in constraints_by_target.get(target, ()) if c.priority >= winner.priority),
                key=lambda c: c.priority,
            )
            for constraint in applicable:
                clipped = min(max(value, constraint.minimum), constraint.maximum)
                if clipped != value:
                    limited_by.append(constraint.source)
                value = clipped
            value = self._envelope(snapshot, target, value, winner, limited_by)
            out[target] = Arbitration(
                target=target,
                value=value,
                requested=winner.value,
                source=winner.source,
                priority=winner.priority,
                limited_by=tuple(limited_by),
                overridden=losers,
            )
        return out

    def _envelope(
        self,
        snapshot: Snapshot,
        target: PointRef,
        value: float,
        winner: SetpointRequest,
        limited_by: list[str],
    ) -> float:
        limits = self._limits.get(target)
        if limits is not None:
            clipped = min(max(value, limits.minimum), limits.maximum)
            if clipped != value:
                limited_by.append("limits")
            value = clipped
        battery = self._batteries.get(target)
        if battery is not None:
            soc = snapshot.value(battery.soc, battery.max_age_s)
            allowed = value
            if soc is None or (value > 0.0 and soc <= battery.soc_min_pct):
                allowed = min(value, 0.0) if soc is not None else 0.0
            if soc is not None and value < 0.0 and soc >= battery.soc_max_pct:
                allowed = 0.0
            if allowed != value:
                limited_by.append("soc_window")
            value = allowed
        if (
            limits is not None
            and limits.max_ramp_per_s is not None
            and winner.priority < Priority.SAFETY
        ):
            last = self._state.last.get(target)
            if last is not None:
                dt_s = max((snapshot.now - last.at).total_seconds(), 0.0)
                step = limits.max_ramp_per_s * dt_s
                ramped = min(max(value, last.value - step), last.value + step)
                if ramped != value:
                    limited_by.append("ramp")
                value = ramped
        return value

    def _release(
        self, now: datetime, arbitrations: dict[PointRef, Arbitration], events: list[EngineEvent]
    ) -> None:
        for target, last in list(self._state.last.items()):
            if target in arbitrations:
                continue
            limits = self._limits.get(target)
            if limits is None or limits.idle is None or last.source == RELEASE_SOURCE:
                continue
            arbitrations[target] = Arbitration(
                target=target,
                value=limits.idle,
                requested=limits.idle,
                source=RELEASE_SOURCE,
                priority=Priority.COMFORT,
            )
            events.append(
                EngineEvent(
                    RELEASE_SOURCE,
                    f"{target}: no controller requests it any more (last: {last.source}); "
                    f"set to its idle value {limits.idle:g}",
                )
            )


def _age_text(age_s: float) -> str:
    return "never seen" if math.isinf(age_s) else f"{age_s:.1f} s old"
