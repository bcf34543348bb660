"""Fixtures of the fault-injection suite: a persistent Mosquitto of the test's own, an
ingest subprocess on SQLite, a publisher subprocess; and the sent-vs-stored summary printed
at the end of the run (one line per fault)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tests.conftest import MosquittoServer, find_free_port
from tests.faults.gateway_rig import (
    ArrivalWatcher,
    DeviceProcess,
    GatewayProfile,
    GatewayTally,
    buffered_values,
    stored,
    tally,
    wait_settled,
    wait_stored_value,
    write_gateway_site,
)
from tests.faults.rig import (
    FaultProfile,
    IngestProcess,
    Publisher,
    ServiceProcess,
    Tally,
    count_stored,
    wait_stored,
    write_site,
)


class _Described(Protocol):
    def describe(self) -> str: ...


_RESULTS: list[tuple[str, str, _Described, float]] = []


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
def db_dir(tmp_path: Path) -> Path:
    """The directory of ingest's database (a test module may put it elsewhere)."""
    return tmp_path


@pytest.fixture
def rig(
    tmp_path: Path, db_dir: Path, fault_profile: FaultProfile, shared_subscription: str
) -> Iterator[Rig]:
    """Broker and ingest running; the publisher created, not started."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = SavingMosquitto(workdir, persistent=True)
    broker.start()
    site = f"fault-{uuid.uuid4().hex[:8]}"
    db = db_dir / "gridpilot.db"
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
    for fault, profile, counted, seconds in _RESULTS:
        terminalreporter.write_line(f"[{profile}] {fault}: {counted.describe()}; {seconds:.1f} s")


# ---------------------------------------------------------------------------- gateway faults


@dataclass
class GatewayRig:
    """A counting Modbus device, the gateway and ingest as processes, a persistent broker.
    ``start`` runs them; the test injects its fault; ``finish`` stops the gateway cleanly
    once storage caught up with the device, and counts."""

    profile: GatewayProfile
    site: str
    db: Path
    site_file: Path
    buffer_file: Path
    broker: MosquittoServer
    ingest: IngestProcess
    gateway: ServiceProcess
    device: DeviceProcess
    watcher: ArrivalWatcher
    started: float = 0.0
    killed: list[tuple[set[int], int]] | None = None
    buffered_at_kill: list[int] | None = None

    def start(self, *, flap: tuple[float, float] | None = None) -> None:
        self.device.flap = flap
        self.watcher.start()
        self.device.start()
        self.ingest.start()
        self.gateway.start()
        self.started = time.monotonic()
        self.killed = []
        self.buffered_at_kill = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run_until(self, seconds: float) -> None:
        """Let the stream run until ``seconds`` after start (checking the gateway lives)."""
        while self.elapsed() < seconds:
            assert self.gateway.alive, f"the gateway died:\n{self.gateway.log()[-4000:]}"
            time.sleep(0.1)

    def kill_broker(self) -> None:
        process = self.broker.process
        assert process is not None
        process.kill()
        process.wait(timeout=10)
        self.broker.process = None

    def kill_gateway(self, down_s: float) -> None:
        """SIGKILL the gateway, look into its buffer file, restart it after ``down_s``."""
        assert self.killed is not None
        assert self.buffered_at_kill is not None
        assert self.gateway.kill() == -9
        messages, values = buffered_values(self.buffer_file)
        self.buffered_at_kill.append(messages)
        connections = len(self.device.first_values)
        time.sleep(down_s)
        self.gateway.start()
        deadline = time.monotonic() + 30
        while len(self.device.first_values) <= connections:
            assert time.monotonic() < deadline, "the restarted gateway did not poll"
            time.sleep(0.02)
        self.killed.append((values, self.device.first_values[connections][1]))

    def finish(self, fault: str) -> GatewayTally:
        """Wait for storage to catch up with the device, stop the gateway (SIGTERM: it sends
        what it holds), wait for ingest, count."""
        wait_stored_value(self.db, self.site, self.device.answered, self.profile.settle_s)
        assert self.gateway.terminate() == 0, self.gateway.log()[-4000:]
        wait_settled(self.db, self.site)
        left, _ = buffered_values(self.buffer_file)
        result = tally(
            self.db, self.site, self.profile.points, killed=self.killed or (), left_in_buffer=left
        )
        _RESULTS.append((fault, self.profile.name, result, self.elapsed()))
        return result


@pytest.fixture
def gateway_profile() -> GatewayProfile:
    return GatewayProfile.from_env()


@pytest.fixture
def gateway_rig(tmp_path: Path, gateway_profile: GatewayProfile) -> Iterator[GatewayRig]:
    """Broker running; device, ingest and gateway created, not started."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = SavingMosquitto(workdir, persistent=True)
    broker.start()
    site = f"gwfault-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "gridpilot.db"
    device_port = find_free_port()
    site_file = write_gateway_site(
        tmp_path / "site.yaml",
        site,
        broker_port=broker.port,
        device_port=device_port,
        db=db,
        profile=gateway_profile,
    )
    rig = GatewayRig(
        gateway_profile,
        site,
        db,
        site_file,
        tmp_path / "gateway.buffer.db",
        broker,
        IngestProcess(site_file, tmp_path / "ingest.log"),
        ServiceProcess("gateway", site_file, tmp_path / "gateway.log"),
        DeviceProcess(device_port, tmp_path / "device.log"),
        ArrivalWatcher(broker.port, site, tmp_path / "arrivals.txt"),
    )
    try:
        yield rig
    finally:
        rig.gateway.stop()
        rig.watcher.stop()
        rig.device.stop()
        rig.ingest.stop()
        broker.stop()


__all__ = ["GatewayRig", "Rig", "stored"]
