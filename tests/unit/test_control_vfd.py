"""VFD curtailment: the affinity law, shedding within bounds, restoring with a ramp."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.vfd import (
    VfdCurtailmentController,
    VfdParams,
    VfdState,
    power_at_speed,
    speed_for_power,
    speed_to_shed,
)
from gridpilot.model.units import unit_of
from gridpilot.sim.physics import FanParams, fan_power_w

NOW = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
GRID = PointRef("grid_meter", "active_power_w")
SPEED = PointRef("ahu_fan", "speed_pct")
SPEED_SETPOINT = PointRef("ahu_fan", "speed_setpoint_pct")
POWER = PointRef("ahu_fan", "power_w")
SHED = PointRef("site", "shed_request_w")
RATED_W = 15_000.0
LIMIT_W = 100_000.0
HYSTERESIS_W = 500.0


def params(**overrides: object) -> VfdParams:
    fields: dict[str, object] = {
        "rated_power_w": RATED_W,
        "min_speed_pct": 50.0,
        "max_speed_pct": 100.0,
        "grid_import_limit_w": LIMIT_W,
        "hysteresis_w": HYSTERESIS_W,
        "restore_rate_pct_per_s": 0.5,
    }
    fields |= overrides
    return VfdParams.model_validate(fields)


def snapshot(
    *,
    grid_w: float | None = None,
    speed_pct: float | None = None,
    setpoint_pct: float | None = None,
    power_w: float | None = None,
    shed_w: float | None = None,
    grid_age_s: float = 0.0,
    now: datetime = NOW,
) -> Snapshot:
    readings: dict[PointRef, Reading] = {}
    for ref, value, age in (
        (GRID, grid_w, grid_age_s),
        (SPEED, speed_pct, 0.0),
        (SPEED_SETPOINT, setpoint_pct, 0.0),
        (POWER, power_w, 0.0),
        (SHED, shed_w, 0.0),
    ):
        if value is not None:
            readings[ref] = Reading(value, now - timedelta(seconds=age))
    return Snapshot(now, readings)


def speed_requested(decision: Decision[VfdState]) -> float | None:
    found = [r for r in decision.requests if r.target == SPEED_SETPOINT]
    assert len(found) <= 1
    return found[0].value if found else None


# --------------------------------------------------------------------------------------------
# The affinity law


@pytest.mark.parametrize(
    ("speed_pct", "power_share"),
    [(100.0, 1.0), (80.0, 0.512), (50.0, 0.125), (0.0, 0.0), (-5.0, 0.0)],
)
def test_power_at_speed_is_the_cube_law(speed_pct: float, power_share: float) -> None:
    assert power_at_speed(RATED_W, speed_pct) == pytest.approx(power_share * RATED_W)
    # The simulator's fan model agrees.
    assert power_at_speed(RATED_W, speed_pct) == pytest.approx(
        fan_power_w(FanParams(rated_power_w=RATED_W), speed_pct)
    )


@pytest.mark.parametrize(
    ("power_w", "speed_pct"), [(15_000.0, 100.0), (7_680.0, 80.0), (1_875.0, 50.0), (0.0, 0.0)]
)
def test_speed_for_power_inverts_it(power_w: float, speed_pct: float) -> None:
    assert speed_for_power(RATED_W, power_w) == pytest.approx(speed_pct)
    assert power_at_speed(RATED_W, speed_for_power(RATED_W, power_w)) == pytest.approx(power_w)


def test_speed_for_power_needs_a_rating() -> None:
    with pytest.raises(ValueError, match="rated_power_w must be positive"):
        speed_for_power(0.0, 100.0)


@pytest.mark.parametrize(
    ("speed_pct", "power_w", "shed_w", "expected_pct"),
    [
        (80.0, 7_680.0, 7_680.0 - 1_875.0, 50.0),  # 80 % → 50 % sheds 5.8 kW of 15 kW rated
        (100.0, 15_000.0, 15_000.0 - 7_680.0, 80.0),
        (80.0, 7_680.0, 0.0, 80.0),
        (80.0, 7_680.0, 8_000.0, 0.0),  # more than it draws: stop
        (50.0, 1_875.0, -(7_680.0 - 1_875.0), 80.0),  # negative = headroom to speed up
        # Relative to the measured point: a drive drawing 10 % over the law still sheds a
        # tenth of its power with the same speed ratio.
        (80.0, 8_448.0, 8_448.0 * (1 - 0.125 / 0.512), 50.0),
    ],
)
def test_speed_to_shed_uses_the_measured_operating_point(
    speed_pct: float, power_w: float, shed_w: float, expected_pct: float
) -> None:
    assert speed_to_shed(speed_pct, power_w, shed_w) == pytest.approx(expected_pct)


# --------------------------------------------------------------------------------------------
# Shedding


def affinity_speed(speed_pct: float, power_w: float, shed_w: float) -> float:
    """The expected speed, written out independently of the module."""
    return speed_pct * ((power_w - shed_w) / power_w) ** (1.0 / 3.0)


@dataclass(frozen=True)
class ShedCase:
    grid_w: float
    speed_pct: float
    expected_pct: float | None
    """The speed requested; None = no request."""
    min_speed_pct: float = 50.0
    max_speed_pct: float = 100.0


@pytest.mark.parametrize(
    "case",
    [
        # 2 kW over the limit at 80 % (7.68 kW): shed 2 kW plus half the band.
        pytest.param(
            ShedCase(LIMIT_W + 2_000.0, 80.0, affinity_speed(80.0, 7_680.0, 2_250.0)),
            id="affinity",
        ),
        # 10 kW over: the law says stop, the bound says 50 %.
        pytest.param(ShedCase(LIMIT_W + 10_000.0, 80.0, 50.0), id="min-bound"),
        pytest.param(ShedCase(LIMIT_W + 10_000.0, 80.0, 65.0, min_speed_pct=65.0), id="min-65"),
        # Running above the max bound: shedding never asks for more than the maximum.
        pytest.param(ShedCase(LIMIT_W + 100.0, 100.0, 90.0, max_speed_pct=90.0), id="max-bound"),
        # Under the limit, at the limit: nothing to shed.
        pytest.param(ShedCase(LIMIT_W - 3_000.0, 80.0, None), id="under-limit"),
        pytest.param(ShedCase(LIMIT_W, 80.0, None), id="at-limit"),
        # Already at the minimum speed: nothing this drive can shed.
        pytest.param(ShedCase(LIMIT_W + 2_000.0, 50.0, None), id="at-minimum"),
        # Stopped drive: nothing to shed.
        pytest.param(ShedCase(LIMIT_W + 2_000.0, 0.0, None), id="stopped"),
    ],
)
def test_shed_speed_follows_the_affinity_law_within_bounds(case: ShedCase) -> None:
    controller = VfdCurtailmentController(
        params(min_speed_pct=case.min_speed_pct, max_speed_pct=case.max_speed_pct)
    )
    snap = snapshot(
        grid_w=case.grid_w,
        speed_pct=case.speed_pct,
        setpoint_pct=case.speed_pct,
        power_w=power_at_speed(RATED_W, case.speed_pct),
    )
    decision = controller.decide(snap, controller.initial_state(), NOW, {})

    assert speed_requested(decision) == pytest.approx(case.expected_pct)
    if case.expected_pct is None:
        assert decision.state.speed_setpoint_pct is None
    else:
        (request,) = decision.requests
        assert request.priority is Priority.PEAK_SHAVING
        assert request.source == "vfd_curtailment"
        assert case.min_speed_pct <= request.value <= case.max_speed_pct
        assert decision.state.speed_setpoint_pct == pytest.approx(case.expected_pct)
        assert any("shedding" in e for e in decision.events)


def test_shed_amount_from_a_site_metric() -> None:
    controller = VfdCurtailmentController(
        params(grid_import_limit_w=None, shed_request="site.shed_request_w")
    )
    snap = snapshot(shed_w=3_000.0, speed_pct=100.0, power_w=15_000.0)
    decision = controller.decide(snap, controller.initial_state(), NOW, {})
    assert speed_requested(decision) == pytest.approx(affinity_speed(100.0, 15_000.0, 3_250.0))
    assert decision.metrics["shed_request_w"] == 3_000.0


def test_measured_power_drives_the_computation_and_a_missing_one_uses_the_law() -> None:
    controller = VfdCurtailmentController(params())
    measured = controller.decide(
        snapshot(grid_w=LIMIT_W + 2_000.0, speed_pct=80.0, power_w=9_000.0),
        controller.initial_state(),
        NOW,
        {},
    )
    modelled = controller.decide(
        snapshot(grid_w=LIMIT_W + 2_000.0, speed_pct=80.0),
        controller.initial_state(),
        NOW,
        {},
    )
    assert speed_requested(measured) == pytest.approx(affinity_speed(80.0, 9_000.0, 2_250.0))
    assert speed_requested(modelled) == pytest.approx(affinity_speed(80.0, 7_680.0, 2_250.0))


def test_shedding_more_never_raises_the_speed() -> None:
    # The drive still ramps down from 80 % to the 60 % asked; the import is still 1 kW over.
    controller = VfdCurtailmentController(params())
    state = VfdState(speed_setpoint_pct=60.0, normal_speed_pct=80.0, last_decided=NOW)
    snap = snapshot(grid_w=LIMIT_W + 1_000.0, speed_pct=75.0, power_w=power_at_speed(RATED_W, 75))
    decision = controller.decide(snap, state, NOW + timedelta(seconds=1), {})
    assert speed_requested(decision) == pytest.approx(60.0)


# --------------------------------------------------------------------------------------------
# Restoring


@pytest.mark.parametrize(
    ("grid_w", "dt_s", "expected_pct"),
    [
        (LIMIT_W - 20_000.0, 1.0, 60.5),  # plenty of headroom: the ramp, 0.5 %/s
        (LIMIT_W - 20_000.0, 4.0, 62.0),
        (LIMIT_W - 20_000.0, 600.0, 62.5),  # a long gap counts as max_age_s (5 s)
        (LIMIT_W - 300.0, 1.0, 60.0),  # inside the band: hold
        (LIMIT_W - 500.0, 1.0, 60.0),  # at the edge of the band: hold
        # 600 W headroom: at most 350 W more power (600 less half the band), 60 % → 60.44 %.
        (LIMIT_W - 600.0, 5.0, speed_for_power(RATED_W, power_at_speed(RATED_W, 60.0) + 350.0)),
    ],
)
def test_restore_ramps_within_the_headroom(grid_w: float, dt_s: float, expected_pct: float) -> None:
    controller = VfdCurtailmentController(params())
    state = VfdState(60.0, 80.0, NOW - timedelta(seconds=dt_s))
    snap = snapshot(grid_w=grid_w, speed_pct=60.0, power_w=power_at_speed(RATED_W, 60.0))
    decision = controller.decide(snap, state, NOW, {})
    assert speed_requested(decision) == pytest.approx(expected_pct)
    assert decision.state.speed_setpoint_pct == pytest.approx(expected_pct)


def test_restore_ends_at_normal_speed_and_hands_the_drive_back() -> None:
    controller = VfdCurtailmentController(params())
    state = VfdState(79.8, 80.0, NOW - timedelta(seconds=1))
    snap = snapshot(grid_w=LIMIT_W - 20_000.0, speed_pct=79.8, power_w=7_620.0)
    done = controller.decide(snap, state, NOW, {})
    assert speed_requested(done) == pytest.approx(80.0)
    assert done.state.speed_setpoint_pct is None
    assert any("restored to 80.0 %" in e for e in done.events)

    later = NOW + timedelta(seconds=1)
    idle = controller.decide(snapshot(grid_w=LIMIT_W - 20_000.0, now=later), done.state, later, {})
    assert idle.requests == ()


def test_a_drive_held_at_its_bound_stays_curtailed_while_the_limit_is_tight() -> None:
    # Shedding from 100 % with a 90 % maximum: the normal speed is 90 %, the same as the
    # speed held; inside the band that is a hold, not a completed restore.
    controller = VfdCurtailmentController(params(max_speed_pct=90.0))
    state = VfdState(90.0, 90.0, NOW - timedelta(seconds=1))
    snap = snapshot(grid_w=LIMIT_W - 200.0, speed_pct=90.0, power_w=power_at_speed(RATED_W, 90))
    decision = controller.decide(snap, state, NOW, {})
    assert speed_requested(decision) == pytest.approx(90.0)
    assert decision.state.speed_setpoint_pct == pytest.approx(90.0)
    assert decision.events == ()


def test_normal_speed_is_the_reference_at_the_start_or_the_configured_one() -> None:
    snap = snapshot(grid_w=LIMIT_W + 500.0, speed_pct=78.0, setpoint_pct=85.0, power_w=7_100.0)
    captured = VfdCurtailmentController(params())
    assert captured.decide(snap, VfdState(), NOW, {}).state.normal_speed_pct == 85.0
    fixed = VfdCurtailmentController(params(normal_speed_pct=75.0))
    assert fixed.decide(snap, VfdState(), NOW, {}).state.normal_speed_pct == 75.0


def test_stale_shed_input_restores_with_the_ramp_and_says_so_once() -> None:
    controller = VfdCurtailmentController(params())
    state = VfdState(60.0, 80.0, NOW - timedelta(seconds=1))
    snap = snapshot(grid_w=LIMIT_W + 5_000.0, grid_age_s=30.0, speed_pct=60.0)
    first = controller.decide(snap, state, NOW, {})
    assert speed_requested(first) == pytest.approx(60.5)
    (event,) = first.events
    assert "grid_meter.active_power_w stale" in event

    later = NOW + timedelta(seconds=1)
    second = controller.decide(
        snapshot(grid_w=LIMIT_W + 5_000.0, grid_age_s=31.0, speed_pct=60.5, now=later),
        first.state,
        later,
        {},
    )
    assert speed_requested(second) == pytest.approx(61.0)
    assert second.events == ()


# --------------------------------------------------------------------------------------------
# Closed loop: the building's load plus a fan that ramps towards its reference.


def test_closed_loop_sheds_then_restores_without_hunting() -> None:
    controller = VfdCurtailmentController(params())
    speed_pct = 80.0
    reference_pct = 80.0
    state = controller.initial_state()
    grid: list[float] = []
    speeds: list[float] = [reference_pct]  # the reference before and after each cycle
    for k in range(200):
        now = NOW + timedelta(seconds=k)
        other_w = 96_000.0 if k < 60 else 85_000.0  # the rest of the site; drops at 60 s
        # The drive ramps at 10 %/s, as the simulator's.
        speed_pct = min(max(reference_pct, speed_pct - 10.0), speed_pct + 10.0)
        grid_w = other_w + power_at_speed(RATED_W, speed_pct)
        snap = snapshot(
            grid_w=grid_w,
            speed_pct=speed_pct,
            setpoint_pct=reference_pct,
            power_w=power_at_speed(RATED_W, speed_pct),
            now=now,
        )
        decision = controller.decide(snap, state, now, {})
        state = decision.state
        requested = speed_requested(decision)
        if requested is not None:
            reference_pct = requested
        grid.append(grid_w)
        speeds.append(reference_pct)

    # 96 kW + 7.68 kW is 3.68 kW over: cut at once to the speed that lands mid-band; the
    # drive takes two cycles to get there (10 %/s), then the import stays under the limit.
    assert grid[0] > LIMIT_W
    assert grid[1] > LIMIT_W
    assert max(grid[2:60]) == pytest.approx(LIMIT_W - HYSTERESIS_W / 2)
    assert speeds[1] == pytest.approx(
        speed_for_power(RATED_W, LIMIT_W - 96_000.0 - HYSTERESIS_W / 2), abs=0.01
    )
    # The speed only fell, then only rose: one reversal, at the load drop.
    steps = [b - a for a, b in itertools.pairwise(speeds) if abs(b - a) > 1e-9]
    assert all(s < 0 for s in steps[: next(i for i, s in enumerate(steps) if s > 0)])
    assert sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0)) == 1
    # After the drop the fan returns to normal at 0.5 %/s and is handed back.
    assert speeds[-1] == pytest.approx(80.0)
    assert state.speed_setpoint_pct is None
    assert max(grid) == grid[0]


def test_metric_names_carry_a_unit() -> None:
    controller = VfdCurtailmentController(params())
    snap = snapshot(grid_w=LIMIT_W + 2_000.0, speed_pct=80.0, power_w=7_680.0)
    decision = controller.decide(snap, controller.initial_state(), NOW, {})
    assert "speed_setpoint_pct" in decision.metrics
    for name in decision.metrics:
        assert unit_of(name) is not None, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grid_import_limit_w": None}, "exactly one shed source"),
        ({"shed_request": "site.shed_request_w"}, "exactly one shed source"),
        ({"min_speed_pct": 90.0, "max_speed_pct": 80.0}, "above max_speed_pct"),
        ({"normal_speed_pct": 30.0}, "within"),
        ({"rated_power_w": 0.0}, "greater than 0"),
        ({"shed_request": "nodot", "grid_import_limit_w": None}, "DEVICE.POINT"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_params_are_validated(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        params(**overrides)


def test_cube_root_matches_math() -> None:
    # speed_for_power uses a real cube root, not a float power that loses the last digits.
    assert speed_for_power(1.0, 0.001) == pytest.approx(10.0, rel=1e-12)
    assert math.isclose(speed_for_power(RATED_W, RATED_W * 0.512), 80.0, rel_tol=1e-12)
