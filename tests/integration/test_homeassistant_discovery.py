"""Home Assistant discovery on a real Mosquitto: retained configs at start, all of them again
when Home Assistant says ``online``, stale GridPilot entities removed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gridpilot.app import Service, run_services
from gridpilot.bus.client import BrokerAddress, BusClient, Message
from gridpilot.bus.homeassistant import HomeAssistantDiscovery
from gridpilot.config.models import GridPilotConfig
from gridpilot.sim.site import SimulatedSite
from tests.conftest import find_free_port

pytestmark = pytest.mark.integration


def config(prefix: str) -> GridPilotConfig:
    return GridPilotConfig.model_validate(
        {
            "site": {"id": "demo"},
            "devices": SimulatedSite(base_port=25_000).site_config("demo"),
            "homeassistant": {"enabled": True, "discovery_prefix": prefix},
        }
    )


async def eventually(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 -- the collector has no event to wait on
            await asyncio.sleep(0.02)


async def test_configs_are_retained_and_republished_when_home_assistant_is_online(
    mosquitto: BrokerAddress,
) -> None:
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    stale = f"{prefix}/sensor/gridpilot_demo_old_meter_active_power_w/config"
    received: list[Message] = []
    async with BusClient(mosquitto, f"ha-{uuid.uuid4().hex[:8]}") as home_assistant:
        await home_assistant.wait_connected(5)
        # An entity of a point that has since left the site file.
        await home_assistant.publish(stale, b'{"state_topic": "x"}', retain=True)
        async with HomeAssistantDiscovery(config(prefix), mosquitto) as discovery:
            expected = {c.topic: orjson.loads(c.encode()) for c in discovery.configs}
            assert len(expected) > 90

            # Home Assistant starting later: the broker hands it every retained config.
            await home_assistant.subscribe(f"{prefix}/sensor/+/config")

            async def collect() -> None:
                async for message in home_assistant.messages():
                    received.append(message)

            task = asyncio.create_task(collect())
            try:
                # (The stale entity may come too, before GridPilot has removed it.)
                await eventually(
                    lambda: len({m.topic for m in received if m.topic in expected}) == len(expected)
                )
                retained = {
                    m.topic: orjson.loads(m.payload) for m in received if m.topic in expected
                }
                assert retained == expected
                assert all(m.retain for m in received if m.topic in expected)
                await eventually(lambda: discovery.removed == 1)

                # Home Assistant restarts: its birth message on <prefix>/status.
                before = len(received)
                await home_assistant.publish(f"{prefix}/status", b"online")
                await eventually(
                    lambda: sum(m.topic in expected for m in received[before:]) >= len(expected)
                )
                again = {
                    m.topic: orjson.loads(m.payload)
                    for m in received[before:]
                    if m.topic in expected
                }
                assert again == expected
                assert discovery.rounds == 2

                # "offline" (its last will) publishes nothing.
                await home_assistant.publish(f"{prefix}/status", b"offline")
                await asyncio.sleep(0.3)
                assert discovery.rounds == 2
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        # The stale entity's retained config is gone.
        async with BusClient(mosquitto, f"check-{uuid.uuid4().hex[:8]}") as check:
            await check.wait_connected(5)
            late: list[Message] = []
            await check.subscribe(stale)

            async def collect_late() -> None:
                async for message in check.messages():
                    late.append(message)

            task = asyncio.create_task(collect_late())
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert late == []


async def test_run_gateway_publishes_discovery_when_enabled(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    """``homeassistant: {enabled: true}`` in a site file: ``gridpilot run gateway`` publishes."""
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    site = GridPilotConfig.model_validate(
        {
            "site": {"id": "demo"},
            "broker": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}"},
            "devices": SimulatedSite(base_port=find_free_port()).site_config("demo")[:1],
            "homeassistant": {"enabled": True, "discovery_prefix": prefix},
        }
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    runner = asyncio.create_task(
        run_services(site, tmp_path, [Service.GATEWAY], stop, lambda _: ready.set())
    )
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        topics: set[str] = set()
        async with BusClient(mosquitto, f"ha-{uuid.uuid4().hex[:8]}") as home_assistant:
            await home_assistant.wait_connected(5)
            await home_assistant.subscribe(f"{prefix}/sensor/+/config")

            async def collect() -> None:
                async for message in home_assistant.messages():
                    topics.add(message.topic)

            task = asyncio.create_task(collect())
            try:
                await eventually(lambda: len(topics) == len(site.devices[0].points))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        stop.set()
        await runner
