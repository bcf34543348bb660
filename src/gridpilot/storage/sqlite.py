"""SQLite storage backend: the default, a single file, nothing to install.

Layout (schema version 2, ``PRAGMA user_version``; version 1 files gain ``events``)::

    series(id INTEGER PRIMARY KEY, site, device, point, UNIQUE(site, device, point))
    samples(series_id, ts_ms, value, PRIMARY KEY(series_id, ts_ms)) WITHOUT ROWID
    rollup_1m / rollup_15m / rollup_1h(series_id, bucket_ms, min, max, sum, count,
        last_ts, last_value, PRIMARY KEY(series_id, bucket_ms)) WITHOUT ROWID
    latest(series_id PRIMARY KEY, ts_ms, value)       -- newest sample of each series
    retention_horizon(level PRIMARY KEY, horizon_ms)  -- where retention has cut each level
    events(site, ts_ms, source, message, level, PRIMARY KEY(site, ts_ms, source, message))

Threads: one writer thread owns the only writing connection; reads go to reader threads
with their own connections. WAL mode lets readers see the last commit while the writer
works. See ``_threads`` for why these are dedicated threads and how the loop is never
blocked.

Write path, one transaction per group of queued batches:

1. stage the batch in a temporary table keyed like ``samples`` with ``INSERT OR IGNORE``,
   in submission order, so a duplicate inside the batch (or the group) keeps its first value;
2. delete from the stage what ``samples`` already holds (the anti-join): the first value
   ever written wins and a re-sent sample changes nothing;
3. insert what is left, and fold only those new samples into the three rollups and the
   ``latest`` table with upserts; a re-sent sample can therefore never double a count or sum.
   The stage is grouped once, into 1-minute partials (temporary table ``agg``); the 1m
   rollup takes them as they are and the 15m and 1h rollups fold them.

The stage is filled with multi-row ``INSERT ... VALUES`` statements of ``_STAGE_ROWS``
samples, not ``executemany``: sqlite3 drops and re-takes the GIL around every statement
step, and under ingest load each re-take waits for the event loop's thread.

Cost model (measured, see ``benchmarks/storage/bench_sqlite.py``): a commit appends one WAL
frame per page it touched, and ``samples`` is ordered by series, so a commit touches about
one page of ``samples`` and one of each rollup per *series* in it. Throughput therefore
grows with samples per series per commit; the writer merges queued batches (group commit)
so that callers keeping a few writes in flight get large transactions under load.

Errors (all raised ``from`` the sqlite3 error)::

    StorageError                    damaged file, newer schema, anything unexpected
     +-- StorageUnavailable         disk full, locked, I/O error, cannot open: retry later
    ValueError                      a sample that should never have reached storage
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import lru_cache, partial
from itertools import chain
from math import isfinite
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast

from gridpilot.config.models import RetentionConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage._threads import ConnectionThread, GroupHandler, least_busy
from gridpilot.storage.base import (
    Agg,
    Event,
    HistoryColumns,
    HistoryJson,
    HistoryPoint,
    LatestValue,
    Level,
    StorageError,
    StorageUnavailable,
    WriteResult,
)
from gridpilot.storage.levels import ROLLUP_LEVELS, choose_level, horizon_after, plan_pieces

_log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2

ROLLUP_TABLES: Final[dict[Level, str]] = {
    Level.M1: "rollup_1m",
    Level.M15: "rollup_15m",
    Level.H1: "rollup_1h",
}

# Writer tuning. The hot pages of a busy site are about one page of each table per series;
# a 64 MiB cache keeps 2,000+ series' worth resident so upserts do not re-read them.
_WRITER_CACHE_KIB: Final = 64 * 1024
_READER_CACHE_KIB: Final = 16 * 1024
# Checkpoint every 64 MiB of WAL instead of SQLite's 4 MiB: a busy commit alone touches
# thousands of pages, and the default would run a checkpoint (with its fsync) inside nearly
# every commit. journal_size_limit truncates the file back after a checkpoint.
_WAL_AUTOCHECKPOINT_PAGES: Final = 16_384
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024

# Retention deletes in many small transactions so that writes queued meanwhile wait for at
# most one of them: a few series at a time, and a bounded slice of time per pass.
_RETENTION_SERIES_PER_PASS: Final = 16
_RETENTION_SLICE_MS: Final[dict[Level, int]] = {
    Level.RAW: 3_600_000,  # an hour of samples (3,600 rows per 1 Hz series)
    Level.M1: 2_000 * Level.M1.bucket_ms,
    Level.M15: 2_000 * Level.M15.bucket_ms,
    Level.H1: 2_000 * Level.H1.bucket_ms,
}

# _SQL_NOTE: SQL here is assembled only from this module's constants (table and column
# names, bucket sizes, numbered placeholders); every value from outside is a bound parameter.
_ROLLUP_COLUMNS = """
    series_id  INTEGER NOT NULL,
    bucket_ms  INTEGER NOT NULL,  -- bucket start, epoch ms, aligned to the epoch
    min        REAL    NOT NULL,
    max        REAL    NOT NULL,
    sum        REAL    NOT NULL,
    count      INTEGER NOT NULL,
    last_ts    INTEGER NOT NULL,  -- timestamp of the newest sample in the bucket
    last_value REAL    NOT NULL,
    PRIMARY KEY (series_id, bucket_ms)
"""

_SCHEMA: Final = (
    """CREATE TABLE series (
        id     INTEGER PRIMARY KEY,
        site   TEXT NOT NULL,
        device TEXT NOT NULL,
        point  TEXT NOT NULL,
        UNIQUE (site, device, point)
    ) STRICT""",
    """CREATE TABLE samples (
        series_id INTEGER NOT NULL,
        ts_ms     INTEGER NOT NULL,
        value     REAL    NOT NULL,
        PRIMARY KEY (series_id, ts_ms)
    ) STRICT, WITHOUT ROWID""",
    *(
        f"CREATE TABLE {table} ({_ROLLUP_COLUMNS}) STRICT, WITHOUT ROWID"
        for table in ROLLUP_TABLES.values()
    ),
    # One row per series, kept by write(): latest() reads it instead of probing every
    # series' samples, and it survives raw retention (the newest value stays known).
    """CREATE TABLE latest (
        series_id INTEGER PRIMARY KEY,
        ts_ms     INTEGER NOT NULL,
        value     REAL    NOT NULL
    ) STRICT""",
    """CREATE TABLE retention_horizon (
        level      TEXT PRIMARY KEY,
        horizon_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID""",
)
# Added by schema version 2: alarms and notable changes of each site (ingest stores what is
# published on .../events), newest first by the key's order read backwards.
_EVENTS_SCHEMA: Final = (
    """CREATE TABLE events (
        site    TEXT    NOT NULL,
        ts_ms   INTEGER NOT NULL,
        source  TEXT    NOT NULL,
        message TEXT    NOT NULL,
        level   TEXT    NOT NULL,
        PRIMARY KEY (site, ts_ms, source, message)
    ) STRICT, WITHOUT ROWID""",
)

# The stage of one write transaction: keyed like samples, so INSERT OR IGNORE drops
# in-batch duplicates (keeping the first), and `batch` tells whose sample each row is.
_STAGE_TABLE: Final = """CREATE TEMP TABLE stage (
    series_id INTEGER NOT NULL,
    ts_ms     INTEGER NOT NULL,
    value     REAL    NOT NULL,
    batch     INTEGER NOT NULL,
    PRIMARY KEY (series_id, ts_ms)
) STRICT, WITHOUT ROWID"""

_DROP_KNOWN: Final = """
DELETE FROM stage WHERE EXISTS (
    SELECT 1 FROM samples AS s WHERE s.series_id = stage.series_id AND s.ts_ms = stage.ts_ms
)"""

_INSERT_NEW: Final = (
    "INSERT INTO samples (series_id, ts_ms, value) SELECT series_id, ts_ms, value FROM stage"
)


def _bucket_sql(column: str, size: int | str) -> str:
    """SQL for the epoch-aligned bucket start of ``column``; floors for negative values too
    (SQLite's % truncates toward zero)."""
    return f"({column} - (({column} % {size}) + {size}) % {size})"


# The new samples' 1-minute partial aggregates, computed once per transaction: the 1m
# rollup takes them as they are, the 15m and 1h rollups fold them (far fewer rows than the
# stage: up to 60 per series and minute at 1 Hz), so the stage is grouped once, not 3 times.
_AGG_TABLE: Final = """CREATE TEMP TABLE agg (
    series_id INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    mn REAL NOT NULL, mx REAL NOT NULL, sm REAL NOT NULL, ct INTEGER NOT NULL,
    lts INTEGER NOT NULL, lv REAL NOT NULL,
    PRIMARY KEY (series_id, bucket_ms)
) STRICT, WITHOUT ROWID"""

_FINEST: Final = Level.M1

# `lv` comes from a keyed lookup of the group's newest sample in the stage: SQLite's
# bare-column shortcut is only defined for a query with a single min()/max().
_FILL_AGG: Final = f"""
INSERT INTO agg (series_id, bucket_ms, mn, mx, sm, ct, lts, lv)
SELECT g.series_id, g.bucket_ms, g.mn, g.mx, g.sm, g.ct, g.lts,
       (SELECT n.value FROM stage AS n WHERE n.series_id = g.series_id AND n.ts_ms = g.lts)
FROM (
    SELECT series_id, {_bucket_sql("ts_ms", _FINEST.bucket_ms)} AS bucket_ms,
           min(value) AS mn, max(value) AS mx, sum(value) AS sm, count(*) AS ct,
           max(ts_ms) AS lts
    FROM stage GROUP BY series_id, bucket_ms
) AS g"""  # noqa: S608 - see _SQL_NOTE

_UPSERT_TAIL: Final = """
WHERE true  -- required by SQLite's parser between SELECT ... and ON CONFLICT
ON CONFLICT (series_id, bucket_ms) DO UPDATE SET
    min = min(min, excluded.min),
    max = max(max, excluded.max),
    sum = sum + excluded.sum,
    count = count + excluded.count,
    last_value = CASE WHEN excluded.last_ts > last_ts THEN excluded.last_value
                      ELSE last_value END,
    last_ts = max(last_ts, excluded.last_ts)"""


def _rollup_upsert_sql(level: Level) -> str:
    head = (
        f"INSERT INTO {ROLLUP_TABLES[level]} "
        "(series_id, bucket_ms, min, max, sum, count, last_ts, last_value)"
    )
    if level is _FINEST:
        columns = "series_id, bucket_ms, mn, mx, sm, ct, lts, lv"
        return f"{head} SELECT {columns} FROM agg{_UPSERT_TAIL}"  # noqa: S608 - see _SQL_NOTE
    # The newest 1m partial of each group holds its last value: a keyed lookup in agg.
    return f"""{head}
SELECT g.series_id, g.bucket_ms, g.mn, g.mx, g.sm, g.ct, g.lts,
       (SELECT a.lv FROM agg AS a WHERE a.series_id = g.series_id
            AND a.bucket_ms = {_bucket_sql("g.lts", _FINEST.bucket_ms)})
FROM (
    SELECT series_id, {_bucket_sql("bucket_ms", level.bucket_ms)} AS bucket_ms,
           min(mn) AS mn, max(mx) AS mx, sum(sm) AS sm, sum(ct) AS ct, max(lts) AS lts
    FROM agg GROUP BY series_id, 2
) AS g{_UPSERT_TAIL}"""  # noqa: S608 - see _SQL_NOTE


_ROLLUP_UPSERTS: Final = tuple(_rollup_upsert_sql(level) for level in ROLLUP_LEVELS)

# One max() and a bare column: SQLite documents that `value` then comes from the row with
# the greatest ts_ms. Samples in the stage are new, so none can tie with the stored one.
_LATEST_UPSERT: Final = """
INSERT INTO latest (series_id, ts_ms, value)
SELECT series_id, max(ts_ms), value FROM stage WHERE true GROUP BY series_id
ON CONFLICT (series_id) DO UPDATE SET ts_ms = excluded.ts_ms, value = excluded.value
WHERE excluded.ts_ms > latest.ts_ms"""

# Aggregates over the union of pieces (columns t, mn, mx, sm, ct, lts, lv), per output
# bucket. LAST uses the bare-column rule: one max() per query, lv from that row.
_AGG_SQL: Final[dict[Agg, str]] = {
    Agg.MEAN: "sum(sm) / sum(ct) AS v",
    Agg.MIN: "min(mn) AS v",
    Agg.MAX: "max(mx) AS v",
    Agg.SUM: "sum(sm) AS v",
    Agg.COUNT: "sum(ct) AS v",
    Agg.LAST: "lv AS v, max(lts)",
}

# The aggregate of one finished rollup bucket, read without grouping (see _history_sql).
_DIRECT_SQL: Final[dict[Agg, str]] = {
    Agg.MEAN: "sum / count AS v",
    Agg.MIN: "min AS v",
    Agg.MAX: "max AS v",
    Agg.SUM: "sum AS v",
    Agg.COUNT: "count AS v",
    Agg.LAST: "last_value AS v, last_ts",
}

# Every history query names its columns t (time) and v (value), so that one wrapper turns
# any of them into two JSON arrays rendered by SQLite (``history_json``). A subquery with
# ORDER BY under an aggregate is not flattened, so the arrays keep the rows' order.
_JSON_SQL: Final = "SELECT count(*), json_group_array(t), json_group_array(v) FROM ({})"

# Samples per pass of the writer's C-level loops (see _columns).
_GIL_SLICE: Final = 4_096

# Rows per staging statement (3 parameters each, SQLite allows 32,766). One multi-row
# INSERT is one sqlite3_step, so the writer gives up and re-takes the GIL once per
# _STAGE_ROWS samples: executemany() did so once per *row*, and every re-take waits for the
# event loop's thread to yield the GIL (up to the 5 ms switch interval while it parses
# MQTT), which made staging collapse to a few thousand rows/s under ingest load.
_STAGE_ROWS: Final = 8_000


@lru_cache(maxsize=64)
def _stage_sql(rows: int, batch: int) -> str:
    values = ",".join([f"(?,?,?,{batch})"] * rows)
    return f"INSERT OR IGNORE INTO stage VALUES {values}"  # noqa: S608 - see _SQL_NOTE


_key_of = attrgetter("site", "device", "point")
_ts_of = attrgetter("ts_ms")
_value_of = attrgetter("value")

SeriesTuple = tuple[str, str, str]
_T = TypeVar("_T")
_Writer = ConnectionThread[sqlite3.Connection, Sequence[Sample], WriteResult]
_Reader = ConnectionThread[sqlite3.Connection, None, None]


class SqliteStorage:
    """Time series in one SQLite file (WAL mode, ``synchronous=NORMAL``).

    Use as an async context manager (or ``await open()`` / ``await close()``)::

        async with SqliteStorage(path, config.storage.retention) as storage:
            await storage.write(samples)

    ``readers`` reader threads serve queries; at most ``max_pending_writes`` write calls
    are queued (further callers wait); queued batches are committed together up to
    ``max_group_samples`` samples per transaction. ``busy_timeout`` is how long a write
    waits for a lock held by another process before failing with StorageUnavailable.
    ``max_size_bytes`` caps the database file (writes then fail as when the disk is full).
    """

    def __init__(
        self,
        path: Path | str,
        retention: RetentionConfig | None = None,
        *,
        readers: int = 2,
        max_pending_writes: int = 16,
        max_group_samples: int = 50_000,
        busy_timeout: timedelta = timedelta(seconds=5),
        max_size_bytes: int | None = None,
    ) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self._path = Path(path)
        self._retention = retention if retention is not None else RetentionConfig()
        self._readers_wanted = readers
        self._max_pending_writes = max_pending_writes
        self._max_group_samples = max_group_samples
        self._busy_timeout_s = busy_timeout.total_seconds()
        self._max_size_bytes = max_size_bytes
        self._writer: _Writer | None = None
        self._readers: list[_Reader] = []
        # Writer-thread state: series ids known to be committed. Only the writer thread
        # touches it (ids of a transaction are added after its commit).
        self._series_ids: dict[SeriesTuple, int] = {}

    @property
    def path(self) -> Path:
        return self._path

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> Self:
        """Open (creating the file and schema if needed) and start the threads."""
        if self._writer is not None:
            return self
        writer: _Writer = ConnectionThread(
            "gridpilot-sqlite-writer",
            self._open_writer,
            max_pending=self._max_pending_writes,
            group=GroupHandler(self._write_group, len, self._max_group_samples),
        )
        await writer.start()
        readers: list[_Reader] = []
        try:
            for n in range(self._readers_wanted):
                reader: _Reader = ConnectionThread(
                    f"gridpilot-sqlite-reader-{n}", self._open_reader, max_pending=64
                )
                await reader.start()
                readers.append(reader)
        except BaseException:
            for reader in readers:
                await reader.stop()
            await writer.stop()
            raise
        self._writer, self._readers = writer, readers
        return self

    async def close(self) -> None:
        """Finish queued work, close the connections, stop the threads. Idempotent."""
        writer, readers = self._writer, self._readers
        self._writer, self._readers = None, []
        for reader in readers:
            await reader.stop()
        if writer is not None:
            await writer.stop()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- Storage protocol --------------------------------------------------------------

    async def write(self, samples: Sequence[Sample]) -> WriteResult:
        """Store samples idempotently and update rollups; committed when this returns.

        Raises ValueError (naming the series) when a value is not a finite number; then
        nothing of the batch is stored. Raises StorageUnavailable when the disk is full,
        the file is locked or I/O fails: nothing of the batch is stored, retry later.
        """
        if not samples:
            return WriteResult(0, 0)
        # A private copy: the writer thread reads it after this coroutine has yielded.
        return await self._writer_thread().call_grouped(tuple(samples))

    async def latest(self, site: str, device: str | None = None) -> list[LatestValue]:
        """Newest value of every series of a site (or of one device), sorted by series."""
        return await self._read(partial(_read_latest, site=site, device=device, path=self._path))

    async def history(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> list[HistoryPoint]:
        """Values in [start_ms, end_ms), oldest first: raw samples when ``every_ms`` is
        None, else one aggregate per non-empty ``every_ms`` bucket (aligned to the epoch,
        ``ts_ms`` = bucket start). Buckets at unaligned ends hold only the samples inside
        the range. Aggregates come from the coarsest rollup that answers (see
        ``levels.choose_level``); buckets without samples are absent."""
        rows = await self._history_rows(series, start_ms, end_ms, every_ms, agg)
        if every_ms is None:
            # (ts_ms, value) rows of a STRICT REAL column: already what a HistoryPoint holds.
            return list(map(HistoryPoint._make, rows))
        # Aggregates: COUNT is an integer, LAST carries its timestamp as a third column.
        return [HistoryPoint(r[0], float(r[1])) for r in rows]

    async def history_columns(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> HistoryColumns:
        """What ``history`` answers, as two columns (no object per value)."""
        rows = await self._history_rows(series, start_ms, end_ms, every_ms, agg)
        if not rows:
            return HistoryColumns((), ())
        ts_ms, values, *_ = zip(*rows, strict=True)
        if every_ms is not None:
            values = tuple(map(float, values))  # COUNT is an integer
        return HistoryColumns(ts_ms, values)

    async def history_json(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> HistoryJson:
        """What ``history_columns`` answers, as two JSON arrays rendered by SQLite itself:
        no Python object per value (a day of 1-second samples: about half the time)."""
        parts = await self._history_rows(series, start_ms, end_ms, every_ms, agg, as_json=True)
        parts = [part for part in parts if part[0]]
        if len(parts) == 1:
            count, ts_json, values_json = parts[0]
            return HistoryJson(count, ts_json.encode(), values_json.encode())
        # Several pieces (partial edge buckets around whole rollup buckets): splice arrays.
        return HistoryJson(
            sum(part[0] for part in parts),
            ("[" + ",".join(part[1][1:-1] for part in parts) + "]").encode(),
            ("[" + ",".join(part[2][1:-1] for part in parts) + "]").encode(),
        )

    async def _history_rows(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None,
        agg: Agg,
        *,
        as_json: bool = False,
    ) -> list[tuple[Any, ...]]:
        if every_ms is not None and every_ms <= 0:
            raise ValueError(f"every_ms must be positive, got {every_ms}")
        if start_ms >= end_ms:
            return []
        read = partial(
            _read_history,
            series=series,
            start_ms=start_ms,
            end_ms=end_ms,
            every_ms=every_ms,
            agg=Agg(agg),
            path=self._path,
            as_json=as_json,
        )
        return await self._read(read)

    async def write_events(self, events: Sequence[Event]) -> int:
        """Store events, each once (same site, time, source and message); returns how many
        were new. One short transaction on the writer thread."""
        if not events:
            return 0
        rows = [(e.site, e.ts_ms, e.source, e.message, e.level) for e in events]
        return await self._writer_thread().call(partial(_write_events, rows=rows, path=self._path))

    async def events(
        self, site: str, *, limit: int, before_ms: int | None = None, level: str | None = None
    ) -> list[Event]:
        """The site's events newest first, at most ``limit``; with ``before_ms`` only older
        ones (the next page); with ``level`` only that level."""
        return await self._read(
            partial(
                _read_events,
                site=site,
                limit=limit,
                before_ms=before_ms,
                level=level,
                path=self._path,
            )
        )

    async def series(self, site: str | None = None) -> list[SeriesKey]:
        """Every series ever written (of a site), sorted. Retention keeps the list."""
        return await self._read(partial(_read_series, site=site, path=self._path))

    async def apply_retention(self, now_ms: int) -> int:
        """Delete what each level's retention no longer covers; returns rows deleted.

        Raw samples older than ``now_ms - retention.raw`` go; a rollup bucket goes once all
        of it is older than its level's cutoff. Levels with retention None are kept. Works
        in short transactions, so writes are delayed by at most one of them.
        """
        writer = self._writer_thread()
        deleted = 0
        if self._retention.events is not None:
            before_ms = now_ms - self._retention.events // timedelta(milliseconds=1)
            deleted += await writer.call(
                partial(_delete_old_events, before_ms=before_ms, path=self._path)
            )
        cutoffs = _cutoffs(self._retention, now_ms)
        if not cutoffs:
            return deleted
        horizons = {level: horizon_after(level, cutoff) for level, cutoff in cutoffs.items()}
        # Horizons first, in their own commit: from then on no reader picks a level for a
        # range that the deletes below are about to thin out.
        series_ids = await writer.call(
            partial(_advance_horizons, horizons=horizons, path=self._path)
        )
        for level, horizon in horizons.items():
            for first in range(0, len(series_ids), _RETENTION_SERIES_PER_PASS):
                chunk = series_ids[first : first + _RETENTION_SERIES_PER_PASS]
                done = False
                while not done:
                    count, done = await writer.call(
                        partial(
                            _delete_slice,
                            level=level,
                            series_ids=chunk,
                            horizon_ms=horizon,
                            path=self._path,
                        )
                    )
                    deleted += count
        return deleted

    # --- plumbing ------------------------------------------------------------------------

    def _writer_thread(self) -> _Writer:
        if self._writer is None:
            raise StorageError(f"storage {self._path} is not open; use `async with` or open()")
        return self._writer

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if not self._readers:
            raise StorageError(f"storage {self._path} is not open; use `async with` or open()")
        return await least_busy(self._readers).call(fn)

    # --- writer thread -------------------------------------------------------------------

    def _open_writer(self) -> sqlite3.Connection:
        _prepare_file(self._path)
        conn = _connect(self._path, self._busy_timeout_s)
        try:
            _check_wal(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], self._path)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{_WRITER_CACHE_KIB}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
            if self._max_size_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                pages = max(1, self._max_size_bytes // page_size)
                conn.execute(f"PRAGMA max_page_count = {pages}")
            _migrate(conn, self._path)
            conn.execute(_STAGE_TABLE)
            conn.execute(_AGG_TABLE)
            self._series_ids = {
                (site, device, point): sid
                for sid, site, device, point in conn.execute(
                    "SELECT id, site, device, point FROM series"
                )
            }
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, self._path, "opening the database") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        conn = _connect(self._path, self._busy_timeout_s)
        try:
            conn.execute("PRAGMA query_only = ON")
            conn.execute(f"PRAGMA cache_size = -{_READER_CACHE_KIB}")
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, self._path, "opening a read connection") from exc
        return conn

    def _write_group(
        self, conn: sqlite3.Connection, batches: list[Sequence[Sample]]
    ) -> list[WriteResult | BaseException]:
        """Commit queued batches in one transaction; one outcome per batch, in order."""
        outcomes: list[WriteResult | BaseException] = [WriteResult(0, 0)] * len(batches)
        staged: list[tuple[int, _Columns]] = []
        for index, batch in enumerate(batches):
            try:
                staged.append((index, _columns(batch)))
            except ValueError as exc:  # that batch alone fails; the others go ahead
                outcomes[index] = exc
        if not staged:
            return outcomes
        try:
            written = self._commit(conn, [columns for _, columns in staged])
        except BaseException as exc:  # noqa: BLE001 - becomes the callers' outcome
            if len(staged) == 1:
                outcomes[staged[0][0]] = exc
                return outcomes
            # Something in the merged transaction failed. Retry the batches one by one so
            # that one bad batch (a wrong type, say) does not fail its neighbours; if the
            # cause is the disk or a lock, each retry fails quickly the same way.
            for index, columns in staged:
                try:
                    (count,) = self._commit(conn, [columns])
                except BaseException as retry_exc:  # noqa: BLE001 - that caller's outcome
                    outcomes[index] = retry_exc
                else:
                    outcomes[index] = WriteResult(count, len(columns.ts) - count)
            return outcomes
        for (index, columns), count in zip(staged, written, strict=True):
            outcomes[index] = WriteResult(count, len(columns.ts) - count)
        return outcomes

    def _commit(self, conn: sqlite3.Connection, batches: list[_Columns]) -> list[int]:
        """One transaction for ``batches``; returns how many new samples each one held."""
        new_ids: dict[SeriesTuple, int] = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            for number, columns in enumerate(batches):
                for first in range(0, len(columns.keys), _STAGE_ROWS):
                    last = first + _STAGE_ROWS
                    ids = self._ids_of(conn, columns.keys[first:last], new_ids)
                    rows = zip(ids, columns.ts[first:last], columns.values[first:last], strict=True)
                    params = tuple(chain.from_iterable(rows))
                    conn.execute(_stage_sql(len(params) // 3, number), params)
            conn.execute(_DROP_KNOWN)
            if len(batches) == 1:
                per_batch = None
            else:
                per_batch = dict(
                    conn.execute("SELECT batch, count(*) FROM stage GROUP BY batch").fetchall()
                )
            inserted = conn.execute(_INSERT_NEW).rowcount
            if inserted:
                conn.execute(_FILL_AGG)
                for upsert in _ROLLUP_UPSERTS:
                    conn.execute(upsert)
                conn.execute(_LATEST_UPSERT)
                conn.execute("DELETE FROM agg")
            conn.execute("DELETE FROM stage")
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            _rollback(conn)
            raise ValueError(
                f"a sample does not fit the schema ({exc}): ts_ms must be an integer "
                "(epoch milliseconds) and value a float; nothing of the batch was stored"
            ) from exc
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _translate(exc, self._path, "writing samples") from exc
        except BaseException:
            _rollback(conn)
            raise
        # Only now are the new series rows durable; caching them earlier would hand out
        # ids that a rollback had taken back.
        self._series_ids.update(new_ids)
        if per_batch is None:
            return [inserted]
        return [per_batch.get(number, 0) for number in range(len(batches))]

    def _ids_of(
        self,
        conn: sqlite3.Connection,
        keys: list[SeriesTuple],
        new_ids: dict[SeriesTuple, int],
    ) -> list[int]:
        cached = self._series_ids
        ids = list(map(cached.get, keys))
        if None not in ids:  # the steady state: every series seen before
            return cast(list[int], ids)
        resolved: list[int] = []
        for key, known in zip(keys, ids, strict=True):
            sid = known if known is not None else new_ids.get(key)
            if sid is None:
                sid = _insert_series(conn, key)
                new_ids[key] = sid
            resolved.append(sid)
        return resolved


class _Columns:
    """A batch split into columns, checked: the writer thread's view of a batch."""

    __slots__ = ("keys", "ts", "values")

    def __init__(self, keys: list[SeriesTuple], ts: list[int], values: list[float]) -> None:
        self.keys = keys
        self.ts = ts
        self.values = values


def _columns(batch: Sequence[Sample]) -> _Columns:
    # map() over attrgetters keeps the per-sample work in C, but a C loop holds the GIL
    # from start to end: slices of _GIL_SLICE samples let the event loop's thread in
    # between, so even a 100k-sample batch never stalls the loop for long.
    keys: list[SeriesTuple] = []
    ts: list[int] = []
    values: list[float] = []
    for first in range(0, len(batch), _GIL_SLICE):
        part = batch[first : first + _GIL_SLICE]
        part_values: list[float] = list(map(_value_of, part))
        try:
            finite = all(map(isfinite, part_values))
        except TypeError:
            finite = False
        if not finite:
            _refuse_non_finite(part)
        values += part_values
        keys += map(_key_of, part)
        ts += map(_ts_of, part)
    return _Columns(keys, ts, values)


def _refuse_non_finite(samples: Sequence[Sample]) -> None:
    for sample in samples:
        value = sample.value
        if not isinstance(value, int | float) or not isfinite(value):
            raise ValueError(
                f"sample {sample.site}/{sample.device}/{sample.point} at ts_ms={sample.ts_ms} "
                f"has value {value!r}, not a finite number; ingest validation must reject it "
                "before storage - nothing of the batch was stored"
            )


def _insert_series(conn: sqlite3.Connection, key: SeriesTuple) -> int:
    rows = conn.execute(
        "INSERT INTO series (site, device, point) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING RETURNING id",
        key,
    ).fetchall()
    if not rows:  # another process registered it since this one loaded its cache
        rows = conn.execute(
            "SELECT id FROM series WHERE site = ? AND device = ? AND point = ?", key
        ).fetchall()
    sid: int = rows[0][0]
    return sid


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (disk full, I/O); then there is no
    # transaction left to end. The stage is temporary and rolls back with the rest.
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        _log.warning("rollback failed; clearing the write stage", exc_info=True)
    try:
        conn.execute("DELETE FROM stage")
        conn.execute("DELETE FROM agg")
    except sqlite3.Error:
        _log.warning("could not clear the write stage", exc_info=True)


# --- retention (writer thread) ------------------------------------------------------------


def _write_events(
    conn: sqlite3.Connection, *, rows: Sequence[tuple[str, int, str, str, str]], path: Path
) -> int:
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", rows)
            added = conn.total_changes - before
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise _translate(exc, path, f"writing {len(rows)} event(s)") from exc
    return added


def _delete_old_events(conn: sqlite3.Connection, *, before_ms: int, path: Path) -> int:
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = conn.execute("DELETE FROM events WHERE ts_ms < ?", (before_ms,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise _translate(exc, path, "deleting old events") from exc
    return count


def _read_events(
    conn: sqlite3.Connection,
    *,
    site: str,
    limit: int,
    before_ms: int | None,
    level: str | None,
    path: Path,
) -> list[Event]:
    sql = "SELECT ts_ms, level, source, message FROM events WHERE site = ?"
    params: list[object] = [site]
    if before_ms is not None:
        sql += " AND ts_ms < ?"
        params.append(before_ms)
    if level is not None:
        sql += " AND level = ?"
        params.append(level)
    sql += " ORDER BY ts_ms DESC, source, message LIMIT ?"
    params.append(limit)
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise _translate(exc, path, f"reading events of {site}") from exc
    return [Event(site, ts, lvl, source, message) for ts, lvl, source, message in rows]


def _cutoffs(retention: RetentionConfig, now_ms: int) -> dict[Level, int]:
    keep = {
        Level.RAW: retention.raw,
        Level.M1: retention.rollup_1m,
        Level.M15: retention.rollup_15m,
        Level.H1: retention.rollup_1h,
    }
    return {
        level: now_ms - period // timedelta(milliseconds=1)
        for level, period in keep.items()
        if period is not None
    }


def _advance_horizons(
    conn: sqlite3.Connection, horizons: dict[Level, int], path: Path
) -> list[int]:
    """Record where each level is cut (never moving a horizon back); return all series ids."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO retention_horizon (level, horizon_ms) VALUES (?, ?) "
            "ON CONFLICT (level) DO UPDATE SET horizon_ms = max(horizon_ms, excluded.horizon_ms)",
            [(level.value, horizon) for level, horizon in horizons.items()],
        )
        ids = [sid for (sid,) in conn.execute("SELECT id FROM series ORDER BY id")]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise _translate(exc, path, "applying retention") from exc
    return ids


def _delete_slice(
    conn: sqlite3.Connection,
    level: Level,
    series_ids: list[int],
    horizon_ms: int,
    path: Path,
) -> tuple[int, bool]:
    """Delete one slice of what lies before ``horizon_ms`` for a few series.

    Returns (rows deleted, whether nothing before the horizon is left for these series).
    """
    table, column = (
        ("samples", "ts_ms") if level is Level.RAW else (ROLLUP_TABLES[level], "bucket_ms")
    )
    oldest_sql = f"SELECT {column} FROM {table} WHERE series_id = ? ORDER BY {column} LIMIT 1"  # noqa: S608
    try:
        conn.execute("BEGIN IMMEDIATE")
        oldest = [
            row[0] for sid in series_ids for row in conn.execute(oldest_sql, (sid,)).fetchall()
        ]
        start = min(oldest, default=horizon_ms)
        if start >= horizon_ms:
            conn.execute("COMMIT")
            return 0, True
        upto = min(horizon_ms, start + _RETENTION_SLICE_MS[level])
        count = conn.executemany(
            f"DELETE FROM {table} WHERE series_id = ? AND {column} < ?",  # noqa: S608
            [(sid, upto) for sid in series_ids],
        ).rowcount
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise _translate(exc, path, "applying retention") from exc
    return count, upto >= horizon_ms


# --- reads (reader threads) ---------------------------------------------------------------


def _read_series(conn: sqlite3.Connection, site: str | None, path: Path) -> list[SeriesKey]:
    sql = "SELECT site, device, point FROM series"
    params: tuple[str, ...] = ()
    if site is not None:
        sql += " WHERE site = ?"
        params = (site,)
    try:
        rows = conn.execute(sql + " ORDER BY site, device, point", params).fetchall()
    except sqlite3.Error as exc:
        raise _translate(exc, path, "listing series") from exc
    return [SeriesKey(*row) for row in rows]


def _read_latest(
    conn: sqlite3.Connection, site: str, device: str | None, path: Path
) -> list[LatestValue]:
    sql = (
        "SELECT s.site, s.device, s.point, l.ts_ms, l.value "
        "FROM series AS s JOIN latest AS l ON l.series_id = s.id WHERE s.site = ?"
    )
    params: tuple[str, ...] = (site,)
    if device is not None:
        sql += " AND s.device = ?"
        params = (site, device)
    try:
        rows = conn.execute(sql + " ORDER BY s.device, s.point", params).fetchall()
    except sqlite3.Error as exc:
        raise _translate(exc, path, "reading latest values") from exc
    return [LatestValue(SeriesKey(s, d, p), ts, v) for s, d, p, ts, v in rows]


def _read_history(
    conn: sqlite3.Connection,
    *,
    series: SeriesKey,
    start_ms: int,
    end_ms: int,
    every_ms: int | None,
    agg: Agg,
    path: Path,
    as_json: bool = False,
) -> list[tuple[Any, ...]]:
    """The rows of a history answer, oldest first; with ``as_json``, one row per query of
    (count, JSON array of t, JSON array of v) instead (see ``_JSON_SQL``)."""
    try:
        # One snapshot for the horizons and the data, so a retention pass that commits in
        # between cannot pair an old horizon with already-thinned data.
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT id FROM series WHERE site = ? AND device = ? AND point = ?",
                (series.site, series.device, series.point),
            ).fetchone()
            if row is None:
                return []
            if every_ms is None:
                queries = [
                    (
                        "SELECT ts_ms AS t, value AS v FROM samples "
                        "WHERE series_id = :sid AND ts_ms >= :lo AND ts_ms < :hi ORDER BY ts_ms",
                        {"sid": row[0], "lo": start_ms, "hi": end_ms},
                    )
                ]
            else:
                horizons = {
                    Level(level): horizon
                    for level, horizon in conn.execute(
                        "SELECT level, horizon_ms FROM retention_horizon"
                    )
                }
                level = choose_level(every_ms, start_ms, horizons)
                queries = _history_sql(
                    row[0], level, start_ms=start_ms, end_ms=end_ms, every_ms=every_ms, agg=agg
                )
            rows: list[tuple[Any, ...]] = []
            for sql, params in queries:
                if as_json:
                    rows.append(conn.execute(_JSON_SQL.format(sql), params).fetchone())
                else:
                    rows += conn.execute(sql, params).fetchall()
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _translate(exc, path, f"reading history of {series}") from exc
    return rows


def _history_sql(
    series_id: int, level: Level, *, start_ms: int, end_ms: int, every_ms: int, agg: Agg
) -> list[tuple[str, dict[str, int]]]:
    """Queries whose results, concatenated, are the buckets oldest first.

    The range is tiled into pieces (see ``levels.plan_pieces``). A piece of a rollup whose
    bucket is ``every_ms`` holds one finished bucket per row: it is read as it is, in key
    order (a year of 15-minute buckets without a GROUP BY or a sort). The other pieces --
    the partial buckets at the edges, or every piece when ``every_ms`` is coarser than the
    rollup -- are merged per bucket as a UNION ALL of partial aggregates.
    """
    queries: list[tuple[str, dict[str, int]]] = []
    grouped: list[str] = []
    params: dict[str, int] = {"sid": series_id, "every": every_ms}

    def flush() -> None:
        nonlocal grouped, params
        if grouped:
            queries.append(
                (
                    # GROUP BY 1: the result column (named t like the inner one).
                    f"SELECT {_bucket_sql('t', ':every')} AS t, {_AGG_SQL[agg]} "  # noqa: S608
                    f"FROM ({' UNION ALL '.join(grouped)}) GROUP BY 1 ORDER BY 1",
                    params,
                )
            )
        grouped, params = [], {"sid": series_id, "every": every_ms}

    for n, piece in enumerate(plan_pieces(level, start_ms, end_ms)):
        bounds = {"sid": series_id, f"lo{n}": piece.start_ms, f"hi{n}": piece.end_ms}
        if piece.level is not Level.RAW and piece.level.bucket_ms == every_ms:
            flush()
            queries.append(
                (
                    f"SELECT bucket_ms AS t, {_DIRECT_SQL[agg]} "  # noqa: S608
                    f"FROM {ROLLUP_TABLES[piece.level]} WHERE series_id = :sid "
                    f"AND bucket_ms >= :lo{n} AND bucket_ms < :hi{n} ORDER BY bucket_ms",
                    bounds,
                )
            )
            continue
        params.update(bounds)
        if piece.level is Level.RAW:
            grouped.append(
                "SELECT ts_ms AS t, value AS mn, value AS mx, value AS sm, 1 AS ct, "  # noqa: S608
                "ts_ms AS lts, value AS lv FROM samples "
                f"WHERE series_id = :sid AND ts_ms >= :lo{n} AND ts_ms < :hi{n}"
            )
        else:
            grouped.append(
                "SELECT bucket_ms AS t, min AS mn, max AS mx, sum AS sm, count AS ct, "  # noqa: S608
                f"last_ts AS lts, last_value AS lv FROM {ROLLUP_TABLES[piece.level]} "
                f"WHERE series_id = :sid AND bucket_ms >= :lo{n} AND bucket_ms < :hi{n}"
            )
    flush()
    return queries


# --- files, schema, errors ----------------------------------------------------------------


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writes, so
        # the write lock is taken up front instead of failing on upgrade mid-transaction).
        return sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.Error as exc:
        raise _translate(exc, path, "opening the database") from exc


def _prepare_file(path: Path) -> None:
    """Create the database file with mode 0600, or tighten an existing one.

    SQLite would create it with the process umask (often 0644: world-readable site data);
    its -wal and -shm files copy the database file's mode, so setting it here covers them.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except FileNotFoundError as exc:
        raise StorageUnavailable(
            f"cannot create {path}: its directory does not exist; create it or fix storage.path"
        ) from exc
    except PermissionError as exc:
        raise StorageUnavailable(
            f"cannot create {path}: permission denied; make its directory writable by the "
            "user running GridPilot or choose another storage.path"
        ) from exc
    else:
        os.close(fd)
        return
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        _tighten_mode(file)


def _tighten_mode(file: Path) -> None:
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        file.chmod(mode & 0o700)
    except OSError as exc:
        _log.warning(
            "%s is readable by other users (mode %04o) and could not be restricted (%s); "
            "run: chmod 600 %s",
            file,
            mode,
            exc,
            file,
        )
    else:
        _log.warning(
            "%s was readable by other users (mode %04o); restricted it to %04o because it "
            "holds site telemetry",
            file,
            mode,
            mode & 0o700,
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file; refuse files of another schema or program."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        _check_schema(version, objects, path)
        if version == 0:
            for statement in (*_SCHEMA, *_EVENTS_SCHEMA):
                conn.execute(statement)
        elif version == 1:
            for statement in _EVENTS_SCHEMA:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_schema(version: int, objects: int, path: Path) -> None:
    if version == 0 and objects:
        raise StorageError(
            f"{path} is a SQLite database that GridPilot did not create; point "
            "storage.path at a new file"
        )
    if version not in (0, 1, SCHEMA_VERSION):
        raise StorageError(
            f"{path} has schema version {version}, this GridPilot knows "
            f"{SCHEMA_VERSION}; upgrade GridPilot or restore a matching backup"
        )


def _check_wal(mode: str, path: Path) -> None:
    if mode != "wal":
        raise StorageError(
            f"{path}: SQLite cannot use WAL mode here (got {mode!r}); keep the database on "
            "a local filesystem, not a network share"
        )


def _translate(exc: sqlite3.Error, path: Path, action: str) -> StorageError:
    """Map a sqlite3 error to ours, with what the operator should do about it."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    if primary == sqlite3.SQLITE_FULL:
        return StorageUnavailable(
            f"{action}: the disk holding {path} is full or the database reached its size "
            "limit; free disk space or shorten storage.retention, then retry (the "
            "transaction was rolled back)"
        )
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StorageUnavailable(
            f"{action}: {path} stayed locked by another connection or process beyond the "
            "busy timeout; make sure only one GridPilot ingest writes to this file and no "
            "other tool holds a write transaction on it, then retry"
        )
    if primary == sqlite3.SQLITE_IOERR:
        return StorageUnavailable(
            f"{action}: I/O error on {path} ({name}); check the disk and filesystem "
            "(dmesg, `gridpilot doctor`), then retry"
        )
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StorageUnavailable(
            f"{action}: cannot open {path}; check that its directory exists and is "
            "writable by the user running GridPilot"
        )
    if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return StorageUnavailable(
            f"{action}: {path} is read-only for this process; make the file, its -wal and "
            "-shm files and their directory writable by the user running GridPilot"
        )
    if primary == sqlite3.SQLITE_NOMEM:
        return StorageUnavailable(f"{action}: SQLite ran out of memory; retry later")
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StorageError(
            f"{action}: {path} is damaged or not a SQLite database ({exc}); move it aside "
            "and restore a backup (`gridpilot restore`)"
        )
    return StorageError(f"{action} failed on {path}: {exc} ({name})")
