"""Polling benchmark: N simulated Modbus TCP devices x 50 registers, polled every second by
GridPilot's gateway and, in the same run, by a bare pymodbus client loop.

Everything runs on 127.0.0.1, each part in its own process so that each one's CPU is its own:

* **simulator** (``--sim-procs`` processes): the project's ``DeviceServer`` (pymodbus
  server + ``RegisterImage``), one TCP port per device, each device 50 holding registers
  (10 float32, 5 uint32, 20 int16/uint16: 35 points). It timestamps every read it serves:
  reads/s and "was every device read every second" are counted here, the same way for both
  clients.
* **Mosquitto** (private, on a free port, with the production flow-control settings of
  ``deploy/mosquitto/gridpilot.conf``).
* **phase 1, bare**: one process, one pymodbus ``AsyncModbusTcpClient`` per device, each
  reading its 50 registers on a fixed 1 s grid; it decodes nothing and publishes nothing.
* **phase 2, GridPilot**: ``gridpilot run gateway site.yaml`` as shipped: reads, decodes,
  checks valid ranges, publishes each device's telemetry (QoS 1) and state to Mosquitto.
  Its jitter is what it publishes itself (the ``poll_jitter`` histogram in each device's
  retained state; the difference of the snapshots at the window's ends).

Each phase: start the client, wait until every device has been read (or ``--warmup``),
then measure for ``--seconds``. Jitter = the time a poll started minus its scheduled tick.
Ratio = GridPilot reads/s / bare reads/s (both paced at ``--interval``; 1.0 when both keep
up). CPU = the client process' user+system time / wall time of the window (100 % = one core).

    .venv/bin/python benchmarks/polling/bench_polling.py                 # 500 devices, ~3 min
    .venv/bin/python benchmarks/polling/bench_polling.py --devices 20 --seconds 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import yaml
from pymodbus.client import AsyncModbusTcpClient

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from benchmarks.ingest.bench_ingest import (  # noqa: E402  # after the path set-up
    MOSQUITTO,
    free_port,
    mosquitto_conf,
    wait_port,
)

from gridpilot.fieldbus.codec import RegisterSpec  # noqa: E402
from gridpilot.gateway.health import JITTER_BUCKETS_S, bucket_quantile  # noqa: E402
from gridpilot.model import DataType, Table  # noqa: E402
from gridpilot.sim.devices import DeviceMap, SimPoint  # noqa: E402
from gridpilot.sim.image import RegisterImage  # noqa: E402
from gridpilot.sim.server import DeviceServer  # noqa: E402

SITE = "bench"
GATEWAY = "gateway"
REGISTERS = 50
MISSED_GAP_S = 1.5
"""A device counts as not read in a second when two of its reads are further apart."""


# ---------------------------------------------------------------------------- device map


def device_points() -> list[dict[str, Any]]:
    """50 holding registers from address 0: 10 float32, 5 uint32, 20 int16/uint16."""
    points: list[dict[str, Any]] = []
    address = 0
    for i in range(10):
        points.append({"point": f"power_{i}_w", "address": address, "type": "float32"})
        address += 2
    for i in range(5):
        points.append({"point": f"energy_{i}_wh", "address": address, "type": "uint32"})
        address += 2
    for i in range(20):
        kind = "int16" if i % 2 else "uint16"
        points.append({"point": f"current_{i}_a", "address": address, "type": kind, "scale": 0.1})
        address += 1
    assert address == REGISTERS
    for p in points:
        p["table"] = "holding"
        p["valid_range"] = [-1e9, 1e12]
    return points


def sim_map(index: int) -> DeviceMap:

    points = tuple(
        SimPoint(
            RegisterSpec(
                p["point"],
                Table.HOLDING,
                p["address"],
                DataType(p["type"]),
                scale=p.get("scale", 1.0),
            ),
            (-1e9, 1e12),
        )
        for p in device_points()
    )
    return DeviceMap(f"d{index:04d}", f"device {index}", 1, 1.0, points)


def sim_values(index: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for p in device_points():
        name = p["point"]
        if name.startswith("power"):
            values[name] = 1000.0 + index + 0.5
        elif name.startswith("energy"):
            values[name] = 1_000_000.0 + index
        else:
            values[name] = 12.3 if p["type"] == "uint16" else -4.5
    return values


# ---------------------------------------------------------------------------- simulator


def simulator(first: int, count: int, conn: Connection) -> None:
    """Serve devices ``first .. first+count-1``; answer the harness' commands on ``conn``."""
    asyncio.run(_simulate(first, count, conn))


async def _simulate(first: int, count: int, conn: Connection) -> None:
    # pymodbus logs a hex dump for each reply to a client that already left (the bare
    # clients at the end of their phase): counted by the harness, not worth a screenful.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    class TimedServer(DeviceServer):
        """Records when each read was served (CLOCK_MONOTONIC: the same clock in every
        process on this machine)."""

        times: list[float]

        async def _action(self, function_code: int, *args: Any) -> Any:
            if function_code in (1, 2, 3, 4):
                self.times.append(time.monotonic())
            return await super()._action(function_code, *args)

    servers: list[TimedServer] = []
    for index in range(first, first + count):
        image = RegisterImage(sim_map(index))
        image.update(sim_values(index))
        server = TimedServer(image, lambda _write: None)
        server.times = []
        await server.start()
        servers.append(server)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_command() -> None:
        command = conn.recv()
        match command:
            case ("report", t0, t1):
                conn.send([_read_stats(s.times, t0, t1) for s in servers])
            case ("reset",):
                for s in servers:
                    s.times = []
                conn.send("ok")
            case _:
                done.set()

    loop.add_reader(conn.fileno(), on_command)
    conn.send([s.port for s in servers])
    await done.wait()
    loop.remove_reader(conn.fileno())
    for s in servers:
        await s.stop()


def _read_stats(times: Sequence[float], t0: float, t1: float) -> tuple[int, float, int]:
    """Reads in [t0, t1), the longest gap between two of them, and the gaps over 1.5 s."""
    inside = [t for t in times if t0 <= t < t1]
    gaps = [b - a for a, b in itertools.pairwise(inside)]
    return len(inside), max(gaps, default=math.inf), sum(g > MISSED_GAP_S for g in gaps)


# ---------------------------------------------------------------------------- bare client


def bare_client(ports: list[int], interval_s: float, run_s: float, out: str) -> None:
    """The reference: pymodbus alone, one client per device on a fixed grid; writes each
    poll's (scheduled tick, jitter) to ``out`` as JSON."""
    samples = asyncio.run(_bare(ports, interval_s, run_s))
    Path(out).write_bytes(orjson.dumps(samples))


async def _bare(ports: list[int], interval_s: float, run_s: float) -> dict[str, Any]:

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    jitters: list[float] = []
    errors = 0
    start = loop.time()
    end = start + run_s

    async def poll(index: int, port: int) -> None:
        nonlocal errors
        # Phases spread over the interval as the gateway spreads them.
        first = start + index / len(ports) * interval_s
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        n = 0
        try:
            while True:
                deadline = first + n * interval_s
                if deadline >= end:
                    return
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                ticks.append(deadline)
                jitters.append(loop.time() - deadline)
                try:
                    reply = await client.read_holding_registers(0, count=REGISTERS, device_id=1)
                    if reply.isError() or len(reply.registers) != REGISTERS:
                        errors += 1
                except Exception:  # a benchmark counts failures, whatever they are
                    errors += 1
                    if not client.connected:
                        await client.connect()
                # Next tick not in the past (an overrun skips ticks, as the gateway does).
                n = max(n + 1, math.ceil((loop.time() - first) / interval_s))
        finally:
            client.close()

    await asyncio.gather(*(poll(i, p) for i, p in enumerate(ports)))
    return {"ticks": ticks, "jitters": jitters, "errors": errors}


# ---------------------------------------------------------------------------- harness


@dataclass
class PhaseResult:
    name: str
    devices: int
    seconds: float
    reads: int
    reads_per_s: float
    registers_per_s: float
    devices_read_every_second: int
    """Devices whose reads were never more than 1.5 s apart in the window."""
    longest_gap_s: float
    missed_seconds: int
    """Gaps over 1.5 s, all devices."""
    jitter_p50_ms: float | None
    jitter_p99_ms: float | None
    jitter_polls: int
    cpu_pct: float
    """Client process, user + system, of one core."""
    sim_cpu_pct: float
    machine_busy_pct: float
    """All cores, every process (other jobs included), of the machine's capacity."""
    load_avg_1min: float
    errors: int = 0
    telemetry_per_s: float | None = None
    jitter_exact_p50_ms: float | None = None
    jitter_exact_p99_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Sims:
    def __init__(self, devices: int, procs: int) -> None:
        self.conns: list[Connection] = []
        self.procs: list[mp.Process] = []
        self.ports: list[int] = []
        per = math.ceil(devices / procs)
        ctx = mp.get_context("spawn")
        for first in range(0, devices, per):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=simulator, args=(first, min(per, devices - first), child))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(120):
                raise RuntimeError("a simulator process did not start within 120 s")
            self.ports += conn.recv()

    def ask(self, *command: Any) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        answers = []
        for conn in self.conns:
            if not conn.poll(60):
                raise RuntimeError(f"a simulator process did not answer {command[0]!r}")
            answers.append(conn.recv())
        return answers

    def stats(self, t0: float, t1: float) -> list[tuple[int, float, int]]:
        return [s for answer in self.ask("report", t0, t1) for s in answer]

    def cpu_s(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs if p.pid is not None)

    def stop(self) -> None:
        for conn in self.conns:
            conn.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (Linux: /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def busy_pct(start: tuple[int, int], end: tuple[int, int]) -> float:
    total = end[1] - start[1]
    return 100.0 * (end[0] - start[0]) / total if total else 0.0


def wait_all_read(sims: Sims, since: float, limit_s: float) -> None:
    """Until every device has been read once after ``since`` (connections are up)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if all(n > 0 for n, _, _ in sims.stats(since, time.monotonic())):
            return
        time.sleep(0.5)
    raise RuntimeError(f"not every device was read within {limit_s} s")


def summarize(
    name: str,
    sims: Sims,
    t0: float,
    t1: float,
    cpu: float,
    sim_cpu: float,
    jitter: tuple[float | None, float | None, int],
    busy_pct: float,
) -> PhaseResult:
    stats = sims.stats(t0, t1)
    seconds = t1 - t0
    reads = sum(n for n, _, _ in stats)
    return PhaseResult(
        name=name,
        devices=len(stats),
        seconds=round(seconds, 2),
        reads=reads,
        reads_per_s=round(reads / seconds, 1),
        registers_per_s=round(reads * REGISTERS / seconds, 1),
        devices_read_every_second=sum(gap <= MISSED_GAP_S for _, gap, _ in stats),
        longest_gap_s=round(max(gap for _, gap, _ in stats), 3),
        missed_seconds=sum(m for _, _, m in stats),
        jitter_p50_ms=None if jitter[0] is None else round(jitter[0] * 1000, 2),
        jitter_p99_ms=None if jitter[1] is None else round(jitter[1] * 1000, 2),
        jitter_polls=jitter[2],
        cpu_pct=round(100 * cpu / seconds, 1),
        sim_cpu_pct=round(100 * sim_cpu / seconds, 1),
        machine_busy_pct=round(busy_pct, 1),
        load_avg_1min=round(os.getloadavg()[0], 2),
    )


def bucketed(values: Sequence[float]) -> tuple[float | None, float | None]:
    """p50/p99 the way the gateway's histogram gives them (same buckets, same interpolation)."""

    counts = [0] * (len(JITTER_BUCKETS_S) + 1)
    for v in values:
        counts[bisect_left(JITTER_BUCKETS_S, max(v, 0.0))] += 1
    top = max(values, default=0.0)
    return bucket_quantile(0.5, counts, top), bucket_quantile(0.99, counts, top)


def run_bare(sims: Sims, args: argparse.Namespace, workdir: Path) -> PhaseResult:
    sims.ask("reset")
    out = workdir / "bare.json"
    run_s = args.warmup + args.seconds + 5
    ctx = mp.get_context("spawn")
    began = time.monotonic()
    proc = ctx.Process(target=bare_client, args=(sims.ports, args.interval, run_s, str(out)))
    proc.start()
    pid = proc.pid
    assert pid is not None
    try:
        wait_all_read(sims, began, args.warmup + 30)
        time.sleep(max(0.0, began + args.warmup - time.monotonic()))
        m0, t0, c0, s0 = machine_ticks(), time.monotonic(), cpu_s(pid), sims.cpu_s()
        time.sleep(args.seconds)
        t1, c1, s1, m1 = time.monotonic(), cpu_s(pid), sims.cpu_s(), machine_ticks()
        busy = busy_pct(m0, m1)
        proc.join(run_s + 60)
    finally:
        if proc.is_alive():
            proc.kill()
    data = orjson.loads(out.read_bytes())
    window = [j for t, j in zip(data["ticks"], data["jitters"], strict=True) if t0 <= t < t1]
    p50, p99 = bucketed(window)
    result = summarize(
        "bare pymodbus", sims, t0, t1, c1 - c0, s1 - s0, (p50, p99, len(window)), busy
    )
    result.errors = data["errors"]
    if window:
        exact = (
            statistics.quantiles(window, n=100, method="inclusive")
            if len(window) > 1
            else window * 99
        )
        result.jitter_exact_p50_ms = round(exact[49] * 1000, 2)
        result.jitter_exact_p99_ms = round(exact[98] * 1000, 2)
    return result


class StateWatcher:
    """Latest retained state and telemetry count of every device, from the broker."""

    def __init__(self, port: int) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.telemetry: list[float] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watcher")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"gridpilot/v1/{SITE}/+/state", qos=0)
        self.client.subscribe(f"gridpilot/v1/{SITE}/+/telemetry", qos=0)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        device, kind = message.topic.split("/")[3:5]
        now = time.monotonic()
        with self.lock:
            if kind == "telemetry":
                self.telemetry.append(now)
            elif device != GATEWAY:  # the gateway's own state is not a device's
                self.states[device] = orjson.loads(message.payload)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.states)

    def telemetry_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(t0 <= t < t1 for t in self.telemetry)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def jitter_between(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> tuple[float | None, float | None, int, int]:
    """p50/p99 of every device's polls between two snapshots of the states: the difference
    of their cumulative histograms, summed over devices; and the ticks skipped meanwhile."""
    bounds = [f"{le:g}" for le in JITTER_BUCKETS_S] + ["+Inf"]
    total = [0] * len(bounds)
    top = 0.0
    skipped = 0
    for device, state in after.items():
        old = before.get(device, {})
        new_j, old_j = state.get("poll_jitter") or {}, old.get("poll_jitter") or {}
        new_b, old_b = new_j.get("buckets") or {}, old_j.get("buckets") or {}
        cum_new = [new_b.get(b, 0) for b in bounds]
        cum_old = [old_b.get(b, 0) for b in bounds]
        diff = [n - o for n, o in zip(cum_new, cum_old, strict=True)]
        per_bucket = [diff[0]] + [b - a for a, b in itertools.pairwise(diff)]
        total = [t + n for t, n in zip(total, per_bucket, strict=True)]
        top = max(top, float(new_j.get("max_s") or 0.0))
        skipped += state.get("counters", {}).get("ticks_skipped", 0) - old.get("counters", {}).get(
            "ticks_skipped", 0
        )
    return (
        bucket_quantile(0.5, total, top),
        bucket_quantile(0.99, total, top),
        sum(total),
        skipped,
    )


def site_file(
    workdir: Path, broker_port: int, ports: list[int], interval_s: float, state_interval_s: float
) -> Path:
    points = device_points()
    data = {
        "site": {"id": SITE},
        "broker": {"url": f"mqtt://127.0.0.1:{broker_port}", "max_outgoing": 10000},
        "gateway": {"id": GATEWAY, "state_interval": state_interval_s},
        "devices": [
            {
                "id": f"d{i:04d}",
                "host": "127.0.0.1",
                "port": port,
                "poll_interval": interval_s,
                "timeout": min(0.5, interval_s / 2),
                "points": points,
            }
            for i, port in enumerate(ports)
        ],
    }
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_gridpilot(
    sims: Sims, args: argparse.Namespace, workdir: Path, broker_port: int
) -> PhaseResult:
    sims.ask("reset")
    site = site_file(workdir, broker_port, sims.ports, args.interval, args.state_interval)
    watcher = StateWatcher(broker_port)
    log = (workdir / "gateway.log").open("w")
    command = [sys.executable, "-m", "gridpilot", "run", "gateway", str(site)]
    began = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    profiler = None
    try:
        wait_all_read(sims, began, args.warmup + 60)
        time.sleep(max(0.0, began + args.warmup - time.monotonic()))
        if args.profile:
            py_spy = Path(sys.executable).parent / "py-spy"
            profiler = subprocess.Popen(
                [
                    *(str(py_spy), "record", "--format", "raw"),
                    *("-o", str(workdir / "gateway.txt")),
                    *("-d", str(int(args.seconds)), "-p", str(proc.pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        m0, t0, c0, s0 = machine_ticks(), time.monotonic(), cpu_s(proc.pid), sims.cpu_s()
        before = watcher.snapshot()
        time.sleep(args.seconds)
        t1, c1, s1, m1 = time.monotonic(), cpu_s(proc.pid), sims.cpu_s(), machine_ticks()
        busy = busy_pct(m0, m1)
        after = watcher.snapshot()
        telemetry = watcher.telemetry_between(t0, t1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if profiler is not None:
            profiler.wait(60)
        watcher.close()
        log.close()
    p50, p99, polls, skipped = jitter_between(before, after)
    result = summarize("GridPilot gateway", sims, t0, t1, c1 - c0, s1 - s0, (p50, p99, polls), busy)
    result.telemetry_per_s = round(telemetry / (t1 - t0), 1)
    failed = sum(
        s.get("counters", {}).get("polls_failed", 0)
        - before.get(d, {}).get("counters", {}).get("polls_failed", 0)
        for d, s in after.items()
    )
    result.errors = failed
    result.extra = {"ticks_skipped": skipped, "states_seen": len(after)}
    return result


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1_5_15": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the window")
    parser.add_argument("--sim-procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="bare then GridPilot, N times")
    parser.add_argument(
        "--state-interval",
        type=float,
        default=10.0,
        help="gateway.state_interval, s: how often the jitter histograms are published",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "benchmarks" / "results" / "polling.json",
        help="where the figures go as JSON (default: benchmarks/results/polling.json)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateway during the window (pip install py-spy); collapsed stacks to "
        "benchmarks/results/polling-gateway-stacks.txt",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-polling-") as tmp:
        workdir = Path(tmp)
        broker_port = free_port()
        conf = mosquitto_conf(workdir, broker_port)
        broker = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        sims: Sims | None = None
        try:
            wait_port(broker_port)
            sims = Sims(args.devices, args.sim_procs)
            load_before = os.getloadavg()
            rounds: list[tuple[PhaseResult, PhaseResult]] = []
            for _ in range(args.rounds):
                bare = run_bare(sims, args, workdir)
                gridpilot = run_gridpilot(sims, args, workdir, broker_port)
                rounds.append((bare, gridpilot))
            if args.profile:
                stacks = workdir / "gateway.txt"
                if stacks.exists():
                    target = REPO / "benchmarks" / "results" / "polling-gateway-stacks.txt"
                    target.parent.mkdir(exist_ok=True)
                    target.write_bytes(stacks.read_bytes())
        finally:
            if sims is not None:
                sims.stop()
            broker.terminate()
            broker.wait(10)
    report = {
        "machine": {**machine(), "load_avg_at_start": [round(x, 2) for x in load_before]},
        "settings": {
            "devices": args.devices,
            "registers_per_device": REGISTERS,
            "interval_s": args.interval,
            "window_s": args.seconds,
            "sim_processes": args.sim_procs,
        },
        "rounds": [round_report(bare, gridpilot, args.devices) for bare, gridpilot in rounds],
    }
    print_table(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


def round_report(bare: PhaseResult, gridpilot: PhaseResult, devices: int) -> dict[str, Any]:
    ratio = gridpilot.reads_per_s / bare.reads_per_s if bare.reads_per_s else math.nan
    return {
        "bare": asdict(bare),
        "gridpilot": asdict(gridpilot),
        "ratio_reads": round(ratio, 3),
        "target": {
            "every_device_every_second": gridpilot.devices_read_every_second == devices,
            "p99_jitter_under_100ms": gridpilot.jitter_p99_ms is not None
            and gridpilot.jitter_p99_ms < 100,
            "ratio_at_least_0.75": ratio >= 0.75,
        },
    }


def print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(
        f"\n{settings['devices']} devices x {REGISTERS} registers every "
        f"{settings['interval_s']} s, {settings['window_s']} s window per phase; "
        f"load average at start {report['machine']['load_avg_at_start']}"
    )
    print(
        "| round | client | reads/s | registers/s | devices read every second | longest gap s "
        "| jitter p50 / p99 ms | CPU % of a core | simulator CPU % | machine busy % | load 1 min "
        "| telemetry msg/s | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, run in enumerate(report["rounds"], 1):
        for r in (run["bare"], run["gridpilot"]):
            telemetry = r["telemetry_per_s"] if r["telemetry_per_s"] is not None else "-"
            print(
                f"| {n} | {r['name']} | {r['reads_per_s']:,} | {r['registers_per_s']:,.0f} | "
                f"{r['devices_read_every_second']} / {r['devices']} | {r['longest_gap_s']} | "
                f"{r['jitter_p50_ms']} / {r['jitter_p99_ms']} | {r['cpu_pct']} | "
                f"{r['sim_cpu_pct']} | {r['machine_busy_pct']} | {r['load_avg_1min']} | "
                f"{telemetry} | {r['errors']} |"
            )
        print(
            f"round {n}: ratio (GridPilot reads/s / bare reads/s) {run['ratio_reads']}; "
            f"targets {run['target']}"
        )


if __name__ == "__main__":
    main()
