"""VFD curtailment: shed fan or pump power by slowing the drive, sized by the affinity law.

A centrifugal fan or pump draws power with the cube of its speed (DOMAIN.md, "Fan and pump
affinity laws")::

    P = P_rated · (n / n_rated)³          80 % speed → 51.2 % power

so a small speed cut sheds a lot: to shed ``ΔP`` from a drive running at ``n_now`` and drawing
``P_now`` (measured), the new speed is ``n = n_now · ((P_now − ΔP) / P_now)^(1/3)``
(:func:`speed_to_shed`), clipped to ``[min_speed_pct, max_speed_pct]`` (below the minimum
the air or water flow the process needs is no longer delivered).

How much to shed comes from one of two sources:

* a fixed grid import limit: ``excess = grid import − grid_import_limit_w``;
* a site metric (``shed_request``), e.g. published by a peak-shaving controller: W to shed
  now, positive = shed more, negative = that much headroom to restore.

Both are closed-loop errors on measurements: each cycle's amount is what is *still* to shed,
and the speed is computed from the measured speed and power, so a drive still ramping does not
wind the loop up. Shedding is immediate and lands in the middle of the hysteresis band;
inside the band (``-hysteresis_w <= excess <= 0``) the speed is held; with more headroom the
speed is restored at ``restore_rate_pct_per_s`` and never by more than the headroom allows, up
to the normal speed, where the controller hands the drive back (it stops sending requests).

Priority: PEAK_SHAVING by default. Curtailing a fan to keep the import under a limit is
demand limiting, the same job as peak shaving, and it must win over the comfort and economics
controllers that set the fan speed in normal operation (otherwise a comfort request would put
the speed straight back). It stays below GRID_OPERATOR and SAFETY: a utility event or a
fail-safe state of the AHU (smoke control, frost protection) overrides it.

Stale input: when the shed amount (grid meter or site metric) is stale, the controller cannot
tell whether shedding is still needed. Fan and pump loads serve ventilation and process flow,
which matter more than a demand charge, so it restores towards the normal speed with the
ramp and says so in an event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Self

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

FULL_SPEED_PCT = 100.0
STOPPED_PCT = 0.5
"""Below this speed the drive counts as stopped: there is nothing to shed."""


def power_at_speed(rated_power_w: float, speed_pct: float) -> float:
    """Affinity law: the power at ``speed_pct`` of rated speed, W (80 % → 51.2 % of rated)."""
    return rated_power_w * (max(speed_pct, 0.0) / FULL_SPEED_PCT) ** 3


def speed_for_power(rated_power_w: float, power_w: float) -> float:
    """The inverse: the speed, % of rated, at which the drive draws ``power_w``."""
    if rated_power_w <= 0.0:
        raise ValueError(f"rated_power_w must be positive, got {rated_power_w}")
    return FULL_SPEED_PCT * math.cbrt(max(power_w, 0.0) / rated_power_w)


def speed_to_shed(speed_pct: float, power_w: float, shed_w: float) -> float:
    """Speed at which a drive now at ``speed_pct`` drawing ``power_w`` draws ``shed_w`` less.

    ``n = n_now · ((P_now − ΔP) / P_now)^(1/3)``; a negative ``shed_w`` gives the speed that
    draws that much more. Relative to the measured operating point, so it holds for a drive
    whose rated power or losses differ from the nameplate. 0 when ``shed_w >= power_w``.
    """
    if power_w <= 0.0 or speed_pct <= 0.0:
        return max(speed_pct, 0.0)
    remaining_w = power_w - shed_w
    if remaining_w <= 0.0:
        return 0.0
    return speed_pct * math.cbrt(remaining_w / power_w)


Point = PointField


class VfdParams(BaseModel):
    """Parameters of :class:`VfdCurtailmentController`. Speeds in % of rated speed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = "ahu_fan"
    """The drive's device id."""
    speed_setpoint_point: str = "speed_setpoint_pct"
    """Writable speed reference, %."""
    speed_point: str = "speed_pct"
    """Measured speed, %."""
    power_point: str | None = "power_w"
    """Measured electric power, W; None = computed from the speed with the affinity law."""
    rated_power_w: float = Field(gt=0.0)
    """Electric power at 100 % speed, W."""
    min_speed_pct: float = Field(default=50.0, ge=0.0, le=FULL_SPEED_PCT)
    """Never shed below this speed (minimum airflow or water flow), %."""
    max_speed_pct: float = Field(default=FULL_SPEED_PCT, gt=0.0, le=FULL_SPEED_PCT)
    """Never restore above this speed, %."""
    normal_speed_pct: float | None = Field(default=None, ge=0.0, le=FULL_SPEED_PCT)
    """Speed to restore to; None = the speed reference when shedding began."""
    grid_power: Point = PointRef("grid_meter", "active_power_w")
    """Grid meter, W, positive = import; used with ``grid_import_limit_w``."""
    grid_import_limit_w: float | None = Field(default=None, ge=0.0)
    """Shed what the import exceeds this by, W. Exactly one of this and ``shed_request``."""
    shed_request: Point | None = None
    """A site metric, W to shed now (positive) or headroom to restore (negative)."""
    hysteresis_w: float = Field(default=500.0, gt=0.0)
    """Band below the limit in which the speed is held, W."""
    restore_rate_pct_per_s: float = Field(default=0.5, gt=0.0)
    """How fast the speed returns to normal, % per second (shedding is at once)."""
    max_age_s: float = Field(default=5.0, gt=0.0)
    """Readings older than this are stale, s."""
    priority: Priority = Priority.PEAK_SHAVING

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.grid_import_limit_w is None) == (self.shed_request is None):
            raise ValueError(
                "set exactly one shed source: grid_import_limit_w (with grid_power) or shed_request"
            )
        if self.min_speed_pct > self.max_speed_pct:
            raise ValueError(
                f"min_speed_pct {self.min_speed_pct} is above max_speed_pct {self.max_speed_pct}"
            )
        if self.normal_speed_pct is not None and not (
            self.min_speed_pct <= self.normal_speed_pct <= self.max_speed_pct
        ):
            raise ValueError("normal_speed_pct must lie within [min_speed_pct, max_speed_pct]")
        return self

    @property
    def speed_setpoint(self) -> PointRef:
        return PointRef(self.device, self.speed_setpoint_point)

    @property
    def speed(self) -> PointRef:
        return PointRef(self.device, self.speed_point)

    @property
    def power(self) -> PointRef | None:
        return None if self.power_point is None else PointRef(self.device, self.power_point)

    def clip(self, speed_pct: float) -> float:
        return min(max(speed_pct, self.min_speed_pct), self.max_speed_pct)


@dataclass(frozen=True, slots=True)
class VfdState:
    """What the controller carries from one cycle to the next."""

    speed_setpoint_pct: float | None = None
    """The speed last requested; None = not curtailing (the drive is someone else's)."""
    normal_speed_pct: float | None = None
    """The speed to restore to while curtailing."""
    last_decided: datetime | None = None
    input_stale: bool = False
    """The shed amount was stale last cycle (the event is sent on entry only)."""


@dataclass(frozen=True, slots=True)
class _OperatingPoint:
    """Where the drive runs now: measured speed, % and electric power, W."""

    speed_pct: float
    power_w: float


class VfdCurtailmentController(ConfiguredController[VfdParams]):
    """Sheds drive power by the affinity law; restores with a ramp when no longer needed."""

    def __init__(self, params: VfdParams, name: str = "vfd_curtailment") -> None:
        super().__init__(params, name)

    def initial_state(self) -> VfdState:
        return VfdState()

    def decide(
        self, snapshot: Snapshot, state: VfdState, now: datetime, forecasts: Forecasts
    ) -> Decision[VfdState]:
        p = self.params
        dt_s = 0.0
        if state.last_decided is not None:
            dt_s = min(max((now - state.last_decided).total_seconds(), 0.0), p.max_age_s)
        excess_w = self._excess_w(snapshot)
        drive = self._operating_point(snapshot)
        metrics: dict[str, float] = {"rated_power_w": p.rated_power_w}
        if excess_w is not None:
            metrics["shed_request_w"] = excess_w
        if drive is not None:
            metrics["speed_pct"] = drive.speed_pct
            metrics["power_w"] = drive.power_w
        events: list[str] = []
        stale = excess_w is None
        if stale and not state.input_stale and state.speed_setpoint_pct is not None:
            source = p.shed_request if p.shed_request is not None else p.grid_power
            events.append(
                f"{source} stale (limit {p.max_age_s:g} s): restoring {p.device} to its "
                f"normal speed at {p.restore_rate_pct_per_s:g} %/s"
            )

        if state.speed_setpoint_pct is None or state.normal_speed_pct is None:
            return self._idle(
                snapshot, now, excess_w=excess_w, drive=drive, metrics=metrics, events=events
            )

        prev = state.speed_setpoint_pct
        normal = state.normal_speed_pct
        restoring = excess_w is None or excess_w < -p.hysteresis_w
        if excess_w is None:
            target = self._restore(prev, normal, headroom_w=None, drive=drive, dt_s=dt_s)
        elif excess_w > 0.0:
            target = self._shed(prev, excess_w, drive)
        elif restoring:
            target = self._restore(prev, normal, headroom_w=-excess_w, drive=drive, dt_s=dt_s)
        else:
            target = prev
        # Handed back only by a restore that reached normal speed: a drive held at a bound
        # that happens to equal its normal speed stays curtailed while the limit is tight.
        done = restoring and target >= normal

        request = SetpointRequest(
            p.speed_setpoint,
            target,
            p.priority,
            self._name,
            reason="shedding over: back to normal speed"
            if done
            else "shedding power by speed (affinity law)",
        )
        metrics["speed_setpoint_pct"] = target
        metrics["shed_estimate_w"] = power_at_speed(p.rated_power_w, normal) - power_at_speed(
            p.rated_power_w, target
        )
        if done:
            events.append(f"{p.device} restored to {normal:.1f} %: curtailment over")
            next_state = VfdState(None, None, now, stale)
        else:
            next_state = VfdState(target, normal, now, stale)
        return Decision(
            state=next_state, requests=(request,), metrics=metrics, events=tuple(events)
        )

    def _idle(
        self,
        snapshot: Snapshot,
        now: datetime,
        *,
        excess_w: float | None,
        drive: _OperatingPoint | None,
        metrics: dict[str, float],
        events: list[str],
    ) -> Decision[VfdState]:
        """Not curtailing: start when there is something to shed and a running drive."""
        p = self.params
        quiet = VfdState(None, None, now, excess_w is None)
        if excess_w is None or excess_w <= 0.0:
            return Decision(state=quiet, metrics=metrics, events=tuple(events))
        if drive is None:
            events.append(f"cannot shed {excess_w:.0f} W: {p.speed} is stale")
            return Decision(state=quiet, metrics=metrics, events=tuple(events))
        speed_pct = drive.speed_pct
        if speed_pct < STOPPED_PCT:
            return Decision(state=quiet, metrics=metrics, events=tuple(events))
        normal = p.normal_speed_pct
        if normal is None:
            reference = snapshot.value(p.speed_setpoint, p.max_age_s)
            normal = p.clip(reference if reference is not None else speed_pct)
        target = self._shed(normal, excess_w, drive)
        if target >= speed_pct:
            # Already at the minimum speed: nothing left to shed here.
            metrics["unshed_w"] = excess_w
            return Decision(state=quiet, metrics=metrics, events=tuple(events))
        events.append(
            f"shedding {excess_w:.0f} W: {p.device} speed {speed_pct:.1f} % → {target:.1f} %"
        )
        metrics["speed_setpoint_pct"] = target
        metrics["shed_estimate_w"] = power_at_speed(p.rated_power_w, normal) - power_at_speed(
            p.rated_power_w, target
        )
        request = SetpointRequest(
            p.speed_setpoint,
            target,
            p.priority,
            self._name,
            reason=f"shed {excess_w:.0f} W by speed (affinity law)",
        )
        return Decision(
            state=VfdState(target, normal, now, False),
            requests=(request,),
            metrics=metrics,
            events=tuple(events),
        )

    def _excess_w(self, snapshot: Snapshot) -> float | None:
        """W still to shed (negative = headroom); None when the source is stale."""
        p = self.params
        if p.shed_request is not None:
            return snapshot.value(p.shed_request, p.max_age_s)
        grid_w = snapshot.value(p.grid_power, p.max_age_s)
        if grid_w is None or p.grid_import_limit_w is None:
            return None
        return grid_w - p.grid_import_limit_w

    def _operating_point(self, snapshot: Snapshot) -> _OperatingPoint | None:
        """Measured speed and power (the affinity law at that speed without a power
        reading); None when the speed is stale."""
        p = self.params
        speed_pct = snapshot.value(p.speed, p.max_age_s)
        if speed_pct is None:
            return None
        if p.power is not None:
            measured = snapshot.value(p.power, p.max_age_s)
            if measured is not None and measured > 0.0:
                return _OperatingPoint(speed_pct, measured)
        return _OperatingPoint(speed_pct, power_at_speed(p.rated_power_w, speed_pct))

    def _shed(self, prev: float, excess_w: float, drive: _OperatingPoint | None) -> float:
        """Cut at once to the speed that lands mid-band; never back up while shedding."""
        p = self.params
        if drive is None:
            return prev
        wanted = speed_to_shed(drive.speed_pct, drive.power_w, excess_w + p.hysteresis_w / 2.0)
        return p.clip(min(prev, wanted))

    def _restore(
        self,
        prev: float,
        normal: float,
        *,
        headroom_w: float | None,
        drive: _OperatingPoint | None,
        dt_s: float,
    ) -> float:
        """Ramp up towards normal; with a known headroom, not by more than it allows."""
        p = self.params
        target = min(prev + p.restore_rate_pct_per_s * dt_s, normal)
        if headroom_w is not None and drive is not None:
            extra_w = headroom_w - p.hysteresis_w / 2.0
            allowed = speed_to_shed(drive.speed_pct, drive.power_w, -extra_w)
            target = min(target, allowed)
        return p.clip(max(target, prev))
