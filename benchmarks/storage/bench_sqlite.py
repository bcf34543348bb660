"""Write throughput and query latency of the SQLite storage backend.

    .venv/bin/python benchmarks/storage/bench_sqlite.py            # full run, ~4 min
    .venv/bin/python benchmarks/storage/bench_sqlite.py --quick    # smaller, ~40 s

Write shape: devices with 10 points each, every point sampled once a second; a tick's
messages arrive device by device in random order and are cut into batches of the given
size, as ingest would. Before measuring, each series gets a history (``--prefill-ticks``)
so that the tables have their steady-state shape (several pages per series) rather than
the flattering shape of an empty file. "in flight" is how many write() calls the caller
keeps outstanding; the writer merges queued batches into one transaction.

Query shape: a month of 10-second samples of a few series, read back at 15 minutes (from
the 15-min rollup) and, for comparison, at 7.5 minutes (no rollup divides it: raw scan).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gridpilot.config.models import RetentionConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, SqliteStorage

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
POINTS_PER_DEVICE = 10
KEEP_ALL = RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None, rollup_1h=None)


def live_batches(devices: int, first_tick: int, batch: int, total: int) -> list[list[Sample]]:
    """``total`` samples of 1 Hz telemetry from ``first_tick`` on, cut into batches."""
    rng = random.Random(first_tick)
    order = list(range(devices))
    out: list[list[Sample]] = []
    current: list[Sample] = []
    tick = first_tick
    made = 0
    while made < total:
        rng.shuffle(order)
        ts = T0 + tick * 1000
        for d in order:
            for p in range(POINTS_PER_DEVICE):
                current.append(Sample("bench", f"dev{d:05d}", f"p{p}_w", ts, rng.random() * 1e4))
                made += 1
                if len(current) == batch:
                    out.append(current)
                    current = []
        tick += 1
    if current:
        out.append(current)
    return out


async def write_all(storage: SqliteStorage, batches: list[list[Sample]], in_flight: int) -> float:
    """Seconds to write every batch, keeping ``in_flight`` write calls outstanding."""
    pending = iter(batches)

    async def writer() -> None:
        # The workers share one iterator: each takes the next batch when its write returns.
        for batch in pending:
            await storage.write(batch)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(in_flight):
            tg.create_task(writer())
    return time.perf_counter() - started


def prefill(devices: int, ticks: int) -> Iterator[list[Sample]]:
    """History for every series, in large batches (not measured)."""
    batch: list[Sample] = []
    for d in range(devices):
        for p in range(POINTS_PER_DEVICE):
            for k in range(ticks):
                batch.append(Sample("bench", f"dev{d:05d}", f"p{p}_w", T0 + k * 1000, float(k)))
                if len(batch) == 100_000:
                    yield batch
                    batch = []
    if batch:
        yield batch


async def bench_writes(
    workdir: Path, series: int, batch: int, total: int, in_flight: int, prefill_ticks: int
) -> tuple[float, float]:
    """(new samples/s, re-sent duplicate samples/s) for one shape."""
    devices = series // POINTS_PER_DEVICE
    path = workdir / f"w-{series}-{batch}-{in_flight}.db"
    async with SqliteStorage(path, KEEP_ALL) as storage:
        for chunk in prefill(devices, prefill_ticks):
            await storage.write(chunk)
        batches = live_batches(devices, prefill_ticks, batch, total)
        new_s = await write_all(storage, batches, in_flight)
        dup_s = await write_all(storage, batches, in_flight)  # at-least-once replay
    _remove_files(workdir, path.name)
    return total / new_s, total / dup_s


def _remove_files(workdir: Path, name: str) -> None:
    """Free the disk between shapes (the database with its -wal/-shm)."""
    for file in workdir.glob(name + "*"):
        file.unlink()


async def bench_queries(
    workdir: Path, series: int, days: int, repeats: int
) -> list[tuple[str, float]]:
    """Median milliseconds of history queries over ``days`` of 10-second data."""
    keys = [SeriesKey("bench", "meter", f"p{n}_w") for n in range(series)]
    end = T0 + days * 86_400_000
    rng = random.Random(7)
    rows: list[tuple[str, float]] = []
    async with SqliteStorage(workdir / "q.db", KEEP_ALL) as storage:
        batch: list[Sample] = []
        started = time.perf_counter()
        written = 0
        for ts in range(T0, end, 10_000):
            for key in keys:
                batch.append(Sample(key.site, key.device, key.point, ts, rng.random() * 1e4))
            if len(batch) >= 50_000:
                written += (await storage.write(batch)).written
                batch = []
        written += (await storage.write(batch)).written
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
                points = await storage.history(keys[0], start, stop, every, agg)
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
            await storage.latest("bench")
        rows.append(("latest() of the site [ms]", (time.perf_counter() - t) * 1000 / repeats))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run for a smoke check")
    parser.add_argument("--dir", type=Path, help="where to put the files (default: a temp dir)")
    args = parser.parse_args()
    quick = args.quick
    total = 200_000 if quick else 1_000_000
    prefill_ticks = 300 if quick else 1_800
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        print(f"write: {total:,} new samples per row after {prefill_ticks} ticks of history")
        print(
            f"{'series':>7} {'batch':>7} {'in flight':>9} {'new samples/s':>14} {'re-sent/s':>11}"
        )
        shapes = [
            (2_000, 5_000, 1),
            (2_000, 5_000, 4),
            (2_000, 20_000, 1),
            (2_000, 50_000, 1),
            (20_000, 5_000, 1),
            (20_000, 5_000, 8),
            (20_000, 50_000, 1),
        ]
        for series, batch, in_flight in shapes:
            ticks = prefill_ticks if series <= 2_000 else prefill_ticks // 10
            new_rate, dup_rate = await bench_writes(workdir, series, batch, total, in_flight, ticks)
            print(
                f"{series:>7,} {batch:>7,} {in_flight:>9} {new_rate:>14,.0f} {dup_rate:>11,.0f}",
                flush=True,
            )
        print()
        days = 7 if quick else 31
        for label, value in await bench_queries(workdir, 4, days, 5 if quick else 20):
            print(f"{label:<60} {value:>12,.1f}")


if __name__ == "__main__":
    asyncio.run(main())
