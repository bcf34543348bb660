"""The gateway's on-disk buffer in a running gateway: a full buffer drops the oldest
messages and says so (state, event, figures); an unreadable buffer file is replaced at
start with an alarm, and the gateway runs on."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.site import SimulatedSite
from tests.conftest import MosquittoServer
from tests.integration.test_gateway_sim import GATEWAY, gateway_config, is_state
from tests.integration.test_gateway_support import Observer, Record, observing

pytestmark = pytest.mark.integration


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(speed=1.0, tick_s=0.05) as running:
        yield running


@contextlib.asynccontextmanager
async def persistent_observer(broker: BrokerAddress, site: str) -> AsyncIterator[Observer]:
    """An observer whose session (and what arrives for it meanwhile) outlives a broker
    restart: the gateway may reconnect and publish before the observer subscribes again."""
    async with BusClient(broker, f"observer-{site}", clean_session=False) as client:
        await client.wait_connected(10)
        await client.subscribe(f"gridpilot/v1/{site}/#", qos=1)
        observer = Observer(client)
        task = asyncio.create_task(observer.run())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _with_buffer(config: GridPilotConfig, **buffer: object) -> GridPilotConfig:
    data = config.model_dump(mode="json")
    data["gateway"]["buffer"] = buffer
    return GridPilotConfig.model_validate(data)


def _is_event(record: Record, text: str) -> bool:
    return record.topic.endswith("/events") and text in record.json["message"]


async def test_a_full_buffer_drops_the_oldest_and_reports_it(
    site: SimulatedSite, private_mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """Broker stopped while the gateway polls with a 20-message buffer: the oldest unsent
    messages are dropped; once the broker is back, the alarm event, the gateway state's
    ``buffer.dropped`` and the figures agree, and every message taken is either delivered
    or counted as dropped."""
    site_id = f"buf-{uuid.uuid4().hex[:10]}"
    broker = private_mosquitto.address
    config = _with_buffer(gateway_config(site, site_id, interval_s=0.05), max_messages=20)
    async with (
        persistent_observer(broker, site_id) as observer,
        GatewayService(config, broker, buffer_path=tmp_path / "gw.buffer.db") as gateway,
    ):
        await observer.wait_for(lambda r: is_state(r, GATEWAY, "online"))
        await asyncio.to_thread(private_mosquitto.stop)
        stats = gateway.buffer_stats
        async with asyncio.timeout(20):
            while stats.dropped < 100:  # noqa: ASYNC110 -- the gateway's figures, polled
                await asyncio.sleep(0.05)
        assert stats.messages <= 20
        await asyncio.to_thread(private_mosquitto.start)
        alarm = await observer.wait_for(lambda r: _is_event(r, "gateway buffer full"), within=30)
        assert alarm.json["level"] == "alarm"
        state = await observer.wait_for(
            lambda r: is_state(r, GATEWAY, "online") and r.json["buffer"]["dropped"] > 0,
            within=30,
        )
        assert state.json["buffer"]["dropped"] >= 100
        async with asyncio.timeout(20):
            while stats.messages:  # noqa: ASYNC110 -- as above
                await asyncio.sleep(0.05)
        assert stats.dropped + stats.delivered == stats.committed, stats


async def test_an_unreadable_buffer_file_is_replaced_with_an_alarm(
    site: SimulatedSite, private_mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    site_id = f"buf-{uuid.uuid4().hex[:10]}"
    broker = private_mosquitto.address
    path = tmp_path / "gw.buffer.db"
    path.write_bytes(b"\x00garbage, not SQLite" * 500)
    async with (
        observing(broker, site_id, f"observer-{site_id}") as observer,
        GatewayService(gateway_config(site, site_id), broker, buffer_path=path),
    ):
        alarm = await observer.wait_for(lambda r: _is_event(r, "was unreadable"), within=10)
        assert alarm.json["level"] == "alarm"
        moved = [p for p in tmp_path.iterdir() if p.name.startswith("gw.buffer.db.corrupt-")]
        assert len(moved) == 1
        assert str(moved[0]) in alarm.json["message"]
        assert moved[0].read_bytes().startswith(b"\x00garbage")
        # And the gateway works: telemetry through the fresh buffer.
        await observer.wait_for(lambda r: r.kind == "telemetry", within=10)
