"""Ingest benchmark: simulated devices -> Mosquitto (QoS 1) -> `gridpilot run ingest` -> SQLite.

In the same run a bare ``mosquitto_sub`` (QoS 1) drains the same stream as the reference, so
the figure that matters is the ratio: how close GridPilot's validated, de-duplicated,
committed ingest comes to a C subscriber that only reads.

Reported: messages/s and points/s (first publish -> last sample committed), lost and
duplicated samples (storage compared with what was published), publish -> queryable latency
p50/p99 (probe messages stamped at publish time, polled from SQLite every 10 ms), and the
ratio to the reference.

    .venv/bin/python benchmarks/ingest/bench_ingest.py                  # 2,000 devices x 10 points
    .venv/bin/python benchmarks/ingest/bench_ingest.py --rounds 20 --json

Everything runs on 127.0.0.1: a private Mosquitto on a free port, configured with the
flow-control settings of deploy/mosquitto/gridpilot.conf (max_queued_messages raised: with
the default of 1000 a subscriber that falls behind silently loses QoS 1 messages).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import pwd
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import yaml

REPO = Path(__file__).resolve().parents[2]
SITE = "bench"
PROBE_DEVICE = "probe"
PROBE_POINT = "latency_probe_s"
PROBE_PERIOD_S = 0.05
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def mosquitto_conf(workdir: Path, port: int) -> Path:
    """Loopback listener plus the production flow-control settings."""
    production = (REPO / "deploy" / "mosquitto" / "gridpilot.conf").read_text()
    keep = ("max_queued_messages", "max_queued_bytes", "max_inflight_messages", "set_tcp_nodelay")
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    lines += [line for line in production.splitlines() if line.startswith(keep)]
    if os.geteuid() == 0:
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    path = workdir / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def site_file(workdir: Path, port: int, devices: int, points: int) -> Path:
    point_list = [{"point": f"value_{k}_w", "valid_range": [-1e9, 1e9]} for k in range(points)]
    data = {
        "site": {"id": SITE},
        "broker": {"url": f"mqtt://127.0.0.1:{port}", "max_outgoing": 10000},
        "storage": {"path": "bench.db", "batch_size": 20000, "max_buffered": 400000},
        "ingest": {"shared_subscription": "on"},
        "devices": [
            {"id": f"d{i:05d}", "protocol": "mqtt", "points": point_list} for i in range(devices)
        ]
        + [{"id": PROBE_DEVICE, "protocol": "mqtt", "points": [{"point": PROBE_POINT}]}],
    }
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def publisher(
    port: int, first: int, last: int, rounds: int, points: int, start: mp.Event, done: mp.Queue
) -> None:
    """Publish `rounds` messages for each device in [first, last) at QoS 1, as fast as the
    broker acknowledges (at most 1000 in flight)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{first}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = 0
    lock = threading.Condition()

    def on_publish(*_args: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            lock.notify()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start.wait()
    sent = 0
    last_ts: dict[int, int] = {}

    def backlog() -> int:
        return sent - acked

    for r in range(rounds):
        for device in range(first, last):
            # Unique, increasing ts per device: identical ts would be de-duplicated.
            ts = max(time.time_ns() // 1_000_000, last_ts.get(device, 0) + 1)
            last_ts[device] = ts
            values = {f"value_{k}_w": float(r * points + k) for k in range(points)}
            payload = orjson.dumps({"ts": ts, "seq": r, "values": values})
            client.publish(f"gridpilot/v1/{SITE}/d{device:05d}/telemetry", payload, qos=1)
            sent += 1
            if sent - acked > 5000:  # our own back-pressure (paho's queue is unbounded)
                with lock:
                    lock.wait_for(lambda: backlog() <= 2500, timeout=30)
    with lock:
        lock.wait_for(lambda: backlog() <= 0, timeout=120)
    done.put((sent, acked, time.time()))
    client.loop_stop()
    client.disconnect()


def count_samples(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM samples").fetchone()
        return int(row[0])


@dataclass
class Result:
    machine: str
    date: str
    devices: int
    points_per_message: int
    messages: int
    seconds: float
    messages_per_s: float
    points_per_s: float
    lost_samples: int
    duplicated_samples: int
    latency_p50_ms: float
    latency_p99_ms: float
    reference_messages_per_s: float
    ratio_to_reference: float
    publish_seconds: float


def probe_loop(port: int, db: Path, stop: threading.Event, latencies: list[float]) -> None:
    """Publish a probe stamped with the wall clock every PROBE_PERIOD_S; see when it is
    queryable."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")
    client.connect("127.0.0.1", port)
    client.loop_start()
    pending: dict[int, float] = {}
    conn = None
    next_probe = time.monotonic()
    while not stop.is_set() or pending:
        now = time.monotonic()
        if not stop.is_set() and now >= next_probe:
            ts = time.time_ns() // 1_000_000
            payload = orjson.dumps({"ts": ts, "values": {PROBE_POINT: 0.0}})
            client.publish(f"gridpilot/v1/{SITE}/{PROBE_DEVICE}/telemetry", payload, qos=1)
            pending[ts] = time.time()
            next_probe = now + PROBE_PERIOD_S
        if pending and db.exists():
            if conn is None:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            rows = conn.execute(
                "SELECT s.ts_ms FROM samples s JOIN series r ON r.id = s.series_id "
                "WHERE r.device = ? AND s.ts_ms >= ?",
                (PROBE_DEVICE, min(pending)),
            ).fetchall()
            seen_at = time.time()
            for (ts,) in rows:
                sent_at = pending.pop(ts, None)
                if sent_at is not None:
                    latencies.append((seen_at - sent_at) * 1000)
        if stop.is_set() and pending and time.time() - max(pending.values()) > 30:
            break  # probes that never arrived count as lost, not as waiting forever
        time.sleep(0.01)
    client.loop_stop()
    client.disconnect()
    if conn is not None:
        conn.close()


def run(devices: int, points: int, rounds: int, publishers: int) -> Result:
    total = devices * rounds
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = subprocess.Popen(
            [MOSQUITTO, "-c", str(mosquitto_conf(workdir, port))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ingest = None
        reference = None
        try:
            wait_port(port)
            config = site_file(workdir, port, devices, points)
            ingest = subprocess.Popen(
                [sys.executable, "-m", "gridpilot", "run", "ingest", str(config)],
                stdout=subprocess.DEVNULL, stderr=(workdir / "ingest.log").open("wb"),
            )  # fmt: skip
            db = workdir / "bench.db"
            # Warm-up: probes until one is stored, so ingest is subscribed before the run.
            latencies: list[float] = []
            stop = threading.Event()
            warm = threading.Thread(target=probe_loop, args=(port, db, stop, latencies))
            warm.start()
            deadline = time.monotonic() + 30
            while not latencies and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            warm.join()
            if not latencies:
                raise RuntimeError(f"ingest stored nothing; see {workdir / 'ingest.log'}")
            baseline = count_samples(db)

            reference = subprocess.Popen(
                ["mosquitto_sub", "-p", str(port), "-q", "1", "-c", "-i", "bench-reference",
                 "-t", f"gridpilot/v1/{SITE}/+/telemetry",
                 "-T", f"gridpilot/v1/{SITE}/{PROBE_DEVICE}/telemetry",
                 "-C", str(total)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # let the reference subscribe

            latencies.clear()
            stop = threading.Event()
            prober = threading.Thread(target=probe_loop, args=(port, db, stop, latencies))
            start = mp.Event()
            done: mp.Queue = mp.Queue()
            per = -(-devices // publishers)
            procs = [
                mp.Process(
                    target=publisher,
                    args=(port, i * per, min(devices, (i + 1) * per), rounds, points, start, done),
                )
                for i in range(publishers)
            ]
            for p in procs:
                p.start()
            time.sleep(1.0)  # publishers connected
            t0 = time.time()
            start.set()
            prober.start()
            finished = [done.get(timeout=600) for _ in procs]
            publish_end = max(f[2] for f in finished)
            expected = total * points
            reference.wait(timeout=600)
            reference_end = time.time()
            stored = baseline
            deadline = time.monotonic() + 300
            probe_rows = 0
            while time.monotonic() < deadline:
                stored = count_samples(db)
                probe_rows = len(latencies)
                if stored - baseline - probe_rows >= expected:
                    break
                time.sleep(0.05)
            ingest_end = time.time()
            stop.set()
            prober.join()
            for p in procs:
                p.join()
        finally:
            for proc in (reference, ingest):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
            broker.terminate()
            broker.wait(timeout=10)
        stored_bench = count_samples(db) - baseline - len(latencies)
        seconds = ingest_end - t0
        lat = sorted(latencies)
        ref_rate = total / (reference_end - t0)
        rate = total / seconds
        return Result(
            machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            date=time.strftime("%Y-%m-%d"),
            devices=devices,
            points_per_message=points,
            messages=total,
            seconds=round(seconds, 2),
            messages_per_s=round(rate),
            points_per_s=round(rate * points),
            lost_samples=max(0, expected - stored_bench),
            duplicated_samples=max(0, stored_bench - expected),
            latency_p50_ms=round(statistics.median(lat), 1) if lat else float("nan"),
            latency_p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)
            if lat
            else float("nan"),
            reference_messages_per_s=round(ref_rate),
            ratio_to_reference=round(rate / ref_rate, 3),
            publish_seconds=round(publish_end - t0, 2),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--points", type=int, default=10, help="values per message")
    parser.add_argument("--rounds", type=int, default=100, help="messages per device")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.devices, args.points, args.rounds, args.publishers)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    for key, value in asdict(result).items():
        print(f"{key:>26}  {value}")


if __name__ == "__main__":
    main()
