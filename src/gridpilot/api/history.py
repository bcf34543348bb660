"""History queries: parsing their parameters and bounding what they return. Pure.

A history request names a window ``[start, end)``, optionally ``every`` (bucket length,
aggregated server-side) and ``agg``. It may return at most ``max_rows`` rows
(``api.history_max_rows``, default ``MAX_ROWS``: a day of 1-second samples, a leap year of
15-minute buckets):

* aggregated: the number of epoch-aligned buckets the window touches is known up front;
* raw: the number of samples is not, and reading them all to count them is what the limit
  is there to prevent. So the API first asks storage for per-bucket counts (``Agg.COUNT``
  per ``COUNT_BUCKET_MS``, served by the 1-hour rollup) over the window widened to whole
  buckets; :func:`raw_rows_at_least` sums the buckets that lie entirely inside the window
  (and are not older than raw retention). Above the limit: refuse without reading.
  Otherwise read, which returns at most the limit plus the two partial edge buckets, and
  refuse if that is still over the limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from gridpilot.api.errors import InvalidParameterError
from gridpilot.cli.timeparse import parse_duration_ms, parse_instant_ms
from gridpilot.model import to_rfc3339
from gridpilot.storage.base import Agg, HistoryJson, HistoryPoint

__all__ = [
    "COUNT_BUCKET_MS",
    "DEFAULT_SPAN_MS",
    "MAX_ROWS",
    "HistoryResult",
    "HistoryWindow",
    "aggregated_bucket_count",
    "count_window",
    "parse_history_params",
    "raw_rows_at_least",
    "suggest_every",
    "too_many_raw_rows",
]

MAX_ROWS: Final = 100_000
DEFAULT_SPAN_MS: Final = 3_600_000
COUNT_BUCKET_MS: Final = 3_600_000

# In a query string '+' means a space, so an unencoded "...T12:00:00+01:00" arrives as
# "...T12:00:00 01:00". Put the '+' back rather than make people percent-encode by hand.
_SPACE_OFFSET_RE = re.compile(r"^(.*\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What a history request returns, as rows or as columns (``format=columns``: read
    from storage as two JSON arrays, no object per value; see ``HistoryJson``). Serialised
    straight to JSON (``to_json``): with up to ``max_rows`` rows a model object per row
    would cost more than reading them."""

    device: str
    point: str
    unit: str | None
    window: HistoryWindow
    rows: Sequence[HistoryPoint] = ()
    columns: HistoryJson | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.columns is None else self.columns.count

    def to_json(self) -> bytes:
        """The ``HistoryColumnsOut`` document when read as columns, else ``HistoryOut``."""
        window = self.window
        head = {
            "device": self.device,
            "point": self.point,
            "unit": self.unit,
            "start": to_rfc3339(window.start_ms),
            "end": to_rfc3339(window.end_ms),
            "every_ms": window.every_ms,
            "agg": window.agg,
        }
        if self.columns is not None:
            # The arrays come rendered from storage (SQLite writes them in C): spliced in.
            ts_ms, values = (
                orjson.Fragment(self.columns.ts_ms),
                orjson.Fragment(self.columns.values),
            )
            return orjson.dumps({**head, "ts_ms": ts_ms, "value": values})
        rows = [{"ts": to_rfc3339(r.ts_ms), "value": r.value} for r in self.rows]
        return orjson.dumps({**head, "values": rows})


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """A validated history request. ``every_ms``/``agg`` are both set or both None."""

    start_ms: int
    end_ms: int
    every_ms: int | None = None
    agg: Agg | None = None


def _instant(name: str, text: str, now_ms: int) -> int:
    repaired = _SPACE_OFFSET_RE.sub(r"\1+\2", text.strip())
    try:
        return parse_instant_ms(repaired, now_ms)
    except ValueError as exc:
        raise InvalidParameterError(name, text, f"{name}: {exc}") from None


def parse_history_params(
    start: str | None,
    end: str | None,
    every: str | None,
    agg: Agg | None,
    now_ms: int,
    *,
    max_rows: int = MAX_ROWS,
) -> HistoryWindow:
    """Validate the query parameters of a history request.

    ``start``/``end``: RFC 3339, epoch milliseconds, ``now`` or relative (``-2h``); default
    the last hour. ``every``: a duration (``15m``); ``agg`` needs it and defaults to mean.
    Raises :class:`InvalidParameterError` saying which parameter is wrong and how to fix it.
    """
    end_ms = now_ms if end is None else _instant("end", end, now_ms)
    start_ms = end_ms - DEFAULT_SPAN_MS if start is None else _instant("start", start, now_ms)
    if end_ms <= start_ms:
        raise InvalidParameterError(
            "end", end, f"end ({end or 'now'}) must be after start ({start or 'end - 1h'})"
        )
    if every is None:
        if agg is not None:
            raise InvalidParameterError(
                "agg", str(agg), f"agg={agg} needs every (the bucket length, e.g. every=15m)"
            )
        return HistoryWindow(start_ms, end_ms)
    try:
        every_ms = parse_duration_ms(every)
    except ValueError as exc:
        raise InvalidParameterError("every", every, f"every: {exc}") from None
    window = HistoryWindow(start_ms, end_ms, every_ms, Agg.MEAN if agg is None else agg)
    buckets = aggregated_bucket_count(window)
    if buckets > max_rows:
        raise InvalidParameterError(
            "every",
            every,
            f"every={every} makes {buckets} buckets between start and end, more than "
            f"{max_rows}; use a longer every or a shorter span",
        )
    return window


def aggregated_bucket_count(window: HistoryWindow) -> int:
    """Epoch-aligned buckets of ``every_ms`` that ``[start, end)`` touches."""
    if window.every_ms is None:
        raise ValueError("a raw window has no buckets")
    every = window.every_ms
    return -(-window.end_ms // every) - window.start_ms // every


def count_window(start_ms: int, end_ms: int, bucket_ms: int = COUNT_BUCKET_MS) -> tuple[int, int]:
    """``[start, end)`` widened to whole buckets, so that every count is of a whole bucket."""
    return start_ms - start_ms % bucket_ms, -(-end_ms // bucket_ms) * bucket_ms


def raw_rows_at_least(
    counts: Sequence[HistoryPoint],
    start_ms: int,
    end_ms: int,
    *,
    bucket_ms: int = COUNT_BUCKET_MS,
    kept_since_ms: int | None = None,
) -> int:
    """A lower bound of the raw samples in ``[start, end)``.

    ``counts`` are per-bucket sample counts (bucket start in ``ts_ms``). Only buckets
    entirely inside the window count; so do not those starting before ``kept_since_ms``,
    whose raw samples retention may already have deleted.
    """
    total = 0
    for bucket in counts:
        inside = bucket.ts_ms >= start_ms and bucket.ts_ms + bucket_ms <= end_ms
        if inside and (kept_since_ms is None or bucket.ts_ms >= kept_since_ms):
            total += round(bucket.value)
    return total


def too_many_raw_rows(
    rows: int, every_hint: str, *, exact: bool, max_rows: int = MAX_ROWS
) -> InvalidParameterError:
    """The error for a raw request over ``max_rows`` samples (``rows``: the count, or a lower
    bound of it when not ``exact``); ``every_hint`` is a bucket length to suggest."""
    count = str(rows) if exact else f"at least {rows}"
    return InvalidParameterError(
        "every",
        None,
        f"this span holds {count} raw samples, more than {max_rows}; add every "
        f"(e.g. every={every_hint}) to aggregate server-side, or shorten the span",
    )


def suggest_every(start_ms: int, end_ms: int, max_rows: int = MAX_ROWS) -> str:
    """The shortest common bucket that keeps the window under ``max_rows`` buckets."""
    span = end_ms - start_ms
    for text, ms in _SUGGESTIONS:
        if span // ms + 2 <= max_rows:  # +2: partial buckets at both ends
            return text
    return _SUGGESTIONS[-1][0]


_SUGGESTIONS: Final = (
    ("1s", 1_000),
    ("10s", 10_000),
    ("1m", 60_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("1h", 3_600_000),
    ("1d", 86_400_000),
    ("7d", 604_800_000),
)
