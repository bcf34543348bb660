"""Timestamps: epoch milliseconds inside, RFC 3339 UTC on the wire."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds. Only I/O shells call this; cores take `now`."""
    return time.time_ns() // 1_000_000


def to_rfc3339(ts_ms: int) -> str:
    """Epoch ms -> ``2026-11-26T12:00:00.000Z``.

    Arithmetic on the time of day with the date part cached: a history answer formats up to
    100,000 of these, and ``datetime.strftime`` per row cost more than reading the rows.
    """
    day, ms_of_day = divmod(ts_ms, 86_400_000)
    seconds, millis = divmod(ms_of_day, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_date_prefix(day)}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _date_prefix(day: int) -> str:
    """Days since the epoch -> ``2026-11-26T``."""
    return f"{(_EPOCH + timedelta(days=day)).date().isoformat()}T"


def parse_timestamp_ms(value: object) -> int:
    """Parse a telemetry ``ts``: RFC 3339 with an offset, or integer epoch milliseconds.

    Raises ValueError with the reason when the value is neither.
    """
    if isinstance(value, bool):
        # ValueError, not TypeError: callers treat any unusable ts as one kind of bad input.
        raise ValueError("ts is a boolean; expected RFC 3339 text or epoch milliseconds")  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError("ts is negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"ts {value!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise ValueError(f"ts {value!r} has no UTC offset; append 'Z'")
        # Integer arithmetic: float seconds would round some milliseconds down.
        return (dt - _EPOCH) // timedelta(milliseconds=1)
    raise ValueError(f"ts has type {type(value).__name__}; expected RFC 3339 text or integer ms")
