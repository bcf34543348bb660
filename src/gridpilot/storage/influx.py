"""InfluxDB storage backend: line protocol and InfluxQL over the v1 HTTP API.

The v1 ``/write`` and ``/query`` endpoints are served by InfluxDB 1.x natively and by 2.x
and 3.x for compatibility, so one client covers them all (tested against Debian's 1.6.7).

Layout (one database; see README "InfluxDB layout", which Grafana users read)::

    samples            tags site, device, point   value=<float>            at the sample's time
    rollup_1m          tags site, device, point   min, max, sum, mean, last=<float>,
    rollup_15m                                    count=<int>, last_ts=<int, epoch ms>
    rollup_1h                                     at the bucket start (epoch-aligned UTC)
    latest             tags site, device, point   ts_ms=<int>, value=<float>, at time 0
                                                  rolled_ms=<int, epoch ms>
    events             tags site, source, key     level=<str>, message=<str>  at the event's time
    retention_horizon  tag level                  horizon_ms=<int>            at time 0

``latest`` holds one point per series (at time 0, so it is overwritten in place) and doubles
as the catalog of series: InfluxDB drops a series from its index once retention deleted its
last point, but GridPilot keeps listing it. ``key`` of an event is a hash of its message,
so two events of one source in the same millisecond are two points, not one overwriting
the other.

Why GridPilot computes the rollups instead of continuous queries: the contract wants them
current when ``write`` returns, exact for samples that arrive late or are back-filled (a
continuous query only ever aggregates a window just behind the server's clock, once), and
counted once per sample whatever is re-sent; continuous queries exist in 1.x only (2.x has
tasks, 3.x neither).

Closed and open buckets: a bucket is written once, when it *closes* -- its series has a
sample in a later bucket of that level. ``latest.rolled_ms`` of a series is an instant U
(its newest sample, never moving back) such that at every level the buckets before
floor(U) are written and the bucket at floor(U) is open: history reads a rollup up to
floor(U) and the raw samples from there on (grouped by InfluxDB), so answers are current
when ``write`` returns while a live stream costs one rollup point per bucket per level,
not one per write. A late sample into a closed bucket is folded into the stored bucket
(read back, written again). Retention first closes the open buckets that a delete would
reach (a series that stopped reporting: U moves past its last hour), since raw samples
answer for them. Write order: samples, then the buckets they close, then ``latest``; a
write failing in between leaves U behind the buckets written, so queries read raw samples
there, which hold everything.

Why retention is ``DELETE`` per level and not retention policies: a retention policy drops
whole shard groups by the server's clock; the contract cuts each level at an instant given
by the caller (bucket-exact for rollups) and keeps the newest value and the list of series.

First value wins: InfluxDB overwrites a point written again with the same series and time
(last value wins), so ``write`` writes only what is not stored yet. It knows the newest
stored timestamp and rolled-up instant of every series (read once per site from
``latest``): a sample newer than that is new for certain, and only the others -- re-sends,
late samples -- are looked up, in one query per site over the time spans they fall in. The
open buckets' contents are remembered as they grow; a bucket that closes without being
remembered (the first close after opening the storage, or after a failed write) is summed
from its raw samples by InfluxDB. A steady stream of live samples therefore costs no read,
only writes: the samples, one point per closing bucket and one ``latest`` point per series.

Writes of one ``InfluxStorage`` are serialised (a lock), which makes this exact. It relies
on *one writing process per database*: a second writer's samples would not be in what this
one remembers (several readers -- API processes -- are fine). If a write fails after its
retries, what was remembered is dropped and read back by the next write; samples are
written before their rollups, so a batch that failed half-way and is re-sent finds the
samples that made it as duplicates: a closed bucket can then lack them, never count a
sample twice.

Errors::

    StorageError            rejected request (bad credentials, no such database, ...)
     +-- StorageUnavailable server unreachable, timing out or overloaded after retries
    ValueError              a sample that should never have reached storage
"""

# ruff: noqa: S608 - InfluxQL is assembled from this module's constants; every value from
# outside goes through _literal (strings), _ident (names) or int formatting (times).
from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from math import isfinite
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx
import orjson

from gridpilot.config.models import InfluxDBConfig, RetentionConfig, site_path
from gridpilot.config.secrets import SecretError, read_secret
from gridpilot.model import Sample, SeriesKey
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
from gridpilot.storage.levels import (
    ROLLUP_LEVELS,
    choose_level,
    floor_to,
    horizon_after,
    plan_pieces,
)

_log = logging.getLogger(__name__)

SAMPLES: Final = "samples"
LATEST: Final = "latest"
EVENTS: Final = "events"
HORIZONS: Final = "retention_horizon"
ROLLUP_MEASUREMENTS: Final[dict[Level, str]] = {
    Level.M1: "rollup_1m",
    Level.M15: "rollup_15m",
    Level.H1: "rollup_1h",
}

# InfluxDB keeps nanoseconds in an int64 and reserves both extremes.
_MIN_NS: Final = -9_223_372_036_854_775_806
_MAX_NS: Final = 9_223_372_036_854_775_806
MIN_TS_MS: Final = -(-_MIN_NS // 1_000_000)
MAX_TS_MS: Final = _MAX_NS // 1_000_000

# Rows per chunk of a streamed (chunked) query answer: long raw reads arrive in pieces and
# never hit a server's max-row-limit.
_CHUNK_ROWS: Final = 10_000
# Compress write bodies above this size in a worker thread (zlib releases the GIL), so a
# 100k-sample batch never holds the event loop for the few ms compression takes.
_THREAD_GZIP_BYTES: Final = 256 * 1024
# Line protocol is built in slices of this many samples, yielding to the loop in between.
_BUILD_SLICE: Final = 5_000
_RETRY_STATUS: Final = frozenset({429, 500, 502, 503, 504})
_BACKOFF_FIRST_S: Final = 0.1
_BACKOFF_MAX_S: Final = 5.0
# Stored timestamps are looked up per site over spans of the batch's older samples; a gap
# this wide between two of them starts another span (rollup buckets: 60x that).
_WINDOW_GAP_MS: Final = 60_000
_M1: Final = Level.M1.bucket_ms
# Write requests in flight at once, per storage.
_WRITES_IN_FLIGHT: Final = 3

SeriesTuple = tuple[str, str, str]
# A rollup bucket's partial aggregate: min, max, sum, count, ts of the newest sample, its value.
_Partial = tuple[float, float, float, int, int, float]


@dataclass(frozen=True, slots=True)
class _Series:
    """One series of a query answer: its tags (when grouped by tag) and rows."""

    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


class InfluxStorage:
    """Time series in an InfluxDB database, through the v1 HTTP API.

    Use as an async context manager::

        async with InfluxStorage("http://127.0.0.1:8086", "gridpilot", retention) as s:
            await s.write(samples)

    ``token`` (InfluxDB 2.x/3.x) or ``username``/``password`` (1.x) authenticate; every
    request has ``timeout``; failed connections, timeouts and 429/5xx answers are retried
    ``max_retries`` times with exponential backoff.
    """

    def __init__(
        self,
        url: str,
        database: str,
        retention: RetentionConfig | None = None,
        *,
        retention_policy: str | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        create_database: bool = True,
        timeout: timedelta = timedelta(seconds=10),
        max_retries: int = 4,
        write_batch_points: int = 5_000,
    ) -> None:
        self._url = url.rstrip("/")
        self._database = database
        self._retention = retention if retention is not None else RetentionConfig()
        self._rp = retention_policy
        self._create_database = create_database
        self._timeout_s = timeout.total_seconds()
        self._max_retries = max_retries
        self._batch_points = write_batch_points
        self._headers = {"Authorization": f"Token {token}"} if token else {}
        self._auth = httpx.BasicAuth(username, password or "") if username else None
        self._client: httpx.AsyncClient | None = None
        self._write_lock = asyncio.Lock()
        # What this process knows the server holds (single writer; see the module doc),
        # touched only under the write lock: the newest stored ts of each series of the
        # sites it loaded, and the bucket of each level it wrote last for each series.
        self._newest: dict[SeriesTuple, int] = {}
        self._sites_loaded: set[str] = set()
        # Each series' rolled-up-to instant U (``latest.rolled_ms``): at every level, the
        # buckets that start before floor(U) are written; the bucket at floor(U) and later
        # ones are *open*, answered from raw samples by queries, written once they close.
        self._rolled: dict[SeriesTuple, int] = {}
        # ``latest`` points to write again: it lags the stored samples (a failed write).
        self._latest_due: dict[SeriesTuple, tuple[int, float]] = {}
        # What this process knows an open bucket holds (samples stored and written since
        # it opened): (bucket start, partial). Absent or another bucket: read when needed.
        self._open: dict[Level, dict[SeriesTuple, tuple[int, _Partial]]] = {
            level: {} for level in ROLLUP_LEVELS
        }

    @classmethod
    def from_config(
        cls,
        config: InfluxDBConfig,
        retention: RetentionConfig,
        base_dir: Path,
        environ: Mapping[str, str] | None = None,
    ) -> InfluxStorage:
        """The storage a site file configures; reads the password or token it names."""
        try:
            password = read_secret(
                what="storage.influxdb.password",
                env_name=config.password_env,
                file=_under(base_dir, config.password_file),
                environ=environ,
            )
            token = read_secret(
                what="storage.influxdb.token",
                env_name=config.token_env,
                file=_under(base_dir, config.token_file),
                environ=environ,
            )
        except SecretError as exc:
            raise StorageError(str(exc)) from exc
        return cls(
            config.url,
            config.database,
            retention,
            retention_policy=config.retention_policy,
            username=config.username,
            password=password,
            token=token,
            create_database=config.create_database,
            timeout=config.timeout,
            max_retries=config.max_retries,
            write_batch_points=config.write_batch_points,
        )

    def __str__(self) -> str:
        return f"InfluxDB {self._url} database {self._database!r}"

    @property
    def url(self) -> str:
        return self._url

    @property
    def database(self) -> str:
        return self._database

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> Self:
        """Connect, check the server answers and the credentials hold, create the database
        when configured to."""
        if self._client is not None:
            return self
        client = httpx.AsyncClient(
            base_url=self._url,
            timeout=httpx.Timeout(self._timeout_s),
            headers=self._headers,
            auth=self._auth,
            # Loopback or a configured server only; never a proxy from the environment.
            trust_env=False,
        )
        self._client = client
        try:
            await self._request("GET", "/ping", what="checking the server (/ping)")
            if self._create_database:
                await self._query(
                    [f"CREATE DATABASE {_ident(self._database)}"],
                    what=f"creating database {self._database!r}",
                    database=False,
                )
            # A read that fails with a clear message if the database is missing.
            await self._query([f"SELECT {_ident('ts_ms')} FROM {self._m(LATEST)} LIMIT 1"])
        except BaseException:
            self._client = None
            await client.aclose()
            raise
        return self

    async def close(self) -> None:
        """Close the HTTP connections. Idempotent; writes already waiting finish first
        (the write lock is fair), later calls fail with StorageError."""
        if self._client is None:
            return
        async with self._write_lock:
            client, self._client = self._client, None
            self._forget()
            if client is not None:
                await client.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- writes ------------------------------------------------------------------------

    async def write(self, samples: Sequence[Sample]) -> WriteResult:
        """Store samples idempotently (the first value of a (series, ts) wins) and fold the
        new ones into the 1 min / 15 min / 1 h rollups and ``latest``; stored on the server
        when this returns.

        Raises ValueError (naming the series) for a value that is not a finite number or a
        time InfluxDB cannot hold; then nothing of the batch is stored. StorageUnavailable:
        the server could not be reached after retries; re-send the batch later.
        """
        self._http()
        if not samples:
            return WriteResult(0, 0)
        firsts = _first_values(samples)
        async with self._write_lock:
            self._http()  # closed while this call waited for the lock
            try:
                written = await self._write_new(firsts)
            except BaseException:
                # The server may hold part of the batch: what this process remembers about
                # it is no longer certain, so the next write reads it back.
                self._forget()
                raise
        return WriteResult(written, len(samples) - written)

    async def _write_new(self, firsts: Mapping[SeriesTuple, Mapping[int, float]]) -> int:
        """Write what of the batch is not stored yet, with its rollups; returns how many."""
        await self._load_newest({key[0] for key in firsts})
        # A sample newer than the newest stored one of its series is new for certain; only
        # the others (re-sends, late samples) are looked up.
        suspects: dict[SeriesTuple, list[int]] = {}
        for key, values in firsts.items():
            newest = self._newest.get(key)
            if newest is not None:
                older = [t for t in values if t <= newest]
                if older:
                    suspects[key] = older
        stored = await self._stored_timestamps(suspects) if suspects else {}
        new: dict[SeriesTuple, Mapping[int, float]] = {}
        for key, values in firsts.items():
            known = stored.get(key)
            fresh = values if not known else {t: v for t, v in values.items() if t not in known}
            if fresh:
                new[key] = fresh
        if not new:
            if self._latest_due:
                await self._write_lines(
                    [
                        _latest_line(key, *due, self._rolled[key])
                        for key, due in self._latest_due.items()
                    ],
                    what="repairing latest values",
                )
                self._latest_due.clear()
            return 0
        written = sum(map(len, new.values()))
        plan = await self._plan_rollups(new)
        samples_lines = await self._sample_lines(new)
        lines: list[str] = []
        for level, buckets in plan.closed.items():
            measurement = ROLLUP_MEASUREMENTS[level]
            lines += [_rollup_line(measurement, key, b, part) for (key, b), part in buckets.items()]
        latest_lines, newest_now = self._latest_lines(new, plan)
        # Samples first, then the buckets they closed, then ``latest`` (with the instant up
        # to which rollups are written): a write failing half-way leaves queries reading
        # raw samples where the rollups may be short, never a bucket counted twice or a
        # rolled-up instant ahead of the buckets written.
        await self._write_lines(samples_lines, what=f"writing {written} samples")
        await self._write_lines(lines, what=f"writing the rollups of {written} samples")
        await self._write_lines(latest_lines, what=f"writing the latest of {written} samples")
        self._newest.update(newest_now)
        self._rolled.update(plan.rolled)
        self._latest_due.clear()
        for level, opened in plan.opened.items():
            open_buckets = self._open[level]
            for key, state in opened.items():
                if state is None:
                    open_buckets.pop(key, None)
                else:
                    open_buckets[key] = state
        return written

    def _latest_lines(
        self, new: Mapping[SeriesTuple, Mapping[int, float]], plan: _RollupPlan
    ) -> tuple[list[str], dict[SeriesTuple, int]]:
        """``latest`` points this write changes (the newest sample, the rolled-up instant,
        a repair), and the series whose newest sample moves."""
        latest_lines = [
            _latest_line(key, *due, self._rolled[key])
            for key, due in self._latest_due.items()
            if key not in new
        ]
        newest_now: dict[SeriesTuple, int] = {}
        for key, values in new.items():
            t = max(values)
            before = self._newest.get(key)
            fields = []
            due = self._latest_due.get(key)
            if before is None or t > before:
                newest_now[key] = t
                fields.append(f"ts_ms={t}i,value={values[t]!r}")
            elif due is not None:
                fields.append(f"ts_ms={due[0]}i,value={due[1]!r}")
            rolled, was = plan.rolled.get(key), self._rolled.get(key)
            # Only the buckets it falls in matter (the 1-min one changes first): a live
            # series within the same minute keeps the stored instant, and its latest point
            # stays two fields.
            if rolled is not None and (was is None or floor_to(rolled, _M1) != floor_to(was, _M1)):
                fields.append(f"rolled_ms={rolled}i")
            if fields:
                latest_lines.append(f"{LATEST},{_tags(key)} {','.join(fields)} 0")
        return latest_lines, newest_now

    async def _plan_rollups(  # noqa: PLR0915 - one pass over levels and series, in order
        self, new: Mapping[SeriesTuple, Mapping[int, float]]
    ) -> _RollupPlan:
        """Which rollup buckets the new samples close or change, with their contents.

        Per level and series, with U the rolled-up-to instant before and U' after this
        write (the newest sample, never moving back): buckets before floor(U) are written
        and a late sample there is folded into the stored bucket; buckets from floor(U) to
        before floor(U') close now and are written whole (the one at floor(U) may hold
        samples stored earlier: remembered, or read back); the bucket at floor(U') stays
        open and is not written.
        """
        partials = _partials(new)
        plan = _RollupPlan()
        late: dict[Level, list[tuple[SeriesTuple, int]]] = {}
        unknown: dict[Level, list[tuple[SeriesTuple, int]]] = {}
        after: dict[SeriesTuple, int] = {}
        for key, values in new.items():
            before = self._rolled.get(key)
            top = max(values)
            newest = self._newest.get(key)
            newest_after = top if newest is None or top > newest else newest
            after[key] = newest_after if before is None else max(before, newest_after)
            if after[key] != before:
                plan.rolled[key] = after[key]
        by_key: dict[Level, dict[SeriesTuple, dict[int, _Partial]]] = {}
        for level, level_parts in partials.items():
            grouped = by_key.setdefault(level, {})
            for (series, start), partial in level_parts.items():
                grouped.setdefault(series, {})[start] = partial
        # Samples stored past the open minute: only after a write that failed before its
        # rollups (or a series' first write that failed). Their buckets are rebuilt from
        # the raw samples, read whole (rare, and exact).
        overrun = await self._stored_since_open(new)
        for level, grouped in by_key.items():
            size = level.bucket_ms
            closed = plan.closed.setdefault(level, {})
            opened = plan.opened.setdefault(level, {})
            remembered = self._open[level]
            for key, parts in grouped.items():
                before = self._rolled.get(key)
                newest = self._newest.get(key)
                open_new = floor_to(after[key], size)
                open_old = None if before is None else floor_to(before, size)
                # What stored samples add to buckets from the old open one on: nothing when
                # the newest stored sample is older; else remembered, or read back.
                stored: dict[int, _Partial] = {}
                known = True
                if key in overrun and open_old is not None:
                    # (buckets before the open one are written and hold these already)
                    stored = {
                        b: part for b, part in overrun[key].get(level, {}).items() if b >= open_old
                    }
                elif open_old is not None and newest is not None and newest >= open_old:
                    have = remembered.get(key)
                    if have is not None and have[0] == open_old:
                        stored = {open_old: have[1]}
                    else:
                        known = False
                if open_old is not None and open_old < open_new:
                    opened[key] = None  # the old open bucket closes now
                for b in sorted(stored.keys() | parts.keys()):
                    content = _fold_opt(stored.get(b), parts.get(b))
                    if open_old is not None and b < open_old:  # a late sample
                        closed[key, b] = content
                        late.setdefault(level, []).append((key, b))
                    elif b < open_new:  # closes now
                        closed[key, b] = content
                        if b == open_old and not known:
                            unknown.setdefault(level, []).append((key, b))
                    elif b == open_old and not known:  # stays open, not remembered
                        opened[key] = None
                    else:  # stays or becomes the open bucket
                        opened[key] = (b, content)
                if (
                    not known
                    and open_old is not None
                    and open_old < open_new
                    and open_old not in parts
                ):
                    unknown.setdefault(level, []).append((key, open_old))
        await self._fold_stored(plan.closed, late, unknown, self._newest)
        return plan

    async def _stored_since_open(
        self, new: Mapping[SeriesTuple, Mapping[int, float]]
    ) -> dict[SeriesTuple, dict[Level, dict[int, _Partial]]]:
        """Per series whose stored samples reach past its open minute, the partials of the
        stored samples from its open hour on (read back whole)."""
        minute, hour = Level.M1.bucket_ms, Level.H1.bucket_ms
        spans: dict[SeriesTuple, tuple[int, int]] = {}
        for key in new:
            before, newest = self._rolled.get(key), self._newest.get(key)
            if (
                before is not None
                and newest is not None
                and newest >= floor_to(before, minute) + minute
            ):
                spans[key] = (floor_to(before, hour), newest + 1)
        return await self._stored_partials(spans)

    async def _stored_partials(
        self, spans: Mapping[SeriesTuple, tuple[int, int]]
    ) -> dict[SeriesTuple, dict[Level, dict[int, _Partial]]]:
        """Per series, the partials at every level of its stored samples in [lo, hi)."""
        if not spans:
            return {}
        keys = list(spans)
        statements = [
            f"SELECT {_ident('value')} FROM {self._m(SAMPLES)} WHERE {_one_series(key)} "
            f"AND {_time_range(*spans[key])}"
            for key in keys
        ]
        answers = await self._query(statements, what="reading samples a failed write left")
        out: dict[SeriesTuple, dict[Level, dict[int, _Partial]]] = {}
        for key, answer in zip(keys, answers, strict=True):
            values = {int(row[0]): float(row[1]) for s in answer for row in s.values}
            per_level = out.setdefault(key, {})
            for level, parts in (_partials({key: values}) if values else {}).items():
                per_level[level] = {b: part for (_, b), part in parts.items()}
        return out

    async def _fold_stored(
        self,
        closed: dict[Level, dict[tuple[SeriesTuple, int], _Partial]],
        late: Mapping[Level, list[tuple[SeriesTuple, int]]],
        unknown: Mapping[Level, list[tuple[SeriesTuple, int]]],
        newest: Mapping[SeriesTuple, int],
    ) -> None:
        """Fold into ``closed`` what the server holds for those buckets: the stored rollup
        bucket for late samples, the stored raw samples of a closing open bucket that this
        process does not remember (a restart, a failed write)."""
        statements: list[str] = []
        targets: list[tuple[Level, bool]] = []
        fields = ", ".join(map(_ident, ("min", "max", "sum", "count", "last_ts", "last")))
        v = _ident("value")
        for level, keys in late.items():
            for site, lo, hi in _site_windows(keys, _WINDOW_GAP_MS * 60):
                statements.append(
                    f"SELECT {fields} FROM {self._m(ROLLUP_MEASUREMENTS[level])} "
                    f"WHERE {_ident('site')} = {_literal(site)} "
                    f"AND {_time_range(lo, hi + 1)} {_BY_SERIES}"
                )
                targets.append((level, False))
        for level, keys in unknown.items():
            size = level.bucket_ms
            for site, lo, hi in _site_windows(keys, _WINDOW_GAP_MS * 60):
                # Sums per bucket; the newest sample's time and value in a bucket that was
                # open are the series' newest (``latest``), read with it.
                statements.append(
                    f"SELECT min({v}), max({v}), sum({v}), count({v}), last({v}) "
                    f"FROM {self._m(SAMPLES)} WHERE {_ident('site')} = {_literal(site)} "
                    f"AND {_time_range(lo, hi + size)} "
                    f"GROUP BY time({size}ms), {_BY_SERIES[len('GROUP BY ') :]} fill(none)"
                )
                targets.append((level, True))
        if not statements:
            return
        answers = await self._query(statements, what="reading the rollup buckets to update")
        stored: dict[Level, dict[tuple[SeriesTuple, int], _Partial]] = {}
        for (level, from_raw), answer in zip(targets, answers, strict=True):
            rows = stored.setdefault(level, {})
            for s in answer:
                key = _key(s.tags)
                if from_raw:
                    lts = newest.get(key, 0)  # only the bucket of the newest sample is used
                    for t, mn, mx, sm, ct, lv in s.values:
                        rows[key, t] = (float(mn), float(mx), float(sm), int(ct), lts, float(lv))
                else:
                    for t, mn, mx, sm, ct, lts, lv in s.values:
                        rows[key, t] = (
                            float(mn), float(mx), float(sm), int(ct), int(lts), float(lv)
                        )  # fmt: skip
        for level, keys in (*late.items(), *unknown.items()):
            rows = stored.get(level, {})
            out = closed.setdefault(level, {})
            for at in keys:
                row = rows.get(at)
                if row is not None:
                    part = out.get(at)
                    out[at] = row if part is None else _fold(row, part)

    def _forget(self) -> None:
        self._newest.clear()
        self._rolled.clear()
        self._latest_due.clear()
        self._sites_loaded.clear()
        for buckets in self._open.values():
            buckets.clear()

    async def _load_newest(self, sites: Iterable[str]) -> None:
        """Learn the newest stored timestamp of every series of sites not seen yet."""
        todo = sorted(set(sites) - self._sites_loaded)
        if not todo:
            return
        statements: list[str] = []
        for site in todo:
            where = f"WHERE {_ident('site')} = {_literal(site)} {_BY_SERIES}"
            statements.append(
                f"SELECT {_ident('ts_ms')}, {_ident('rolled_ms')} FROM {self._m(LATEST)} {where}"
            )
            # The newest raw sample too: a write that failed after its samples but before
            # ``latest`` left samples newer than ``latest`` says, which must count as stored.
            statements.append(f"SELECT last({_ident('value')}) FROM {self._m(SAMPLES)} {where}")
        answers = await self._query(statements, what="reading the newest sample times")
        for latest, raw in zip(answers[0::2], answers[1::2], strict=True):
            for s in latest:
                if s.values and s.values[0][1] is not None:
                    key = _key(s.tags)
                    newest = self._newest[key] = int(s.values[0][1])
                    self._rolled[key] = _rolled_or_all(s.values[0][2], newest)
            for s in raw:
                if s.values:
                    key = _key(s.tags)
                    ts, value = int(s.values[0][0]), float(s.values[0][1])
                    if ts > self._newest.get(key, ts - 1):
                        self._newest[key] = ts
                        # No ``latest`` at all: samples, and nothing else, were stored.
                        self._rolled.setdefault(key, MIN_TS_MS)
                        self._latest_due[key] = (ts, value)
        self._sites_loaded.update(todo)

    async def _stored_timestamps(
        self, suspects: Mapping[SeriesTuple, Sequence[int]]
    ) -> dict[SeriesTuple, set[int]]:
        """Which of the suspects' timestamps are stored, read per site over the spans the
        suspects fall in (a late sample of last week reads that minute of last week, not
        the week between)."""
        by_site: dict[str, list[int]] = {}
        for (site, _, _), stamps in suspects.items():
            by_site.setdefault(site, []).extend(stamps)
        statements = [
            f"SELECT {_ident('value')} FROM {self._m(SAMPLES)} "
            f"WHERE {_ident('site')} = {_literal(site)} AND {_time_range(lo, hi + 1)} {_BY_SERIES}"
            for site, stamps in by_site.items()
            for lo, hi in _windows(stamps, _WINDOW_GAP_MS)
        ]
        stored: dict[SeriesTuple, set[int]] = {}
        for answer in await self._query(statements, what="reading which samples are stored"):
            for s in answer:
                key = _key(s.tags)
                if key in suspects:
                    stored.setdefault(key, set()).update(row[0] for row in s.values)
        return stored

    async def _sample_lines(self, new: Mapping[SeriesTuple, Mapping[int, float]]) -> list[str]:
        lines: list[str] = []
        done = 0
        for key, values in new.items():
            head = f"{SAMPLES},{_tags(key)} value="
            lines += [f"{head}{v!r} {t}" for t, v in values.items()]
            if len(lines) - done >= _BUILD_SLICE:
                done = len(lines)
                await asyncio.sleep(0)  # let the loop run between slices of a big batch
        return lines

    async def write_events(self, events: Sequence[Event]) -> int:
        """Store events, each once (same site, time, source and message); returns how many
        were new."""
        self._http()
        if not events:
            return 0
        unique: dict[tuple[str, int, str, str], Event] = {}
        for e in events:
            unique.setdefault((e.site, e.ts_ms, e.source, e.message), e)
            _check_ts(e.ts_ms, f"event of {e.site} from {e.source}")
        async with self._write_lock:
            self._http()
            by_site: dict[str, list[int]] = {}
            for site, ts, _, _ in unique:
                by_site.setdefault(site, []).append(ts)
            # Over the spans the events fall in: a redelivered event of last month next to
            # today's reads that minute of last month, not the month between.
            spans = [
                (site, lo, hi)
                for site in sorted(by_site)
                for lo, hi in _windows(by_site[site], _WINDOW_GAP_MS)
            ]
            statements = [
                f"SELECT {_ident('message')}, {_ident('source')} FROM {self._m(EVENTS)} "
                f"WHERE {_ident('site')} = {_literal(site)} AND {_time_range(lo, hi + 1)}"
                for site, lo, hi in spans
            ]
            answers = await self._query(statements, what="reading stored events")
            stored = {
                (site, row[0], row[2], row[1])
                for (site, _, _), answer in zip(spans, answers, strict=True)
                for s in answer
                for row in s.values
            }
            fresh = [e for k, e in unique.items() if k not in stored]
            if fresh:
                await self._write_lines(
                    [_event_line(e) for e in fresh], what=f"writing {len(fresh)} event(s)"
                )
        return len(fresh)

    # --- reads -------------------------------------------------------------------------

    async def latest(self, site: str, device: str | None = None) -> list[LatestValue]:
        """Newest value of every series of a site (or of one device), sorted by series."""
        where = f"{_ident('site')} = {_literal(site)}"
        if device is not None:
            where += f" AND {_ident('device')} = {_literal(device)}"
        (answer,) = await self._query(
            [
                f"SELECT {_ident('ts_ms')}, {_ident('value')} FROM {self._m(LATEST)} "
                f"WHERE {where} {_BY_SERIES}"
            ],
            what=f"reading latest values of {site}",
        )
        out = [
            LatestValue(SeriesKey(*_key(s.tags)), int(s.values[0][1]), float(s.values[0][2]))
            for s in answer
            if s.values
        ]
        out.sort(key=lambda lv: (lv.series.device, lv.series.point))
        return out

    async def series(self, site: str | None = None) -> list[SeriesKey]:
        """Every series ever written (of a site), sorted. Retention keeps the list."""
        where = "" if site is None else f"WHERE {_ident('site')} = {_literal(site)} "
        (answer,) = await self._query(
            [f"SELECT {_ident('ts_ms')} FROM {self._m(LATEST)} {where}{_BY_SERIES}"],
            what="listing series",
        )
        return sorted(SeriesKey(*_key(s.tags)) for s in answer if s.values)

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
        ``ts_ms`` = bucket start), from the coarsest rollup that answers."""
        ts, values = await self._history_columns(series, start_ms, end_ms, every_ms, agg)
        return list(map(HistoryPoint, ts, values))

    async def history_columns(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> HistoryColumns:
        """What ``history`` answers, as two columns."""
        return HistoryColumns(*await self._history_columns(series, start_ms, end_ms, every_ms, agg))

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

    async def _history_columns(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None,
        agg: Agg,
    ) -> tuple[list[int], list[float]]:
        self._http()
        if every_ms is not None and every_ms <= 0:
            raise ValueError(f"every_ms must be positive, got {every_ms}")
        start_ms, end_ms = max(start_ms, MIN_TS_MS), min(end_ms, MAX_TS_MS)
        if start_ms >= end_ms:
            return [], []
        where = _one_series(series)
        what = f"reading history of {series}"
        if every_ms is None:
            (answer,) = await self._query(
                [
                    f"SELECT {_ident('value')} FROM {self._m(SAMPLES)} "
                    f"WHERE {where} AND {_time_range(start_ms, end_ms)}"
                ],
                what=what,
            )
            rows = [row for s in answer for row in s.values]
            return [r[0] for r in rows], [float(r[1]) for r in rows]
        horizons, rolled = await self._horizons_and_rolled(series)
        level = choose_level(every_ms, start_ms, horizons)
        statements: list[str] = []
        for p in plan_pieces(level, start_ms, end_ms):
            # A rollup piece reads its written buckets; from the series' first open bucket
            # on, the raw samples answer (see the module doc).
            cut = p.end_ms
            if p.level is not Level.RAW and rolled is not None:
                cut = min(max(floor_to(rolled, p.level.bucket_ms), p.start_ms), p.end_ms)
            if cut > p.start_ms:
                statements.append(
                    self._piece_sql(where, level=p.level, lo=p.start_ms, hi=cut, every_ms=every_ms)
                )
            if cut < p.end_ms:
                statements.append(
                    self._piece_sql(where, level=Level.RAW, lo=cut, hi=p.end_ms, every_ms=every_ms)
                )
        answers = await self._query(statements, what=what)
        # Pieces are oldest first and disjoint: a later piece's last value in a bucket is
        # the bucket's last value.
        buckets: dict[int, list[float]] = {}
        for answer in answers:
            for s in answer:
                for t, mn, mx, sm, ct, lv in s.values:
                    have = buckets.get(t)
                    if have is None:
                        buckets[t] = [mn, mx, sm, ct, lv]
                    else:
                        have[0] = min(have[0], mn)
                        have[1] = max(have[1], mx)
                        have[2] += sm
                        have[3] += ct
                        have[4] = lv
        ts = sorted(buckets)
        pick = _PICK[Agg(agg)]
        return ts, [float(pick(buckets[t])) for t in ts]

    def _piece_sql(self, where: str, *, level: Level, lo: int, hi: int, every_ms: int) -> str:
        """One piece of a history plan as rows (bucket, min, max, sum, count, last)."""
        span = _time_range(lo, hi)
        group = f"GROUP BY time({every_ms}ms) fill(none)"
        if level is Level.RAW:
            v = _ident("value")
            return (
                f"SELECT min({v}), max({v}), sum({v}), count({v}), last({v}) "
                f"FROM {self._m(SAMPLES)} WHERE {where} AND {span} {group}"
            )
        table = self._m(ROLLUP_MEASUREMENTS[level])
        mn, mx, sm, ct, lv = map(_ident, ("min", "max", "sum", "count", "last"))
        if level.bucket_ms == every_ms:  # one stored bucket per answer bucket: read as is
            return f"SELECT {mn}, {mx}, {sm}, {ct}, {lv} FROM {table} WHERE {where} AND {span}"
        return (
            f"SELECT min({mn}), max({mx}), sum({sm}), sum({ct}), last({lv}) "
            f"FROM {table} WHERE {where} AND {span} {group}"
        )

    async def events(
        self, site: str, *, limit: int, before_ms: int | None = None, level: str | None = None
    ) -> list[Event]:
        """The site's events newest first (then by source and message), at most ``limit``;
        with ``before_ms`` only older ones (the next page); with ``level`` only that level."""
        self._http()
        if limit <= 0:
            return []
        where = f"{_ident('site')} = {_literal(site)}"
        if before_ms is not None:
            where += f" AND time < {_ns(before_ms)}"
        if level is not None:
            where += f" AND {_ident('level')} = {_literal(level)}"
        fields = ", ".join(map(_ident, ("level", "source", "message")))
        head = f"SELECT {fields} FROM {self._m(EVENTS)} WHERE {where}"
        what = f"reading events of {site}"
        (answer,) = await self._query([f"{head} ORDER BY time DESC LIMIT {limit}"], what=what)
        rows = [row for s in answer for row in s.values]
        if len(rows) == limit:
            # The page may cut the oldest millisecond in two, and InfluxDB orders within it
            # by series, not by (source, message): read that millisecond whole.
            edge = rows[-1][0]
            (whole,) = await self._query([f"{head} AND time = {_ns(edge)}"], what=what)
            rows = [r for r in rows if r[0] != edge] + [r for s in whole for r in s.values]
        rows.sort(key=lambda r: (-r[0], r[2], r[3]))
        return [Event(site, int(t), lvl, src, msg) for t, lvl, src, msg in rows[:limit]]

    # --- retention ---------------------------------------------------------------------

    async def apply_retention(self, now_ms: int) -> int:
        """Delete what each level's retention no longer covers; returns points deleted.

        Raw samples older than ``now_ms - retention.raw`` go; a rollup bucket goes once all
        of it is older than its level's cutoff; events older than ``retention.events`` go.
        The new horizons are stored first, so that from then on no query reads a level that
        these deletes are thinning out.
        """
        self._http()
        async with self._write_lock:
            self._http()
            deleted = 0
            if self._retention.events is not None:
                cutoff = now_ms - self._retention.events // timedelta(milliseconds=1)
                deleted += await self._delete_before(EVENTS, "message", cutoff)
            keep = {
                Level.RAW: self._retention.raw,
                Level.M1: self._retention.rollup_1m,
                Level.M15: self._retention.rollup_15m,
                Level.H1: self._retention.rollup_1h,
            }
            horizons = {
                level: horizon_after(level, now_ms - period // timedelta(milliseconds=1))
                for level, period in keep.items()
                if period is not None
            }
            if not horizons:
                return deleted
            stored = await self._horizons()
            advanced = {lv: max(h, stored.get(lv, h)) for lv, h in horizons.items()}
            # Open buckets are answered from raw samples: write those that any of the
            # deletes would reach first (raw samples they are read from, or the level's own
            # buckets). What this process remembers is then read afresh.
            await self._close_stale(max(advanced.values()))
            self._forget()
            await self._write_lines(
                [f"{HORIZONS},level={lv.value} horizon_ms={h}i 0" for lv, h in advanced.items()],
                what="recording retention horizons",
            )
            for level, horizon in advanced.items():
                if level is Level.RAW:
                    deleted += await self._delete_before(SAMPLES, "value", horizon)
                else:
                    deleted += await self._delete_before(
                        ROLLUP_MEASUREMENTS[level], "count", horizon
                    )
        return deleted

    async def _delete_before(self, measurement: str, field: str, before_ms: int) -> int:
        """Delete the measurement's points older than ``before_ms``; returns how many.

        InfluxDB does not say how many points a DELETE removed: they are counted first
        (under the write lock, so nothing is added meanwhile by this process).
        """
        table = self._m(measurement)
        span = f"time < {_ns(before_ms)}"
        what = f"applying retention to {measurement}"
        (answer,) = await self._query(
            [f"SELECT count({_ident(field)}) FROM {table} WHERE {span}"], what=what
        )
        count = sum(int(row[1]) for s in answer for row in s.values)
        if count:
            # DELETE takes no retention policy: it deletes from every policy of the database.
            await self._query([f"DELETE FROM {_ident(measurement)} WHERE {span}"], what=what)
        return count

    async def _horizons_and_rolled(self, series: SeriesKey) -> tuple[dict[Level, int], int | None]:
        """The retention horizons, and the series' rolled-up-to instant (None: every bucket
        is written), in one request."""
        horizons, rolled = await self._query(
            [
                f"SELECT {_ident('horizon_ms')} FROM {self._m(HORIZONS)} "
                f"GROUP BY {_ident('level')}",
                f"SELECT {_ident('rolled_ms')} FROM {self._m(LATEST)} WHERE {_one_series(series)}",
            ],
            what=f"reading the horizons and rollup state of {series}",
        )
        values = [row[1] for s in rolled for row in s.values if row[1] is not None]
        return (
            {Level(s.tags["level"]): int(s.values[-1][1]) for s in horizons if s.values},
            int(values[0]) if values else None,
        )

    async def _close_stale(self, before_ms: int) -> None:
        """Write the open buckets of every series whose open hour starts before
        ``before_ms`` (one that stopped reporting), before retention deletes the raw samples
        that answer for them; their rolled-up instant moves past their newest sample."""
        latest, raw = await self._query(
            [
                f"SELECT {_ident('ts_ms')}, {_ident('rolled_ms')} FROM {self._m(LATEST)} "
                f"{_BY_SERIES}",
                # Samples a failed write left past what ``latest`` says count too.
                f"SELECT last({_ident('value')}) FROM {self._m(SAMPLES)} {_BY_SERIES}",
            ],
            what="reading which series have open rollup buckets",
        )
        raw_newest = {_key(s.tags): (int(s.values[0][0]), s.values[0][1]) for s in raw if s.values}
        minute, hour = Level.M1.bucket_ms, Level.H1.bucket_ms
        newest: dict[SeriesTuple, int] = {}
        rolled: dict[SeriesTuple, int] = {}
        repaired: dict[SeriesTuple, tuple[int, float]] = {}
        overrun: dict[SeriesTuple, tuple[int, int]] = {}
        overrun_from: dict[SeriesTuple, int] = {}
        unknown: dict[Level, list[tuple[SeriesTuple, int]]] = {}
        closed: dict[Level, dict[tuple[SeriesTuple, int], _Partial]] = {}
        for s in latest:
            if not s.values or s.values[0][1] is None or s.values[0][2] is None:
                continue
            key, ts, before = _key(s.tags), int(s.values[0][1]), int(s.values[0][2])
            if floor_to(before, hour) >= before_ms:
                continue
            last_ts, last_value = raw_newest.get(key, (ts, None))
            if last_ts > ts:
                ts = last_ts
                repaired[key] = (ts, float(last_value))
            newest[key] = ts
            rolled[key] = floor_to(ts, hour) + hour
            if ts >= floor_to(before, minute) + minute:
                overrun[key] = (floor_to(before, hour), ts + 1)
                overrun_from[key] = before
                continue
            for level in ROLLUP_LEVELS:
                start = floor_to(before, level.bucket_ms)
                if ts < start:
                    continue  # nothing stored in that open bucket
                have = self._open[level].get(key)
                if have is not None and have[0] == start:
                    closed.setdefault(level, {})[key, start] = have[1]
                else:
                    unknown.setdefault(level, []).append((key, start))
        if not rolled:
            return
        # Stored past the open minute (a failed write): every bucket from the open one on.
        for key, per_level in (await self._stored_partials(overrun)).items():
            for level, parts in per_level.items():
                opened_at = floor_to(overrun_from[key], level.bucket_ms)
                for b, part in parts.items():
                    if b >= opened_at:
                        closed.setdefault(level, {})[key, b] = part
        await self._fold_stored(closed, {}, unknown, newest)
        lines = [
            _rollup_line(ROLLUP_MEASUREMENTS[level], key, b, part)
            for level, buckets in closed.items()
            for (key, b), part in buckets.items()
        ]
        await self._write_lines(lines, what="writing the open rollup buckets of idle series")
        await self._write_lines(
            [
                _latest_line(key, *repaired[key], u)
                if key in repaired
                else f"{LATEST},{_tags(key)} rolled_ms={u}i 0"
                for key, u in rolled.items()
            ],
            what="recording the rollups of idle series",
        )

    async def _horizons(self) -> dict[Level, int]:
        (answer,) = await self._query(
            [f"SELECT {_ident('horizon_ms')} FROM {self._m(HORIZONS)} GROUP BY {_ident('level')}"],
            what="reading retention horizons",
        )
        return {Level(s.tags["level"]): int(s.values[-1][1]) for s in answer if s.values}

    # --- HTTP ----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise StorageError(f"storage {self} is not open; use `async with` or open()")
        return self._client

    def _m(self, measurement: str) -> str:
        """A measurement, qualified with the configured retention policy."""
        if self._rp is None:
            return _ident(measurement)
        return f"{_ident(self._database)}.{_ident(self._rp)}.{_ident(measurement)}"

    async def _write_lines(self, lines: list[str], *, what: str) -> None:
        """POST ``lines`` in gzip'd requests of ``write_batch_points`` lines, a few at once
        (the server parses one while this process builds and compresses the next)."""
        params = {"db": self._database, "precision": "ms"}
        if self._rp is not None:
            params["rp"] = self._rp
        pending: set[asyncio.Task[None]] = set()

        async def post(chunk: list[str]) -> None:
            body = ("\n".join(chunk) + "\n").encode()
            if len(body) >= _THREAD_GZIP_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, 1)
            else:
                body = gzip.compress(body, 1)
            await self._request(
                "POST",
                "/write",
                what=what,
                params=params,
                content=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )

        try:
            for first in range(0, len(lines), self._batch_points):
                if len(pending) >= _WRITES_IN_FLIGHT:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # raises the first failure
                pending.add(asyncio.create_task(post(lines[first : first + self._batch_points])))
            for task in pending:
                await task
        finally:
            for task in pending:
                task.cancel()

    async def _query(
        self, statements: Sequence[str], *, what: str = "querying", database: bool = True
    ) -> list[list[_Series]]:
        """Run InfluxQL statements in one request; one list of series per statement.

        The answer is streamed in chunks (``chunked=true``), which also lifts a server's
        ``max-row-limit``; chunks of one series are joined here.
        """
        data = {"q": ";".join(statements), "epoch": "ms", "chunked": "true"}
        data["chunk_size"] = str(_CHUNK_ROWS)
        if database:
            data["db"] = self._database
        response = await self._request("POST", "/query", what=what, data=data)
        out: list[dict[tuple[str, tuple[tuple[str, str], ...]], _Series]] = [{} for _ in statements]
        for line in response.content.splitlines():
            if not line.strip():
                continue
            try:
                chunk = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise StorageError(
                    f"{what}: {self} answered with something that is not InfluxDB JSON "
                    f"({line[:80]!r}); check storage.influxdb.url points at InfluxDB"
                ) from exc
            if "error" in chunk:
                raise StorageError(f"{what}: {self} refused the query: {chunk['error']}")
            for result in chunk.get("results", ()):
                if "error" in result:
                    raise StorageError(_statement_error(self, what, str(result["error"])))
                index = int(result.get("statement_id", 0))
                for s in result.get("series", ()):
                    tags = s.get("tags") or {}
                    key = (s.get("name", ""), tuple(sorted(tags.items())))
                    have = out[index].get(key)
                    if have is None:
                        out[index][key] = _Series(tags, s["columns"], s.get("values") or [])
                    else:
                        have.values.extend(s.get("values") or [])
        return [list(series.values()) for series in out]

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request with retries: connection failures, timeouts and 429/5xx answers are
        retried with exponential backoff (jittered); other refusals raise at once.

        Every request here may be repeated safely: writing a point again stores the same
        point, queries read, CREATE DATABASE and DELETE are idempotent.
        """
        client = self._http()
        delay = _BACKOFF_FIRST_S
        for attempt in range(self._max_retries + 1):
            try:
                response = await client.request(
                    method, path, params=params, data=data, content=content, headers=headers
                )
            except httpx.TimeoutException:
                problem = f"no answer within {self._timeout_s:g} s"
            except httpx.TransportError as exc:
                problem = f"cannot connect ({exc or type(exc).__name__})"
            else:
                if response.status_code < 300:
                    return response
                if response.status_code not in _RETRY_STATUS:
                    raise StorageError(_refusal(self, what, response))
                problem = f"HTTP {response.status_code}: {_body_error(response)}"
            if attempt == self._max_retries:
                raise StorageUnavailable(
                    f"{what}: {self} failed {attempt + 1} time(s), last: {problem}; check "
                    "that InfluxDB is running and reachable at storage.influxdb.url (try "
                    f"`curl -i {self._url}/ping`), then retry"
                )
            _log.warning("%s: %s: %s; retrying in %.2f s", what, self, problem, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
            delay = min(delay * 2, _BACKOFF_MAX_S)
        raise AssertionError("unreachable")  # the loop returns or raises


# --- line protocol and InfluxQL text -----------------------------------------------------

_BY_SERIES: Final = 'GROUP BY "site", "device", "point"'

_PICK: Final[dict[Agg, Callable[[list[Any]], float]]] = {
    Agg.MIN: lambda b: b[0],
    Agg.MAX: lambda b: b[1],
    Agg.SUM: lambda b: b[2],
    Agg.COUNT: lambda b: b[3],
    Agg.MEAN: lambda b: b[2] / b[3],
    Agg.LAST: lambda b: b[4],
}

_TAG_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def _tag(value: str, what: str) -> str:
    if not value or "\n" in value or value.endswith("\\"):
        raise ValueError(
            f"{what} {value!r} cannot be an InfluxDB tag (empty, a line break or a trailing "
            "backslash); ingest validation must reject it before storage"
        )
    return value.translate(_TAG_ESCAPES)


def _tags(key: SeriesTuple) -> str:
    site, device, point = key
    return f"site={_tag(site, 'site')},device={_tag(device, 'device')},point={_tag(point, 'point')}"


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _event_line(e: Event) -> str:
    # The key makes (site, source, message, time) the point's identity: events of one
    # source in the same millisecond with different messages must not overwrite each other.
    key = hashlib.sha256(e.message.encode()).hexdigest()[:16]
    return (
        f"{EVENTS},site={_tag(e.site, 'site')},source={_tag(e.source, 'source')},key={key} "
        f"level={_string_field(e.level)},message={_string_field(e.message)} {e.ts_ms}"
    )


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ns(ts_ms: int) -> int:
    """An instant in epoch ms as the nanoseconds InfluxQL compares, clamped to its range."""
    return min(max(ts_ms * 1_000_000, _MIN_NS), _MAX_NS)


def _time_range(start_ms: int, end_ms: int) -> str:
    """[start_ms, end_ms) as an InfluxQL condition."""
    return f"time >= {_ns(start_ms)} AND time < {_ns(end_ms)}"


def _one_series(key: SeriesKey | SeriesTuple) -> str:
    site, device, point = (key.site, key.device, key.point) if isinstance(key, SeriesKey) else key
    return (
        f"{_ident('site')} = {_literal(site)} AND {_ident('device')} = {_literal(device)} "
        f"AND {_ident('point')} = {_literal(point)}"
    )


def _key(tags: Mapping[str, str]) -> SeriesTuple:
    return (tags["site"], tags["device"], tags["point"])


def _check_ts(ts_ms: int, what: str) -> None:
    if not isinstance(ts_ms, int) or not MIN_TS_MS <= ts_ms <= MAX_TS_MS:
        raise ValueError(
            f"{what} at ts_ms={ts_ms!r} is outside what InfluxDB can store (epoch ms from "
            f"{MIN_TS_MS} to {MAX_TS_MS}, years 1677-2262); nothing of the batch was stored"
        )


def _first_values(samples: Sequence[Sample]) -> dict[SeriesTuple, dict[int, float]]:
    """The batch per series, the first value of each timestamp kept; checks every sample."""
    out: dict[SeriesTuple, dict[int, float]] = {}
    for s in samples:
        value = s.value
        if not isinstance(value, int | float) or not isfinite(value):
            raise ValueError(
                f"sample {s.site}/{s.device}/{s.point} at ts_ms={s.ts_ms} has value "
                f"{value!r}, not a finite number; ingest validation must reject it before "
                "storage - nothing of the batch was stored"
            )
        if not isinstance(s.ts_ms, int) or not MIN_TS_MS <= s.ts_ms <= MAX_TS_MS:
            _check_ts(s.ts_ms, f"sample {s.site}/{s.device}/{s.point}")
        key = (s.site, s.device, s.point)
        values = out.get(key)
        if values is None:
            _tags(key)  # refuses names that cannot be tags, before anything is written
            values = out[key] = {}
        values.setdefault(s.ts_ms, float(value))
    return out


def _partials(
    new: Mapping[SeriesTuple, Mapping[int, float]],
) -> dict[Level, dict[tuple[SeriesTuple, int], _Partial]]:
    """The new samples' partial aggregates per rollup bucket they touch.

    Grouped once into 1-minute partials; the 15 min and 1 h buckets fold those (as the
    SQLite backend does), not the samples again.
    """
    finest = ROLLUP_LEVELS[-1]
    size = finest.bucket_ms
    minute: dict[tuple[SeriesTuple, int], _Partial] = {}
    for key, values in new.items():
        stamps = sorted(values)
        # A run of samples of one bucket, oldest first: its last is the bucket's last.
        i = 0
        while i < len(stamps):
            bucket = floor_to(stamps[i], size)
            j = i
            while j < len(stamps) and stamps[j] < bucket + size:
                j += 1
            run = [values[t] for t in stamps[i:j]]
            at = (key, bucket)
            part = (min(run), max(run), math.fsum(run), j - i, stamps[j - 1], run[-1])
            have = minute.get(at)
            minute[at] = part if have is None else _fold(have, part)
            i = j
    partials = {finest: minute}
    for level in ROLLUP_LEVELS[:-1]:
        folded: dict[tuple[SeriesTuple, int], _Partial] = {}
        for (key, b), part in minute.items():
            at = (key, floor_to(b, level.bucket_ms))
            have = folded.get(at)
            folded[at] = part if have is None else _fold(have, part)
        partials[level] = folded
    return partials


@dataclass(slots=True)
class _RollupPlan:
    """What a write does to the rollups: buckets to write per level, open buckets to
    remember (None: forget), rolled-up-to instants that move."""

    closed: dict[Level, dict[tuple[SeriesTuple, int], _Partial]] = field(default_factory=dict)
    opened: dict[Level, dict[SeriesTuple, tuple[int, _Partial] | None]] = field(
        default_factory=dict
    )
    rolled: dict[SeriesTuple, int] = field(default_factory=dict)


def _latest_line(key: SeriesTuple, ts_ms: int, value: float, rolled_ms: int) -> str:
    return f"{LATEST},{_tags(key)} ts_ms={ts_ms}i,value={value!r},rolled_ms={rolled_ms}i 0"


def _rolled_or_all(rolled: int | None, newest: int) -> int:
    """A series' rolled-up-to instant from ``latest``; a series written before GridPilot
    kept it had every bucket written: past the hour of its newest sample."""
    if rolled is None:
        return floor_to(newest, Level.H1.bucket_ms) + Level.H1.bucket_ms
    return int(rolled)


def _fold_opt(a: _Partial | None, b: _Partial | None) -> _Partial:
    if a is None:
        assert b is not None  # noqa: S101 - callers pass at least one
        return b
    return a if b is None else _fold(a, b)


def _site_windows(
    keys: Iterable[tuple[SeriesTuple, int]], gap_ms: int
) -> list[tuple[str, int, int]]:
    """(site, lo, hi) spans covering the bucket starts of ``keys``, per site."""
    by_site: dict[str, list[int]] = {}
    for (site, _, _), b in keys:
        by_site.setdefault(site, []).append(b)
    return [
        (site, lo, hi) for site, starts in by_site.items() for lo, hi in _windows(starts, gap_ms)
    ]


def _rollup_line(measurement: str, key: SeriesTuple, bucket_ms: int, part: _Partial) -> str:
    mn, mx, sm, ct, lts, lv = part
    return (
        f"{measurement},{_tags(key)} min={mn!r},max={mx!r},sum={sm!r},mean={sm / ct!r},"
        f"count={ct}i,last={lv!r},last_ts={lts}i {bucket_ms}"
    )


def _windows(stamps: Iterable[int], gap_ms: int) -> list[tuple[int, int]]:
    """[lo, hi] spans covering ``stamps``; a gap wider than ``gap_ms`` starts a new span."""
    spans: list[tuple[int, int]] = []
    for t in sorted(set(stamps)):
        if spans and t - spans[-1][1] <= gap_ms:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t, t))
    return spans


def _fold(a: _Partial, b: _Partial) -> _Partial:
    last = (a[4], a[5]) if a[4] >= b[4] else (b[4], b[5])
    return (min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2], a[3] + b[3], *last)


def _under(base_dir: Path, path: Path | None) -> Path | None:
    return None if path is None else site_path(base_dir, path.expanduser())


def _body_error(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text[:200]


def _refusal(storage: InfluxStorage, what: str, response: httpx.Response) -> str:
    status, error = response.status_code, _body_error(response)
    if status == 401:
        return (
            f"{what}: {storage} refused the credentials (HTTP 401: {error}); check "
            "storage.influxdb.username and password_env/password_file (1.x) or "
            "token_env/token_file (2.x/3.x)"
        )
    if status == 403:
        return (
            f"{what}: {storage} denied access (HTTP 403: {error}); grant the user or token "
            f"read and write on database {storage.database!r}"
        )
    if status == 404 and "database not found" in error:
        return _statement_error(storage, what, error)
    if status == 404:
        return (
            f"{what}: {storage} has no {response.request.url.path} (HTTP 404); check that "
            "storage.influxdb.url is the InfluxDB HTTP API (port 8086 by default)"
        )
    if status == 413:
        return (
            f"{what}: {storage} refused a write as too large (HTTP 413); lower "
            "storage.influxdb.write_batch_points or raise the server's max-body-size"
        )
    return f"{what}: {storage} refused the request (HTTP {status}: {error})"


def _statement_error(storage: InfluxStorage, what: str, error: str) -> str:
    if "database not found" in error:
        return (
            f"{what}: {storage}: {error}; create it (CREATE DATABASE, or a bucket with a "
            "DBRP mapping on 2.x/3.x) or set storage.influxdb.create_database: true"
        )
    return f"{what}: {storage} rejected the query: {error}"
