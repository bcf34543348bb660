"""Poll jitter: the bounded histogram a device's health keeps, what its state publishes,
and what /metrics makes of it (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gridpilot.api.metrics import DeviceFigures, JitterFigures, device_metrics
from gridpilot.gateway.health import (
    JITTER_BUCKETS_S,
    BackoffPolicy,
    DeviceHealth,
    JitterHistogram,
    bucket_quantile,
)
from gridpilot.gateway.payloads import device_state_payload

T0 = 1_790_000_000_000


def test_an_empty_histogram_has_no_quantiles() -> None:
    h = JitterHistogram()
    assert h.quantile(0.5) is None
    assert h.as_dict()["p99_s"] is None
    assert h.as_dict()["count"] == 0


def test_quantiles_are_interpolated_inside_their_bucket() -> None:
    h = JitterHistogram()
    # 100 polls: 98 between 1 and 2 ms, one at 40 ms, one at 90 ms.
    for _ in range(98):
        h.observe(0.0015)
    h.observe(0.040)
    h.observe(0.090)
    assert h.count == 100
    assert h.counts[JITTER_BUCKETS_S.index(0.002)] == 98
    # Rank 50 of 98 in (1 ms, 2 ms]: 1 + 50/98 ms.
    assert h.quantile(0.5) == pytest.approx(0.001 + 0.001 * 50 / 98)
    # Rank 99 is the 40 ms poll, in (30 ms, 50 ms]: the whole bucket's upper end.
    assert h.quantile(0.99) == pytest.approx(0.05)
    # Never above the largest jitter seen.
    assert h.quantile(1.0) == pytest.approx(0.090)
    assert h.max_s == pytest.approx(0.090)


def test_early_wake_ups_count_as_on_time_and_huge_ones_as_the_largest_seen() -> None:
    h = JitterHistogram()
    h.observe(-0.0001)
    h.observe(7.5)  # beyond the last bound: the +Inf bucket
    assert h.counts[0] == 1
    assert h.counts[-1] == 1
    assert h.quantile(0.99) == pytest.approx(7.5)
    assert h.sum_s == pytest.approx(7.5)


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    h = JitterHistogram()
    h.observe(0.1)
    assert h.counts[JITTER_BUCKETS_S.index(0.1)] == 1
    assert h.as_dict()["buckets"] == {
        **{f"{le:g}": (1 if le >= 0.1 else 0) for le in JITTER_BUCKETS_S},
        "+Inf": 1,
    }


def test_bucket_quantile_refuses_a_quantile_outside_0_to_1() -> None:
    with pytest.raises(ValueError, match="outside"):
        bucket_quantile(1.5, [1] * (len(JITTER_BUCKETS_S) + 1), 1.0)


def published_state() -> dict[str, Any]:
    health = DeviceHealth(2, BackoffPolicy(1.0, 60.0), T0)
    health.poll_succeeded(T0 + 1000)
    for jitter_s in (0.0005, 0.003, 0.004, 0.2):
        health.jitter.observe(jitter_s)
    state: dict[str, Any] = orjson.loads(device_state_payload(health.snapshot(), T0 + 2000))
    return state


def test_the_device_state_carries_the_histogram_and_its_quantiles() -> None:
    jitter = published_state()["poll_jitter"]
    assert jitter["count"] == 4
    assert jitter["max_s"] == pytest.approx(0.2)
    assert jitter["sum_s"] == pytest.approx(0.2075)
    assert jitter["buckets"]["0.001"] == 1
    assert jitter["buckets"]["0.005"] == 3
    assert jitter["buckets"]["+Inf"] == 4
    assert 0.002 < jitter["p50_s"] <= 0.005
    assert 0.15 < jitter["p99_s"] <= 0.2


def test_metrics_expose_the_histogram_and_the_quantiles() -> None:
    figures = DeviceFigures.from_state("meter", published_state(), True)
    assert figures.jitter is not None
    families = {f.name: f for f in device_metrics([figures])}
    histogram = families["gridpilot_device_poll_jitter_seconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    assert samples[("gridpilot_device_poll_jitter_seconds_bucket", "0.005")] == 3
    assert samples[("gridpilot_device_poll_jitter_seconds_bucket", "+Inf")] == 4
    assert samples[("gridpilot_device_poll_jitter_seconds_count", None)] == 4
    assert samples[("gridpilot_device_poll_jitter_seconds_sum", None)] == pytest.approx(0.2075)
    quantiles = {
        s.labels["quantile"]: s.value
        for s in families["gridpilot_device_poll_jitter_quantile_seconds"].samples
    }
    assert quantiles == {"0.5": figures.jitter.p50, "0.99": figures.jitter.p99}


@pytest.mark.parametrize(
    "value",
    [
        None,
        "fast",
        {"p50_s": -1, "p99_s": "x"},
        {"buckets": {"0.001": 5, "+Inf": 2}},  # not the known bounds
        {"buckets": {**{f"{le:g}": 3 for le in JITTER_BUCKETS_S}, "+Inf": 1}},  # decreasing
    ],
    ids=["none", "not-an-object", "bad-quantiles", "other-bounds", "not-cumulative"],
)
def test_a_jitter_object_from_the_bus_that_does_not_fit_is_left_out(value: object) -> None:
    figures = JitterFigures.from_state(value)
    assert figures is None or (figures.buckets is None and figures.p50 is None)
    families = {f.name: f for f in device_metrics([DeviceFigures("d", True, jitter=figures)])}
    assert families["gridpilot_device_poll_jitter_seconds"].samples == []
