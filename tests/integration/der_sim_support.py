"""The set-up the IEEE 1547 simulator tests share: a simulated site with one SunSpec
inverter at noon, polled by a real gateway and steered by a real controller service over
Mosquitto, and a way to wait for the inverter's telemetry to settle."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gridpilot.bus.client import BrokerAddress
from gridpilot.config import GridPilotConfig, load_config
from gridpilot.control.factory import build_controllers
from gridpilot.control.service import ControllerService
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.building import BuildingParams
from gridpilot.sim.site import SimulatedSite
from gridpilot.sim.sunspec_devices import SunSpecPlan
from tests.integration.test_gateway_support import Observer, Record

SPEED = 10.0
"""Simulated seconds per wall second: a 5 s response settles in ~1.5 s of wall time."""
NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
"""~80 kW of PV on the 100 kW inverter: headroom for reactive power and for curtailment."""
INVERTER = "sunspec_inverter"


@contextlib.asynccontextmanager
async def sunspec_loop(
    plan: SunSpecPlan,
    broker: BrokerAddress,
    site_id: str,
    tmp_path: Path,
    *,
    control: dict[str, Any],
    grid: BuildingParams,
) -> AsyncIterator[SimulatedSite]:
    """The simulated site on ``grid``, its inverter built from ``plan`` and polled every
    0.2 s, and the controllers of ``control`` cycling every 0.1 s, on the site's clock."""
    async with SimulatedSite(
        speed=SPEED, start=NOON, tick_s=0.05, sunspec=True, sunspec_plans=(plan,), params=grid
    ) as site:
        devices = [d for d in site.site_config(site_id) if d["id"] == INVERTER]
        for device in devices:
            device.update(poll_interval=0.2, timeout=0.2, retries=0)
        config = GridPilotConfig.model_validate(
            {
                "site": {"id": site_id},
                "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
                "gateway": {"id": "gw"},
                "control": {"cycle": 0.1, "journal": None, "command_ttl": 5.0, **control},
                "devices": devices,
            }
        )
        async with (
            GatewayService(config, broker, clock=lambda: int(site.now.timestamp() * 1000)),
            ControllerService(
                config, broker, build_controllers(config), base_dir=tmp_path,
                clock=lambda: site.now,
            ),
        ):  # fmt: skip
            yield site


def inverter_telemetry(record: Record) -> dict[str, float] | None:
    """The inverter's telemetry, as the gateway read it."""
    if record.device != INVERTER or record.kind != "telemetry":
        return None
    values: dict[str, float] = record.json["values"]
    return values


async def settled(
    observer: Observer,
    predicate: Callable[[dict[str, float]], bool],
    *,
    within: float = 60.0,
    in_a_row: int = 3,
) -> dict[str, float]:
    """The inverter's telemetry once ``predicate`` has held for ``in_a_row`` readings."""
    count = 0
    after = len(observer.records) - 1
    async with asyncio.timeout(within):
        while True:
            record = await observer.wait_for(
                lambda r: inverter_telemetry(r) is not None, within=within, after=after
            )
            after = record.index
            values = inverter_telemetry(record)
            assert values is not None
            count = count + 1 if predicate(values) else 0
            if count >= in_a_row:
                return values


async def scan_of_gridpilot_sim(tmp_path: Path, options: list[str], says: str) -> dict[int, Any]:
    """Run ``gridpilot sim --sunspec OPTIONS``, check it printed the line ``says``, scan its
    SunSpec inverter over Modbus TCP with ``gridpilot devices scan`` and return the scan's
    models by id; the simulator must then stop cleanly on SIGTERM."""
    site_file = tmp_path / "sim.yaml"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "sim", "--base-port", "0", "--sunspec", *options,
        "--write-config", str(site_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert sim.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any("site file written" in line for line in lines):
                line = (await sim.stdout.readline()).decode()
                assert line, "sim exited early"
                lines.append(line)
        assert f"{says}\n" in lines
        (inverter,) = [d for d in load_config(site_file).devices if d.id == INVERTER]
        scan = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridpilot", "devices", "scan",
            f"tcp://127.0.0.1:{inverter.port}", "--units", "1", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await scan.communicate()
        assert scan.returncode == 0, err.decode()
        (unit,) = orjson.loads(out)["units"]
    finally:
        sim.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(sim.communicate(), timeout=15)
    assert sim.returncode == 0, err.decode()
    return {m["id"]: m for m in unit["models"]}
