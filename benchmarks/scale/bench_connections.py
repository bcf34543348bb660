"""Scale benchmark: N MQTT device connections at once (5,000 by default, the seed's
``max_connections 5000``), each publishing one telemetry message per second at QoS 1,
through a private Mosquitto into ``gridpilot run ingest`` and SQLite.

Everything runs on 127.0.0.1, each part in its own process so that each one's CPU is its own:

* **Mosquitto**, private, with the flow-control settings of ``deploy/mosquitto/gridpilot.conf``
  and its two listeners' roles: a device listener with that file's ``max_connections``
  (5,000) and a services listener (ingest, the probe, the ``$SYS`` monitor).
* **ingest**: ``gridpilot run ingest site.yaml`` as shipped (one process; ``--ingest 2`` runs
  two with ``ingest.shared_subscription: on``), writing to SQLite. The site file lists every
  device (generated).
* **load**: ``--load-procs`` processes (4 x 1,250 connections), each one asyncio loop whose
  devices speak MQTT 3.1.1 themselves (CONNECT, PUBLISH QoS 1, PUBACK; a few µs per
  message, so the generator is not what is measured). Connections open at ``--ramp`` per
  second; then, from one instant, device g publishes message k at ``t0 + k + g/N`` (the
  devices spread over the second, as real meters are): the project's telemetry payload
  (``encode_telemetry``: ts, seq, values; ``energy_wh`` carries seq). Back-pressure: a process
  with ``--max-inflight`` unacknowledged messages waits (and reports how late it fell).
* **probe**: a device on the services listener publishes a wall-clock-stamped sample every
  50 ms; the time until it is queryable in SQLite (polled every 10 ms) is publish ->
  queryable latency, measured under the load.

Accounting: every message the broker acknowledged must be stored, once. The harness compares
storage with what each device sent (per device: ``energy_wh`` values = the seqs stored;
rows per point = messages stored). Messages in flight when a connection dropped or at the
end, without a PUBACK, are "unacknowledged": reported, and not counted as lost if absent.

Keeping up: every 5 s, messages due by the schedule minus messages queryable (from the
``latest`` table: each device's newest ``energy_wh``, i.e. its last seq stored) and the
broker's stored-message count (``$SYS``). At the end: the backlog when the last PUBACK
arrived and how long ingest took to store the rest (drain).

    .venv/bin/python benchmarks/scale/bench_connections.py                 # 5,000 x 10 min
    .venv/bin/python benchmarks/scale/bench_connections.py --quick         # 500 x 1 min
    .venv/bin/python benchmarks/scale/bench_connections.py --ingest 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from benchmarks.ingest.bench_ingest import (  # noqa: E402  # after the path set-up
    MOSQUITTO,
    PROBE_DEVICE,
    PROBE_PERIOD_S,
    PROBE_POINT,
    SITE,
    free_port,
    wait_port,
)

from gridpilot.bus.codec import encode_telemetry  # noqa: E402

POINTS = ("energy_wh", "power_w", "voltage_v", "current_a")
"""A meter's telemetry; ``energy_wh`` carries the message's seq (a counter, as a meter's)."""
SAMPLE_EVERY_S = 5.0
"""How often the harness reads the backlog (schedule vs queryable) and the broker's counts."""
CONNECT_TIMEOUT_S = 10.0
ACK_WAIT_S = 60.0
"""After its last message, how long a load process waits for the outstanding PUBACKs."""
STOPPED = re.compile(
    r"ingest (\S+) stopped: (\d+) messages, (\d+) samples written, (\d+) duplicates"
)
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ MQTT 3.1.1 packets


def _varint(n: int) -> bytes:
    """MQTT's remaining length: 7 bits a byte, low first."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session (devices that only publish keep no session)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive_s.to_bytes(2, "big")
    body += len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """PUBLISH at QoS 1 (fixed header 0x32)."""
    length = 2 + len(topic) + 2 + len(payload)
    return b"".join(
        (b"\x32", _varint(length), len(topic).to_bytes(2, "big"), topic,
         packet_id.to_bytes(2, "big"), payload)
    )  # fmt: skip


DISCONNECT = b"\xe0\x00"


# ------------------------------------------------------------------ load processes


class Device:
    """One device's counters; they outlive its connections (a dropped one reconnects)."""

    __slots__ = ("conn", "g", "inflight", "name", "next_id", "sent", "skipped", "topic")

    def __init__(self, g: int) -> None:
        self.g = g
        self.name = f"m{g:05d}"
        self.topic = f"gridpilot/v1/{SITE}/{self.name}/telemetry".encode()
        self.conn: DeviceConnection | None = None
        self.inflight: dict[int, tuple[int, int]] = {}  # packet id -> (seq, ts_ms)
        self.next_id = 1
        self.sent = 0
        self.skipped: list[int] = []  # seqs due while disconnected: never sent


class DeviceConnection(asyncio.Protocol):
    """The socket of one device: CONNACK and PUBACK in, PUBLISH out."""

    def __init__(self, device: Device, fleet: Fleet) -> None:
        self.device = device
        self.fleet = fleet
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.connack: asyncio.Future[int] = fleet.loop.create_future()
        self.up = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                return
            kind = buf[0] >> 4
            body = bytes(buf[i : i + length])
            del buf[: i + length]
            if kind == 4:  # PUBACK
                self.fleet.acked(self.device, int.from_bytes(body[:2], "big"))
            elif kind == 2 and not self.connack.done():  # CONNACK: flags, return code
                self.connack.set_result(body[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_result(-1)
        self.fleet.lost(self)


class Fleet:
    """The devices of one load process, their connections and their schedule."""

    def __init__(self, port: int, first: int, count: int, total: int, max_inflight: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.port = port
        self.total = total
        self.devices = [Device(g) for g in range(first, first + count)]
        self.max_inflight = max_inflight
        self.inflight = 0
        self.acks = 0
        self.space = asyncio.Event()
        self.connect_ms: list[float] = []
        self.refused = 0
        self.failed = 0
        self.disconnects = 0
        self.reconnects = 0
        self.unacked_dropped: dict[str, list[tuple[int, int]]] = {}
        self.last_ack = 0.0
        self.stopping = False

    async def connect(self, device: Device) -> bool:
        began = time.monotonic()
        conn = DeviceConnection(device, self)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.loop.create_connection(lambda: conn, "127.0.0.1", self.port)
                assert conn.transport is not None
                conn.transport.write(connect_packet(f"bench-{device.name}", 60))
                code = await conn.connack
        except (OSError, TimeoutError):
            self.failed += 1
            if conn.transport is not None:
                conn.transport.abort()
            return False
        if code != 0:
            self.refused += 1  # 3: server unavailable, e.g. max_connections reached
            if conn.transport is not None:
                conn.transport.abort()
            return False
        conn.up = True
        device.conn = conn
        self.connect_ms.append((time.monotonic() - began) * 1000)
        return True

    async def ramp(self, rate: float) -> tuple[int, float, float]:
        """Open every device's connection, ``rate`` new ones per second: (up, first, last)."""
        began = time.time()
        tasks = []
        for n, device in enumerate(self.devices):
            delay = began + n / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.connect(device)))
        results = await asyncio.gather(*tasks)
        return sum(results), began, time.time()

    def lost(self, conn: DeviceConnection) -> None:
        device = conn.device
        if device.conn is not conn or not conn.up:
            return
        conn.up = False
        device.conn = None
        if device.inflight:  # never acknowledged: the harness checks storage for them
            self.unacked_dropped.setdefault(device.name, []).extend(device.inflight.values())
            self.inflight -= len(device.inflight)
            device.inflight.clear()
            self.space.set()
        if not self.stopping:
            self.disconnects += 1
            self.loop.create_task(self.reconnect(device))

    async def reconnect(self, device: Device) -> None:
        while not self.stopping and device.conn is None:
            await asyncio.sleep(1.0)
            if await self.connect(device):
                self.reconnects += 1

    def acked(self, device: Device, packet_id: int) -> None:
        if device.inflight.pop(packet_id, None) is None:
            return
        self.inflight -= 1
        self.acks += 1
        self.last_ack = time.time()
        if self.inflight <= self.max_inflight // 2:
            self.space.set()

    async def run(self, t0: float, rounds: int) -> dict[str, Any]:
        """Device g sends message k at t0 + k + g/total; returns lateness figures."""
        phases = [d.g / self.total for d in self.devices]
        max_late = 0.0
        late_1s = 0
        waited = 0.0
        for k in range(rounds):
            base = t0 + k
            for device, phase in zip(self.devices, phases, strict=True):
                due = base + phase
                ahead = due - time.time()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
                if self.inflight >= self.max_inflight:  # back-pressure: wait for PUBACKs
                    began = time.monotonic()
                    self.space.clear()
                    while self.inflight > self.max_inflight // 2:
                        await self.space.wait()
                        self.space.clear()
                    waited += time.monotonic() - began
                late = time.time() - due
                max_late = max(max_late, late)
                if late > 1.0:
                    late_1s += 1
                self.publish(device, k, round(due * 1000))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_WAIT_S):
                while self.inflight:  # `space` is set on each PUBACK once under the cap
                    self.space.clear()
                    await self.space.wait()
        return {"max_late_s": round(max_late, 3), "late_over_1s": late_1s,
                "backpressure_wait_s": round(waited, 3)}  # fmt: skip

    def publish(self, device: Device, seq: int, ts_ms: int) -> None:
        conn = device.conn
        if conn is None or conn.transport is None or not conn.up:
            device.skipped.append(seq)
            return
        # A meter's values; energy_wh = seq identifies the message in storage.
        values = {
            "energy_wh": float(seq),
            "power_w": 1000.0 + device.g % 100,
            "voltage_v": 230.0 + (seq % 10) / 10,
            "current_a": 4.35,
        }
        packet_id = device.next_id
        device.next_id = packet_id % 65535 + 1
        device.inflight[packet_id] = (seq, ts_ms)
        self.inflight += 1
        device.sent += 1
        payload = encode_telemetry(ts_ms, values, seq=seq)
        conn.transport.write(publish_packet(device.topic, packet_id, payload))

    async def close(self) -> None:
        self.stopping = True
        for device in self.devices:
            conn = device.conn
            if conn is not None and conn.transport is not None:
                if device.inflight:
                    self.unacked_dropped.setdefault(device.name, []).extend(
                        device.inflight.values()
                    )
                    self.inflight -= len(device.inflight)
                    device.inflight.clear()
                conn.up = False
                conn.transport.write(DISCONNECT)
                conn.transport.close()
        await asyncio.sleep(0.5)


def _usage() -> tuple[float, int, float]:
    """(CPU seconds, peak RSS KiB, run-queue wait seconds) of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss, run_wait_s(os.getpid())


def load_process(
    port: int, first: int, count: int, total: int, ramp_rate: float, max_inflight: int,
    rounds: int, pipe: Connection,
) -> None:  # fmt: skip
    """One load process: ramp, report, wait for the start instant, publish, report."""

    async def main() -> None:
        fleet = Fleet(port, first, count, total, max_inflight)
        up, ramp_start, ramp_end = await fleet.ramp(ramp_rate)
        cpu_ramp, _, wait_ramp = _usage()
        pipe.send(
            {"up": up, "refused": fleet.refused, "failed": fleet.failed,
             "ramp_start": ramp_start, "ramp_end": ramp_end, "connect_ms": fleet.connect_ms}
        )  # fmt: skip
        t0 = await fleet.loop.run_in_executor(None, pipe.recv)
        lateness = await fleet.run(t0, rounds)
        cpu_end, peak_kib, wait_end = _usage()
        await fleet.close()
        unacked = {name: sorted(items) for name, items in fleet.unacked_dropped.items()}
        pipe.send(
            {
                **lateness,
                "sent": {d.name: d.sent for d in fleet.devices},
                "skipped": {d.name: d.skipped for d in fleet.devices if d.skipped},
                "unacked": unacked,
                "acks": fleet.acks,
                "last_ack": fleet.last_ack,
                "disconnects": fleet.disconnects,
                "reconnects": fleet.reconnects,
                "cpu_s_ramp": round(cpu_ramp, 2),
                "cpu_s_total": round(cpu_end, 2),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "run_wait_s": round(wait_end - wait_ramp, 1),
            }
        )

    asyncio.run(main())


# ------------------------------------------------------------------ harness


def raise_nofile(needed: int) -> dict[str, Any]:
    """RLIMIT_NOFILE for this process and everything it starts (inherited): at least
    ``needed``; root may raise the hard limit too (up to fs.nr_open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    note = ""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError) as exc:
        # Not root and the hard limit is lower: take what is allowed and say so.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        note = f"could not raise RLIMIT_NOFILE to {want} ({exc}); connections may fail"
        print(f"WARNING: {note}", file=sys.stderr)
    new_soft, new_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"before": [soft, hard], "after": [new_soft, new_hard], "note": note}


def seed_max_connections() -> int:
    """The device listener's ``max_connections`` in deploy/mosquitto/gridpilot.conf."""
    text = (REPO / "deploy" / "mosquitto" / "gridpilot.conf").read_text()
    values = [int(m) for m in re.findall(r"^max_connections (\d+)", text, re.MULTILINE)]
    return max(values)


def mosquitto_conf(workdir: Path, device_port: int, service_port: int, devices: int) -> Path:
    """Two loopback listeners, as in production: devices (max_connections of the seed's
    device listener) and GridPilot's services; the production flow-control settings."""
    production = (REPO / "deploy" / "mosquitto" / "gridpilot.conf").read_text()
    keep = ("max_queued_messages", "max_queued_bytes", "max_inflight_messages", "set_tcp_nodelay",
            "max_packet_size")  # fmt: skip
    lines = ["per_listener_settings false", "allow_anonymous true", "persistence false",
             "sys_interval 5"]  # fmt: skip
    lines += [line for line in production.splitlines() if line.startswith(keep)]
    if os.geteuid() == 0:
        import pwd  # noqa: PLC0415  # only for root: keep the broker as this user

        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    lines += [
        f"listener {device_port} 127.0.0.1",
        f"max_connections {max(seed_max_connections(), devices)}",
        f"listener {service_port} 127.0.0.1",
        "max_connections 200",
    ]
    path = workdir / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def site_file(workdir: Path, port: int, devices: int, ingests: int) -> Path:
    points = [
        {"point": "energy_wh", "valid_range": [0, 1e12]},
        {"point": "power_w", "valid_range": [-1e6, 1e6]},
        {"point": "voltage_v", "valid_range": [0, 1000]},
        {"point": "current_a", "valid_range": [-1e4, 1e4]},
    ]
    data: dict[str, Any] = {
        "site": {"id": SITE},
        "broker": {"url": f"mqtt://127.0.0.1:{port}"},
        "storage": {"path": "bench.db"},
        "devices": [{"id": f"m{g:05d}", "protocol": "mqtt", "points": points}
                    for g in range(devices)]
        + [{"id": PROBE_DEVICE, "protocol": "mqtt", "points": [{"point": PROBE_POINT}]}],
    }  # fmt: skip
    if ingests > 1:
        # Several processes split one shared subscription; each then sees part of every
        # stream, so live gap counting is off (IngestConfig.stream_gaps says so).
        data["ingest"] = {"shared_subscription": "on", "stream_gaps": False}
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_ingest(config: Path, instance: int, log: Path) -> subprocess.Popen[bytes]:
    """``gridpilot -v run ingest --instance N``; returns once it says it is running (it has
    subscribed), its log in a file."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "-v", "run", "ingest", str(config),
             "--instance", str(instance)],
            stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while b"running for site" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"ingest {instance} did not start; its log:\n{log.read_text()}")
        time.sleep(0.1)
    return process


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, all threads (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def run_wait_s(pid: int) -> float:
    """Seconds the threads of ``pid`` were runnable but waited for a CPU (the run queue:
    /proc/PID/task/*/schedstat, 2nd field). High when the machine is oversubscribed: the
    process would have run, had a core been free."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def machine_ticks() -> tuple[int, int, int]:
    """(busy, iowait, total) CPU ticks of the whole machine so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], values[4], sum(values)


def proc_peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of ``pid`` so far, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return math.nan


def open_db(db: Path) -> sqlite3.Connection | None:
    if not db.exists():
        return None
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, check_same_thread=False)


class Probe(threading.Thread):
    """Publishes a wall-clock-stamped sample every PROBE_PERIOD_S on the services listener
    and polls SQLite every 10 ms until it is queryable: publish -> queryable latency."""

    def __init__(self, port: int, db: Path) -> None:
        super().__init__(name="probe", daemon=True)
        self.port = port
        self.db = db
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.sent = 0

    def run(self) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        pending: dict[int, float] = {}
        conn: sqlite3.Connection | None = None
        series: int | None = None
        next_probe = time.monotonic()
        last_ts = 0
        try:
            while not self.stop.is_set() or pending:
                now = time.monotonic()
                if not self.stop.is_set() and now >= next_probe:
                    ts = max(time.time_ns() // 1_000_000, last_ts + 1)
                    last_ts = ts
                    payload = encode_telemetry(ts, {PROBE_POINT: 0.0})
                    client.publish(f"gridpilot/v1/{SITE}/{PROBE_DEVICE}/telemetry", payload, 1)
                    pending[ts] = time.time()
                    self.sent += 1
                    next_probe = now + PROBE_PERIOD_S
                if conn is None:
                    conn = open_db(self.db)
                if pending and conn is not None:
                    try:
                        if series is None:
                            row = conn.execute(
                                "SELECT id FROM series WHERE site = ? AND device = ? AND point = ?",
                                (SITE, PROBE_DEVICE, PROBE_POINT),
                            ).fetchone()
                            series = row[0] if row else None
                        rows = (
                            conn.execute(
                                "SELECT ts_ms FROM samples WHERE series_id = ? AND ts_ms >= ?",
                                (series, min(pending)),
                            ).fetchall()
                            if series is not None
                            else []
                        )
                    except sqlite3.OperationalError:
                        rows = []  # the schema is not there yet: look again soon
                    seen_at = time.time()
                    for (ts,) in rows:
                        sent_at = pending.pop(ts, None)
                        if sent_at is not None:
                            self.latencies_ms.append((seen_at - sent_at) * 1000)
                if self.stop.is_set() and pending and time.time() - max(pending.values()) > 60:
                    break  # never stored: counted as missing probes
                time.sleep(0.01)
        finally:
            client.loop_stop()
            client.disconnect()
            if conn is not None:
                conn.close()


class SysMonitor:
    """The broker's own counters from ``$SYS`` (published every sys_interval, 5 s)."""

    TOPICS = ("$SYS/broker/clients/connected", "$SYS/broker/store/messages/count",
              "$SYS/broker/load/messages/received/1min", "$SYS/broker/clients/maximum")  # fmt: skip

    def __init__(self, port: int) -> None:
        self.values: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        for topic in self.TOPICS:
            self.client.subscribe(topic)
        self.client.loop_start()

    def _message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            value = float(message.payload)
            name = message.topic.removeprefix("$SYS/broker/")
            self.values[name] = value
            self.peaks[name] = max(value, self.peaks.get(name, value))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def due_messages(t: float, t0: float, total: int, rounds: int) -> int:
    """Messages the schedule has sent by time t (device g's k-th at t0 + k + g/total)."""
    elapsed = t - t0
    if elapsed < 0:
        return 0
    whole, frac = divmod(elapsed, 1.0)
    done = min(int(whole), rounds)  # complete seconds: every device
    partial = min(total, int(frac * total) + 1) if done < rounds else 0
    return done * total + partial


def queryable_messages(conn: sqlite3.Connection) -> int:
    """Sum over devices of (newest energy_wh stored + 1): the messages queryable if each
    device's are stored in order (a message redelivered late would be counted early)."""
    row = conn.execute(
        "SELECT coalesce(sum(l.value + 1), 0) FROM latest l JOIN series r ON r.id = l.series_id "
        "WHERE r.site = ? AND r.point = 'energy_wh'",
        (SITE,),
    ).fetchone()
    return int(row[0])


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def account(db: Path, sent: dict[str, int], skipped: dict[str, list[int]],
            unacked: dict[str, list[tuple[int, int]]], rounds: int) -> dict[str, Any]:  # fmt: skip
    """Storage against what each device sent and the broker acknowledged."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        per_point: dict[tuple[str, str], int] = {
            (device, point): rows
            for device, point, rows in conn.execute(
                "SELECT r.device, r.point, count(*) FROM samples s JOIN series r "
                "ON r.id = s.series_id WHERE r.site = ? AND r.device != ? "
                "GROUP BY r.device, r.point",
                (SITE, PROBE_DEVICE),
            )
        }
        seqs = {
            device: (rows, distinct, outside)
            for device, rows, distinct, outside in conn.execute(
                "SELECT r.device, count(*), count(DISTINCT s.value), "
                "sum(s.value < 0 OR s.value >= ? OR s.value != round(s.value)) "
                "FROM samples s JOIN series r ON r.id = s.series_id "
                "WHERE r.site = ? AND r.device != ? AND r.point = 'energy_wh' GROUP BY r.device",
                (rounds, SITE, PROBE_DEVICE),
            )
        }
        # Messages without a PUBACK may or may not have reached the broker: look them up.
        unacked_stored: dict[str, int] = {}
        for device, items in unacked.items():
            found = 0
            for _seq, ts in items:
                row = conn.execute(
                    "SELECT count(*) FROM samples s JOIN series r ON r.id = s.series_id "
                    "WHERE r.site = ? AND r.device = ? AND r.point = 'energy_wh' AND s.ts_ms = ?",
                    (SITE, device, ts),
                ).fetchone()
                found += int(row[0])
            unacked_stored[device] = found
    finally:
        conn.close()
    lost = dup = lost_samples = dup_samples = foreign = 0
    for device, n_sent in sent.items():
        n_unacked = len(unacked.get(device, ()))
        acked = n_sent - n_unacked
        stored_unacked = unacked_stored.get(device, 0)
        rows, distinct, outside = seqs.get(device, (0, 0, 0))
        outside = int(outside or 0)
        foreign += outside
        dup += rows - distinct  # one seq stored under two timestamps
        lost += max(0, acked - (distinct - outside - stored_unacked))
        for point in POINTS:
            stored_acked = per_point.get((device, point), 0) - stored_unacked
            lost_samples += max(0, acked - stored_acked)
            dup_samples += max(0, stored_acked - acked)
    acked_total = sum(sent.values()) - sum(len(v) for v in unacked.values())
    return {
        "messages_sent": sum(sent.values()),
        "messages_skipped_disconnected": sum(len(v) for v in skipped.values()),
        "messages_acknowledged": acked_total,
        "messages_unacknowledged": sum(len(v) for v in unacked.values()),
        "unacknowledged_but_stored": sum(unacked_stored.values()),
        "samples_expected": acked_total * len(POINTS),
        "samples_stored": sum(per_point.values()),
        "lost_messages": lost,
        "duplicated_messages": dup,
        "lost_samples": lost_samples,
        "duplicated_samples": dup_samples,
        "foreign_rows": foreign,
    }


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    mosquitto = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False)
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosquitto.stdout.split("\n", 1)[0].strip(),
        "platform": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    devices, procs = args.devices, min(args.load_procs, args.devices)
    rounds = max(1, round(args.minutes * 60))
    # Each device is a socket in the broker and in its load process; headroom for the rest.
    nofile = raise_nofile(devices + 1024)
    report: dict[str, Any] = {
        "machine": {**machine(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {
            "devices": devices, "messages_per_device_per_s": 1, "seconds": rounds,
            "points_per_message": len(POINTS), "qos": 1, "ingest_processes": args.ingest,
            "load_processes": procs, "ramp_per_s": args.ramp,
            "max_inflight_per_load_process": args.max_inflight,
            "max_connections": max(seed_max_connections(), devices), "rlimit_nofile": nofile,
        },
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        device_port, service_port = free_port(), free_port()
        while service_port == device_port:
            service_port = free_port()
        conf = mosquitto_conf(workdir, device_port, service_port, devices)
        with (workdir / "mosquitto.log").open("wb") as broker_log:  # the broker keeps its fd
            broker = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=broker_log
            )
        ingests: list[subprocess.Popen[bytes]] = []
        logs = [workdir / f"ingest-{i}.log" for i in range(args.ingest)]
        db = workdir / "bench.db"
        ctx = mp.get_context("spawn")
        loaders: list[tuple[mp.process.BaseProcess, Connection]] = []
        sysmon: SysMonitor | None = None
        probe: Probe | None = None
        try:
            wait_port(device_port)
            wait_port(service_port)
            config = site_file(workdir, service_port, devices, args.ingest)
            for i, log in enumerate(logs):  # one after the other: the first makes the schema
                ingests.append(start_ingest(config, i, log))
            sysmon = SysMonitor(service_port)

            # Ramp: every load process opens its connections, `ramp` per second in all.
            per = -(-devices // procs)
            for i in range(procs):
                first, count = i * per, min(per, devices - i * per)
                mine, theirs = ctx.Pipe()
                process = ctx.Process(
                    target=load_process,
                    args=(device_port, first, count, devices, args.ramp / procs,
                          args.max_inflight, rounds, theirs),
                    name=f"load-{i}",
                )  # fmt: skip
                process.start()
                loaders.append((process, mine))
            ramps = [pipe.recv() for _, pipe in loaders]  # blocks until each has ramped
            connect_ms = [ms for r in ramps for ms in r["connect_ms"]]
            established = sum(r["up"] for r in ramps)
            report["connections"] = {
                "attempted": devices,
                "established": established,
                "refused": sum(r["refused"] for r in ramps),
                "failed": sum(r["failed"] for r in ramps),
                "ramp_s": round(max(r["ramp_end"] for r in ramps)
                                - min(r["ramp_start"] for r in ramps), 1),
                "connect_p50_ms": percentile(connect_ms, 0.5),
                "connect_p99_ms": percentile(connect_ms, 0.99),
            }  # fmt: skip
            print(f"{established} of {devices} connections up", file=sys.stderr)

            # The measured run: all devices from one instant, the probe beside them.
            watched = {"mosquitto": broker.pid} | {
                f"ingest-{i}": p.pid for i, p in enumerate(ingests)
            }
            cpu_start = {name: proc_cpu_s(pid) for name, pid in watched.items()}
            wait_start = {name: run_wait_s(pid) for name, pid in watched.items()}
            harness_start = _usage()
            ticks_start = machine_ticks()
            t0 = math.ceil(time.time()) + 2.0
            for _, pipe in loaders:
                pipe.send(t0)
            probe = Probe(service_port, db)
            time.sleep(max(0.0, t0 - time.time()))
            probe.start()
            timeline: list[dict[str, Any]] = []
            tail: list[tuple[float, int]] = []  # (time, queryable) after the schedule's end
            conn: sqlite3.Connection | None = None
            end_of_schedule = t0 + rounds
            total_due = devices * rounds
            while not all(pipe.poll() for _, pipe in loaders):
                for loader, pipe in loaders:
                    if not loader.is_alive() and not pipe.poll():
                        raise RuntimeError(f"{loader.name} exited ({loader.exitcode})")
                time.sleep(0.2)
                now = time.time()
                conn = conn or open_db(db)
                if conn is None:
                    continue
                if now >= end_of_schedule:
                    tail.append((now, queryable_messages(conn)))
                if timeline and now - (t0 + timeline[-1]["t_s"]) < SAMPLE_EVERY_S:
                    continue
                stored = tail[-1][1] if now >= end_of_schedule else queryable_messages(conn)
                due = due_messages(min(now, end_of_schedule), t0, devices, rounds)
                timeline.append({
                    "t_s": round(now - t0, 1), "due": due, "queryable": stored,
                    "behind": due - stored,
                    "broker_stored_messages": sysmon.values.get("store/messages/count"),
                    "broker_clients": sysmon.values.get("clients/connected"),
                })  # fmt: skip
                if args.verbose:
                    print(f"  {timeline[-1]}", file=sys.stderr)
            results = [pipe.recv() for _, pipe in loaders]
            for loader, _ in loaders:
                loader.join(30)
            last_ack = max(r["last_ack"] for r in results)
            cpu_window = {name: proc_cpu_s(pid) for name, pid in watched.items()}
            wait_window = {name: run_wait_s(pid) for name, pid in watched.items()}
            harness_window = _usage()
            ticks_window = machine_ticks()

            # Drain: until every acknowledged message is queryable.
            sent = {k: v for r in results for k, v in r["sent"].items()}
            skipped = {k: v for r in results for k, v in r["skipped"].items()}
            unacked = {k: v for r in results for k, v in r["unacked"].items()}
            acked_total = sum(sent.values()) - sum(len(v) for v in unacked.values())
            conn = conn or open_db(db)
            assert conn is not None, "ingest never created its database"
            drain_deadline = time.time() + args.drain_timeout
            while tail[-1:] == [] or tail[-1][1] < min(acked_total, total_due):
                if time.time() > drain_deadline:
                    break
                time.sleep(0.1)
                tail.append((time.time(), queryable_messages(conn)))
            # The backlog when the last PUBACK came back, and when ingest had stored it all.
            after_last_ack = [q for t, q in tail if t >= last_ack]
            backlog_at_end = acked_total - (after_last_ack[0] if after_last_ack else tail[-1][1])
            caught_up_at = next((t for t, q in tail if q >= acked_total), None)
            conn.close()
            probe.stop.set()
            probe.join(90)
            accounting = account(db, sent, skipped, unacked, rounds)
            cpu_end = {name: proc_cpu_s(pid) for name, pid in watched.items()}
            peak = {name: proc_peak_rss_mib(pid) for name, pid in watched.items()}
            sys_peaks = dict(sysmon.peaks)
        finally:
            if probe is not None:
                probe.stop.set()
            for loader, _ in loaders:
                if loader.is_alive():
                    loader.kill()
            if sysmon is not None:
                sysmon.close()
            for ingest in ingests:
                stop_process(ingest)
            broker.terminate()
            broker.wait(timeout=30)
        shares = []
        for log in logs:
            found = STOPPED.search(log.read_text(errors="replace"))
            if found is not None:
                client, messages, written, duplicates = found.groups()
                shares.append({"client": client, "messages": int(messages),
                               "samples_written": int(written),
                               "duplicates": int(duplicates)})  # fmt: skip
    window_s = max(last_ack, t0 + rounds) - t0
    lat = probe.latencies_ms
    report["load"] = {
        "window_s": round(window_s, 1),
        "messages_per_s": round(accounting["messages_acknowledged"] / window_s, 1),
        "samples_per_s": round(accounting["samples_expected"] / window_s, 1),
        "max_late_s": max(r["max_late_s"] for r in results),
        "messages_late_over_1s": sum(r["late_over_1s"] for r in results),
        "backpressure_wait_s": round(sum(r["backpressure_wait_s"] for r in results), 2),
        "disconnects": sum(r["disconnects"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
        "broker_peak_clients": sys_peaks.get("clients/connected"),
        # The whole machine over the window, other jobs included (this one is shared).
        "machine_busy_pct": round(
            100 * (ticks_window[0] - ticks_start[0]) / max(1, ticks_window[2] - ticks_start[2]), 1
        ),
        "machine_iowait_pct": round(
            100 * (ticks_window[1] - ticks_start[1]) / max(1, ticks_window[2] - ticks_start[2]), 1
        ),
        "broker_peak_stored_messages": sys_peaks.get("store/messages/count"),
    }
    report["accounting"] = accounting
    report["latency"] = {
        "probes_sent": probe.sent,
        "probes_stored": len(lat),
        "p50_ms": percentile(lat, 0.5),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": percentile(lat, 1.0),
    }
    report["keeping_up"] = {
        "max_behind_messages": max((p["behind"] for p in timeline), default=0),
        "backlog_at_end_messages": backlog_at_end,
        "drain_s": round(max(0.0, caught_up_at - last_ack), 2)
        if caught_up_at is not None
        else None,
        "drained": caught_up_at is not None,
        # Kept up: everything acknowledged was queryable within 5 s of the last PUBACK (a
        # backlog that grew during the run would take longer to drain).
        "kept_up": caught_up_at is not None and caught_up_at - last_ack < 5.0,
        "ingest_shares": shares,
        "ingest_duplicates": sum(s["duplicates"] for s in shares),
    }
    processes = {
        name: {
            "cpu_s": round(cpu_end[name] - cpu_start[name], 1),
            "cpu_pct_of_core_in_window": round(
                100 * (cpu_window[name] - cpu_start[name]) / window_s, 1
            ),
            "peak_rss_mib": peak[name],
            "run_queue_wait_s_in_window": round(wait_window[name] - wait_start[name], 1),
        }
        for name in watched
    }
    for i, r in enumerate(results):
        processes[f"load-{i}"] = {
            "cpu_s": round(r["cpu_s_total"] - r["cpu_s_ramp"], 1),
            "cpu_pct_of_core_in_window": round(
                100 * (r["cpu_s_total"] - r["cpu_s_ramp"]) / window_s, 1
            ),
            "peak_rss_mib": r["peak_rss_mib"],
            "run_queue_wait_s_in_window": r["run_wait_s"],
            "cpu_s_ramp": r["cpu_s_ramp"],
        }
    # This process: the probe (polls SQLite every 10 ms), $SYS monitor and backlog reads.
    processes["harness"] = {
        "cpu_s": round(harness_window[0] - harness_start[0], 1),
        "cpu_pct_of_core_in_window": round(
            100 * (harness_window[0] - harness_start[0]) / window_s, 1
        ),
        "peak_rss_mib": round(harness_window[1] / 1024, 1),
        "run_queue_wait_s_in_window": round(harness_window[2] - harness_start[2], 1),
    }
    report["processes"] = processes
    report["timeline"] = timeline
    report["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def print_report(report: dict[str, Any]) -> None:
    m, s, c = report["machine"], report["settings"], report["connections"]
    load, acc, lat, up = (
        report["load"],
        report["accounting"],
        report["latency"],
        report["keeping_up"],
    )
    print(
        f"\n{s['devices']} connections x 1 msg/s x {s['seconds']} s, {s['points_per_message']} "
        f"points, QoS 1, {s['ingest_processes']} ingest process(es), {s['load_processes']} load "
        f"processes; {m['cpus']} CPUs, load average {m['load_avg_at_start']} -> "
        f"{m['load_avg_at_end']}, commit {m['commit']}, {m['date']}"
    )
    print(
        f"connections: {c['established']} of {c['attempted']} established "
        f"(refused {c['refused']}, failed {c['failed']}) in {c['ramp_s']} s, CONNACK p50/p99 "
        f"{c['connect_p50_ms']} / {c['connect_p99_ms']} ms; RLIMIT_NOFILE "
        f"{s['rlimit_nofile']['after']}"
    )
    print(
        f"messages: {acc['messages_sent']} sent, {acc['messages_acknowledged']} acknowledged "
        f"({load['messages_per_s']} msg/s, {load['samples_per_s']} samples/s), "
        f"{acc['messages_unacknowledged']} unacknowledged, {acc['messages_skipped_disconnected']}"
        f" skipped while disconnected; samples stored {acc['samples_stored']} of "
        f"{acc['samples_expected']}: LOST {acc['lost_samples']}, DUPLICATED "
        f"{acc['duplicated_samples']} (messages lost {acc['lost_messages']}, duplicated "
        f"{acc['duplicated_messages']})"
    )
    print(
        f"publish -> queryable: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max "
        f"{lat['max_ms']} ms ({lat['probes_stored']} of {lat['probes_sent']} probes)"
    )
    print(
        f"keeping up: most behind {up['max_behind_messages']} messages, backlog at end "
        f"{up['backlog_at_end_messages']}, drain {up['drain_s']} s, kept up {up['kept_up']}; "
        f"generator late at most {load['max_late_s']} s, disconnects {load['disconnects']}"
    )
    print(
        f"machine over the window: {load['machine_busy_pct']} % busy, "
        f"{load['machine_iowait_pct']} % iowait (all jobs)"
    )
    print("| process | CPU s | % of a core in window | waited for a CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, p in report["processes"].items():
        print(
            f"| {name} | {p['cpu_s']} | {p['cpu_pct_of_core_in_window']} | "
            f"{p['run_queue_wait_s_in_window']} | {p['peak_rss_mib']} |"
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000, help="MQTT connections")
    parser.add_argument("--minutes", type=float, default=10.0, help="publishing time")
    parser.add_argument("--ingest", type=int, default=1, choices=(1, 2),
                        help="ingest processes (2: shared subscription)")  # fmt: skip
    parser.add_argument("--load-procs", type=int, default=4, help="load generator processes")
    parser.add_argument("--ramp", type=float, default=500.0, help="new connections per second")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=2000,
        help="unacknowledged messages per load process before it waits",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for ingest to store the rest after the load",
    )
    parser.add_argument("--quick", action="store_true", help="500 connections x 1 minute")
    parser.add_argument("--json", type=Path, help="write the results file here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the timeline")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.minutes = 500, 1.0
    # SIGTERM (e.g. from `timeout`) unwinds through the finally blocks that stop the broker,
    # ingest and the load processes instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run(args)
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
