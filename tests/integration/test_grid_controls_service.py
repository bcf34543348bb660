"""The controller service and the utility's controls on a real Mosquitto: the retained
``grid/controls`` message reaches the grid-operator controller, a malformed one is refused
with an event while the last good one is kept, a stale one is reported, a cleared one is
dropped; ``gridpilot control status`` shows them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import load_config
from gridpilot.control.factory import build_controllers
from gridpilot.control.grid_controls import ControlMode, GridControls, encode_grid_controls
from gridpilot.control.service import ControllerService
from gridpilot.model import Topic

pytestmark = pytest.mark.integration


async def until(check: Callable[[], Any], within: float = 10.0) -> Any:
    """``check()`` once it is truthy, polling; fails after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def message(valid_for: timedelta, **modes: ControlMode) -> bytes:
    now = datetime.now(UTC)
    return encode_grid_controls(GridControls(now, "ieee2030_5", now + valid_for, modes))


async def test_the_controller_keeps_the_last_good_controls_and_says_why(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site = f"utility-svc-{uuid.uuid4().hex[:8]}"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": {"id": site},
                "broker": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}"},
                "control": {
                    "journal": None,
                    "cycle": 0.1,
                    # no PV, no battery: the modes are received and reported, not applied
                    "grid_operator": {"pv_power": None, "pv_limit": None},
                },
            }
        )
    )
    config = load_config(site_file)
    topic = str(Topic.grid_controls(site))
    limit = ControlMode("opModExpLimW", 5000.0, "event", "W", "5A7E0C1D2B3F", 1)
    events: list[dict[str, Any]] = []
    async with (
        BusClient(mosquitto, f"utility-svc-test-{uuid.uuid4().hex[:8]}") as bus,
        ControllerService(config, mosquitto, build_controllers(config), base_dir=tmp_path) as svc,
    ):
        await bus.subscribe(str(Topic.events(site)), qos=1)

        async def collect() -> None:
            async for m in bus.messages():
                events.append(orjson.loads(m.payload))

        collector = asyncio.create_task(collect())
        try:
            await bus.publish(topic, message(timedelta(minutes=5), opModExpLimW=limit), retain=True)
            await until(lambda: (svc.status()["grid_controls"] or {}).get("modes"))
            assert svc.status()["grid_controls"]["modes"] == [limit.describe()]
            await until(lambda: [e for e in events if "not applied" in e["message"]])
            (reported,) = [e for e in events if "not applied" in e["message"]]
            assert reported["source"] == "controller/grid_operator"
            assert "opModExpLimW (no pv_limit configured)" in reported["message"]

            # malformed: refused with the reason, the last good message kept
            await bus.publish(topic, b'{"ts": "2026-11-27T10:00:00Z", "controls": []}')
            await until(lambda: svc.status()["grid_controls"]["refused"] == 1)
            status = svc.status()["grid_controls"]
            assert status["modes"] == [limit.describe()]
            assert "'valid_until' must be RFC 3339" in status["last_refusal"]
            refusal = await until(lambda: [e for e in events if "refused" in e["message"]])
            assert refusal[0]["kind"] == "warning"
            assert "keeping the last good one of" in refusal[0]["message"]

            code, out, err = await run_cli("control", "status", "-c", str(site_file))
            assert code == 0, err
            assert f"  utility controls (valid until {status['valid_until']}): " in out
            assert limit.describe() in out
            assert "  utility messages refused: 1 (last: 'valid_until' must be" in out

            # stale: past valid_until, the controller falls back to the defaults (none here)
            await bus.publish(topic, message(timedelta(0), opModExpLimW=limit), retain=True)
            stale = await until(
                lambda: [e for e in events if "stale" in e["message"] and "grid_operator" in
                         e["source"]]
            )  # fmt: skip
            assert "keeping only the default control's modes" in stale[0]["message"]
            assert svc.status()["grid_controls"]["stale"] is True
            code, out, _ = await run_cli("control", "status", "-c", str(site_file))
            assert "  utility controls STALE (valid until" in out

            # cleared: nothing is known any more
            await bus.publish(topic, b"", retain=True)
            await until(lambda: svc.status()["grid_controls"]["modes"] == [])
            await until(lambda: [e for e in events if "cleared" in e["message"]])
        finally:
            collector.cancel()
            await bus.publish(topic, b"", retain=True)
