"""The HVAC planner: pre-cooling, comfort, fallbacks, persistence — pure, synchronous."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.control.base import (
    Controller,
    Decision,
    Forecast,
    Forecasts,
    PointRef,
    Priority,
    Reading,
    Snapshot,
)
from gridpilot.control.hvac import (
    ComfortBand,
    CopModel,
    DemandLedger,
    DemandTerm,
    HvacController,
    HvacParams,
    HvacState,
    Plan,
    plan_cooling,
    track_demand,
)
from gridpilot.control.tariff import HourWindow, PricePeriod, Tariff
from gridpilot.control.thermal import RcModel, ThermalFit, ZoneHistory, identify_zone
from gridpilot.model.units import unit_of
from gridpilot.sim.physics import (
    OutdoorClimate,
    SiteLocation,
    ZoneParams,
    ZoneState,
    is_occupied,
    step_zone,
)

ZONE = "hvac_zone_1"
SIM_ZONE = ZoneParams()
CLIMATE = OutdoorClimate()
SITE = SiteLocation()
MONDAY_6 = datetime(2026, 7, 6, 6, 0, tzinfo=UTC)
MONDAY_10 = datetime(2026, 7, 6, 10, 0, tzinfo=UTC)
TEMPERATURE = PointRef(ZONE, "temperature_degc")
SETPOINT = PointRef(ZONE, "setpoint_degc")
OUTDOOR = PointRef("weather_io", "outdoor_temperature_degc")
IRRADIANCE = PointRef("weather_io", "irradiance_wm2")

FLAT = Tariff(base_price_per_kwh=0.10)
PEAK = Tariff(
    base_price_per_kwh=0.10,
    periods=(PricePeriod(name="on-peak", start_hour=12.0, end_hour=18.0, price_per_kwh=0.60),),
)

TRUE_MODEL = RcModel(
    resistance_k_per_w=SIM_ZONE.resistance_k_per_w,
    capacitance_j_per_k=SIM_ZONE.capacitance_j_per_k,
    gain_unoccupied_w=SIM_ZONE.internal_gain_unoccupied_w,
    gain_occupied_w=SIM_ZONE.internal_gain_occupied_w,
    solar_aperture_m2=SIM_ZONE.solar_aperture_m2,
)


def simulated_history(*, days: float = 3.0, noise_k: float = 0.0) -> ZoneHistory:
    """The simulator's zone at 15 min, its setpoint moved every 2 h (as in the thermal tests)."""
    rng = random.Random(1)
    noise = np.random.default_rng(2)
    step_s = 900.0
    state = ZoneState()
    rows: list[tuple[float, float, float, float, float]] = []
    start = MONDAY_6.replace(hour=0)
    for k in range(round(days * 96)):
        now = start + timedelta(seconds=k * step_s)
        if k % 8 == 0:
            state = replace(state, setpoint_degc=rng.uniform(19.0, 26.0))
        occupied = is_occupied(now)
        t = state.temperature_degc + (noise.normal(0.0, noise_k) if noise_k else 0.0)
        outdoor, irradiance = CLIMATE.temperature_degc(now), SITE.irradiance_wm2(now)
        state = step_zone(
            SIM_ZONE,
            state,
            outdoor_degc=outdoor,
            irradiance_wm2=irradiance,
            occupied=occupied,
            dt_s=step_s,
        )
        rows.append((round(t, 2), outdoor, round(state.cooling_w, -1), irradiance, occupied))
    t_, o_, q_, i_, occ_ = zip(*rows, strict=True)
    return ZoneHistory.of(
        step_s, temperature_degc=t_, outdoor_degc=o_, cooling_w=q_, irradiance_wm2=i_, occupied=occ_
    )


def _fit(history: ZoneHistory) -> ThermalFit:
    fit = identify_zone(history)
    assert isinstance(fit, ThermalFit), fit
    return fit


GOOD_FIT = _fit(simulated_history())
BAD_FIT = _fit(simulated_history(noise_k=1.0))


def params(**overrides: object) -> HvacParams:
    base: dict[str, object] = {"zone": ZONE, "tariff": PEAK, "cop": CopModel(fixed_cop=3.5)}
    base.update(overrides)
    return HvacParams.model_validate(base)


def weather(start: datetime, p: HvacParams) -> tuple[list[float], list[float], list[bool]]:
    times = [start + k * p.step for k in range(p.steps)]
    return (
        [CLIMATE.temperature_degc(t) for t in times],
        [SITE.irradiance_wm2(t) for t in times],
        [p.occupied_at(t) for t in times],
    )


def plan_for(p: HvacParams, start: datetime, t0: float, model: RcModel = TRUE_MODEL) -> Plan:
    outdoor, irradiance, occupied = weather(start, p)
    return plan_cooling(
        model,
        t0,
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        occupied=occupied,
        prices_per_kwh=p.tariff.prices_per_kwh(start, p.step, p.steps),
        params=p,
    )


def forecasts_at(start: datetime, hours: float = 30.0) -> dict[str, Forecast]:
    step = timedelta(minutes=15)
    times = [start + k * step for k in range(round(hours * 4))]
    return {
        "outdoor_degc": Forecast(start, step, tuple(CLIMATE.temperature_degc(t) for t in times)),
        "irradiance_wm2": Forecast(start, step, tuple(SITE.irradiance_wm2(t) for t in times)),
    }


def snapshot(
    now: datetime, temperature: float, *, age_s: float = 5.0, weather_io: bool = True
) -> Snapshot:
    readings = {TEMPERATURE: Reading(temperature, now - timedelta(seconds=age_s))}
    if weather_io:
        readings[OUTDOOR] = Reading(CLIMATE.temperature_degc(now), now)
        readings[IRRADIANCE] = Reading(SITE.irradiance_wm2(now), now)
    return Snapshot(now=now, readings=readings)


def run(
    controller: HvacController,
    now: datetime,
    temperature: float,
    state: HvacState | None = None,
    forecasts: Forecasts | None = None,
    *,
    age_s: float = 5.0,
    weather_io: bool = True,
) -> Decision[HvacState]:
    return controller.decide(
        snapshot(now, temperature, age_s=age_s, weather_io=weather_io),
        state if state is not None else controller.initial_state(),
        now,
        forecasts if forecasts is not None else forecasts_at(now),
    )


def _index(p: HvacParams, start: datetime, hour: float) -> int:
    return round((MONDAY_6.replace(hour=0) + timedelta(hours=hour) - start) / p.step)


# ------------------------------------------------------------------------ the optimiser


@pytest.mark.parametrize("cop", [CopModel(fixed_cop=3.5), CopModel()], ids=["fixed", "carnot"])
def test_precools_before_the_peak_window(cop: CopModel) -> None:
    flat = plan_for(params(tariff=FLAT, cop=cop), MONDAY_6, 24.0)
    peak = plan_for(params(tariff=PEAK, cop=cop), MONDAY_6, 24.0)
    assert flat.ok
    assert peak.ok
    p = params()
    at_noon = _index(p, MONDAY_6, 12.0)
    # The zone enters the window colder with TOU prices than with flat ones ...
    assert peak.temperatures_degc[at_noon] < flat.temperatures_degc[at_noon] - 2.0
    assert peak.temperatures_degc[at_noon] >= 21.0 - 1e-6  # ... but not below the band
    # ... and the chiller runs less inside the window, more just before it.
    window = slice(at_noon, _index(p, MONDAY_6, 18.0))
    before = slice(_index(p, MONDAY_6, 10.0), at_noon)
    assert sum(peak.cooling_w[window]) < sum(flat.cooling_w[window]) - 10_000.0
    assert sum(peak.cooling_w[before]) > sum(flat.cooling_w[before]) + 10_000.0
    assert peak.comfort_violation_kh == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("t0", "start", "capacity_w"),
    [
        (24.0, MONDAY_6, 60_000.0),
        (22.0, MONDAY_10, 60_000.0),
        (26.0, MONDAY_6, 45_000.0),  # warm at dawn: unoccupied band, cooled by 07:00
        (21.0, MONDAY_10, 50_000.0),
    ],
)
def test_comfort_band_is_held_when_feasible(t0: float, start: datetime, capacity_w: float) -> None:
    p = params(chiller_capacity_w=capacity_w)
    plan = plan_for(p, start, t0)
    _, _, occupied = weather(start, p)
    assert plan.ok
    assert plan.comfort_violation_kh == pytest.approx(0.0, abs=1e-6)
    for k, occ in enumerate(occupied):
        band = p.band(occ)
        assert band.lower_degc - 1e-6 <= plan.temperatures_degc[k + 1] <= band.upper_degc + 1e-6
    assert all(0.0 <= q <= capacity_w + 1e-6 for q in plan.cooling_w)
    # The plan follows the model it was given, step by step.
    outdoor, irradiance, _ = weather(start, p)
    for k in range(p.steps):
        expected = TRUE_MODEL.step(
            plan.temperatures_degc[k],
            outdoor_degc=outdoor[k],
            cooling_w=plan.cooling_w[k],
            irradiance_wm2=irradiance[k],
            occupied=float(occupied[k]),
            dt_s=p.step_s,
        )
        assert plan.temperatures_degc[k + 1] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("t0", "capacity_w", "direction"),
    [
        (30.0, 60_000.0, "hot"),  # cooled back as fast as the chiller allows
        (29.0, 50_000.0, "hot"),
        (17.0, 60_000.0, "cold"),  # cooling cannot heat: the gains warm it back
    ],
)
def test_start_outside_the_band_is_penalised_not_infeasible(
    t0: float, capacity_w: float, direction: str
) -> None:
    p = params(chiller_capacity_w=capacity_w)
    plan = plan_for(p, MONDAY_10, t0)
    assert plan.ok
    assert plan.comfort_violation_kh > 0.0
    temps = plan.temperatures_degc
    back = next(k for k, t in enumerate(temps) if 21.0 - 1e-6 <= t <= 24.0 + 1e-6)
    assert back < 12  # within three hours
    if direction == "hot":
        assert plan.cooling_w[0] == pytest.approx(capacity_w)
        assert all(temps[k + 1] < temps[k] for k in range(back))
    else:
        assert plan.cooling_w[0] == pytest.approx(0.0, abs=1e-6)
        assert all(temps[k + 1] > temps[k] for k in range(back))
    # The violation reported is the one the temperatures show.
    hours = p.step_s / 3600.0
    shown = sum(max(0.0, 21.0 - t, t - 24.0) for t in temps[1 : back + 1]) * hours
    assert plan.comfort_violation_kh == pytest.approx(shown, rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"temperature_ceiling_degc": 26.0, "chiller_capacity_w": 5_000.0}, "infeasible"),
        ({"solver_time_limit_s": 0.0}, "failed"),
    ],
    ids=["ceiling-beyond-the-chiller", "no-time-to-solve"],
)
def test_solver_without_an_optimum(overrides: dict[str, object], status: str) -> None:
    plan = plan_for(params(**overrides), MONDAY_10, 25.0)
    assert plan.status == status
    assert not plan.ok
    assert plan.temperatures_degc == ()


def test_non_finite_input_fails_the_plan_without_raising() -> None:
    p = params()
    outdoor, irradiance, occupied = weather(MONDAY_10, p)
    outdoor[5] = float("nan")
    plan = plan_cooling(
        TRUE_MODEL,
        24.0,
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        occupied=occupied,
        prices_per_kwh=[0.1] * p.steps,
        params=p,
    )
    assert plan.status == "failed"


def test_mismatched_inputs_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="equal, non-zero length"):
        plan_cooling(
            TRUE_MODEL,
            24.0,
            outdoor_degc=[30.0, 30.0],
            irradiance_wm2=[0.0],
            occupied=[True, True],
            prices_per_kwh=[0.1, 0.1],
            params=params(),
        )


# ------------------------------------------------------------------------ the controller


def test_requests_the_planned_temperature_of_the_current_step() -> None:
    controller = HvacController(params(), fit=GOOD_FIT)
    decision = run(controller, MONDAY_10, 23.0)
    plan = decision.state.plan
    assert plan is not None
    assert decision.metrics["fallback_state"] == 0.0
    (request,) = decision.requests
    assert request.target == SETPOINT
    assert request.priority is Priority.ECONOMICS
    assert request.value == pytest.approx(plan.temperatures_degc[1])
    assert decision.metrics["planned_cooling_w"] == pytest.approx(plan.cooling_w[0])
    expected = plan_for(params(), MONDAY_10, 23.0, GOOD_FIT.rc)
    assert request.value == pytest.approx(expected.temperatures_degc[1], abs=1e-6)
    assert decision.events == ()


def test_plan_is_reused_until_the_replan_interval() -> None:
    p = params(replan_interval=timedelta(minutes=30))
    controller = HvacController(p, fit=GOOD_FIT)
    first = run(controller, MONDAY_10, 23.0)
    plan = first.state.plan
    assert plan is not None
    # 20 min later, the thermostat already at this step's target (it gets there before the
    # step ends): still on the plan, so the same plan and the second step's target.
    later = MONDAY_10 + timedelta(minutes=20)
    on_plan = plan.temperatures_degc[2]
    second = run(controller, later, on_plan, first.state)
    assert second.state.plan is plan
    assert second.metrics["plan_age_s"] == 1200.0
    assert second.requests[0].value == pytest.approx(plan.temperatures_degc[2])
    # More than replan_deviation_k outside what the plan spans now: re-planned at once.
    span = plan.temperatures_degc[1:3]
    for drift in (max(span) + 1.2, min(span) - 1.2):
        drifted = run(controller, later, drift, first.state)
        assert drifted.state.plan is not plan
        assert drifted.metrics["plan_age_s"] == 0.0
    within = run(controller, later, max(span) + 0.8, first.state)
    assert within.state.plan is plan
    # Past the interval: re-planned.
    third = run(controller, MONDAY_10 + timedelta(minutes=30), on_plan, second.state)
    assert third.state.plan is not plan
    assert third.state.plan_start == MONDAY_10 + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("controller_kw", "age_s", "overrides", "kind", "words"),
    [
        ({"fit": GOOD_FIT}, 600.0, {}, "stale_temperature", "older than 120 s"),
        ({"fit": BAD_FIT}, 5.0, {}, "model_bad", "fits badly"),
        ({}, 5.0, {}, "no_model", "no thermal model"),
        (
            {"history": replace(simulated_history(), cooling_w=np.zeros(288))},
            5.0,
            {},
            "model_refused",
            "cooling power never varies",
        ),
        (
            {"fit": GOOD_FIT},
            5.0,
            {"temperature_ceiling_degc": 25.0, "chiller_capacity_w": 3_000.0},
            "planner",
            "planner infeasible",
        ),
        ({"fit": GOOD_FIT}, 5.0, {"solver_time_limit_s": 0.0}, "planner", "planner failed"),
    ],
    ids=["stale", "bad-fit", "no-model", "refused-history", "infeasible", "solver-fails"],
)
def test_falls_back_to_the_thermostat_and_says_why_once(
    controller_kw: dict[str, object],
    age_s: float,
    overrides: dict[str, object],
    kind: str,
    words: str,
) -> None:
    p = params(**overrides)
    controller = HvacController(p, **controller_kw)  # type: ignore[arg-type]
    first = run(controller, MONDAY_10, 25.0, age_s=age_s)

    (request,) = first.requests
    # 75 % up the occupied band 21-24.
    assert request.value == pytest.approx(23.25)
    assert request.target == SETPOINT
    assert first.state.mode == kind
    assert first.metrics["fallback_state"] == 1.0
    assert len(first.events) >= 1
    assert "thermostat fallback" in first.events[-1]
    assert words in first.events[-1]
    # Same problem next cycle: same fallback, no new event.
    second = run(controller, MONDAY_10 + timedelta(minutes=1), 25.0, first.state, age_s=age_s)
    assert second.requests[0].value == pytest.approx(23.25)
    assert second.events == ()
    assert second.metrics["fallback_state"] == 1.0


def test_fallback_setpoint_follows_occupancy() -> None:
    p = params(fallback_band_position=0.5)
    controller = HvacController(p)
    night = run(controller, MONDAY_10.replace(hour=2), 25.0)
    day = run(controller, MONDAY_10, 25.0)
    assert night.requests[0].value == pytest.approx(23.0)  # middle of 18-28
    assert day.requests[0].value == pytest.approx(22.5)  # middle of 21-24


def test_recovers_from_a_stale_temperature_with_an_event() -> None:
    controller = HvacController(params(), fit=GOOD_FIT)
    stale = run(controller, MONDAY_10, 24.0, age_s=900.0)
    assert stale.state.mode == "stale_temperature"
    fresh = run(controller, MONDAY_10 + timedelta(minutes=1), 24.0, stale.state)
    assert fresh.state.mode == "plan"
    assert fresh.metrics["fallback_state"] == 0.0
    assert any("resumed" in e for e in fresh.events)


def test_identifies_its_model_from_history_in_its_state() -> None:
    controller = HvacController(params(), history=simulated_history())
    decision = run(controller, MONDAY_10, 23.0)
    assert isinstance(decision.state.fit, ThermalFit)
    assert decision.state.history is None
    assert decision.state.mode == "plan"
    assert any("identified 1R1C" in e for e in decision.events)
    assert decision.metrics["model_time_constant_s"] == pytest.approx(36_000.0, rel=0.1)


def test_missing_forecasts_fall_back_to_persistence() -> None:
    p = params()
    controller = HvacController(p, fit=GOOD_FIT)
    decision = run(controller, MONDAY_10, 23.0, forecasts={})

    assert decision.state.mode == "plan"
    assert decision.metrics["persisted_forecasts_count"] == 2.0
    assert any("persistence" in e for e in decision.events)
    # The plan is the one made on the current readings held over the horizon.
    outdoor_now, irradiance_now = (
        CLIMATE.temperature_degc(MONDAY_10),
        SITE.irradiance_wm2(MONDAY_10),
    )
    _, _, occupied = weather(MONDAY_10, p)
    expected = plan_cooling(
        GOOD_FIT.rc,
        23.0,
        outdoor_degc=[outdoor_now] * p.steps,
        irradiance_wm2=[irradiance_now] * p.steps,
        occupied=occupied,
        prices_per_kwh=p.tariff.prices_per_kwh(MONDAY_10, p.step, p.steps),
        params=p,
    )
    assert decision.state.plan is not None
    assert decision.state.plan.temperatures_degc == pytest.approx(expected.temperatures_degc)
    # Forecasts return at the next plan: persistence ends, said once.
    back = run(controller, MONDAY_10 + timedelta(minutes=15), 23.0, decision.state)
    assert back.metrics["persisted_forecasts_count"] == 0.0
    assert any("persistence ended" in e for e in back.events)


def test_one_missing_forecast_is_persisted_alone() -> None:
    controller = HvacController(params(), fit=GOOD_FIT)
    only_outdoor = {"outdoor_degc": forecasts_at(MONDAY_10)["outdoor_degc"]}
    decision = run(controller, MONDAY_10, 23.0, forecasts=only_outdoor)
    assert decision.metrics["persisted_forecasts_count"] == 1.0
    assert any("irradiance_wm2" in e and "persistence" in e for e in decision.events)


def test_no_forecast_and_no_weather_reading_falls_back() -> None:
    controller = HvacController(params(), fit=GOOD_FIT)
    decision = run(controller, MONDAY_10, 23.0, forecasts={}, weather_io=False)
    assert decision.state.mode == "no_outdoor"
    assert decision.metrics["fallback_state"] == 1.0
    assert "no outdoor_degc forecast" in decision.events[-1]


def test_a_short_forecast_is_held_at_its_last_value() -> None:
    p = params()
    controller = HvacController(p, fit=GOOD_FIT)
    short = forecasts_at(MONDAY_10, hours=6.0)
    decision = run(controller, MONDAY_10, 23.0, forecasts=short)
    assert decision.metrics["persisted_forecasts_count"] == 0.0
    outdoor, irradiance, occupied = weather(MONDAY_10, p)
    held = 24  # 6 h of 15-min values
    expected = plan_cooling(
        GOOD_FIT.rc,
        23.0,
        outdoor_degc=outdoor[:held] + [outdoor[held - 1]] * (p.steps - held),
        irradiance_wm2=irradiance[:held] + [irradiance[held - 1]] * (p.steps - held),
        occupied=occupied,
        prices_per_kwh=p.tariff.prices_per_kwh(MONDAY_10, p.step, p.steps),
        params=p,
    )
    assert decision.state.plan is not None
    assert decision.state.plan.temperatures_degc == pytest.approx(expected.temperatures_degc)


def test_metric_names_carry_a_unit() -> None:
    planned = run(HvacController(params(), fit=GOOD_FIT), MONDAY_10, 23.0)
    fallback = run(HvacController(params(), fit=BAD_FIT), MONDAY_10, 23.0)
    names = set(planned.metrics) | set(fallback.metrics)
    assert {"planned_temperature_degc", "planned_cooling_w", "model_rmse_degc"} <= names
    assert [n for n in names if unit_of(n) is None] == []


def test_is_a_controller() -> None:
    controller: Controller[HvacState] = HvacController(params(zone="hvac_zone_2"))
    assert controller.name == "hvac_zone_2_planner"
    assert HvacController(params(name="south")).name == "south"
    assert controller.priority is Priority.ECONOMICS
    assert controller.initial_state() == HvacState()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("occupied_band", ComfortBand(lower_degc=24.0, upper_degc=24.0), None),
        ("step", timedelta(0), "step must be positive"),
        ("setpoint_max_degc", 15.0, "setpoint_max_degc must be above"),
        ("unknown_field", 1, "Extra inputs are not permitted"),
        ("outdoor_temperature", "weather_io.outdoor_temperature_degc", None),
        ("outdoor_temperature", "no-dot", "DEVICE.POINT"),
    ],
)
def test_params_are_validated(field: str, value: object, message: str | None) -> None:
    if message is None:
        p = params(**{field: value})
        assert getattr(p, field) is not None
        return
    with pytest.raises(ValueError, match=message):
        params(**{field: value})


def test_outdoor_point_parses_from_text() -> None:
    p = params(outdoor_temperature="weather_io.outdoor_temperature_degc")
    assert p.outdoor_temperature == OUTDOOR


# ------------------------------------------------------------------------ closed loop


def test_closed_loop_with_the_simulated_zone_precools_and_keeps_comfort() -> None:
    """The controller steers the simulator's thermostat: the zone is colder at noon than
    under a fixed 24 °C setpoint, the chiller works less in the peak, comfort holds."""
    p = params(horizon=timedelta(hours=12))
    controller = HvacController(p, fit=GOOD_FIT)
    forecasts = forecasts_at(MONDAY_6, hours=40.0)

    def simulate(steer: bool) -> tuple[dict[int, float], float, float]:
        state = ZoneState(temperature_degc=24.0, setpoint_degc=24.0)
        ctl = controller.initial_state()
        temperatures: dict[int, float] = {}
        peak_wh = violation_kh = 0.0
        for k in range(4 * 13):  # 06:00 .. 19:00
            now = MONDAY_6 + k * p.step
            if steer:
                decision = controller.decide(
                    snapshot(now, state.temperature_degc, age_s=0.0), ctl, now, forecasts
                )
                ctl = decision.state
                state = replace(state, setpoint_degc=decision.requests[0].value)
            occupied = is_occupied(now)
            state = step_zone(
                SIM_ZONE,
                state,
                outdoor_degc=CLIMATE.temperature_degc(now),
                irradiance_wm2=SITE.irradiance_wm2(now),
                occupied=occupied,
                dt_s=p.step_s,
            )
            temperatures[k + 1] = state.temperature_degc
            if 12 <= now.hour < 18:
                peak_wh += state.chiller_power_w * p.step_s / 3600.0
            if occupied:
                violation_kh += max(0.0, state.temperature_degc - 24.0) * p.step_s / 3600.0
        return temperatures, peak_wh, violation_kh

    steered, steered_peak_wh, steered_violation = simulate(True)
    fixed, fixed_peak_wh, _ = simulate(False)
    noon = 4 * 6
    assert steered[noon] < fixed[noon] - 1.5
    assert steered_peak_wh < fixed_peak_wh - 2_000.0
    assert steered_violation < 0.5


# ------------------------------------------------------------------------ properties


@settings(max_examples=30, deadline=None)
@given(
    t0=st.floats(15.0, 32.0),
    capacity_w=st.floats(5_000.0, 80_000.0),
    penalty=st.floats(0.0, 50.0),
    prices=st.lists(st.floats(-0.2, 1.0), min_size=4, max_size=4),
    start_hour=st.integers(0, 23),
)
def test_every_plan_obeys_its_model_and_limits(
    t0: float, capacity_w: float, penalty: float, prices: list[float], start_hour: int
) -> None:
    p = params(chiller_capacity_w=capacity_w, comfort_penalty_per_kh=penalty, cop=CopModel())
    start = MONDAY_6.replace(hour=start_hour)
    outdoor, irradiance, occupied = weather(start, p)
    # Four price levels, each over a quarter of the horizon.
    step_prices = [prices[min(3, 4 * k // p.steps)] for k in range(p.steps)]
    plan = plan_cooling(
        TRUE_MODEL,
        t0,
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        occupied=occupied,
        prices_per_kwh=step_prices,
        params=p,
    )
    assert plan.ok
    assert plan.temperatures_degc[0] == t0
    assert all(-1e-6 <= q <= capacity_w + 1e-3 for q in plan.cooling_w)
    for k in range(p.steps):
        expected = TRUE_MODEL.step(
            plan.temperatures_degc[k],
            outdoor_degc=outdoor[k],
            cooling_w=plan.cooling_w[k],
            irradiance_wm2=irradiance[k],
            occupied=float(occupied[k]),
            dt_s=p.step_s,
        )
        assert plan.temperatures_degc[k + 1] == pytest.approx(expected, abs=1e-4)
    hours = p.step_s / 3600.0
    cop = [p.cop.cop(t) for t in outdoor]
    cost = sum(
        price * q / c / 1000.0 * hours
        for price, q, c in zip(step_prices, plan.cooling_w, cop, strict=True)
    )
    assert plan.cost == pytest.approx(cost, rel=1e-9, abs=1e-9)
    assert plan.comfort_violation_kh >= 0.0


# ------------------------------------------------------------------------ demand charge


def demand_term(
    p: HvacParams,
    start: datetime,
    *,
    threshold_w: float = 0.0,
    charge_per_kw: float = 18.0,
    busy_w: float = 100_000.0,
    quiet_w: float = 60_000.0,
) -> DemandTerm:
    """The site's other load: ``busy_w`` 09:00-11:00 (the morning peak), else ``quiet_w``;
    one 15-min block per step, all counting."""
    times = [start + k * p.step for k in range(p.steps)]
    return DemandTerm(
        other_load_w=[busy_w if 9 <= t.hour < 11 else quiet_w for t in times],
        blocks=list(range(p.steps)),
        counts=[True] * p.steps,
        threshold_w=threshold_w,
        charge_per_kw=charge_per_kw,
    )


def plan_with(p: HvacParams, start: datetime, t0: float, demand: DemandTerm | None) -> Plan:
    outdoor, irradiance, occupied = weather(start, p)
    return plan_cooling(
        TRUE_MODEL,
        t0,
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        occupied=occupied,
        prices_per_kwh=p.tariff.prices_per_kwh(start, p.step, p.steps),
        params=p,
        demand=demand,
    )


def block_peak_w(demand: DemandTerm, plan: Plan) -> float:
    return max(
        o + c
        for o, c, n in zip(demand.other_load_w, plan.chiller_power_w, demand.counts, strict=True)
        if n
    )


@pytest.mark.parametrize(
    ("charge_per_kw", "lowers"),
    [(0.0, False), (18.0, True), (5.0, True)],
    ids=["no-charge", "charge", "small-charge"],
)
def test_a_demand_charge_moves_cooling_out_of_the_peak(charge_per_kw: float, lowers: bool) -> None:
    p = params()
    energy_only = plan_with(p, MONDAY_6, 24.0, None)
    demand = demand_term(p, MONDAY_6, charge_per_kw=charge_per_kw)
    plan = plan_with(p, MONDAY_6, 24.0, demand)
    assert plan.ok
    assert plan.comfort_violation_kh == pytest.approx(0.0, abs=1e-6)
    before, after = block_peak_w(demand, energy_only), block_peak_w(demand, plan)
    assert plan.peak_w == pytest.approx(after)
    if lowers:
        # The zone is pre-cooled before the busy hours and floats through them.
        assert after < before - 2_000.0
        busy = [k for k in range(p.steps) if 9 <= (MONDAY_6 + k * p.step).hour < 11]
        assert sum(plan.chiller_power_w[k] for k in busy) < sum(
            energy_only.chiller_power_w[k] for k in busy
        )
        assert plan.demand_charge == pytest.approx(charge_per_kw * after / 1000.0, rel=1e-6)
    else:
        assert after == pytest.approx(before, abs=1.0)
        assert plan.cost == pytest.approx(energy_only.cost, rel=1e-6)


@pytest.mark.parametrize(
    ("threshold_w", "penalised"),
    [
        (200_000.0, False),  # billed far above anything the site can draw: free
        (120_000.0, False),  # above the busy hours plus the whole chiller: free
        (0.0, True),
    ],
)
def test_no_demand_penalty_below_the_billed_peak(threshold_w: float, penalised: bool) -> None:
    p = params()
    energy_only = plan_with(p, MONDAY_6, 24.0, None)
    plan = plan_with(p, MONDAY_6, 24.0, demand_term(p, MONDAY_6, threshold_w=threshold_w))
    assert plan.ok
    if penalised:
        assert plan.demand_charge > 0.0
        assert plan.cooling_w != pytest.approx(energy_only.cooling_w, abs=1.0)
    else:
        assert plan.demand_charge == 0.0
        # The same cheapest plan as without the term (it never binds).
        assert plan.cost == pytest.approx(energy_only.cost, rel=1e-6, abs=1e-6)


def test_uncertain_other_load_keeps_a_margin_below_the_billed_peak() -> None:
    """With the other load's spread, blocks just below the billed peak carry an expected
    charge: the plan keeps the chiller out of them too."""
    p = params(tariff=FLAT)  # no pre-cooling for prices: the chiller holds the zone
    sure = demand_term(p, MONDAY_6, threshold_w=110_000.0)
    unsure = replace(sure, spread_w=[5_000.0] * p.steps, scenarios=5)
    certain, cautious = plan_with(p, MONDAY_6, 24.0, sure), plan_with(p, MONDAY_6, 24.0, unsure)
    assert certain.ok
    assert cautious.ok
    assert certain.demand_charge == 0.0  # the forecast stays below the billed peak ...
    assert block_peak_w(sure, cautious) < block_peak_w(sure, certain) - 500.0  # ... not sure


@pytest.mark.parametrize("ramp_w_per_s", [200.0, 50.0, 20.0])
def test_the_plan_respects_the_chiller_ramp(ramp_w_per_s: float) -> None:
    p = params(chiller_ramp_w_per_s=ramp_w_per_s)
    free = plan_for(params(chiller_ramp_w_per_s=None), MONDAY_6, 24.0)
    plan = plan_for(p, MONDAY_6, 24.0)
    assert plan.ok
    capacity, dt = p.chiller_capacity_w, p.step_s
    ramp_s = capacity / ramp_w_per_s
    bound = capacity * (1 - ramp_s / (2 * dt)) if ramp_s <= dt else ramp_w_per_s * dt / 2
    jumps = [abs(b - a) for a, b in itertools.pairwise(plan.cooling_w)]
    assert max(jumps) <= bound + 1e-3
    # Without the ramp, pre-cooling stops from full capacity at once: the bound binds.
    assert max(abs(b - a) for a, b in itertools.pairwise(free.cooling_w)) > bound


@pytest.mark.parametrize("margin", [0.0, 0.15, 0.4])
def test_the_plan_stays_the_comfort_margin_inside_the_band(margin: float) -> None:
    p = params(comfort_margin_k=margin)
    plan = plan_for(p, MONDAY_6, 24.0)
    _, _, occupied = weather(MONDAY_6, p)
    assert plan.ok
    occupied_temperatures = [
        t for t, occ in zip(plan.temperatures_degc[1:], occupied, strict=True) if occ
    ]
    assert min(occupied_temperatures) >= 21.0 + margin - 1e-6
    assert max(occupied_temperatures) <= 24.0 - margin + 1e-6
    # Pre-cooling still goes down to the plan's edge.
    assert min(occupied_temperatures) == pytest.approx(21.0 + margin, abs=0.05)


def test_demand_term_of_another_length_is_a_programming_error() -> None:
    p = params()
    short = replace(demand_term(p, MONDAY_6), other_load_w=[0.0])
    with pytest.raises(ValueError, match="demand term"):
        plan_with(p, MONDAY_6, 24.0, short)


# ------------------------------------------------------------------------ billed demand


def _ledger_after(samples: list[tuple[float, float]], tariff: Tariff = FLAT) -> DemandLedger:
    """Feed (minutes after MONDAY_6, W) samples."""
    ledger = None
    for minutes, value in samples:
        ledger = track_demand(
            ledger, value, MONDAY_6 + timedelta(minutes=minutes), tariff, max_gap_s=120.0
        )
    assert ledger is not None
    return ledger


@pytest.mark.parametrize(
    ("samples", "billed_w"),
    [
        # A block of 50 kW then one of 80 kW, sampled every minute (trapezoids: the first
        # block's last minute ramps to 80 kW): billed 80 kW once the second is complete.
        ([(m, 50_000.0) for m in range(15)] + [(m, 80_000.0) for m in range(15, 31)], 80_000.0),
        # The second block not complete yet: only the first one counts.
        ([(m, 50_000.0) for m in range(15)] + [(m, 80_000.0) for m in range(15, 25)], 51_000.0),
        # A 5-minute spike of 120 kW in a 60 kW block: the block mean, 80 kW.
        ([(m, 120_000.0 if 5 <= m < 10 else 60_000.0) for m in range(31)], 80_000.0),
        # Export counts as zero import.
        ([(m, -40_000.0) for m in range(31)], 0.0),
        # A gap of 10 minutes: that block is not a measurement and never billed.
        ([(m, 50_000.0) for m in range(16)] + [(27, 200_000.0), (31, 200_000.0)], 50_000.0),
    ],
    ids=["two-blocks", "open-block", "spike", "export", "gap"],
)
def test_tracks_the_billed_peak_from_the_meter(
    samples: list[tuple[float, float]], billed_w: float
) -> None:
    ledger = _ledger_after(samples)
    assert ledger.billed_peak_w == pytest.approx(billed_w, rel=1e-3)


def test_billed_peak_resets_with_the_month_and_skips_off_hours() -> None:
    end_of_june = datetime(2026, 6, 30, 23, 0, tzinfo=UTC)
    ledger = None
    for m in range(61):  # 23:00 .. 00:00 at 90 kW
        ledger = track_demand(
            ledger, 90_000.0, end_of_june + timedelta(minutes=m), FLAT, max_gap_s=120.0
        )
    assert ledger is not None
    assert ledger.month == (2026, 7)
    assert ledger.billed_peak_w == 0.0
    evening_only = FLAT.model_copy(
        update={"demand_hours": (HourWindow(start_hour=12.0, end_hour=18.0),)}
    )
    morning = _ledger_after([(m, 90_000.0) for m in range(31)], evening_only)
    assert morning.billed_peak_w == 0.0


def _demand_forecasts(start: datetime) -> dict[str, Forecast]:
    step = timedelta(minutes=15)
    times = [start + k * step for k in range(120)]
    out = forecasts_at(start)
    out["load_w"] = Forecast(
        start, step, tuple(100_000.0 if 9 <= t.hour < 11 else 60_000.0 for t in times)
    )
    out["pv_w"] = Forecast(start, step, (5_000.0,) * len(times))
    return out


def test_the_controller_plans_against_the_billed_peak_it_tracks() -> None:
    p = params(load_forecast_error=0.0, pv_forecast_error=0.0)
    controller = HvacController(p, fit=GOOD_FIT)
    state = controller.initial_state()
    grid = PointRef("grid_meter", "active_power_w")
    start = MONDAY_6
    decision = None
    for m in range(31):
        now = start + timedelta(minutes=m)
        snap = snapshot(now, 24.0)
        readings = dict(snap.readings)
        readings[grid] = Reading(70_000.0, now)
        decision = controller.decide(Snapshot(now, readings), state, now, _demand_forecasts(start))
        state = decision.state
    assert decision is not None
    assert decision.metrics["billed_peak_w"] == pytest.approx(70_000.0)
    assert "plan_peak_w" in decision.metrics
    assert state.demand is not None
    # An import limit published by the peak shaver lifts the threshold.
    limit = PointRef("peak_shaver", "limit_w")
    limited = HvacController(params(import_limit_point=limit), fit=GOOD_FIT)
    now = start + timedelta(minutes=31)
    readings = dict(snapshot(now, 24.0).readings)
    readings[limit] = Reading(150_000.0, now)
    free = limited.decide(
        Snapshot(now, readings), limited.initial_state(), now, _demand_forecasts(now)
    )
    assert free.state.plan is not None
    assert free.state.plan.demand_charge == 0.0
