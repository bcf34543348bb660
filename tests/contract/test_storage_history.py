"""Contract: history in [start, end), raw or aggregated into epoch-aligned buckets."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, HistoryPoint, ManagedStorage
from gridpilot.storage.base import HistoryJson
from tests.contract.storage_reference import (
    DAY,
    HOUR,
    MINUTE,
    QUARTER,
    T0,
    Reference,
    assert_same,
    random_batches,
    utc_ms,
)

KEY = SeriesKey("site-a", "meter-1", "active_power_w")

# Bucket sizes of every rollup level, multiples of them, and sizes no rollup divides
# (answered from raw samples): every path must give the brute-force answer.
EVERY = (
    MINUTE,
    QUARTER,
    HOUR,
    2 * MINUTE,
    30 * MINUTE,
    2 * HOUR,
    DAY,
    45_000,
    1_000,
    7 * MINUTE + 1,
)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_aggregates_match_brute_force_for_every_agg_and_level(
    storage: ManagedStorage, seed: int
) -> None:
    rng = random.Random(seed)
    keys = [KEY, SeriesKey("site-a", "meter-1", "voltage_l1_v"), SeriesKey("site-b", "pv", "p_w")]
    start, span = T0 + 7 * MINUTE + 123, 5 * HOUR
    reference = Reference()
    for batch in random_batches(rng, keys, start, span, 3_000):
        expected = reference.write(batch)
        result = await storage.write(batch)
        assert (result.written, result.duplicates) == expected
    # Aligned to everything, unaligned at both ends, and one short range inside a bucket.
    ranges = [
        (T0, T0 + DAY),
        (start + rng.randrange(HOUR), start + span - rng.randrange(HOUR)),
        (start + HOUR + 17_001, start + HOUR + 17_001 + 40_000),
    ]
    for key in keys:
        for lo, hi in ranges:
            for every in EVERY:
                for agg in Agg:
                    got = await storage.history(key, lo, hi, every_ms=every, agg=agg)
                    assert_same(
                        got,
                        reference.history(key, lo, hi, every, agg),
                        f"{key} [{lo},{hi}) every {every} {agg}",
                    )
                    # the same answer as columns
                    columns = await storage.history_columns(key, lo, hi, every, agg)
                    assert list(columns.ts_ms) == [p.ts_ms for p in got]
                    assert list(columns.values) == [p.value for p in got]
                    assert all(type(v) is float for v in columns.values)
                    # ... and as the JSON arrays the API splices into its answer
                    assert_same_json(await storage.history_json(key, lo, hi, every, agg), got)
            raw = await storage.history(key, lo, hi)
            assert [(p.ts_ms, p.value) for p in raw] == reference.raw(key, lo, hi)
            raw_columns = await storage.history_columns(key, lo, hi)
            assert list(zip(*raw_columns, strict=True)) == reference.raw(key, lo, hi)
            assert_same_json(await storage.history_json(key, lo, hi), raw)


def assert_same_json(answer: HistoryJson, expected: list[HistoryPoint]) -> None:
    """The JSON form holds the same times exactly and the same values to the 15 significant
    digits SQLite renders (see ``HistoryJson``)."""
    ts_ms, values = orjson.loads(answer.ts_ms), orjson.loads(answer.values)
    assert answer.count == len(expected) == len(ts_ms) == len(values)
    assert ts_ms == [p.ts_ms for p in expected]
    for got, want in zip(values, expected, strict=True):
        assert math.isclose(got, want.value, rel_tol=1e-14, abs_tol=1e-300), (got, want)


async def test_fifteen_minute_buckets_are_the_utc_quarter_hours(storage: ManagedStorage) -> None:
    # One sample a minute from 11:50 to 13:09 UTC, plus the last millisecond of a block.
    base = utc_ms("2026-03-02T11:50:00")
    values = {base + m * MINUTE: 1.0 for m in range(80)}
    values[utc_ms("2026-03-02T12:29:59") + 999] = 1.0
    await storage.write([Sample(KEY.site, KEY.device, KEY.point, t, v) for t, v in values.items()])
    counts = await storage.history(KEY, base, base + 80 * MINUTE, every_ms=QUARTER, agg=Agg.COUNT)
    assert counts == [
        HistoryPoint(utc_ms("2026-03-02T11:45:00"), 10.0),  # 11:50..11:59
        HistoryPoint(utc_ms("2026-03-02T12:00:00"), 15.0),
        HistoryPoint(utc_ms("2026-03-02T12:15:00"), 16.0),  # 12:15..12:29 + 12:29:59.999
        HistoryPoint(utc_ms("2026-03-02T12:30:00"), 15.0),
        HistoryPoint(utc_ms("2026-03-02T12:45:00"), 15.0),
        HistoryPoint(utc_ms("2026-03-02T13:00:00"), 10.0),  # 13:00..13:09
    ]
    hours = await storage.history(KEY, base, base + 80 * MINUTE, every_ms=HOUR, agg=Agg.COUNT)
    assert [p.ts_ms for p in hours] == [utc_ms(f"2026-03-02T{h}:00") for h in (11, 12, 13)]


async def test_range_is_start_inclusive_end_exclusive(storage: ManagedStorage) -> None:
    stamps = [T0 - 1, T0, T0 + 1, T0 + HOUR - 1, T0 + HOUR, T0 + HOUR + 1]
    await storage.write([Sample(KEY.site, KEY.device, KEY.point, t, float(t - T0)) for t in stamps])
    raw = await storage.history(KEY, T0, T0 + HOUR)
    assert [p.ts_ms for p in raw] == [T0, T0 + 1, T0 + HOUR - 1]
    for every in (MINUTE, HOUR):
        counts = await storage.history(KEY, T0, T0 + HOUR, every_ms=every, agg=Agg.COUNT)
        assert sum(p.value for p in counts) == 3.0
        assert counts[0].ts_ms == T0


async def test_unaligned_start_gives_a_partial_first_bucket(storage: ManagedStorage) -> None:
    await storage.write(
        [Sample(KEY.site, KEY.device, KEY.point, T0 + m * MINUTE, float(m)) for m in range(30)]
    )
    # From 00:05 to 00:20: the 00:00 block holds only 00:05..00:14.
    got = await storage.history(
        KEY, T0 + 5 * MINUTE, T0 + 20 * MINUTE, every_ms=QUARTER, agg=Agg.SUM
    )
    assert got == [
        HistoryPoint(T0, float(sum(range(5, 15)))),
        HistoryPoint(T0 + QUARTER, float(sum(range(15, 20)))),
    ]


async def test_last_is_the_value_of_the_newest_sample_not_the_last_written(
    storage: ManagedStorage,
) -> None:
    def at(ts: int, value: float) -> Sample:
        return Sample(KEY.site, KEY.device, KEY.point, ts, value)

    await storage.write([at(T0 + 50 * MINUTE, 5.0), at(T0 + 10 * MINUTE, 1.0)])
    await storage.write([at(T0 + 20 * MINUTE, 2.0)])
    for every in (MINUTE * 5, QUARTER, HOUR):
        got = await storage.history(KEY, T0, T0 + HOUR, every_ms=every, agg=Agg.LAST)
        assert got[-1].value == 5.0


async def test_aggregates_are_floats(storage: ManagedStorage) -> None:
    await storage.write([Sample(KEY.site, KEY.device, KEY.point, T0 + i, 2.0) for i in range(3)])
    for agg in Agg:
        (point,) = await storage.history(KEY, T0, T0 + HOUR, every_ms=HOUR, agg=agg)
        assert isinstance(point.value, float)
    (count,) = await storage.history(KEY, T0, T0 + HOUR, every_ms=HOUR, agg=Agg.COUNT)
    assert count.value == 3.0


async def test_empty_results(storage: ManagedStorage) -> None:
    await storage.write([Sample(KEY.site, KEY.device, KEY.point, T0, 1.0)])
    unknown = SeriesKey("site-a", "meter-1", "nope_w")
    assert await storage.history(unknown, 0, 2**62) == []
    assert await storage.history(unknown, 0, 2**62, every_ms=QUARTER) == []
    assert await storage.history(KEY, T0 + 1, T0 + DAY) == []  # no data in range
    assert await storage.history(KEY, T0 + 1, T0 + DAY, every_ms=QUARTER, agg=Agg.MAX) == []
    assert await storage.history(KEY, T0, T0) == []  # empty range
    assert await storage.history(KEY, T0 + 5, T0, every_ms=MINUTE) == []  # reversed range


async def test_non_positive_bucket_is_refused(storage: ManagedStorage) -> None:
    with pytest.raises(ValueError, match="every_ms"):
        await storage.history(KEY, T0, T0 + HOUR, every_ms=0)
