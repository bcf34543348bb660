"""Fixed-rate poll schedule: no drift, skipped ticks instead of bursts (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.gateway.schedule import FixedRateSchedule


def test_on_time_polls_follow_the_grid() -> None:
    schedule = FixedRateSchedule(interval_s=0.5, start_s=100.0)
    deadlines = []
    for _ in range(5):
        # Each poll takes 0.1 s after its deadline.
        tick = schedule.advance(now_s=schedule.deadline_s + 0.1)
        deadlines.append(tick.deadline_s)
        assert tick.skipped == 0
    assert deadlines == pytest.approx([100.5, 101.0, 101.5, 102.0, 102.5])


def test_no_drift_after_many_ticks() -> None:
    # 0.1 is not exact in binary; adding it 100 000 times would drift.
    schedule = FixedRateSchedule(interval_s=0.1, start_s=0.0)
    for _ in range(100_000):
        schedule.advance(now_s=schedule.deadline_s + 0.05)
    assert schedule.deadline_s == 10_000.0


def test_overrun_skips_missed_ticks_without_burst() -> None:
    schedule = FixedRateSchedule(interval_s=1.0, start_s=0.0)
    # A poll served at 0 took 2.5 s: ticks at 1 and 2 are missed.
    tick = schedule.advance(now_s=2.5)
    assert tick.deadline_s == 3.0
    assert tick.skipped == 2
    # Then back to normal, still on the grid.
    tick = schedule.advance(now_s=3.2)
    assert tick.deadline_s == 4.0
    assert tick.skipped == 0


def test_finishing_exactly_on_next_deadline_is_not_a_skip() -> None:
    schedule = FixedRateSchedule(interval_s=0.1, start_s=0.0)
    tick = schedule.advance(now_s=0.1)
    assert tick.deadline_s == pytest.approx(0.1)
    assert tick.skipped == 0


def test_not_before_keeps_phase_and_is_not_counted() -> None:
    schedule = FixedRateSchedule(interval_s=1.0, start_s=0.5)
    tick = schedule.advance(now_s=0.6, not_before_s=4.2)
    assert tick.deadline_s == 4.5  # on the grid, not 4.2
    assert tick.skipped == 0


def test_not_before_in_the_past_is_ignored() -> None:
    schedule = FixedRateSchedule(interval_s=1.0, start_s=0.0)
    tick = schedule.advance(now_s=0.1, not_before_s=0.5)
    assert tick.deadline_s == 1.0


def test_invalid_interval() -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        FixedRateSchedule(0, 0)


@given(
    interval=st.floats(0.01, 100),
    start=st.floats(0, 1e6),
    work=st.lists(st.floats(0, 500), min_size=1, max_size=50),
)
def test_properties(interval: float, start: float, work: list[float]) -> None:
    """Deadlines stay on the grid, strictly increase, are never in the past when issued,
    and are never more than one interval after the end of the work."""
    schedule = FixedRateSchedule(interval, start)
    previous = schedule.deadline_s
    for duration in work:
        now = previous + duration
        tick = schedule.advance(now_s=now)
        assert tick.deadline_s > previous
        assert tick.deadline_s >= now - 1e-6
        assert tick.deadline_s < max(now, previous) + interval + 1e-6
        steps = round((tick.deadline_s - start) / interval)
        assert tick.deadline_s == pytest.approx(start + steps * interval)
        assert tick.skipped == steps - round((previous - start) / interval) - 1
        previous = tick.deadline_s
