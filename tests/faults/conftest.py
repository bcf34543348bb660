"""Fixtures of the fault-injection suite: a persistent Mosquitto of the test's own, an
ingest subprocess on SQLite, a publisher subprocess; and the sent-vs-stored summary printed
at the end of the run (one line per fault)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MosquittoServer
from tests.faults.rig import (
    FaultProfile,
    IngestProcess,
    Publisher,
    Tally,
    count_stored,
    wait_stored,
    write_site,
)

_RESULTS: list[tuple[str, str, Tally, float]] = []


class SavingMosquitto(MosquittoServer):
    """Persistent, and saving its state every second (the shared fixture saves only on a
    clean shutdown, so after SIGKILL a restarted broker would know no session at all; the
    production config saves every 60 s, and a broker that ran that long has a snapshot)."""

    def write_config(self) -> Path:
        conf = super().write_config()
        conf.write_text(conf.read_text().replace("autosave_interval 0", "autosave_interval 1"))
        return conf


@dataclass
class Rig:
    profile: FaultProfile
    site: str
    db: Path
    base_ts: int
    broker: MosquittoServer
    ingest: IngestProcess
    publisher: Publisher
    started: float
    shared: str  # ingest.shared_subscription

    def finish(self, fault: str) -> Tally:
        """Wait for the publisher's last acknowledgement and for storage to catch up, then
        count; the tally is also printed in the run's summary."""
        self.publisher.wait_done(timeout_s=self.profile.settle_s + 10 * self.profile.outage_s)
        wait_stored(self.db, self.profile.samples, self.profile.settle_s)
        tally = count_stored(self.db, self.site, self.profile, self.publisher.base_ts)
        _RESULTS.append((fault, self.profile.name, tally, time.monotonic() - self.started))
        return tally


@pytest.fixture
def fault_profile() -> FaultProfile:
    return FaultProfile.from_env()


@pytest.fixture
def shared_subscription() -> str:
    """``ingest.shared_subscription`` of the site (tests override it by parametrizing)."""
    return "auto"


@pytest.fixture
def rig(tmp_path: Path, fault_profile: FaultProfile, shared_subscription: str) -> Iterator[Rig]:
    """Broker and ingest running; the publisher created, not started."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = SavingMosquitto(workdir, persistent=True)
    broker.start()
    site = f"fault-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "gridpilot.db"
    site_file = write_site(
        tmp_path / "site.yaml",
        site,
        broker.port,
        db,
        fault_profile,
        shared_subscription=shared_subscription,
    )
    ingest = IngestProcess(site_file, tmp_path / "ingest.log")
    base_ts = (int(time.time()) - 3_600) * 1000
    publisher = Publisher(broker.port, site, fault_profile, base_ts, tmp_path / "publisher.log")
    try:
        ingest.start()
        yield Rig(
            fault_profile,
            site,
            db,
            base_ts,
            broker,
            ingest,
            publisher,
            time.monotonic(),
            shared_subscription,
        )
    finally:
        publisher.stop()
        ingest.stop()
        broker.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("fault injection: sent vs stored")
    for fault, profile, tally, seconds in _RESULTS:
        terminalreporter.write_line(f"[{profile}] {fault}: {tally.describe()}; {seconds:.1f} s")
