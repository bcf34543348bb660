"""The embedded amqtt broker: loopback only, a free port when the wanted one is taken."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator

import pytest

from gridpilot.bus.client import BrokerAddress, BusClient, MqttVersion
from gridpilot.bus.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def occupied(port: int) -> Iterator[None]:
    """Make sure ``port`` on 127.0.0.1 is taken while the block runs (by us if nobody else)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        yield
    finally:
        sock.close()


async def round_trip(address: BrokerAddress, topic: str) -> bytes:
    async with BusClient(address, "sub") as sub, BusClient(address, "pub") as pub:
        await sub.wait_connected(5)
        await sub.subscribe(topic)
        await pub.publish(topic, b"hello")
        async with asyncio.timeout(5):
            async for message in sub.messages():
                return message.payload
    raise AssertionError("no message")


async def test_pub_sub_through_the_embedded_broker(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with EmbeddedBroker(port=0) as broker:
            assert broker.port > 0
            assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
            assert broker.address.mqtt_version is MqttVersion.V311
            assert await round_trip(broker.address, "demo/x") == b"hello"
            port = broker.port
    # Stopped cleanly: the port is free again and nothing went wrong on the way out.
    with socket.create_server(("127.0.0.1", port)):
        pass
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_client_that_tries_mqtt5_first_falls_back_to_311_at_once() -> None:
    async with EmbeddedBroker(port=0) as broker:
        negotiating = BrokerAddress("127.0.0.1", broker.port)  # no version given
        async with asyncio.timeout(2):  # far below connect_timeout_s: refused, not hung
            async with BusClient(negotiating, "negotiator") as client:
                await client.wait_connected()
                assert client.mqtt_version is MqttVersion.V311
                await client.subscribe("demo/y")
                await client.publish("demo/y", b"hello")
                message = await anext(client.messages())
        assert message.payload == b"hello"


async def test_garbage_connections_do_not_disturb_the_broker() -> None:
    async with EmbeddedBroker(port=0) as broker:
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x10", b""):
            _, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.write(junk)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        assert await round_trip(broker.address, "demo/v") == b"hello"


async def test_falls_back_to_a_free_port_when_1883_is_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with occupied(1883), caplog.at_level(logging.WARNING, logger="gridpilot.bus.embedded"):
        async with EmbeddedBroker() as broker:
            assert broker.port != 1883
            assert await round_trip(broker.address, "demo/z") == b"hello"
    assert any("1883 is taken" in r.getMessage() for r in caplog.records)


async def test_takes_the_wanted_port_when_free(free_port: int) -> None:
    async with EmbeddedBroker(port=free_port) as broker:
        assert broker.port == free_port
        assert await round_trip(broker.address, "demo/w") == b"hello"


def test_refuses_to_listen_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="192.168.1.10")
    EmbeddedBroker(host="::1")
    EmbeddedBroker(host="localhost")


async def test_stopping_with_clients_still_connected_is_clean() -> None:
    async with EmbeddedBroker(port=0) as broker:
        client = BusClient(broker.address, "lingering", backoff_initial_s=0.05)
        await client.__aenter__()
        await client.wait_connected(5)
        await client.subscribe("demo/#")
    # The broker is gone; the client notices and would reconnect; closing it is clean too.
    async with asyncio.timeout(5):
        while client.connected:  # noqa: ASYNC110 -- no event for "down"
            await asyncio.sleep(0.01)
    await client.close()


async def test_retained_messages_go_only_to_matching_subscriptions() -> None:
    """amqtt 0.12.1 replays every subscriber's retained matches to each new client; ours
    must not (a `command/result` watcher was flooded with retained `state` messages)."""
    async with EmbeddedBroker(port=0) as broker:
        address = broker.address
        async with (
            BusClient(address, "state-watcher") as watcher,
            BusClient(address, "publisher") as publisher,
        ):
            await watcher.subscribe("site/+/state")
            await publisher.publish("site/meter/state", b"online", retain=True)
            await publisher.flush(5)
            async with BusClient(address, "result-watcher") as other:
                await other.subscribe("site/meter/command/result")
                received = other.messages()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await anext(received)
            async with BusClient(address, "late-state-watcher") as late:
                await late.subscribe("site/+/state")
                async with asyncio.timeout(5):
                    message = await anext(late.messages())
                assert (message.topic, message.payload, message.retain) == (
                    "site/meter/state",
                    b"online",
                    True,
                )
