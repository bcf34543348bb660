"""Frequency droop (frequency-watt, IEEE 1547-2018 clause 6.5.2.7) on one inverter, at
grid-operator priority.

``mode: sunspec_ctl`` -- the inverter has SunSpec 711 (DERFreqDroop): the settings (dead
bands, droops, response time, PMin in % of ``rated_w``) are written into its writable
control ``ctl_index``, adopted (``AdptCtlReq``) and enabled, each step closed on the
device's telemetry (:func:`gridpilot.control.sunspec_curves.curve_step`, group ``ctl``);
the inverter then answers the frequency itself.

``mode: setpoint`` (the default) -- for an inverter without an autonomous frequency-droop
function, or one whose own is not trusted. Each cycle the controller reads the frequency
the inverter measures and its active power:

* inside the dead band (nominal ± ``db_of_hz``/``db_uf_hz``, 0.036 Hz by default) it only
  remembers the output, ``P_pre`` -- the power before an excursion, from which IEEE 1547
  counts the droop -- and sends nothing;
* over-frequency: the output must fall by ``(f - (nominal + db_of)) / (nominal · k_of)`` of
  the rating (5 % droop: 0.5 Hz over the band at 60 Hz is 16.7 %) from ``P_pre``
  (:func:`gridpilot.control.ieee1547.frequency_droop_w`), not below ``p_min_w``. The target
  passes through the open-loop response filter (90 % of a step in ``response_time_s``) and
  becomes the inverter's active power limit ``pv_limit`` (% of ``rated_w``): a request with
  the ``enable`` points (e.g. SunSpec 704 ``WMaxLimPctEna`` = 1) and a
  :class:`~gridpilot.control.base.Constraint` (``maximum``) so that no request of the same
  or a lower priority lifts the output above the droop;
* under-frequency: the output may rise by the same slope, but only as far as the headroom
  goes -- what the source can give now (``available_power``, e.g. SunSpec 122 ``WAval``;
  the rating without it). A PV inverter at its maximum power point has none: its limit is
  only held at 100 %. One held back by someone else's limit has some: the limit is raised
  to the droop target (100 % when that reaches what is available), with a ``minimum``
  constraint so that no same-or-lower request curtails it below;
* back inside the dead band the target is ``P_pre`` again; once the filtered output is
  within 0.5 % of the rating of it the limit is released -- set back, once, to the limit in
  force before the excursion (``pv_limit`` as last read in the dead band, with the
  ``enable`` points reading their values; else 100 %), asked for again each cycle until the
  limit reads it back (at most a minute: :class:`~gridpilot.control.der_function.Release`),
  and the controller is silent until the next excursion.

A stale frequency holds the last limit and says so once (an over-frequency may go on).
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
    EnablePoints,
    Release,
    limit_in_force,
    setpoint_requests,
    sunspec_curve_decision,
)
from gridpilot.control.ieee1547 import (
    CurveError,
    FrequencyDroop,
    ResponseFilter,
    frequency_droop_w,
)
from gridpilot.control.sunspec_curves import CurveTarget

NAME = "freq_droop"
Point = PointField

FULL_PCT = 100.0
_CTL_TOLERANCE = 0.0005
"""711 dead bands and droops hold 0.001 steps (Db_SF, K_SF -3 on common devices)."""
_SETTLED_PU = 0.005
"""Within this share of the rating of ``P_pre`` the recovery is over (the filter only
approaches its target)."""


class FreqDroopParams(BaseModel):
    """``control.freq_droop``: the measured frequency and power, the inverter's limit point
    and the droop settings (IEEE 1547-2018 Category B defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["setpoint", "sunspec_ctl"] = "setpoint"
    """``setpoint``: the controller bounds ``pv_limit``; ``sunspec_ctl``: it writes the
    settings into the inverter's SunSpec 711 and enables it."""
    frequency: Point
    """The frequency at the inverter's terminals, Hz (e.g. ``sunspec_inverter.m701_hz``)."""
    active_power: Point | None = None
    """``setpoint`` mode: the inverter's active power output, W (e.g.
    ``sunspec_inverter.m701_w``)."""
    rated_w: float = Field(gt=0.0)
    """The inverter's rated active power: the droop is a share of it, and ``pv_limit``
    percent of it."""
    pv_limit: Point | None = None
    """``setpoint`` mode: the writable active power limit, % of ``rated_w`` (e.g.
    ``sunspec_inverter.m704_wmaxlimpct_pct``)."""
    device: str | None = None
    """``sunspec_ctl`` mode: the SunSpec device with model 711."""
    ctl_index: int = Field(default=2, ge=2, le=10)
    """``sunspec_ctl`` mode: the writable stored control to write and adopt."""
    enable: EnablePoints = Field(default_factory=dict)
    """Points requested with the limit (e.g. ``{sunspec_inverter.m704_wmaxlimpctena_state: 1}``)."""
    available_power: Point | None = None
    """What the source can give now, W (e.g. ``sunspec_inverter.m122_waval_w``): the headroom
    of an under-frequency response. Without it, the rating."""
    nominal_hz: float = 60.0
    db_of_hz: float = 0.036
    db_uf_hz: float = 0.036
    k_of: float = 0.05
    """Over-frequency droop, per unit of frequency per unit of power (0.05 = 5 %)."""
    k_uf: float = 0.05
    response_time_s: float = Field(default=5.0, ge=0.0, le=90.0)
    """Open-loop response time: 90 % of a step in this long."""
    p_min_w: float = Field(default=0.0, ge=0.0)
    """The least the inverter is driven to by over-frequency."""
    max_age_s: float = Field(default=10.0, gt=0.0)
    priority: Priority = Priority.GRID_OPERATOR

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            self.setting()
        except CurveError as exc:
            raise ValueError(str(exc)) from None
        if self.p_min_w >= self.rated_w:
            raise ValueError(f"p_min_w {self.p_min_w:g} must be below rated_w {self.rated_w:g}")
        if self.mode == "setpoint" and (self.active_power is None or self.pv_limit is None):
            raise ValueError(
                "mode setpoint needs active_power (W) and pv_limit (the writable power limit, %)"
            )
        if self.mode == "sunspec_ctl" and self.device is None:
            raise ValueError("mode sunspec_ctl needs device (the SunSpec device with 711)")
        return self

    def setting(self) -> FrequencyDroop:
        """The IEEE 1547 droop setting; raises CurveError."""
        return FrequencyDroop(
            self.nominal_hz, self.db_of_hz, self.db_uf_hz, self.k_of, self.k_uf,
            self.response_time_s,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FreqDroopState:
    p_pre_w: float | None = None
    """The output before the excursion (tracked inside the dead band, frozen outside)."""
    filter: ResponseFilter | None = None
    """The filtered power target, W; None while no excursion is being answered."""
    direction: str = ""
    """``over`` / ``under`` while answering an excursion (or recovering from it)."""
    limit_before_pct: float | None = None
    """The limit in force before the excursion (tracked in the dead band): restored on
    release."""
    release: Release | None = None
    """The limit given back after an excursion, until it reads back."""
    stale: bool = False
    step: str = ""
    """``sunspec_ctl`` mode: where the control is (see ``sunspec_curves``)."""


class FreqDroopController(ConfiguredController[FreqDroopParams]):
    """IEEE 1547 frequency droop by the inverter's active power limit."""

    def __init__(self, params: FreqDroopParams, name: str = NAME) -> None:
        super().__init__(params, name)
        self._setting = params.setting()

    def initial_state(self) -> FreqDroopState:
        return FreqDroopState()

    def decide(
        self, snapshot: Snapshot, state: FreqDroopState, now: datetime, forecasts: Forecasts
    ) -> Decision[FreqDroopState]:
        p, s = self.params, self._setting
        if p.mode == "sunspec_ctl":
            return self._sunspec_ctl(snapshot, state)
        assert p.active_power is not None  # noqa: S101  # the params' validator requires it
        events: list[str] = []
        if snapshot.reading(p.frequency) is None or snapshot.reading(p.active_power) is None:
            if not state.stale:
                events.append(
                    f"frequency droop: waiting for a first reading of {p.frequency} and "
                    f"{p.active_power}"
                )
            return Decision(replace(state, stale=True), events=tuple(events))
        hz = snapshot.value(p.frequency, p.max_age_s)
        measured_w = snapshot.value(p.active_power, p.max_age_s)
        if hz is None or measured_w is None:
            if not state.stale:
                events.append(
                    f"frequency droop: no fresh {p.frequency} or {p.active_power} (older than "
                    f"{p.max_age_s:g} s): the last limit holds"
                )
            return self._hold(replace(state, stale=True), events)
        if state.stale:
            events.append("frequency droop: measurements fresh again")
        state = replace(state, stale=False)
        metrics: dict[str, float] = {"frequency_hz": hz}
        over = hz > s.nominal_hz + s.db_of_hz
        under = hz < s.nominal_hz - s.db_uf_hz
        if state.filter is None and not (over or under):
            # Inside the dead band, nothing to answer: P_pre follows the output.
            metrics["p_pre_w"] = measured_w
            limit_now = self._limit_now(snapshot)
            release = state.release
            if release is not None and release.pending(limit_now, now):
                metrics["limit_pct"] = release.value
                requests = self._requests(release.value, "frequency droop released")
                return Decision(replace(state, p_pre_w=measured_w), requests, (), metrics, ())
            before = replace(state, p_pre_w=measured_w, limit_before_pct=limit_now, release=None)
            return Decision(before, metrics=metrics, events=())
        p_pre = state.p_pre_w if state.p_pre_w is not None else measured_w
        available = p.rated_w
        if p.available_power is not None:
            got = snapshot.value(p.available_power, p.max_age_s)
            available = p.rated_w if got is None else max(0.0, min(got, p.rated_w))
        target_w = frequency_droop_w(
            hz, p_pre_w=p_pre, p_rated_w=p.rated_w, p_avail_w=max(available, p_pre),
            p_min_w=p.p_min_w, setting=s,
        )  # fmt: skip
        direction = "over" if over else "under" if under else state.direction
        if state.filter is None:
            events.append(
                f"frequency droop: {direction}-frequency {hz:.3f} Hz, {p.pv_limit} from "
                f"{p_pre / 1000.0:.1f} kW towards {target_w / 1000.0:.1f} kW"
            )
        previous = state.filter or ResponseFilter(s.response_time_s, p_pre, now)
        filtered = previous.update(target_w, now)
        assert filtered.value is not None  # noqa: S101  # seeded, never cleared
        metrics |= {"p_pre_w": p_pre, "target_w": target_w, "droop_w": filtered.value}
        settled = abs(filtered.value - p_pre) <= _SETTLED_PU * p.rated_w
        if not (over or under) and settled:
            # Recovered: release the limit once, then silent until the next excursion.
            restored = FULL_PCT if state.limit_before_pct is None else state.limit_before_pct
            events.append(
                f"frequency droop: {hz:.3f} Hz, back in the dead band: released "
                f"({p.pv_limit} back to {restored:g} %)"
            )
            metrics["limit_pct"] = restored
            requests = self._requests(restored, "frequency droop released")
            new_state = FreqDroopState(
                p_pre_w=measured_w, limit_before_pct=restored, release=Release(restored, now)
            )
            return Decision(new_state, requests, (), metrics, tuple(events))
        new_state = replace(state, p_pre_w=p_pre, filter=filtered, direction=direction)
        return self._limit(new_state, filtered.value, available, metrics, events)

    def _limit_now(self, snapshot: Snapshot) -> float | None:
        """The limit in force now (None when unknown or without ``pv_limit``)."""
        p = self.params
        if p.pv_limit is None:
            return None
        return limit_in_force(snapshot, p.pv_limit, p.enable, p.max_age_s)

    def ctl_points(self) -> dict[str, float]:
        """711 point names (without the ``ctl_<n>_`` prefix) -> the values of the setting."""
        p, s = self.params, self._setting
        return {
            "dbof_hz": round(s.db_of_hz, 3),
            "dbuf_hz": round(s.db_uf_hz, 3),
            "kof_count": round(s.k_of, 3),
            "kuf_count": round(s.k_uf, 3),
            "rsptms_s": float(round(s.response_time_s)),
            "pmin_pct": float(round(100.0 * p.p_min_w / p.rated_w)),
        }

    def _sunspec_ctl(self, snapshot: Snapshot, state: FreqDroopState) -> Decision[FreqDroopState]:
        p = self.params
        assert p.device is not None  # noqa: S101  # the params' validator requires it
        target = CurveTarget(
            p.device, 711, p.ctl_index, self.ctl_points(), "frequency droop", group="ctl",
            tolerance=_CTL_TOLERANCE,
        )  # fmt: skip
        hz = snapshot.value(p.frequency, p.max_age_s)
        return sunspec_curve_decision(
            snapshot, target, state.step, max_age_s=p.max_age_s, priority=p.priority,
            source=self.name, measured={} if hz is None else {"frequency_hz": hz}, events=(),
            state=lambda step: replace(state, step=step),
        )  # fmt: skip

    def _limit(
        self,
        state: FreqDroopState,
        power_w: float,
        available_w: float,
        metrics: dict[str, float],
        events: list[str],
    ) -> Decision[FreqDroopState]:
        p = self.params
        assert p.pv_limit is not None  # noqa: S101  # the params' validator requires it
        limit_pct = round(max(0.0, min(FULL_PCT, FULL_PCT * power_w / p.rated_w)), 1)
        if state.direction == "under":
            # Raising only: no limit at all once the droop asks for everything there is.
            if power_w >= available_w - _SETTLED_PU * p.rated_w:
                limit_pct = FULL_PCT
            constraint = Constraint(
                p.pv_limit, p.priority, self.name, minimum=limit_pct,
                reason="frequency droop (under-frequency)",
            )  # fmt: skip
        else:
            constraint = Constraint(
                p.pv_limit, p.priority, self.name, maximum=limit_pct,
                reason="frequency droop (over-frequency)",
            )  # fmt: skip
        metrics["limit_pct"] = limit_pct
        requests = self._requests(limit_pct, f"frequency droop ({state.direction}-frequency)")
        return Decision(state, requests, (constraint,), metrics, tuple(events))

    def _hold(self, state: FreqDroopState, events: list[str]) -> Decision[FreqDroopState]:
        if state.filter is None or state.filter.value is None:
            return Decision(state, events=tuple(events))
        return self._limit(state, state.filter.value, self.params.rated_w, {}, events)

    def _requests(self, limit_pct: float, reason: str) -> tuple[SetpointRequest, ...]:
        p = self.params
        assert p.pv_limit is not None  # noqa: S101  # the params' validator requires it
        return setpoint_requests(
            p.pv_limit, limit_pct, p.enable, priority=p.priority, source=self.name, reason=reason
        )
