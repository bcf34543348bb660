"""`gridpilot tail` and `gridpilot sim` as a user runs them (subprocesses, real broker)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import load_config

pytestmark = pytest.mark.integration


async def test_tail_prints_topic_and_payload(mosquitto: BrokerAddress) -> None:
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "tail", "gridpilot/v1/t/+/telemetry",
        "--url", f"mqtt://127.0.0.1:{mosquitto.port}", "--count", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with BusClient(mosquitto, "tail-test-pub") as pub:
        await pub.wait_connected(5)
        async with asyncio.timeout(20):
            # Publish until tail (which needs a moment to start) has seen two messages.
            while tail.returncode is None:
                await pub.publish("gridpilot/v1/t/m/telemetry", b'{"values": {}}')
                await pub.publish("gridpilot/v1/t/m/state", b"not for tail")
                try:
                    await asyncio.wait_for(tail.wait(), timeout=0.2)
                except TimeoutError:
                    continue
    out, err = await tail.communicate()
    assert tail.returncode == 0, err.decode()
    assert out.decode().splitlines() == ['gridpilot/v1/t/m/telemetry {"values": {}}'] * 2


async def test_sim_serves_devices_and_writes_a_valid_site_file(tmp_path: Path) -> None:
    site_file = tmp_path / "sim.yaml"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "sim", "--base-port", "0",
        "--write-config", str(site_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert sim.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while not any("site file written" in line for line in lines):
            line = (await sim.stdout.readline()).decode()
            assert line, "sim exited early"
            lines.append(line)
    config = load_config(site_file)
    for device in config.devices:
        assert device.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", device.port)
        writer.close()
        await writer.wait_closed()
        del reader
    sim.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(sim.communicate(), timeout=15)
    assert sim.returncode == 0, err.decode()
