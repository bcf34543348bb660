"""Zone model identification: recover the simulator's own zone, refuse nonsense data."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.control.thermal import (
    IdentificationParams,
    IdentificationRefused,
    RcModel,
    ThermalFit,
    TwoNodeModel,
    ZoneHistory,
    identify_zone,
)
from gridpilot.sim.physics import (
    OutdoorClimate,
    SiteLocation,
    ZoneParams,
    ZoneState,
    is_occupied,
    rc_step,
    step_zone,
)

MONDAY = datetime(2026, 7, 6, tzinfo=UTC)
SIM_ZONE = ZoneParams()
SUMMER = OutdoorClimate()


def simulated_history(
    zone: ZoneParams = SIM_ZONE,
    *,
    days: float = 4.0,
    step_s: float = 900.0,
    seed: int = 1,
    climate: OutdoorClimate = SUMMER,
) -> ZoneHistory:
    """The simulator's thermostat + chiller + zone, the setpoint moved every 2 h, values
    rounded as the Modbus registers carry them (0.01 °C, 10 W)."""
    rng = random.Random(seed)
    site = SiteLocation()
    state = ZoneState()
    columns: dict[str, list[float]] = {k: [] for k in ("t", "o", "q", "i", "occ")}
    setpoint = 22.0
    hold = max(1, round(7200.0 / step_s))
    for k in range(round(days * 86400.0 / step_s)):
        now = MONDAY + timedelta(seconds=k * step_s)
        if k % hold == 0:
            setpoint = rng.uniform(19.0, 26.0)
        state = replace(state, setpoint_degc=setpoint)
        occupied = is_occupied(now)
        outdoor = climate.temperature_degc(now)
        irradiance = site.irradiance_wm2(now)
        columns["t"].append(round(state.temperature_degc, 2))
        state = step_zone(
            zone,
            state,
            outdoor_degc=outdoor,
            irradiance_wm2=irradiance,
            occupied=occupied,
            dt_s=step_s,
        )
        columns["o"].append(outdoor)
        columns["q"].append(round(state.cooling_w, -1))
        columns["i"].append(irradiance)
        columns["occ"].append(1.0 if occupied else 0.0)
    return ZoneHistory.of(
        step_s,
        temperature_degc=columns["t"],
        outdoor_degc=columns["o"],
        cooling_w=columns["q"],
        irradiance_wm2=columns["i"],
        occupied=columns["occ"],
    )


def fitted(history: ZoneHistory, params: IdentificationParams | None = None) -> ThermalFit:
    fit = identify_zone(history, params)
    assert isinstance(fit, ThermalFit), fit
    return fit


# ------------------------------------------------------------------------ simulator's zone


@pytest.mark.parametrize(
    ("zone", "step_s", "days"),
    [
        (ZoneParams(), 900.0, 4.0),
        (ZoneParams(), 300.0, 3.0),
        (ZoneParams(resistance_k_per_w=0.004, capacitance_j_per_k=40e6), 900.0, 5.0),
        (ZoneParams(resistance_k_per_w=0.001, capacitance_j_per_k=7.2e6), 900.0, 3.0),
        (ZoneParams(internal_gain_occupied_w=25_000.0, solar_aperture_m2=10.0), 600.0, 4.0),
    ],
    ids=["default-15min", "default-5min", "heavy-slow", "light-fast", "high-gains"],
)
def test_identifies_the_simulators_zone(zone: ZoneParams, step_s: float, days: float) -> None:
    fit = fitted(simulated_history(zone, step_s=step_s, days=days))

    rc_true = zone.resistance_k_per_w * zone.capacitance_j_per_k
    assert fit.rc.time_constant_s == pytest.approx(rc_true, rel=0.10)
    assert fit.rc.resistance_k_per_w == pytest.approx(zone.resistance_k_per_w, rel=0.10)
    assert fit.rc.gain_occupied_w == pytest.approx(zone.internal_gain_occupied_w, rel=0.10)
    assert fit.rc.solar_aperture_m2 == pytest.approx(zone.solar_aperture_m2, rel=0.10)
    assert fit.chosen == "1R1C"
    assert fit.good_enough, fit.verdict
    assert fit.one_step_rmse_k < 0.05
    assert fit.multi_step_rmse_k < 0.2
    assert fit.r2 > 0.95


def test_gaps_are_dropped_not_bridged() -> None:
    """NaN rows leave the regression; the transitions across a gap are not used."""
    full = simulated_history(days=5.0)
    temperature = full.temperature_degc.copy()
    cooling = full.cooling_w.copy()
    temperature[100:130] = np.nan  # a 7.5 h outage of the zone controller
    cooling[250:260] = np.nan  # the chiller meter lost
    temperature[300] = np.nan  # one lost sample
    gappy = replace(full, temperature_degc=temperature, cooling_w=cooling)

    fit = fitted(gappy)

    rows = np.isfinite(temperature[:-1]) & np.isfinite(temperature[1:]) & np.isfinite(cooling[:-1])
    assert fit.samples == int(rows.sum())
    assert fit.samples == len(full) - 1 - 31 - 10 - 2
    assert fit.rc.time_constant_s == pytest.approx(10 * 3600.0, rel=0.10)
    assert math.isfinite(fit.multi_step_rmse_k)


def test_constant_occupancy_gives_one_internal_gain() -> None:
    history = simulated_history(days=3.0)
    always = replace(history, occupied=np.ones(len(history)))
    fit = fitted(always)
    assert fit.rc.gain_occupied_w == fit.rc.gain_unoccupied_w
    assert any("occupancy never changes" in note for note in fit.notes)


_RNG = np.random.default_rng(7)
_BASE = simulated_history(days=4.0)


@pytest.mark.parametrize(
    ("temperature", "params", "problem"),
    [
        (
            _BASE.temperature_degc + _RNG.normal(0.0, 1.0, len(_BASE)),
            IdentificationParams(),
            "one-step RMSE",
        ),
        (
            _BASE.temperature_degc,
            IdentificationParams(min_time_constant=timedelta(hours=12)),
            "time constant 10.00 h outside",
        ),
    ],
    ids=["noisy-sensor", "implausibly-fast-for-this-site"],
)
def test_implausible_fits_are_not_good_enough(
    temperature: np.ndarray, params: IdentificationParams, problem: str
) -> None:
    fit = fitted(replace(_BASE, temperature_degc=temperature), params)
    assert not fit.good_enough
    assert problem in fit.verdict


@pytest.mark.parametrize(
    ("threshold", "good"),
    [(0.5, True), (0.001, False)],
    ids=["loose", "tighter-than-the-quantisation"],
)
def test_verdict_follows_the_thresholds(threshold: float, good: bool) -> None:
    params = IdentificationParams(max_one_step_rmse_k=threshold)
    fit = fitted(simulated_history(days=3.0), params)
    assert fit.good_enough is good


# ------------------------------------------------------------------------ 2R2C


def two_node_history(model: TwoNodeModel, *, days: float = 6.0, seed: int = 3) -> ZoneHistory:
    """A zone with envelope mass, cooled by a chiller stepping at random every 2 h."""
    step_s = 900.0
    n = round(days * 86400.0 / step_s)
    rng = random.Random(seed)
    hours = np.arange(n) * step_s / 3600.0
    outdoor = 23.0 + 6.0 * np.cos(2.0 * math.pi * (hours - 15.0) / 24.0)
    irradiance = np.maximum(0.0, 800.0 * np.cos(2.0 * math.pi * (hours - 12.0) / 24.0))
    occupied = (((hours % 24) >= 7) & ((hours % 24) < 19)).astype(float)
    cooling = np.repeat([rng.uniform(0.0, 40_000.0) for _ in range(n // 8 + 1)], 8)[:n]
    interior = model.simulate(
        24.0,
        25.0,
        outdoor_degc=outdoor,
        cooling_w=cooling,
        irradiance_wm2=irradiance,
        occupied=occupied,
        dt_s=step_s,
    )[:n]
    return ZoneHistory.of(
        step_s,
        temperature_degc=np.round(interior, 2),
        outdoor_degc=outdoor,
        cooling_w=cooling,
        irradiance_wm2=irradiance,
        occupied=occupied,
    )


def test_two_node_is_chosen_when_the_envelope_shows() -> None:
    truth = TwoNodeModel(0.001, 0.002, 4e6, 6e7, 3000.0, 15000.0, 20.0)
    fit = fitted(two_node_history(truth))

    assert fit.chosen == "2R2C"
    assert fit.two_node is not None
    assert fit.two_node_quality is not None
    assert fit.two_node.resistance_k_per_w == pytest.approx(truth.resistance_k_per_w, rel=0.05)
    assert fit.two_node.interior_j_per_k == pytest.approx(truth.interior_j_per_k, rel=0.10)
    assert fit.two_node.envelope_j_per_k == pytest.approx(truth.envelope_j_per_k, rel=0.10)
    assert fit.two_node_quality.multi_step_rmse_k < 0.1
    # The planner's 1R1C cannot follow a two-time-constant zone: it must not be trusted.
    assert fit.two_node_quality.bic < fit.rc_quality.bic
    assert not fit.good_enough


def test_two_node_is_not_chosen_for_a_first_order_zone() -> None:
    fit = fitted(simulated_history(days=4.0))
    assert fit.chosen == "1R1C"
    assert fit.two_node is None
    assert any(note.startswith("2R2C not chosen") for note in fit.notes)


def test_two_node_can_be_switched_off() -> None:
    truth = TwoNodeModel(0.001, 0.002, 4e6, 6e7, 3000.0, 15000.0, 20.0)
    fit = fitted(two_node_history(truth), IdentificationParams(try_two_node=False))
    assert fit.chosen == "1R1C"
    assert fit.two_node is None


# ------------------------------------------------------------------------ refusals


def _history(n: int, **overrides: object) -> ZoneHistory:
    base = simulated_history(days=3.0)
    arrays = {
        "temperature_degc": base.temperature_degc[:n],
        "outdoor_degc": base.outdoor_degc[:n],
        "cooling_w": base.cooling_w[:n],
        "irradiance_wm2": base.irradiance_wm2[:n],
        "occupied": base.occupied[:n],
    }
    arrays.update({k: np.asarray(v, dtype=float) for k, v in overrides.items()})
    return ZoneHistory(step_s=900.0, **arrays)


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        (_history(40), "only 39 usable samples"),
        (_history(0), "only 0 usable samples"),
        (_history(288, temperature_degc=np.full(288, 22.5)), "zone temperature is constant"),
        (_history(288, cooling_w=np.zeros(288)), "cooling power never varies"),
        (_history(288, temperature_degc=np.full(288, np.nan)), "only 0 usable samples"),
        (_history(288, outdoor_degc=np.full(288, np.nan)), "only 0 usable samples"),
        (
            _history(288, cooling_w=-simulated_history(days=3.0).cooling_w[:288]),
            "cooling appears to warm the zone",
        ),
        (
            _history(288, temperature_degc=20.0 + 0.5 * 1.02 ** np.arange(288)),
            "outside (0, 1)",
        ),
    ],
    ids=[
        "too-few",
        "empty",
        "constant-temperature",
        "never-cooled",
        "temperature-all-missing",
        "outdoor-all-missing",
        "cooling-sign-inverted",
        "exploding",
    ],
)
def test_refuses_nonsense_with_a_reason(history: ZoneHistory, reason: str) -> None:
    outcome = identify_zone(history)
    assert isinstance(outcome, IdentificationRefused)
    assert reason in outcome.reason


def test_history_arrays_must_agree_in_length() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ZoneHistory.of(
            900.0,
            temperature_degc=[20.0, 21.0],
            outdoor_degc=[20.0],
            cooling_w=[0.0, 0.0],
            irradiance_wm2=[0.0, 0.0],
            occupied=[0.0, 0.0],
        )


# ------------------------------------------------------------------------ models


@pytest.mark.parametrize(
    ("t0", "outdoor", "cooling", "irradiance", "occupied", "dt"),
    [
        (24.0, 30.0, 20_000.0, 600.0, 1.0, 900.0),
        (28.0, 15.0, 0.0, 0.0, 0.0, 300.0),
        (18.0, 35.0, 60_000.0, 900.0, 1.0, 3600.0),
    ],
)
def test_rc_model_step_matches_the_simulator(
    *, t0: float, outdoor: float, cooling: float, irradiance: float, occupied: float, dt: float
) -> None:
    zone = ZoneParams()
    model = RcModel(
        resistance_k_per_w=zone.resistance_k_per_w,
        capacitance_j_per_k=zone.capacitance_j_per_k,
        gain_unoccupied_w=zone.internal_gain_unoccupied_w,
        gain_occupied_w=zone.internal_gain_occupied_w,
        solar_aperture_m2=zone.solar_aperture_m2,
    )
    gains = model.gains_w(occupied, irradiance)
    expected = rc_step(
        t0,
        outdoor,
        gains - cooling,
        dt,
        resistance_k_per_w=zone.resistance_k_per_w,
        capacitance_j_per_k=zone.capacitance_j_per_k,
    )
    got = model.step(
        t0,
        outdoor_degc=outdoor,
        cooling_w=cooling,
        irradiance_wm2=irradiance,
        occupied=occupied,
        dt_s=dt,
    )
    assert got == pytest.approx(expected, abs=1e-12)


def test_two_node_with_a_negligible_envelope_behaves_like_1r1c() -> None:
    """R_ie → 0 and C_e → 0 collapse 2R2C to 1R1C with R = R_ea and C = C_i."""
    two = TwoNodeModel(1e-7, 0.002, 18e6, 1e3, 3000.0, 15000.0, 25.0)
    one = RcModel(0.002, 18e6, 3000.0, 15000.0, 25.0)
    outdoor = [30.0] * 8
    cooling = [10_000.0] * 8
    irr = [500.0] * 8
    occ = [1.0] * 8
    simulated = two.simulate(
        25.0,
        25.0,
        outdoor_degc=outdoor,
        cooling_w=cooling,
        irradiance_wm2=irr,
        occupied=occ,
        dt_s=900.0,
    )
    t = 25.0
    for k in range(8):
        t = one.step(
            t, outdoor_degc=30.0, cooling_w=10_000.0, irradiance_wm2=500.0, occupied=1.0, dt_s=900.0
        )
        assert simulated[k + 1] == pytest.approx(t, abs=0.01)


@settings(max_examples=20, deadline=None)
@given(
    resistance=st.floats(0.0008, 0.005),
    time_constant_h=st.floats(2.0, 40.0),
    occupied_gain_w=st.floats(5_000.0, 30_000.0),
    aperture_m2=st.floats(0.0, 40.0),
    seed=st.integers(0, 1000),
)
def test_recovers_any_plausible_zone(
    resistance: float, time_constant_h: float, occupied_gain_w: float, aperture_m2: float, seed: int
) -> None:
    zone = ZoneParams(
        resistance_k_per_w=resistance,
        capacitance_j_per_k=time_constant_h * 3600.0 / resistance,
        internal_gain_occupied_w=occupied_gain_w,
        solar_aperture_m2=aperture_m2,
    )
    fit = fitted(simulated_history(zone, days=4.0, seed=seed))
    assert fit.rc.time_constant_s == pytest.approx(time_constant_h * 3600.0, rel=0.10)
    assert fit.rc.resistance_k_per_w == pytest.approx(resistance, rel=0.10)
    assert fit.good_enough, fit.verdict
