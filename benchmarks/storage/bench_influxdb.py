"""Write throughput and query latency of the InfluxDB storage backend, beside a bare writer.

    .venv/bin/python benchmarks/storage/bench_influxdb.py            # full run, 15-25 min
    .venv/bin/python benchmarks/storage/bench_influxdb.py --quick    # smaller, 4-6 min
    .venv/bin/python benchmarks/storage/bench_influxdb.py --url http://127.0.0.1:8086

Without ``--url`` it starts its own ``influxd`` (Debian's 1.x package) on free loopback
ports with its data in a temporary directory, as the tests do; every shape gets a fresh
database. The write and query shapes are those of ``bench_sqlite.py`` (1 Hz data of
10-point devices, batches as ingest cuts them, history prefilled; a month of 10-second data
read back at 15 min, 7.5 min and raw), so the two backends' figures compare.

"bare" is the floor of what any client can do on this server: the same samples as gzip'd
line protocol POSTed to ``/write`` in batches of 5,000 points, as many requests in flight
as the backend keeps (3), with no idempotency check, no rollups and no ``latest``; the two
take turns, a batch each, so that other processes' load falls on both alike. The
backend reads nothing back for live samples (it remembers each series' newest sample and
bucket) and writes the samples, then each touched series' 1 min / 15 min / 1 h buckets and
its latest point; "ratio" is backend / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # reuse the tests' private-server launcher

from bench_sqlite import KEEP_ALL, T0, live_batches, prefill, write_all  # noqa: E402
from tests.influxdb_server import InfluxServer  # noqa: E402

from gridpilot.model import Sample, SeriesKey  # noqa: E402
from gridpilot.storage import Agg  # noqa: E402
from gridpilot.storage.influx import _WRITES_IN_FLIGHT as WRITES_IN_FLIGHT  # noqa: E402
from gridpilot.storage.influx import InfluxStorage  # noqa: E402

_names = iter(range(10**6))
# Generous: a 50k-sample batch is one request of 50k+ lines on a loaded 2-core machine.
_TIMEOUT = timedelta(seconds=120)


def fresh_db(label: str) -> str:
    return f"bench_{label}_{os.getpid()}_{next(_names)}"


class BareWriter:
    """The bare writer: samples as gzip'd line protocol, 5,000 points a request, as many
    requests in flight as the backend keeps."""

    def __init__(self, url: str, database: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, timeout=60, trust_env=False)
        self.database = database

    async def create(self) -> None:
        await self.client.post("/query", data={"q": f'CREATE DATABASE "{self.database}"'})

    async def write(self, batches: list[list[Sample]]) -> float:
        """Seconds to POST the batches."""
        started = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()
        lines: list[str] = []

        async def send(chunk: list[str]) -> None:
            nonlocal pending
            if len(pending) >= WRITES_IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(_post(self.client, self.database, chunk)))

        for batch in batches:
            lines += [
                f"samples,site={s.site},device={s.device},point={s.point} value={s.value!r} "
                f"{s.ts_ms}"
                for s in batch
            ]
            while len(lines) >= 5_000:
                await send(lines[:5_000])
                del lines[:5_000]
        if lines:
            await send(lines)
        for task in pending:
            await task
        return time.perf_counter() - started

    async def close(self) -> None:
        await self.client.aclose()


async def _post(client: httpx.AsyncClient, database: str, lines: list[str]) -> None:
    body = gzip.compress(("\n".join(lines) + "\n").encode(), 1)
    response = await client.post(
        "/write",
        params={"db": database, "precision": "ms"},
        content=body,
        headers={"Content-Encoding": "gzip"},
    )
    response.raise_for_status()


async def bench_writes(
    url: str, series: int, batch: int, total: int, prefill_ticks: int
) -> tuple[float, float, float]:
    """(new samples/s, re-sent samples/s, bare samples/s) for one shape.

    The new samples go to the backend and to the bare writer in turns, a batch each (the
    same batch, moments apart): on a machine that others share, their load then falls on
    both alike and the ratio stays meaningful.
    """
    devices = series // 10
    batches = live_batches(devices, prefill_ticks, batch, total)
    ours, bare_db = fresh_db("w"), fresh_db("bare")
    bare = BareWriter(url, bare_db)
    new_s = bare_s = 0.0
    try:
        await bare.create()
        async with InfluxStorage(url, ours, KEEP_ALL, timeout=_TIMEOUT) as storage:
            for chunk in prefill(devices, prefill_ticks):
                await storage.write(chunk)
            for one in batches:
                new_s += await write_all(storage, [one], 1)
                bare_s += await bare.write([one])
            dup_s = await write_all(storage, batches, 1)  # at-least-once replay
    finally:
        await bare.close()
        await drop(url, ours, bare_db)
    return total / new_s, total / dup_s, total / bare_s


async def drop(url: str, *databases: str) -> None:
    """Free the server's disk between shapes (and leave nothing on a --url server)."""
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        for database in databases:
            await client.post("/query", data={"q": f'DROP DATABASE "{database}"'})


async def bench_queries(url: str, series: int, days: int, repeats: int) -> list[tuple[str, str]]:
    """Median and p99 milliseconds of history queries over ``days`` of 10-second data."""
    keys = [SeriesKey("bench", "meter", f"p{n}_w") for n in range(series)]
    end = T0 + days * 86_400_000
    rows: list[tuple[str, str]] = []
    database = fresh_db("q")
    try:
        return await _queries(url, database, keys, end, days, repeats, rows)
    finally:
        await drop(url, database)


async def _queries(
    url: str,
    database: str,
    keys: list[SeriesKey],
    end: int,
    days: int,
    repeats: int,
    rows: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    async with InfluxStorage(url, database, KEEP_ALL, timeout=_TIMEOUT) as storage:
        batch: list[Sample] = []
        started = time.perf_counter()
        written = 0
        n = 0
        for ts in range(T0, end, 10_000):
            for key in keys:
                n += 1
                batch.append(Sample(key.site, key.device, key.point, ts, (n * 7919 % 10_007) / 1.7))
            if len(batch) >= 50_000:
                written += (await storage.write(batch)).written
                batch = []
        written += (await storage.write(batch)).written
        rate = written / (time.perf_counter() - started)
        rows.append(
            (f"load {written:,} samples, {len(keys)} series, 50k batches", f"{rate:,.0f}/s")
        )

        async def timed(label: str, every: int | None, agg: Agg, start: int, stop: int) -> None:
            times = []
            points = []
            for _ in range(repeats):
                t = time.perf_counter()
                points = await storage.history(keys[0], start, stop, every, agg)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
            rows.append(
                (
                    f"{label} ({len(points):,} points)",
                    f"{statistics.median(times):.1f} / {p99:.1f} ms",
                )
            )

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
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            await storage.latest("bench")
            times.append((time.perf_counter() - t) * 1000)
        rows.append(("latest() of the site", f"{statistics.median(times):.1f} ms"))
    return rows


def describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores ({cpu}), "
        f"{platform.python_implementation()} {platform.python_version()}, commit {commit}"
    )


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run for a smoke check")
    parser.add_argument("--url", help="an InfluxDB 1.x to use instead of a private influxd")
    args = parser.parse_args()
    quick = args.quick
    total = 200_000 if quick else 1_000_000
    prefill_ticks = 60 if quick else 300
    server = None
    if args.url is None:
        server = InfluxServer(Path(tempfile.mkdtemp(prefix="bench-influxdb-")))
        server.start()
        url = server.url
    else:
        url = args.url
    try:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            version = (await client.get(f"{url}/ping")).headers.get("X-Influxdb-Version", "?")
        print(f"machine: {describe_machine()}; InfluxDB {version}")
        print(f"load average at start: {load_average()}")
        print(f"write: {total:,} new samples per row after {prefill_ticks} ticks of history")
        print(
            f"{'series':>7} {'batch':>7} {'new samples/s':>14} {'re-sent/s':>11} "
            f"{'bare/s':>10} {'ratio':>6}"
        )
        shapes = [(2_000, 5_000), (2_000, 20_000), (2_000, 50_000)]
        if not quick:
            shapes.append((20_000, 50_000))
        for series, batch in shapes:
            new_rate, dup_rate, bare_rate = await bench_writes(
                url, series, batch, total, prefill_ticks
            )
            print(
                f"{series:>7,} {batch:>7,} {new_rate:>14,.0f} {dup_rate:>11,.0f} "
                f"{bare_rate:>10,.0f} {new_rate / bare_rate:>6.2f}",
                flush=True,
            )
        print()
        days = 7 if quick else 31
        for label, value in await bench_queries(url, 4, days, 5 if quick else 20):
            print(f"{label:<60} {value:>20}")
        print(f"\nload average at end: {load_average()}")
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
