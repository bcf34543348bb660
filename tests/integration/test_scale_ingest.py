"""Two ``gridpilot run ingest`` processes on one shared subscription store a stream once.

Each process subscribes to ``$share/gridpilot-ingest/gridpilot/v1/{site}/+/telemetry``
(``ingest.shared_subscription: on``) with its own ``--instance``, so Mosquitto hands every
message to one of them. Both write into one SQLite database (WAL; writers take turns
through ``BEGIN IMMEDIATE`` and the busy timeout). A publisher sends N numbered samples
(10 per message); the test then finds every number stored exactly once and reads each
process's share from the line it logs when it stops.

CI runs 50,000 samples; the issue's 1M-sample run is the same test with
``GRIDPILOT_SCALE_SAMPLES=1000000 .venv/bin/pytest -q tests/integration/test_scale_ingest.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
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

pytestmark = pytest.mark.integration

POINTS = [f"p{i}_power_w" for i in range(10)]
SAMPLES = int(os.environ.get("GRIDPILOT_SCALE_SAMPLES", "50000"))
STOPPED = re.compile(
    r"ingest (\S+) stopped: (\d+) messages, (\d+) samples written, (\d+) duplicates"
)


def write_site(directory: Path, site: str, broker: BrokerAddress) -> Path:
    config = {
        "site": {"id": site},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "storage": {"path": "data/site.db", "batch_size": 2000, "flush_interval": 0.05},
        "ingest": {"shared_subscription": "on"},
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


def start_ingest(config: Path, instance: str, log: Path) -> subprocess.Popen[bytes]:
    """``gridpilot -v run ingest --instance N`` with its log in a file (never a pipe that
    nobody drains); returns once it has subscribed (its "running" line)."""
    with log.open("wb") as out:
        command = [sys.executable, "-m", "gridpilot", "-v", "run", "ingest", str(config)]
        process = subprocess.Popen(
            [*command, "--instance", instance],
            stdout=subprocess.DEVNULL,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while b"running for site" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"ingest {instance} did not start; its log:\n{log.read_text()}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def stored(db: Path) -> tuple[int, int, int, float, float]:
    """Rows, distinct sample numbers, rows of other devices, min and max number."""
    if not db.exists():
        return (0, 0, 0, 0.0, 0.0)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            """SELECT count(*), count(DISTINCT value),
                      sum(device != 'meter'), coalesce(min(value), 0), coalesce(max(value), 0)
               FROM samples JOIN series ON id = series_id"""
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2] or 0), float(row[3]), float(row[4]))
    except sqlite3.OperationalError:  # the schema is not created yet
        return (0, 0, 0, 0.0, 0.0)
    finally:
        conn.close()


async def publish_numbered(broker: BrokerAddress, site: str, samples: int, start_ms: int) -> None:
    """Message i carries samples 10 i .. 10 i + 9 (the value is the sample's number), at
    ``start_ms + i`` seconds, QoS 1."""
    topic = str(Topic.telemetry(site, "meter"))
    async with BusClient(broker, f"scale-pub-{uuid.uuid4().hex[:8]}") as bus:
        await bus.wait_connected(10)
        for i in range(samples // len(POINTS)):
            values = {p: float(i * len(POINTS) + k) for k, p in enumerate(POINTS)}
            await bus.publish(topic, encode_telemetry(start_ms + i * 1000, values, seq=i))
        await bus.flush(timeout=120)


@pytest.mark.timeout(600 if SAMPLES > 100_000 else 180)
def test_two_ingest_processes_on_a_shared_subscription_store_every_sample_once(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    assert SAMPLES % len(POINTS) == 0
    site = f"scale-{uuid.uuid4().hex[:6]}"
    config = write_site(tmp_path, site, mosquitto)
    db = tmp_path / "data" / "site.db"
    logs = [tmp_path / "ingest-0.log", tmp_path / "ingest-1.log"]
    # One after the other: the first creates the database's schema alone.
    processes = [start_ingest(config, "0", logs[0])]
    try:
        processes.append(start_ingest(config, "1", logs[1]))
        start_ms = int(time.time() * 1000) - (SAMPLES // len(POINTS) + 60) * 1000
        began = time.monotonic()
        asyncio.run(publish_numbered(mosquitto, site, SAMPLES, start_ms))
        published_s = time.monotonic() - began
        deadline = time.monotonic() + max(60.0, SAMPLES / 2_000)
        while stored(db)[0] < SAMPLES and time.monotonic() < deadline:
            for process, log in zip(processes, logs, strict=True):
                assert process.poll() is None, f"ingest exited early:\n{log.read_text()}"
            time.sleep(0.2)
        stored_s = time.monotonic() - began
    finally:
        for process in processes:
            stop(process)
    rows, distinct, others, lowest, highest = stored(db)
    assert (rows, distinct, others) == (SAMPLES, SAMPLES, 0), (
        f"{rows} rows, {distinct} distinct numbers of {SAMPLES}, {others} foreign rows"
    )
    assert (lowest, highest) == (0.0, float(SAMPLES - 1))

    shares = {}
    for log in logs:
        text = log.read_text()
        found = STOPPED.search(text)
        assert found is not None, f"no 'stopped' line in the ingest log:\n{text[-3000:]}"
        client, messages, written, duplicates = found.groups()
        shares[client] = (int(messages), int(written), int(duplicates))
    assert len(shares) == 2, shares  # two distinct MQTT client ids
    # Each process took part of the stream; together they wrote every sample once, and
    # neither received a message the other had (a duplicate would show here).
    assert all(written > 0 for _, written, _ in shares.values()), shares
    assert sum(written for _, written, _ in shares.values()) == SAMPLES, shares
    assert sum(messages for messages, _, _ in shares.values()) == SAMPLES // len(POINTS)
    assert all(duplicates == 0 for _, _, duplicates in shares.values()), shares
    print(
        f"{SAMPLES} samples: published in {published_s:.1f} s, all stored after "
        f"{stored_s:.1f} s; shares {shares}"
    )
