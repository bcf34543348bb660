"""Several zones planned in one LP: the shared demand charge, per-zone fallback, the
uncontrolled load — pure, synchronous."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from gridpilot.control import hvac
from gridpilot.control.base import Forecast, PointRef, Reading, Snapshot
from gridpilot.control.hvac import (
    DemandLedger,
    DemandTerm,
    HvacController,
    HvacGroupController,
    HvacParams,
    HvacState,
    Plan,
    PlanJob,
    ZoneProblem,
    _level_hold,
    _pv_scenarios,
    plan_cooling,
    plan_zones,
    solve_plans,
)
from gridpilot.model.units import unit_of
from tests.unit.test_control_hvac import (
    CLIMATE,
    FLAT,
    GOOD_FIT,
    IRRADIANCE,
    MONDAY_6,
    MONDAY_10,
    OUTDOOR,
    SITE,
    TRUE_MODEL,
    demand_term,
    forecasts_at,
    params,
    plan_with,
    weather,
)

ZONES = ("hvac_zone_1", "hvac_zone_2")
GRID = PointRef("grid_meter", "active_power_w")
STEP = timedelta(minutes=15)


def zone_params(zone: str, **overrides: object) -> HvacParams:
    return params(zone=zone, **overrides)


def group(**overrides: object) -> HvacGroupController:
    return HvacGroupController(
        [HvacController(zone_params(z, **overrides), fit=GOOD_FIT) for z in ZONES]
    )


def site_forecasts(start: datetime, *, busy_w: float = 100_000.0) -> dict[str, Forecast]:
    """Weather, and the site's consumption without the zones' chillers: ``busy_w`` from
    09:00 to 11:00, 60 kW otherwise; no PV."""
    out = forecasts_at(start)
    times = [start + k * STEP for k in range(120)]
    out["uncontrolled_load_w"] = Forecast(
        start, STEP, tuple(busy_w if 9 <= t.hour < 11 else 60_000.0 for t in times)
    )
    return out


def site_snapshot(
    now: datetime,
    temperatures: tuple[float | None, ...] = (24.0, 24.0),
    *,
    grid_w: float | None = None,
    chillers_w: tuple[float, ...] = (5_000.0, 5_000.0),
) -> Snapshot:
    readings = {
        OUTDOOR: Reading(CLIMATE.temperature_degc(now), now),
        IRRADIANCE: Reading(SITE.irradiance_wm2(now), now),
    }
    for zone, temperature, chiller in zip(ZONES, temperatures, chillers_w, strict=True):
        if temperature is not None:
            readings[PointRef(zone, "temperature_degc")] = Reading(temperature, now)
        readings[PointRef(zone, "chiller_power_w")] = Reading(chiller, now)
    if grid_w is not None:
        readings[GRID] = Reading(grid_w, now)
    return Snapshot(now, readings)


def joint_peak_w(demand: DemandTerm, chillers: list[tuple[float, ...]]) -> float:
    return max(
        o + sum(c[k] for c in chillers)
        for k, (o, n) in enumerate(zip(demand.other_load_w, demand.counts, strict=True))
        if n
    )


# ------------------------------------------------------------------------ the joint LP


@pytest.mark.parametrize(
    ("threshold_w", "charge_per_kw"),
    [(110_000.0, 18.0), (115_000.0, 18.0), (120_000.0, 18.0), (115_000.0, 5.0)],
)
def test_zones_planned_together_do_not_crowd_one_block(
    threshold_w: float, charge_per_kw: float
) -> None:
    """The other load is 100 kW from 09:00 to 12:00, when the on-peak price starts: each
    zone planned apart pre-cools into the room under the billed peak as if it were its
    own; planned together their chillers share it, and the joint peak is lower."""
    p = params()
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    demand = DemandTerm(
        other_load_w=[100_000.0 if 9 <= t.hour < 12 else 60_000.0 for t in times],
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=threshold_w,
        charge_per_kw=charge_per_kw,
    )
    outdoor, irradiance, occupied = weather(MONDAY_6, p)
    prices = p.tariff.prices_per_kwh(MONDAY_6, p.step, p.steps)
    apart = [
        plan_cooling(
            TRUE_MODEL,
            t0,
            outdoor_degc=outdoor,
            irradiance_wm2=irradiance,
            occupied=occupied,
            prices_per_kwh=prices,
            params=p,
            demand=demand,
        )
        for t0 in (24.0, 23.0)
    ]
    together = plan_zones(
        [ZoneProblem(TRUE_MODEL, t0, p, occupied) for t0 in (24.0, 23.0)],
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        prices_per_kwh=prices,
        demand=demand,
    )
    assert all(plan.ok for plan in (*apart, *together))
    assert all(plan.comfort_violation_kh == pytest.approx(0.0, abs=1e-6) for plan in together)
    peak_apart = joint_peak_w(demand, [plan.chiller_power_w for plan in apart])
    peak_together = joint_peak_w(demand, [plan.chiller_power_w for plan in together])
    assert peak_together < peak_apart - 1_000.0
    # Every zone's plan carries the joint figures.
    for plan in together:
        assert plan.peak_w == pytest.approx(peak_together)
        assert plan.demand_charge == pytest.approx(
            charge_per_kw * max(0.0, peak_together - threshold_w) / 1000.0, rel=1e-6
        )


def test_one_zone_of_a_joint_plan_is_the_single_zone_plan() -> None:
    p = params()
    demand = demand_term(p, MONDAY_6, threshold_w=104_000.0)
    outdoor, irradiance, occupied = weather(MONDAY_6, p)
    prices = p.tariff.prices_per_kwh(MONDAY_6, p.step, p.steps)
    (joint,) = plan_zones(
        [ZoneProblem(TRUE_MODEL, 24.0, p, occupied)],
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        prices_per_kwh=prices,
        demand=demand,
    )
    single = plan_cooling(
        TRUE_MODEL,
        24.0,
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        occupied=occupied,
        prices_per_kwh=prices,
        params=p,
        demand=demand,
    )
    assert joint.cooling_w == pytest.approx(single.cooling_w, abs=1e-6)


@pytest.mark.parametrize(
    ("zones", "message"),
    [
        ([], "at least one zone"),
        (
            [
                ZoneProblem(TRUE_MODEL, 24.0, params(), [True] * 96),
                ZoneProblem(TRUE_MODEL, 24.0, params(step=timedelta(minutes=30)), [True] * 96),
            ],
            "one step",
        ),
        ([ZoneProblem(TRUE_MODEL, 24.0, params(), [True] * 95)], "equal, non-zero length"),
    ],
    ids=["no-zone", "two-steps", "short-occupancy"],
)
def test_joint_plan_inputs_are_checked(zones: list[ZoneProblem], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_zones(
            zones, outdoor_degc=[30.0] * 96, irradiance_wm2=[0.0] * 96, prices_per_kwh=[0.1] * 96
        )


def test_a_non_finite_start_fails_every_zone_without_raising() -> None:
    p = params()
    plans = plan_zones(
        [ZoneProblem(TRUE_MODEL, t0, p, [True] * 4) for t0 in (24.0, float("nan"))],
        outdoor_degc=[30.0] * 4,
        irradiance_wm2=[0.0] * 4,
        prices_per_kwh=[0.1] * 4,
    )
    assert [plan.status for plan in plans] == ["failed", "failed"]


# ------------------------------------------------------------------------ the controller


def test_requests_every_zone_from_one_plan() -> None:
    controller = group()
    decision = controller.decide(
        site_snapshot(MONDAY_6, grid_w=70_000.0),
        controller.initial_state(),
        MONDAY_6,
        site_forecasts(MONDAY_6),
    )
    targets = {r.target: r for r in decision.requests}
    assert set(targets) == {PointRef(z, "setpoint_degc") for z in ZONES}
    assert {r.source for r in decision.requests} == {"hvac_group_planner"}
    for zone, state in zip(ZONES, decision.state.zones, strict=True):
        assert state.plan is not None
        assert state.mode == "plan"
        assert decision.metrics[f"{zone}_fallback_state"] == 0.0
        assert targets[PointRef(zone, "setpoint_degc")].value == pytest.approx(
            decision.metrics[f"{zone}_setpoint_degc"]
        )
    assert decision.state.planned == (0, 1)
    assert "plan_peak_w" in decision.metrics
    for name in decision.metrics:
        assert unit_of(name) is not None, name


def test_a_zone_without_temperature_falls_back_alone() -> None:
    controller = group()
    decision = controller.decide(
        site_snapshot(MONDAY_10, (24.0, None), grid_w=110_000.0),
        controller.initial_state(),
        MONDAY_10,
        site_forecasts(MONDAY_10),
    )
    first, second = decision.state.zones
    assert first.mode == "plan"
    assert second.mode == "stale_temperature"
    assert decision.metrics["hvac_zone_2_fallback_state"] == 1.0
    assert decision.state.planned == (0,)
    fallback = zone_params("hvac_zone_2").fallback_setpoint_degc(occupied=True)
    setpoints = {r.target.device: r.value for r in decision.requests}
    assert setpoints["hvac_zone_2"] == pytest.approx(fallback)
    assert any("hvac_zone_2_planner: thermostat fallback" in e for e in decision.events)
    # The temperature returns: both zones are planned together again at once.
    again = controller.decide(
        site_snapshot(MONDAY_10 + timedelta(minutes=1), grid_w=110_000.0),
        decision.state,
        MONDAY_10 + timedelta(minutes=1),
        site_forecasts(MONDAY_10),
    )
    assert again.state.planned == (0, 1)
    assert any("optimised plan resumed" in e for e in again.events)


def test_without_an_uncontrolled_forecast_the_consumption_less_thermostats_is_used() -> None:
    controller = group()
    forecasts = forecasts_at(MONDAY_6)
    times = [MONDAY_6 + k * STEP for k in range(120)]
    forecasts["load_w"] = Forecast(
        MONDAY_6, STEP, tuple(120_000.0 if 9 <= t.hour < 11 else 70_000.0 for t in times)
    )
    decision = controller.decide(
        site_snapshot(MONDAY_6), controller.initial_state(), MONDAY_6, forecasts
    )
    assert all(state.mode == "plan" for state in decision.state.zones)
    # The consumption holds both zones' chillers: the peak is far below 120 kW + both.
    assert 100_000.0 < decision.metrics["plan_peak_w"] < 125_000.0
    without = controller.decide(
        site_snapshot(MONDAY_6), controller.initial_state(), MONDAY_6, forecasts_at(MONDAY_6)
    )
    assert "plan_peak_w" not in without.metrics  # no consumption forecast: energy only


@pytest.mark.parametrize(
    ("zones", "message"),
    [
        ((), "at least one zone"),
        (
            (
                HvacController(zone_params("hvac_zone_1")),
                HvacController(zone_params("hvac_zone_1")),
            ),
            "twice",
        ),
        (
            (
                HvacController(zone_params("hvac_zone_1")),
                HvacController(zone_params("hvac_zone_2", step=timedelta(minutes=30))),
            ),
            "one plan step",
        ),
    ],
    ids=["empty", "duplicate", "two-steps"],
)
def test_a_group_is_validated(zones: tuple[HvacController, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HvacGroupController(zones)


def test_state_is_carried_and_plans_are_reused() -> None:
    controller = group()
    state = controller.initial_state()
    forecasts = site_forecasts(MONDAY_6)
    first = controller.decide(site_snapshot(MONDAY_6), state, MONDAY_6, forecasts)
    later = MONDAY_6 + timedelta(minutes=5)
    temps = tuple(s.plan.temperatures_degc[1] for s in first.state.zones if s.plan is not None)
    second = controller.decide(site_snapshot(later, temps), first.state, later, forecasts)
    for a, b in zip(first.state.zones, second.state.zones, strict=True):
        assert b.plan is a.plan  # within the replan interval and on the plan: reused
    assert replace(second.state, zones=first.state.zones).planned == (0, 1)


# ------------------------------------------------------------------------ overcast scenario


@pytest.mark.parametrize(
    ("scenarios", "spread", "extra", "weights"),
    [
        (1, None, (), [1.0]),
        (5, 1_000.0, (), [0.2] * 5),
        (1, None, ((0.25, 30_000.0),), [0.75, 0.25]),
        (3, 1_000.0, ((0.1, 30_000.0),), [0.3, 0.3, 0.3, 0.1]),
    ],
)
def test_scenario_probabilities_sum_to_one(
    scenarios: int,
    spread: float | None,
    extra: tuple[tuple[float, float], ...],
    weights: list[float],
) -> None:
    n = 4
    term = DemandTerm(
        other_load_w=[50_000.0] * n,
        blocks=[0] * n,
        counts=[True] * n,
        threshold_w=0.0,
        charge_per_kw=18.0,
        spread_w=[spread] * n if spread is not None else None,
        scenarios=scenarios,
        extra=tuple((w, [add] * n) for w, add in extra),
    )
    levels = term.levels()
    assert [w for w, _ in levels] == pytest.approx(weights)
    for (_, add), (_, level) in zip(extra, levels[len(levels) - len(extra) :], strict=True):
        assert list(level) == pytest.approx([50_000.0 + add] * n)


@pytest.mark.parametrize(("weight", "floats"), [(0.0, False), (0.1, True), (0.3, True)])
def test_an_overcast_scenario_keeps_pre_cooling_for_its_peak(weight: float, floats: bool) -> None:
    """The forecast stays under the billed peak all day; an overcast day would add 30 kW
    from 10:00 to 12:00 (the PV the forecast counts on). Given a probability, the plan
    pre-cools and floats through those hours; without, it holds the zone as cheaply as
    it can."""
    p = params()
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    term = DemandTerm(
        other_load_w=[80_000.0 if 8 <= t.hour < 12 else 40_000.0 for t in times],
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=100_000.0,
        charge_per_kw=18.0,
        extra=((weight, [30_000.0 if 10 <= t.hour < 12 else 0.0 for t in times]),)
        if weight
        else (),
    )
    plan = plan_cooling(
        TRUE_MODEL,
        24.0,
        outdoor_degc=weather(MONDAY_6, p)[0],
        irradiance_wm2=weather(MONDAY_6, p)[1],
        occupied=weather(MONDAY_6, p)[2],
        prices_per_kwh=p.tariff.prices_per_kwh(MONDAY_6, p.step, p.steps),
        params=p,
        demand=term,
    )
    assert plan.ok
    assert plan.comfort_violation_kh == pytest.approx(0.0, abs=1e-6)
    overcast = [k for k, t in enumerate(times) if 10 <= t.hour < 12]
    in_overcast = max(plan.chiller_power_w[k] for k in overcast)
    energy_only = plan_cooling(
        TRUE_MODEL,
        24.0,
        outdoor_degc=weather(MONDAY_6, p)[0],
        irradiance_wm2=weather(MONDAY_6, p)[1],
        occupied=weather(MONDAY_6, p)[2],
        prices_per_kwh=p.tariff.prices_per_kwh(MONDAY_6, p.step, p.steps),
        params=p,
    )
    held = max(energy_only.chiller_power_w[k] for k in overcast)
    if floats:
        assert in_overcast < held - 1_000.0
        # ... because it was pre-cooled: colder than the energy-only plan at 10:00.
        at_ten = overcast[0]
        assert plan.temperatures_degc[at_ten] < energy_only.temperatures_degc[at_ten] - 0.5
    else:
        assert in_overcast == pytest.approx(held, abs=1.0)


def test_the_group_gives_the_overcast_scenario_the_pv_forecast_it_could_lose() -> None:
    """A sunny forecast keeps the site under the billed peak; the overcast scenario takes
    three quarters of the PV away in the busy hours: with a probability, the zones are
    cooler when the busy hours begin."""
    forecasts = site_forecasts(MONDAY_6, busy_w=130_000.0)
    times = [MONDAY_6 + k * STEP for k in range(120)]
    forecasts["pv_w"] = Forecast(
        MONDAY_6, STEP, tuple(40_000.0 if 9 <= t.hour < 11 else 0.0 for t in times)
    )
    billed = PointRef("peak_shaver", "billed_peak_w")
    snap = site_snapshot(MONDAY_6)
    snap = Snapshot(MONDAY_6, {**snap.readings, billed: Reading(110_000.0, MONDAY_6)})
    at_nine = round((MONDAY_6.replace(hour=9) - MONDAY_6) / STEP)
    temperatures = {}
    for weight in (0.0, 0.2):
        controller = group(
            overcast_weight=weight, overcast_pv_fraction=0.25, billed_peak_point=billed
        )
        decision = controller.decide(snap, controller.initial_state(), MONDAY_6, forecasts)
        plans = [s.plan for s in decision.state.zones]
        assert all(plan is not None and plan.ok for plan in plans)
        temperatures[weight] = [
            plan.temperatures_degc[at_nine] for plan in plans if plan is not None
        ]
    for calm, wary in zip(temperatures[0.0], temperatures[0.2], strict=True):
        assert wary < calm - 0.5


# ------------------------------------------------------------- plateau and cloud windows


def _sunny(times: list[datetime]) -> list[float]:
    """PV forecast: 10 kW now (06:00), 40 kW from 09:00 to 15:00."""
    return [40_000.0 if 9 <= t.hour < 15 else 10_000.0 if t == MONDAY_6 else 0.0 for t in times]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, []),
        ({"overcast_weight": 0.3}, [(0.3, "overcast")]),
        ({"pv_plateau_weight": 0.2}, [(0.2, "plateau 1.0")]),
        ({"pv_plateau_weight": 0.2, "pv_plateau_fraction": 0.5}, [(0.2, "plateau 0.5")]),
        (
            {"overcast_weight": 0.3, "pv_plateau_weight": 0.3, "pv_plateau_fraction": 0.5},
            [(0.3, "overcast"), (0.3, "plateau 0.5")],
        ),
    ],
)
def test_pv_scenarios_take_away_the_pv_they_doubt(
    overrides: dict[str, object], expected: list[tuple[float, str]]
) -> None:
    """The overcast scenario loses (1 - fraction) of the forecast everywhere; the plateau
    loses whatever the forecast expects above (fraction x) its value for now."""
    p = params(**overrides)
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    pv = _sunny(times)
    scenarios = _pv_scenarios(p, pv, times, MONDAY_6.date())
    assert [w for w, _, _ in scenarios] == pytest.approx([w for w, _ in expected])
    for (_, kind), (_, lost, _) in zip(expected, scenarios, strict=True):
        if kind == "overcast":
            want = [(1.0 - p.overcast_pv_fraction) * v for v in pv]
        else:
            cap = float(kind.split()[1]) * 10_000.0
            want = [max(0.0, v - cap) for v in pv]
        assert lost == pytest.approx(want)


@pytest.mark.parametrize(
    ("weight", "window_h", "fraction", "starts"),
    [
        (0.3, 2.0, 0.5, [6, 8, 9, 10, 11, 12, 13, 14]),  # windows that lose some PV
        (0.3, 1.0, 0.5, [6, 9, 10, 11, 12, 13, 14]),
        (0.6, 3.0, 0.25, [6, 7, 8, 9, 10, 11, 12, 13, 14]),
        (0.3, 2.0, 1.0, []),  # a "cloud" that keeps all the PV takes nothing away
        # Windows shorter than an hour tile the day: every block is in one of them.
        (0.3, 0.5, 0.5, [6, *(9 + 0.5 * k for k in range(12))]),
    ],
)
def test_cloud_windows_share_their_probability_over_the_day(
    weight: float, window_h: float, fraction: float, starts: list[float]
) -> None:
    """One scenario per hourly start (per window when shorter) from now (06:00) while today
    lasts, each taking (1 - fraction) of the PV forecast inside its window only, the
    probability shared."""
    p = params(
        cloud_window_weight=weight,
        cloud_window=timedelta(hours=window_h),
        overcast_pv_fraction=fraction,
    )
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    pv = _sunny(times)
    scenarios = _pv_scenarios(p, pv, times, MONDAY_6.date())
    assert [w for w, _, _ in scenarios] == pytest.approx(
        [weight / max(1, len(starts))] * len(starts)
    )
    for start, (_, lost, _) in zip(starts, scenarios, strict=True):
        for t, v, w in zip(times, pv, lost, strict=True):
            hour = t.hour + t.minute / 60.0
            inside = t.date() == MONDAY_6.date() and start <= hour < start + window_h
            assert w == pytest.approx((1.0 - fraction) * v if inside else 0.0)


def test_without_pv_there_is_nothing_to_doubt() -> None:
    p = params(overcast_weight=0.2, pv_plateau_weight=0.2, cloud_window_weight=0.2)
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    scenarios = _pv_scenarios(p, [0.0] * p.steps, times, MONDAY_6.date())
    assert [w for w, _, _ in scenarios] == pytest.approx([0.2, 0.2])  # no cloud window
    assert all(v == 0.0 for _, lost, _ in scenarios for v in lost)


@pytest.mark.parametrize(
    "weights",
    [
        {"overcast_weight": 0.5, "pv_plateau_weight": 0.5},
        {"overcast_weight": 0.4, "pv_plateau_weight": 0.3, "cloud_window_weight": 0.3},
        {"cloud_window_weight": 0.75, "level_hold_weight": 0.25},
    ],
)
def test_pv_scenarios_leave_the_forecast_some_probability(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be below 1"):
        params(**weights)


def _at(t: datetime, start_h: float, end_h: float) -> bool:
    minutes = t.hour * 60 + t.minute
    return start_h * 60 <= minutes < end_h * 60


@pytest.mark.parametrize(
    ("scenario", "protects"),
    [("none", False), ("all_day_overcast", False), ("cloud_windows", True)],
)
def test_cloud_windows_keep_pre_cooling_for_a_block_after_an_unshaveable_one(
    scenario: str, protects: bool
) -> None:
    """Billed peak 100 kW, net load forecast 85 kW from 08:00 to 12:00 with 60 kW of PV
    in it at 09:00-09:30 and 30 kW at 10:30-11:00. Losing half the PV all day puts
    09:00-09:30 at 115 kW, which no chiller can shave, and every lower block is then
    free in that scenario: 10:30-11:00 (100 kW + chillers) is left to the thermostat's
    holding power. A cloud arriving at 10:00 is one of the window scenarios, and its
    peak is 10:30-11:00 itself: the zone is pre-cooled and its chiller eased there."""
    p = params(
        tariff=FLAT.model_copy(update={"demand_charge_per_kw": 18.0}),
        cloud_window=timedelta(hours=1),
        cloud_window_weight=0.3 if scenario == "cloud_windows" else 0.0,
        overcast_weight=0.3 if scenario == "all_day_overcast" else 0.0,
    )
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    pv = [60_000.0 if _at(t, 9, 9.5) else 30_000.0 if _at(t, 10.5, 11) else 0.0 for t in times]
    term = DemandTerm(
        other_load_w=[85_000.0 if _at(t, 8, 12) else 40_000.0 for t in times],
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=100_000.0,
        charge_per_kw=18.0,
        extra=[(w, lost) for w, lost, _ in _pv_scenarios(p, pv, times, MONDAY_6.date())],
    )
    plan = plan_with(p, MONDAY_6, 24.0, term)
    assert plan.ok
    assert plan.comfort_violation_kh == pytest.approx(0.0, abs=1e-6)
    cloudy = [k for k, t in enumerate(times) if _at(t, 10.5, 11)]
    eased_kw = max(plan.chiller_power_w[k] for k in cloudy) / 1000.0
    holding_kw = min(plan.chiller_power_w[k] for k in range(cloudy[0] - 4, cloudy[0])) / 1000.0
    if protects:
        assert eased_kw < holding_kw - 5.0
        assert plan.temperatures_degc[cloudy[0]] < 23.0
    else:
        assert eased_kw > holding_kw - 0.5


@pytest.mark.parametrize(("recourse_h", "after_steps"), [(None, None), (0.0, 0), (1.0, 4)])
def test_a_window_with_recourse_is_answered_from_its_start(
    recourse_h: float | None, after_steps: int | None
) -> None:
    """With ``cloud_window_recourse`` each window's branch runs from its first step with PV
    lost to that long after the window's end (the horizon's end at most); without it the
    window shares the plan."""
    p = params(
        cloud_window_weight=0.3,
        cloud_window=timedelta(hours=2),
        cloud_window_recourse=None if recourse_h is None else timedelta(hours=recourse_h),
    )
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    scenarios = _pv_scenarios(p, _sunny(times), times, MONDAY_6.date())
    branches = [branch for _, _, branch in scenarios]
    if after_steps is None:
        assert branches == [None] * 8
    else:
        # The 2-hour windows that lose PV start at 06, 08, 09, ... 14 h (steps from 06:00);
        # each branch starts at its window's first step with PV lost (the 08:00 window's
        # at 09:00) and ends the recourse after the window's end.
        starts = [0, 8, 12, 16, 20, 24, 28, 32]
        firsts = [0, 12, 12, 16, 20, 24, 28, 32]
        assert branches == [
            (first, min(p.steps, k + 8 + after_steps))
            for first, k in zip(firsts, starts, strict=True)
        ]


def _two_windows(p: HvacParams, *, branches: bool) -> DemandTerm:
    """Billed peak 100 kW; net load forecast 85 kW from 08:00 to 12:00 with 30 kW of PV
    in it from 10:00 to 12:00; the cloud-window scenarios of ``p`` (half the PV lost)."""
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    pv = [30_000.0 if _at(t, 10, 12) else 0.0 for t in times]
    scenarios = _pv_scenarios(p, pv, times, MONDAY_6.date())
    return DemandTerm(
        other_load_w=[85_000.0 if _at(t, 8, 12) else 40_000.0 for t in times],
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=100_000.0,
        charge_per_kw=18.0,
        extra=[(w, lost) for w, lost, _ in scenarios],
        branches=[b for _, _, b in scenarios] if branches else (),
    )


def test_each_cloud_the_zones_can_answer_finds_them_cold() -> None:
    """Two one-hour windows, a deck at 10:00 or at 11:00 (probability 0.25 each), either
    of which puts its hour at 100 kW + chillers, all of it over the billed peak. Shared,
    one trajectory must protect both: it pre-cools for 10:00 and floats through both
    hours, and the zone is back at the top of the band at 11:00. Answered (recourse:
    the controller re-plans once it sees the cloud), the zone rides either deck out from
    a cold start, so the plan has it cold at 10:00 and again at 11:00 -- and pays for it
    in the plan, since each branch starts from the plan's own temperature."""
    base = params(tariff=FLAT.model_copy(update={"demand_charge_per_kw": 18.0}))
    p = base.model_copy(
        update={
            "cloud_window_weight": 0.5,
            "cloud_window": timedelta(hours=1),
            "cloud_window_recourse": timedelta(hours=1),
        }
    )
    at_10, at_11 = 16, 20  # steps from 06:00; temperatures_degc[k]: at step k's start
    plain = plan_with(base, MONDAY_6, 24.0, None)
    shared = plan_with(p, MONDAY_6, 24.0, _two_windows(p, branches=False))
    answered = plan_with(p, MONDAY_6, 24.0, _two_windows(p, branches=True))
    for plan in (plain, shared, answered):
        assert plan.ok
        assert plan.comfort_violation_kh == pytest.approx(0.0, abs=1e-6)
    assert plain.temperatures_degc[at_10] > 23.5
    assert shared.temperatures_degc[at_10] < 21.5
    assert shared.temperatures_degc[at_11] > 23.5
    assert answered.temperatures_degc[at_10] < 21.5
    assert answered.temperatures_degc[at_11] < 21.5
    assert answered.energy_wh > plain.energy_wh


def test_a_branch_like_the_plan_changes_nothing() -> None:
    """A scenario that takes nothing away, answered from 10:00: its branch can follow the
    plan, and each step's cost is split between plan and branch by probability, so the
    plan costs what it costs without the scenario."""
    p = params(tariff=FLAT.model_copy(update={"demand_charge_per_kw": 18.0}))
    times = [MONDAY_6 + k * p.step for k in range(p.steps)]
    other = [95_000.0 if _at(t, 8, 12) else 40_000.0 for t in times]
    plain = DemandTerm(
        other_load_w=other,
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=100_000.0,
        charge_per_kw=18.0,
    )
    with_branch = replace(plain, extra=[(0.4, [0.0] * p.steps)], branches=[(16, 40)])
    a, b = plan_with(p, MONDAY_6, 24.0, plain), plan_with(p, MONDAY_6, 24.0, with_branch)
    assert a.ok
    assert b.ok
    assert b.cost == pytest.approx(a.cost, rel=1e-6, abs=1e-6)
    assert b.demand_charge == pytest.approx(a.demand_charge, abs=1e-6)


@pytest.mark.parametrize(
    "branches",
    [[(4, 2)], [(0, 10_000)], [(-1, 3)], [(0, 4), (4, 8)]],
    ids=["reversed", "past_the_end", "negative", "more_than_scenarios"],
)
def test_branches_that_do_not_fit_the_horizon_are_refused(
    branches: list[tuple[int, int]],
) -> None:
    p = params()
    term = DemandTerm(
        other_load_w=[50_000.0] * p.steps,
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=100_000.0,
        charge_per_kw=18.0,
        extra=[(0.2, [0.0] * p.steps)],
        branches=branches,
    )
    with pytest.raises(ValueError, match="branches"):
        plan_with(p, MONDAY_6, 24.0, term)


def test_a_negative_recourse_is_refused() -> None:
    with pytest.raises(ValueError, match="cloud_window_recourse"):
        params(cloud_window_recourse=timedelta(minutes=-15))


@pytest.mark.parametrize(("weight", "wary"), [(0.0, False), (0.3, True)])
def test_the_plateau_keeps_pre_cooling_for_a_sun_that_may_not_rise(
    weight: float, wary: bool
) -> None:
    """At 06:00 the PV forecast expects 10 kW now and 50 kW from 09:00, which keeps the
    busy hours (130 kW) under the billed peak of 110 kW. Should the sky stay as it is,
    they would run 10-20 kW over: with a probability for that, the zones are cooler when
    the busy hours begin."""
    forecasts = site_forecasts(MONDAY_6, busy_w=130_000.0)
    times = [MONDAY_6 + k * STEP for k in range(120)]
    forecasts["pv_w"] = Forecast(
        MONDAY_6,
        STEP,
        tuple(50_000.0 if 9 <= t.hour < 15 else 10_000.0 if t.hour < 9 else 0.0 for t in times),
    )
    billed = PointRef("peak_shaver", "billed_peak_w")
    snap = site_snapshot(MONDAY_6)
    snap = Snapshot(MONDAY_6, {**snap.readings, billed: Reading(110_000.0, MONDAY_6)})
    at_nine = round((MONDAY_6.replace(hour=9) - MONDAY_6) / STEP)
    temperatures = {}
    for w in {0.0, weight}:
        controller = group(pv_plateau_weight=w, billed_peak_point=billed)
        decision = controller.decide(snap, controller.initial_state(), MONDAY_6, forecasts)
        plans = [s.plan for s in decision.state.zones]
        assert all(plan is not None and plan.ok for plan in plans)
        temperatures[w] = [plan.temperatures_degc[at_nine] for plan in plans if plan is not None]
    for calm, doubtful in zip(temperatures[0.0], temperatures[weight], strict=True):
        if wary:
            assert doubtful < calm - 0.5
        else:
            assert doubtful == calm


# ------------------------------------------------------------------- the level held


def _hold_steps(n: int, *, start: datetime) -> list[datetime]:
    return [start + k * STEP for k in range(n)]


@pytest.mark.parametrize(
    ("weight", "other_w", "measured_w", "start_h", "expected"),
    [
        # No probability: no scenario.
        (0.0, [100.0, 95.0, 90.0, 85.0], math.nan, 9, []),
        # Falling forecast, no meter: the next step's 100 held for 30 min (steps 1-2).
        (0.3, [100.0, 95.0, 90.0, 85.0], math.nan, 9, [(0.3, [0.0, 5.0, 10.0, 0.0], (1, 3))]),
        # The meter shows more than the forecast's next step: its level is held.
        (0.3, [100.0, 95.0, 90.0, 85.0], 104.0, 9, [(0.3, [0.0, 9.0, 14.0, 0.0], (1, 3))]),
        # A forecast rising past the level: nothing to hold, no scenario.
        (0.3, [100.0, 105.0, 110.0, 115.0], 90.0, 9, []),
        # Tomorrow's steps are not today's demand: the hold ends at midnight, here with
        # nothing held (the next step is tomorrow's).
        (0.3, [100.0, 95.0, 90.0, 85.0], math.nan, 23.75, []),
        # From 23:30: the one step before midnight is held, and the zones' answer ends there.
        (0.3, [100.0, 95.0, 90.0, 85.0], math.nan, 23.5, [(0.3, [0.0, 5.0, 0.0, 0.0], (1, 2))]),
    ],
)
def test_the_level_hold_scenario(
    weight: float,
    other_w: list[float],
    measured_w: float,
    start_h: float,
    expected: list[tuple[float, list[float], tuple[int, int]]],
) -> None:
    p = zone_params(ZONES[0], level_hold_weight=weight, level_hold=timedelta(minutes=30))
    start = MONDAY_6.replace(hour=0) + timedelta(hours=start_h)
    steps = _hold_steps(len(other_w), start=start)
    got = _level_hold(p, other_w, measured_w, steps, start.date())
    assert got == expected


def test_a_hold_shorter_than_a_step_is_refused() -> None:
    with pytest.raises(ValueError, match="level_hold must be at least one step"):
        params(level_hold_weight=0.2, level_hold=timedelta(minutes=5))


def test_a_level_that_may_hold_keeps_the_zones_cold_while_there_is_headroom() -> None:
    """At 09:00 the site runs 100 kW besides the chillers against a 110 kW billed peak,
    and PV is forecast to take 20 kW off from 09:15: the plan would leave cooling for the
    afternoon. If the level holds for two hours instead, 10 kW of chillers is all the zones
    get then, so a plan that gives the scenario a probability cools in the headroom now."""
    nine = MONDAY_6.replace(hour=9)
    forecasts = site_forecasts(nine)
    times = [nine + k * STEP for k in range(120)]
    forecasts["pv_w"] = Forecast(
        nine, STEP, tuple(20_000.0 if t > nine and t.hour < 16 else 0.0 for t in times)
    )
    billed = PointRef("peak_shaver", "billed_peak_w")
    snap = site_snapshot(nine, (22.5, 22.5))
    snap = Snapshot(nine, {**snap.readings, billed: Reading(110_000.0, nine)})
    after: dict[float, list[float]] = {}
    for weight in (0.0, 0.4):
        controller = group(level_hold_weight=weight, billed_peak_point=billed)
        decision = controller.decide(snap, controller.initial_state(), nine, forecasts)
        plans = [s.plan for s in decision.state.zones]
        assert all(plan is not None and plan.ok for plan in plans)
        after[weight] = [plan.temperatures_degc[1] for plan in plans if plan is not None]
        # Either way the next quarter stays under the billed peak.
        first = sum(plan.chiller_power_w[0] for plan in plans if plan is not None)
        assert 100_000.0 + first <= 110_000.0 + 1.0
    # The headroom (10 kW) goes to the zones together: colder by over a kelvin summed.
    assert sum(after[0.4]) < sum(after[0.0]) - 1.0
    assert all(wary <= calm for calm, wary in zip(after[0.0], after[0.4], strict=True))


# ------------------------------------------------------- the quarter now, from the meter


def test_a_nowcast_first_step_is_not_doubted_by_the_pv_scenarios() -> None:
    """With the first step nowcast, no scenario takes its PV away; the plateau's cap is
    still set by it, and every later step loses what it lost before. A cloud window that
    would have darkened only the first step is gone, its share going to the others."""
    overrides: dict[str, object] = {
        "overcast_weight": 0.1,
        "pv_plateau_weight": 0.1,
        "pv_plateau_fraction": 0.5,
        "cloud_window_weight": 0.3,
        "cloud_window": timedelta(minutes=15),
    }
    nine = MONDAY_6.replace(hour=9)
    p, nowcast = params(**overrides), params(**overrides, nowcast_first_step=True)
    times = [nine + k * p.step for k in range(p.steps)]
    pv = [max(0.0, 40_000.0 - 2_000.0 * k) for k in range(p.steps)]  # 40 kW now, falling
    before = _pv_scenarios(p, pv, times, nine.date())
    after = _pv_scenarios(nowcast, pv, times, nine.date())
    assert all(lost[0] == 0.0 for _, lost, _ in after)
    assert any(lost[0] > 0.0 for _, lost, _ in before)
    for (_, lost_before, _), (_, lost_after, _) in zip(before[:2], after[:2], strict=True):
        assert lost_after[1:] == pytest.approx(lost_before[1:])  # overcast, plateau
    windows_before, windows_after = before[2:], after[2:]
    assert len(windows_after) == len(windows_before) - 1
    assert [lost for _, lost, _ in windows_after] == [lost for _, lost, _ in windows_before[1:]]
    assert sum(w for w, _, _ in windows_after) == pytest.approx(0.3)


def _first_quarter_chillers_w(
    *, nowcast: bool, grid_w: float | None, margin_pct: float = 0.0
) -> float:
    """The joint plan's chillers in the quarter from 09:00 (W). Billed peak 110 kW; the
    forecast: 125 kW besides the chillers less 20 kW of PV for this quarter (105 kW), then
    PV rising to 40 kW. A level hold (0.3) makes cold zones worth having if the 105 kW does
    not fall, so the plan cools in all the headroom this quarter leaves. The chillers draw
    5 + 5 kW now; ``grid_w``: the meter's reading, or none; ``margin_pct``: the nowcast's."""
    nine = MONDAY_6.replace(hour=9)
    forecasts = site_forecasts(nine)
    times = [nine + k * STEP for k in range(120)]
    forecasts["uncontrolled_load_w"] = Forecast(
        nine, STEP, tuple(125_000.0 if t.hour < 11 else 60_000.0 for t in times)
    )
    forecasts["pv_w"] = Forecast(
        nine,
        STEP,
        tuple(20_000.0 if t == nine else 40_000.0 if t.hour < 16 else 0.0 for t in times),
    )
    billed = PointRef("peak_shaver", "billed_peak_w")
    snap = site_snapshot(nine, (22.5, 22.5), grid_w=grid_w)
    snap = Snapshot(nine, {**snap.readings, billed: Reading(110_000.0, nine)})
    controller = group(
        level_hold_weight=0.3,
        nowcast_first_step=nowcast,
        nowcast_margin_pct=margin_pct,
        billed_peak_point=billed,
    )
    decision = controller.decide(snap, controller.initial_state(), nine, forecasts)
    plans = [s.plan for s in decision.state.zones]
    assert all(plan is not None and plan.ok for plan in plans)
    return sum(plan.chiller_power_w[0] for plan in plans if plan is not None)


def test_a_nowcast_first_step_is_the_meter_when_it_reads_more() -> None:
    """The meter reads 117 kW with the chillers at 10 kW: 107 kW besides them against the
    forecast's 105, so 3 kW of headroom is left, not 5; the plan keeps to it. A meter
    reading less than the forecast leaves the forecast."""
    busier = _first_quarter_chillers_w(nowcast=True, grid_w=117_000.0)
    quieter = _first_quarter_chillers_w(nowcast=True, grid_w=110_000.0)
    forecast = _first_quarter_chillers_w(nowcast=True, grid_w=None)
    assert busier <= 3_000.0 + 1.0
    assert busier < forecast - 1_500.0
    assert quieter == pytest.approx(forecast, abs=1.0)
    # Without the option the first step is the forecast's, whatever the meter reads.
    ignored = _first_quarter_chillers_w(nowcast=False, grid_w=117_000.0)
    assert ignored == pytest.approx(forecast, abs=1.0)


@pytest.mark.parametrize(
    ("nowcast", "grid_w", "margin_pct", "first_w"),
    [
        (False, 117_000.0, 0.0, 105_000.0),  # the forecast's, whatever the meter reads
        (True, 117_000.0, 0.0, 107_000.0),  # the meter's: 117 kW less 5 + 5 kW of chillers
        (True, 110_000.0, 0.0, 105_000.0),  # a quieter meter leaves the forecast
        (True, None, 0.0, 105_000.0),  # no meter: the forecast
        (True, 117_000.0, 2.0, 107_000.0 * 1.02),  # raised by the margin
        (True, None, 2.0, 105_000.0 * 1.02),
    ],
)
def test_the_first_step_the_plan_is_given(
    monkeypatch: pytest.MonkeyPatch,
    nowcast: bool,
    grid_w: float | None,
    margin_pct: float,
    first_w: float,
) -> None:
    jobs: list[PlanJob] = []

    def solve(job: PlanJob) -> tuple[Plan, ...]:
        jobs.append(job)
        return solve_plans(job)

    monkeypatch.setattr(hvac, "solve_plans", solve)
    _first_quarter_chillers_w(nowcast=nowcast, grid_w=grid_w, margin_pct=margin_pct)
    (job,) = jobs
    assert job.demand is not None
    assert job.demand.other_load_w[0] == pytest.approx(first_w)
    assert job.demand.other_load_w[1] == pytest.approx(125_000.0 - 40_000.0)


# ----------------------------------------------------- re-planning a block under way

NINE = MONDAY_6.replace(hour=9)
SUN, HOT = 500.0, 30.0


@pytest.mark.parametrize(
    ("start_degc", "now_degc", "capacity_w", "share_of"),
    [
        (23.0, 22.4, 200_000.0, "model"),  # cooled 0.6 K in 5 min: what the model needs
        (23.0, 23.6, 200_000.0, "zero"),  # warmed faster than the gains alone: none
        (23.0, 20.0, 20_000.0, "capacity"),  # more than the chiller can: its capacity
    ],
)
def test_the_cooling_a_block_has_had(
    start_degc: float, now_degc: float, capacity_w: float, share_of: str
) -> None:
    had = hvac._cooling_had_w(
        TRUE_MODEL,
        start_degc,
        now_degc,
        elapsed_s=300.0,
        step_s=900.0,
        outdoor_degc=HOT,
        irradiance_wm2=SUN,
        occupied=True,
        capacity_w=capacity_w,
    )
    if share_of == "zero":
        assert had == 0.0
        return
    if share_of == "capacity":
        assert had == pytest.approx(capacity_w * 300.0 / 900.0)
        return
    # Held over the 5 minutes, 3× that share of the step's mean takes the zone there.
    reached = TRUE_MODEL.step(
        start_degc,
        outdoor_degc=HOT,
        cooling_w=had * 3.0,
        irradiance_wm2=SUN,
        occupied=1.0,
        dt_s=300.0,
    )
    assert reached == pytest.approx(now_degc, abs=1e-9)


def test_the_block_under_way_is_billed_from_its_start() -> None:
    """5 of 15 minutes gone at a mean of 120 kW (10 kWh), 5 kW of it the planned chillers;
    the meter less the chillers reads 110 kW now. The block's other load: (10 kWh − 5 kW ×
    5 min) over 15 min plus 110 kW for the other 10; the spread and the scenarios count
    for those 10 minutes only."""
    p = params(replan_within_block=timedelta(minutes=5))
    demand = DemandTerm(
        other_load_w=[100_000.0, 90_000.0],
        blocks=[0, 1],
        counts=[True, True],
        threshold_w=120_000.0,
        charge_per_kw=15.0,
        spread_w=[6_000.0, 6_000.0],
        extra=[(0.1, [9_000.0, 9_000.0])],
    )
    block = hvac.BlockUnderWay(NINE, 300.0, (23.0,), 10_000.0)
    got = hvac._block_so_far(demand, block, 5_000.0 * 300.0, 110_000.0, p)
    expected = (10_000.0 * 3600.0 - 5_000.0 * 300.0) / 900.0 + 110_000.0 * 600.0 / 900.0
    assert got.other_load_w[0] == pytest.approx(expected)
    assert list(got.other_load_w[1:]) == [90_000.0]
    assert got.spread_w == pytest.approx([4_000.0, 6_000.0])
    assert [list(add) for _, add in got.extra] == [pytest.approx([6_000.0, 9_000.0])]
    # No fresh reading: the forecast's level for the rest.
    blind = hvac._block_so_far(demand, block, 0.0, math.nan, p)
    assert blind.other_load_w[0] == pytest.approx(40_000.0 + 100_000.0 * 600.0 / 900.0)


def test_a_cooling_floor_holds_in_the_first_step() -> None:
    """A zone with nothing to gain from cooling now (cold, flat prices, no demand charge)
    plans none in the first step -- unless it has already had some there."""
    p = params(tariff=FLAT)
    outdoor, irradiance, occupied = weather(NINE, p)
    prices = p.tariff.prices_per_kwh(NINE, p.step, p.steps)

    def first_step_w(floor: float) -> float:
        (plan,) = plan_zones(
            [ZoneProblem(TRUE_MODEL, 21.5, p, occupied, first_cooling_min_w=floor)],
            outdoor_degc=outdoor,
            irradiance_wm2=irradiance,
            prices_per_kwh=prices,
        )
        assert plan.ok
        return plan.cooling_w[0]

    assert first_step_w(0.0) == pytest.approx(0.0, abs=1.0)
    assert first_step_w(8_000.0) == pytest.approx(8_000.0, rel=1e-6)


def _quarter_with_replans(
    monkeypatch: pytest.MonkeyPatch, *, extra_w: float
) -> list[tuple[datetime, PlanJob]]:
    """The group re-planning every 5 min from 09:00 against a billed peak of 110 kW and
    the forecast's 100 kW (site_forecasts); the meter reads 105 kW plus, from 09:05,
    ``extra_w``; the zones cool from 23.0 to 22.6 °C by 09:05. Cycles every 30 s to
    09:16; returns each solve's start and job."""
    jobs: list[tuple[datetime, PlanJob]] = []
    clock: list[datetime] = []

    def solve(job: PlanJob) -> tuple[Plan, ...]:
        jobs.append((clock[-1], job))
        return solve_plans(job)

    monkeypatch.setattr(hvac, "solve_plans", solve)
    billed = PointRef("peak_shaver", "billed_peak_w")
    controller = group(billed_peak_point=billed, replan_within_block=timedelta(minutes=5))
    state = controller.initial_state()
    forecasts = site_forecasts(NINE)
    for k in range(33):
        now = NINE + k * timedelta(seconds=30)
        clock.append(now)
        minutes = (now - NINE) / timedelta(minutes=1)
        zone_degc = 23.0 - 0.4 * min(minutes, 5.0) / 5.0
        grid = 105_000.0 + (extra_w if minutes >= 5.0 else 0.0)
        snap = site_snapshot(now, (zone_degc, zone_degc), grid_w=grid)
        snap = Snapshot(now, {**snap.readings, billed: Reading(110_000.0, now)})
        decision = controller.decide(snap, state, now, forecasts)
        state = decision.state
    return jobs


def test_a_block_under_way_is_re_planned_from_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans at 09:00, 09:05, 09:10 and 09:15: the ones inside the block start from the
    zones' temperatures at 09:00 with the cooling they have had since as a floor; the one
    at 09:15 is an ordinary plan from the new block's start."""
    jobs = _quarter_with_replans(monkeypatch, extra_w=0.0)
    assert [t - NINE for t, _ in jobs] == [timedelta(minutes=m) for m in (0, 5, 10, 15)]
    first, inside = jobs[0][1], jobs[1][1]
    assert [z.t0_degc for z in inside.zones] == pytest.approx([23.0, 23.0])
    assert all(z.first_cooling_min_w > 0.0 for z in inside.zones)
    assert inside.prices_per_kwh == first.prices_per_kwh  # the same steps, from 09:00
    last = jobs[3][1]
    assert [z.t0_degc for z in last.zones] == pytest.approx([22.6, 22.6])
    assert all(z.first_cooling_min_w == 0.0 for z in last.zones)


def test_a_block_running_over_has_cooling_taken_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The meter 12 kW above the forecast from 09:05: the re-plan at 09:05 keeps the block
    under the billed peak with less cooling in it than the quiet block's re-plan."""

    def first_step_w(jobs: list[tuple[datetime, PlanJob]]) -> float:
        _, job = jobs[1]
        return sum(plan.chiller_power_w[0] for plan in solve_plans(job))

    quiet = first_step_w(_quarter_with_replans(monkeypatch, extra_w=0.0))
    busy = first_step_w(_quarter_with_replans(monkeypatch, extra_w=12_000.0))
    assert busy < quiet - 1_000.0


def test_a_block_the_meter_barely_covered_is_planned_from_now() -> None:
    """Without 90 % of the block so far on the meter (a gap, or a ledger of another
    block), a re-plan inside it plans from now, as without the option."""
    p = params(replan_within_block=timedelta(minutes=5))
    plan = Plan("optimal", "", 900.0, (23.0, 22.5), (1.0,), (1.0,))
    zones = [HvacState(plan=plan, plan_start=NINE)]
    ready = [(0, 22.8, TRUE_MODEL)]
    now = NINE + timedelta(minutes=5)

    def ledger(covered_s: float, start: datetime = NINE) -> DemandLedger:
        return DemandLedger((2026, 7), 0.0, start, 8_000.0, covered_s, (100_000.0, now))

    whole = hvac._block_under_way(p, zones, ready, ledger(300.0), now)
    assert whole is not None
    assert whole.start_degc == (23.0,)
    assert hvac._block_under_way(p, zones, ready, ledger(200.0), now) is None
    assert hvac._block_under_way(p, zones, ready, ledger(300.0, NINE - STEP), now) is None
    assert hvac._block_under_way(p, zones, ready, None, now) is None
