"""PV export limit and self-consumption: battery first, curtail fast, release slowly, fail safe."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gridpilot.control.base import (
    Decision,
    PointRef,
    Priority,
    Reading,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.pv_export import PvExportController, PvExportParams, PvExportState
from gridpilot.model.units import unit_of

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GRID = PointRef("grid_meter", "active_power_w")
PV = PointRef("pv_inverter", "ac_power_w")
LIMIT = PointRef("pv_inverter", "power_limit_pct")
SOC = PointRef("battery", "soc_pct")
BATTERY = PointRef("battery", "active_power_w")
SETPOINT = PointRef("battery", "active_power_setpoint_w")
AVAILABLE = PointRef("battery", "available_charge_power_w")
RATED_W = 100_000.0
MARGIN_W = 300.0
HYSTERESIS_W = 400.0


def params(*, battery: bool = True, **overrides: object) -> PvExportParams:
    fields: dict[str, object] = {
        "pv_rated_power_w": RATED_W,
        "export_limit_w": 0.0,
        "margin_w": MARGIN_W,
        "hysteresis_w": HYSTERESIS_W,
        "release_rate_pct_per_s": 1.0,
        "max_age_s": 5.0,
    }
    if battery:
        fields |= {
            "battery_soc": SOC,
            "battery_power": BATTERY,
            "battery_setpoint": SETPOINT,
            "battery_max_charge_w": 50_000.0,
        }
    fields |= overrides
    return PvExportParams.model_validate(fields)


def snapshot(
    *,
    grid_w: float | None,
    pv_w: float | None,
    limit_pct: float | None = None,
    soc_pct: float | None = None,
    battery_w: float | None = None,
    available_w: float | None = None,
    grid_age_s: float = 0.0,
    pv_age_s: float = 0.0,
    now: datetime = NOW,
) -> Snapshot:
    readings: dict[PointRef, Reading] = {}
    for ref, value, age in (
        (GRID, grid_w, grid_age_s),
        (PV, pv_w, pv_age_s),
        (LIMIT, limit_pct, 0.0),
        (SOC, soc_pct, 0.0),
        (BATTERY, battery_w, 0.0),
        (AVAILABLE, available_w, 0.0),
    ):
        if value is not None:
            readings[ref] = Reading(value, now - timedelta(seconds=age))
    return Snapshot(now, readings)


def request_for(decision: Decision[PvExportState], target: PointRef) -> SetpointRequest | None:
    found = [r for r in decision.requests if r.target == target]
    assert len(found) <= 1
    return found[0] if found else None


def limit_requested(decision: Decision[PvExportState]) -> float | None:
    request = request_for(decision, LIMIT)
    return None if request is None else request.value


def battery_requested(decision: Decision[PvExportState]) -> float | None:
    request = request_for(decision, SETPOINT)
    return None if request is None else request.value


# --------------------------------------------------------------------------------------------
# One cycle


@dataclass(frozen=True)
class SurplusCase:
    load_w: float
    pv_w: float
    export_limit_w: float
    self_consumption: bool
    battery_setpoint_w: float | None
    """Expected battery request (negative = charge); None = no request."""
    limit_pct: float | None
    """Expected PV limit request; None = no request (PV not curtailed)."""


@pytest.mark.parametrize(
    "case",
    [
        # Zero export, 40 kW surplus, 50 kW charge power: the battery takes it all and holds
        # the grid at the floor (300 W import); PV is not touched.
        pytest.param(SurplusCase(20e3, 60e3, 0.0, True, -40_300.0, None), id="battery-takes-all"),
        # 70 kW surplus: the battery takes its 50 kW, PV is cut to load + 50 kW - floor,
        # less half the band: 20 + 50 - 0.3 - 0.2 = 69.5 kW; the battery charges what is left.
        pytest.param(SurplusCase(20e3, 90e3, 0.0, True, -49_800.0, 69.5), id="then-curtail"),
        # 10 kW export allowed, self-consumption: the battery still takes every exported watt.
        pytest.param(SurplusCase(20e3, 60e3, 10e3, True, -40_000.0, None), id="self-consumption"),
        # Without self-consumption it takes only what exceeds the limit less the margin.
        pytest.param(SurplusCase(20e3, 60e3, 10e3, False, -30_300.0, None), id="excess-only"),
        # No surplus: no battery request at all.
        pytest.param(SurplusCase(50e3, 40e3, 0.0, True, None, None), id="no-surplus"),
    ],
)
def test_battery_takes_the_surplus_before_pv_is_curtailed(case: SurplusCase) -> None:
    controller = PvExportController(
        params(export_limit_w=case.export_limit_w, self_consumption=case.self_consumption)
    )
    snap = snapshot(
        grid_w=case.load_w - case.pv_w,
        pv_w=case.pv_w,
        limit_pct=100.0,
        soc_pct=50.0,
        battery_w=0.0,
    )
    decision = controller.decide(snap, controller.initial_state(), NOW, {})

    assert battery_requested(decision) == pytest.approx(case.battery_setpoint_w)
    assert limit_requested(decision) == pytest.approx(case.limit_pct)
    if case.limit_pct is None:
        assert decision.constraints == ()
    else:
        (constraint,) = decision.constraints
        assert constraint.target == LIMIT
        assert constraint.priority is Priority.GRID_OPERATOR
        assert constraint.maximum == pytest.approx(case.limit_pct)
    for request in decision.requests:
        assert request.priority is Priority.ECONOMICS
        assert request.source == "pv_export"


@pytest.mark.parametrize(
    ("soc_pct", "battery", "previous_charge_w", "battery_setpoint_w"),
    [
        (95.0, True, 0.0, None),  # at the SoC maximum: no charge request
        (99.0, True, 0.0, None),
        (95.0, True, 40_000.0, 0.0),  # was charging: the request is withdrawn with a 0
        (None, False, 0.0, None),  # no battery configured
    ],
)
def test_full_or_absent_battery_means_pv_is_curtailed(
    soc_pct: float | None, battery: bool, previous_charge_w: float, battery_setpoint_w: float | None
) -> None:
    controller = PvExportController(params(battery=battery))
    state = PvExportState(charge_requests_w=(previous_charge_w, previous_charge_w))
    snap = snapshot(
        grid_w=20_000.0 - 60_000.0,
        pv_w=60_000.0,
        limit_pct=100.0,
        soc_pct=soc_pct,
        battery_w=0.0 if battery else None,
    )
    decision = controller.decide(snap, state, NOW, {})

    # PV may cover the load and the floor: 20 kW - 0.3 kW, less half the band.
    assert limit_requested(decision) == pytest.approx(19.5)
    assert battery_requested(decision) == battery_setpoint_w
    assert decision.metrics["headroom_w"] == pytest.approx(-40_300.0)
    assert any("curtailing PV to 19.5 %" in e for e in decision.events)


@pytest.mark.parametrize(
    ("grid_w", "dt_s", "limit_pct"),
    [
        (10_000.0, 1.0, 41.0),  # plenty of headroom: the ramp, 1 %/s
        (10_000.0, 2.5, 42.5),
        (10_000.0, 60.0, 45.0),  # a long gap counts as max_age_s (5 s), not 60
        (MARGIN_W + 600.0, 1.0, 40.4),  # headroom 600 W: at most 600 - 200 W more
        (MARGIN_W + 300.0, 1.0, 40.0),  # inside the band: hold
        (MARGIN_W + 0.0, 1.0, 40.0),  # on the floor: hold
        (10_000.0, None, 40.0),  # first cycle: no elapsed time, no release yet
    ],
)
def test_release_follows_the_ramp_and_the_headroom(
    grid_w: float, dt_s: float | None, limit_pct: float
) -> None:
    controller = PvExportController(params(battery=False))
    last = None if dt_s is None else NOW - timedelta(seconds=dt_s)
    state = PvExportState(limit_pct=40.0, last_decided=last)
    decision = controller.decide(
        snapshot(grid_w=grid_w, pv_w=40_000.0, limit_pct=40.0), state, NOW, {}
    )
    assert limit_requested(decision) == pytest.approx(limit_pct)
    assert decision.state.limit_pct == pytest.approx(limit_pct)


def test_full_release_is_sent_once_then_the_controller_is_silent() -> None:
    controller = PvExportController(params(battery=False))
    state = PvExportState(limit_pct=99.5, last_decided=NOW - timedelta(seconds=1))
    snap = snapshot(grid_w=30_000.0, pv_w=50_000.0, limit_pct=99.5)
    released = controller.decide(snap, state, NOW, {})
    assert limit_requested(released) == pytest.approx(100.0)
    assert released.constraints == ()
    assert "PV curtailment fully released" in released.events

    later = NOW + timedelta(seconds=1)
    quiet = controller.decide(
        snapshot(grid_w=30_000.0, pv_w=50_000.0, limit_pct=100.0, now=later),
        released.state,
        later,
        {},
    )
    assert quiet.requests == ()
    assert quiet.constraints == ()


def test_a_release_the_inverter_does_not_read_back_is_asked_for_again_for_a_minute() -> None:
    controller = PvExportController(params(battery=False))
    state = PvExportState(limit_pct=99.5, last_decided=NOW - timedelta(seconds=1))
    decision = controller.decide(
        snapshot(grid_w=30_000.0, pv_w=50_000.0, limit_pct=99.5), state, NOW, {}
    )
    asked = []
    for k in range(1, 71):
        # The command was lost: the inverter still reads 99.5 %.
        at = NOW + timedelta(seconds=k)
        snap = snapshot(grid_w=30_000.0, pv_w=50_000.0, limit_pct=99.5, now=at)
        decision = controller.decide(snap, decision.state, at, {})
        asked.append(limit_requested(decision))
    assert asked[:59] == [pytest.approx(100.0)] * 59
    assert decision.requests == ()  # a minute on: left to whoever set it
    assert all(a is None for a in asked[60:])


@pytest.mark.parametrize(
    ("grid_w", "grid_age_s", "pv_w", "pv_age_s", "stale_name"),
    [
        (-5_000.0, 10.0, 60_000.0, 0.0, "grid_meter.active_power_w"),
        (None, 0.0, 60_000.0, 0.0, "grid_meter.active_power_w"),
        (-5_000.0, 0.0, 60_000.0, 6.0, "pv_inverter.ac_power_w"),
    ],
)
def test_stale_input_fails_to_the_safe_limit(
    grid_w: float | None, grid_age_s: float, pv_w: float, pv_age_s: float, stale_name: str
) -> None:
    # 5 kW export allowed, the site never uses less than 10 kW: PV up to 14.7 kW is safe.
    controller = PvExportController(params(export_limit_w=5_000.0, min_site_load_w=10_000.0))
    state = PvExportState(charge_requests_w=(20_000.0, 20_000.0))
    snap = snapshot(
        grid_w=grid_w,
        pv_w=pv_w,
        grid_age_s=grid_age_s,
        pv_age_s=pv_age_s,
        limit_pct=100.0,
        soc_pct=50.0,
        battery_w=-20_000.0,
    )
    decision = controller.decide(snap, state, NOW, {})

    assert limit_requested(decision) == pytest.approx(14.7)
    assert battery_requested(decision) == 0.0
    (constraint,) = decision.constraints
    assert constraint.maximum == pytest.approx(14.7)
    assert constraint.priority is Priority.GRID_OPERATOR
    (event,) = decision.events
    assert stale_name in event
    assert "stale" in event
    assert decision.metrics["fail_safe_state"] == 1.0

    # Still stale a cycle later: same limit, no second event.
    again = controller.decide(snap, decision.state, NOW + timedelta(seconds=1), {})
    assert limit_requested(again) == pytest.approx(14.7)
    assert again.events == ()


def test_fail_safe_keeps_a_lower_limit_and_release_afterwards_ramps() -> None:
    controller = PvExportController(params(battery=False))  # zero export: safe PV = 0 W
    state = PvExportState(limit_pct=12.0, last_decided=NOW - timedelta(seconds=1))
    stale = controller.decide(snapshot(grid_w=None, pv_w=12_000.0), state, NOW, {})
    assert limit_requested(stale) == pytest.approx(0.0)

    later = NOW + timedelta(seconds=1)
    fresh = controller.decide(
        snapshot(grid_w=40_000.0, pv_w=0.0, limit_pct=0.0, now=later), stale.state, later, {}
    )
    assert limit_requested(fresh) == pytest.approx(1.0)  # the ramp, not a jump
    assert any("fresh again" in e for e in fresh.events)
    assert fresh.metrics["fail_safe_state"] == 0.0


def test_battery_that_does_not_follow_loses_its_credit() -> None:
    controller = PvExportController(params())
    # Asked to charge 40.3 kW for two cycles, it does nothing (a higher priority owns it).
    state = PvExportState(charge_requests_w=(40_300.0, 40_300.0), limit_pct=100.0)
    snap = snapshot(grid_w=-40_000.0, pv_w=60_000.0, soc_pct=50.0, battery_w=0.0)
    decision = controller.decide(snap, state, NOW, {})

    assert limit_requested(decision) == pytest.approx(19.5)  # as if there were no battery
    assert decision.metrics["battery_credit_w"] == 0.0
    assert any("battery charges 0 W of 40300 W asked" in e for e in decision.events)
    assert decision.state.distrust_until == NOW + timedelta(seconds=60)

    # Within the retry time it is credited only with what it measurably charges.
    later = NOW + timedelta(seconds=30)
    snap = snapshot(grid_w=-10_000.0, pv_w=20_000.0, soc_pct=50.0, battery_w=-10_000.0, now=later)
    following = controller.decide(snap, decision.state, later, {})
    assert following.metrics["battery_credit_w"] == pytest.approx(10_000.0)


def test_stale_battery_gets_no_credit_and_its_charge_request_is_withdrawn() -> None:
    controller = PvExportController(params())
    state = PvExportState(charge_requests_w=(20_000.0, 20_000.0), limit_pct=100.0)
    # The battery still charges 20 kW, but its readings are missing: only the meter counts.
    snap = snapshot(grid_w=20_000.0 - 60_000.0 + 20_000.0, pv_w=60_000.0)
    decision = controller.decide(snap, state, NOW, {})

    assert limit_requested(decision) == pytest.approx(39.5)  # 60 - 20.3 - 0.2 kW
    request = request_for(decision, SETPOINT)
    assert request is not None
    assert request.value == 0.0
    assert "stale" in request.reason
    assert decision.metrics["battery_credit_w"] == 0.0


def test_available_charge_power_caps_the_battery_credit() -> None:
    controller = PvExportController(params(battery_available_charge=AVAILABLE))
    snap = snapshot(
        grid_w=-70_000.0,
        pv_w=90_000.0,
        limit_pct=100.0,
        soc_pct=50.0,
        battery_w=0.0,
        available_w=30_000.0,
    )
    decision = controller.decide(snap, controller.initial_state(), NOW, {})
    # 20 kW load + 30 kW the battery offers - 0.3 kW floor - 0.2 kW half band.
    assert limit_requested(decision) == pytest.approx(49.5)
    assert battery_requested(decision) == pytest.approx(-29_800.0)


def test_metric_names_carry_a_unit() -> None:
    controller = PvExportController(params())
    for snap in (
        snapshot(grid_w=-40_000.0, pv_w=60_000.0, soc_pct=50.0, battery_w=0.0),
        snapshot(grid_w=None, pv_w=60_000.0),
    ):
        decision = controller.decide(snap, controller.initial_state(), NOW, {})
        assert decision.metrics
        for name in decision.metrics:
            assert unit_of(name) is not None, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"battery_soc": SOC}, "set all or none"),
        ({"battery_soc": SOC, "battery_power": BATTERY, "battery_setpoint": SETPOINT}, "> 0"),
        ({"margin_w": 100.0, "hysteresis_w": 400.0}, "at least hysteresis_w / 2"),
        ({"limit_priority": Priority.COMFORT}, "limit_priority"),
        ({"export_limit_w": -1.0}, "greater than or equal"),
        ({"unknown_field": 1}, "Extra inputs"),
        ({"grid_power": "grid_meter"}, "DEVICE.POINT"),
    ],
)
def test_params_are_validated(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        params(battery=False, **overrides)


def test_params_accept_points_as_text() -> None:
    p = params(battery=False, grid_power="site_meter.active_power_w")
    assert p.grid_power == PointRef("site_meter", "active_power_w")
    with pytest.raises(ValidationError, match="frozen"):
        p.export_limit_w = 5.0


# --------------------------------------------------------------------------------------------
# Closed loop: a plant of one meter, an inverter and a battery that follow their setpoints.


@dataclass
class Plant:
    """grid = load - pv - battery; PV follows its limit at once; the battery its setpoint
    within its charge power and SoC maximum (no SoC change within a test)."""

    load_w: Callable[[int], float]
    pv_available_w: Callable[[int], float]
    soc_pct: float = 50.0
    battery_max_charge_w: float = 50_000.0
    limit_pct: float = 100.0
    battery_setpoint_w: float = 0.0
    noise: random.Random | None = None
    pv_lag: float = 0.0
    """Share of the way to its new output the inverter has still to go at the next
    measurement (0 = it follows at once)."""
    pv_w: float | None = None
    soc_pct_at: Callable[[int], float] | None = None
    """The SoC over the cycles, when it changes in a test."""

    def measure(self, k: int, now: datetime) -> tuple[Snapshot, float]:
        if self.soc_pct_at is not None:
            self.soc_pct = self.soc_pct_at(k)
        target_w = min(self.pv_available_w(k), self.limit_pct / 100.0 * RATED_W)
        previous_w = target_w if self.pv_w is None else self.pv_w
        pv_w = self.pv_w = target_w + self.pv_lag * (previous_w - target_w)
        battery_w = max(self.battery_setpoint_w, -self.battery_max_charge_w)
        if self.soc_pct >= 95.0:
            battery_w = max(battery_w, 0.0)
        grid_w = self.load_w(k) - pv_w - battery_w
        measured_grid_w = grid_w + (self.noise.uniform(-100.0, 100.0) if self.noise else 0.0)
        snap = snapshot(
            grid_w=measured_grid_w,
            pv_w=pv_w,
            limit_pct=self.limit_pct,
            soc_pct=self.soc_pct,
            battery_w=battery_w,
            available_w=self.battery_max_charge_w if self.soc_pct < 95.0 else 0.0,
            now=now,
        )
        return snap, grid_w

    def apply(self, decision: Decision[PvExportState]) -> None:
        for request in decision.requests:
            if request.target == LIMIT:
                self.limit_pct = request.value
            elif request.target == SETPOINT:
                self.battery_setpoint_w = request.value


def run(
    plant: Plant, controller: PvExportController, cycles: int
) -> tuple[list[float], list[float]]:
    """Grid power (true, before noise) and PV limit after each cycle's decision."""
    state = controller.initial_state()
    grid: list[float] = []
    limits: list[float] = []
    for k in range(cycles):
        now = NOW + timedelta(seconds=k)
        snap, grid_w = plant.measure(k, now)
        decision = controller.decide(snap, state, now, {})
        state = decision.state
        plant.apply(decision)
        grid.append(grid_w)
        limits.append(plant.limit_pct)
    return grid, limits


def reversals(values: list[float]) -> int:
    """How often a sequence changes direction (a hunting loop reverses every few steps)."""
    steps = [b - a for a, b in itertools.pairwise(values) if abs(b - a) > 1e-9]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


def constant(value: float) -> Callable[[int], float]:
    return lambda _k: value


@dataclass(frozen=True)
class LoopCase:
    plant: Callable[[], Plant]
    battery: bool
    export_limit_w: float
    export_ends: int
    """The first cycle from which the export stays under the limit."""
    limit_settles_to: float | None
    """The PV limit at the end; None = not checked (noise)."""


@pytest.mark.parametrize(
    "case",
    [
        # Battery with room: it takes the 40 kW surplus, PV stays at 100 %.
        pytest.param(
            LoopCase(lambda: Plant(constant(20e3), constant(60e3)), True, 0.0, 1, 100.0),
            id="battery-absorbs",
        ),
        # Battery full: PV settles at 19.5 % and stays.
        pytest.param(
            LoopCase(
                lambda: Plant(constant(20e3), constant(60e3), soc_pct=95.0), True, 0.0, 1, 19.5
            ),
            id="battery-full",
        ),
        # Battery smaller than the surplus: it charges 30 kW, PV covers load + 30 kW.
        pytest.param(
            LoopCase(
                lambda: Plant(constant(20e3), constant(90e3), battery_max_charge_w=30e3),
                True,
                0.0,
                1,
                49.5,
            ),
            id="battery-saturated",
        ),
        # An inverter that covers only half the way to a new limit per cycle: the export
        # halves each cycle (70 kW → under 0.5 kW takes 8) and the limit is not cut twice.
        pytest.param(
            LoopCase(
                lambda: Plant(constant(20e3), constant(90e3), soc_pct=95.0, pv_lag=0.5),
                True,
                0.0,
                8,
                19.5,
            ),
            id="slow-inverter",
        ),
        # No battery, 10 kW export allowed, a meter with ±100 W of noise.
        pytest.param(
            LoopCase(
                lambda: Plant(constant(20e3), constant(60e3), noise=random.Random(7)),
                False,
                10e3,
                1,
                None,
            ),
            id="noisy-meter",
        ),
    ],
)
def test_closed_loop_settles_under_the_limit_without_oscillating(case: LoopCase) -> None:
    controller = PvExportController(
        params(
            battery=case.battery,
            export_limit_w=case.export_limit_w,
            battery_available_charge=AVAILABLE if case.battery else None,
        )
    )
    grid, limits = run(case.plant(), controller, cycles=60)

    # The first cycles see the unmanaged export; from ``export_ends`` on it is under the limit.
    assert grid[case.export_ends - 1] < -case.export_limit_w
    assert min(grid[case.export_ends :]) >= -case.export_limit_w
    # Settled within three cycles: the limit no longer moves, and it never hunted.
    assert max(limits[3:]) - min(limits[3:]) < 0.5
    assert reversals(limits) == 0
    if case.limit_settles_to is not None:
        assert limits[-1] == pytest.approx(case.limit_settles_to)


def test_closed_loop_follows_load_steps_fast_down_slowly_up() -> None:
    # No battery, zero export, 60 kW of sun; the load steps 20 → 40 → 15 kW.
    def load(k: int) -> float:
        return 20_000.0 if k < 10 else 40_000.0 if k < 50 else 15_000.0

    plant = Plant(load, constant(60_000.0))
    grid, limits = run(plant, PvExportController(params(battery=False)), cycles=70)

    assert limits[9] == pytest.approx(19.5)
    # Load up: released at 1 %/s (20 steps of 1 kW), never beyond what the load takes.
    assert [round(x, 1) for x in limits[10:14]] == [20.5, 21.5, 22.5, 23.5]
    assert limits[49] == pytest.approx(39.5)
    assert min(grid[1:50]) >= 0.0  # zero export held throughout the release
    # Load down: one export cycle, then cut at once to the new level.
    assert grid[50] < 0.0
    assert limits[50] == pytest.approx(14.5)
    assert min(grid[51:]) >= 0.0
    # Between the steps the limit only rose; after the drop it held.
    assert reversals(limits[:50]) == 0
    assert max(limits[50:]) - min(limits[50:]) == pytest.approx(0.0)


def test_closed_loop_releases_into_a_battery_that_gains_room() -> None:
    # Battery full: PV held at 19.5 %. At 10 s the SoC falls under the maximum (someone
    # discharged it): PV is released at the ramp and the battery takes each step.
    plant = Plant(
        constant(20_000.0),
        constant(60_000.0),
        soc_pct_at=lambda k: 95.0 if k < 10 else 90.0,
    )
    controller = PvExportController(params(battery_available_charge=AVAILABLE))
    grid, limits = run(plant, controller, cycles=100)

    assert limits[9] == pytest.approx(19.5)
    assert [round(x, 1) for x in limits[10:13]] == [20.5, 21.5, 22.5]
    assert min(grid[1:]) >= 0.0  # never an exported watt while the battery ramps up
    assert reversals(limits) == 0
    # The sun (60 kW) is all used: 20 kW load, 40 kW (+ the floor) into the battery.
    assert limits[-1] == pytest.approx(100.0)
    assert plant.battery_setpoint_w == pytest.approx(-40_300.0)
    assert grid[-1] == pytest.approx(MARGIN_W)


def test_a_battery_that_keeps_not_following_is_reported_once() -> None:
    controller = PvExportController(params())
    state = PvExportState(charge_requests_w=(40_300.0, 40_300.0), limit_pct=100.0)
    snap = snapshot(grid_w=-40_000.0, pv_w=60_000.0, soc_pct=50.0, battery_w=0.0)
    first = controller.decide(snap, state, NOW, {})
    assert [e for e in first.events if "battery charges" in e]
    # still nothing, cycle after cycle (a higher priority holds it at 0 W): no new event
    decision = first
    for step in range(1, 60):
        now = NOW + timedelta(seconds=step)
        decision = controller.decide(
            snapshot(grid_w=-40_000.0, pv_w=60_000.0, soc_pct=50.0, battery_w=0.0, now=now),
            decision.state,
            now,
            {},
        )
        assert not [e for e in decision.events if "battery charges" in e], step
    assert decision.state.distrust_until == NOW + timedelta(seconds=60)
