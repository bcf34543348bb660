"""The whole slice as a user runs it: `gridpilot run all` against the simulated building and
a real Mosquitto; every configured point must reach SQLite with physically plausible values,
and SIGTERM must stop the process cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import load_config
from gridpilot.model import DataType, SeriesKey, now_ms
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage.sqlite import SqliteStorage

SITE = "e2e"
POLL_S = 0.5


async def _wait_for_all_points(
    db: Path, expected: set[SeriesKey], timeout_s: float
) -> set[SeriesKey]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    seen: set[SeriesKey] = set()
    while asyncio.get_running_loop().time() < deadline:
        if db.exists():
            async with SqliteStorage(db) as storage:
                seen = {v.series for v in await storage.latest(SITE)}
            if expected <= seen:
                return seen
        await asyncio.sleep(0.5)
    return seen


async def test_run_all_stores_every_point_with_plausible_values(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    async with SimulatedSite(base_port=0, speed=10.0) as site:
        devices = site.site_config(SITE)
        for device in devices:
            device["poll_interval"] = POLL_S
            device["timeout"] = 0.2
        site_file = tmp_path / "site.yaml"
        site_file.write_text(
            yaml.safe_dump(
                {
                    "site": {"id": SITE},
                    "broker": {"url": f"mqtt://127.0.0.1:{mosquitto.port}"},
                    "storage": {"path": "e2e.db", "flush_interval": 0.1},
                    "devices": devices,
                }
            )
        )
        config = load_config(site_file)
        expected = {
            SeriesKey(SITE, d.id, p.point)
            for d in config.devices
            for p in d.points
            if p.type is not DataType.STRING
        }
        started_ms = now_ms()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridpilot", "run", "all", str(site_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            seen = await _wait_for_all_points(tmp_path / "e2e.db", expected, timeout_s=30)
            assert expected - seen == set(), f"never stored: {sorted(map(str, expected - seen))}"
            await asyncio.sleep(4)  # a few more polls to judge how values evolve
        finally:
            process.send_signal(signal.SIGTERM)
            _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
        assert process.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr, stderr.decode()

    async with SqliteStorage(tmp_path / "e2e.db") as storage:
        end_ms = now_ms() + 1
        for series in sorted(expected):
            rows = await storage.history(series, started_ms, end_ms)
            values = [r.value for r in rows]
            assert len(values) >= 3, f"{series}: only {len(values)} samples"
            if series.point.startswith("energy_") and series.point.endswith("_wh"):
                assert values == sorted(values), f"{series}: energy counter decreased"
            if series.point == "soc_pct":
                assert all(0 <= v <= 100 for v in values), f"{series}: {values}"
            if series.point.startswith("voltage_l"):
                assert all(200 <= v <= 260 for v in values), f"{series}: {values}"
            if series.point == "frequency_hz" and series.device == "grid_meter":
                assert all(49.5 <= v <= 50.5 for v in values), f"{series}: {values}"
            if series.point.endswith("_degc") and series.device.startswith("hvac_zone"):
                assert all(10 <= v <= 40 for v in values), f"{series}: {values}"

    # The gateway left retained offline states behind when it stopped.
    async with BusClient(mosquitto, "e2e-check") as bus:
        await bus.subscribe(f"gridpilot/v1/{SITE}/+/state")
        states: dict[str, str] = {}
        async with asyncio.timeout(5):
            async for message in bus.messages():
                device = message.topic.split("/")[3]
                states[device] = orjson.loads(message.payload)["status"]
                if len(states) == len(config.devices) + 1:
                    break
    assert set(states.values()) == {"offline"}, states
