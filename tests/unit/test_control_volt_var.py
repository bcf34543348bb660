"""The volt-var controller: setpoints from the curve, the 705 sequence, the utility's curve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gridpilot.config import GridPilotConfig
from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.grid_controls import ControlMode, Curve, GridControls
from gridpilot.control.params import controller_params, with_params
from gridpilot.control.volt_var import VoltVarController, VoltVarParams, VoltVarState

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
INV = "inv"
VOLTAGE = PointRef(INV, "m701_lnv_v")
VARSET = PointRef(INV, "m704_varset_var")
ENABLE = PointRef(INV, "m704_varsetena_state")
RATED_VA = 100_000.0
NOMINAL_V = 230.0


def params(**overrides: Any) -> VoltVarParams:
    fields: dict[str, Any] = {
        "voltage": str(VOLTAGE),
        "nominal_voltage_v": NOMINAL_V,
        "rated_va": RATED_VA,
        "var_setpoint": str(VARSET),
        "enable": {str(ENABLE): 1},
    }
    return VoltVarParams.model_validate(fields | overrides)


def snap(
    now: datetime,
    readings: dict[PointRef, float] | None = None,
    *,
    measured_at: datetime | None = None,
    grid_controls: GridControls | None = None,
) -> Snapshot:
    at = measured_at or now
    return Snapshot(
        now,
        {ref: Reading(value, at) for ref, value in (readings or {}).items()},
        grid_controls=grid_controls,
    )


def run(
    controller: VoltVarController,
    steps: list[tuple[float, Snapshot]],
    state: VoltVarState | None = None,
) -> list[Decision[VoltVarState]]:
    decisions = []
    state = state or controller.initial_state()
    for _, snapshot in steps:
        decision = controller.decide(snapshot, state, snapshot.now, {})
        decisions.append(decision)
        state = decision.state
    return decisions


def var_request(decision: Decision[VoltVarState]) -> float:
    (value,) = [r.value for r in decision.requests if r.target == VARSET]
    return value


# ---------------------------------------------------------------------------- setpoint mode


@pytest.mark.parametrize(
    ("v_pu", "q_var"),
    [(0.90, 44_000.0), (0.95, 22_000.0), (1.0, 0.0), (1.03, -7_333.0), (1.05, -22_000.0),
     (1.07, -36_667.0), (1.10, -44_000.0)],
)  # fmt: skip
def test_setpoint_settles_on_the_category_b_curve(v_pu: float, q_var: float) -> None:
    controller = VoltVarController(params())
    # Start at 1.0 pu (0 var), then hold the step for a minute, one cycle a second.
    steps = [(0.0, snap(T0, {VOLTAGE: NOMINAL_V}))]
    steps += [
        (float(k), snap(T0 + timedelta(seconds=k), {VOLTAGE: v_pu * NOMINAL_V}))
        for k in range(1, 61)
    ]
    decisions = run(controller, steps)
    assert var_request(decisions[0]) == 0.0
    assert var_request(decisions[-1]) == pytest.approx(q_var, abs=1.0)
    last = decisions[-1]
    assert last.metrics["target_var"] == pytest.approx(q_var, abs=1.0)
    assert last.metrics["voltage_pct"] == pytest.approx(100 * v_pu)
    # Every request at grid-operator priority, the enable point alongside the setpoint.
    assert {r.priority for r in last.requests} == {Priority.GRID_OPERATOR}
    assert [(r.target, r.value) for r in last.requests if r.target != VARSET] == [(ENABLE, 1.0)]


def test_setpoint_follows_the_response_filter_not_the_step() -> None:
    controller = VoltVarController(params())
    steps = [(0.0, snap(T0, {VOLTAGE: NOMINAL_V}))]
    steps += [(5.0, snap(T0 + timedelta(seconds=5), {VOLTAGE: 1.05 * NOMINAL_V}))]
    steps += [(10.0, snap(T0 + timedelta(seconds=10), {VOLTAGE: 1.05 * NOMINAL_V}))]
    decisions = run(controller, steps)
    # 90 % of the -22 kvar step after the 5 s response time, 99 % after twice that.
    assert var_request(decisions[1]) == pytest.approx(-19_800.0, abs=1.0)
    assert var_request(decisions[2]) == pytest.approx(-21_780.0, abs=1.0)


def test_the_first_setpoint_starts_from_the_measured_reactive_power() -> None:
    measured = PointRef(INV, "m701_var")
    at_105 = {VOLTAGE: 1.05 * NOMINAL_V}
    # Without a measurement the filter starts at 0 var (unity, the inverter's default) ...
    bare = VoltVarController(params())
    first, later = run(bare, [(0, snap(T0, at_105)), (5, snap(T0 + timedelta(seconds=5), at_105))])
    assert (var_request(first), var_request(later)) == (0.0, pytest.approx(-19_800.0, abs=1.0))
    # ... with one, from what the inverter does now (here 10 kvar injected).
    seeded = VoltVarController(params(reactive_power=str(measured)))
    first, later = run(
        seeded,
        [
            (0, snap(T0, at_105 | {measured: 10_000.0})),
            (5, snap(T0 + timedelta(seconds=5), at_105 | {measured: 0.0})),
        ],
    )
    assert var_request(first) == 10_000.0
    assert var_request(later) == pytest.approx(-22_000.0 + 0.1 * 32_000.0, abs=1.0)


def test_v_ref_moves_the_setpoint_curve() -> None:
    controller = VoltVarController(params(v_ref_pu=1.02, response_time_s=0.0))
    # With V_ref 1.02 the dead band is 1.00..1.04: 1.03 pu is inside it, 1.07 halfway down.
    for v_pu, q_var in ((1.03, 0.0), (1.07, -22_000.0), (0.97, 22_000.0)):
        (decision,) = run(controller, [(0.0, snap(T0, {VOLTAGE: v_pu * NOMINAL_V}))])
        assert var_request(decision) == pytest.approx(q_var, abs=1.0), v_pu


def test_stale_voltage_steers_to_unity_power_factor_and_says_so_once() -> None:
    controller = VoltVarController(params(response_time_s=0.0, max_age_s=10.0))
    fresh = snap(T0, {VOLTAGE: 1.05 * NOMINAL_V})
    stale = [
        snap(T0 + timedelta(seconds=s), {VOLTAGE: 1.05 * NOMINAL_V}, measured_at=T0)
        for s in (11, 12)
    ]
    back = snap(T0 + timedelta(seconds=13), {VOLTAGE: 1.05 * NOMINAL_V})
    decisions = run(controller, [(0, fresh), (11, stale[0]), (12, stale[1]), (13, back)])
    assert [var_request(d) for d in decisions] == [-22_000.0, 0.0, 0.0, -22_000.0]
    assert "reactive power steered to 0 var" in decisions[1].events[0]
    assert decisions[2].events == ()
    assert "fresh again" in decisions[3].events[0]


def test_no_request_before_the_first_voltage_reading() -> None:
    controller = VoltVarController(params())
    (decision,) = run(controller, [(0, snap(T0))])
    assert decision.requests == ()
    assert "waiting for a first reading of inv.m701_lnv_v" in decision.events[0]


# ---------------------------------------------------------------------------- utility curve


def grid_controls(points: tuple[tuple[float, float], ...], *, x: str = "V_pu") -> GridControls:
    curve = Curve(points, x, "var_pct_of_VA", open_loop_s=0.0)
    mode = ControlMode("opModVoltVar", curve, "event", mrid="AB12", primacy=1)
    return GridControls(T0, "ieee2030_5", T0 + timedelta(minutes=5), {"opModVoltVar": mode})


def test_the_utility_curve_replaces_the_configured_one_while_in_force() -> None:
    controller = VoltVarController(params(response_time_s=0.0))
    # A steeper utility curve: 30 % absorbed at 1.03 pu.
    utility = grid_controls(((0.97, 30.0), (0.99, 0.0), (1.01, 0.0), (1.03, -30.0)))
    v = {VOLTAGE: 1.03 * NOMINAL_V}
    decisions = run(
        controller,
        [
            (0, snap(T0, v)),
            (1, snap(T0 + timedelta(seconds=1), v, grid_controls=utility)),
            # Past valid_until the message is stale: the configured curve again.
            (2, snap(T0 + timedelta(minutes=6), v, grid_controls=utility)),
        ],
    )
    assert [var_request(d) for d in decisions] == [pytest.approx(-7_333.0, abs=1.0), -30_000.0,
                                                   pytest.approx(-7_333.0, abs=1.0)]  # fmt: skip
    assert "volt-var curve now the utility one" in decisions[1].events[0]
    assert "volt-var curve now the configured one" in decisions[2].events[0]


def test_an_invalid_utility_curve_is_refused_once_and_the_configured_curve_holds() -> None:
    controller = VoltVarController(params(response_time_s=0.0))
    bad = grid_controls(((0.92, 150.0), (1.08, -44.0)))  # 150 % of rated VA
    wrong_axis = grid_controls(((59.0, 10.0), (61.0, -10.0)), x="Hz")
    v = {VOLTAGE: 1.05 * NOMINAL_V}
    decisions = run(
        controller,
        [
            (0, snap(T0, v, grid_controls=bad)),
            (1, snap(T0 + timedelta(seconds=1), v, grid_controls=bad)),
            (2, snap(T0 + timedelta(seconds=2), v, grid_controls=wrong_axis)),
        ],
    )
    assert [var_request(d) for d in decisions] == [-22_000.0] * 3
    assert "utility opModVoltVar refused: point 1: Q 1.5 pu is beyond" in decisions[0].events[0]
    assert decisions[1].events == ()
    assert "refused: Hz/var_pct_of_VA" in decisions[2].events[0]


def test_follow_utility_off_ignores_the_utility_curve() -> None:
    controller = VoltVarController(params(response_time_s=0.0, follow_utility=False))
    utility = grid_controls(((0.97, 30.0), (0.99, 0.0), (1.01, 0.0), (1.03, -30.0)))
    (decision,) = run(
        controller, [(0, snap(T0, {VOLTAGE: 1.03 * NOMINAL_V}, grid_controls=utility))]
    )
    assert var_request(decision) == pytest.approx(-7_333.0, abs=1.0)


# ---------------------------------------------------------------------------- SunSpec 705


def curve_telemetry(index: int, points: tuple[tuple[float, float], ...], *, v_ref: float = 100.0,
                    rsp: float = 5.0) -> dict[PointRef, float]:  # fmt: skip
    values = {
        f"crv_{index}_actpt_count": float(len(points)),
        f"crv_{index}_deptref_state": 3.0,
        f"crv_{index}_pri_state": 1.0,
        f"crv_{index}_vref_pct": v_ref,
        f"crv_{index}_rsptms_s": rsp,
    }
    for k, (v, q) in enumerate(points, start=1):
        values[f"crv_{index}_pt_{k}_v_pct"] = v
        values[f"crv_{index}_pt_{k}_var_pct"] = q
    return {PointRef(INV, f"m705_{name}"): value for name, value in values.items()}


CAT_A = ((90.0, 25.0), (100.0, 0.0), (100.0, 0.0), (110.0, -25.0))
CAT_B = ((92.0, 44.0), (98.0, 0.0), (102.0, 0.0), (108.0, -44.0))


def sunspec_params(**overrides: Any) -> VoltVarParams:
    return params(mode="sunspec_curve", device=INV, var_setpoint=None, enable={}, **overrides)


def test_705_sequence_write_adopt_enable_closed_on_telemetry() -> None:
    controller = VoltVarController(sunspec_params())
    state = controller.initial_state()

    def decide(readings: dict[PointRef, float]) -> Decision[VoltVarState]:
        nonlocal state
        decision = controller.decide(snap(T0, readings), state, T0, {})
        state = decision.state
        return decision

    # Not polled yet: nothing is written (the gateway would not know the points).
    first = decide({VOLTAGE: NOMINAL_V})
    assert first.requests == ()
    assert "waiting for its 705 curve 2" in first.events[0]
    # Factory curves in both slots: write curve 2.
    factory = curve_telemetry(1, CAT_A) | curve_telemetry(2, CAT_A) | {VOLTAGE: NOMINAL_V}
    writing = decide(factory)
    written = {r.target.point: r.value for r in writing.requests}
    assert written == {
        "m705_crv_2_actpt_count": 4.0,
        "m705_crv_2_deptref_state": 3.0,  # VA_MAX_PCT
        "m705_crv_2_pri_state": 1.0,  # REACTIVE
        "m705_crv_2_vref_pct": 100.0,
        "m705_crv_2_rsptms_s": 5.0,
        "m705_crv_2_pt_1_v_pct": 92.0,
        "m705_crv_2_pt_1_var_pct": 44.0,
        "m705_crv_2_pt_2_v_pct": 98.0,
        "m705_crv_2_pt_2_var_pct": 0.0,
        "m705_crv_2_pt_3_v_pct": 102.0,
        "m705_crv_2_pt_3_var_pct": 0.0,
        "m705_crv_2_pt_4_v_pct": 108.0,
        "m705_crv_2_pt_4_var_pct": -44.0,
        "m705_adptcrvreq_count": 0.0,  # no adoption while writing
    }
    assert {r.priority for r in writing.requests} == {Priority.GRID_OPERATOR}
    assert writing.metrics["curve_step_state"] == 0.0
    # The telemetry shows curve 2 written: request its adoption.
    adopting = decide(curve_telemetry(1, CAT_A) | curve_telemetry(2, CAT_B) | {VOLTAGE: NOMINAL_V})
    assert {r.target.point: r.value for r in adopting.requests}["m705_adptcrvreq_count"] == 2.0
    assert "requesting its adoption" in adopting.events[0]
    # Curve 1 reads back as Category B: enable, and write nothing else.
    adopted = curve_telemetry(1, CAT_B) | curve_telemetry(2, CAT_B) | {VOLTAGE: 1.05 * NOMINAL_V}
    enabling = decide(adopted)
    assert [(r.target.point, r.value) for r in enabling.requests] == [("m705_ena_state", 1.0)]
    assert enabling.metrics["target_var"] == pytest.approx(-22_000.0)
    active = decide(adopted | {PointRef(INV, "m705_ena_state"): 1.0})
    assert active.metrics["curve_step_state"] == 3.0
    assert "the inverter follows the curve" in active.events[0]
    # The device lost the curve (a reboot): the sequence starts again by itself.
    lost = decide(factory | {PointRef(INV, "m705_ena_state"): 1.0})
    assert "m705_crv_2_pt_1_v_pct" in {r.target.point for r in lost.requests}


def test_705_refused_adoption_is_reported() -> None:
    controller = VoltVarController(sunspec_params())
    written = curve_telemetry(1, CAT_A) | curve_telemetry(2, CAT_B) | {VOLTAGE: NOMINAL_V}
    failed = written | {PointRef(INV, "m705_adptcrvrslt_state"): 2.0}
    decisions = run(controller, [(0, snap(T0, written)), (1, snap(T0, failed))])
    assert "refused to adopt curve 2 (AdptCrvRslt FAILED)" in decisions[1].events[0]


def test_705_encodes_v_ref_and_a_device_without_enough_points_is_waited_for() -> None:
    controller = VoltVarController(sunspec_params(v_ref_pu=1.02, response_time_s=10.0))
    three_points = curve_telemetry(2, CAT_A[:3]) | {VOLTAGE: NOMINAL_V}
    (decision,) = run(controller, [(0, snap(T0, three_points))])
    assert decision.requests == ()
    assert "missing m705_crv_2_pt_4_v_pct and 1 more" in decision.events[0]
    (decision,) = run(controller, [(0, snap(T0, curve_telemetry(2, CAT_A) | {VOLTAGE: NOMINAL_V}))])
    written = {r.target.point: r.value for r in decision.requests}
    assert (written["m705_crv_2_vref_pct"], written["m705_crv_2_rsptms_s"]) == (102.0, 10.0)


# ---------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"var_setpoint": None}, "mode setpoint needs var_setpoint"),
        ({"mode": "sunspec_curve"}, "mode sunspec_curve needs device"),
        ({"curve": [[1.0, 0.0], [0.9, 0.1]]}, r"curve: x must not decrease: point 2"),
        ({"curve": [[1.0, 0.0]]}, "curve: a curve has 2 to 10 points, this one 1"),
        ({"v_ref_pu": 1.06}, "less than or equal to 1.05"),
        ({"curve_index": 1}, "greater than or equal to 2"),
    ],
)
def test_params_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        params(**overrides)


def test_params_dump_reads_back_and_can_be_changed_at_run_time() -> None:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": "hq"},
            "devices": [{"id": INV, "host": "127.0.0.1", "port": 1502, "sunspec": {}}],
            "control": {"journal": None, "volt_var": params().model_dump(mode="json")},
        }
    )
    dumped = controller_params(config)["volt_var"]
    assert dumped["enable"] == {"inv.m704_varsetena_state": 1.0}
    assert VoltVarParams.model_validate(dumped) == params()
    controller, changed = with_params(config, "volt_var", {"v_ref_pu": 1.02})
    assert isinstance(controller, VoltVarController)
    assert controller.params.v_ref_pu == 1.02
    assert changed.control is not None
    assert changed.control.volt_var is not None
    assert changed.control.volt_var.enable == {ENABLE: 1.0}
