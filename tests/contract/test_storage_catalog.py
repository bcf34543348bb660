"""Contract: latest values, the list of series, and persistence across close/reopen."""

from __future__ import annotations

import random

from gridpilot.config.models import RetentionConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, LatestValue, ManagedStorage, WriteResult
from tests.contract.backends import Backend
from tests.contract.storage_reference import (
    HOUR,
    QUARTER,
    T0,
    Reference,
    assert_same,
    random_batches,
)


def at(key: SeriesKey, ts: int, value: float) -> Sample:
    return Sample(key.site, key.device, key.point, ts, value)


P1 = SeriesKey("site-a", "meter-1", "active_power_w")
V1 = SeriesKey("site-a", "meter-1", "voltage_l1_v")
P2 = SeriesKey("site-a", "meter-2", "active_power_w")
PB = SeriesKey("site-b", "meter-1", "active_power_w")


async def test_latest_is_the_newest_sample_of_each_series(storage: ManagedStorage) -> None:
    await storage.write([at(P1, T0 + 5_000, 5.0), at(P1, T0 + 1_000, 1.0), at(V1, T0, 230.0)])
    # An older sample arriving late does not replace the newest one.
    await storage.write([at(P1, T0 + 2_000, 2.0), at(P2, T0 + 9_000, 9.0), at(PB, T0, 7.0)])
    assert await storage.latest("site-a") == [
        LatestValue(P1, T0 + 5_000, 5.0),
        LatestValue(V1, T0, 230.0),
        LatestValue(P2, T0 + 9_000, 9.0),
    ]
    assert await storage.latest("site-a", "meter-2") == [LatestValue(P2, T0 + 9_000, 9.0)]
    assert await storage.latest("site-b") == [LatestValue(PB, T0, 7.0)]
    await storage.write([at(P1, T0 + 6_000, 6.0)])
    assert (await storage.latest("site-a", "meter-1"))[0] == LatestValue(P1, T0 + 6_000, 6.0)


async def test_latest_of_unknown_site_or_device_is_empty(storage: ManagedStorage) -> None:
    await storage.write([at(P1, T0, 1.0)])
    assert await storage.latest("site-z") == []
    assert await storage.latest("site-a", "meter-9") == []


async def test_latest_ignores_duplicates(storage: ManagedStorage) -> None:
    await storage.write([at(P1, T0, 1.0)])
    await storage.write([at(P1, T0, 99.0)])
    assert await storage.latest("site-a") == [LatestValue(P1, T0, 1.0)]


async def test_series_lists_every_series_sorted(storage: ManagedStorage) -> None:
    assert await storage.series() == []
    await storage.write([at(PB, T0, 1.0), at(V1, T0, 1.0), at(P2, T0, 1.0), at(P1, T0, 1.0)])
    await storage.write([at(P1, T0 + 1, 1.0)])
    assert await storage.series() == sorted([P1, V1, P2, PB])
    assert await storage.series("site-a") == sorted([P1, V1, P2])
    assert await storage.series("site-z") == []


async def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    rng = random.Random(11)
    reference = Reference()
    keys = [P1, V1, PB]
    async with backend.open(RetentionConfig()) as storage:
        for batch in random_batches(rng, keys, T0, 3 * HOUR, 2_000):
            reference.write(batch)
            await storage.write(batch)
        before_latest = await storage.latest("site-a")
    async with backend.open(RetentionConfig()) as storage:
        assert await storage.series() == sorted(keys)
        assert await storage.latest("site-a") == before_latest
        for key in keys:
            raw = await storage.history(key, T0, T0 + 3 * HOUR)
            assert [(p.ts_ms, p.value) for p in raw] == reference.raw(key, T0, T0 + 3 * HOUR)
            for agg in Agg:
                got = await storage.history(key, T0, T0 + 3 * HOUR, every_ms=QUARTER, agg=agg)
                assert_same(got, reference.history(key, T0, T0 + 3 * HOUR, QUARTER, agg), str(agg))
        # Idempotency holds across the restart: a re-sent batch is all duplicates.
        resend = [at(key, ts, 0.0) for (key, ts) in list(reference.samples)[:500]]
        assert await storage.write(resend) == WriteResult(0, 500)
        # And new series keep working after reopening.
        new = SeriesKey("site-c", "meter-1", "active_power_w")
        assert await storage.write([at(new, T0, 3.0)]) == WriteResult(1, 0)
        assert await storage.latest("site-c") == [LatestValue(new, T0, 3.0)]
