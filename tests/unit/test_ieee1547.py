"""IEEE 1547-2018 Category B functions: tables at every breakpoint and between them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.control.ieee1547 import (
    CATEGORY_B_VOLT_VAR,
    ConstantPowerFactor,
    Curve,
    CurveError,
    EnterService,
    EnterServicePhase,
    EnterServiceState,
    Excitation,
    FrequencyDroop,
    ResponseFilter,
    VoltVar,
    VoltWatt,
    WattVar,
    constant_pf_var,
    frequency_droop_w,
    limit_active_power_w,
    response_step,
    volt_var_q_pu,
    volt_watt_p_pu,
    watt_var_q_pu,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)

# ---------------------------------------------------------------------------- volt-var

VOLT_VAR_TABLE = [
    # (V pu, Q pu of rated VA): saturation, each breakpoint, between them
    (0.80, 0.44),
    (0.90, 0.44),
    (0.92, 0.44),  # point 1
    (0.95, 0.22),  # halfway down the injecting slope
    (0.965, 0.11),
    (0.98, 0.0),  # point 2
    (0.99, 0.0),  # dead band
    (1.00, 0.0),
    (1.02, 0.0),  # point 3
    (1.05, -0.22),
    (1.07, -0.44 * 5 / 6),
    (1.08, -0.44),  # point 4
    (1.10, -0.44),
    (1.20, -0.44),
]


@pytest.mark.parametrize(("v_pu", "q_pu"), VOLT_VAR_TABLE)
def test_volt_var_category_b_defaults(v_pu: float, q_pu: float) -> None:
    assert volt_var_q_pu(v_pu, VoltVar()) == pytest.approx(q_pu, abs=1e-12)


@pytest.mark.parametrize(
    ("v_ref", "v_pu", "q_pu"),
    [
        # V_ref 1.03 moves every point up by 0.03: (0.95, .44) (1.01, 0) (1.05, 0) (1.11, -.44)
        (1.03, 0.95, 0.44),
        (1.03, 0.98, 0.22),
        (1.03, 1.01, 0.0),
        (1.03, 1.03, 0.0),
        (1.03, 1.05, 0.0),
        (1.03, 1.08, -0.22),
        (1.03, 1.11, -0.44),
        (1.03, 1.20, -0.44),
        # V_ref 0.95 moves them down by 0.05: (0.87, .44) (0.93, 0) (0.97, 0) (1.03, -.44)
        (0.95, 0.80, 0.44),
        (0.95, 0.87, 0.44),
        (0.95, 0.90, 0.22),
        (0.95, 0.93, 0.0),
        (0.95, 0.97, 0.0),
        (0.95, 1.00, -0.22),
        (0.95, 1.03, -0.44),
        (0.95, 1.05, -0.44),
        # V_ref 1.05, the top of its range: (0.97, .44) (1.03, 0) (1.07, 0) (1.13, -.44)
        (1.05, 1.00, 0.22),
        (1.05, 1.05, 0.0),
        (1.05, 1.10, -0.22),
    ],
)
def test_volt_var_v_ref_shifts_the_curve(v_ref: float, v_pu: float, q_pu: float) -> None:
    setting = VoltVar(v_ref_pu=v_ref)
    assert volt_var_q_pu(v_pu, setting) == pytest.approx(q_pu, abs=1e-12)
    assert setting.effective_curve().value(v_pu) == pytest.approx(q_pu, abs=1e-12)


@pytest.mark.parametrize("v_ref", [0.94, 1.06, 0.0])
def test_volt_var_v_ref_outside_its_range_is_refused(v_ref: float) -> None:
    with pytest.raises(CurveError, match=r"V_ref .* outside the adjustable 0.95..1.05"):
        VoltVar(v_ref_pu=v_ref)


def test_volt_var_q_beyond_the_rating_is_refused() -> None:
    with pytest.raises(CurveError, match=r"point 1: Q 1.2 pu is beyond the rated VA"):
        VoltVar(Curve(((0.9, 1.2), (1.1, -0.44))))


def test_volt_var_response_time_range() -> None:
    assert VoltVar().response_time_s == 5.0
    with pytest.raises(CurveError, match=r"open-loop response time 91 s"):
        VoltVar(response_time_s=91.0)


# ---------------------------------------------------------------------------- curves


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (((1.0, 0.0),), "2 to 10 points, this one 1"),
        ((), "2 to 10 points, this one 0"),
        (tuple((0.9 + i * 0.01, 0.0) for i in range(11)), "2 to 10 points, this one 11"),
        (((0.98, 0.0), (0.92, 0.44)), r"x must not decrease: point 2 \(x=0.92\) is below point 1"),
        (
            ((0.92, 0.44), (0.98, 0.0), (0.97, 0.0), (1.08, -0.44)),
            r"point 3 \(x=0.97\) is below point 2 \(x=0.98\)",
        ),
        (((0.92, 0.44), (0.92, 0.0)), "points 1 and 2 share x=0.92 with different y"),
        (((0.92, math.nan), (1.0, 0.0)), r"point 1 \(0.92, nan\) is not a pair of finite"),
        (((0.92, 0.0), (math.inf, 0.0)), "point 2"),
    ],
)
def test_curve_validation_says_what_is_wrong(
    points: tuple[tuple[float, float], ...], message: str
) -> None:
    with pytest.raises(CurveError, match=message):
        Curve(points)


def test_curve_with_ten_points_and_a_repeated_point_is_accepted() -> None:
    ten = Curve(tuple((0.9 + i * 0.02, 0.44 - i * 0.088) for i in range(10)))
    assert len(ten.points) == 10
    assert ten.value(0.91) == pytest.approx(0.396)
    # V2 = V3 (no dead band) is a legal volt-var shape; the shared point has one value.
    sharp = Curve(((0.92, 0.44), (1.0, 0.0), (1.0, 0.0), (1.08, -0.44)))
    assert sharp.value(1.0) == 0.0
    assert sharp.value(0.96) == pytest.approx(0.22)
    assert sharp.value(1.04) == pytest.approx(-0.22)


@given(
    x=st.floats(min_value=0.5, max_value=1.5, allow_nan=False),
    v_ref=st.floats(min_value=0.95, max_value=1.05),
)
def test_volt_var_stays_within_the_category_b_capability(x: float, v_ref: float) -> None:
    q = volt_var_q_pu(x, VoltVar(v_ref_pu=v_ref))
    assert -0.44 <= q <= 0.44
    # Monotone: a higher voltage never asks for more injection.
    assert volt_var_q_pu(x + 0.001, VoltVar(v_ref_pu=v_ref)) <= q + 1e-12


# ---------------------------------------------------------------------------- constant PF

TAN_090 = math.tan(math.acos(0.90))  # 0.4843


@pytest.mark.parametrize(
    ("pf", "excitation", "p_w", "q_var"),
    [
        (1.0, Excitation.INJECTING, 50_000.0, 0.0),
        (1.0, Excitation.ABSORBING, 50_000.0, 0.0),
        (0.90, Excitation.INJECTING, 100_000.0, 100_000.0 * TAN_090),
        (0.90, Excitation.ABSORBING, 100_000.0, -100_000.0 * TAN_090),
        (0.95, Excitation.INJECTING, 40_000.0, 40_000.0 * math.tan(math.acos(0.95))),
        (0.95, Excitation.ABSORBING, 40_000.0, -40_000.0 * math.tan(math.acos(0.95))),
        (0.90, Excitation.ABSORBING, 0.0, 0.0),
        # A battery charging (P < 0) keeps the excitation it was told.
        (0.90, Excitation.ABSORBING, -20_000.0, -20_000.0 * TAN_090),
    ],
)
def test_constant_power_factor(pf: float, excitation: Excitation, p_w: float, q_var: float) -> None:
    setting = ConstantPowerFactor(pf, excitation)
    q = constant_pf_var(p_w, setting)
    assert q == pytest.approx(q_var, abs=1e-6)
    if p_w:
        assert abs(p_w) / math.hypot(p_w, q) == pytest.approx(pf)


def test_constant_power_factor_default_and_range() -> None:
    assert ConstantPowerFactor().pf == 1.0
    assert constant_pf_var(80_000.0, ConstantPowerFactor()) == 0.0
    with pytest.raises(CurveError, match=r"power factor 0.89 is outside 0.9..1.0 \(absorbing\)"):
        ConstantPowerFactor(0.89, Excitation.ABSORBING)
    with pytest.raises(CurveError, match=r"power factor 1.01"):
        ConstantPowerFactor(1.01)


# ---------------------------------------------------------------------------- watt-var


@pytest.mark.parametrize(
    ("p_min_pu", "p_pu", "q_pu"),
    [
        (0.0, 0.0, 0.0),
        (0.0, 0.2, 0.0),  # P1 = max(0.2, 0)
        (0.0, 0.35, 0.0),
        (0.0, 0.5, 0.0),  # P2
        (0.0, 0.75, -0.22),
        (0.0, 0.9, -0.44 * 0.8),
        (0.0, 1.0, -0.44),  # P3
        (0.0, 1.2, -0.44),
        (0.3, 0.3, 0.0),  # P1 = Pmin/Prated when above 0.2
        (0.3, 0.5, 0.0),
        (0.3, 0.75, -0.22),
    ],
)
def test_watt_var_category_b(p_min_pu: float, p_pu: float, q_pu: float) -> None:
    setting = WattVar.category_b(p_min_pu)
    assert setting.curve.points[0][0] == max(0.2, p_min_pu)
    assert watt_var_q_pu(p_pu, setting) == pytest.approx(q_pu, abs=1e-12)


def test_watt_var_with_pmin_at_half_the_rating_is_refused() -> None:
    with pytest.raises(CurveError, match=r"Pmin/Prated 0.5 must be in 0..0.5"):
        WattVar.category_b(0.5)


# ---------------------------------------------------------------------------- volt-watt


@pytest.mark.parametrize(
    ("p_min_pu", "storage", "v_pu", "p_pu"),
    [
        (0.0, False, 1.00, 1.0),
        (0.0, False, 1.06, 1.0),  # point 1
        (0.0, False, 1.07, 0.75),
        (0.0, False, 1.08, 0.5),
        (0.0, False, 1.10, 0.0),  # point 2 = min(0.2, 0)
        (0.0, False, 1.15, 0.0),
        (0.3, False, 1.08, 0.6),  # P2 = min(0.2, 0.3) = 0.2
        (0.3, False, 1.10, 0.2),
        (0.1, False, 1.10, 0.1),  # P2 = Pmin/Prated when below 0.2
        (0.1, False, 1.08, 0.55),
        (0.3, True, 1.10, 0.0),  # storage that can absorb goes to 0
        (0.3, True, 1.08, 0.5),
        (0.3, True, 1.05, 1.0),
    ],
)
def test_volt_watt_category_b(p_min_pu: float, storage: bool, v_pu: float, p_pu: float) -> None:
    setting = VoltWatt.category_b(p_min_pu, storage_can_absorb=storage)
    assert setting.response_time_s == 10.0
    assert volt_watt_p_pu(v_pu, setting) == pytest.approx(p_pu, abs=1e-12)


# ---------------------------------------------------------------------------- frequency droop

RATED = 100_000.0


@pytest.mark.parametrize(
    ("f_hz", "p_pre", "p_avail", "p_min", "expected"),
    [
        (60.0, 50_000.0, 80_000.0, 0.0, 50_000.0),
        (60.036, 50_000.0, 80_000.0, 0.0, 50_000.0),  # edge of the dead band
        (59.964, 50_000.0, 80_000.0, 0.0, 50_000.0),
        # Over-frequency: 1/(60 · 0.05) = 1/3 of the rating per Hz beyond the dead band.
        (60.336, 50_000.0, 80_000.0, 0.0, 40_000.0),
        (61.036, 50_000.0, 80_000.0, 0.0, 50_000.0 - RATED / 3.0),
        (62.0, 50_000.0, 80_000.0, 0.0, 0.0),  # floored at Pmin
        (62.0, 50_000.0, 80_000.0, 10_000.0, 10_000.0),
        (62.0, -10_000.0, 50_000.0, -50_000.0, -50_000.0),  # storage: down to full charge
        # Under-frequency: up by the same slope, as far as the headroom goes.
        (59.664, 50_000.0, 80_000.0, 0.0, 60_000.0),
        (59.364, 50_000.0, 80_000.0, 0.0, 70_000.0),
        (59.0, 50_000.0, 80_000.0, 0.0, 80_000.0),  # limited by what is available
        (59.0, 80_000.0, 80_000.0, 0.0, 80_000.0),  # no headroom: no change
    ],
)
def test_frequency_droop(
    f_hz: float, p_pre: float, p_avail: float, p_min: float, expected: float
) -> None:
    got = frequency_droop_w(f_hz, p_pre_w=p_pre, p_rated_w=RATED, p_avail_w=p_avail, p_min_w=p_min)
    assert got == pytest.approx(expected, abs=1e-6)


def test_frequency_droop_at_50_hz_and_its_settings() -> None:
    droop = FrequencyDroop(nominal_hz=50.0)
    # 1/(50 · 0.05) = 0.4 of the rating per Hz: 0.25 Hz beyond the band -> -10 kW.
    got = frequency_droop_w(
        50.286, p_pre_w=50_000.0, p_rated_w=RATED, p_avail_w=80_000.0, setting=droop
    )
    assert got == pytest.approx(40_000.0)
    with pytest.raises(CurveError, match=r"k_of 0.1 is outside 0.02..0.05"):
        FrequencyDroop(k_of=0.1)
    with pytest.raises(CurveError, match=r"db_uf_hz 0.001 Hz"):
        FrequencyDroop(db_uf_hz=0.001)
    with pytest.raises(CurveError, match=r"neither 50 nor 60"):
        FrequencyDroop(nominal_hz=55.0)


# ---------------------------------------------------------------------------- limit P


@pytest.mark.parametrize(
    ("p_avail", "limit_pct", "expected"),
    [
        (80_000.0, 100.0, 80_000.0),
        (80_000.0, 60.0, 60_000.0),
        (50_000.0, 60.0, 50_000.0),
        (80_000.0, 0.0, 0.0),
        (-1_000.0, 50.0, 0.0),
    ],
)
def test_limit_active_power(p_avail: float, limit_pct: float, expected: float) -> None:
    assert limit_active_power_w(p_avail, limit_pct, RATED) == expected


def test_limit_active_power_outside_0_to_100_is_refused() -> None:
    with pytest.raises(CurveError, match=r"limit 101 % is outside 0..100"):
        limit_active_power_w(1.0, 101.0, RATED)


# ---------------------------------------------------------------------------- enter service


@pytest.mark.parametrize(
    ("v_pu", "f_hz", "inside"),
    [
        (1.0, 60.0, True),
        (0.917, 59.5, True),  # both lower edges
        (1.05, 60.1, True),  # both upper edges
        (0.916, 60.0, False),
        (1.051, 60.0, False),
        (1.0, 59.49, False),
        (1.0, 60.11, False),
    ],
)
def test_enter_service_window(v_pu: float, f_hz: float, inside: bool) -> None:
    assert EnterService().within(v_pu, f_hz) is inside


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_enter_service_delay_then_ramp_then_in_service() -> None:
    setting = EnterService()
    state = EnterServiceState()
    assert state.limit_pu(T0, setting) == 0.0
    # Outside the window: waiting.
    state = state.step(1.07, 60.0, at(0), setting)
    assert state.phase is EnterServicePhase.WAITING
    # In the window from t=10: the 300 s delay starts there.
    state = state.step(1.0, 60.0, at(10), setting)
    assert (state.phase, state.since) == (EnterServicePhase.DELAYING, at(10))
    state = state.step(1.0, 60.0, at(309), setting)
    assert state.phase is EnterServicePhase.DELAYING
    assert state.limit_pu(at(309), setting) == 0.0
    # At 310 s the ramp starts; a step taken late still starts it at 310.
    state = state.step(1.0, 60.0, at(400), setting)
    assert (state.phase, state.since) == (EnterServicePhase.RAMPING, at(310))
    assert state.limit_pu(at(310), setting) == 0.0
    assert state.limit_pu(at(385), setting) == pytest.approx(0.25)
    assert state.limit_pu(at(460), setting) == pytest.approx(0.5)
    # Ramping, an excursion is the trip function's business, not this one's.
    state = state.step(1.07, 60.0, at(500), setting)
    assert state.phase is EnterServicePhase.RAMPING
    state = state.step(1.0, 60.0, at(610), setting)
    assert (state.phase, state.since) == (EnterServicePhase.IN_SERVICE, at(610))
    assert state.limit_pu(at(700), setting) == 1.0
    # A trip starts it all again.
    assert state.tripped() == EnterServiceState()


def test_enter_service_excursion_during_the_delay_restarts_it() -> None:
    setting = EnterService()
    state = EnterServiceState().step(1.0, 60.0, at(0), setting)
    state = state.step(1.0, 60.2, at(200), setting)  # frequency too high
    assert state.phase is EnterServicePhase.WAITING
    state = state.step(1.0, 60.0, at(250), setting)
    state = state.step(1.0, 60.0, at(549), setting)
    assert state.phase is EnterServicePhase.DELAYING
    state = state.step(None, None, at(549.5), setting)  # lost the measurement
    assert state.phase is EnterServicePhase.WAITING


def test_enter_service_without_delay_ramps_at_once() -> None:
    setting = EnterService(delay_s=0.0, ramp_s=100.0)
    state = EnterServiceState().step(1.0, 60.0, at(0), setting)
    assert (state.phase, state.since) == (EnterServicePhase.RAMPING, at(0))
    assert state.limit_pu(at(50), setting) == pytest.approx(0.5)


def test_enter_service_settings_are_checked() -> None:
    with pytest.raises(CurveError, match=r"v_min_pu 1.1 must be below v_max_pu 1.05"):
        EnterService(v_min_pu=1.1)
    with pytest.raises(CurveError, match=r"delay 601 s"):
        EnterService(delay_s=601.0)


# ---------------------------------------------------------------------------- response filter


@pytest.mark.parametrize("response_s", [5.0, 10.0])
def test_response_filter_reaches_90_percent_in_the_response_time(response_s: float) -> None:
    # In one step or in many, the exact exponential lands on the same value.
    assert response_step(0.0, 1.0, response_s, response_s) == pytest.approx(0.9)
    value = 0.0
    for _ in range(100):
        value = response_step(value, 1.0, response_s / 100, response_s)
    assert value == pytest.approx(0.9)
    assert response_step(0.0, 1.0, 2 * response_s, response_s) == pytest.approx(0.99)
    # Never past the target, however long the step.
    assert response_step(0.0, 1.0, 1e6, response_s) == pytest.approx(1.0)
    assert response_step(0.3, -0.44, 0.0, response_s) == 0.3
    assert response_step(0.3, -0.44, 1.0, 0.0) == -0.44


def test_response_filter_carries_its_state() -> None:
    f = ResponseFilter(response_time_s=5.0)
    f = f.update(0.0, T0)  # starts where its first target is
    assert f.value == 0.0
    f = f.update(-0.22, T0 + timedelta(seconds=5))
    assert f.value == pytest.approx(-0.198)
    f = f.update(-0.22, T0 + timedelta(seconds=5))  # same instant: no change
    assert f.value == pytest.approx(-0.198)
    f = f.update(-0.22, T0 + timedelta(seconds=60))
    assert f.value == pytest.approx(-0.22)


def test_category_b_constant() -> None:
    assert CATEGORY_B_VOLT_VAR == ((0.92, 0.44), (0.98, 0.0), (1.02, 0.0), (1.08, -0.44))
