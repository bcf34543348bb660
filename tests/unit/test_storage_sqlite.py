"""SQLite backend specifics: file, schema, rollup tables, retention, errors, threads.

The behaviour every backend shares is in ``tests/contract``; these tests look inside the
SQLite file (with a second, plain sqlite3 connection) and at what only this backend does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gridpilot.config.models import RetentionConfig, StorageConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import (
    Agg,
    SqliteStorage,
    StorageError,
    StorageUnavailable,
    WriteResult,
    open_storage,
)
from gridpilot.storage.base import Event, Level
from gridpilot.storage.levels import floor_to
from tests.contract.storage_reference import (
    HOUR,
    MINUTE,
    QUARTER,
    T0,
    Reference,
    random_batches,
)

KEY = SeriesKey("site-a", "meter-1", "active_power_w")
FOREVER = RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None, rollup_1h=None)
TABLES = {Level.M1: "rollup_1m", Level.M15: "rollup_15m", Level.H1: "rollup_1h"}


def at(ts: int, value: float, key: SeriesKey = KEY) -> Sample:
    return Sample(key.site, key.device, key.point, ts, value)


def count_rows(path: Path, table: str) -> int:
    rows = inspect(path, f"SELECT count(*) FROM {table}")  # noqa: S608 - our own table names
    return int(rows[0][0])


def inspect(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of our own, beside the storage's."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gridpilot.db"


@pytest.fixture
async def storage(db_path: Path) -> AsyncIterator[SqliteStorage]:
    async with SqliteStorage(db_path, FOREVER) as opened:
        yield opened


# --- file and schema ----------------------------------------------------------------------


async def test_new_database_and_its_wal_are_private(storage: SqliteStorage, db_path: Path) -> None:
    await storage.write([at(T0, 1.0)])
    assert db_path.stat().st_mode & 0o777 == 0o600
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists()
    assert wal.stat().st_mode & 0o777 == 0o600


async def test_readable_existing_file_is_restricted_with_a_warning(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_path.touch()
    db_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="gridpilot.storage.sqlite"):
        async with SqliteStorage(db_path) as storage:
            await storage.write([at(T0, 1.0)])
    assert db_path.stat().st_mode & 0o777 == 0o600
    assert "0644" in caplog.text
    assert str(db_path) in caplog.text


async def test_open_storage_resolves_relative_paths_and_creates_directories(
    tmp_path: Path,
) -> None:
    config = StorageConfig(path=Path("data/site/gp.db"))
    async with open_storage(config, tmp_path) as storage:
        await storage.write([at(T0, 1.0)])
    assert (tmp_path / "data" / "site" / "gp.db").is_file()
    absolute = tmp_path / "elsewhere" / "abs.db"
    async with open_storage(StorageConfig(path=absolute), tmp_path / "ignored") as storage:
        await storage.write([at(T0, 1.0)])
    assert absolute.is_file()
    assert not (tmp_path / "ignored").exists()


async def test_schema_is_wal_with_keyed_tables_without_rowid(
    storage: SqliteStorage, db_path: Path
) -> None:
    assert inspect(db_path, "PRAGMA journal_mode") == [("wal",)]
    schema = dict(inspect(db_path, "SELECT name, sql FROM sqlite_schema WHERE type = 'table'"))
    for table in ("samples", *TABLES.values()):
        sql = " ".join(str(schema[table]).split())
        assert "WITHOUT ROWID" in sql, table
    assert "PRIMARY KEY (series_id, ts_ms)" in str(schema["samples"])
    for table in TABLES.values():
        assert "PRIMARY KEY (series_id, bucket_ms)" in str(schema[table])
    assert "UNIQUE (site, device, point)" in str(schema["series"])


# --- rollups --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [21, 22])
async def test_rollup_rows_match_brute_force_per_level(
    storage: SqliteStorage, db_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    keys = [KEY, SeriesKey("site-a", "meter-2", "active_power_w")]
    reference = Reference()
    for batch in random_batches(rng, keys, T0 + 59_999, 3 * HOUR, 2_500):
        reference.write(batch)
        await storage.write(batch)
    ids = {
        SeriesKey(s, d, p): i
        for i, s, d, p in inspect(db_path, "SELECT id, site, device, point FROM series")
    }
    for level, table in TABLES.items():
        size = level.bucket_ms
        expected: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for (key, ts), value in sorted(reference.samples.items(), key=lambda kv: kv[0][1]):
            expected.setdefault((ids[key], floor_to(ts, size)), []).append((ts, value))
        rows = inspect(
            db_path,
            f"SELECT series_id, bucket_ms, min, max, sum, count, last_ts, last_value FROM {table}",  # noqa: S608
        )
        assert len(rows) == len(expected), table
        for sid, bucket, mn, mx, sm, count, last_ts, last_value in rows:
            points = expected[(sid, bucket)]
            values = [v for _, v in points]
            assert (mn, mx, count) == (min(values), max(values), len(values)), (table, bucket)
            assert math.isclose(sm, math.fsum(values), rel_tol=1e-12, abs_tol=1e-6)
            assert (last_ts, last_value) == points[-1], (table, bucket)


async def test_aggregates_are_read_from_the_rollup_not_the_raw_samples(
    storage: SqliteStorage, db_path: Path
) -> None:
    await storage.write([at(T0 + s * 10_000, float(s)) for s in range(360)])  # an hour
    full = await storage.history(KEY, T0, T0 + HOUR, every_ms=QUARTER, agg=Agg.MEAN)
    assert len(full) == 4
    inspect(db_path, "DELETE FROM samples")
    # Aligned: the 15-min rollup alone answers, raw samples are not needed.
    assert await storage.history(KEY, T0, T0 + HOUR, every_ms=QUARTER, agg=Agg.MEAN) == full
    # Unaligned start: the partial first minute (3 samples) would come from raw, now gone;
    # minutes 1-14 of the first block still come from the 1-min rollup (14 x 6 samples).
    partial = await storage.history(KEY, T0 + 30_000, T0 + HOUR, every_ms=QUARTER, agg=Agg.COUNT)
    assert [p.value for p in partial] == [84.0, 90.0, 90.0, 90.0]
    inspect(db_path, "DELETE FROM rollup_15m")
    assert await storage.history(KEY, T0, T0 + HOUR, every_ms=QUARTER, agg=Agg.MEAN) == []
    by_minute = await storage.history(KEY, T0, T0 + HOUR, every_ms=MINUTE, agg=Agg.COUNT)
    assert len(by_minute) == 60


# --- retention ------------------------------------------------------------------------------


async def test_retention_deletes_exactly_the_due_rows_of_each_table(db_path: Path) -> None:
    retention = RetentionConfig(
        raw=timedelta(hours=1),
        rollup_1m=timedelta(hours=2),
        rollup_15m=timedelta(hours=4),
        rollup_1h=timedelta(hours=8),
    )
    now = T0 + 10 * HOUR + 7 * MINUTE + 30_000
    async with SqliteStorage(db_path, retention) as storage:
        # One sample every 30 s for 10 hours, plus samples on the raw cutoff.
        raw_cut = now - HOUR
        batch = [at(T0 + i * 30_000, float(i)) for i in range(20 * 60)]
        batch += [at(raw_cut - 1, -1.0), at(raw_cut, -2.0)]
        await storage.write(batch)
        before = {t: count_rows(db_path, t) for t in ("samples", *TABLES.values())}
        deleted = await storage.apply_retention(now)
        after = {t: count_rows(db_path, t) for t in before}
        assert deleted == sum(before[t] - after[t] for t in before)

        assert inspect(db_path, "SELECT min(ts_ms) FROM samples") == [(raw_cut,)]
        for level, table, hours in (
            (Level.M1, "rollup_1m", 2),
            (Level.M15, "rollup_15m", 4),
            (Level.H1, "rollup_1h", 8),
        ):
            cut = now - hours * HOUR
            # The oldest bucket kept is the one holding the cutoff; the one before is gone.
            kept = inspect(db_path, f"SELECT min(bucket_ms) FROM {table}")[0][0]  # noqa: S608
            assert kept == floor_to(cut, level.bucket_ms), table
        horizons = dict(inspect(db_path, "SELECT level, horizon_ms FROM retention_horizon"))
        assert horizons == {
            "raw": raw_cut,
            "1m": floor_to(now - 2 * HOUR, MINUTE),
            "15m": floor_to(now - 4 * HOUR, QUARTER),
            "1h": floor_to(now - 8 * HOUR, HOUR),
        }
        # An earlier `now` must not move a horizon back (that data is gone for good).
        assert await storage.apply_retention(now - 5 * HOUR) == 0
        assert dict(inspect(db_path, "SELECT level, horizon_ms FROM retention_horizon")) == horizons


# --- errors -----------------------------------------------------------------------------------


async def test_full_disk_is_unavailable_and_stores_nothing_of_the_batch(db_path: Path) -> None:
    async with SqliteStorage(db_path, FOREVER, max_size_bytes=256 * 1024) as storage:
        written = 0
        failure: StorageUnavailable | None = None
        for n in range(100):
            batch = [at(T0 + (n * 2_000 + i) * 1_000, float(i)) for i in range(2_000)]
            try:
                await storage.write(batch)
            except StorageUnavailable as exc:
                failure = exc
                break
            written += len(batch)
        assert failure is not None, "the size limit was never reached"
        assert "full" in str(failure)
        assert isinstance(failure.__cause__, sqlite3.Error)
        assert "free disk space" in str(failure)
        assert 0 < written < 200_000
        # Exactly the committed batches are there; the one that failed left nothing.
        raw = await storage.history(KEY, 0, 2**62)
        assert len(raw) == written
        # Re-sending what is stored needs no space, so it still succeeds.
        assert await storage.write([at(T0, 0.0)]) == WriteResult(0, 1)


async def test_locked_file_is_unavailable_then_writes_resume(db_path: Path) -> None:
    async with SqliteStorage(db_path, FOREVER, busy_timeout=timedelta(milliseconds=50)) as storage:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        new = SeriesKey("site-a", "meter-3", "voltage_l1_v")
        with pytest.raises(StorageUnavailable, match="locked") as caught:
            await storage.write([at(T0, 230.0, new)])
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        other.close()
        # The series row of the failed transaction was rolled back; the writer must not
        # have kept its id, or this sample would hang off a series that does not exist.
        assert await storage.write([at(T0, 230.0, new)]) == WriteResult(1, 0)
        assert await storage.series() == [new]
        assert [p.value for p in await storage.history(new, T0, T0 + 1)] == [230.0]


async def test_damaged_file_is_a_storage_error_that_says_restore(db_path: Path) -> None:
    db_path.write_bytes(random.Random(3).randbytes(16_384))
    db_path.chmod(0o600)
    with pytest.raises(StorageError, match="restore") as caught:
        async with SqliteStorage(db_path):
            pass
    assert not isinstance(caught.value, StorageUnavailable)


async def test_foreign_database_is_refused(db_path: Path) -> None:
    inspect(db_path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(StorageError, match="did not create"):
        async with SqliteStorage(db_path):
            pass


async def test_a_version_1_file_gains_the_events_table_and_keeps_its_data(
    db_path: Path,
) -> None:
    async with SqliteStorage(db_path) as storage:
        await storage.write([at(T0, 1.0)])
    # What version 1 looked like: no events table.
    inspect(db_path, "DROP TABLE events")
    inspect(db_path, "PRAGMA user_version = 1")
    async with SqliteStorage(db_path) as storage:
        assert await storage.write_events([Event("s", T0, "info", "x", "after upgrade")]) == 1
        assert [p.value for p in await storage.history(KEY, T0, T0 + 1)] == [1.0]
    assert inspect(db_path, "PRAGMA user_version") == [(2,)]


async def test_newer_schema_is_refused(db_path: Path) -> None:
    async with SqliteStorage(db_path):
        pass
    inspect(db_path, "PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        async with SqliteStorage(db_path):
            pass


async def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="does not exist"):
        async with SqliteStorage(tmp_path / "no" / "such" / "dir.db"):
            pass


# --- threads, grouping, concurrency ------------------------------------------------------------


async def test_queued_batches_commit_in_submission_order_with_their_own_counts(
    storage: SqliteStorage,
) -> None:
    def run(first: int, last: int, value: float) -> list[Sample]:
        return [at(T0 + i, value) for i in range(first, last)]

    # A big batch first keeps the writer busy, so the following ones queue and are
    # committed together.
    filler = [at(T0 + HOUR + i, 0.0, SeriesKey("site-a", "filler", "p_w")) for i in range(50_000)]
    results = await asyncio.gather(
        storage.write(filler),
        storage.write(run(0, 10, 1.0)),
        storage.write(run(5, 15, 2.0)),
        storage.write([*run(100, 105, 3.0), at(T0 + 200, math.nan)]),
        storage.write(run(0, 20, 4.0)),
        return_exceptions=True,
    )
    assert results[0] == WriteResult(50_000, 0)
    assert results[1] == WriteResult(10, 0)
    assert results[2] == WriteResult(5, 5)
    assert isinstance(results[3], ValueError)
    assert results[4] == WriteResult(5, 15)
    values = {p.ts_ms - T0: p.value for p in await storage.history(KEY, T0, T0 + HOUR)}
    assert values == {**dict.fromkeys(range(10), 1.0), **dict.fromkeys(range(10, 15), 2.0),
                      **dict.fromkeys(range(15, 20), 4.0)}  # fmt: skip


async def test_a_batch_the_schema_refuses_fails_alone(storage: SqliteStorage) -> None:
    filler = [at(T0 + HOUR + i, 0.0) for i in range(50_000)]
    bad = [at(T0 + 1, 1.0), Sample(KEY.site, KEY.device, KEY.point, T0 + 0.5, 1.0)]  # type: ignore[arg-type]
    results = await asyncio.gather(
        storage.write(filler),
        storage.write([at(T0 + 10, 1.0)]),
        storage.write(bad),
        storage.write([at(T0 + 20, 1.0)]),
        return_exceptions=True,
    )
    assert results[0] == WriteResult(50_000, 0)
    assert results[1] == WriteResult(1, 0)
    assert isinstance(results[2], ValueError)
    assert "ts_ms must be an integer" in str(results[2])
    assert results[3] == WriteResult(1, 0)
    assert [p.ts_ms for p in await storage.history(KEY, T0, T0 + 100)] == [T0 + 10, T0 + 20]


async def test_series_registered_by_another_writer_keeps_one_id(db_path: Path) -> None:
    async with SqliteStorage(db_path, FOREVER) as first, SqliteStorage(db_path, FOREVER) as second:
        await first.write([at(T0, 1.0)])
        # `second` loaded its series cache before `first` registered KEY.
        assert await second.write([at(T0, 9.0), at(T0 + 1, 2.0)]) == WriteResult(1, 1)
        assert await first.series() == [KEY]
        assert [(p.ts_ms, p.value) for p in await second.history(KEY, 0, 2**62)] == [
            (T0, 1.0),
            (T0 + 1, 2.0),
        ]


async def test_event_loop_keeps_running_during_a_large_write(storage: SqliteStorage) -> None:
    """The loop gets control again and again while 100k samples are written: the write is
    sliced and runs on the writer thread, not in one blocking call. (How long the loop is
    held is a performance figure, measured by benchmarks, not asserted here.)"""
    batch = [
        at(T0 + i, float(i), SeriesKey("site-a", f"d{i % 100}", "p_w")) for i in range(100_000)
    ]
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0)
            ticks += 1

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running before the write starts
    ticks = 0
    result = await storage.write(batch)
    done.set()
    await tick
    assert result.written == 100_000
    assert ticks >= 10, ticks


async def test_cancelled_write_leaves_storage_consistent(storage: SqliteStorage) -> None:
    batch = [at(T0 + i, 1.0) for i in range(20_000)]
    task = asyncio.create_task(storage.write(batch))
    await asyncio.sleep(0)  # let it queue
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Whether or not the cancelled batch got committed, re-sending it completes the data.
    result = await storage.write(batch)
    assert result.written + result.duplicates == 20_000
    (count,) = await storage.history(KEY, T0, T0 + HOUR, every_ms=HOUR, agg=Agg.COUNT)
    assert count.value == 20_000.0


async def test_open_and_close_are_idempotent(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    await storage.open()
    await storage.open()
    await storage.write([at(T0, 1.0)])
    await storage.close()
    await storage.close()
    with pytest.raises(StorageError, match="not open"):
        await storage.latest("site-a")
    async with storage:  # reopening the same object works
        assert [v.value for v in await storage.latest("site-a")] == [1.0]
