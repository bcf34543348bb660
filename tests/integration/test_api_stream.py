"""Live telemetry: the stream hub's bounded queues and client limit, and /api/v1/stream (SSE).

The hub's own tests feed it through a small in-memory telemetry source; the SSE tests run
``ApiService`` (uvicorn on loopback) against the real Mosquitto and read the stream with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gridpilot.api.errors import UnavailableError
from gridpilot.api.service import ApiService
from gridpilot.api.stream import (
    StreamHub,
    Subscription,
    TelemetryEventOut,
    TelemetryFrame,
    TooManyStreamsError,
    event_stream,
)
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.bus.errors import BusRefusedError
from gridpilot.model import Topic, now_ms, to_rfc3339
from gridpilot.storage import open_storage
from tests.integration.test_api_support import eventually, site_config, tcp_client, unique_site

pytestmark = pytest.mark.integration

Listener = Callable[[str, bytes], None]


def frame(device: str, n: int) -> TelemetryFrame:
    return TelemetryFrame(device, 1_700_000_000_000 + n, n, {"active_power_w": float(n)})


class MemorySource:
    """A telemetry source in memory: what ``SiteBus`` does for the hub, without a broker."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self.subscribed = 0
        self.unsubscribed = 0

    async def add_listener(self, listener: Listener) -> None:
        self.listeners.append(listener)
        self.subscribed += 1

    async def remove_listener(self, listener: Listener) -> None:
        self.listeners.remove(listener)
        self.unsubscribed += 1

    def publish(self, device: str, payload: bytes) -> None:
        for listener in tuple(self.listeners):
            listener(device, payload)


# ---------------------------------------------------------------------------- the hub


async def test_a_full_queue_drops_the_oldest_frames_and_counts_them() -> None:
    subscription = Subscription(None, capacity=3)
    for n in range(1, 6):
        subscription.offer(frame("meter", n))
    assert len(subscription) == 3
    assert subscription.dropped == 2
    taken = [await subscription.next(0) for _ in range(3)]
    assert [f.seq for f in taken if f is not None] == [3, 4, 5]
    assert await subscription.next(0.01) is None  # empty: a timeout, not an end
    subscription.offer(frame("meter", 6))
    assert len(subscription) == 1
    assert subscription.dropped == 2


async def test_a_subscription_takes_only_its_device_and_ends_when_closed() -> None:
    subscription = Subscription("battery", capacity=10)
    subscription.offer(frame("meter", 1))
    subscription.offer(frame("battery", 2))

    async def collect() -> list[int | None]:
        return [f.seq async for f in subscription]

    collecting = asyncio.create_task(collect())
    await asyncio.sleep(0.01)
    subscription.close()
    subscription.offer(frame("battery", 3))  # after the end: ignored
    assert await asyncio.wait_for(collecting, 1) == [2]


async def test_the_hub_limits_clients_and_follows_telemetry_only_while_streaming() -> None:
    source = MemorySource()
    hub = StreamHub(source, max_clients=2, queue_size=2)
    first = hub.open(None)
    await hub.start(first)
    second = hub.open("meter")
    await hub.start(second)
    assert source.subscribed == 1  # one listener for all streams
    with pytest.raises(TooManyStreamsError) as refused:
        hub.open(None)
    assert refused.value.status == 503
    assert refused.value.error.startswith("too many live streams: 2 are open")
    assert hub.refused == 1

    for n in range(4):  # decoded once, offered to both; two of each queue's four dropped
        source.publish("meter", encode_telemetry(1_700_000_000_000 + n, {"p_w": n}, n))
    source.publish("meter", b"not json")
    assert hub.rejected == 1
    assert (len(first), first.dropped, len(second), second.dropped) == (2, 2, 2, 2)
    assert hub.dropped == 4
    got = await first.next()
    assert got == TelemetryFrame("meter", 1_700_000_000_002, 2, {"p_w": 2.0})

    await hub.release(first)
    assert first.closed
    assert hub.clients == 1
    assert source.unsubscribed == 0
    assert hub.dropped == 4  # the released one's drops still count
    third = hub.open(None)  # its slot is free again
    await hub.release(third)
    await hub.release(second)
    assert hub.clients == 0
    assert (source.subscribed, source.unsubscribed, source.listeners) == (1, 1, [])
    await hub.release(second)  # twice: no harm
    assert source.unsubscribed == 1


async def test_closing_the_hub_ends_every_stream_and_refuses_new_ones() -> None:
    hub = StreamHub(MemorySource(), max_clients=5)

    async def stream() -> list[int | None]:
        async with hub.subscribe(None) as subscription:
            return [f.seq async for f in subscription]

    streams = [asyncio.create_task(stream()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert hub.clients == 3
    hub.close()
    assert await asyncio.wait_for(asyncio.gather(*streams), 1) == [[], [], []]
    assert hub.clients == 0
    with pytest.raises(UnavailableError, match="shutting down"):
        hub.open(None)


class RefusingSource(MemorySource):
    """A broker that refuses the subscription (an ACL), or never answers (``hang``)."""

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang

    async def add_listener(self, listener: Listener) -> None:
        await super().add_listener(listener)
        if self.hang:
            await asyncio.Event().wait()
        raise BusRefusedError("refused the subscription 'gridpilot/v1/s/+/telemetry'", 135)


async def test_a_stream_that_cannot_start_gives_its_slot_back() -> None:
    source = RefusingSource()
    hub = StreamHub(source, max_clients=1)
    subscription = hub.open(None)
    with pytest.raises(UnavailableError, match="cannot follow the site's telemetry: refused"):
        await hub.start(subscription)
    assert (hub.clients, source.listeners) == (0, [])

    hanging = StreamHub(RefusingSource(hang=True), max_clients=1)
    starting = asyncio.create_task(hanging.start(hanging.open(None)))
    await asyncio.sleep(0.01)
    starting.cancel()  # the client left while the broker was being asked
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert hanging.clients == 0
    hanging.open(None)  # the slot is free


async def test_without_a_broker_streams_are_unavailable() -> None:
    with pytest.raises(UnavailableError, match="without a broker connection"):
        StreamHub(None, max_clients=5).open(None)


async def test_the_event_stream_sends_events_and_heartbeats_until_closed() -> None:
    subscription = Subscription(None, capacity=10)
    body = event_stream(subscription, heartbeat_s=0.05)
    assert (await anext(body)).startswith(b": GridPilot live telemetry\nretry: 5000\n\n")
    assert await anext(body) == b": heartbeat\n\n"
    subscription.offer(frame("meter", 7))
    event = await anext(body)
    assert event.startswith(b"event: telemetry\ndata: ")
    assert event.endswith(b"\n\n")
    data = orjson.loads(event.split(b"data: ", 1)[1])
    assert TelemetryEventOut.model_validate(data).device == "meter"  # as documented
    assert data == {
        "device": "meter",
        "ts": to_rfc3339(1_700_000_000_007),
        "seq": 7,
        "values": {"active_power_w": 7.0},
        "dropped": 0,
    }
    subscription.close()
    with pytest.raises(StopAsyncIteration):
        await anext(body)


# ---------------------------------------------------------------------------- /api/v1/stream


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, broker: BrokerAddress, **api: Any
) -> AsyncIterator[tuple[ApiService, str]]:
    site_id = unique_site("api-sse")
    config = site_config(site_id, tmp_path, port=0, **api)
    async with (
        open_storage(config.storage, tmp_path) as store,
        ApiService(config, broker, store, base_dir=tmp_path, shutdown_timeout_s=2) as service,
    ):
        yield service, site_id


def viewer(api: ApiService) -> str:
    return api.tokens.create(Role.VIEWER, "test-viewer", created_by="test")[1]


async def events_of(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each SSE event; comments skipped."""
    event, data = "message", ""
    async for line in lines:
        if line == "":
            if data:
                yield event, data
            event, data = "message", ""
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data += line.removeprefix("data: ")


async def first_event(
    events: AsyncIterator[tuple[str, str]], broker: BrokerAddress, site_id: str, device: str
) -> dict[str, Any]:
    """Publish telemetry of ``device`` until the stream passes some on; its first event."""
    async with BusClient(broker, f"pub-{uuid.uuid4().hex[:12]}") as bus:
        await bus.wait_connected(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await bus.publish(
                str(Topic.telemetry(site_id, "battery")),
                encode_telemetry(now_ms(), {"soc_pct": 50.0}),
            )
            await bus.publish(
                str(Topic.telemetry(site_id, device)),
                encode_telemetry(now_ms(), {"active_power_w": 1520.0}, 9),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    event, data = await anext(events)
                    assert event == "telemetry"
                    doc: dict[str, Any] = orjson.loads(data)
                    return doc
    raise AssertionError("no telemetry came through the stream")


async def test_sse_streams_live_telemetry_of_one_device(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    async with (
        serving(tmp_path, mosquitto) as (api, site_id),
        tcp_client(api.url, viewer(api)) as http,
        http.stream("GET", "/api/v1/stream", params={"device": "meter"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        doc = await first_event(events_of(response.aiter_lines()), mosquitto, site_id, "meter")
        assert doc["device"] == "meter"  # the battery's messages are filtered out
        assert doc["values"] == {"active_power_w": 1520.0}
        assert doc["seq"] == 9
        assert doc["dropped"] == 0
        assert api.site_bus is not None
        assert api.site_bus.listener_count == 1

    # The client hung up: its slot and the bus listener are released.
    async def listeners() -> int:
        assert api.site_bus is not None
        return api.site_bus.listener_count

    await eventually(listeners, lambda n: n == 0)


async def test_sse_needs_a_viewer_token_and_a_known_device(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    async with serving(tmp_path, mosquitto) as (api, _):
        async with tcp_client(api.url) as anonymous:
            response = await anonymous.get("/api/v1/stream")
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
        async with tcp_client(api.url, "gpt_unknown") as stranger:
            assert (await stranger.get("/api/v1/stream")).status_code == 401
        async with tcp_client(api.url, viewer(api)) as http:
            response = await http.get("/api/v1/stream", params={"device": "nope"})
            assert response.status_code == 404
            assert response.json()["error"].startswith("no device 'nope'")
            openapi = (await http.get("/api/v1/openapi.json")).json()
            answers = openapi["paths"]["/api/v1/stream"]["get"]["responses"]
            schema = answers["200"]["content"]["text/event-stream"]["schema"]
            assert schema["properties"]["data"]["contentSchema"]["required"] == [
                "device",
                "ts",
                "seq",
                "values",
                "dropped",
            ]
            assert "event: telemetry" in answers["200"]["description"]


async def test_sse_beyond_stream_clients_is_refused_until_one_leaves(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    async with (
        serving(tmp_path, mosquitto, stream_clients=1) as (api, _),
        tcp_client(api.url, viewer(api)) as http,
    ):
        async with http.stream("GET", "/api/v1/stream") as first:
            assert first.status_code == 200
            refused = await http.get("/api/v1/stream")
            assert refused.status_code == 503
            assert refused.json()["error"] == (
                "too many live streams: 1 are open (api.stream_clients); close one, or raise "
                "the limit in the site file"
            )
            assert refused.json()["detail"] == {"limit": 1}

        async def status() -> int:
            async with http.stream("GET", "/api/v1/stream") as again:
                return again.status_code

        await eventually(status, lambda code: code == 200)


async def test_open_streams_end_when_the_server_stops(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    """Stopping, the service ends every live stream first: the SSE response finishes, the
    subscription completes and uvicorn closes the WebSocket (1012); the slots and the bus
    listener are released and the stop does not wait out the graceful period."""
    async with tcp_client("http://127.0.0.1") as http:
        async with serving(tmp_path, mosquitto) as (api, site_id):
            token = viewer(api)
            request = http.build_request(
                "GET", f"{api.url}/api/v1/stream", headers={"authorization": f"Bearer {token}"}
            )
            response = await http.send(request, stream=True)
            assert response.status_code == 200
            lines = response.aiter_lines()
            await first_event(events_of(lines), mosquitto, site_id, "meter")
            ws = await connect(
                api.url.replace("http", "ws") + "/graphql",
                subprotocols=[Subprotocol("graphql-transport-ws")],
            )
            await ws.send(
                orjson.dumps({"type": "connection_init", "payload": {"token": token}}).decode()
            )
            assert orjson.loads(await ws.recv())["type"] == "connection_ack"
            query = "subscription { telemetry { device } }"
            await ws.send(
                orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}).decode()
            )

            async with BusClient(mosquitto, f"pub-{uuid.uuid4().hex[:12]}") as bus:
                await bus.wait_connected(10)
                while True:  # until the subscription runs
                    await bus.publish(
                        str(Topic.telemetry(site_id, "meter")),
                        encode_telemetry(now_ms(), {"active_power_w": 1.0}),
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.3):
                            assert orjson.loads(await ws.recv())["type"] == "next"
                            break
            site_bus = api.site_bus
            assert site_bus is not None
            started = time.monotonic()
        assert time.monotonic() - started < 2  # well under shutdown_timeout_s + its margin
        assert site_bus.listener_count == 0
        with pytest.raises(ConnectionClosed) as closed:
            await _drain(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012  # service restart
        with contextlib.suppress(httpx.RemoteProtocolError):  # cut mid-stream
            async for _ in lines:
                pass
        await response.aclose()


async def _drain(ws: Any) -> None:
    """Read until the socket closes: the hub ends the subscription ("complete"), then
    uvicorn closes the connection."""
    while True:
        assert orjson.loads(await ws.recv())["type"] in ("next", "complete")


async def test_a_stream_ends_when_its_token_is_revoked(
    tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    async with serving(tmp_path, mosquitto) as (api, site_id):
        api.streams.recheck_s = 0.2
        secret = viewer(api)
        other = viewer(api)
        record = next(r for r in api.tokens.records() if secret.startswith(f"gpt_{r.id}_"))
        async with (
            tcp_client(api.url, secret) as http,
            tcp_client(api.url, other) as http_other,
            http.stream("GET", "/api/v1/stream") as response,
            http_other.stream(
                "GET", "/api/v1/stream", params={"device": "meter"}
            ) as response_other,
        ):
            events = events_of(response.aiter_lines())
            await first_event(events, mosquitto, site_id, "meter")
            api.tokens.revoke(record.id)
            ending: str | None = None
            async with asyncio.timeout(10):
                async for event, data in events:
                    if event == "end":
                        ending = data
                        break
            assert ending is not None
            assert orjson.loads(ending) == {"reason": f"token {record.id} was revoked"}
            with pytest.raises(StopAsyncIteration):  # and the body ended
                async with asyncio.timeout(5):
                    await anext(events)

            # another token's stream goes on
            other_events = events_of(response_other.aiter_lines())
            doc = await first_event(other_events, mosquitto, site_id, "meter")
            assert doc["device"] == "meter"
            assert api.streams.clients == 1
        async with tcp_client(api.url, secret) as http:
            assert (await http.get("/api/v1/stream")).status_code == 401
