"""Poll classes and per-device concurrency against a real simulated Modbus TCP device and a
private Mosquitto: the reads are counted where they arrive, on the simulator's side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.config import GridPilotConfig
from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.gateway.service import GatewayService
from gridpilot.model import DataType, Table
from gridpilot.sim.devices import DeviceMap, SimPoint
from gridpilot.sim.image import RegisterImage
from gridpilot.sim.server import DeviceServer
from tests.integration.test_gateway_support import Observer, observing

pytestmark = pytest.mark.integration

INTERVAL_S = 0.5
FAST_DIVISOR = 5  # fast: every 100 ms
SLOW_MULTIPLE = 4  # slow: every 2 s
# Far apart (beyond max_gap): each class is a read of its own, so each address's reads
# count its class' polls.
ADDRESSES = {"fast": 0, "normal": 40, "slow": 80}


def sim_device() -> DeviceMap:
    points = tuple(
        SimPoint(RegisterSpec(f"{cls}_power_w", Table.HOLDING, address, DataType.UINT16), (0, 1e5))
        for cls, address in ADDRESSES.items()
    )
    return DeviceMap("meter", "meter", 1, INTERVAL_S, points)


def site_config(site_id: str, port: int, **device: Any) -> GridPilotConfig:
    points = [
        {
            "point": f"{cls}_power_w",
            "address": address,
            "poll_class": cls,
            "valid_range": [0, 1e5],
        }
        for cls, address in ADDRESSES.items()
    ]
    entry: dict[str, Any] = {
        "id": "meter",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval": INTERVAL_S,
        "timeout": 0.2,
        "retries": 0,
        "points": points,
    }
    entry.update(device)
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site_id},
            "gateway": {
                "id": "gw",
                "poll_classes": {"fast_divisor": FAST_DIVISOR, "slow_multiple": SLOW_MULTIPLE},
            },
            "devices": [entry],
        }
    )


@pytest.fixture
async def server() -> AsyncIterator[DeviceServer]:
    image = RegisterImage(sim_device())
    image.update({f"{cls}_power_w": 100.0 * (i + 1) for i, cls in enumerate(ADDRESSES)})
    running = DeviceServer(image, lambda _write: None)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def site_id() -> str:
    return f"site-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


def reads(server: DeviceServer) -> dict[str, int]:
    return {cls: server.reads_covering(Table.HOLDING, a) for cls, a in ADDRESSES.items()}


async def test_fast_points_are_read_more_often_than_normal_and_slow_ones(
    server: DeviceServer, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> None:
    config = site_config(site_id, server.port, max_gap=8)
    async with GatewayService(config, mosquitto) as gateway:
        # Until the third slow poll (t = 0, 2, 4 s): about 4 s of polling.
        async with asyncio.timeout(30):
            while reads(server)["slow"] < 3:  # noqa: ASYNC110 -- the simulator counts, no event
                await asyncio.sleep(0.05)
        counted = reads(server)
        health = gateway.health("meter")
    # Every read the simulator served is one of the three classes' blocks, each alone.
    assert set(server.reads) == {(Table.HOLDING, a, 1) for a in ADDRESSES.values()}
    # About 2 s x 3 slow polls: 8-9 normal polls and ~40 fast ones. A loaded machine may
    # skip fast ticks, so the check is on the order, with wide margins.
    assert counted["slow"] == 3
    assert counted["normal"] >= 2 * counted["slow"], counted
    assert counted["fast"] >= 2 * counted["normal"], counted
    # Each poll answered; polls are ticks (fast ones included), each with its jitter.
    assert health.counters.polls_failed == 0
    assert health.jitter.count == health.counters.polls
    # The last state (published on stop) carries the jitter of every poll.
    state = await observer.wait_for(
        lambda r: r.device == "meter" and r.kind == "state" and "reason" in r.json
    )
    jitter = state.json["poll_jitter"]
    assert jitter["count"] == health.jitter.count
    assert jitter["buckets"]["+Inf"] == jitter["count"]
    assert jitter["p50_s"] is not None
    assert 0 <= jitter["p50_s"] <= jitter["p99_s"] <= jitter["max_s"]
    # Telemetry carries the classes due at each tick: slow values only in some messages.
    telemetry = [r.json["values"] for r in observer.of("meter", "telemetry")]
    with_slow = [v for v in telemetry if "slow_power_w" in v]
    assert 0 < len(with_slow) < len(telemetry)
    assert all("fast_power_w" in v for v in telemetry)


async def test_max_outstanding_reads_one_polls_blocks_side_by_side(
    server: DeviceServer, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> None:
    # Every point normal, not merged (max_gap 0): three reads per poll, on two connections.
    config = site_config(site_id, server.port, max_gap=0, max_outstanding=2)
    device = config.devices[0]
    normal = [p.model_copy(update={"poll_class": "normal"}) for p in device.points]
    config = config.model_copy(
        update={"devices": (device.model_copy(update={"points": tuple(normal)}),)}
    )
    async with GatewayService(config, mosquitto):
        first = await observer.wait_for(
            lambda r: r.device == "meter" and r.kind == "telemetry", within=10
        )
        async with asyncio.timeout(10):
            while server.client_count < 2:  # noqa: ASYNC110 -- no event for a connection
                await asyncio.sleep(0.05)
        clients = server.client_count
        later = await observer.wait_for(
            lambda r: r.device == "meter" and r.kind == "telemetry", after=first.index + 2
        )
    assert clients == 2
    assert (
        set(first.json["values"])
        == set(later.json["values"])
        == {f"{cls}_power_w" for cls in ADDRESSES}
    )
    assert later.json["values"]["slow_power_w"] == 300.0
    # Three reads per poll, whichever connection carried them (the poll under way at the
    # stop may have been cut short).
    counted = reads(server)
    assert min(counted.values()) >= 3
    assert max(counted.values()) - min(counted.values()) <= 1
