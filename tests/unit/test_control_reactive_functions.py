"""Constant power factor and watt-var controllers: what they request from the measured
active power, with the IEEE 1547 Category B defaults."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gridpilot.config.models import ControlConfig
from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.constant_pf import ConstantPfController, ConstantPfParams
from gridpilot.control.grid_controls import ControlMode, GridControls
from gridpilot.control.grid_controls import Curve as GridCurve
from gridpilot.control.watt_var import WattVarController, WattVarParams, WattVarState

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
POWER = PointRef("inv", "m701_w")
VARS = PointRef("inv", "m701_var")
VAR_SET = PointRef("inv", "m704_varset_var")
VAR_ENA = PointRef("inv", "m704_varsetena_state")
RATED = 100_000.0
PFWINJ = ("m704_pfwinj_pf", "m704_pfwinj_ext_state", "m704_pfwinjena_state")


# ---------------------------------------------------------------------------- constant PF


def test_sunspec_pf_mode_requests_704_pfwinj_with_its_excitation() -> None:
    for excitation, ext in (("injecting", 0.0), ("absorbing", 1.0)):
        params = ConstantPfParams.model_validate(
            {"device": "inv", "pf": 0.9, "excitation": excitation}
        )
        controller = ConstantPfController(params)
        waiting = controller.decide(Snapshot(T0), controller.initial_state(), T0, {})
        assert waiting.requests == ()  # the gateway does not know the points yet
        assert "waiting for inv.m704_pfwinj_pf" in waiting.events[0]
        polled = {PointRef("inv", point): Reading(0.0, T0) for point in PFWINJ}
        decision = controller.decide(Snapshot(T0, polled), waiting.state, T0, {})
        assert {(r.target.device, r.target.point): r.value for r in decision.requests} == {
            ("inv", "m704_pfwinj_pf"): 0.9,
            ("inv", "m704_pfwinj_ext_state"): ext,
            ("inv", "m704_pfwinjena_state"): 1.0,
        }
        assert {r.priority for r in decision.requests} == {Priority.GRID_OPERATOR}


@pytest.mark.parametrize(
    ("pf", "excitation", "p_w", "q_var"),
    [(1.0, "injecting", 80_000.0, 0.0), (0.9, "injecting", 80_000.0, 38_746.0),
     (0.9, "absorbing", 80_000.0, -38_746.0), (0.95, "absorbing", 50_000.0, -16_434.0),
     (0.9, "absorbing", 0.0, 0.0)],
)  # fmt: skip
def test_setpoint_mode_holds_q_on_p_at_the_power_factor(
    pf: float, excitation: str, p_w: float, q_var: float
) -> None:
    params = ConstantPfParams.model_validate(
        {"mode": "setpoint", "pf": pf, "excitation": excitation, "active_power": str(POWER),
         "var_setpoint": str(VAR_SET), "enable": {str(VAR_ENA): 1}}
    )  # fmt: skip
    controller = ConstantPfController(params)
    decision = controller.decide(
        Snapshot(T0, {POWER: Reading(p_w, T0)}), controller.initial_state(), T0, {}
    )
    requested = {r.target: r.value for r in decision.requests}
    assert requested == {VAR_SET: pytest.approx(q_var, abs=1.0), VAR_ENA: 1.0}
    if p_w:
        # The power factor the setpoint gives is the one configured.
        assert p_w / math.hypot(p_w, requested[VAR_SET]) == pytest.approx(pf, abs=1e-4)


def test_setpoint_mode_stale_power_steers_to_unity_once() -> None:
    params = ConstantPfParams.model_validate(
        {"mode": "setpoint", "pf": 0.9, "active_power": str(POWER), "var_setpoint": str(VAR_SET)}
    )
    controller = ConstantPfController(params)
    assert controller.decide(Snapshot(T0), controller.initial_state(), T0, {}).requests == ()
    later = T0 + timedelta(seconds=60)
    snapshot = Snapshot(later, {POWER: Reading(80_000.0, T0)})
    first = controller.decide(snapshot, controller.initial_state(), later, {})
    again = controller.decide(snapshot, first.state, later, {})
    assert {r.target: r.value for r in first.requests} == {VAR_SET: 0.0}
    assert "steered to 0 var" in first.events[0]
    assert again.events == ()


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"device": "inv", "pf": 0.85}, "outside 0.9..1.0"),
     ({"mode": "setpoint", "pf": 0.95}, "needs active_power"),
     ({"pf": 0.95}, "needs device")],
)  # fmt: skip
def test_constant_pf_settings_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConstantPfParams.model_validate(fields)


# ---------------------------------------------------------------------------- watt-var


def watt_var(**overrides: Any) -> WattVarController:
    fields: dict[str, Any] = {
        "active_power": str(POWER), "rated_w": RATED, "rated_va": RATED,
        "var_setpoint": str(VAR_SET), "enable": {str(VAR_ENA): 1},
    }  # fmt: skip
    return WattVarController(WattVarParams.model_validate(fields | overrides))


def hold(
    controller: WattVarController, p_w: float, seconds: int, state: WattVarState | None = None
) -> list[Decision[WattVarState]]:
    state = state or controller.initial_state()
    out = []
    for k in range(seconds + 1):
        now = T0 + timedelta(seconds=k)
        decision = controller.decide(Snapshot(now, {POWER: Reading(p_w, now)}), state, now, {})
        out.append(decision)
        state = decision.state
    return out


@pytest.mark.parametrize(
    ("p_pu", "q_pu"),
    [(0.0, 0.0), (0.2, 0.0), (0.5, 0.0), (0.75, -0.22), (0.8, -0.264), (1.0, -0.44)],
)
def test_watt_var_settles_on_the_category_b_curve(p_pu: float, q_pu: float) -> None:
    last = hold(watt_var(), p_pu * RATED, 120)[-1]
    assert last.metrics["target_var"] == pytest.approx(q_pu * RATED)
    requested = {r.target: r.value for r in last.requests}
    assert requested == {VAR_SET: pytest.approx(q_pu * RATED, abs=1.0), VAR_ENA: 1.0}
    assert {r.priority for r in last.requests} == {Priority.GRID_OPERATOR}


def test_watt_var_moves_with_its_response_filter_from_the_measured_q() -> None:
    controller = watt_var(reactive_power=str(VARS))
    snapshot = Snapshot(T0, {POWER: Reading(RATED, T0), VARS: Reading(-10_000.0, T0)})
    first = controller.decide(snapshot, controller.initial_state(), T0, {})
    assert first.metrics["setpoint_var"] == -10_000.0  # starts where the inverter is
    decisions = hold(controller, RATED, 10, first.state)
    # 90 % of the way from -10 to -44 kvar in the 10 s response time.
    assert decisions[10].metrics["setpoint_var"] == pytest.approx(-10_000.0 - 0.9 * 34_000.0, abs=2)


def test_watt_var_custom_curve_and_pmin() -> None:
    last = hold(watt_var(p_min_pu=0.3), 0.3 * RATED, 60)[-1]
    assert last.metrics["target_var"] == 0.0
    custom = watt_var(curve=((0.2, 0.1), (1.0, -0.3)))
    assert hold(custom, 0.6 * RATED, 120)[-1].metrics["target_var"] == pytest.approx(-10_000.0)
    with pytest.raises(ValidationError, match="beyond the rated VA"):
        watt_var(curve=((0.2, 0.0), (1.0, -1.2)))


def test_watt_var_curve_written_into_712() -> None:
    controller = watt_var(mode="sunspec_curve", device="inv", var_setpoint=None)
    assert controller.curve_points() == {
        "actpt_count": 3.0, "deptref_state": 3.0, "pri_state": 1.0,
        "pt_1_w_pct": 20.0, "pt_1_var_pct": 0.0, "pt_2_w_pct": 50.0, "pt_2_var_pct": 0.0,
        "pt_3_w_pct": 100.0, "pt_3_var_pct": -44.0,
    }  # fmt: skip
    slot = {f"m712_crv_2_{k}": v for k, v in controller.curve_points().items()}
    snapshot = Snapshot(T0, {PointRef("inv", k): Reading(0.0, T0) for k in slot})
    decision = controller.decide(snapshot, controller.initial_state(), T0, {})
    assert decision.state.step == "write"
    requested = {r.target.point: r.value for r in decision.requests}
    assert requested == slot | {"m712_adptcrvreq_count": 0.0}
    with pytest.raises(ValidationError, match="mode sunspec_curve needs device"):
        watt_var(mode="sunspec_curve")


def utility_controls(curve: GridCurve, valid_for_s: float = 3600.0) -> GridControls:
    mode = ControlMode("opModWattVar", curve, "event", mrid="A1", primacy=1)
    return GridControls(T0, "ieee2030_5", T0 + timedelta(seconds=valid_for_s), {mode.name: mode})


def test_the_utilitys_watt_var_curve_replaces_the_configured_one_while_in_force() -> None:
    controller = watt_var(response_time_s=0.0)
    # A steeper curve: -30 % of VA from 60 % of setMaxW.
    curve = GridCurve(((30.0, 0.0), (60.0, -30.0)), "W_pct_of_setMaxW", "var_pct_of_VA")
    readings = {POWER: Reading(80_000.0, T0)}
    configured = controller.decide(Snapshot(T0, readings), controller.initial_state(), T0, {})
    assert configured.metrics["target_var"] == pytest.approx(-26_400.0)
    utility = controller.decide(
        Snapshot(T0, readings, grid_controls=utility_controls(curve)), configured.state, T0, {}
    )
    assert utility.metrics["target_var"] == pytest.approx(-30_000.0)
    assert "watt-var curve now the utility one: (0.3, +0), (0.6, -0.3) pu" in utility.events
    # Into 712 as well: the curve written is the utility's.
    sunspec = watt_var(mode="sunspec_curve", device="inv", var_setpoint=None)
    points = sunspec.curve_points(sunspec.params.setting(((0.3, 0.0), (0.6, -0.3))))
    assert (points["actpt_count"], points["pt_2_w_pct"], points["pt_2_var_pct"]) == (2, 60, -30)
    # Expired: the configured curve again.
    later = T0 + timedelta(hours=2)
    expired = controller.decide(
        Snapshot(later, {POWER: Reading(80_000.0, later)}, grid_controls=utility_controls(curve)),
        utility.state, later, {},
    )  # fmt: skip
    assert expired.metrics["target_var"] == pytest.approx(-26_400.0)


def test_a_utility_curve_on_other_axes_is_refused_once() -> None:
    controller = watt_var()
    curve = GridCurve(((30.0, 0.0), (60.0, -30.0)), "W_pct_of_setMaxW", "var_pct_of_statVarAvail")
    snapshot = Snapshot(T0, {POWER: Reading(80_000.0, T0)}, grid_controls=utility_controls(curve))
    first = controller.decide(snapshot, controller.initial_state(), T0, {})
    again = controller.decide(snapshot, first.state, T0, {})
    assert any("opModWattVar refused" in e for e in first.events)
    assert not any("refused" in e for e in again.events)
    assert first.metrics["target_var"] == pytest.approx(-26_400.0)


def test_one_reactive_power_mode_per_inverter_in_the_site_file() -> None:
    volt_var = {"voltage": "inv.m701_lnv_v", "nominal_voltage_v": 230.0, "rated_va": RATED,
                "var_setpoint": str(VAR_SET)}  # fmt: skip
    watt_var = {"active_power": str(POWER), "rated_w": RATED, "rated_va": RATED,
                "var_setpoint": str(VAR_SET)}  # fmt: skip
    with pytest.raises(ValidationError, match="volt_var and watt_var both set the reactive"):
        ControlConfig.model_validate({"volt_var": volt_var, "watt_var": watt_var})
    with pytest.raises(ValidationError, match="watt_var and constant_pf both set"):
        ControlConfig.model_validate({"watt_var": watt_var, "constant_pf": {"device": "inv"}})
    # Different inverters: fine.
    other = watt_var | {"var_setpoint": "inv2.m704_varset_var", "active_power": "inv2.m701_w"}
    config = ControlConfig.model_validate({"volt_var": volt_var, "watt_var": other})
    assert config.watt_var is not None
