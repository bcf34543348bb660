"""Pure physics of the simulated building: closed forms, invariants, affinity law, 4-20 mA."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.sim.physics import (
    BatteryParams,
    BatteryState,
    FanParams,
    FanState,
    LoopRange,
    MeterParams,
    MeterState,
    OfficeLoadProfile,
    OutdoorClimate,
    PowerFlows,
    PvParams,
    PvState,
    SiteLocation,
    ZoneParams,
    ZoneState,
    chiller_cop,
    clear_sky_ghi_wm2,
    fan_power_w,
    grid_power_w,
    loop_fault,
    pv_output_w,
    rc_step,
    step_battery,
    step_fan,
    step_meter,
    step_pv,
    step_zone,
)

WEDNESDAY_NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
SUNDAY_NOON = datetime(2026, 7, 5, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------ 1R1C zone


@given(
    t0=st.floats(10.0, 35.0),
    outdoor=st.floats(-10.0, 40.0),
    heat=st.floats(-50_000.0, 50_000.0),
    r=st.floats(0.0005, 0.01),
    c=st.floats(1e6, 1e8),
    steps=st.integers(1, 50),
    dt=st.floats(1.0, 900.0),
)
def test_rc_steps_match_the_closed_form(
    *, t0: float, outdoor: float, heat: float, r: float, c: float, steps: int, dt: float
) -> None:
    """Any number of exact steps equals T(t) = T_eq + (T0 - T_eq)·exp(-t/RC), T_eq = To + R·Q."""
    temperature = t0
    for _ in range(steps):
        temperature = rc_step(
            temperature, outdoor, heat, dt, resistance_k_per_w=r, capacitance_j_per_k=c
        )
    equilibrium = outdoor + r * heat
    expected = equilibrium + (t0 - equilibrium) * math.exp(-steps * dt / (r * c))
    assert temperature == pytest.approx(expected, abs=1e-9, rel=1e-9)


def test_rc_step_solves_the_differential_equation() -> None:
    """Cross-check against forward Euler of C·dT/dt = (To - T)/R + Q with a tiny step."""
    r, c, outdoor, heat = 0.002, 18e6, 30.0, 20_000.0
    euler = 22.0
    for _ in range(3600):
        euler += ((outdoor - euler) / r + heat) / c * 1.0
    exact = rc_step(22.0, outdoor, heat, 3600.0, resistance_k_per_w=r, capacitance_j_per_k=c)
    assert exact == pytest.approx(euler, abs=1e-3)
    assert exact > 22.5  # it warmed noticeably in an hour (τ = 10 h, equilibrium 70 °C)


def test_chiller_cop_falls_as_it_gets_hotter_outside() -> None:
    params = ZoneParams()
    cops = [chiller_cop(params, t) for t in (10.0, 20.0, 30.0, 40.0)]
    assert cops == sorted(cops, reverse=True)
    assert cops[0] > cops[-1]
    # Carnot fraction at 30 °C outdoor: 0.45 · 280.15 / (311.15 - 280.15)
    assert chiller_cop(params, 30.0) == pytest.approx(0.45 * 280.15 / 31.0)
    assert params.cop_min <= chiller_cop(params, 60.0) <= params.cop_max


def _run_zone(
    state: ZoneState, *, outdoor: float, irradiance: float, occupied: bool, hours: float
) -> ZoneState:
    for _ in range(int(hours * 3600 / 5)):
        state = step_zone(
            ZoneParams(),
            state,
            outdoor_degc=outdoor,
            irradiance_wm2=irradiance,
            occupied=occupied,
            dt_s=5.0,
        )
    return state


def test_thermostat_pulls_the_zone_to_its_setpoint_and_holds_it() -> None:
    state = _run_zone(
        ZoneState(temperature_degc=26.0, setpoint_degc=22.0),
        outdoor=30.0,
        irradiance=800.0,
        occupied=True,
        hours=2.0,
    )
    assert state.temperature_degc == pytest.approx(22.0, abs=0.01)
    params = ZoneParams()
    gains = params.internal_gain_occupied_w + params.solar_aperture_m2 * 800.0
    # In steady state the chiller removes the gains plus what the envelope lets in.
    assert state.cooling_w == pytest.approx(
        gains + (30.0 - 22.0) / params.resistance_k_per_w, rel=1e-3
    )
    assert state.chiller_power_w == pytest.approx(state.cooling_w / chiller_cop(params, 30.0))


def test_an_undersized_chiller_loses_the_zone() -> None:
    params = ZoneParams(chiller_capacity_w=5_000.0)
    state = ZoneState(temperature_degc=22.0, setpoint_degc=22.0)
    for _ in range(720):
        state = step_zone(
            params, state, outdoor_degc=32.0, irradiance_wm2=900.0, occupied=True, dt_s=5.0
        )
    assert state.cooling_w == pytest.approx(5_000.0)
    assert state.temperature_degc > 23.0


def test_unoccupied_the_chiller_waits_for_the_setback() -> None:
    state = _run_zone(
        ZoneState(temperature_degc=24.0, setpoint_degc=22.0),
        outdoor=20.0,
        irradiance=0.0,
        occupied=False,
        hours=1.0,
    )
    assert state.effective_setpoint_degc == ZoneParams().unoccupied_setpoint_degc
    assert state.cooling_w == 0.0
    assert state.chiller_power_w == 0.0


@given(
    temperature=st.floats(15.0, 35.0),
    setpoint=st.floats(16.0, 30.0),
    outdoor=st.floats(-5.0, 40.0),
    irradiance=st.floats(0.0, 1000.0),
    occupied=st.booleans(),
    dt=st.floats(0.1, 600.0),
)
def test_cooling_stays_within_capacity_and_never_heats(
    *,
    temperature: float,
    setpoint: float,
    outdoor: float,
    irradiance: float,
    occupied: bool,
    dt: float,
) -> None:
    params = ZoneParams()
    state = step_zone(
        params,
        ZoneState(temperature_degc=temperature, setpoint_degc=setpoint),
        outdoor_degc=outdoor,
        irradiance_wm2=irradiance,
        occupied=occupied,
        dt_s=dt,
    )
    assert 0.0 <= state.cooling_w <= params.chiller_capacity_w
    assert state.chiller_power_w >= 0.0


# ------------------------------------------------------------------------------ battery


def test_battery_soc_integrates_discharge_through_the_efficiency() -> None:
    params = BatteryParams()
    state = BatteryState(soc_pct=50.0, setpoint_w=20_000.0)
    for _ in range(3600):
        state = step_battery(params, state, 1.0)
    assert state.active_power_w == pytest.approx(20_000.0)
    # 20 kWh delivered draws 20 / 0.96 kWh from 200 kWh.
    assert state.soc_pct == pytest.approx(50.0 - 20.0 / 0.96 / 200.0 * 100.0)
    assert state.energy_discharged_wh == pytest.approx(20_000.0)
    assert state.energy_charged_wh == 0.0


def test_battery_soc_integrates_charge_through_the_efficiency() -> None:
    params = BatteryParams()
    state = BatteryState(soc_pct=50.0, setpoint_w=-20_000.0)
    for _ in range(60):
        state = step_battery(params, state, 60.0)
    assert state.active_power_w == pytest.approx(-20_000.0)
    assert state.soc_pct == pytest.approx(50.0 + 20.0 * 0.96 / 200.0 * 100.0)
    assert state.energy_charged_wh == pytest.approx(20_000.0)


def test_battery_power_is_clipped_to_its_rating() -> None:
    state = step_battery(BatteryParams(), BatteryState(setpoint_w=80_000.0), 1.0)
    assert state.active_power_w == 50_000.0
    assert state.power_limited
    state = step_battery(BatteryParams(), BatteryState(setpoint_w=-80_000.0), 1.0)
    assert state.active_power_w == -50_000.0


def test_battery_stops_exactly_at_the_bottom_of_the_window() -> None:
    params = BatteryParams()
    state = BatteryState(soc_pct=5.2, setpoint_w=50_000.0)
    state = step_battery(params, state, 600.0)  # wants 8.3 kWh, has 0.4 kWh above 5 %
    assert state.soc_pct == pytest.approx(5.0)
    expected_w = 0.002 * 200_000.0 * 0.96 * 3600.0 / 600.0
    assert state.active_power_w == pytest.approx(expected_w)
    assert state.power_limited
    assert state.at_low_limit(params)
    state = step_battery(params, state, 10.0)
    assert state.active_power_w == 0.0
    assert state.soc_pct == pytest.approx(5.0)


@settings(max_examples=60)
@given(
    start=st.floats(0.0, 100.0),
    commands=st.lists(
        st.tuples(st.floats(-100_000.0, 100_000.0), st.floats(0.01, 3600.0)),
        min_size=1,
        max_size=40,
    ),
)
def test_battery_never_leaves_its_window_and_counters_only_grow(
    start: float, commands: list[tuple[float, float]]
) -> None:
    params = BatteryParams()
    state = BatteryState(soc_pct=start)
    low, high = min(params.soc_min_pct, start), max(params.soc_max_pct, start)
    for setpoint, dt in commands:
        before = state
        state = step_battery(params, replace(state, setpoint_w=setpoint), dt)
        assert low - 1e-9 <= state.soc_pct <= high + 1e-9
        if start >= params.soc_min_pct and start <= params.soc_max_pct:
            assert params.soc_min_pct - 1e-9 <= state.soc_pct <= params.soc_max_pct + 1e-9
        assert -params.max_charge_w <= state.active_power_w <= params.max_discharge_w
        assert state.energy_charged_wh >= before.energy_charged_wh
        assert state.energy_discharged_wh >= before.energy_discharged_wh
        # Stored energy changes by exactly what the AC side moved, through the efficiencies.
        stored_change = (state.soc_pct - before.soc_pct) / 100.0 * params.capacity_wh
        ac_wh = state.active_power_w * dt / 3600.0
        expected = (
            -ac_wh / params.discharge_efficiency if ac_wh > 0 else -ac_wh * params.charge_efficiency
        )
        assert stored_change == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------ fan


def test_fan_at_80_percent_speed_draws_about_51_percent_power() -> None:
    params = FanParams()
    assert fan_power_w(params, 80.0) / params.rated_power_w == pytest.approx(0.512)
    assert fan_power_w(params, 100.0) == params.rated_power_w
    assert fan_power_w(params, 50.0) == pytest.approx(params.rated_power_w / 8)


def test_fan_speed_ramps_and_energy_accumulates() -> None:
    params = FanParams()  # 10 %/s
    state = FanState(speed_pct=0.0, speed_setpoint_pct=80.0)
    state = step_fan(params, state, 4.0)
    assert state.speed_pct == pytest.approx(40.0)
    assert not state.at_speed(params)
    state = step_fan(params, state, 10.0)
    assert state.speed_pct == pytest.approx(80.0)
    assert state.at_speed(params)
    energy = state.energy_wh
    state = step_fan(params, state, 3600.0)
    assert state.energy_wh - energy == pytest.approx(fan_power_w(params, 80.0))
    stopped = step_fan(params, FanState(run_command=False, speed_pct=80.0), 100.0)
    assert stopped.speed_pct == 0.0
    assert not stopped.running


# ------------------------------------------------------------------------------ 4-20 mA


def test_4_20_ma_maps_linearly_onto_the_range() -> None:
    loop = LoopRange(lo=-30.0, hi=70.0)
    assert loop.value(4.0) == -30.0
    assert loop.value(20.0) == 70.0
    assert loop.value(12.0) == pytest.approx(20.0)
    assert loop.current_ma(20.0) == pytest.approx(12.0)
    assert loop.current_ma(-100.0) == 3.8  # saturates low (NE 43)
    assert loop.current_ma(500.0) == 20.5  # saturates high


@given(value=st.floats(-30.0, 70.0))
def test_the_register_scale_inverts_the_transmitter(value: float) -> None:
    loop = LoopRange(lo=-30.0, hi=70.0)
    scale, offset = loop.register_scale(raw_per_ma=1000.0)
    micro_amps = loop.current_ma(value) * 1000.0
    assert micro_amps * scale + offset == pytest.approx(value, abs=1e-9)
    # One µA of resolution is 100 K / 16000 µA.
    assert round(micro_amps) * scale + offset == pytest.approx(value, abs=0.5 * 100.0 / 16000.0)


def test_register_scale_endpoints() -> None:
    scale, offset = LoopRange(lo=0.0, hi=1600.0).register_scale()
    assert 4000 * scale + offset == pytest.approx(0.0)
    assert 20000 * scale + offset == pytest.approx(1600.0)
    assert 0 * scale + offset == pytest.approx(-400.0)  # broken wire reads far below range


def test_namur_fault_levels() -> None:
    assert loop_fault(0.0)
    assert loop_fault(3.6)
    assert not loop_fault(3.8)
    assert not loop_fault(20.5)
    assert loop_fault(21.0)
    lo, hi = LoopRange(lo=-30.0, hi=70.0).valid_range()
    assert lo == pytest.approx(-31.25)
    assert hi == pytest.approx(73.125)


# ------------------------------------------------------------------------------ meter


def test_meter_balance_equation() -> None:
    assert grid_power_w(
        base_w=60_000, chillers_w=15_000, fan_w=7_680, pv_w=80_000, battery_w=0
    ) == (pytest.approx(2_680.0))
    assert grid_power_w(30_000, 0, 0, 80_000, -20_000) == pytest.approx(-30_000.0)
    flows = PowerFlows(base_w=60_000, chillers_w=15_000, fan_w=7_680, pv_w=50_000, battery_w=10_000)
    reading = step_meter(
        MeterParams(), MeterState(), flows, now=WEDNESDAY_NOON, dt_s=1.0, rng=random.Random(1)
    ).reading
    assert reading.active_power_w == pytest.approx(60_000 + 15_000 + 7_680 - 50_000 - 10_000)
    assert sum(reading.active_power_phase_w) == pytest.approx(reading.active_power_w)
    assert reading.apparent_power_va >= abs(reading.active_power_w)
    assert -1.0 <= reading.power_factor <= 1.0
    for voltage, current, power in zip(
        reading.voltage_v, reading.current_a, reading.active_power_phase_w, strict=True
    ):
        assert 225.0 < voltage < 236.0
        assert voltage * current >= abs(power) - 1e-6
    assert 49.9 < reading.frequency_hz < 50.1


@given(
    grids=st.lists(
        st.tuples(st.floats(-200_000.0, 200_000.0), st.floats(0.0, 900.0)), min_size=1, max_size=50
    )
)
def test_meter_energy_counters_only_grow(grids: list[tuple[float, float]]) -> None:
    rng = random.Random(0)
    state = MeterState(energy_import_wh=1000.0, energy_export_wh=500.0)
    now = WEDNESDAY_NOON
    for grid, dt in grids:
        flows = PowerFlows(
            base_w=max(grid, 0.0), chillers_w=0, fan_w=0, pv_w=max(-grid, 0.0), battery_w=0
        )
        new = step_meter(MeterParams(), state, flows, now=now, dt_s=dt, rng=rng)
        assert new.energy_import_wh >= state.energy_import_wh
        assert new.energy_export_wh >= state.energy_export_wh
        moved = (new.energy_import_wh - state.energy_import_wh) - (
            new.energy_export_wh - state.energy_export_wh
        )
        assert moved == pytest.approx(flows.grid_w * dt / 3600.0, abs=1e-6)
        state = new
        now += timedelta(seconds=dt)


# ------------------------------------------------------------------------------ sun, PV, load


def test_clear_sky_irradiance_follows_the_sun() -> None:
    london = SiteLocation()
    noon = london.irradiance_wm2(WEDNESDAY_NOON)
    assert 800.0 < noon < 1000.0  # midsummer clear-sky GHI at 51.5° N
    assert london.irradiance_wm2(WEDNESDAY_NOON.replace(hour=0)) == 0.0
    assert london.irradiance_wm2(WEDNESDAY_NOON.replace(hour=9)) < noon
    winter = clear_sky_ghi_wm2(datetime(2026, 12, 21, 12, tzinfo=UTC), 51.5, 0.0)
    assert 100.0 < winter < noon / 2


def test_pv_output_respects_rating_and_limit() -> None:
    params = PvParams()
    dc, ac, throttled = pv_output_w(params, 1000.0, 25.0, 100.0)
    assert ac <= params.ac_rating_w
    assert not throttled
    assert dc > 0.0
    _, ac, throttled = pv_output_w(params, 1000.0, 25.0, 30.0)
    assert ac == pytest.approx(30_000.0)
    assert throttled
    _, ac, _ = pv_output_w(params, 0.0, 25.0, 100.0)
    assert ac == 0.0
    # Hotter cells make less power.
    assert pv_output_w(params, 600.0, 35.0, 100.0)[1] < pv_output_w(params, 600.0, 5.0, 100.0)[1]


def test_pv_energy_counter_grows_with_ac_power() -> None:
    state = PvState(energy_wh=1_000.0)
    state = step_pv(PvParams(), state, 800.0, 25.0, 3600.0)
    assert state.energy_wh == pytest.approx(1_000.0 + state.ac_power_w)
    night = step_pv(PvParams(), state, 0.0, 15.0, 3600.0)
    assert night.energy_wh == state.energy_wh
    assert night.operating_state == 2  # SunSpec "sleeping"


def test_office_load_profile() -> None:
    profile = OfficeLoadProfile()
    assert profile.power_w(WEDNESDAY_NOON.replace(hour=11)) == pytest.approx(100_000.0)
    assert profile.power_w(WEDNESDAY_NOON.replace(hour=11, minute=30)) == pytest.approx(96_000.0)
    assert profile.power_w(WEDNESDAY_NOON.replace(hour=3)) < 35_000.0
    assert profile.power_w(SUNDAY_NOON) < profile.power_w(WEDNESDAY_NOON) / 2
    # Continuous across midnight into the next day's profile.
    late = profile.power_w(WEDNESDAY_NOON.replace(hour=23, minute=59, second=59))
    assert late == pytest.approx(profile.power_w(WEDNESDAY_NOON.replace(day=2, hour=0)), abs=20.0)


def test_outdoor_temperature_is_a_daily_sinusoid() -> None:
    climate = OutdoorClimate(mean_degc=23.0, amplitude_k=6.0, warmest_hour=15.0)
    assert climate.temperature_degc(WEDNESDAY_NOON.replace(hour=15)) == pytest.approx(29.0)
    assert climate.temperature_degc(WEDNESDAY_NOON.replace(hour=3)) == pytest.approx(17.0)
    assert climate.temperature_degc(WEDNESDAY_NOON.replace(hour=9)) == pytest.approx(23.0)
    assert climate.relative_humidity_pct(WEDNESDAY_NOON.replace(hour=15)) < (
        climate.relative_humidity_pct(WEDNESDAY_NOON.replace(hour=3))
    )
