"""The enter-service controller: after a trip the inverter is held at 0 % until the window
has held for the delay, then ramped, then released once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.enter_service import (
    EnterServiceController,
    EnterServiceControlState,
    EnterServiceParams,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
VOLTAGE = PointRef("inv", "m701_lnv_v")
FREQ = PointRef("inv", "m701_hz")
CONN = PointRef("inv", "m701_connst_state")
LIMIT = PointRef("inv", "m704_wmaxlimpct_pct")
ENABLE = PointRef("inv", "m704_wmaxlimpctena_state")
NOMINAL_V = 230.0


def controller(**overrides: Any) -> EnterServiceController:
    fields: dict[str, Any] = {
        "voltage": str(VOLTAGE), "nominal_voltage_v": NOMINAL_V, "frequency": str(FREQ),
        "connected": str(CONN), "pv_limit": str(LIMIT), "enable": {str(ENABLE): 1},
    }  # fmt: skip
    return EnterServiceController(EnterServiceParams.model_validate(fields | overrides))


def run(  # noqa: PLR0917  # a table of cycles reads best positionally
    ctl: EnterServiceController,
    state: EnterServiceControlState,
    start_s: int,
    seconds: int,
    v_pu: float,
    hz: float = 60.0,
    connected: float = 1.0,
) -> list[Decision[EnterServiceControlState]]:
    out = []
    for k in range(start_s, start_s + seconds):
        now = T0 + timedelta(seconds=k)
        readings = {
            VOLTAGE: Reading(v_pu * NOMINAL_V, now),
            FREQ: Reading(hz, now),
            CONN: Reading(connected, now),
        }
        decision = ctl.decide(Snapshot(now, readings), state, now, {})
        out.append(decision)
        state = decision.state
    return out


def limit_of(decision: Decision[EnterServiceControlState]) -> float | None:
    return {r.target: r.value for r in decision.requests}.get(LIMIT)


def test_in_service_nothing_is_sent_even_outside_the_window() -> None:
    ctl = controller()
    decisions = run(ctl, ctl.initial_state(), 0, 30, 1.08)  # high, but no trip
    assert all(d.requests == () and d.constraints == () for d in decisions)
    assert decisions[-1].metrics["phase_state"] == 3.0


def test_after_a_trip_held_at_zero_for_the_delay_then_ramped_then_released() -> None:
    ctl = controller(delay_s=300.0, ramp_s=300.0)
    tripped = run(ctl, ctl.initial_state(), 0, 10, 1.12, connected=0.0)
    assert "says tripped" in tripped[0].events[0]
    assert all(limit_of(d) == 0.0 for d in tripped)
    (constraint,) = tripped[-1].constraints
    assert (constraint.target, constraint.maximum, constraint.priority) == (
        LIMIT, 0.0, Priority.GRID_OPERATOR,
    )  # fmt: skip
    # Back inside the window at t = 10 s; the inverter reconnects by itself at once.
    back = run(ctl, tripped[-1].state, 10, 300, 1.0)
    assert all(limit_of(d) == 0.0 for d in back)  # 10 .. 309 s: the delay
    assert back[0].metrics["phase_state"] == 1.0
    ramp = run(ctl, back[-1].state, 310, 300, 1.0)  # the delay ends at 310 s
    assert ramp[0].metrics["phase_state"] == 2.0
    assert limit_of(ramp[0]) == 0.0
    assert limit_of(ramp[150]) == pytest.approx(50.0)
    assert limit_of(ramp[-1]) == pytest.approx(99.7)
    done = run(ctl, ramp[-1].state, 610, 3, 1.0)
    assert {r.target: r.value for r in done[0].requests} == {LIMIT: 100.0, ENABLE: 1.0}
    assert done[0].constraints == ()
    assert done[1].requests == ()
    assert done[1].metrics["phase_state"] == 3.0


def test_an_excursion_during_the_delay_starts_it_again() -> None:
    ctl = controller(delay_s=60.0, ramp_s=10.0)
    state = run(ctl, ctl.initial_state(), 0, 1, 1.12, connected=0.0)[-1].state
    state = run(ctl, state, 1, 50, 1.0)[-1].state
    # 59.3 Hz: under the 59.5 Hz of the window (not a trip: the inverter stays connected).
    state = run(ctl, state, 51, 1, 1.0, hz=59.3)[-1].state
    after = run(ctl, state, 52, 70, 1.0)
    assert all(limit_of(d) == 0.0 for d in after[:60])  # the delay counted from 52 s
    assert after[60].metrics["phase_state"] == 2.0
    # 1.06 pu is inside the trip limits but outside the enter-service window.
    high = run(ctl, ctl.initial_state(), 0, 1, 1.0, connected=0.0)[-1].state
    stays = run(ctl, high, 1, 120, 1.06)
    assert all(d.metrics["phase_state"] == 0.0 and limit_of(d) == 0.0 for d in stays)


def test_a_trip_during_the_ramp_starts_over() -> None:
    ctl = controller(delay_s=5.0, ramp_s=100.0)
    state = run(ctl, ctl.initial_state(), 0, 1, 0.8, connected=0.0)[-1].state
    ramping = run(ctl, state, 1, 30, 1.0)[-1]
    assert ramping.metrics["phase_state"] == 2.0
    assert limit_of(ramping) > 0.0
    again = run(ctl, ramping.state, 31, 1, 0.8, connected=0.0)[-1]
    assert (again.metrics["phase_state"], limit_of(again)) == (0.0, 0.0)


def test_stale_readings_hold_the_inverter_out_of_service() -> None:
    ctl = controller(delay_s=5.0)
    state = run(ctl, ctl.initial_state(), 0, 1, 0.8, connected=0.0)[-1].state
    later = T0 + timedelta(seconds=60)
    old = {VOLTAGE: Reading(NOMINAL_V, T0), FREQ: Reading(60.0, T0), CONN: Reading(1.0, T0)}
    decision = ctl.decide(Snapshot(later, old), state, later, {})
    assert (decision.metrics["phase_state"], limit_of(decision)) == (0.0, 0.0)


def test_nothing_before_the_first_readings_and_settings_checked() -> None:
    ctl = controller()
    first = ctl.decide(Snapshot(T0), ctl.initial_state(), T0, {})
    assert first.requests == ()
    assert "waiting for a first reading" in first.events[0]
    with pytest.raises(ValidationError, match="delay 700 s is outside"):
        controller(delay_s=700.0)
    with pytest.raises(ValidationError, match=r"v_min_pu 1\.1 must be below"):
        controller(v_min_pu=1.1)
