"""Stream integrity (``gridpilot.ops.gaps``): live seq/interval tracking, gaps in timestamps."""

from __future__ import annotations

from typing import Any

import pytest

from gridpilot.config import GridPilotConfig
from gridpilot.ops.gaps import (
    SEQ_MODULUS,
    GapKind,
    StreamTracker,
    find_gaps,
    gap_series,
    message_interval_ms,
    missing_samples,
)


def config(**mqtt: Any) -> GridPilotConfig:
    return GridPilotConfig.model_validate(
        {
            "site": {"id": "s"},
            "devices": [
                {
                    "id": "meter",
                    "host": "127.0.0.1",
                    "poll_interval": 2,
                    "points": [
                        {"point": "energy_import_wh", "address": 0, "poll_class": "slow"},
                        {"point": "active_power_w", "address": 2, "poll_class": "fast"},
                        {"point": "voltage_l1_v", "address": 4},
                    ],
                },
                {"id": "sensor", "protocol": "mqtt", "points": [{"point": "t_degc"}], **mqtt},
            ],
        }
    )


def steps(tracker: StreamTracker, seqs: list[int | None], *, every_ms: int = 400) -> list[Any]:
    """Messages of ``meter`` (fast class: 400 ms) with these seqs, evenly spaced."""
    return [tracker.observe("meter", seq, 1_000_000 + i * every_ms) for i, seq in enumerate(seqs)]


@pytest.mark.parametrize(
    ("seqs", "gaps", "missing", "restarts", "out_of_order"),
    [
        ([1, 2, 3, 4], 0, 0, 0, 0),
        ([1, 2, 5, 6], 1, 2, 0, 0),  # 3 and 4 lost
        ([1, 3, 5, 7], 3, 3, 0, 0),
        ([7, 8, 1, 2, 3], 0, 0, 1, 0),  # the publisher restarted at 1
        ([7, 8, 0, 1, 2], 0, 0, 1, 0),  # ... or at 0
        ([7, 8, 0, 2], 1, 1, 1, 0),  # restarted, then lost one
        ([SEQ_MODULUS - 2, SEQ_MODULUS - 1, 0, 1], 0, 0, 0, 0),  # wrapped: nothing lost
        ([SEQ_MODULUS - 2, 1], 1, 2, 0, 0),  # wrapped, 2^32-1 and 0 lost
        ([5, 6, 6, 7], 0, 0, 0, 1),  # a redelivery is not a gap
        ([5, 6, 4, 7], 0, 0, 0, 1),  # nor is an older message arriving late
        ([5, 5_000_000, 5_000_001], 0, 0, 1, 0),  # a counter reset to another base
        ([None, None, None], 0, 0, 0, 0),  # no seq: only the interval is judged
    ],
)
def test_seq_gaps(
    seqs: list[int | None], gaps: int, missing: int, restarts: int, out_of_order: int
) -> None:
    tracker = StreamTracker(config())
    found = steps(tracker, seqs)
    counts = tracker.counts["meter"]
    assert counts.gaps[GapKind.SEQ] == gaps
    assert counts.missing[GapKind.SEQ] == missing
    assert sum(n for step in found for kind, n in step if kind is GapKind.SEQ) == missing
    assert counts.restarts == restarts
    assert counts.out_of_order == out_of_order
    assert counts.gaps[GapKind.INTERVAL] == 0  # evenly spaced at the expected interval


@pytest.mark.parametrize(
    ("spacing_ms", "gaps", "missing"),
    [
        (400, 0, 0),
        (1000, 0, 0),  # 2.5 intervals: the tolerance, not yet a gap
        (1001, 1, 2),  # just beyond: the two ticks between them were missed
        (2000, 1, 4),  # 400 ms ticks: four between two messages 2 s apart
    ],
)
def test_interval_gaps_against_the_fastest_poll_class(
    spacing_ms: int, gaps: int, missing: int
) -> None:
    tracker = StreamTracker(config())
    tracker.observe("meter", 1, 1_000_000)
    found = tracker.observe("meter", 2, 1_000_000 + spacing_ms)
    assert tracker.counts["meter"].gaps[GapKind.INTERVAL] == gaps
    assert found == ([(GapKind.INTERVAL, missing)] if gaps else [])


def test_a_lost_message_counts_once_per_kind_and_older_timestamps_are_not_gaps() -> None:
    tracker = StreamTracker(config())
    tracker.observe("meter", 1, 10_000)
    assert tracker.observe("meter", 9, 13_200) == [(GapKind.SEQ, 7), (GapKind.INTERVAL, 7)]
    assert tracker.observe("meter", 10, 12_000) == []  # a wall-clock step back
    assert tracker.counts["meter"].out_of_order == 1
    assert tracker.observe("meter", 11, 13_600) == []


def test_only_the_site_registry_is_tracked_and_mqtt_without_interval_only_by_seq() -> None:
    tracker = StreamTracker(config())
    for i in range(100):
        tracker.observe(f"intruder{i}", 1, 0)
    assert set(tracker.counts) == set()
    tracker.observe("sensor", 1, 0)
    assert tracker.observe("sensor", 3, 3_600_000) == [(GapKind.SEQ, 1)]
    declared = StreamTracker(config(poll_interval=10))
    declared.observe("sensor", 1, 0)
    assert declared.observe("sensor", 2, 60_000) == [(GapKind.INTERVAL, 5)]


def test_expected_intervals_and_the_judged_series() -> None:
    cfg = config()
    meter, sensor = cfg.devices
    assert message_interval_ms(cfg, meter) == 400  # 2 s / fast_divisor 5
    assert message_interval_ms(cfg, sensor) is None
    declared = config(poll_interval=5)
    assert message_interval_ms(declared, declared.devices[1]) == 5000
    assert gap_series(cfg, meter, ["energy_import_wh", "voltage_l1_v"]) == ("voltage_l1_v", 2000)
    assert gap_series(cfg, meter, ["energy_import_wh", "active_power_w"]) == (
        "active_power_w",
        400,
    )
    assert gap_series(cfg, meter, []) is None
    assert gap_series(cfg, sensor, ["t_c", "rh_pct"]) == ("rh_pct", None)


@pytest.mark.parametrize(
    ("start", "end", "open_end", "missing"),
    [
        (0, 5000, False, 4),  # samples at 0 and 5 s, 1 s apart: 1..4 missing
        (0, 5400, False, 4),  # jitter rounds
        (0, 5000, True, 5),  # still open: 1..5 were due
        (0, 900, False, 0),
    ],
)
def test_missing_samples(start: int, end: int, open_end: bool, missing: int) -> None:
    assert missing_samples(start, end, 1000, open_end=open_end) == missing


def test_find_gaps_boundaries() -> None:
    stamps = [0, 1000, 2000, 4500, 5500, 9000, 10_000]
    summary = find_gaps(
        stamps,
        interval_ms=1000,
        window_start_ms=0,
        now_ms=10_000,
        latency_ms=0,
        data_before_window=False,
    )
    # 2.5 s exactly is tolerated (2000 -> 4500); 3.5 s is a gap (5500 -> 9000).
    assert summary.gaps == ((5500, 9000),)
    assert summary.samples == 7
    assert summary.expected == 10
    assert not summary.ongoing
    later = find_gaps(
        stamps,
        interval_ms=1000,
        window_start_ms=0,
        now_ms=13_500,
        latency_ms=1000,
        data_before_window=False,
    )
    assert later.gaps == ((5500, 9000),)  # 3.5 s since the last sample: 2.5 + latency
    stopped = find_gaps(
        stamps,
        interval_ms=1000,
        window_start_ms=0,
        now_ms=14_000,
        latency_ms=0,
        data_before_window=False,
    )
    assert stopped.gaps[-1] == (10_000, 14_000)
    assert stopped.ongoing
