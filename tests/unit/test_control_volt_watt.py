"""The volt-watt controller: the limit from the voltage, filtered, held by a constraint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.grid_controls import ControlMode, Curve, GridControls
from gridpilot.control.volt_watt import VoltWattController, VoltWattParams, VoltWattState

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
VOLTAGE = PointRef("inv", "m701_lnv_v")
LIMIT = PointRef("inv", "m704_wmaxlimpct_pct")
ENABLE = PointRef("inv", "m704_wmaxlimpctena_state")
NOMINAL_V = 230.0


def params(**overrides: Any) -> VoltWattParams:
    fields: dict[str, Any] = {
        "voltage": str(VOLTAGE),
        "nominal_voltage_v": NOMINAL_V,
        "pv_limit": str(LIMIT),
        "enable": {str(ENABLE): 1},
    }
    return VoltWattParams.model_validate(fields | overrides)


def hold(
    controller: VoltWattController,
    v_pu: float,
    seconds: int,
    state: VoltWattState | None = None,
    *,
    limit_pct: float | None = None,
) -> list[Decision[VoltWattState]]:
    """One cycle a second at ``v_pu`` for ``seconds`` (starting at T0), with the limit
    reading ``limit_pct`` (enabled) when given."""
    state = state or controller.initial_state()
    out = []
    for k in range(seconds + 1):
        now = T0 + timedelta(seconds=k)
        readings = {VOLTAGE: Reading(v_pu * NOMINAL_V, now)}
        if limit_pct is not None:
            readings |= {LIMIT: Reading(limit_pct, now), ENABLE: Reading(1.0, now)}
        decision = controller.decide(Snapshot(now, readings), state, now, {})
        out.append(decision)
        state = decision.state
    return out


@pytest.mark.parametrize(
    ("v_pu", "limit_pct"),
    [(1.00, 100.0), (1.06, 100.0), (1.07, 75.0), (1.08, 50.0), (1.09, 25.0), (1.10, 0.0),
     (1.15, 0.0)],
)  # fmt: skip
def test_the_limit_settles_on_the_category_b_curve(v_pu: float, limit_pct: float) -> None:
    decisions = hold(VoltWattController(params()), v_pu, 120)
    last = decisions[-1]
    assert last.metrics["limit_pct"] == pytest.approx(limit_pct, abs=0.05)
    (constraint,) = last.constraints
    assert (constraint.target, constraint.priority) == (LIMIT, Priority.GRID_OPERATOR)
    assert constraint.maximum == pytest.approx(limit_pct, abs=0.05)
    if limit_pct < 100.0:
        requested = {r.target: r.value for r in last.requests}
        assert requested == {LIMIT: pytest.approx(limit_pct, abs=0.05), ENABLE: 1.0}
    else:
        assert last.requests == ()  # nothing to curtail, nothing sent


def test_the_limit_moves_with_the_10_s_response_filter() -> None:
    decisions = hold(VoltWattController(params()), 1.08, 20)
    # 90 % of the way from 100 % to 50 % after 10 s, 99 % after 20 s.
    assert decisions[10].metrics["limit_pct"] == pytest.approx(55.0, abs=0.05)
    assert decisions[20].metrics["limit_pct"] == pytest.approx(50.5, abs=0.05)


def test_release_is_requested_at_100_percent_until_it_reads_back_then_silent() -> None:
    controller = VoltWattController(params(response_time_s=0.0))
    curtailed = hold(controller, 1.08, 1)
    assert "curtailing inv.m704_wmaxlimpct_pct" in curtailed[0].events[0]
    release = {LIMIT: 100.0, ENABLE: 1.0}
    # The limit still reads 50 %: the release may not have reached the inverter.
    unread = hold(controller, 1.0, 3, curtailed[-1].state, limit_pct=50.0)
    assert all({r.target: r.value for r in d.requests} == release for d in unread)
    read = hold(controller, 1.0, 2, unread[-1].state, limit_pct=100.0)
    assert read[0].requests == ()
    assert read[-1].requests == ()
    assert read[-1].constraints[0].maximum == 100.0
    # A limit that never reads back (someone else set it) is left alone after a minute.
    other = hold(controller, 1.0, 70, curtailed[-1].state, limit_pct=50.0)
    assert other[30].requests != ()
    assert other[-1].requests == ()


def test_storage_and_pmin_shape_the_default_curve() -> None:
    storage = VoltWattController(params(storage_can_absorb=True, p_min_pu=0.3, response_time_s=0))
    assert hold(storage, 1.10, 0)[0].metrics["limit_pct"] == 0.0
    pv = VoltWattController(params(p_min_pu=0.3, response_time_s=0))
    assert hold(pv, 1.10, 0)[0].metrics["limit_pct"] == 20.0  # min(0.2, 0.3)


def test_stale_voltage_holds_the_last_limit() -> None:
    controller = VoltWattController(params(response_time_s=0.0, max_age_s=5.0))
    (curtailed,) = hold(controller, 1.08, 0)
    later = T0 + timedelta(seconds=30)
    stale = controller.decide(
        Snapshot(later, {VOLTAGE: Reading(1.0 * NOMINAL_V, T0)}), curtailed.state, later, {}
    )
    assert stale.metrics["limit_pct"] == 50.0
    assert "the last limit holds" in stale.events[0]


def test_the_utility_curve_replaces_the_configured_one() -> None:
    controller = VoltWattController(params(response_time_s=0.0))
    curve = Curve(((1.03, 100.0), (1.07, 40.0)), "V_pu", "W_pct_of_setMaxW", open_loop_s=0.0)
    controls = GridControls(
        T0, "ieee2030_5", T0 + timedelta(minutes=5),
        {"opModVoltWatt": ControlMode("opModVoltWatt", curve, "default")},
    )  # fmt: skip
    decision = controller.decide(
        Snapshot(T0, {VOLTAGE: Reading(1.05 * NOMINAL_V, T0)}, grid_controls=controls),
        controller.initial_state(),
        T0,
        {},
    )
    assert decision.metrics["limit_pct"] == pytest.approx(70.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"curve": [[1.06, 1.0], [1.1, 1.2]]}, "curve: point 2: P 1.2 pu is outside 0..1"),
        ({"curve": [[1.1, 1.0], [1.06, 0.0]]}, "curve: x must not decrease"),
        ({"p_min_pu": 1.5}, "less than or equal to 1"),
    ],
)
def test_params_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        params(**overrides)


def test_706_curve_is_written_adopted_and_enabled() -> None:
    controller = VoltWattController(
        params(mode="sunspec_curve", device="inv", pv_limit=None, enable={}, p_min_pu=0.1)
    )

    def curve(slot: int, points: tuple[tuple[float, float], ...]) -> dict[PointRef, float]:
        values = {"actpt_count": float(len(points)), "deptref_state": 0.0, "rsptms_s": 10.0}
        for k, (v, w) in enumerate(points, start=1):
            values |= {f"pt_{k}_v_pct": v, f"pt_{k}_w_pct": w}
        return {PointRef("inv", f"m706_crv_{slot}_{n}"): x for n, x in values.items()}

    factory = ((106.0, 100.0), (110.0, 20.0))
    wanted = ((106.0, 100.0), (110.0, 10.0))  # min(0.2, Pmin/Prated 0.1)
    voltage = {VOLTAGE: 1.08 * NOMINAL_V}
    state = controller.initial_state()
    steps = [
        curve(1, factory) | curve(2, factory) | voltage,  # write
        curve(1, factory) | curve(2, wanted) | voltage,  # adopt
        curve(1, wanted) | curve(2, wanted) | voltage,  # enable
    ]
    decisions = []
    for readings in steps:
        decision = controller.decide(
            Snapshot(T0, {r: Reading(v, T0) for r, v in readings.items()}), state, T0, {}
        )
        decisions.append(decision)
        state = decision.state
    written = {r.target.point: r.value for r in decisions[0].requests}
    assert written["m706_crv_2_pt_2_w_pct"] == 10.0
    assert written["m706_crv_2_deptref_state"] == 0.0  # W_MAX_PCT
    assert written["m706_adptcrvreq_count"] == 0.0
    assert {r.target.point: r.value for r in decisions[1].requests}["m706_adptcrvreq_count"] == 2
    assert [(r.target.point, r.value) for r in decisions[2].requests] == [("m706_ena_state", 1.0)]
    # No constraint and no setpoint of its own: the inverter runs the curve.
    assert all(d.constraints == () for d in decisions)
    assert decisions[2].metrics["target_pct"] == pytest.approx(55.0)


def test_mode_needs_its_points() -> None:
    with pytest.raises(ValidationError, match="mode setpoint needs pv_limit"):
        params(pv_limit=None)
    with pytest.raises(ValidationError, match="mode sunspec_curve needs device"):
        params(mode="sunspec_curve")
