"""The frequency-droop controller: the limit from the frequency and P_pre, filtered, held by a
constraint, released once back in the dead band."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.freq_droop import FreqDroopController, FreqDroopParams, FreqDroopState
from gridpilot.control.ieee1547 import frequency_droop_w

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
FREQ = PointRef("inv", "m701_hz")
POWER = PointRef("inv", "m701_w")
AVAIL = PointRef("inv", "m122_waval_w")
LIMIT = PointRef("inv", "m704_wmaxlimpct_pct")
ENABLE = PointRef("inv", "m704_wmaxlimpctena_state")
RATED = 100_000.0


def params(**overrides: Any) -> FreqDroopParams:
    fields: dict[str, Any] = {
        "frequency": str(FREQ),
        "active_power": str(POWER),
        "rated_w": RATED,
        "pv_limit": str(LIMIT),
        "enable": {str(ENABLE): 1},
    }
    return FreqDroopParams.model_validate(fields | overrides)


def run(  # noqa: PLR0917  # a table of cycles reads best positionally
    controller: FreqDroopController,
    hz: float,
    seconds: int,
    power_w: float,
    state: FreqDroopState | None = None,
    start: int = 0,
    available_w: float | None = None,
    limit_pct: float | None = None,
) -> list[Decision[FreqDroopState]]:
    """One cycle a second at ``hz`` with the inverter's output ``power_w`` (and its limit
    reading ``limit_pct``, enabled, when given)."""
    state = state or controller.initial_state()
    out = []
    for k in range(start, start + seconds + 1):
        now = T0 + timedelta(seconds=k)
        readings = {FREQ: Reading(hz, now), POWER: Reading(power_w, now)}
        if available_w is not None:
            readings[AVAIL] = Reading(available_w, now)
        if limit_pct is not None:
            readings[LIMIT] = Reading(limit_pct, now)
            readings[ENABLE] = Reading(1.0, now)
        decision = controller.decide(Snapshot(now, readings), state, now, {})
        out.append(decision)
        state = decision.state
    return out


def test_inside_the_dead_band_nothing_is_sent_and_p_pre_follows_the_output() -> None:
    controller = FreqDroopController(params())
    for hz in (60.0, 60.036, 59.964):
        decisions = run(controller, hz, 3, 80_000.0)
        assert all(d.requests == () and d.constraints == () for d in decisions)
        assert decisions[-1].state.p_pre_w == 80_000.0


@pytest.mark.parametrize(
    ("hz", "expected_w"),
    # 5 % droop at 60 Hz: 3 Hz per rating; the band ends at 60.036 Hz.
    [(60.036, 80_000.0), (60.136, 80_000.0 - RATED * 0.1 / 3), (60.5, 80_000.0 - RATED * 0.464 / 3),
     (61.0, 80_000.0 - RATED * 0.964 / 3), (62.5, 0.0)],
)  # fmt: skip
def test_over_frequency_settles_on_the_droop_from_p_pre(hz: float, expected_w: float) -> None:
    controller = FreqDroopController(params())
    state = run(controller, 60.0, 2, 80_000.0)[-1].state
    # The output follows the limit; P_pre stays what it was before the excursion.
    decisions = run(controller, hz, 60, 70_000.0, state, start=3)
    last = decisions[-1]
    assert expected_w == pytest.approx(
        frequency_droop_w(hz, p_pre_w=80_000.0, p_rated_w=RATED, p_avail_w=RATED)
    )
    if hz <= 60.036:
        assert last.requests == ()
        return
    assert last.metrics["p_pre_w"] == 80_000.0
    assert last.metrics["limit_pct"] == pytest.approx(expected_w / 1000.0, abs=0.05)
    (constraint,) = last.constraints
    assert (constraint.target, constraint.priority) == (LIMIT, Priority.GRID_OPERATOR)
    assert constraint.maximum == pytest.approx(expected_w / 1000.0, abs=0.05)
    assert {r.target: r.value for r in last.requests} == {
        LIMIT: pytest.approx(expected_w / 1000.0, abs=0.05),
        ENABLE: 1.0,
    }


def test_the_limit_moves_with_the_response_filter_from_the_output() -> None:
    controller = FreqDroopController(params())
    state = run(controller, 60.0, 1, 80_000.0)[-1].state
    decisions = run(controller, 60.536, 10, 80_000.0, state, start=2)
    # Target 80 - 16.67 = 63.33 kW: the first cycle starts at 80 kW, 90 % of the way in 5 s.
    assert decisions[0].metrics["limit_pct"] == 80.0
    assert "over-frequency 60.536 Hz" in decisions[0].events[0]
    assert decisions[5].metrics["limit_pct"] == pytest.approx(80.0 - 0.9 * 16.667, abs=0.05)


def test_back_in_the_dead_band_the_limit_returns_to_p_pre_then_is_released_once() -> None:
    controller = FreqDroopController(params(response_time_s=2.0))
    state = run(controller, 60.0, 1, 80_000.0)[-1].state
    state = run(controller, 60.5, 20, 64_500.0, state, start=2)[-1].state
    back = run(controller, 60.0, 20, 64_500.0, state, start=23)
    assert back[0].metrics["limit_pct"] < 80.0  # still recovering: the filter rises
    released = [d for d in back if any("released" in e for e in d.events)]
    assert len(released) == 1
    release = {LIMIT: 100.0, ENABLE: 1.0}
    assert {r.target: r.value for r in released[0].requests} == release
    # Until the limit reads 100 % back, the release is asked for again every cycle (the
    # one command may not have reached the inverter), without a constraint.
    unread = back[back.index(released[0]) + 1 :]
    assert unread
    assert all({r.target: r.value for r in d.requests} == release for d in unread)
    assert all(d.constraints == () for d in unread)
    # Read back: silent, and P_pre follows the output again.
    after = run(controller, 60.0, 5, 64_500.0, unread[-1].state, start=44, limit_pct=100.0)
    assert all(d.requests == () and d.constraints == () for d in after)
    assert after[-1].state.p_pre_w == 64_500.0
    assert after[-1].state.release is None


def test_a_release_that_never_reads_back_is_asked_for_a_minute_at_most() -> None:
    # The limit reads 50 %: someone (an operator) set it after the release was lost.
    controller = FreqDroopController(params(response_time_s=0.0))
    state = run(controller, 60.0, 1, 80_000.0, limit_pct=100.0)[-1].state
    state = run(controller, 60.5, 3, 64_500.0, state, start=2)[-1].state
    back = run(controller, 60.0, 70, 80_000.0, state, start=6, limit_pct=50.0)
    asking = [d for d in back if d.requests]
    assert asking
    assert all({r.target: r.value for r in d.requests}[LIMIT] == 100.0 for d in asking)
    assert back[-1].requests == ()
    assert 55 <= len(asking) <= 62
    # The limit it then reads is the one it would give back after the next excursion.
    assert back[-1].state.limit_before_pct == 50.0


def test_under_frequency_at_the_maximum_power_point_has_no_headroom() -> None:
    controller = FreqDroopController(params(available_power=str(AVAIL)))
    state = run(controller, 60.0, 1, 80_000.0, available_w=80_000.0)[-1].state
    last = run(controller, 59.5, 30, 80_000.0, state, start=2, available_w=80_000.0)[-1]
    assert last.metrics["target_w"] == 80_000.0
    assert {r.target: r.value for r in last.requests}[LIMIT] == 100.0


def test_under_frequency_raises_a_held_back_output_as_far_as_the_headroom() -> None:
    # Held at 40 kW by someone's limit with 90 kW available: 0.1 Hz under the band is +3.3 kW.
    controller = FreqDroopController(params(available_power=str(AVAIL)))
    state = run(controller, 60.0, 1, 40_000.0, available_w=90_000.0)[-1].state
    last = run(controller, 59.864, 60, 40_000.0, state, start=2, available_w=90_000.0)[-1]
    assert last.metrics["target_w"] == pytest.approx(40_000.0 + RATED * 0.1 / 3)
    (constraint,) = last.constraints
    assert constraint.minimum == pytest.approx(43.3, abs=0.05)
    assert constraint.maximum == float("inf")
    # Far under: the droop asks for more than there is, so the limit is lifted entirely.
    last = run(controller, 58.0, 60, 40_000.0, last.state, start=63, available_w=90_000.0)[-1]
    assert last.metrics["target_w"] == 90_000.0
    assert {r.target: r.value for r in last.requests}[LIMIT] == 100.0


def test_a_stale_frequency_holds_the_limit_and_says_so_once() -> None:
    controller = FreqDroopController(params(response_time_s=0.0))
    state = run(controller, 60.0, 1, 80_000.0)[-1].state
    curtailed = run(controller, 60.5, 1, 64_500.0, state, start=2)[-1]
    later = T0 + timedelta(seconds=30)
    old = T0 + timedelta(seconds=3)
    snapshot = Snapshot(later, {FREQ: Reading(60.5, old), POWER: Reading(64_500.0, old)})
    first = controller.decide(snapshot, curtailed.state, later, {})
    again = controller.decide(snapshot, first.state, later + timedelta(seconds=1), {})
    assert "the last limit holds" in first.events[0]
    assert again.events == ()
    assert first.constraints[0].maximum == curtailed.constraints[0].maximum


def test_nothing_before_the_first_readings() -> None:
    controller = FreqDroopController(params())
    decision = controller.decide(Snapshot(T0), controller.initial_state(), T0, {})
    assert decision.requests == ()
    assert "waiting for a first reading" in decision.events[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("k_of", 0.1, "k_of 0.1 is outside"), ("db_uf_hz", 0.001, "db_uf_hz"),
     ("nominal_hz", 55.0, "neither 50 nor 60"), ("p_min_w", RATED, "below rated_w")],
)  # fmt: skip
def test_settings_outside_ieee_1547_ranges_are_refused(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        params(**{field: value})


# ---------------------------------------------------------------------------- SunSpec 711

FACTORY = {"dbof_hz": 0.017, "dbuf_hz": 0.017, "kof_count": 0.03, "kuf_count": 0.03,
           "rsptms_s": 5.0, "pmin_pct": 0.0}  # fmt: skip
CATEGORY_B = {"dbof_hz": 0.036, "dbuf_hz": 0.036, "kof_count": 0.05, "kuf_count": 0.05,
              "rsptms_s": 5.0, "pmin_pct": 0.0}  # fmt: skip


def device_snapshot(ctl_1: dict[str, float], ctl_2: dict[str, float], ena: float) -> Snapshot:
    values = {f"m711_ctl_1_{k}": v for k, v in ctl_1.items()}
    values |= {f"m711_ctl_2_{k}": v for k, v in ctl_2.items()}
    values |= {"m711_ena_state": ena, "m711_adptctlrslt_state": 1.0, "m701_hz": 60.0}
    return Snapshot(T0, {PointRef("inv", k): Reading(v, T0) for k, v in values.items()})


def test_711_control_is_written_adopted_and_enabled_step_by_step() -> None:
    controller = FreqDroopController(
        FreqDroopParams.model_validate(
            {"mode": "sunspec_ctl", "device": "inv", "frequency": str(FREQ), "rated_w": RATED}
        )
    )
    assert controller.ctl_points() == CATEGORY_B
    state = controller.initial_state()
    waiting = controller.decide(Snapshot(T0), state, T0, {})
    assert waiting.requests == ()
    assert "waiting for its 711 control 2" in waiting.events[0]

    def requested(decision: Decision[FreqDroopState]) -> dict[str, float]:
        return {r.target.point: r.value for r in decision.requests}

    # The factory control is not Category B (3 % is not 5 %, within the registers' steps).
    write = controller.decide(device_snapshot(FACTORY, FACTORY, 0.0), state, T0, {})
    assert write.state.step == "write"
    assert requested(write) == {f"m711_ctl_2_{k}": v for k, v in CATEGORY_B.items()} | {
        "m711_adptctlreq_count": 0.0
    }
    adopt = controller.decide(device_snapshot(FACTORY, CATEGORY_B, 0.0), write.state, T0, {})
    assert (adopt.state.step, requested(adopt)["m711_adptctlreq_count"]) == ("adopt", 2.0)
    enable = controller.decide(device_snapshot(CATEGORY_B, CATEGORY_B, 0.0), adopt.state, T0, {})
    assert (enable.state.step, requested(enable)) == ("enable", {"m711_ena_state": 1.0})
    active = controller.decide(device_snapshot(CATEGORY_B, CATEGORY_B, 1.0), enable.state, T0, {})
    assert active.state.step == "active"
    assert "frequency droop on inv (SunSpec 711): the inverter follows" in active.events[0]
    assert {r.priority for r in active.requests} == {Priority.GRID_OPERATOR}


def test_mode_needs_its_points() -> None:
    with pytest.raises(ValidationError, match="mode sunspec_ctl needs device"):
        FreqDroopParams.model_validate(
            {"mode": "sunspec_ctl", "frequency": str(FREQ), "rated_w": RATED}
        )
    with pytest.raises(ValidationError, match="mode setpoint needs active_power"):
        FreqDroopParams.model_validate({"frequency": str(FREQ), "rated_w": RATED})


@pytest.mark.parametrize(("enabled", "restored"), [(1.0, 40.0), (0.0, 100.0)])
def test_release_restores_the_limit_in_force_before_the_excursion(
    enabled: float, restored: float
) -> None:
    controller = FreqDroopController(params(response_time_s=0.0, available_power=str(AVAIL)))
    state = controller.initial_state()
    for k, hz in enumerate((60.0, 59.8, 60.0, 60.0)):
        now = T0 + timedelta(seconds=k)
        readings = {
            FREQ: Reading(hz, now), POWER: Reading(40_000.0, now), AVAIL: Reading(90_000.0, now),
            LIMIT: Reading(40.0, now), ENABLE: Reading(enabled, now),
        }  # fmt: skip
        decision = controller.decide(Snapshot(now, readings), state, now, {})
        state = decision.state
        if k == 1:  # under-frequency with headroom: the limit is raised above 40 %
            assert {r.target: r.value for r in decision.requests}[LIMIT] > 45.0
        if k == 2:
            assert {r.target: r.value for r in decision.requests}[LIMIT] == restored
            assert f"back to {restored:g} %" in decision.events[0]
        if k == 3:
            assert decision.requests == ()
