"""Device health state machine, error bookkeeping and reconnect backoff (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.gateway.health import (
    BackoffPolicy,
    DeviceHealth,
    DeviceStatus,
    hint_for,
)

T0 = 1_800_000_000_000  # epoch ms


def make_health(offline_after: int = 2, interval_s: float = 1.0, max_backoff_s: float = 60.0):
    return DeviceHealth(offline_after, BackoffPolicy(interval_s, max_backoff_s), now_ms=T0)


def test_starts_offline_until_first_answer() -> None:
    health = make_health()
    assert health.status is DeviceStatus.OFFLINE
    assert health.since_ms == T0
    assert health.last_error is None
    assert health.poll_succeeded(T0 + 1000) is True
    assert health.status is DeviceStatus.ONLINE
    assert health.since_ms == T0 + 1000


def test_one_failure_keeps_online_second_goes_offline() -> None:
    health = make_health(offline_after=2)
    health.poll_succeeded(T0)
    # First failure: still online, but the new error is a change worth publishing.
    assert health.poll_failed("timeout", "no reply in 1 s", T0 + 1000) is True
    assert health.status is DeviceStatus.ONLINE
    assert health.since_ms == T0
    assert health.poll_failed("timeout", "no reply in 1 s", T0 + 2000) is True
    assert health.status is DeviceStatus.OFFLINE
    assert health.since_ms == T0 + 2000
    # Same error again: counted, not a change.
    assert health.poll_failed("timeout", "no reply in 1 s", T0 + 3000) is False
    assert health.since_ms == T0 + 2000
    assert health.counters.errors["timeout"] == 3
    assert health.counters.polls == 4
    assert health.counters.polls_failed == 3


def test_offline_within_three_intervals_with_default_threshold() -> None:
    # Device answers at t=0, stops right after. Polls at 1, 2 (interval 1 s) fail.
    health = make_health(offline_after=2)
    health.poll_succeeded(T0)
    t = T0
    while health.status is DeviceStatus.ONLINE:
        t += 1000
        health.poll_failed("refused", "connection refused", t)
    assert t - T0 <= 2000


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_threshold_is_respected(threshold: int) -> None:
    health = make_health(offline_after=threshold)
    health.poll_succeeded(T0)
    for i in range(1, threshold):
        health.poll_failed("timeout", "x", T0 + i)
        assert health.status is DeviceStatus.ONLINE
    health.poll_failed("timeout", "x", T0 + threshold)
    assert health.status is DeviceStatus.OFFLINE


def test_success_resets_failure_run_and_keeps_last_error() -> None:
    health = make_health(offline_after=2)
    health.poll_succeeded(T0)
    health.poll_failed("timeout", "a", T0 + 1)
    health.poll_succeeded(T0 + 2)
    health.poll_failed("timeout", "a", T0 + 3)
    assert health.status is DeviceStatus.ONLINE  # the run was broken by the success
    health.poll_failed("timeout", "a", T0 + 4)
    health.poll_failed("timeout", "a", T0 + 5)
    assert health.status is DeviceStatus.OFFLINE
    assert health.poll_succeeded(T0 + 6) is True
    assert health.status is DeviceStatus.ONLINE
    assert health.consecutive_failures == 0
    assert health.last_error is not None
    assert health.last_error.kind == "timeout"
    assert health.last_error.ts_ms == T0 + 5


def test_last_error_has_hint_from_matrix() -> None:
    health = make_health()
    health.poll_failed("refused", "connection refused by 127.0.0.1:5020", T0)
    error = health.last_error
    assert error is not None
    assert error.kind == "refused"
    assert error.message == "connection refused by 127.0.0.1:5020"
    assert "port" in error.hint
    assert error.ts_ms == T0


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("timeout", "doctor"),
        ("refused", "port"),
        ("crc", "baud"),
        ("protocol", "unit_id"),
        ("busy", "fuser"),
        ("exception_2", "max_gap"),
        ("exception_99", "exception 99"),
        ("something_new", "doctor"),
    ],
)
def test_hints(kind: str, needle: str) -> None:
    assert needle in hint_for(kind)


def test_non_poll_error_does_not_change_status() -> None:
    health = make_health(offline_after=1)
    health.poll_succeeded(T0)
    assert health.error("exception_3", "write refused", T0 + 1) is True
    assert health.status is DeviceStatus.ONLINE
    assert health.counters.errors["exception_3"] == 1
    assert health.counters.polls_failed == 0


def test_counters_snapshot() -> None:
    health = make_health()
    health.poll_succeeded(T0)
    health.command_outcome("applied")
    health.command_outcome("rejected")
    health.command_outcome("rejected")
    health.values_dropped(out_of_range=2, invalid=1)
    health.ticks_skipped(3)
    snap = health.snapshot()
    assert snap.status is DeviceStatus.ONLINE
    assert snap.counters == {
        "polls": 1,
        "polls_failed": 0,
        "ticks_skipped": 3,
        "values_out_of_range": 2,
        "values_invalid": 1,
        "errors": {},
        "commands": {"applied": 1, "rejected": 2},
        "attempt_errors": {},
    }


def test_attempt_errors_follow_the_drivers_running_count() -> None:
    health = make_health()
    assert health.attempts_counted({"crc": 2}) == ["crc"]
    assert health.attempts_counted({"crc": 2}) == []
    assert health.attempts_counted({"crc": 3, "timeout": 1}) == ["crc", "timeout"]
    assert health.snapshot().counters["attempt_errors"] == {"crc": 3, "timeout": 1}
    assert health.counters.errors == {}  # a cured attempt failed no poll


def test_no_backoff_while_online_or_below_threshold() -> None:
    health = make_health(offline_after=2)
    assert health.retry_delay_s(T0) is None
    health.poll_succeeded(T0)
    health.poll_failed("timeout", "x", T0 + 1000)
    assert health.retry_delay_s(T0 + 1000) is None


def test_backoff_grows_then_is_capped_early_in_outage() -> None:
    health = make_health(offline_after=2, interval_s=1.0, max_backoff_s=60.0)
    health.poll_succeeded(T0)
    delays = []
    t = T0
    for _ in range(8):
        t += 1000
        health.poll_failed("refused", "x", t)
        delay = health.retry_delay_s(t)
        if delay is not None:
            delays.append(delay)
    # Offline at the 2nd failure: 1, 2, 4 intervals, then the early-outage cap (4 intervals).
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]


def test_backoff_stretches_with_long_outage_up_to_max() -> None:
    policy = BackoffPolicy(interval_s=1.0, max_backoff_s=60.0)
    assert policy.delay_s(attempt=20, outage_s=10) == 4.0
    assert policy.delay_s(attempt=20, outage_s=100) == pytest.approx(10.0)
    assert policy.delay_s(attempt=20, outage_s=3600) == 60.0


def test_backoff_never_faster_than_poll_interval() -> None:
    policy = BackoffPolicy(interval_s=5.0, max_backoff_s=1.0)
    assert policy.delay_s(attempt=1, outage_s=0) == 5.0
    assert policy.delay_s(attempt=10, outage_s=1e6) == 5.0


@given(
    interval=st.floats(0.05, 60),
    max_backoff=st.floats(0.1, 600),
    attempt=st.integers(1, 10_000),
    outage=st.floats(0, 1e7),
)
def test_backoff_bounds(interval: float, max_backoff: float, attempt: int, outage: float) -> None:
    policy = BackoffPolicy(interval, max_backoff)
    delay = policy.delay_s(attempt, outage)
    assert delay >= interval
    # Recovery is noticed within: a few intervals, or a tenth of the outage, or max_backoff.
    assert delay <= max(interval, min(max_backoff, max(4 * interval, 0.1 * outage))) + 1e-9


def test_backoff_offline_outage_measured_from_since() -> None:
    health = make_health(offline_after=1, interval_s=1.0, max_backoff_s=60.0)
    health.poll_succeeded(T0)
    health.poll_failed("refused", "x", T0)
    for i in range(1, 40):
        health.poll_failed("refused", "x", T0 + i)
    # 10 minutes into the outage the probes are a minute apart...
    assert health.retry_delay_s(T0 + 600_000) == 60.0
    # ...and after recovery there is no backoff at all.
    health.poll_succeeded(T0 + 600_001)
    assert health.retry_delay_s(T0 + 600_001) is None


def test_mark_offline() -> None:
    health = make_health()
    health.poll_succeeded(T0)
    assert health.mark_offline(T0 + 5) is True
    assert health.status is DeviceStatus.OFFLINE
    assert health.mark_offline(T0 + 6) is False


def test_invalid_threshold() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DeviceHealth(0, BackoffPolicy(1, 1), now_ms=T0)
