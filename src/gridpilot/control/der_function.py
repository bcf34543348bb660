"""What the IEEE 1547 function controllers share: volt-var, volt-watt, watt-var, constant
power factor, frequency droop and enter service each steer one inverter, at one priority,
through a setpoint with its ``enable`` points alongside, from a curve that the utility's
2030.5 controls may replace, or through the inverter's own SunSpec curve model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Generic, TypeVar

from pydantic import PlainSerializer

from gridpilot.control.base import (
    Decision,
    PointField,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.grid_controls import Curve as UtilityCurve
from gridpilot.control.ieee1547 import CurveError
from gridpilot.control.sunspec_curves import STEP_NUMBERS, CurveTarget, curve_step


def _points_as_text(points: dict[PointRef, float]) -> dict[str, float]:
    # Keys as the site file writes them ("device.point"), so that a dump reads back.
    return {str(ref): value for ref, value in points.items()}


EnablePoints = Annotated[dict[PointField, float], PlainSerializer(_points_as_text)]
"""Points requested alongside a function's setpoint (e.g. SunSpec 704 ``WMaxLimPctEna`` = 1)."""


S = TypeVar("S")
T = TypeVar("T")


def setpoint_requests(
    target: PointRef,
    value: float,
    enable: Mapping[PointRef, float],
    *,
    priority: Priority,
    source: str,
    reason: str,
    enable_reason: str | None = None,
) -> tuple[SetpointRequest, ...]:
    """``target`` = ``value``, with every ``enable`` point at its value (they go together:
    a limit or var setpoint does nothing on a SunSpec inverter while its enable is 0)."""
    also = reason if enable_reason is None else enable_reason
    return (
        SetpointRequest(target, value, priority, source, reason),
        *(SetpointRequest(ref, v, priority, source, also) for ref, v in enable.items()),
    )


def limit_in_force(
    snapshot: Snapshot, limit: PointRef, enable: Mapping[PointRef, float], max_age_s: float
) -> float | None:
    """The limit in force now: ``limit``'s reading when every ``enable`` point reads its
    value (else no limit is in force: 100 %); None when unknown (a reading missing or stale)."""
    value = snapshot.value(limit, max_age_s)
    for ref, wanted in enable.items():
        got = snapshot.value(ref, max_age_s)
        if got is None:
            return None
        if got != wanted:
            return 100.0  # the limit register holds a value that is not in force
    return value


RELEASE_RETRY = timedelta(seconds=60)
"""How long a release is asked for again while the limit does not read it back."""
_RELEASE_TOLERANCE_PCT = 0.05


@dataclass(frozen=True, slots=True)
class Release:
    """A limit a function set back to ``value`` at ``at`` when it stopped steering. One
    command can be lost on the way (it expired behind a busy device, the write failed), and
    a function that then fell silent would leave its last limit in force for good: so the
    release is asked for again every cycle until the limit reads it back, for at most
    ``RELEASE_RETRY`` -- after that someone else (an operator) may have set it."""

    value: float
    at: datetime

    def pending(self, read: float | None, now: datetime) -> bool:
        """Still to be asked for: not read back (``read``, None when unknown) and recent."""
        if read is not None and abs(read - self.value) <= _RELEASE_TOLERANCE_PCT:
            return False
        return now - self.at < RELEASE_RETRY


def next_release(
    release: Release | None,
    *,
    steering: bool,
    released: bool,
    value: float,
    read: float | None,
    now: datetime,
) -> Release | None:
    """The release still to be asked for after this cycle: none while the function
    steers; a new one (``value``) in the cycle it lets go (``released``); else ``release``
    while it is pending against the limit's reading ``read``."""
    if steering:
        return None
    if released:
        return Release(value, now)
    if release is not None and release.pending(read, now):
        return release
    return None


@dataclass(frozen=True, slots=True)
class CurveInForce(Generic[T]):
    """The setting a curve function follows this cycle, where it came from (``configured``
    or ``utility``), and why a utility curve was refused."""

    setting: T
    source: str
    refused: str | None = None

    def events(self, previous_source: str, previous_refused: str | None, change: str) -> list[str]:
        """A refusal once (not every cycle), and ``change`` when the source changed."""
        events: list[str] = []
        if self.refused is not None and self.refused != previous_refused:
            events.append(self.refused)
        if self.source != previous_source and previous_source:
            events.append(change)
        return events


def curve_in_force(
    snapshot: Snapshot,
    now: datetime,
    *,
    follow_utility: bool,
    mode: str,
    axes: tuple[str, str],
    configured: T,
    from_utility: Callable[[UtilityCurve], T],
) -> CurveInForce[T]:
    """The utility's 2030.5 curve ``mode`` while it is in force and well formed, else the
    configured setting. ``axes`` are the (x, y) units this function takes; ``from_utility``
    turns the utility's curve into a setting and raises CurveError when it cannot."""
    controls = snapshot.grid_controls
    if not follow_utility or controls is None or controls.is_stale(now):
        return CurveInForce(configured, "configured")
    control = controls.mode(mode)
    if control is None:
        return CurveInForce(configured, "configured")
    value = control.value
    if not isinstance(value, UtilityCurve) or (value.x, value.y) != axes:
        got = f"{value.x}/{value.y}" if isinstance(value, UtilityCurve) else "not a curve"
        return CurveInForce(
            configured,
            "configured",
            f"utility {mode} refused: {got}, this controller takes {axes[0]}/{axes[1]}; "
            "the configured curve holds",
        )
    try:
        setting = from_utility(value)
    except CurveError as exc:
        return CurveInForce(
            configured, "configured", f"utility {mode} refused: {exc}; the configured curve holds"
        )
    return CurveInForce(setting, "utility")


def sunspec_curve_decision(
    snapshot: Snapshot,
    target: CurveTarget,
    previous_step: str,
    *,
    max_age_s: float,
    priority: Priority,
    source: str,
    measured: Mapping[str, float],
    events: Sequence[str],
    state: Callable[[str], S],
) -> Decision[S]:
    """The next step of putting ``target`` into the inverter (:func:`curve_step`) as a
    decision: ``state(step)`` is the controller's next state, ``measured`` its metrics."""
    done = curve_step(
        snapshot, target, previous_step, max_age_s=max_age_s, priority=priority, source=source
    )
    metrics = {"curve_step_state": float(STEP_NUMBERS[done.step]), **measured}
    return Decision(state(done.step), done.requests, (), metrics, (*events, *done.events))
