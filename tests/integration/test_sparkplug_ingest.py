"""Sparkplug B ingest end to end: a third-party edge node (pysparkplug, its own process and
virtual environment) -> real Mosquitto -> IngestService -> SQLite, device states and
rebirth requests on the broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gridpilot.api.service import ApiService
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import DeviceStatus, Telemetry, decode_state, decode_telemetry
from gridpilot.config.models import DeviceConfig, GridPilotConfig, StorageConfig
from gridpilot.ingest.service import IngestService
from gridpilot.ingest.sparkplug import SparkplugIngest
from gridpilot.model import SeriesKey, Topic, now_ms
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from tests.sparkplug_edge import EdgeNodeProcess, edge_node

pytestmark = pytest.mark.integration

EDGE = "edge-1"
DEVICE = "Inverter-7"


def config(site: str, group: str, **sparkplug: Any) -> GridPilotConfig:
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site},
            "storage": {"flush_interval": "PT0.05S"},
            "sparkplug": {
                "group": group,
                "rebirth_interval": "PT1S",
                **sparkplug,
                "devices": [
                    {"edge_node": EDGE, "id": "edge1"},
                    {
                        "edge_node": EDGE,
                        "device": DEVICE,
                        "id": "pv_inverter",
                        "points": {"Grid/Frequency": "grid_frequency_hz"},
                    },
                ],
            },
        }
    )


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(StorageConfig(path=tmp_path / "spb.db"), tmp_path) as opened:
        yield opened


async def eventually(condition: Callable[[], Any], limit_s: float = 30.0) -> None:
    async with asyncio.timeout(limit_s):
        while not await condition():  # noqa: ASYNC110 -- storage has no event to wait on
            await asyncio.sleep(0.05)


async def values(storage: Storage, site: str, device: str, point: str) -> list[float]:
    now = now_ms()
    rows = await storage.history(SeriesKey(site, device, point), now - 3_600_000, now + 60_000)
    return [row.value for row in rows]


@asynccontextmanager
async def states(broker: BrokerAddress, site: str) -> AsyncIterator[DeviceStateCache]:
    """The retained device states, as the API's cache keeps them."""
    cache = DeviceStateCache(site, ["edge1", "pv_inverter"], "gateway", polled=[])
    async with BusClient(broker, f"states-{uuid.uuid4().hex[:8]}") as client:
        await client.wait_connected(5)
        await client.subscribe(cache.topic_filter)

        async def collect() -> None:
            async for message in client.messages():
                cache.apply(message.topic, message.payload)

        task = asyncio.create_task(collect())
        try:
            yield cache
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def status(cache: DeviceStateCache, device: str) -> str:
    """What the API shows for the device."""
    return str(cache.status(device))


@asynccontextmanager
async def running(
    mosquitto: BrokerAddress, storage: Storage, site: str | None = None, **sparkplug: Any
) -> AsyncIterator[tuple[str, IngestService, EdgeNodeProcess, DeviceStateCache]]:
    site = site or f"site-{uuid.uuid4().hex[:8]}"
    group = f"Plant {uuid.uuid4().hex[:6]}"
    async with (
        IngestService(config(site, group, **sparkplug), mosquitto, storage) as ingest,
        states(mosquitto, site) as cache,
        edge_node(mosquitto.host, mosquitto.port, group, EDGE, DEVICE) as node,
    ):
        yield site, ingest, node, cache


async def test_metrics_of_a_third_party_edge_node_are_stored_under_gridpilot_names(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    async with running(mosquitto, storage) as (site, ingest, node, cache):

        async def born() -> bool:
            return await values(storage, site, "pv_inverter", "inverter_active_power_w") == [4000.0]

        await eventually(born)
        # The births' values, under derived names (unit from the name, kW scaled to W), an
        # explicit mapping, a boolean as 0/1, a signed Int16; the node's own metric.
        assert await values(storage, site, "pv_inverter", "grid_frequency_hz") == [50.0]
        assert await values(storage, site, "pv_inverter", "breaker_closed_state") == [1.0]
        assert await values(storage, site, "pv_inverter", "heatsink_temperature_degc") == [-5.0]
        assert await values(storage, site, "edge1", "uptime_s") == [0.0]

        await node.send({"cmd": "ddata", "values": {"Inverter/Active Power [kW]": 4.25}})
        await node.send({"cmd": "ddata_alias", "alias": 1, "value": 5.5})  # by alias only
        await node.send({"cmd": "ndata", "values": {"Uptime [s]": 12}})

        async def data() -> bool:
            stored = await values(storage, site, "pv_inverter", "inverter_active_power_w")
            return stored[-2:] == [4250.0, 5500.0] and (
                await values(storage, site, "edge1", "uptime_s")
            )[-1:] == [12.0]

        await eventually(data)
        assert status(cache, "pv_inverter") == "online"
        assert status(cache, "edge1") == "online"
        sparkplug = ingest.sparkplug
        assert sparkplug is not None
        assert sparkplug.stats.rebirth_requests == 0
        assert sparkplug.stats.metrics_skipped >= 1  # the string "Firmware" is not a sample
        assert ingest.stats.messages_rejected == 0


async def test_a_skipped_sequence_number_asks_for_a_rebirth_and_data_waits_for_it(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    async with running(mosquitto, storage) as (site, ingest, node, _cache):
        point = ("pv_inverter", "inverter_active_power_w")

        async def born() -> bool:
            return await values(storage, site, *point) == [4000.0]

        await eventually(born)
        await node.send({"cmd": "skip_seq"})
        # Sent by alias alone, this value is not kept in pysparkplug's device state, so the
        # rebirth's DBIRTH cannot bring it back: it is stored only if the gap was missed.
        await node.send({"cmd": "ddata_alias", "alias": 1, "value": 7.75})
        ncmd = await node.expect("ncmd", timeout_s=10)
        assert ncmd["metrics"] == {"Node Control/Rebirth": True}
        await node.expect("done")  # the node reconnected: NBIRTH and DBIRTH again
        await node.send({"cmd": "ddata_alias", "alias": 1, "value": 8.5})

        async def resumed() -> bool:
            return (await values(storage, site, *point))[-1:] == [8500.0]

        await eventually(resumed)
        # The birth's 4 kW (the rebirth repeats it with the same timestamp: stored once),
        # then the data after the rebirth; 7.75 kW, sent after the gap, is not there.
        assert await values(storage, site, *point) == [4000.0, 8500.0]
        sparkplug = ingest.sparkplug
        assert sparkplug is not None
        assert sparkplug.stats.rebirth_requests == 1
        assert sparkplug.stats.ignored >= 1


async def test_ndeath_will_marks_the_node_and_its_devices_offline(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    async with running(mosquitto, storage) as (_site, ingest, node, cache):

        async def online() -> bool:
            return status(cache, "pv_inverter") == "online" and status(cache, "edge1") == "online"

        await eventually(online)
        node.kill()  # no DISCONNECT: the broker publishes the NDEATH will

        async def offline() -> bool:
            return status(cache, "pv_inverter") == "offline" and status(cache, "edge1") == "offline"

        await eventually(offline)
        state = cache.get("pv_inverter")
        assert state is not None
        assert state["reason"] == "Sparkplug NDEATH"
        sparkplug = ingest.sparkplug
        assert sparkplug is not None
        assert sparkplug.stats.deaths == 2


async def test_device_state_payload_reads_as_a_device_state(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    """The retained state follows the topic contract every consumer decodes."""
    async with (
        running(mosquitto, storage) as (site, _ingest, _node, _cache),
        BusClient(mosquitto, f"read-{uuid.uuid4().hex[:8]}") as client,
    ):
        await client.wait_connected(5)
        await client.subscribe(str(Topic.state(site, "pv_inverter")))
        async with asyncio.timeout(10):
            async for message in client.messages():
                state = decode_state(message.payload)
                break
    assert state.status is DeviceStatus.ONLINE


async def test_host_state_is_online_while_ingest_runs_and_offline_after(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    """With ``sparkplug.host_id``, edge nodes that wait for their primary host see it."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    host_id = f"gridpilot-{uuid.uuid4().hex[:6]}"
    base = config(site, "G")
    assert base.sparkplug is not None
    with_host = base.model_copy(
        update={"sparkplug": base.sparkplug.model_copy(update={"host_id": host_id})}
    )
    seen: list[dict[str, Any]] = []
    async with BusClient(mosquitto, f"host-{uuid.uuid4().hex[:8]}") as watcher:
        await watcher.wait_connected(5)
        await watcher.subscribe(f"spBv1.0/STATE/{host_id}")

        async def collect() -> None:
            async for message in watcher.messages():
                seen.append(orjson.loads(message.payload))

        task = asyncio.create_task(collect())
        try:
            async with IngestService(with_host, mosquitto, storage) as ingest:

                async def online() -> bool:
                    return bool(seen) and seen[-1]["online"] is True

                await eventually(online)
                birth = seen[-1]["timestamp"]
                assert ingest.sparkplug is not None
                # The will the broker holds publishes the same death if ingest vanishes.
                will = SparkplugIngest.will(with_host, birth)
                assert will is not None
                assert (will.topic, will.qos, will.retain) == (f"spBv1.0/STATE/{host_id}", 1, True)
                assert orjson.loads(will.payload) == {"online": False, "timestamp": birth}

            async def offline() -> bool:
                return seen[-1] == {"online": False, "timestamp": birth}

            await eventually(offline)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_republished_values_reach_telemetry_subscribers_and_are_stored_once(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    """``sparkplug.republish``: the controller and the live stream see Sparkplug values as
    GridPilot telemetry; ingest does not store its own copy again."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    seen: list[Telemetry] = []
    async with BusClient(mosquitto, f"tel-{uuid.uuid4().hex[:8]}") as watcher:
        await watcher.wait_connected(5)
        await watcher.subscribe(str(Topic.telemetry(site, "pv_inverter")))

        async def collect() -> None:
            async for message in watcher.messages():
                seen.append(decode_telemetry(message.payload))

        task = asyncio.create_task(collect())
        try:
            async with running(mosquitto, storage, site, republish=True) as (_, ingest, node, _c):
                ts = await node.send(
                    {"cmd": "ddata", "values": {"Inverter/Active Power [kW]": 4.25}}
                )

                async def mirrored() -> bool:
                    return any(
                        t.ts_ms == ts and t.values.get("inverter_active_power_w") == 4250.0
                        for t in seen
                    )

                await eventually(mirrored)

                async def stored() -> bool:
                    return (await values(storage, site, "pv_inverter", "inverter_active_power_w"))[
                        -1:
                    ] == [4250.0]

                await eventually(stored)
                await asyncio.sleep(0.3)  # the copy has come back through ingest's subscription
                assert ingest.stats.duplicates == 0
                assert ingest.stats.messages_rejected == 0
                assert ingest.sparkplug is not None
                assert ingest.sparkplug.stats.republished >= 2  # the DBIRTH, the DDATA
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # The births' values came as telemetry too, under the same names.
    assert any(t.values.get("grid_frequency_hz") == 50.0 for t in seen)


async def test_the_api_shows_a_listed_sparkplug_device_online_with_values_then_offline(
    mosquitto: BrokerAddress, storage: Storage, tmp_path: Path
) -> None:
    """Listed under ``devices:`` (``protocol: mqtt``), a Sparkplug device is an API device:
    its births' values under ``/latest`` and its status from births and deaths."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    group = f"Plant {uuid.uuid4().hex[:6]}"
    base = config(site, group)
    listed = base.model_copy(
        update={
            "devices": tuple(
                DeviceConfig.model_validate(
                    {"id": device, "protocol": "mqtt", "points": [{"point": p} for p in points]}
                )
                for device, points in {
                    "edge1": ["uptime_s"],
                    "pv_inverter": [
                        "inverter_active_power_w",
                        "grid_frequency_hz",
                        "breaker_closed_state",
                        "heatsink_temperature_degc",
                    ],
                }.items()
            )
        }
    )
    async with (
        IngestService(listed, mosquitto, storage) as ingest,
        ApiService(listed, mosquitto, storage, base_dir=tmp_path, port=0) as api,
        edge_node(mosquitto.host, mosquitto.port, group, EDGE, DEVICE) as node,
    ):
        token = api.tokens.create(Role.VIEWER, "test-viewer", created_by="test")[1]
        async with httpx.AsyncClient(
            base_url=api.url,
            trust_env=False,
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        ) as http:

            async def device() -> dict[str, Any]:
                response = await http.get("/api/v1/devices/pv_inverter")
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            async def online() -> bool:
                return (await device())["status"] == "online"

            await eventually(online)
            latest = (await http.get("/api/v1/devices/pv_inverter/latest")).json()
            assert {v["point"]: v["value"] for v in latest["values"]} == {
                "inverter_active_power_w": 4000.0,
                "grid_frequency_hz": 50.0,
                "breaker_closed_state": 1.0,
                "heatsink_temperature_degc": -5.0,
            }
            node.kill()

            async def offline() -> bool:
                return (await device())["status"] == "offline"

            await eventually(offline)
        assert ingest.stats.messages_rejected == 0
