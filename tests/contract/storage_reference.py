"""A brute-force model of the storage contract, to check backends against.

It keeps every sample in a dict (first value written wins) and answers history queries by
looking at every sample: slow, obviously right.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import UTC, datetime

from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, HistoryPoint

MINUTE = 60_000
QUARTER = 15 * MINUTE
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# 2026-03-02T00:00:00Z, a Monday; tests place data relative to it.
T0 = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)


def utc_ms(wall_clock: str) -> int:
    """Epoch ms of a UTC wall-clock time: utc_ms("2026-03-02T12:15")."""
    return round(datetime.fromisoformat(wall_clock).replace(tzinfo=UTC).timestamp() * 1000)


class Reference:
    """What a correct store holds after a sequence of writes."""

    def __init__(self) -> None:
        self.samples: dict[tuple[SeriesKey, int], float] = {}

    def write(self, batch: Iterable[Sample]) -> tuple[int, int]:
        """Apply a batch; returns (written, duplicates) as the store must."""
        written = duplicates = 0
        for s in batch:
            key = (s.series, s.ts_ms)
            if key in self.samples:
                duplicates += 1
            else:
                self.samples[key] = s.value
                written += 1
        return written, duplicates

    def raw(self, series: SeriesKey, start: int, end: int) -> list[tuple[int, float]]:
        return sorted(
            (ts, v) for (k, ts), v in self.samples.items() if k == series and start <= ts < end
        )

    def history(
        self, series: SeriesKey, start: int, end: int, every: int, agg: Agg
    ) -> list[tuple[int, float]]:
        buckets: dict[int, list[tuple[int, float]]] = {}
        for ts, v in self.raw(series, start, end):
            buckets.setdefault(ts - ts % every, []).append((ts, v))
        return [(b, aggregate(buckets[b], agg)) for b in sorted(buckets)]


def aggregate(points: list[tuple[int, float]], agg: Agg) -> float:
    """``points`` sorted by time."""
    values = [v for _, v in points]
    match agg:
        case Agg.MEAN:
            return math.fsum(values) / len(values)
        case Agg.MIN:
            return min(values)
        case Agg.MAX:
            return max(values)
        case Agg.SUM:
            return math.fsum(values)
        case Agg.COUNT:
            return float(len(values))
        case Agg.LAST:
            return points[-1][1]


def assert_same(actual: list[HistoryPoint], expected: list[tuple[int, float]], what: str) -> None:
    """Equal bucket starts; values equal up to float summation order."""
    got = [(p.ts_ms, p.value) for p in actual]
    assert [t for t, _ in got] == [t for t, _ in expected], f"{what}: bucket starts differ"
    for (t, a), (_, e) in zip(got, expected, strict=True):
        assert math.isclose(a, e, rel_tol=1e-9, abs_tol=1e-6), f"{what} @ {t}: {a} != {e}"


def random_batches(
    rng: random.Random, series: list[SeriesKey], start: int, span: int, count: int
) -> list[list[Sample]]:
    """``count`` samples over [start, start+span) in random batches, with re-sends.

    Timestamps favour bucket boundaries (and the millisecond before them) so that boundary
    handling is exercised; some samples are re-sent with a different value, within a
    batch and across batches, to check that the first value wins.
    """
    made: list[Sample] = []
    while len(made) < count:
        key = rng.choice(series)
        roll = rng.random()
        if roll < 0.15 and made:  # re-send an earlier identity with another value
            old = rng.choice(made)
            ts, key = old.ts_ms, old.series
        elif roll < 0.35:  # on or next to a boundary of some level
            size = rng.choice((MINUTE, QUARTER, HOUR))
            ts = start + rng.randrange(span // size) * size + rng.choice((0, -1, 1))
            ts = min(max(ts, start), start + span - 1)
        else:
            ts = start + rng.randrange(span)
        value = round(rng.uniform(-1e4, 1e4), rng.choice((0, 3, 9)))
        made.append(Sample(key.site, key.device, key.point, ts, value))
    batches: list[list[Sample]] = []
    i = 0
    while i < len(made):
        size = rng.choice((1, 7, 50, 400, 1500))
        batches.append(made[i : i + size])
        i += size
    return batches
