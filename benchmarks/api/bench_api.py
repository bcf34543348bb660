"""Latency and throughput of the HTTP API's reads under concurrent load (issue 5, item 7).

    .venv/bin/python benchmarks/api/bench_api.py           # a year of 1 s data, ~6 min
    .venv/bin/python benchmarks/api/bench_api.py --quick   # 2 days of data, 1 s runs, < 1 min
    .venv/bin/python benchmarks/api/bench_api.py --connections 1,8 --json out.json

The data: one meter point (``meter/active_power_w``) sampled every second for the year
before a fixed instant ``NOW`` (31,536,000 rows), written through ``open_storage`` in 12-hour
batches, so the 1 min / 15 min / 1 h rollups are the ones the storage builds on every write;
plus one recent value of 13 other points (what ``/latest`` lists). Made once into
``--data-dir`` (default ``benchmarks/api/.data``, about 600 MB, ~4 min) and reused.

The server: the real ``ApiService`` (uvicorn in this process, as ``gridpilot run api`` runs
it) on a free loopback port over that file, with its clock pinned at ``NOW``, so that the
relative windows of the queries (``start=-365d``) cover the stored year on every later run.
Its broker is a private Mosquitto on a free port (the API serves reads without it). The
per-token rate limit is raised so that it does not answer 429 to the load generator; the
history row limit (``api.history_max_rows``) is the default.

The load: ``wrk`` (Debian's, one thread) with ``report.lua`` (bearer token, percentiles),
per query and connection count, after a short warm-up of that query; before each run the
server has finished what the previous run left in flight.

The queries: ``/latest``; the issue's two history queries, a year of the 1 s data as
15-minute maxima (35,041 buckets) and a day of raw samples (86,400 rows); and two answers
of ~9,000 rows (a year at 1 h, 2 h 30 min raw), which show how the cost grows with rows.
Each is also probed once (status, rows) and timed against the storage alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Any, Final

import numpy as np

from gridpilot.api.history import HistoryWindow, aggregated_bucket_count, parse_history_params
from gridpilot.api.service import ApiService
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress
from gridpilot.cli.common import freeze_startup_heap
from gridpilot.config import GridPilotConfig
from gridpilot.config.models import RetentionConfig, StorageConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, Storage, open_storage

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LUA = HERE / "report.lua"
DEFAULT_DATA_DIR = HERE / ".data"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "api.json"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

SITE: Final = "bench"
METER: Final = "meter"
POINT: Final = "active_power_w"
DATA_VERSION: Final = 1
"""Bump when the generated data changes, so cached files are made again."""
NOW_MS: Final = int(datetime(2026, 11, 2, 9, 41, 17, 250_000, tzinfo=UTC).timestamp() * 1000)
"""The API's clock: the stored year ends here. Not on a bucket boundary, as a dashboard's
``now`` would not be, so the queries' ends are read from the finer levels too."""
DAY_MS: Final = 86_400_000
WRITE_BATCH: Final = 43_200
"""Samples per ``write`` call (12 hours); two calls are kept in flight."""

# Points whose latest value /latest lists besides the meter's power (one sample each).
OTHER_POINTS: Final = {
    METER: (
        "reactive_power_var",
        "voltage_l1_v",
        "voltage_l2_v",
        "voltage_l3_v",
        "current_l1_a",
        "frequency_hz",
        "energy_import_wh",
        "energy_export_wh",
    ),
    "pv": ("active_power_w", "energy_wh"),
    "battery": ("soc_pct", "active_power_w", "active_power_setpoint_w"),
}
HISTORY: Final = f"/api/v1/devices/{METER}/points/{POINT}/history"


@dataclass(frozen=True, slots=True)
class Query:
    """A GET of the API; ``history`` holds the history route's parameters (None: /latest)."""

    name: str
    what: str
    history: dict[str, str] | None = None

    @property
    def path(self) -> str:
        if self.history is None:
            return "/api/v1/latest"
        return f"{HISTORY}?{urllib.parse.urlencode(self.history)}"

    @property
    def window(self) -> HistoryWindow | None:
        """The history window the API reads at ``NOW_MS`` (None: /latest)."""
        params = self.history
        if params is None:
            return None
        agg = Agg(params["agg"]) if "agg" in params else None
        # No row limit here: the window only (the API applies its own).
        return parse_history_params(
            params["start"], None, params.get("every"), agg, NOW_MS, max_rows=2**62
        )


QUERIES: Final = (
    Query("latest", "latest value of every point (14 series)"),
    Query(
        "year_15m_max",
        "a year at 15 min, max (15m rollup): the issue's query",
        {"start": "-365d", "every": "15m", "agg": "max"},
    ),
    Query("day_raw", "a day of raw 1 s samples: the issue's query", {"start": "-1d"}),
    Query(
        "year_1h_max",
        "a year at 1 h, max (1h rollup)",
        {"start": "-365d", "every": "1h", "agg": "max"},
    ),
    Query("raw_2h30m", "2 h 30 min of raw 1 s samples", {"start": "-150m"}),
    Query(
        "year_15m_max_columns",
        "the issue's year at 15 min as columns (format=columns: ts_ms and value arrays)",
        {"start": "-365d", "every": "15m", "agg": "max", "format": "columns"},
    ),
    Query(
        "day_raw_columns",
        "the issue's day of raw samples as columns",
        {"start": "-1d", "format": "columns"},
    ),
)


# --------------------------------------------------------------------------- the data


def site_config(db: Path, *, port: int = 0) -> GridPilotConfig:
    """The benchmark's site: the meter and the other points, the API on loopback."""
    devices: dict[str, list[str]] = {METER: [POINT, *OTHER_POINTS[METER]]}
    for device, points in OTHER_POINTS.items():
        devices.setdefault(device, list(points))
    return GridPilotConfig.model_validate(
        {
            "site": {"id": SITE, "name": "API benchmark", "timezone": "UTC"},
            "broker": {"url": "mqtt://127.0.0.1:1883"},  # replaced by the private broker
            "storage": {
                "path": str(db),
                # Raw samples and 1-minute rollups are kept: a year of each stays queryable.
                "retention": {"raw": None, "rollup_1m": None},
            },
            "api": {
                "port": port,
                # The per-token limit (600/min by default) would answer 429 to the load
                # generator within a second; the benchmark measures the server, not it.
                "rate_limit_per_minute": 1e9,
                "rate_limit_burst": 1_000_000,
            },
            "devices": [
                {
                    "id": device,
                    "host": "127.0.0.1",
                    "points": [
                        {"point": point, "address": 2 * n, "type": "float32"}
                        for n, point in enumerate(points)
                    ],
                }
                for device, points in devices.items()
            ],
        }
    )


def meter_values(first_ts_ms: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Grid import of an office with PV, in W: base load, a weekday working-hours bump,
    midday PV, noise; rounded to whole watts as a meter reports them."""
    ts = first_ts_ms + 1000 * np.arange(count, dtype=np.int64)
    day_s = (ts // 1000) % 86_400
    weekday = ((ts // DAY_MS) + 3) % 7 < 5  # 1970-01-01 was a Thursday
    hours = day_s / 3600.0
    work = np.where(weekday & (hours > 7) & (hours < 19), np.sin((hours - 7) / 12 * np.pi), 0.0)
    sun = np.clip(np.sin((hours - 6) / 12 * np.pi), 0.0, None)
    load = 40_000 + 60_000 * work - 45_000 * sun + rng.normal(0.0, 1_500.0, count)
    rounded: np.ndarray = np.rint(load)
    return rounded


def data_paths(data_dir: Path, days: int) -> tuple[Path, Path]:
    stem = f"meter-1s-{days}d-v{DATA_VERSION}"
    return data_dir / f"{stem}.db", data_dir / f"{stem}.json"


def ensure_data(data_dir: Path, days: int) -> dict[str, Any]:
    """The cached data set's description, generating it first when missing."""
    db, meta_path = data_paths(data_dir, days)
    if db.exists() and meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        print(
            f"data: reusing {db} ({meta['rows']:,} rows, {db.stat().st_size / 1e9:.2f} GB; "
            f"generated in {meta['generated_s']:.0f} s on {meta['generated_at']})",
            flush=True,
        )
        meta["reused"] = True
        return meta
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = db.with_suffix(".partial.db")
    for stale in (db, meta_path, *data_dir.glob(partial.name + "*")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    rows = asyncio.run(generate(partial, days))
    partial.rename(db)  # storage closed: its WAL is checkpointed and gone
    meta = {
        "version": DATA_VERSION,
        "days": days,
        "rows": rows,
        "now_ms": NOW_MS,
        "now": datetime.fromtimestamp(NOW_MS / 1000, UTC).isoformat(),
        "generated_s": round(time.perf_counter() - started, 1),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "file_bytes": db.stat().st_size,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"data: {rows:,} rows in {meta['generated_s']:.0f} s -> {db}", flush=True)
    meta["reused"] = False
    return meta


async def generate(db: Path, days: int) -> int:
    """Write ``days`` of 1 s samples of the meter ending at ``NOW_MS`` (plus the other
    points' latest values) through the project's storage; returns the meter's rows."""
    total = days * 86_400
    first = -(-(NOW_MS - days * DAY_MS) // 1000) * 1000  # first whole second in the window
    rng = np.random.default_rng(20261102)
    storage_config = StorageConfig(
        path=db, retention=RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None)
    )
    print(f"data: generating {total:,} samples of {METER}/{POINT} into {db}", flush=True)
    started = time.perf_counter()
    written = 0
    next_report = 0.0
    async with open_storage(storage_config, db.parent) as storage:
        in_flight: set[asyncio.Task[Any]] = set()
        for offset in range(0, total, WRITE_BATCH):
            count = min(WRITE_BATCH, total - offset)
            ts0 = first + 1000 * offset
            ts = range(ts0, ts0 + 1000 * count, 1000)
            values = meter_values(ts0, count, rng).tolist()
            batch = list(map(Sample, repeat(SITE), repeat(METER), repeat(POINT), ts, values))
            if len(in_flight) >= 2:
                done, in_flight = await asyncio.wait(in_flight, return_when="FIRST_COMPLETED")
                for task in done:
                    written += task.result().written
            in_flight.add(asyncio.create_task(storage.write(batch)))
            elapsed = time.perf_counter() - started
            if written and elapsed >= next_report:
                rate = written / elapsed if elapsed else 0.0
                eta = (total - written) / rate if rate else float("nan")
                print(
                    f"  {written:>12,} / {total:,} rows ({100 * written / total:5.1f} %), "
                    f"{rate:,.0f} rows/s, about {eta:,.0f} s left",
                    flush=True,
                )
                next_report = elapsed + 10.0
        for task in in_flight:
            written += (await task).written
        others = [
            Sample(SITE, device, point, NOW_MS - 1_000 - 137 * n, 100.0 + n)
            for device, points in OTHER_POINTS.items()
            for n, point in enumerate(points)
        ]
        await storage.write(others)
    if written != total:
        raise RuntimeError(f"wrote {written:,} meter samples, expected {total:,}")
    return written


# --------------------------------------------------------------------------- the server


@contextlib.contextmanager
def private_mosquitto(workdir: Path) -> Iterator[BrokerAddress]:
    """A Mosquitto of this run on a free loopback port (the API needs an address)."""
    if not Path(MOSQUITTO).exists():
        raise SystemExit("mosquitto not found: apt-get install mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), _connect(port):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield BrokerAddress("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=0.5)


@contextlib.asynccontextmanager
async def serving(db: Path, workdir: Path) -> AsyncIterator[tuple[str, str, Storage]]:
    """The API over ``db``: (base URL, viewer token, the storage it reads)."""
    config = site_config(db)
    with private_mosquitto(workdir) as broker:
        async with open_storage(config.storage, workdir) as storage:
            api = ApiService(config, broker, storage, base_dir=workdir, clock=lambda: NOW_MS)
            await api.__aenter__()
            freeze_startup_heap()  # as 'gridpilot run api' does once its services are up
            try:
                token = api.tokens.create(Role.VIEWER, "bench-api", created_by="bench_api.py")[1]
                yield api.url, token, storage
            finally:
                await api.__aexit__(None, None, None)


async def storage_ms(storage: Storage, query: Query, repeats: int = 5) -> float:
    """Median milliseconds of the storage read behind ``query``, without HTTP and JSON (a
    raw query's API also reads a per-hour count first, from the 1h rollup)."""
    series = SeriesKey(SITE, METER, POINT)
    window = query.window
    read: Callable[[], Awaitable[object]]
    if window is None:
        read = partial(storage.latest, SITE)
    else:
        # What the API reads: the JSON arrays for format=columns, the rows otherwise.
        columns = query.history is not None and query.history.get("format") == "columns"
        read = partial(
            storage.history_json if columns else storage.history,
            series,
            window.start_ms,
            window.end_ms,
            window.every_ms,
            window.agg or Agg.MEAN,
        )
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await read()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


async def probe(url: str, token: str) -> dict[str, Any]:
    """One request: status, body size, rows (or the error)."""

    def get() -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 -- http://127.0.0.1 only
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    started = time.perf_counter()
    status, body = await asyncio.to_thread(get)
    took_ms = (time.perf_counter() - started) * 1000
    doc = json.loads(body)
    out: dict[str, Any] = {
        "status": status,
        "bytes": len(body),
        "one_request_ms": round(took_ms, 1),
    }
    if status == 200:
        out["rows"] = len(doc["values"] if "values" in doc else doc["ts_ms"])
    else:
        out["error"] = doc.get("error")
    return out


async def until_idle() -> None:
    """Wait until the server (this process) has finished what a run left in flight: wrk
    stops at its deadline, but responses being computed are computed to the end."""
    for _ in range(600):
        before = time.process_time()
        await asyncio.sleep(0.2)
        if time.process_time() - before < 0.02:
            return


async def run_wrk(url: str, token: str, connections: int, seconds: int) -> dict[str, Any]:
    """``wrk`` against ``url``; the figures of ``report.lua``, latencies in ms."""
    await until_idle()
    load_before = os.getloadavg()[0]
    cpu_before = time.process_time()  # the server runs in this process, the driver idles
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "60s",
        "-s",
        str(LUA),
        url,
        env={**os.environ, "GRIDPILOT_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    cpu_s = time.process_time() - cpu_before
    load = os.getloadavg()[0]
    lines = [line for line in out.decode().splitlines() if line.startswith("WRK_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()}{out.decode()}")
    raw = json.loads(lines[-1].removeprefix("WRK_JSON "))
    duration_s = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    done = raw["requests"]
    return {
        "connections": connections,
        "duration_s": round(duration_s, 2),
        "requests": done,
        "requests_per_s": round(done / duration_s, 1),
        "p50_ms": latency["p50"] / 1000 if done else None,
        "p90_ms": latency["p90"] / 1000 if done else None,
        "p99_ms": latency["p99"] / 1000 if done else None,
        "max_ms": latency["max"] / 1000 if done else None,
        "mb_per_s": round(raw["bytes"] / duration_s / 1e6, 2),
        # Includes responses still being computed when wrk stopped (at most `connections`).
        "server_cpu_ms_per_request": round(1000 * cpu_s / done, 2) if done else None,
        "load_average_1m": [round(load_before, 2), round(load, 2)],
        "errors": raw["errors"],
    }


async def measure(
    base: str, token: str, queries: tuple[Query, ...], probes: dict[str, Any], plan: Plan
) -> list[dict[str, Any]]:
    """wrk runs of each query at each connection count. A run (but the one at the fewest
    connections) whose responses would take longer than ``plan.max_latency_s`` (the
    probe's time x connections, as the server is one process; the estimate improves with
    each run) is skipped; a slow query gets a longer run, so that it completes some."""
    runs: list[dict[str, Any]] = []
    for query in queries:
        url = base + query.path
        one_s = probes[query.name]["one_request_ms"] / 1000
        if plan.warm_up_s:
            await run_wrk(url, token, 2, plan.warm_up_s)  # page cache, code paths
        for c in plan.connections:
            run: dict[str, Any] = {"query": query.name, "connections": c}
            expected_s = one_s * c
            if expected_s > plan.max_latency_s and c > min(plan.connections):
                run["skipped"] = (
                    f"one response takes {one_s:.1f} s alone, so about {expected_s:.0f} s "
                    f"with {c} connections (over {plan.max_latency_s:.0f} s)"
                )
                runs.append(run)
                print(f"  {query.name:<16} c={c:<3} skipped: {run['skipped']}", flush=True)
                continue
            seconds = min(max(plan.seconds, math.ceil(4 * expected_s)), 60)
            result = await run_wrk(url, token, c, seconds)
            if result["p50_ms"] is not None:  # a better estimate than one cold request
                one_s = min(one_s, result["p50_ms"] / 1000 / c)
            run.update(result)
            runs.append(run)
            errors = sum(result["errors"].values())
            print(
                f"  {query.name:<16} c={c:<3} {result['requests_per_s']:>9,.1f} req/s  "
                f"p50 {_ms(result['p50_ms'])} ms  p99 {_ms(result['p99_ms'])} ms  "
                f"cpu/req {_ms(result['server_cpu_ms_per_request'])} ms  "
                f"load {result['load_average_1m'][1]:.1f}"
                + (f"  ERRORS {result['errors']}" if errors else ""),
                flush=True,
            )
    return runs


def _ms(value: float | None) -> str:
    return "       -" if value is None else f"{value:>8.2f}"


@dataclass(frozen=True, slots=True)
class Plan:
    connections: list[int]
    seconds: int
    warm_up_s: int
    max_latency_s: float


async def bench(db: Path, plan: Plan) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    # ApiService warns that "port 0 is taken" when asked for any free port; not news here.
    logging.getLogger("gridpilot.api").setLevel(logging.ERROR)
    probes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-api-") as tmp:
        async with serving(db, Path(tmp)) as (base, token, storage):
            print(f"server: ApiService on {base}, clock pinned at {iso(NOW_MS)}", flush=True)
            for query in QUERIES:
                probes[query.name] = describe(query)
                probes[query.name].update(await probe(base + query.path, token))
                probes[query.name]["storage_ms"] = await storage_ms(storage, query)
                if probes[query.name]["status"] != 200:
                    raise RuntimeError(f"{query.name}: {probes[query.name]}")
            runs = await measure(base, token, QUERIES, probes, plan)
    return {"probes": probes, "runs": runs}


def describe(query: Query) -> dict[str, Any]:
    """What a query asks for: its path, and for history its window and bucket count."""
    out: dict[str, Any] = {"path": query.path, "what": query.what}
    window = query.window
    if window is not None:
        out["window"] = [iso(window.start_ms), iso(window.end_ms)]
        if window.every_ms is not None:
            out["buckets"] = aggregated_bucket_count(window)
    return out


# --------------------------------------------------------------------------- reporting


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        mem_gib = round(int(kib) / 2**20, 1)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "",
    }


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (src/ modified)" if git("status", "--porcelain", "--", "src") else "")


def table(result: dict[str, Any]) -> str:
    """The runs as a markdown table."""
    lines = [
        "| query | rows | connections | requests/s | p50 ms | p99 ms "
        "| server CPU ms/request | storage ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    probes = result["probes"]
    for run in result["runs"]:
        probe_ = probes[run["query"]]
        head = f"| `{run['query']}` | {probe_['rows']:,} | {run['connections']} "
        if "skipped" in run:
            lines.append(head + f"| skipped: {run['skipped']} | | | | |")
            continue
        lines.append(
            head + f"| {run['requests_per_s']:,.1f} | {_cell(run['p50_ms'])} "
            f"| {_cell(run['p99_ms'])} | {_cell(run['server_cpu_ms_per_request'])} "
            f"| {_cell(probe_['storage_ms'])} | {sum(run['errors'].values())} |"
        )
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}" if value >= 100 else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 days of data, 1 s runs at 1 and 4 connections (under a minute)",
    )
    parser.add_argument("--days", type=int, help="days of 1 s data (default 365; quick: 2)")
    parser.add_argument("--connections", help="comma-separated (default 1,8,32; quick: 1,4)")
    parser.add_argument("--seconds", type=int, help="per run (default 15; quick: 1)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    days = args.days or (2 if args.quick else 365)
    seconds = args.seconds or (1 if args.quick else 15)
    default_connections = "1,4" if args.quick else "1,8,32"
    plan = Plan(
        connections=[int(c) for c in (args.connections or default_connections).split(",")],
        seconds=seconds,
        warm_up_s=0 if args.quick else 2,
        max_latency_s=10.0 if args.quick else 20.0,
    )

    data = ensure_data(args.data_dir, days)
    db, _ = data_paths(args.data_dir, days)
    started = time.perf_counter()
    result = asyncio.run(bench(db, plan))
    doc = {
        "benchmark": "api",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "command": " ".join([".venv/bin/python", "benchmarks/api/bench_api.py", *sys.argv[1:]]),
        "machine": machine(),
        "data": data,
        "load": {
            "generator": "wrk -t1 (one thread), report.lua",
            "connections": plan.connections,
            "seconds_per_run": seconds,
            "max_latency_s": plan.max_latency_s,
            "history_max_rows": site_config(db).api.history_max_rows,
        },
        "bench_s": round(time.perf_counter() - started, 1),
        **result,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(table(doc))
    print(f"\nresults: {args.json} ({doc['bench_s']:.0f} s with the server up)")


if __name__ == "__main__":
    main()
