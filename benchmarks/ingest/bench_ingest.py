"""Ingest benchmark: simulated devices -> Mosquitto (QoS 1) -> `gridpilot run ingest` -> SQLite.

Two phases, one run, everything on 127.0.0.1 (a private Mosquitto on a free port with the
flow-control settings of deploy/mosquitto/gridpilot.conf — with Mosquitto's default
max_queued_messages of 1000 a subscriber that falls behind silently loses QoS 1 messages):

1. Throughput. Publishers queue N messages at the broker for two persistent sessions: the
   reference, a bare ``mosquitto_sub -q 1`` (C, reads and discards), and GridPilot's ingest
   (validates, de-duplicates, commits to SQLite, acknowledges after commit). Each then drains
   its backlog alone, so the publishers' CPU is not in the figure and the ratio compares like
   with like: messages/s and points/s of each, and ingest / reference.
2. Latency. With ingest running, publishers send a steady stream (``--live-rate`` msg/s) and a
   probe stamped with the wall clock every 50 ms; the time until the probe is queryable in
   SQLite (polled every 10 ms) gives publish -> queryable p50/p99.

Lost and duplicated samples compare storage with everything published in both phases.

    .venv/bin/python benchmarks/ingest/bench_ingest.py            # 2,000 devices x 10 points
    .venv/bin/python benchmarks/ingest/bench_ingest.py --rounds 20 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import pwd
import shutil
import signal
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
        "storage": {"path": "bench.db"},
        # A plain persistent subscription: the backlog must queue for ingest while it is away.
        "ingest": {"shared_subscription": "off"},
        "devices": [
            {"id": f"d{i:05d}", "protocol": "mqtt", "points": point_list} for i in range(devices)
        ]
        + [{"id": PROBE_DEVICE, "protocol": "mqtt", "points": [{"point": PROBE_POINT}]}],
    }
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def publisher(
    port: int,
    first: int,
    last: int,
    rounds: int,
    points: int,
    rate: float,
    start: mp.Event,
    done: mp.Queue,
) -> None:
    """Publish `rounds` messages for each device in [first, last) at QoS 1: as fast as the
    broker acknowledges (rate 0) or paced at `rate` messages/s."""
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
    began = time.monotonic()
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
            if rate > 0 and sent % 100 == 0:
                ahead = began + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    with lock:
        lock.wait_for(lambda: backlog() <= 0, timeout=120)
    done.put((sent, acked, time.time()))
    client.loop_stop()
    client.disconnect()


def publish_all(
    port: int, devices: int, rounds: int, points: int, publishers: int, rate: float
) -> tuple[int, float]:
    """Run the publisher processes; returns (messages acknowledged, seconds)."""
    # spawn, not fork: the prober thread runs while publishers start, and a forked child
    # can inherit a lock that thread held (seen: a publisher stuck for good in paho).
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    done: mp.Queue = ctx.Queue()
    per = -(-devices // publishers)
    procs = [
        ctx.Process(
            target=publisher,
            args=(
                port,
                i * per,
                min(devices, (i + 1) * per),
                rounds,
                points,
                rate / publishers,
                start,
                done,
            ),
        )
        for i in range(publishers)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # spawned, imported and connected
    t0 = time.time()
    start.set()
    finished = [done.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    return sum(f[1] for f in finished), max(f[2] for f in finished) - t0


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
    backlog_messages: int
    messages_per_s: float
    points_per_s: float
    reference_messages_per_s: float
    ratio_to_reference: float
    publish_messages_per_s: float
    live_rate_messages_per_s: float
    live_seconds: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_probes: int
    lost_samples: int
    duplicated_samples: int


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
            try:
                rows = conn.execute(
                    "SELECT s.ts_ms FROM samples s JOIN series r ON r.id = s.series_id "
                    "WHERE r.device = ? AND s.ts_ms >= ?",
                    (PROBE_DEVICE, min(pending)),
                ).fetchall()
            except sqlite3.OperationalError:
                # The file exists before ingest has created its tables: look again soon.
                rows = []
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


def start_ingest(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "run", "ingest", str(config)],
        stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def warm_up(port: int, db: Path, log: Path) -> None:
    """Probes until one is stored: ingest is subscribed (its session exists at the broker)."""
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
        raise RuntimeError(f"ingest stored nothing in 30 s; its log:\n{log.read_text()}")


def reference_drain(port: int, count: int) -> float:
    """``mosquitto_sub`` resumes its persistent session and reads `count` messages: seconds."""
    t0 = time.time()
    subprocess.run(
        ["mosquitto_sub", "-p", str(port), "-q", "1", "-c", "-i", "bench-reference",
         "-t", f"gridpilot/v1/{SITE}/+/telemetry",
         "-T", f"gridpilot/v1/{SITE}/{PROBE_DEVICE}/telemetry", "-C", str(count)],
        stdout=subprocess.DEVNULL, check=True, timeout=900,
    )  # fmt: skip
    return time.time() - t0


def register_reference(port: int) -> None:
    """Create the reference's persistent session so the backlog is queued for it too."""
    subprocess.run(
        ["mosquitto_sub", "-p", str(port), "-q", "1", "-c", "-i", "bench-reference",
         "-t", f"gridpilot/v1/{SITE}/+/telemetry", "-W", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=30,
    )  # fmt: skip


def wait_stored(db: Path, target: int, timeout_s: float) -> tuple[float, float, int]:
    """Poll until `target` rows: (time of first new row, time of target, rows then)."""
    start_count = count_samples(db)
    first_seen = 0.0
    deadline = time.monotonic() + timeout_s
    stored = start_count
    while time.monotonic() < deadline:
        stored = count_samples(db)
        if stored > start_count and not first_seen:
            first_seen = time.time()
        if stored >= target:
            break
        time.sleep(0.02)
    return first_seen, time.time(), stored


def run(devices: int, points: int, rounds: int, publishers: int, live_rate: float,
        live_seconds: float) -> Result:  # fmt: skip
    backlog = devices * rounds
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = subprocess.Popen(
            [MOSQUITTO, "-c", str(mosquitto_conf(workdir, port))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ingest = None
        log = workdir / "ingest.log"
        db = workdir / "bench.db"
        try:
            wait_port(port)
            config = site_file(workdir, port, devices, points)
            # Sessions for both consumers, then both away while the backlog is published.
            ingest = start_ingest(config, log)
            warm_up(port, db, log)
            stop_process(ingest)
            register_reference(port)
            baseline = count_samples(db)

            published, publish_s = publish_all(port, devices, rounds, points, publishers, 0)
            print(f"published {published} messages in {publish_s:.1f} s", file=sys.stderr)
            reference_s = reference_drain(port, backlog)

            ingest = start_ingest(config, log)
            first, last, stored = wait_stored(db, baseline + backlog * points, timeout_s=900)
            # Rate over the drain itself (first row to last), not the process start-up.
            if stored < baseline + backlog * points:
                raise RuntimeError(f"ingest stored {stored - baseline} of {backlog * points}")
            rate = backlog / max(last - first, 1e-3)

            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=probe_loop, args=(port, db, stop, latencies))
            prober.start()
            live_rounds = max(1, round(live_rate * live_seconds / devices))
            live_published, _ = publish_all(
                port, devices, live_rounds, points, publishers, live_rate
            )
            stop.set()
            prober.join()
            expected = baseline + (backlog + live_published) * points + len(latencies)
            wait_stored(db, expected, timeout_s=120)
            stored_total = count_samples(db)
        finally:
            stop_process(ingest)
            broker.terminate()
            broker.wait(timeout=10)
        lat = sorted(latencies)
        ref_rate = backlog / reference_s
        return Result(
            machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"Python {platform.python_version()}",
            date=time.strftime("%Y-%m-%d"),
            devices=devices,
            points_per_message=points,
            backlog_messages=backlog,
            messages_per_s=round(rate),
            points_per_s=round(rate * points),
            reference_messages_per_s=round(ref_rate),
            ratio_to_reference=round(rate / ref_rate, 3),
            publish_messages_per_s=round(published / publish_s),
            live_rate_messages_per_s=live_rate,
            live_seconds=live_seconds,
            latency_p50_ms=round(statistics.median(lat), 1) if lat else float("nan"),
            latency_p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)
            if lat
            else float("nan"),
            latency_probes=len(lat),
            lost_samples=max(0, expected - stored_total),
            duplicated_samples=max(0, stored_total - expected),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--points", type=int, default=10, help="values per message")
    parser.add_argument("--rounds", type=int, default=100, help="backlog messages per device")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--live-rate", type=float, default=2000, help="msg/s in phase 2")
    parser.add_argument("--live-seconds", type=float, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds through the finally blocks that stop the broker
    # and ingest instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(
        args.devices, args.points, args.rounds, args.publishers, args.live_rate, args.live_seconds
    )
    if args.json:
        print(json.dumps(asdict(result)))
        return
    for key, value in asdict(result).items():
        print(f"{key:>26}  {value}")


if __name__ == "__main__":
    main()
