"""A site broker bridged to a central broker (``deploy/mosquitto/bridge.conf``).

Two Mosquitto processes of the test's own: the central one (persistent, as in production)
and the site one, whose configuration is the test broker's plus the shipped bridge section
with the central broker's loopback port (its TLS lines dropped: the test's central broker
listens in plain text on loopback). ``gridpilot run ingest`` connects to the central broker
only. Telemetry published at the site is stored through the central ingest; then the central
broker is stopped (the link drops), more telemetry is published at the site while it is
away, the central broker comes back on the same port -- the ingest held back (SIGSTOP)
until the bridge has forwarded the site's queue -- and every sample of both phases is
stored exactly once: the site broker queued the bridge's QoS 1 messages meanwhile, and the
central broker kept them in the ingest's persistent session.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.model import Topic
from tests.conftest import REPO, MosquittoServer

pytestmark = pytest.mark.integration

BRIDGE_CONF = REPO / "deploy" / "mosquitto" / "bridge.conf"
POINTS = [f"p{i}_power_w" for i in range(10)]
MESSAGES = 500
"""Per phase (before and during the outage); 10 samples each."""
_TLS_LINES = ("bridge_cafile", "bridge_certfile", "bridge_keyfile", "bridge_tls_version")


class SiteBroker(MosquittoServer):
    """The test broker's configuration plus the shipped bridge section, pointed at
    ``central_port`` on loopback."""

    def __init__(self, workdir: Path, site: str, central_port: int) -> None:
        super().__init__(workdir, persistent=True)
        self.site = site
        self.central_port = central_port

    def write_config(self) -> Path:
        conf = super().write_config()
        bridge = []
        for line in BRIDGE_CONF.read_text().splitlines():
            if line.startswith(_TLS_LINES):
                continue
            if line.startswith("address "):
                line = f"address 127.0.0.1:{self.central_port}"  # noqa: PLW2901
            bridge.append(line.replace("SITE", self.site))
        assert f"address 127.0.0.1:{self.central_port}" in bridge
        with conf.open("a") as out:
            out.write("\n".join(bridge) + "\n")
        return conf


def write_site(directory: Path, site: str, central: BrokerAddress) -> Path:
    config = {
        "site": {"id": site},
        "broker": {"url": f"mqtt://{central.host}:{central.port}"},
        "storage": {"path": "data/site.db", "batch_size": 2000, "flush_interval": 0.05},
        # One central ingest, subscribed plainly: Mosquitto 2.0.11 keeps a persistent
        # session's plain subscription across its own restart, but drops what arrives for
        # a shared one ($share) until a subscriber is back (README, "Scaling out").
        "ingest": {"shared_subscription": "off"},
        "devices": [
            {
                "id": "meter",
                "protocol": "mqtt",
                "points": [{"point": p, "valid_range": [-1e12, 1e12]} for p in POINTS],
            }
        ],
    }
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stored(db: Path) -> tuple[int, int]:
    """Rows and distinct sample numbers."""
    if not db.exists():
        return (0, 0)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT count(*), count(DISTINCT value) FROM samples").fetchone()
        return (int(row[0]), int(row[1]))
    except sqlite3.OperationalError:  # the schema is not created yet
        return (0, 0)
    finally:
        conn.close()


async def publish(site_broker: BrokerAddress, site: str, first: int, count: int) -> None:
    """Messages ``first`` .. ``first + count - 1`` at the site broker (QoS 1); message i
    carries samples 10 i .. 10 i + 9, the value being the sample's number."""
    topic = str(Topic.telemetry(site, "meter"))
    start_ms = int(time.time() * 1000) - 2 * MESSAGES * 1000 - 60_000
    async with BusClient(site_broker, f"site-pub-{uuid.uuid4().hex[:8]}") as bus:
        await bus.wait_connected(10)
        for i in range(first, first + count):
            values = {p: float(i * len(POINTS) + k) for k, p in enumerate(POINTS)}
            await bus.publish(topic, encode_telemetry(start_ms + i * 1000, values, seq=i))
        await bus.flush(timeout=60)


async def wait_stored(
    db: Path, samples: int, limit_s: float, ingest: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + limit_s
    while (await asyncio.to_thread(stored, db))[0] < samples:
        assert ingest.poll() is None, "the central ingest exited"
        if time.monotonic() > deadline:
            pytest.fail(f"after {limit_s:.0f} s {stored(db)[0]} of {samples} samples are stored")
        await asyncio.sleep(0.1)


async def watch_link(site_broker: BrokerAddress, site: str, states: list[bytes]) -> None:
    """Records the bridge's state as the site broker announces it (1 up, 0 down)."""
    async with BusClient(site_broker, f"site-watch-{uuid.uuid4().hex[:8]}") as bus:
        await bus.subscribe(f"gridpilot/v1/{site}/bridge/central/state")
        async for message in bus.messages():
            states.append(message.payload)


async def wait_link(states: list[bytes], expected: bytes, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not states or states[-1] != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"the bridge did not report {expected!r} within {limit_s:.0f} s: {states}")
        await asyncio.sleep(0.05)


async def start_ingest(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        ingest = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "gridpilot", "-v", "run", "ingest", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while b"running for site" not in log.read_bytes():
        if ingest.poll() is not None or time.monotonic() > deadline:
            ingest.kill()
            pytest.fail(f"ingest did not start; its log:\n{log.read_text()}")
        await asyncio.sleep(0.05)
    return ingest


@pytest.mark.timeout(180)
async def test_site_telemetry_reaches_central_storage_across_a_bridge_outage(
    tmp_path: Path,
) -> None:
    site = f"br-{uuid.uuid4().hex[:6]}"
    (tmp_path / "central").mkdir()
    (tmp_path / "site").mkdir()
    central = MosquittoServer(tmp_path / "central", persistent=True)
    await asyncio.to_thread(central.start)
    site_broker = SiteBroker(tmp_path / "site", site, central.port)
    ingest: subprocess.Popen[bytes] | None = None
    states: list[bytes] = []
    watcher: asyncio.Task[None] | None = None
    db = tmp_path / "data" / "site.db"
    total = 2 * MESSAGES * len(POINTS)
    try:
        await asyncio.to_thread(site_broker.start)
        watcher = asyncio.create_task(watch_link(site_broker.address, site, states))
        config = write_site(tmp_path, site, central.address)
        ingest = await start_ingest(config, tmp_path / "ingest.log")
        await wait_link(states, b"1", 30)

        # Link up: published at the site, stored through the central broker's ingest.
        await publish(site_broker.address, site, 0, MESSAGES)
        await wait_stored(db, MESSAGES * len(POINTS), 60, ingest)

        # Link down: the central broker goes away (saving its sessions); the site goes on
        # and queues what it publishes meanwhile for the bridge.
        await asyncio.to_thread(central.stop)
        await wait_link(states, b"0", 30)
        await publish(site_broker.address, site, MESSAGES, MESSAGES)
        assert stored(db)[0] == MESSAGES * len(POINTS)  # nothing could have passed

        # Link back (same port): the bridge and ingest reconnect on their own. The ingest
        # is held back until the bridge has forwarded the site's queue, so those messages
        # wait in the ingest's persistent session at the central broker (the order a real
        # outage may take; the other order is the easy one).
        ingest.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(central.start)
            await wait_link(states, b"1", 60)
            await asyncio.sleep(1.0)
            assert stored(db)[0] == MESSAGES * len(POINTS)
        finally:
            ingest.send_signal(signal.SIGCONT)
        try:
            await wait_stored(db, total, 90, ingest)
        except BaseException:
            logs = [tmp_path / "ingest.log", site_broker.log_path, central.log_path]
            print(f"bridge states {states}")
            for log in logs:
                print(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
            raise
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if ingest is not None and ingest.poll() is None:
            ingest.send_signal(signal.SIGTERM)
            await asyncio.to_thread(ingest.wait, 30)
        await asyncio.to_thread(site_broker.stop)
        await asyncio.to_thread(central.stop)
    # Every sample of both phases once: none lost in the outage, none stored twice.
    assert stored(db) == (total, total)
