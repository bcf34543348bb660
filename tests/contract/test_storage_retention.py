"""Contract: retention removes per level exactly what its period no longer covers."""

from __future__ import annotations

import random
from datetime import timedelta

from gridpilot.config.models import RetentionConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, LatestValue
from gridpilot.storage.levels import ceil_to, floor_to
from tests.contract.backends import Backend
from tests.contract.storage_reference import DAY, HOUR, MINUTE, QUARTER, T0, Reference, assert_same

RETENTION = RetentionConfig(
    raw=timedelta(hours=2),
    rollup_1m=timedelta(days=1),
    rollup_15m=timedelta(days=7),
    rollup_1h=None,
)
P1 = SeriesKey("site-a", "meter-1", "active_power_w")
OLD = SeriesKey("site-a", "meter-9", "active_power_w")  # stopped reporting long ago
NOW = T0 + 10 * DAY + 17 * MINUTE + 123  # deliberately not on any bucket boundary
RAW_CUT = NOW - 2 * HOUR
M1_CUT = NOW - DAY
M15_CUT = NOW - 7 * DAY


async def load(backend: Backend, retention: RetentionConfig) -> Reference:
    """Ten days of one sample a minute (mid-minute) for P1, two old samples for OLD, and
    samples on both sides of the raw cutoff."""
    rng = random.Random(5)
    reference = Reference()
    batch = [
        Sample(P1.site, P1.device, P1.point, T0 + m * MINUTE + 30_000, rng.uniform(0, 100))
        for m in range(10 * 24 * 60)
    ]
    batch += [
        Sample(P1.site, P1.device, P1.point, RAW_CUT - 1, 1.0),
        Sample(P1.site, P1.device, P1.point, RAW_CUT, 2.0),
        Sample(OLD.site, OLD.device, OLD.point, T0, 3.0),
        Sample(OLD.site, OLD.device, OLD.point, T0 + 1, 4.0),
    ]
    reference.write(batch)
    async with backend.open(retention) as storage:
        await storage.write(batch)
    return reference


async def test_each_level_keeps_what_its_retention_covers(backend: Backend) -> None:
    reference = await load(backend, RETENTION)
    async with backend.open(RETENTION) as storage:
        latest_before = await storage.latest("site-a")
        assert await storage.apply_retention(NOW) > 0

        # Raw: exactly the samples at or after the cutoff.
        raw = await storage.history(P1, 0, 2**62)
        assert [(p.ts_ms, p.value) for p in raw] == reference.raw(P1, RAW_CUT, 2**62)
        assert raw[0] == type(raw[0])(RAW_CUT, 2.0)
        assert await storage.history(OLD, 0, 2**62) == []

        # Each rollup still answers, exactly, for the span its retention covers - also
        # where the raw samples are gone - and the 1 h level keeps everything.
        for every, start in (
            (MINUTE, ceil_to(M1_CUT, MINUTE)),
            (QUARTER, ceil_to(M15_CUT, QUARTER)),
            (HOUR, T0),
        ):
            for agg in Agg:
                assert_same(
                    await storage.history(P1, start, NOW, every_ms=every, agg=agg),
                    reference.history(P1, start, NOW, every, agg),
                    f"every {every} {agg}",
                )

        # A bucket is removed only once all of it is older than the cutoff: the 1-min
        # bucket holding the cutoff stays whole, the one before it is gone.
        holding = floor_to(M1_CUT, MINUTE)
        assert_same(
            await storage.history(P1, holding, holding + MINUTE, every_ms=MINUTE, agg=Agg.SUM),
            reference.history(P1, holding, holding + MINUTE, MINUTE, Agg.SUM),
            "bucket holding the 1 min cutoff",
        )
        before = holding - MINUTE
        assert await storage.history(P1, before, holding, every_ms=MINUTE, agg=Agg.SUM) == []

        # Three days back, 1-min data is gone but 15-min data answers.
        lo = floor_to(NOW - 3 * DAY, HOUR)
        assert await storage.history(P1, lo, lo + HOUR, every_ms=MINUTE, agg=Agg.MEAN) == []
        assert_same(
            await storage.history(P1, lo, lo + HOUR, every_ms=QUARTER, agg=Agg.MEAN),
            reference.history(P1, lo, lo + HOUR, QUARTER, Agg.MEAN),
            "15 min where 1 min expired",
        )

        # A range reaching back past every level that could answer it returns the part
        # still kept: here the last day of 1-min buckets, not just the 2 h of raw samples.
        assert_same(
            await storage.history(P1, NOW - 36 * HOUR, NOW, every_ms=MINUTE, agg=Agg.COUNT),
            reference.history(P1, floor_to(M1_CUT, MINUTE), NOW, MINUTE, Agg.COUNT),
            "partly expired range",
        )

        # Retention does not forget which series exist nor their newest value.
        assert await storage.series("site-a") == sorted([P1, OLD])
        assert await storage.latest("site-a") == latest_before
        assert LatestValue(OLD, T0 + 1, 4.0) in latest_before

        # Nothing more is due at the same instant.
        assert await storage.apply_retention(NOW) == 0


async def test_retention_survives_reopen(backend: Backend) -> None:
    reference = await load(backend, RETENTION)
    async with backend.open(RETENTION) as storage:
        await storage.apply_retention(NOW)
    async with backend.open(RETENTION) as storage:
        assert await storage.apply_retention(NOW) == 0
        lo = floor_to(NOW - 3 * DAY, HOUR)
        assert await storage.history(P1, lo, lo + HOUR, every_ms=MINUTE, agg=Agg.MAX) == []
        assert_same(
            await storage.history(P1, lo, lo + HOUR, every_ms=QUARTER, agg=Agg.MAX),
            reference.history(P1, lo, lo + HOUR, QUARTER, Agg.MAX),
            "15 min after reopen",
        )


async def test_keep_forever_deletes_nothing(backend: Backend) -> None:
    forever = RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None, rollup_1h=None)
    reference = await load(backend, forever)
    async with backend.open(forever) as storage:
        assert await storage.apply_retention(NOW + 365 * DAY) == 0
        raw = await storage.history(P1, 0, 2**62)
        assert len(raw) == len(reference.raw(P1, 0, 2**62))


async def test_later_retention_run_removes_the_newly_due_part(backend: Backend) -> None:
    reference = await load(backend, RETENTION)
    async with backend.open(RETENTION) as storage:
        await storage.apply_retention(NOW - HOUR)
        assert len(await storage.history(P1, 0, 2**62)) == len(
            reference.raw(P1, RAW_CUT - HOUR, 2**62)
        )
        assert await storage.apply_retention(NOW) > 0
        assert len(await storage.history(P1, 0, 2**62)) == len(reference.raw(P1, RAW_CUT, 2**62))


async def test_queries_read_a_level_that_still_holds_the_range(backend: Backend) -> None:
    # An unusual but valid configuration: the hourly rollup is kept for less time than the
    # 15-min one, and the 1-min rollup for less time than the raw samples. A query must then
    # skip the level that retention already thinned out, not return its gaps.
    inverted = RetentionConfig(
        raw=timedelta(days=3),
        rollup_1m=timedelta(days=1),
        rollup_15m=None,
        rollup_1h=timedelta(days=2),
    )
    reference = await load(backend, inverted)
    async with backend.open(inverted) as storage:
        await storage.apply_retention(NOW)
        lo = floor_to(NOW - 2 * DAY - 12 * HOUR, HOUR)  # 1 h and 1 min gone, 15 min and raw kept
        for every in (HOUR, MINUTE, 2 * HOUR):
            for agg in (Agg.MEAN, Agg.COUNT, Agg.LAST):
                assert_same(
                    await storage.history(P1, lo, lo + 6 * HOUR, every_ms=every, agg=agg),
                    reference.history(P1, lo, lo + 6 * HOUR, every, agg),
                    f"every {every} {agg}",
                )
