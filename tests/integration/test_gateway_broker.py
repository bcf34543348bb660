"""The gateway and its broker: re-announcing retained state after a broker restart, and the
last will when the gateway process dies without a goodbye."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.gateway.service import GatewayService
from gridpilot.model import now_ms, parse_timestamp_ms
from gridpilot.sim.site import SimulatedSite
from tests.conftest import MosquittoServer
from tests.integration.test_gateway_sim import GATEWAY, gateway_config, is_state
from tests.integration.test_gateway_support import Record, observing

pytestmark = pytest.mark.integration

RUN_GATEWAY = """
import asyncio, sys
from pathlib import Path
from gridpilot.bus.client import BrokerAddress
from gridpilot.config import GridPilotConfig
from gridpilot.gateway.service import GatewayService
from gridpilot.model import now_ms, parse_timestamp_ms

async def main() -> None:
    config = GridPilotConfig.model_validate_json(Path(sys.argv[1]).read_text())
    async with GatewayService(config, BrokerAddress("127.0.0.1", int(sys.argv[2]))):
        print("running", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(speed=1.0, tick_s=0.05) as running:
        yield running


@pytest.fixture
def site_id() -> str:
    return f"broker-{uuid.uuid4().hex[:12]}"


async def test_state_is_re_announced_after_broker_restart(
    site: SimulatedSite, site_id: str, private_mosquitto: MosquittoServer
) -> None:
    broker = private_mosquitto.address
    async with (
        observing(broker, site_id, f"observer-{site_id}") as observer,
        GatewayService(gateway_config(site, site_id), broker),
    ):
        await observer.wait_for(lambda r: is_state(r, GATEWAY, "online"))
        await observer.wait_for(lambda r: is_state(r, "battery", "online"))
        restarted_ms = now_ms()
        await asyncio.to_thread(private_mosquitto.restart)

        def after_restart(record: Record) -> bool:
            return parse_timestamp_ms(record.json["ts"]) >= restarted_ms

        # States stamped after the restart (live, or the retained copy of one, depending
        # on who reconnected first): the gateway re-published them.
        gateway_state = await observer.wait_for(
            lambda r: is_state(r, GATEWAY, "online") and after_restart(r), within=20
        )
        assert gateway_state.json["devices"] == sorted(site.devices)
        await observer.wait_for(
            lambda r: is_state(r, "battery", "online") and after_restart(r), within=10
        )
        # Telemetry flows again.
        await observer.wait_for(
            lambda r: r.device == "grid_meter" and r.kind == "telemetry" and after_restart(r),
            within=10,
        )


async def test_last_will_marks_a_killed_gateway_offline(
    site: SimulatedSite, site_id: str, mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    config_path = tmp_path / "site.json"
    config_path.write_text(gateway_config(site, site_id).model_dump_json())
    async with observing(mosquitto, site_id, f"observer-{site_id}") as observer:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUN_GATEWAY,
            str(config_path),
            str(mosquitto.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await observer.wait_for(lambda r: is_state(r, GATEWAY, "online"), within=20)
            await observer.wait_for(lambda r: r.device == "battery" and r.kind == "telemetry")
        finally:
            process.kill()  # SIGKILL: no DISCONNECT, the broker publishes the will
            _, stderr = await process.communicate()
        will = await observer.wait_for(lambda r: is_state(r, GATEWAY, "offline"), within=10)
        assert "last will" in will.json["reason"], stderr.decode()
        assert will.json["devices"] == sorted(site.devices)
    async with observing(mosquitto, site_id, f"latecomer-{site_id}") as latecomer:
        retained = await latecomer.wait_for(lambda r: r.device == GATEWAY and r.kind == "state")
        assert retained.retain is True
        assert retained.json["status"] == "offline"
