"""The gateway faults' rig: a counting Modbus device, ``gridpilot run gateway`` and
``gridpilot run ingest`` as processes, a persistent Mosquitto, and a count of what the
gateway took against what was stored.

Every reply of the device (``counter_device.py``) carries the next number in each of its
``points`` registers pairs, so poll ``v`` leaves ``points`` rows of value ``v``.

**Sent**, for the gateway, is what it *took*: the polls it committed to its on-disk buffer
(the gateway's acknowledgement of a reading). The device's answers are numbered 1, 2, 3...
and the gateway commits every answer it receives, so the values taken are every number up
to the highest one stored, except those answered to a gateway killed before it committed
them (between the last value the killed gateway committed and the first value its successor
received: the readings it held in memory at the SIGKILL, at most a poll or two, reported
as ``read, not taken``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
import yaml

from tests.conftest import REPO

GATEWAY_DEVICE = "ctr"


@dataclass(frozen=True, slots=True)
class GatewayProfile:
    name: str
    stream_s: float  # how long the device is polled in all
    outage_s: float  # how long the broker (or the gateway) stays down
    poll_s: float  # the device's poll interval
    points: int  # values per poll
    settle_s: float  # how long the stored count may stand still before the test gives up

    @classmethod
    def from_env(cls) -> GatewayProfile:
        name = os.environ.get("GRIDPILOT_FAULT_PROFILE", "short")
        if name == "short":
            return cls("short", stream_s=8.0, outage_s=3.0, poll_s=0.01, points=10, settle_s=20)
        if name == "full":
            # 60 uint32 points: 120 registers, still one read (at most 125), so one poll
            # is one answer of the device; ~100 polls/s x 60 = 1,000,000 samples in 170 s.
            return cls("full", stream_s=170.0, outage_s=60.0, poll_s=0.01, points=60, settle_s=120)
        raise ValueError(f"GRIDPILOT_FAULT_PROFILE={name!r}: use short or full")


def write_gateway_site(
    path: Path,
    site: str,
    *,
    broker_port: int,
    device_port: int,
    db: Path,
    profile: GatewayProfile,
) -> Path:
    """One site file for both processes: the gateway polls the counting device, ingest
    stores into SQLite with a plain (restored-with-the-session) subscription. The bus
    queue is small (``max_outgoing`` 100: the buffer hands the bus 50 messages at most), so
    an outage of a few seconds really backs up on disk."""
    doc = {
        "site": {"id": site},
        "ingest": {"shared_subscription": "off"},
        "broker": {
            "url": f"mqtt://127.0.0.1:{broker_port}",
            "keepalive": "PT5S",
            "max_outgoing": 100,
        },
        "storage": {
            "path": str(db),
            "batch_size": 5_000,
            "flush_interval": "PT0.2S",
            "max_buffered": 20_000,
        },
        "gateway": {
            "max_backoff": "PT0.5S",
            "state_interval": "PT1S",
            "buffer": {"path": "gateway.buffer.db"},
        },
        "devices": [
            {
                "id": GATEWAY_DEVICE,
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": device_port,
                "unit_id": 1,
                "poll_interval": f"PT{profile.poll_s}S",
                "timeout": "PT1S",
                "retries": 0,
                "points": [
                    {"point": f"v{k}_count", "address": 2 * k, "type": "uint32"}
                    for k in range(profile.points)
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class DeviceProcess:
    """``counter_device.py`` in a subprocess; follows what it prints."""

    port: int
    log_path: Path
    flap: tuple[float, float] | None = None
    process: subprocess.Popen[bytes] | None = None
    first_values: list[tuple[int, int]] = field(default_factory=list)  # (connection, value)
    answered: int = 0  # the last value it reported (every 100, and at each flap)
    downs: int = 0
    ups: int = 0
    _reader: threading.Thread | None = field(default=None, repr=False)
    _listening: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> None:
        script = Path(__file__).with_name("counter_device.py")
        args = [str(self.port)] + ([] if self.flap is None else [str(x) for x in self.flap])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), *args],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.start()
        if not self._listening.wait(30):
            raise AssertionError(f"the device did not start: {self.log_path.read_text()}")

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                words = raw.decode().split()
                match words:
                    case ["listening", _]:
                        self._listening.set()
                    case ["conn", conn, "first", value]:
                        self.first_values.append((int(conn), int(value)))
                    case ["answered", value]:
                        self.answered = int(value)
                    case ["down", value]:
                        self.downs += 1
                        self.answered = int(value)
                    case ["up", value]:
                        self.ups += 1
                        self.answered = int(value)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)


@dataclass
class ArrivalWatcher:
    """``mosquitto_sub`` with a persistent session on the device's telemetry: the order in
    which the broker delivered the polls (buffered ones must come before live ones)."""

    port: int
    site: str
    path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        topic = f"gridpilot/v1/{self.site}/{GATEWAY_DEVICE}/telemetry"
        with self.path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-c"),
                    *("-q", "1", "-i", f"watch-{self.site}", "-t", topic),
                ],
                stdout=out,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )

    def arrivals(self) -> list[int]:
        """The poll numbers in arrival order (a redelivery shows twice)."""
        order: list[int] = []
        for line in self.path.read_bytes().splitlines():
            if line.strip():
                order.append(int(orjson.loads(line)["values"]["v0_count"]))
        return order

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def out_of_order(arrivals: Sequence[int]) -> list[tuple[int, int]]:
    """New polls that arrived after a later one (redeliveries of seen polls excepted):
    (the poll, the highest seen before it)."""
    seen: set[int] = set()
    top = 0
    wrong: list[tuple[int, int]] = []
    for value in arrivals:
        if value in seen:
            continue
        if value < top:
            wrong.append((value, top))
        seen.add(value)
        top = max(top, value)
    return wrong


def telemetry_values(payloads: list[bytes]) -> set[int]:
    """The poll numbers in telemetry payloads (each carries its poll's value)."""
    values: set[int] = set()
    for payload in payloads:
        body = orjson.loads(payload)
        values.update(int(v) for v in body["values"].values())
    return values


def buffered_values(buffer_file: Path) -> tuple[int, set[int]]:
    """What a (stopped) gateway's buffer file holds: messages, and the poll numbers of its
    telemetry."""
    with sqlite3.connect(buffer_file, timeout=10) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    conn.close()
    payloads = [bytes(p) for t, p in rows if str(t).endswith("/telemetry")]
    return len(rows), telemetry_values(payloads)


@dataclass(frozen=True, slots=True)
class Stored:
    rows: int
    per_value: dict[int, int]  # poll number -> rows (one per point when stored once)


def stored(db: Path, site: str) -> Stored:
    if not db.exists():
        return Stored(0, {})
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            rows = conn.execute(
                "SELECT s.ts_ms, s.value FROM samples s JOIN series r ON r.id = s.series_id "
                "WHERE r.site = ? AND r.device = ?",
                (site, GATEWAY_DEVICE),
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
    conn.close()
    # Storage is keyed by (series, ts): a redelivered message leaves no second row. A poll
    # stored twice would need two timestamps, and shows as more rows than points.
    per_value: dict[int, int] = {}
    for _ts, value in rows:
        per_value[int(value)] = per_value.get(int(value), 0) + 1
    return Stored(len(rows), per_value)


@dataclass(frozen=True, slots=True)
class GatewayTally:
    points: int
    sent: int  # polls taken (committed to the buffer): see the module docstring
    stored: int  # polls with all their points stored
    lost: list[int]  # polls taken, not (completely) stored
    duplicated: int  # rows beyond one per point per poll
    read_not_taken: list[int]  # answered to a gateway killed before it committed them
    left_in_buffer: int  # messages the stopped gateway still holds (sent on its next start)

    def describe(self) -> str:
        return (
            f"sent {self.sent * self.points} samples ({self.sent} polls), stored "
            f"{self.stored * self.points}, lost {len(self.lost) * self.points} "
            f"(polls {self.lost[:10]}), duplicated {self.duplicated}; read, not taken: "
            f"{self.read_not_taken}; left in the buffer: {self.left_in_buffer}"
        )


def tally(
    db: Path,
    site: str,
    points: int,
    *,
    killed: Sequence[tuple[set[int], int]] = (),
    left_in_buffer: int = 0,
) -> GatewayTally:
    """Count the stored polls. ``killed``: for each SIGKILL of the gateway, what its buffer
    held right after (poll numbers) and the first value its successor was answered."""
    result = stored(db, site)
    top = max(result.per_value, default=0)
    not_taken: list[int] = []
    for in_buffer, successor_first in killed:
        taken_before = {v for v in result.per_value if v < successor_first} | {
            v for v in in_buffer if v < successor_first
        }
        last = max(taken_before, default=0)
        not_taken += list(range(last + 1, successor_first))
    sent = [v for v in range(1, top + 1) if v not in set(not_taken)]
    complete = [v for v in sent if result.per_value.get(v, 0) >= points]
    lost = [v for v in sent if result.per_value.get(v, 0) < points]
    duplicated = result.rows - sum(min(n, points) for n in result.per_value.values())
    return GatewayTally(
        points, len(sent), len(complete), lost, duplicated, not_taken, left_in_buffer
    )


def wait_stored_value(db: Path, site: str, at_least: int, settle_s: float) -> None:
    """Until a poll numbered ``at_least`` or more is stored, or nothing new for ``settle_s``."""
    last, since = -1, time.monotonic()
    while True:
        result = stored(db, site)
        top = max(result.per_value, default=0)
        if top >= at_least:
            return
        if result.rows != last:
            last, since = result.rows, time.monotonic()
        elif time.monotonic() - since > settle_s:
            return
        time.sleep(0.2)


def wait_settled(db: Path, site: str, settle_s: float = 2.0, limit_s: float = 60.0) -> None:
    """Until the stored rows stop changing for ``settle_s``."""
    deadline = time.monotonic() + limit_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = stored(db, site).rows
        if rows != last:
            last, since = rows, time.monotonic()
        elif time.monotonic() - since > settle_s:
            return
        time.sleep(0.2)
