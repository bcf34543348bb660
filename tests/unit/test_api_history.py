"""History parameters and row limits of the API (pure), and the loopback test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.api.errors import InvalidParameterError
from gridpilot.api.history import (
    COUNT_BUCKET_MS,
    MAX_ROWS,
    HistoryWindow,
    aggregated_bucket_count,
    count_window,
    parse_history_params,
    raw_rows_at_least,
    suggest_every,
)
from gridpilot.net import is_loopback_host
from gridpilot.storage.base import Agg, HistoryPoint

NOW = 1_764_158_400_000  # 2025-11-26T12:00:00Z
H = 3_600_000


def test_defaults_to_the_last_hour_raw() -> None:
    assert parse_history_params(None, None, None, None, NOW) == HistoryWindow(NOW - H, NOW)


def test_default_start_is_an_hour_before_an_explicit_end() -> None:
    window = parse_history_params(None, "2025-11-26T10:00:00Z", None, None, NOW)
    assert (window.start_ms, window.end_ms) == (NOW - 3 * H, NOW - 2 * H)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2025-11-26T11:00:00Z", NOW - H),
        ("2025-11-26T11:00:00.250Z", NOW - H + 250),
        ("2025-11-26T12:00:00+01:00", NOW - H),
        # '+' in a query string decodes to a space: the offset still means +01:00.
        ("2025-11-26T12:00:00 01:00", NOW - H),
        ("2025-11-26T12:00:00.000 01:00", NOW - H),
        (str(NOW - H), NOW - H),
        ("-1h", NOW - H),
        ("-90m", NOW - H - H // 2),
    ],
)
def test_start_forms(text: str, ms: int) -> None:
    assert parse_history_params(text, "now", None, None, NOW).start_ms == ms


Query = tuple[str | None, str | None, str | None, Agg | None]  # start, end, every, agg


@pytest.mark.parametrize(
    ("query", "parameter", "message"),
    [
        (("yesterday", None, None, None), "start", "start: 'yesterday' is not a time"),
        (("2025-11-26 11:00", None, None, None), "start", "is not a time"),
        (("2025-11-26T11:00:00", None, None, None), "start", "is not a time"),
        ((None, "soon", None, None), "end", "end: 'soon' is not a time"),
        (("-1h", "-2h", None, None), "end", "must be after start"),
        (("now", "now", None, None), "end", "must be after start"),
        ((None, None, "15 minutes", None), "every", "every: '15 minutes' is not a duration"),
        ((None, None, "0s", None), "every", "greater than zero"),
        ((None, None, None, Agg.MAX), "agg", "agg=max needs every"),
        (("-100d", None, "1m", None), "every", "use a longer every or a shorter span"),
    ],
)
def test_bad_parameters_name_the_parameter_and_the_fix(
    query: Query, parameter: str, message: str
) -> None:
    with pytest.raises(InvalidParameterError, match=message) as caught:
        parse_history_params(*query, now_ms=NOW)
    assert caught.value.parameter == parameter
    assert caught.value.status == 422


def test_every_defaults_to_mean() -> None:
    window = parse_history_params("-1h", None, "15m", None, NOW)
    assert (window.every_ms, window.agg) == (900_000, Agg.MEAN)
    assert parse_history_params("-1h", None, "1m", Agg.LAST, NOW).agg is Agg.LAST


def test_exactly_max_rows_buckets_are_allowed() -> None:
    window = parse_history_params(str(NOW - MAX_ROWS * 1000), None, "1s", None, NOW)
    assert aggregated_bucket_count(window) == MAX_ROWS
    with pytest.raises(InvalidParameterError, match=f"{MAX_ROWS + 1} buckets"):
        parse_history_params(str(NOW - MAX_ROWS * 1000 - 1), None, "1s", None, NOW)


@pytest.mark.parametrize(
    ("start", "end", "every", "buckets"),
    [
        (0, 900_000, 900_000, 1),
        (0, 900_001, 900_000, 2),
        (1, 900_000, 900_000, 1),
        (899_999, 900_001, 900_000, 2),  # two ms, two billing blocks
        (NOW - H, NOW, 900_000, 4),
        (NOW - H + 1, NOW, 900_000, 4),
    ],
)
def test_aggregated_bucket_count_counts_epoch_aligned_buckets(
    start: int, end: int, every: int, buckets: int
) -> None:
    assert aggregated_bucket_count(HistoryWindow(start, end, every, Agg.MEAN)) == buckets


def test_a_raw_window_has_no_bucket_count() -> None:
    with pytest.raises(ValueError, match="raw"):
        aggregated_bucket_count(HistoryWindow(0, 1))


def test_count_window_widens_to_whole_buckets() -> None:
    assert count_window(NOW - H, NOW) == (NOW - H, NOW)
    assert count_window(NOW - H + 1, NOW - 1) == (NOW - H, NOW)
    assert count_window(NOW - 1, NOW + 1) == (NOW - H, NOW + H)


def buckets(*pairs: tuple[int, float]) -> list[HistoryPoint]:
    return [HistoryPoint(ts, n) for ts, n in pairs]


def test_raw_rows_at_least_counts_only_whole_buckets_inside_the_window() -> None:
    counts = buckets((NOW - 3 * H, 3600), (NOW - 2 * H, 3600), (NOW - H, 3600), (NOW, 3600))
    # Window from 30 min into the first bucket to 30 min into the last one.
    start, end = NOW - 3 * H + H // 2, NOW + H // 2
    assert raw_rows_at_least(counts, start, end) == 2 * 3600
    assert raw_rows_at_least(counts, NOW - 3 * H, NOW + H) == 4 * 3600
    assert raw_rows_at_least([], start, end) == 0


def test_raw_rows_at_least_ignores_buckets_retention_may_have_emptied() -> None:
    counts = buckets((NOW - 3 * H, 3600), (NOW - 2 * H, 3600), (NOW - H, 3600))
    assert raw_rows_at_least(counts, NOW - 3 * H, NOW, kept_since_ms=NOW - 2 * H) == 7200
    assert raw_rows_at_least(counts, NOW - 3 * H, NOW, kept_since_ms=NOW - 2 * H + 1) == 3600


def test_the_lower_bound_is_never_above_the_true_count() -> None:
    # Samples every 7 s over 5 hours; bucket counts as storage's 1-hour rollup keeps them.
    samples = range(NOW - 5 * H, NOW, 7_000)
    per_bucket: dict[int, int] = {}
    for ts in samples:
        per_bucket[ts - ts % COUNT_BUCKET_MS] = per_bucket.get(ts - ts % COUNT_BUCKET_MS, 0) + 1
    counts = buckets(*sorted(per_bucket.items()))
    for start, end in [(NOW - 5 * H + 1234, NOW - 17), (NOW - 4 * H, NOW), (NOW - 90_000, NOW)]:
        true_count = sum(1 for ts in samples if start <= ts < end)
        assert raw_rows_at_least(counts, start, end) <= true_count


@given(
    start=st.integers(min_value=0, max_value=4_000_000_000_000),
    span=st.integers(min_value=1, max_value=10 * 365 * 86_400_000),
)
def test_suggested_every_always_fits_the_limit(start: int, span: int) -> None:
    every = suggest_every(start, start + span)
    window = parse_history_params(str(start), str(start + span), every, None, start + span)
    assert aggregated_bucket_count(window) <= MAX_ROWS


@pytest.mark.parametrize(
    ("span", "every"),
    [(H, "1s"), (12 * H, "10s"), (6 * 24 * H, "1m"), (7 * 24 * H, "5m"), (365 * 24 * H, "1h")],
)
def test_suggested_every_is_the_finest_that_fits(span: int, every: str) -> None:
    assert suggest_every(NOW - span, NOW, 10_000) == every


def test_the_limit_is_a_parameter() -> None:
    """``api.history_max_rows``: the default takes a day of seconds and a year of 15 min."""
    assert aggregated_bucket_count(parse_history_params("-1d", None, "1s", None, NOW)) <= MAX_ROWS
    assert (
        aggregated_bucket_count(parse_history_params("-366d", None, "15m", None, NOW)) <= MAX_ROWS
    )
    with pytest.raises(InvalidParameterError, match="more than 1000"):
        parse_history_params("-1d", None, "1m", None, NOW, max_rows=1000)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
