"""The fault suite's rig: real processes and a count of what arrived against what was sent.

- ``FaultProfile``: ``GRIDPILOT_FAULT_PROFILE=short`` (default, CI: 30,000 samples, outages
  of a few seconds) or ``full`` (1,000,000 samples, 60 s outages).
- ``IngestProcess``: ``gridpilot run ingest SITE_FILE`` as a subprocess (SQLite, the test's
  Mosquitto), killed with SIGKILL or stopped with SIGTERM and started again with the same
  client id, so it resumes its persistent session.
- ``Publisher``: ``tests/faults/publisher.py`` as a subprocess (a numbered stream, QoS 1).
- ``count_stored``: reads the database and says exactly which messages are missing, doubled or
  altered.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from tests.conftest import REPO

DEVICE = "meter1"


@dataclass(frozen=True, slots=True)
class FaultProfile:
    name: str
    messages: int
    points: int  # values per message: samples = messages * points
    rate: float  # messages per second the publisher sends at most
    outage_s: float  # how long a fault lasts (a process down, the database locked)
    settle_s: float  # how long the stored count may stand still before the test gives up

    @property
    def samples(self) -> int:
        return self.messages * self.points

    @classmethod
    def from_env(cls) -> FaultProfile:
        name = os.environ.get("GRIDPILOT_FAULT_PROFILE", "short")
        if name == "short":
            return cls("short", messages=3_000, points=10, rate=1_000.0, outage_s=3.0, settle_s=20)
        if name == "full":
            return cls(
                "full", messages=100_000, points=10, rate=2_000.0, outage_s=60.0, settle_s=180
            )
        raise ValueError(f"GRIDPILOT_FAULT_PROFILE={name!r}: use short or full")


def write_site(
    path: Path,
    site: str,
    broker_port: int,
    db: Path,
    profile: FaultProfile,
    *,
    shared_subscription: str = "auto",
) -> Path:
    """The site file ingest runs with: one mqtt device whose points the publisher sends."""
    doc = {
        "site": {"id": site},
        "ingest": {"shared_subscription": shared_subscription},
        "broker": {"url": f"mqtt://127.0.0.1:{broker_port}", "keepalive": "PT5S"},
        "storage": {
            "path": str(db),
            "batch_size": 5_000,
            "flush_interval": "PT0.2S",
            "max_buffered": 20_000,
        },
        "devices": [
            {
                "id": DEVICE,
                "protocol": "mqtt",
                "points": [{"point": f"p{k}_count"} for k in range(profile.points)],
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ServiceProcess:
    """``gridpilot run SERVICE`` in a subprocess; its output goes to ``log_path`` (appended
    across restarts, so the test can show what every incarnation said). ``env`` is added
    to the environment (the clock-jump test preloads libfaketime through it)."""

    def __init__(
        self,
        service: str,
        site_file: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.site_file = site_file
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._ready = re.compile(rf"gridpilot: {service} running")

    def start(self, timeout_s: float = 60.0) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = None if self.env is None else {**os.environ, **self.env}
        args = ["-m", "gridpilot", "-vv", "run", self.service, str(self.site_file)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready.search(self.log_path.read_bytes()[offset:].decode(errors="replace")):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.service} did not start; its log:\n{self.log()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> int:
        """SIGKILL: no flush, no acknowledgement, no DISCONNECT (the process's own state is
        lost: what it had not written anywhere is gone)."""
        return self._signal(signal.SIGKILL, 10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: ingest writes and acknowledges what it holds, then exits."""
        return self._signal(signal.SIGTERM, timeout_s)

    def _signal(self, sig: signal.Signals, timeout_s: float) -> int:
        process, self.process = self.process, None
        assert process is not None
        process.send_signal(sig)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError(
                f"{self.service} did not exit within {timeout_s} s of {sig.name}; "
                f"log:\n{self.log()}"
            ) from None

    def rss_kib(self) -> int:
        """Resident memory now (VmRSS), KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()


class IngestProcess(ServiceProcess):
    """``gridpilot run ingest``: SQLite, the test's Mosquitto, a persistent session."""

    def __init__(self, site_file: Path, log_path: Path) -> None:
        super().__init__("ingest", site_file, log_path)


@dataclass
class Publisher:
    """``tests/faults/publisher.py`` in a subprocess; ``published`` follows its progress."""

    broker_port: int
    site: str
    profile: FaultProfile
    base_ts: int
    log_path: Path
    published: int = 0
    acknowledged: int | None = None
    seconds: float | None = None
    process: subprocess.Popen[bytes] | None = None
    _reader: threading.Thread | None = field(default=None, repr=False)
    _lines: list[str] = field(default_factory=list, repr=False)

    def start(self) -> None:
        p = self.profile
        script = Path(__file__).with_name("publisher.py")
        args = [str(self.broker_port), self.site, DEVICE, str(p.messages), str(p.points)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), "127.0.0.1", *args, str(self.base_ts), str(p.rate)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,))
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            self._consume(stream)

    def _consume(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode().strip()
            self._lines.append(line)
            word, _, rest = line.partition(" ")
            if word == "published":
                self.published = int(rest)
            elif word == "acknowledged":
                count, seconds = rest.split()
                self.acknowledged, self.seconds = int(count), float(seconds)

    def wait_published(self, fraction: float, timeout_s: float = 120.0) -> None:
        """Until ``fraction`` of the stream is published: the moment to inject a fault."""
        target = int(self.profile.messages * fraction)
        deadline = time.monotonic() + timeout_s
        while self.published < target:
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the publisher stalled at {self.published}: {self.log()}")
            time.sleep(0.01)

    def wait_done(self, timeout_s: float) -> int:
        """Messages the broker acknowledged (all of them, or the test fails here)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(
                f"the publisher did not finish within {timeout_s} s "
                f"(published {self.published}): {self.log()}"
            ) from None
        assert self._reader is not None
        self._reader.join(timeout=10)
        assert code == 0, f"the publisher failed ({code}): {self.log()}"
        assert self.acknowledged == self.profile.messages, self._lines[-3:]
        return self.acknowledged

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)


@dataclass(frozen=True, slots=True)
class Tally:
    """What the database holds of a publisher's stream."""

    sent: int  # samples the broker acknowledged to the publisher
    stored: int  # rows of the stream in the database
    distinct: int  # distinct (series, ts) among them
    missing_messages: list[int]  # message numbers with fewer than all their points stored
    altered: int  # rows whose value is not their message's number

    @property
    def lost(self) -> int:
        return self.sent - self.distinct

    @property
    def duplicated(self) -> int:
        return self.stored - self.distinct

    def describe(self) -> str:
        head = self.missing_messages[:10]
        return (
            f"sent {self.sent}, stored {self.stored} ({self.distinct} distinct), lost "
            f"{self.lost}, duplicated {self.duplicated}, altered {self.altered}; "
            f"{len(self.missing_messages)} message(s) incomplete, first {head}"
        )


def count_stored(db: Path, site: str, profile: FaultProfile, base_ts: int) -> Tally:
    """Count the stream's rows. Each message ``i`` must have left exactly ``points`` rows at
    ``ts = base_ts + i`` with value ``i``."""
    per_message = [0] * profile.messages
    altered = stored = 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        distinct = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT s.series_id, s.ts_ms FROM samples s "
            "JOIN series r ON r.id = s.series_id WHERE r.site = ? AND r.device = ?)",
            (site, DEVICE),
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT s.ts_ms, s.value FROM samples s JOIN series r ON r.id = s.series_id "
            "WHERE r.site = ? AND r.device = ?",
            (site, DEVICE),
        )
        for ts, value in rows:
            stored += 1
            i = ts - base_ts
            if not 0 <= i < profile.messages or value != i:
                altered += 1
                continue
            per_message[i] += 1
    conn.close()
    missing = [i for i, n in enumerate(per_message) if n < profile.points]
    return Tally(profile.samples, stored, distinct, missing, altered)


def stored_rows(db: Path) -> int:
    """Rows in the samples table now (0 before ingest created the database)."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            n: int = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
        except sqlite3.OperationalError:
            n = 0
    conn.close()
    return n


def wait_stored(db: Path, expected: int, settle_s: float) -> None:
    """Until ``expected`` rows are stored, or the count stood still for ``settle_s``."""
    last, since = -1, time.monotonic()
    while True:
        n = stored_rows(db)
        if n >= expected:
            return
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > settle_s:
            return
        time.sleep(0.2)
