"""PostgreSQL storage backend (psycopg 3): for sites and fleets whose operators run PostgreSQL.

Layout, in one PostgreSQL schema (``storage.postgresql.schema_name``, default
``gridpilot``; schema version in ``gridpilot_meta``)::

    series(id, site, device, point, UNIQUE(site, device, point))
    samples(series_id, ts_ms, value, PRIMARY KEY(series_id, ts_ms))
        PARTITION BY RANGE (ts_ms): one partition per UTC day, samples_pYYYYMMDD
    rollup_1m / rollup_15m / rollup_1h(series_id, bucket_ms, min, max, sum, count,
        last_ts, last_value, PRIMARY KEY(series_id, bucket_ms))
        PARTITION BY RANGE (bucket_ms): 7-, 28- and 364-day partitions
    latest(series_id PRIMARY KEY, ts_ms, value)
    retention_horizon(level PRIMARY KEY, horizon_ms)
    events(site, ts_ms, source, message, level, PRIMARY KEY(site, ts_ms, source, message))

Text columns use the "C" collation, so sort orders are those of SQLite and Python (byte
order), whatever the database's locale.

Semantics are the SQLite backend's, checked by the same contract suite: ``write`` is
idempotent (the first value of an identity wins), rollups at 1 min / 15 min / 1 h with
min/max/sum/count/last are kept current by ``write``, history reads the coarsest level
that answers (``levels``), retention advances per-level horizons.

Write path, one transaction per group of queued batches (as SQLite's writer groups them):

1. the partitions the batch needs are created first, each in a short transaction of its
   own under an advisory lock (so two ingest processes never race on one, and no write
   transaction holds the parent table's lock while it works);
2. *live* groups -- no identity twice, and every sample newer than the newest stored one
   of its series, which the writer remembers (loaded from ``latest``, raised by each
   commit) -- are new for certain: they go by ``COPY ... FROM STDIN (FORMAT BINARY)``
   straight into ``samples``; their 1 min, 15 min and 1 h partials, computed by the writer
   (numpy), by a second COPY into a temporary table; and one statement upserts those into
   the three rollups and ``latest`` (five round trips with BEGIN and COMMIT: on a loaded
   server each one counts). Should another process have stored one of them meanwhile, the primary
   key refuses the COPY, the transaction is rolled back and the group takes the path
   below: the key, not the remembered instant, keeps samples unique;
3. any other group is copied into a temporary stage in submission order, and one statement
   keeps the first staged row of each identity (``DISTINCT ON`` by arrival, skipped when
   the writer saw no identity twice) and inserts it with ``ON CONFLICT DO NOTHING``: a
   redelivered sample changes nothing, also when another process writes the same sample
   concurrently; ``RETURNING`` yields exactly the new samples, which alone are folded
   into 1-minute partials, then upserted into the three rollups and ``latest``;
4. either way a re-sent sample can never double a count or a sum.

Retention: a level's *horizon* moves forward and reads never look behind it, so data is
gone for readers at once and exactly at the cutoff (what the contract asks); partitions
that lie wholly behind the horizon are then dropped (no row-by-row DELETE, no vacuum
debt). Rows behind a horizon inside the partition that holds it stay on disk until that
partition is dropped: at most one partition span per level. Events are deleted by rows.

TimescaleDB is not used even where it is installed: this backend has only been tested on
plain PostgreSQL 15 (Debian's package), with native declarative partitioning.

Threads: as SQLite's backend, one writer thread and reader threads, each owning one
connection (``_threads``); psycopg's blocking calls therefore never run on the event loop.
Every network call is bounded: ``connect_timeout``, a server-side ``statement_timeout``,
``lock_timeout`` for DDL, TCP keepalives and ``tcp_user_timeout`` for a peer that vanishes.
A lost connection is reopened with backoff for up to ``retry_for``; writes are idempotent,
so a transaction whose outcome was lost with the connection is simply sent again (its
samples may then be counted as duplicates).

Errors::

    StorageError                    wrong schema, anything unexpected
     +-- StorageUnavailable         server unreachable, timeouts, disk full: retry later
    ValueError                      a sample that should never have reached storage
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from gridpilot.config.models import PostgresConfig, RetentionConfig, site_path
from gridpilot.config.secrets import SecretError, read_secret
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
from gridpilot.storage.levels import choose_level, floor_to, horizon_after, plan_pieces

# One checked, columnar view of a batch for every backend (non-finite values refused there).
from gridpilot.storage.sqlite import _Columns, _columns

_log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

Conn = psycopg.Connection[tuple[Any, ...]]
SeriesTuple = tuple[str, str, str]
_T = TypeVar("_T")

DAY_MS: Final = 86_400_000

TABLES: Final[dict[Level, str]] = {
    Level.RAW: "samples",
    Level.M1: "rollup_1m",
    Level.M15: "rollup_15m",
    Level.H1: "rollup_1h",
}
TIME_COLUMN: Final[dict[Level, str]] = {
    Level.RAW: "ts_ms",
    Level.M1: "bucket_ms",
    Level.M15: "bucket_ms",
    Level.H1: "bucket_ms",
}
# Partition spans, epoch-aligned. Each divides the next, so the day of a raw sample names
# the partition of each of its rollup rows too. Days for raw data (a 1 Hz site of 10,000
# points adds 864 M rows a day: retention drops a day at a time); rollups are 60x, 900x and
# 3,600x smaller and get longer spans, so a decade of hourly data is ten partitions.
PARTITION_SPAN_MS: Final[dict[Level, int]] = {
    Level.RAW: DAY_MS,
    Level.M1: 7 * DAY_MS,
    Level.M15: 28 * DAY_MS,
    Level.H1: 364 * DAY_MS,
}
# Timestamps whose partition a date can name: years 1..9999 (what datetime represents).
MIN_TS_MS: Final = -62_135_596_800_000 + 364 * DAY_MS
MAX_TS_MS: Final = 253_402_300_799_999 - 364 * DAY_MS

# DDL waits this long for a table lock (a long report holding the parent table) before the
# statement fails and is retried with backoff, instead of queueing every reader behind it.
_DDL_LOCK_TIMEOUT_MS: Final = 5_000
# Counting what a retention pass hides may scan a day of raw rows; it gets longer than
# ordinary statements, but is still bounded.
_RETENTION_STATEMENT_TIMEOUT_MS: Final = 600_000
# Page fill of tables whose rows are updated (rollups, latest); see create_partition_sql.
_UPDATED_FILLFACTOR: Final = 70
# Rows per COPY round of the writer, between which other threads get the GIL.
_COPY_ROWS: Final = 8_192

# _SQL_NOTE: SQL here is assembled only from this module's constants (table and column
# names, bucket sizes, numbered placeholders) and identifiers quoted by psycopg.sql; every
# value from outside is a bound parameter.

_ROLLUP_COLUMNS: Final = """
    series_id  integer          NOT NULL,
    bucket_ms  bigint           NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    sum        double precision NOT NULL,
    count      bigint           NOT NULL,
    last_ts    bigint           NOT NULL,
    last_value double precision NOT NULL,
    PRIMARY KEY (series_id, bucket_ms)
"""

_SCHEMA: Final = (
    """CREATE TABLE gridpilot_meta (key text PRIMARY KEY, value text NOT NULL)""",
    """CREATE TABLE series (
        id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        site   text COLLATE "C" NOT NULL,
        device text COLLATE "C" NOT NULL,
        point  text COLLATE "C" NOT NULL,
        UNIQUE (site, device, point)
    )""",
    """CREATE TABLE samples (
        series_id integer          NOT NULL,
        ts_ms     bigint           NOT NULL,
        value     double precision NOT NULL,
        PRIMARY KEY (series_id, ts_ms)
    ) PARTITION BY RANGE (ts_ms)""",
    *(
        f"CREATE TABLE {TABLES[level]} ({_ROLLUP_COLUMNS}) PARTITION BY RANGE (bucket_ms)"
        for level in (Level.M1, Level.M15, Level.H1)
    ),
    # Rows arrive in about time order, so a BRIN index (a few pages per partition) finds a
    # time slice across all series: what retention counts when it moves a horizon.
    *(
        f"CREATE INDEX {TABLES[level]}_time_brin ON {TABLES[level]} "
        f"USING brin ({TIME_COLUMN[level]})"
        for level in TABLES
    ),
    f"""CREATE TABLE latest (
        series_id integer          PRIMARY KEY,
        ts_ms     bigint           NOT NULL,
        value     double precision NOT NULL
    ) WITH (fillfactor = {_UPDATED_FILLFACTOR})""",
    """CREATE TABLE retention_horizon (level text PRIMARY KEY, horizon_ms bigint NOT NULL)""",
    """CREATE TABLE events (
        site    text COLLATE "C" NOT NULL,
        ts_ms   bigint           NOT NULL,
        source  text COLLATE "C" NOT NULL,
        message text COLLATE "C" NOT NULL,
        level   text COLLATE "C" NOT NULL,
        PRIMARY KEY (site, ts_ms, source, message)
    )""",
)

# Per-session scratch tables of the writer; ON COMMIT DELETE ROWS empties them at each
# commit, a rollback takes their rows back with the rest.
_WRITER_TEMP_TABLES: Final = (
    """CREATE TEMP TABLE stage (
        seq       bigint GENERATED ALWAYS AS IDENTITY,
        series_id integer          NOT NULL,
        ts_ms     bigint           NOT NULL,
        value     double precision NOT NULL,
        batch     integer          NOT NULL
    ) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE fresh (
        series_id integer, ts_ms bigint, value double precision, batch integer
    ) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE agg (
        series_id integer, bucket_ms bigint, mn double precision, mx double precision,
        sm double precision, ct bigint, lts bigint, lv double precision
    ) ON COMMIT DELETE ROWS""",
    # A live group's partials of every level, computed by the writer (GroupView).
    """CREATE TEMP TABLE parts (
        level_ms integer, series_id integer, bucket_ms bigint, mn double precision,
        mx double precision, sm double precision, ct bigint, lts bigint, lv double precision
    ) ON COMMIT DELETE ROWS""",
)

_COPY_STAGE: Final = "COPY stage (series_id, ts_ms, value, batch) FROM STDIN (FORMAT BINARY)"
_COPY_SAMPLES: Final = "COPY samples (series_id, ts_ms, value) FROM STDIN (FORMAT BINARY)"
# A binary COPY's framing (PostgreSQL's COPY docs, "Binary Format"): signature, flags and
# header extension length; each row: field count, then each field's length and bytes.
_COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER: Final = b"\xff\xff"
_COPY_PARTS: Final = (
    "COPY parts (level_ms, series_id, bucket_ms, mn, mx, sm, ct, lts, lv) "
    "FROM STDIN (FORMAT BINARY)"
)
_PARTIAL_FIELDS: Final = (
    ("level_ms", ">i4"),
    ("series_id", ">i4"),
    ("bucket_ms", ">i8"),
    ("mn", ">f8"),
    ("mx", ">f8"),
    ("sm", ">f8"),
    ("ct", ">i8"),
    ("lts", ">i8"),
    ("lv", ">f8"),
)
_PARTIAL_ROW: Final = np.dtype(
    [("fields", ">i2")]
    + [
        item
        for n, (name, kind) in enumerate(_PARTIAL_FIELDS)
        for item in ((f"len{n}", ">i4"), (name, kind))
    ]
)

# The first arrival of each identity (smallest seq) goes on; RETURNING names the rows that
# were really new. With several batches in the group, each new row is credited to the
# batch that brought it first.
_INSERT_NEW_GROUP: Final = """
WITH first AS (
    SELECT DISTINCT ON (series_id, ts_ms) series_id, ts_ms, value, batch
    FROM stage ORDER BY series_id, ts_ms, seq
), ins AS (
    INSERT INTO samples (series_id, ts_ms, value) SELECT series_id, ts_ms, value FROM first
    ON CONFLICT DO NOTHING RETURNING series_id, ts_ms
)
INSERT INTO fresh (series_id, ts_ms, value, batch)
SELECT f.series_id, f.ts_ms, f.value, f.batch FROM first AS f JOIN ins USING (series_id, ts_ms)"""


def bucket_sql(column: str, size: int | str, mod: str = "%") -> str:
    """SQL for the epoch-aligned bucket start of ``column``; floors for negative values too
    (PostgreSQL's % truncates toward zero). ``mod="%%"`` in a statement sent with
    parameters, where psycopg reads a lone ``%`` as a placeholder."""
    return f"({column} - (({column} {mod} {size}) + {size}) {mod} {size})"


_FINEST: Final = Level.M1

_FILL_AGG: Final = f"""
INSERT INTO agg (series_id, bucket_ms, mn, mx, sm, ct, lts, lv)
SELECT series_id, {bucket_sql("ts_ms", _FINEST.bucket_ms)},
       min(value), max(value), sum(value), count(*), max(ts_ms),
       (array_agg(value ORDER BY ts_ms DESC))[1]
FROM fresh GROUP BY 1, 2"""  # noqa: S608 - see _SQL_NOTE

# One batch: the new rows go straight into the 1-minute partials (no per-row table between;
# the partials' counts sum to the rows inserted).
_INSERT_NEW_ONE_BATCH: Final = f"""
WITH first AS (
    SELECT DISTINCT ON (series_id, ts_ms) series_id, ts_ms, value
    FROM stage ORDER BY series_id, ts_ms, seq
), ins AS (
    INSERT INTO samples (series_id, ts_ms, value) SELECT series_id, ts_ms, value FROM first
    ON CONFLICT DO NOTHING RETURNING series_id, ts_ms, value
)
INSERT INTO agg (series_id, bucket_ms, mn, mx, sm, ct, lts, lv)
SELECT series_id, {bucket_sql("ts_ms", Level.M1.bucket_ms)},
       min(value), max(value), sum(value), count(*), max(ts_ms),
       (array_agg(value ORDER BY ts_ms DESC))[1]
FROM ins GROUP BY 1, 2"""  # noqa: S608 - see _SQL_NOTE

# One batch whose identities are all distinct (the writer checked): no DISTINCT ON sort.
_INSERT_NEW_DISTINCT: Final = f"""
WITH ins AS (
    INSERT INTO samples (series_id, ts_ms, value) SELECT series_id, ts_ms, value FROM stage
    ON CONFLICT DO NOTHING RETURNING series_id, ts_ms, value
)
INSERT INTO agg (series_id, bucket_ms, mn, mx, sm, ct, lts, lv)
SELECT series_id, {bucket_sql("ts_ms", Level.M1.bucket_ms)},
       min(value), max(value), sum(value), count(*), max(ts_ms),
       (array_agg(value ORDER BY ts_ms DESC))[1]
FROM ins GROUP BY 1, 2"""  # noqa: S608 - see _SQL_NOTE

_UPSERT_TAIL: Final = """
ON CONFLICT (series_id, bucket_ms) DO UPDATE SET
    min = least(r.min, excluded.min),
    max = greatest(r.max, excluded.max),
    sum = r.sum + excluded.sum,
    count = r.count + excluded.count,
    last_value = CASE WHEN excluded.last_ts > r.last_ts THEN excluded.last_value
                      ELSE r.last_value END,
    last_ts = greatest(r.last_ts, excluded.last_ts)"""


def rollup_upsert_sql(level: Level) -> str:
    """Fold the transaction's 1-minute partials (``agg``) into one rollup level.

    Rows go in key order, so that concurrent writers lock rollup rows in the same order.
    """
    head = (
        f"INSERT INTO {TABLES[level]} AS r "
        "(series_id, bucket_ms, min, max, sum, count, last_ts, last_value)"
    )
    if level is _FINEST:
        body = "SELECT series_id, bucket_ms, mn, mx, sm, ct, lts, lv FROM agg ORDER BY 1, 2"
    else:
        body = (
            f"SELECT series_id, {bucket_sql('bucket_ms', level.bucket_ms)}, min(mn), max(mx), "  # noqa: S608
            "sum(sm), sum(ct), max(lts), (array_agg(lv ORDER BY lts DESC))[1] "
            "FROM agg GROUP BY 1, 2 ORDER BY 1, 2"
        )
    return f"{head}\n{body}{_UPSERT_TAIL}"


_ROLLUP_UPSERTS: Final = tuple(
    rollup_upsert_sql(level) for level in (Level.M1, Level.M15, Level.H1)
)


def direct_upsert_sql() -> str:
    """One statement that upserts a live group's partials (table ``parts``, computed by the
    writer) into the three rollups, and its newest samples into ``latest``: one round trip
    to the server instead of four."""
    steps = []
    for level in (Level.M1, Level.M15, Level.H1):
        steps.append(
            f"{level.name.lower()} AS (INSERT INTO {TABLES[level]} AS r "  # noqa: S608
            "(series_id, bucket_ms, min, max, sum, count, last_ts, last_value) "
            "SELECT series_id, bucket_ms, mn, mx, sm, ct, lts, lv FROM parts "
            f"WHERE level_ms = {level.bucket_ms} ORDER BY 1, 2{_UPSERT_TAIL})"
        )
    # The newest partial of each series holds its newest sample; the hourly ones are fewest.
    return f"""WITH {", ".join(steps)}
INSERT INTO latest AS l (series_id, ts_ms, value)
SELECT DISTINCT ON (series_id) series_id, lts, lv FROM parts WHERE level_ms = {Level.H1.bucket_ms}
ORDER BY series_id, lts DESC
ON CONFLICT (series_id) DO UPDATE SET ts_ms = excluded.ts_ms, value = excluded.value
WHERE excluded.ts_ms > l.ts_ms"""  # noqa: S608 - see _SQL_NOTE


_DIRECT_UPSERT: Final = direct_upsert_sql()

_LATEST_UPSERT: Final = """
INSERT INTO latest AS l (series_id, ts_ms, value)
SELECT DISTINCT ON (series_id) series_id, lts, lv FROM agg ORDER BY series_id, lts DESC
ON CONFLICT (series_id) DO UPDATE SET ts_ms = excluded.ts_ms, value = excluded.value
WHERE excluded.ts_ms > l.ts_ms"""

# Aggregates over the union of pieces (columns t, mn, mx, sm, ct, lts, lv), per bucket.
_AGG_SQL: Final[dict[Agg, str]] = {
    Agg.MEAN: "sum(sm) / sum(ct)::double precision",
    Agg.MIN: "min(mn)",
    Agg.MAX: "max(mx)",
    Agg.SUM: "sum(sm)",
    Agg.COUNT: "sum(ct)::double precision",
}
# The aggregate of one finished rollup bucket, read without grouping.
_DIRECT_SQL: Final[dict[Agg, str]] = {
    Agg.MEAN: "sum / count::double precision",
    Agg.MIN: "min",
    Agg.MAX: "max",
    Agg.SUM: "sum",
    Agg.COUNT: "count::double precision",
    Agg.LAST: "last_value",
}


# --- pure helpers (unit-tested) -----------------------------------------------------------


def partition_start(level: Level, ts_ms: int) -> int:
    """Start of the ``level`` partition that holds time ``ts_ms``."""
    return floor_to(ts_ms, PARTITION_SPAN_MS[level])


def partition_name(level: Level, start_ms: int) -> str:
    """``samples_p20260302``: the table and the UTC date its partition starts on."""
    day = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=start_ms)
    return f"{TABLES[level]}_p{day:%Y%m%d}"


def partitions_for(raw_days: Iterable[int]) -> set[tuple[Level, int]]:
    """Every (level, partition start) that samples in the given raw partitions touch.

    A raw sample's 1-min, 15-min and 1-h buckets all lie within its day, and every span
    is a whole number of days aligned to the epoch, so each day maps to one partition of
    every level.
    """
    out: set[tuple[Level, int]] = set()
    for day in raw_days:
        for level in TABLES:
            out.add((level, partition_start(level, day)))
    return out


_NO_SAMPLE: Final = MIN_TS_MS - 1


class GroupView:
    """A group's samples as arrays (series id, ts, value), for what the writer decides in
    C rather than per sample in Python: the newest sample of each series, whether every
    sample is new for certain, and the 1-minute partials."""

    def __init__(
        self,
        ids: Sequence[Sequence[int]],
        stamps: Sequence[Sequence[int]],
        values: Sequence[Sequence[float]],
    ) -> None:
        sid = np.concatenate([np.asarray(column, dtype=np.int64) for column in ids])
        self.ts = np.concatenate([np.asarray(column, dtype=np.int64) for column in stamps])
        self.value = np.concatenate([np.asarray(column, dtype=np.float64) for column in values])
        self.series, self.inverse = np.unique(sid, return_inverse=True)
        # Samples by series, then time; ties (one identity twice) keep arrival order.
        self.order = np.lexsort((self.ts, self.inverse))
        sorted_inverse = self.inverse[self.order]
        sorted_ts = self.ts[self.order]
        ends = np.flatnonzero(np.diff(sorted_inverse)) + 1
        self.series_end = np.append(ends, len(sorted_ts)) - 1
        self.top = sorted_ts[self.series_end]  # newest ts of each series in self.series
        same_series = sorted_inverse[1:] == sorted_inverse[:-1]
        self.distinct = not bool(np.any(same_series & (sorted_ts[1:] == sorted_ts[:-1])))

    def newest(self) -> dict[int, int]:
        """Newest timestamp of each series in the group."""
        return dict(zip(self.series.tolist(), self.top.tolist(), strict=True))

    def all_newer(self, newest: Mapping[int, int]) -> bool:
        """Whether every sample is newer than ``newest[series id]`` (absent: none stored)."""
        floor = np.fromiter(
            (newest.get(s, _NO_SAMPLE) for s in self.series.tolist()),
            dtype=np.int64,
            count=len(self.series),
        )
        oldest = self.ts[self.order][np.append(0, self.series_end[:-1] + 1)]
        return bool(np.all(oldest > floor))

    def partials(self) -> bytes:
        """The 1 min, 15 min and 1 h partials of the group's samples, as the binary COPY
        data of table ``parts``: per (level, series, epoch-aligned bucket) min, max, sum,
        count, newest ts and its value (for a group whose identities are distinct)."""
        ts, value = self.ts[self.order], self.value[self.order]
        series = self.series[self.inverse[self.order]]
        columns = (series, ts, value, value, value, np.ones(len(ts), np.int64), ts, value)
        rows = []
        for level in (Level.M1, Level.M15, Level.H1):
            columns = _fold_partials(columns, level.bucket_ms)
            rows.append(_copy_rows(level.bucket_ms, columns))
        return _COPY_SIGNATURE + b"".join(rows) + _COPY_TRAILER


_Arrays = tuple[Any, Any, Any, Any, Any, Any, Any, Any]


def _fold_partials(partials: _Arrays, size_ms: int) -> _Arrays:
    """Partials (series, t, min, max, sum, count, newest ts, its value) sorted by series and
    time, folded into ``size_ms`` buckets (epoch-aligned: remainder floors for negative
    times too). Each bucket's rows are contiguous, its newest is its last."""
    series, t, mn, mx, sm, ct, lts, lv = partials
    bucket = t - np.remainder(t, size_ms)
    change = (series[1:] != series[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.append(0, np.flatnonzero(change) + 1)
    last = np.append(starts[1:], len(t)) - 1
    return (
        series[starts],
        bucket[starts],
        np.minimum.reduceat(mn, starts),
        np.maximum.reduceat(mx, starts),
        np.add.reduceat(sm, starts),
        np.add.reduceat(ct, starts),
        lts[last],
        lv[last],
    )


def _copy_rows(level_ms: int, partials: _Arrays) -> bytes:
    """Partials as rows of ``COPY parts FROM STDIN (FORMAT BINARY)``, built in C."""
    rows = np.empty(len(partials[0]), dtype=_PARTIAL_ROW)
    rows["fields"] = len(_PARTIAL_FIELDS)
    columns = (level_ms, *partials)
    for n, ((name, kind), column) in enumerate(zip(_PARTIAL_FIELDS, columns, strict=True)):
        rows[f"len{n}"] = np.dtype(kind).itemsize
        rows[name] = column
    return rows.tobytes()


def create_partition_sql(level: Level, start_ms: int) -> str:
    end_ms = start_ms + PARTITION_SPAN_MS[level]
    # Rollup rows are updated in place by every write that touches their bucket: free space
    # on each page lets PostgreSQL keep the new version on the same page without touching
    # the index (a HOT update). Samples are only ever inserted: pages are packed full.
    options = "" if level is Level.RAW else f" WITH (fillfactor = {_UPDATED_FILLFACTOR})"
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(level, start_ms)} "
        f"PARTITION OF {TABLES[level]} FOR VALUES FROM ({start_ms}) TO ({end_ms}){options}"
    )


_BOUND_RE: Final = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


def parse_partition_bound(bound: str) -> tuple[int, int]:
    """(start, end) of ``pg_get_expr(relpartbound)``: ``FOR VALUES FROM ('1') TO ('2')``."""
    match = _BOUND_RE.search(bound)
    if match is None:
        raise StorageError(f"unexpected partition bound {bound!r}; was the table altered?")
    return int(match.group(1)), int(match.group(2))


def droppable(partitions: Iterable[tuple[str, int, int]], horizon_ms: int) -> list[str]:
    """Names of the partitions (name, start, end) that lie wholly behind ``horizon_ms``."""
    return sorted(name for name, _, end in partitions if end <= horizon_ms)


def history_sql(
    level: Level, *, start_ms: int, end_ms: int, every_ms: int, agg: Agg,
    horizons: Mapping[Level, int],
) -> list[tuple[str, dict[str, int]]]:  # fmt: skip
    """Queries (needing ``%(sid)s``) whose results, concatenated, are the buckets oldest
    first.

    As SQLite's ``_history_sql``: the range is tiled into pieces (``levels.plan_pieces``);
    a rollup piece whose bucket is ``every_ms`` is read row by row as it is, the others are
    merged per output bucket as a UNION ALL of partial aggregates. Each piece is clipped to
    its level's horizon: what retention hid is never read.
    """
    queries: list[tuple[str, dict[str, int]]] = []
    grouped: list[str] = []
    params: dict[str, int] = {}

    def flush() -> None:
        nonlocal grouped, params
        if grouped:
            union = " UNION ALL ".join(grouped)
            bucket = bucket_sql("t", "%(every)s", "%%")
            if agg is Agg.LAST:
                text = (
                    f"SELECT DISTINCT ON (bucket) bucket, lv FROM (SELECT {bucket} AS bucket, "  # noqa: S608
                    f"lts, lv FROM ({union}) AS u) AS b ORDER BY bucket, lts DESC"
                )
            else:
                text = (
                    f"SELECT bucket, {_AGG_SQL[agg]} FROM (SELECT {bucket} AS bucket, "  # noqa: S608
                    f"mn, mx, sm, ct FROM ({union}) AS u) AS b GROUP BY bucket ORDER BY bucket"
                )
            queries.append((text, {**params, "every": every_ms}))
        grouped, params = [], {}

    for n, piece in enumerate(plan_pieces(level, start_ms, end_ms)):
        lo = max(piece.start_ms, horizons.get(piece.level, piece.start_ms))
        if lo >= piece.end_ms:
            continue
        bounds = {f"lo{n}": lo, f"hi{n}": piece.end_ms}
        table, column = TABLES[piece.level], TIME_COLUMN[piece.level]
        where = f"WHERE series_id = %(sid)s AND {column} >= %(lo{n})s AND {column} < %(hi{n})s"
        if piece.level is not Level.RAW and piece.level.bucket_ms == every_ms:
            flush()
            queries.append(
                (
                    f"SELECT bucket_ms, {_DIRECT_SQL[agg]} FROM {table} {where} "  # noqa: S608
                    "ORDER BY bucket_ms",
                    bounds,
                )
            )
            continue
        params.update(bounds)
        if piece.level is Level.RAW:
            grouped.append(
                "SELECT ts_ms AS t, value AS mn, value AS mx, value AS sm, 1::bigint AS ct, "  # noqa: S608
                f"ts_ms AS lts, value AS lv FROM samples {where}"
            )
        else:
            grouped.append(
                "SELECT bucket_ms AS t, min AS mn, max AS mx, sum AS sm, count AS ct, "  # noqa: S608
                f"last_ts AS lts, last_value AS lv FROM {table} {where}"
            )
    flush()
    return queries


def cutoffs(retention: RetentionConfig, now_ms: int) -> dict[Level, int]:
    """Per level, the instant before which retention removes data (levels kept forever are
    absent)."""
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


# --- connecting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where and how to connect; ``describe`` names it in every error message."""

    params: dict[str, Any]
    schema: str
    describe: str
    statement_timeout_ms: int
    retry_for_s: float
    _password: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls,
        config: PostgresConfig,
        base_dir: Path,
        environ: Mapping[str, str] | None = None,
    ) -> Target:
        env = os.environ if environ is None else environ
        file = config.password_file
        try:
            password = read_secret(
                what="storage.postgresql.password",
                env_name=config.password_env,
                file=None if file is None else site_path(base_dir, file.expanduser()),
                environ=env,
            )
        except SecretError as exc:
            raise StorageError(str(exc)) from exc
        params: dict[str, Any] = {}
        info: dict[str, Any] = {}
        if config.dsn is not None:
            params["conninfo"] = config.dsn
            info = conninfo_to_dict(config.dsn)
            where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
            dbname = info.get("dbname", "(default)")
        else:
            params.update(host=config.host, port=config.port, dbname=config.dbname)
            if config.user is not None:
                params["user"] = config.user
            where, dbname = f"{config.host}:{config.port}", config.dbname
        # libpq wants whole seconds, at least 2.
        connect_s = max(2, round(config.connect_timeout.total_seconds()))
        # What the DSN says itself (sslmode=verify-full, say) is kept: keyword arguments
        # would override it.
        settings: dict[str, Any] = {
            "sslmode": config.sslmode,
            "connect_timeout": connect_s,
            # Names the deployment in pg_stat_activity (and lets tests find their sessions).
            "application_name": f"gridpilot:{config.schema_name}"[:63],
            # A peer that vanishes (cable, crash) is noticed within ~30 s, not after the
            # kernel's two hours: keepalives while idle, tcp_user_timeout while sending.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        }
        params.update({key: value for key, value in settings.items() if key not in info})
        return cls(
            params=params,
            schema=config.schema_name,
            describe=f"PostgreSQL at {where} (database {dbname}, schema {config.schema_name})",
            statement_timeout_ms=max(1, round(config.statement_timeout.total_seconds() * 1000)),
            retry_for_s=config.retry_for.total_seconds(),
            _password=password,
        )

    def connect(self) -> Conn:
        params = dict(self.params)
        conninfo = params.pop("conninfo", "")
        if self._password is not None:
            params["password"] = self._password
        try:
            conn = psycopg.connect(conninfo, autocommit=True, **params)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(
                f"cannot connect to {self.describe}: {_first_line(exc)}; check that the server "
                "is running and reachable there (pg_lsclusters, systemctl status postgresql) "
                "and that storage.postgresql in the site file names it and a user allowed to "
                "log in"
            ) from exc
        try:
            conn.execute(
                sql.SQL("SET search_path = {}; SET statement_timeout = {}").format(
                    sql.Identifier(self.schema), sql.Literal(self.statement_timeout_ms)
                )
            )
        except BaseException:
            conn.close()
            raise
        return conn


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# Transient: the same statement may well succeed once the server is back or the other
# transaction is gone. Connection loss is recognised by the connection being broken.
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"})


class _Session:
    """A thread's connection, reopened with backoff when it is lost."""

    def __init__(self, target: Target, setup: Callable[[Conn], None], role: str) -> None:
        self._target = target
        self._setup = setup
        self._role = role
        self._conn: Conn | None = None

    def open(self) -> Self:
        conn = self._target.connect()
        try:
            self._setup(conn)
        except psycopg.Error as exc:
            conn.close()
            raise _translate(exc, self._target, f"preparing the {self._role} connection") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, fn: Callable[[Conn], _T], action: str) -> _T:
        """``fn(connection)``, retried with backoff while the failure is transient."""
        deadline = time.monotonic() + self._target.retry_for_s
        delay = 0.05
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self.open()
                assert self._conn is not None  # noqa: S101 - open() set it or raised
                return fn(self._conn)
            except (psycopg.Error, StorageUnavailable) as exc:
                lost = self._conn is None or self._conn.broken or self._conn.closed
                if lost:
                    self.close()
                transient = lost or (
                    isinstance(exc, psycopg.Error) and exc.sqlstate in _RETRY_SQLSTATES
                )
                if not transient:
                    if isinstance(exc, psycopg.Error):
                        raise _translate(exc, self._target, action) from exc
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailable(
                        f"{action}: {self._target.describe} did not answer for "
                        f"{self._target.retry_for_s:g} s ({_first_line(exc)}); nothing of this "
                        "call was stored. Check the server (pg_lsclusters, its log), then retry"
                    ) from exc
                _log.warning(
                    "%s: %s: %s; retrying in %.2f s",
                    action,
                    self._target.describe,
                    _first_line(exc),
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)


def _translate(exc: psycopg.Error, target: Target, action: str) -> StorageError:
    """Map a psycopg error to ours, with what the operator should do about it."""
    where = target.describe
    if isinstance(exc, pg_errors.QueryCanceled):
        return StorageUnavailable(
            f"{action}: {where} cancelled the statement after storage.postgresql."
            f"statement_timeout ({target.statement_timeout_ms} ms); the server is overloaded "
            "or the query too large: retry later or raise the timeout"
        )
    if isinstance(exc, pg_errors.DiskFull | pg_errors.OutOfMemory):
        return StorageUnavailable(
            f"{action}: {where} is out of disk or memory ({_first_line(exc)}); free space "
            "or shorten storage.retention, then retry (the transaction was rolled back)"
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorageError(
            f"{action}: {where} refused: {_first_line(exc)}; grant the configured user "
            f"CREATE and USAGE on the database and schema {target.schema}"
        )
    if isinstance(exc, psycopg.OperationalError):
        return StorageUnavailable(f"{action}: {where}: {_first_line(exc)}; retry later")
    return StorageError(f"{action} failed on {where}: {_first_line(exc)} ({exc.sqlstate})")


# --- the backend --------------------------------------------------------------------------

_Writer = ConnectionThread[_Session, Sequence[Sample], WriteResult]
_Reader = ConnectionThread[_Session, None, None]


class PostgresStorage:
    """Time series in PostgreSQL. Use as an async context manager::

        async with PostgresStorage(target, config.storage.retention) as storage:
            await storage.write(samples)

    ``readers`` reader threads (one connection each) serve queries; at most
    ``max_pending_writes`` write calls are queued (further callers wait); queued batches
    are committed together up to ``max_group_samples`` samples per transaction.
    """

    def __init__(
        self,
        target: Target,
        retention: RetentionConfig | None = None,
        *,
        readers: int = 2,
        max_pending_writes: int = 16,
        max_group_samples: int = 50_000,
    ) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self._target = target
        self._retention = retention if retention is not None else RetentionConfig()
        self._readers_wanted = readers
        self._max_pending_writes = max_pending_writes
        self._max_group_samples = max_group_samples
        self._writer: _Writer | None = None
        self._readers: list[_Reader] = []
        # Writer-thread state: committed series ids, and partitions known to exist.
        self._series_ids: dict[SeriesTuple, int] = {}
        self._partitions: set[tuple[Level, int]] = set()
        # Newest stored timestamp of each series id, as far as this writer knows (from
        # ``latest`` at connect, raised by each commit): samples newer than it skip the
        # stage (see the module doc). Another process may store newer ones unseen; the
        # primary key then refuses the direct COPY and the group goes the staged way.
        self._newest: dict[int, int] = {}
        # How many groups went each way since open (for benchmarks and tests).
        self.direct_groups = 0
        self.staged_groups = 0

    @classmethod
    def from_config(
        cls, config: PostgresConfig, retention: RetentionConfig, base_dir: Path
    ) -> PostgresStorage:
        return cls(Target.from_config(config, base_dir), retention)

    @property
    def target(self) -> Target:
        return self._target

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> Self:
        """Connect, create the schema if needed, start the threads."""
        if self._writer is not None:
            return self
        writer: _Writer = ConnectionThread(
            "gridpilot-pg-writer",
            _Session(self._target, self._setup_writer, "writer").open,
            max_pending=self._max_pending_writes,
            group=GroupHandler(self._write_group, len, self._max_group_samples),
        )
        await writer.start()
        readers: list[_Reader] = []
        try:
            for n in range(self._readers_wanted):
                reader: _Reader = ConnectionThread(
                    f"gridpilot-pg-reader-{n}",
                    _Session(self._target, _setup_reader, "reader").open,
                    max_pending=64,
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

        Raises ValueError (naming the series) for a value that is not a finite number or a
        timestamp outside years 1..9999; then nothing of the batch is stored. Raises
        StorageUnavailable when the server stays unreachable for ``retry_for``.
        """
        if not samples:
            return WriteResult(0, 0)
        return await self._writer_thread().call_grouped(tuple(samples))

    async def latest(self, site: str, device: str | None = None) -> list[LatestValue]:
        """Newest value of every series of a site (or of one device), sorted by series."""
        return await self._read(partial(_read_latest, site=site, device=device), "latest values")

    async def history(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> list[HistoryPoint]:
        """Values in [start_ms, end_ms), oldest first: raw samples when ``every_ms`` is
        None, else one aggregate per non-empty epoch-aligned ``every_ms`` bucket."""
        rows = await self._history_rows(series, start_ms, end_ms, every_ms, agg)
        return list(map(HistoryPoint._make, rows))

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
        ts_ms, values = zip(*rows, strict=True)
        return HistoryColumns(ts_ms, values)

    async def history_json(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> HistoryJson:
        """What ``history_columns`` answers, as two JSON arrays."""
        return HistoryJson.of(await self.history_columns(series, start_ms, end_ms, every_ms, agg))

    async def _history_rows(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None,
        agg: Agg,
    ) -> list[tuple[int, float]]:
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
        )
        return await self._read(read, f"reading history of {series}")

    async def write_events(self, events: Sequence[Event]) -> int:
        """Store events, each once; returns how many were new."""
        if not events:
            return 0
        columns = (
            [e.site for e in events],
            [e.ts_ms for e in events],
            [e.source for e in events],
            [e.message for e in events],
            [e.level for e in events],
        )
        return await self._writer_thread().call(
            lambda session: session.run(
                partial(_write_events, columns=columns), f"writing {len(events)} event(s)"
            )
        )

    async def events(
        self, site: str, *, limit: int, before_ms: int | None = None, level: str | None = None
    ) -> list[Event]:
        """The site's events newest first, at most ``limit``; with ``before_ms`` only older
        ones (the next page); with ``level`` only that level."""
        read = partial(_read_events, site=site, limit=limit, before_ms=before_ms, level=level)
        return await self._read(read, f"reading events of {site}")

    async def series(self, site: str | None = None) -> list[SeriesKey]:
        """Every series ever written (of a site), sorted. Retention keeps the list."""
        return await self._read(partial(_read_series, site=site), "listing series")

    async def apply_retention(self, now_ms: int) -> int:
        """Hide and then drop what each level's retention no longer covers; returns the rows
        that this pass removed from what queries see (0 when nothing more is due)."""
        writer = self._writer_thread()
        deleted = 0
        if self._retention.events is not None:
            before_ms = now_ms - self._retention.events // timedelta(milliseconds=1)
            deleted += await writer.call(
                lambda session: session.run(
                    partial(_delete_old_events, before_ms=before_ms), "deleting old events"
                )
            )
        due = cutoffs(self._retention, now_ms)
        if not due:
            return deleted
        horizons = {level: horizon_after(level, cutoff) for level, cutoff in due.items()}
        hidden, effective = await writer.call(
            lambda session: session.run(
                partial(_advance_horizons, horizons=horizons, schema=self._target.schema),
                "applying retention",
            )
        )
        deleted += hidden
        await writer.call(partial(self._drop_partitions, horizons=effective))
        return deleted

    # --- plumbing ------------------------------------------------------------------------

    def _writer_thread(self) -> _Writer:
        if self._writer is None:
            raise StorageError(
                f"storage {self._target.describe} is not open; use `async with` or open()"
            )
        return self._writer

    async def _read(self, fn: Callable[[Conn], _T], action: str) -> _T:
        if not self._readers:
            raise StorageError(
                f"storage {self._target.describe} is not open; use `async with` or open()"
            )
        return await least_busy(self._readers).call(lambda session: session.run(fn, action))

    # --- writer thread -------------------------------------------------------------------

    def _setup_writer(self, conn: Conn) -> None:
        _migrate(conn, self._target)
        for statement in _WRITER_TEMP_TABLES:
            conn.execute(statement)
        self._series_ids = {
            (site, device, point): sid
            for sid, site, device, point in conn.execute(
                "SELECT id, site, device, point FROM series"
            )
        }
        self._partitions = _load_partitions(conn)
        self._newest = dict(conn.execute("SELECT series_id, ts_ms FROM latest").fetchall())

    def _write_group(
        self, session: _Session, batches: list[Sequence[Sample]]
    ) -> list[WriteResult | BaseException]:
        """Commit queued batches in one transaction; one outcome per batch, in order."""
        outcomes: list[WriteResult | BaseException] = [WriteResult(0, 0)] * len(batches)
        staged: list[tuple[int, _Columns]] = []
        for index, batch in enumerate(batches):
            try:
                columns = _columns(batch)
                _check_times(batch, columns.ts)
                staged.append((index, columns))
            except ValueError as exc:  # that batch alone fails; the others go ahead
                outcomes[index] = exc
        if not staged:
            return outcomes
        try:
            written = self._store(session, [columns for _, columns in staged])
        except BaseException as exc:  # noqa: BLE001 - becomes the callers' outcome
            if len(staged) == 1:
                outcomes[staged[0][0]] = exc
                return outcomes
            # Retry one by one, so that one bad batch does not fail its neighbours; if the
            # server is the cause, each retry fails the same way.
            for index, columns in staged:
                try:
                    (count,) = self._store(session, [columns])
                except BaseException as retry_exc:  # noqa: BLE001 - that caller's outcome
                    outcomes[index] = retry_exc
                else:
                    outcomes[index] = WriteResult(count, len(columns.ts) - count)
            return outcomes
        for (index, columns), count in zip(staged, written, strict=True):
            outcomes[index] = WriteResult(count, len(columns.ts) - count)
        return outcomes

    def _store(self, session: _Session, batches: list[_Columns]) -> list[int]:
        # The distinct days of the group's times, in C (a Python call per sample would be
        # a tenth of a live write).
        span = PARTITION_SPAN_MS[Level.RAW]
        days: set[int] = set()
        for columns in batches:
            stamps = np.asarray(columns.ts, dtype=np.int64)
            days.update(np.unique(stamps - np.remainder(stamps, span)).tolist())
        needed = partitions_for(days)

        def attempt(conn: Conn) -> list[int]:
            missing = needed - self._partitions
            if missing:
                _create_partitions(conn, missing, self._target.schema)
                self._partitions |= missing
            try:
                return self._commit(conn, batches)
            except pg_errors.CheckViolation as exc:
                # "no partition of relation ... found for row": another process's retention
                # dropped a partition this one still thought it had. Learn and retry once.
                self._partitions = _load_partitions(conn)
                missing = needed - self._partitions
                if not missing:
                    raise StorageError(
                        f"writing samples: {self._target.describe} refused a row: "
                        f"{_first_line(exc)}"
                    ) from exc
                _create_partitions(conn, missing, self._target.schema)
                self._partitions |= missing
                return self._commit(conn, batches)

        return session.run(attempt, "writing samples")

    def _commit(self, conn: Conn, batches: list[_Columns]) -> list[int]:
        try:
            return self._commit_once(conn, batches, direct=True)
        except pg_errors.UniqueViolation:
            # The direct COPY met a sample another process stored since this writer last
            # looked (or a commit whose outcome was lost): the transaction is rolled back,
            # and the group goes through the stage.
            return self._commit_once(conn, batches, direct=False)

    def _commit_once(self, conn: Conn, batches: list[_Columns], *, direct: bool) -> list[int]:
        new_ids: dict[SeriesTuple, int] = {}
        with conn.transaction(), conn.cursor() as cur:
            try:  # the common case, every series known: one pass, in C
                ids = [list(map(self._series_ids.__getitem__, c.keys)) for c in batches]
            except KeyError:
                ids_of = self._resolve_ids(cur, batches, new_ids)
                ids = [list(map(ids_of.__getitem__, c.keys)) for c in batches]
            view = GroupView(ids, [c.ts for c in batches], [c.values for c in batches])
            if direct and view.distinct and view.all_newer(self._newest):
                self._copy_direct(cur, ids, batches, view.partials())
                cur.execute(_DIRECT_UPSERT)
                per_batch = {number: len(columns.ts) for number, columns in enumerate(batches)}
                self.direct_groups += 1
            else:
                per_batch = self._insert_staged(cur, ids, batches, distinct=view.distinct)
                if sum(per_batch.values()):
                    for upsert in (*_ROLLUP_UPSERTS, _LATEST_UPSERT):
                        cur.execute(upsert)
                self.staged_groups += 1
        # Only now are new series rows durable; caching them earlier would hand out ids
        # that a rollback had taken back.
        self._series_ids.update(new_ids)
        # Every identity of the group is stored now (new or not), so each series' newest
        # stored sample is at least the group's newest of it.
        newest = self._newest
        for sid, ts in view.newest().items():
            if ts > newest.get(sid, _NO_SAMPLE):
                newest[sid] = ts
        return [per_batch.get(number, 0) for number in range(len(batches))]

    @staticmethod
    def _copy_direct(
        cur: psycopg.Cursor[tuple[Any, ...]],
        ids: list[list[int]],
        batches: list[_Columns],
        partials: bytes,
    ) -> None:
        """Samples known to be new straight into ``samples``, their partials into
        ``parts``."""
        with cur.copy(_COPY_SAMPLES) as copy:
            copy.set_types(["int4", "int8", "float8"])
            for sids, columns in zip(ids, batches, strict=True):
                for first in range(0, len(sids), _COPY_ROWS):
                    last = first + _COPY_ROWS
                    for row in zip(
                        sids[first:last],
                        columns.ts[first:last],
                        columns.values[first:last],
                        strict=True,
                    ):
                        copy.write_row(row)
        with cur.copy(_COPY_PARTS) as copy:
            copy.write(partials)

    @staticmethod
    def _insert_staged(
        cur: psycopg.Cursor[tuple[Any, ...]],
        ids: list[list[int]],
        batches: list[_Columns],
        *,
        distinct: bool,
    ) -> dict[int, int]:
        """Stage, keep the first arrival of each identity, insert what is new and fold it
        into ``agg``; returns the new samples per batch number."""
        with cur.copy(_COPY_STAGE) as copy:
            copy.set_types(["int4", "int8", "float8", "int4"])
            for number, (sids, columns) in enumerate(zip(ids, batches, strict=True)):
                for first in range(0, len(sids), _COPY_ROWS):
                    last = first + _COPY_ROWS
                    for row in zip(
                        sids[first:last],
                        columns.ts[first:last],
                        columns.values[first:last],
                        [number] * len(columns.ts[first:last]),
                        strict=True,
                    ):
                        copy.write_row(row)
        if len(batches) == 1:
            cur.execute(_INSERT_NEW_DISTINCT if distinct else _INSERT_NEW_ONE_BATCH)
            cur.execute("SELECT coalesce(sum(ct), 0) FROM agg")
            counted = cur.fetchone()
            return {0: int(counted[0]) if counted else 0}
        cur.execute(_INSERT_NEW_GROUP)
        if not cur.rowcount:
            return {}
        cur.execute(_FILL_AGG)
        cur.execute("SELECT batch, count(*) FROM fresh GROUP BY batch")
        return dict(cur.fetchall())

    def _resolve_ids(
        self,
        cur: psycopg.Cursor[tuple[Any, ...]],
        batches: list[_Columns],
        new_ids: dict[SeriesTuple, int],
    ) -> dict[SeriesTuple, int]:
        cached = self._series_ids
        unknown = {key for columns in batches for key in columns.keys if key not in cached}
        if not unknown:
            return cached
        keys = sorted(unknown)
        arrays = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
        # Sorted, so concurrent writers registering the same new series lock them in the
        # same order; DO NOTHING then SELECT also finds ids another process committed.
        cur.execute(
            "INSERT INTO series (site, device, point) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) ORDER BY 1, 2, 3 "
            "ON CONFLICT DO NOTHING",
            arrays,
        )
        cur.execute(
            "SELECT s.id, s.site, s.device, s.point FROM series AS s "
            "JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(site, device, point) "
            "ON s.site = k.site AND s.device = k.device AND s.point = k.point",
            arrays,
        )
        for sid, site, device, point in cur.fetchall():
            new_ids[(site, device, point)] = sid
        return {**cached, **new_ids}

    def _drop_partitions(self, session: _Session, *, horizons: dict[Level, int]) -> None:
        """Drop partitions wholly behind their level's horizon; a lock that is not granted
        in time leaves the partition for the next pass (its rows are hidden already)."""
        for level, horizon in horizons.items():
            partitions = session.run(
                partial(_list_partitions, level=level), "listing partitions for retention"
            )
            starts = {name: start for name, start, _ in partitions}
            for name in droppable(partitions, horizon):
                try:
                    session.run(partial(_drop_partition, name=name), f"dropping {name}")
                except StorageError as exc:
                    _log.warning("retention: %s; will try again at the next pass", exc)
                    continue
                self._partitions.discard((level, starts[name]))


def _check_times(batch: Sequence[Sample], stamps: list[int]) -> None:
    if stamps and (min(stamps) < MIN_TS_MS or max(stamps) > MAX_TS_MS):
        for sample in batch:
            if not MIN_TS_MS <= sample.ts_ms <= MAX_TS_MS:
                raise ValueError(
                    f"sample {sample.site}/{sample.device}/{sample.point} has ts_ms="
                    f"{sample.ts_ms}, outside years 1..9999 in epoch milliseconds; nothing of "
                    "the batch was stored"
                )


def _setup_reader(conn: Conn) -> None:
    conn.execute("SELECT 1 FROM gridpilot_meta LIMIT 1")


def _advisory_lock(conn: Conn, what: str, schema: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"gridpilot:{schema}:{what}",))


def _migrate(conn: Conn, target: Target) -> None:
    """Create the schema and its tables on first use; refuse a schema of another program or
    of a newer GridPilot."""
    schema = sql.Identifier(target.schema)
    with conn.transaction():
        _advisory_lock(conn, "migrate", target.schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        row = conn.execute(
            "SELECT to_regclass(format('%%I.gridpilot_meta', %s::text)) IS NOT NULL, "
            "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            " WHERE n.nspname = %s)",
            (target.schema, target.schema),
        ).fetchone()
        assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
        has_meta, objects = row
        if not has_meta:
            if objects:
                raise StorageError(
                    f"{target.describe} already holds tables that GridPilot did not create; "
                    "set storage.postgresql.schema_name to a new schema"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO gridpilot_meta (key, value) VALUES ('schema_version', %s)",
                (str(SCHEMA_VERSION),),
            )
            return
        version_row = conn.execute(
            "SELECT value FROM gridpilot_meta WHERE key = 'schema_version'"
        ).fetchone()
        version = int(version_row[0]) if version_row else 0
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"{target.describe} has GridPilot schema version {version}, this GridPilot "
                f"knows {SCHEMA_VERSION}; upgrade GridPilot or use another schema_name"
            )


def _load_partitions(conn: Conn) -> set[tuple[Level, int]]:
    out: set[tuple[Level, int]] = set()
    for level in TABLES:
        out.update((level, start) for _, start, _ in _list_partitions(conn, level=level))
    return out


def _list_partitions(conn: Conn, *, level: Level) -> list[tuple[str, int, int]]:
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i "
        "JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = format('%%I.%%I', current_schema(), %s::text)::regclass "
        "AND c.relkind = 'r'",
        (TABLES[level],),
    ).fetchall()
    return [(name, *parse_partition_bound(bound)) for name, bound in rows]


def _create_partitions(conn: Conn, missing: set[tuple[Level, int]], schema: str) -> None:
    for level, start in sorted(missing, key=lambda p: (p[1], list(TABLES).index(p[0]))):
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {_DDL_LOCK_TIMEOUT_MS}")
            _advisory_lock(conn, "partitions", schema)
            conn.execute(create_partition_sql(level, start))


def _drop_partition(conn: Conn, *, name: str) -> None:
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {_DDL_LOCK_TIMEOUT_MS}")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def _advance_horizons(
    conn: Conn, *, horizons: dict[Level, int], schema: str
) -> tuple[int, dict[Level, int]]:
    """Move each level's horizon forward (never back); returns the rows newly hidden and the
    horizons now in force."""
    hidden = 0
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {_RETENTION_STATEMENT_TIMEOUT_MS}")
        _advisory_lock(conn, "retention", schema)
        known = {
            Level(level): horizon
            for level, horizon in conn.execute("SELECT level, horizon_ms FROM retention_horizon")
        }
        effective = dict(known)
        for level, horizon in horizons.items():
            previous = known.get(level)
            if previous is not None and horizon <= previous:
                continue
            table, column = TABLES[level], TIME_COLUMN[level]
            count_sql = f"SELECT count(*) FROM {table} WHERE {column} < %s"  # noqa: S608
            params: tuple[int, ...] = (horizon,)
            if previous is not None:
                count_sql += f" AND {column} >= %s"
                params = (horizon, previous)
            row = conn.execute(count_sql, params).fetchone()
            hidden += int(row[0]) if row else 0
            conn.execute(
                "INSERT INTO retention_horizon (level, horizon_ms) VALUES (%s, %s) "
                "ON CONFLICT (level) DO UPDATE SET "
                "horizon_ms = greatest(retention_horizon.horizon_ms, excluded.horizon_ms)",
                (level.value, horizon),
            )
            effective[level] = horizon
    return hidden, effective


def _write_events(conn: Conn, *, columns: tuple[list[Any], ...]) -> int:
    cur = conn.execute(
        "INSERT INTO events (site, ts_ms, source, message, level) "
        "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[]) "
        "ON CONFLICT DO NOTHING",
        columns,
    )
    return cur.rowcount


def _delete_old_events(conn: Conn, *, before_ms: int) -> int:
    return conn.execute("DELETE FROM events WHERE ts_ms < %s", (before_ms,)).rowcount


# --- reads (reader threads) ---------------------------------------------------------------


def _read_events(
    conn: Conn, *, site: str, limit: int, before_ms: int | None, level: str | None
) -> list[Event]:
    query = "SELECT ts_ms, level, source, message FROM events WHERE site = %s"
    params: list[object] = [site]
    if before_ms is not None:
        query += " AND ts_ms < %s"
        params.append(before_ms)
    if level is not None:
        query += " AND level = %s"
        params.append(level)
    query += " ORDER BY ts_ms DESC, source, message LIMIT %s"
    params.append(limit)
    rows = conn.execute(query, params).fetchall()
    return [Event(site, ts, lvl, source, message) for ts, lvl, source, message in rows]


def _read_series(conn: Conn, *, site: str | None) -> list[SeriesKey]:
    if site is None:
        rows = conn.execute("SELECT site, device, point FROM series ORDER BY 1, 2, 3").fetchall()
    else:
        rows = conn.execute(
            "SELECT site, device, point FROM series WHERE site = %s ORDER BY 1, 2, 3", (site,)
        ).fetchall()
    return [SeriesKey(*row) for row in rows]


def _read_latest(conn: Conn, *, site: str, device: str | None) -> list[LatestValue]:
    query = (
        "SELECT s.site, s.device, s.point, l.ts_ms, l.value "
        "FROM series AS s JOIN latest AS l ON l.series_id = s.id WHERE s.site = %s"
    )
    params: tuple[str, ...] = (site,)
    if device is not None:
        query += " AND s.device = %s"
        params = (site, device)
    rows = conn.execute(query + " ORDER BY s.device, s.point", params).fetchall()
    return [LatestValue(SeriesKey(s, d, p), ts, v) for s, d, p, ts, v in rows]


def _read_history(
    conn: Conn,
    *,
    series: SeriesKey,
    start_ms: int,
    end_ms: int,
    every_ms: int | None,
    agg: Agg,
) -> list[tuple[int, float]]:
    # One snapshot for the horizons and the data (REPEATABLE READ), so a retention pass
    # that commits in between cannot pair an old horizon with already-dropped partitions.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = conn.execute(
            "SELECT s.id, h.level, h.horizon_ms FROM series AS s "
            "LEFT JOIN retention_horizon AS h ON true "
            "WHERE s.site = %s AND s.device = %s AND s.point = %s",
            (series.site, series.device, series.point),
        ).fetchall()
        if not rows:
            return []
        sid = rows[0][0]
        horizons = {Level(level): horizon for _, level, horizon in rows if level is not None}
        if every_ms is None:
            lo = max(start_ms, horizons.get(Level.RAW, start_ms))
            if lo >= end_ms:
                return []
            return conn.execute(
                "SELECT ts_ms, value FROM samples "
                "WHERE series_id = %s AND ts_ms >= %s AND ts_ms < %s ORDER BY ts_ms",
                (sid, lo, end_ms),
            ).fetchall()
        level = choose_level(every_ms, start_ms, horizons)
        out: list[tuple[int, float]] = []
        for query, params in history_sql(
            level,
            start_ms=start_ms,
            end_ms=end_ms,
            every_ms=every_ms,
            agg=agg,
            horizons=horizons,
        ):
            out += conn.execute(query, {**params, "sid": sid}).fetchall()
        return out
