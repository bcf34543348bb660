"""Write throughput and query latency of the PostgreSQL storage backend, beside a bare writer.

    .venv/bin/python benchmarks/storage/bench_postgres.py            # full run, ~6 min
    .venv/bin/python benchmarks/storage/bench_postgres.py --quick    # smaller, ~2 min
    .venv/bin/python benchmarks/storage/bench_postgres.py --dsn "host=db.example dbname=ems"

Runs against the PostgreSQL named by ``--dsn`` (default: the machine's, 127.0.0.1:5432,
database ``test``, as the tests use); every shape gets a fresh schema, dropped afterwards.
The write and query shapes are those of ``bench_sqlite.py`` (1 Hz data of 10-point
devices, batches as ingest cuts them, history prefilled; a month of 10-second data read
back at 15 min, 7.5 min and raw), so the backends' figures compare.

"bare" is the floor of what any client can do on this server: the same batches as binary
``COPY`` into one table with the same primary key, a transaction per batch, one batch at a
time, series ids known beforehand: no staging, no idempotency, no rollups, no ``latest``,
no partitions. The two take turns, a few batches each, so that other processes' load
falls on both alike. "ratio" is backend / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from bench_sqlite import KEEP_ALL, T0, live_batches, prefill, write_all
from psycopg import sql

from gridpilot.config.models import PostgresConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg
from gridpilot.storage.postgres import PostgresStorage, Target

DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test"


def fresh_schema(dsn: str, label: str) -> str:
    name = f"gp_bench_{os.getpid()}_{label}"
    drop_schema(dsn, name)
    return name


def drop_schema(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def storage(dsn: str, schema: str) -> PostgresStorage:
    target = Target.from_config(PostgresConfig(dsn=dsn, schema_name=schema), Path.cwd())
    return PostgresStorage(target, KEEP_ALL)


class BareCopy:
    """The bare writer: batches by binary COPY into one keyed table, a transaction each."""

    def __init__(self, dsn: str, schema: str, batches: list[list[Sample]]) -> None:
        self.ids: dict[tuple[str, str, str], int] = {}
        for batch in batches:
            for s in batch:
                self.ids.setdefault((s.site, s.device, s.point), len(self.ids))
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self.conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        self.conn.execute(
            "CREATE TABLE bare (series_id integer, ts_ms bigint, value double precision, "
            "PRIMARY KEY (series_id, ts_ms))"
        )

    def write(self, batches: list[list[Sample]]) -> float:
        """Seconds to COPY the batches, one transaction each."""
        ids = self.ids
        started = time.perf_counter()
        for batch in batches:
            with (
                self.conn.transaction(),
                self.conn.cursor() as cur,
                cur.copy("COPY bare FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["int4", "int8", "float8"])
                for s in batch:
                    copy.write_row((ids[(s.site, s.device, s.point)], s.ts_ms, s.value))
        return time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


async def bench_writes(
    dsn: str, series: int, batch: int, total: int, in_flight: int, prefill_ticks: int
) -> tuple[float, float, float]:
    """(new samples/s, re-sent duplicate samples/s, bare COPY samples/s) for one shape.

    The new samples go to the backend and to the bare writer in turns, ``in_flight``
    batches at a time (the same batches, moments apart): on a machine that others share,
    their load then falls on both alike and the ratio stays meaningful.
    """
    devices = series // 10
    schema = fresh_schema(dsn, f"w{series}_{batch}_{in_flight}")
    bare_schema = fresh_schema(dsn, "bare")
    batches = live_batches(devices, prefill_ticks, batch, total)
    new_s = bare_s = 0.0
    try:
        bare = BareCopy(dsn, bare_schema, batches)
        try:
            async with storage(dsn, schema) as store:
                for chunk in prefill(devices, prefill_ticks):
                    await store.write(chunk)
                for first in range(0, len(batches), in_flight):
                    turn = batches[first : first + in_flight]
                    new_s += await write_all(store, turn, in_flight)
                    bare_s += await asyncio.to_thread(bare.write, turn)
                dup_s = await write_all(store, batches, in_flight)
        finally:
            bare.close()
    finally:
        drop_schema(dsn, schema)
        drop_schema(dsn, bare_schema)
    return total / new_s, total / dup_s, total / bare_s


async def bench_queries(dsn: str, series: int, days: int, repeats: int) -> list[tuple[str, float]]:
    """Median milliseconds of history queries over ``days`` of 10-second data."""
    keys = [SeriesKey("bench", "meter", f"p{n}_w") for n in range(series)]
    end = T0 + days * 86_400_000
    rng = random.Random(7)
    rows: list[tuple[str, float]] = []
    schema = fresh_schema(dsn, "q")
    try:
        async with storage(dsn, schema) as store:
            batch: list[Sample] = []
            started = time.perf_counter()
            written = 0
            for ts in range(T0, end, 10_000):
                for key in keys:
                    batch.append(Sample(key.site, key.device, key.point, ts, rng.random() * 1e4))
                if len(batch) >= 50_000:
                    written += (await store.write(batch)).written
                    batch = []
            written += (await store.write(batch)).written
            rows.append(
                (
                    f"load {written:,} samples, {series} series, 50k batches [samples/s]",
                    written / (time.perf_counter() - started),
                )
            )

            async def timed(label: str, every: int | None, agg: Agg, start: int, stop: int) -> None:
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    points = await store.history(keys[0], start, stop, every, agg)
                    times.append((time.perf_counter() - t) * 1000)
                rows.append((f"{label} ({len(points):,} points) [ms]", statistics.median(times)))

            for agg in (Agg.MEAN, Agg.MAX, Agg.LAST):
                await timed(f"{days} d at 15 min, {agg}", 900_000, agg, T0, end)
            await timed(
                f"{days} d at 15 min, mean, unaligned ends",
                900_000,
                Agg.MEAN,
                T0 + 123_456,
                end - 654_321,
            )
            await timed(f"{days} d at 7.5 min, mean (raw scan)", 450_000, Agg.MEAN, T0, end)
            await timed("1 d raw", None, Agg.MEAN, T0, T0 + 86_400_000)
            t = time.perf_counter()
            for _ in range(repeats):
                await store.latest("bench")
            rows.append(("latest() of the site [ms]", (time.perf_counter() - t) * 1000 / repeats))
    finally:
        drop_schema(dsn, schema)
    return rows


def machine(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, psycopg {psycopg.__version__}, "
        f"PostgreSQL {row[0] if row else '?'}, load average {load}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run for a smoke check")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="libpq connection string (no password)")
    args = parser.parse_args()
    quick, dsn = args.quick, args.dsn
    total = 200_000 if quick else 500_000
    prefill_ticks = 300
    print(machine(dsn))
    print(f"write: {total:,} new samples per row after {prefill_ticks} ticks of history")
    print(
        f"{'series':>7} {'batch':>7} {'in flight':>9} {'new samples/s':>14} {'re-sent/s':>11} "
        f"{'bare COPY/s':>12} {'ratio':>6}"
    )
    shapes = [(2_000, 5_000, 1), (2_000, 5_000, 4), (2_000, 50_000, 1), (20_000, 50_000, 1)]
    if quick:
        shapes = shapes[:1] + shapes[2:3]
    for series, batch, in_flight in shapes:
        ticks = prefill_ticks if series <= 2_000 else prefill_ticks // 10
        new_rate, dup_rate, bare_rate = await bench_writes(
            dsn, series, batch, total, in_flight, ticks
        )
        print(
            f"{series:>7,} {batch:>7,} {in_flight:>9} {new_rate:>14,.0f} {dup_rate:>11,.0f} "
            f"{bare_rate:>12,.0f} {new_rate / bare_rate:>6.2f}",
            flush=True,
        )
    print()
    days = 7 if quick else 31
    for label, value in await bench_queries(dsn, 4, days, 5 if quick else 20):
        print(f"{label:<60} {value:>12,.1f}")
    print("load average after:", ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    asyncio.run(main())
