"""BusClient against a real Mosquitto: delivery, reconnects, queueing, will, limits."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gridpilot.bus.client import (
    BrokerAddress,
    BusClient,
    Message,
    MqttVersion,
    Will,
    backoff_delay,
)
from gridpilot.bus.errors import BusClosedError, BusRefusedError, BusTimeoutError
from gridpilot.config.models import BrokerConfig
from tests.conftest import REPO, MosquittoServer, mosquitto_passwd

pytestmark = pytest.mark.integration

FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2, "connect_timeout_s": 2.0}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def take(client: BusClient, count: int, limit_s: float = 10.0) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(limit_s):
        async for message in client.messages():
            got.append(message)
            if len(got) == count:
                break
    return got


async def nothing_arrives(client: BusClient, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            async for _ in client.messages():
                return False
    except TimeoutError:
        return True
    return True


@pytest.fixture
async def pair(mosquitto: BrokerAddress) -> AsyncIterator[tuple[BusClient, BusClient, str]]:
    """A connected subscriber and publisher, and a topic prefix of this test."""
    prefix = uid("t")
    async with BusClient(mosquitto, uid("sub")) as sub, BusClient(mosquitto, uid("pub")) as pub:
        await sub.wait_connected(5)
        await pub.wait_connected(5)
        yield sub, pub, prefix


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    full = [backoff_delay(n, initial_s=0.25, max_s=30, jitter=0.999999) for n in range(10)]
    assert full[:5] == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0], rel=1e-5)
    assert full[-1] == pytest.approx(30.0, rel=1e-5)
    assert backoff_delay(3, initial_s=0.25, max_s=30, jitter=0.0) == pytest.approx(1.0)
    assert backoff_delay(10_000, initial_s=0.25, max_s=30, jitter=0.5) == pytest.approx(22.5)


async def test_messages_arrive_in_order_over_mqtt5(
    pair: tuple[BusClient, BusClient, str],
) -> None:
    sub, pub, prefix = pair
    await sub.subscribe(f"{prefix}/#", qos=1)
    for i in range(2000):
        await pub.publish(f"{prefix}/seq", str(i).encode())
    await pub.flush(10)
    got = await take(sub, 2000)
    assert [int(m.payload) for m in got] == list(range(2000))
    assert {m.qos for m in got} == {1}
    assert pub.mqtt_version is MqttVersion.V5
    assert pub.stats.published == 2000
    assert pub.queued == 0


async def test_mqtt_311_when_asked(mosquitto: BrokerAddress) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port, mqtt_version=MqttVersion.V311)
    topic = uid("t") + "/x"
    async with BusClient(address, uid("c")) as client:
        await client.wait_connected(5)
        await client.subscribe(topic)
        await client.publish(topic, b"hello", qos=0)
        [message] = await take(client, 1)
    assert client.mqtt_version is MqttVersion.V311
    assert (message.topic, message.payload, message.qos) == (topic, b"hello", 0)


async def test_retained_messages_and_qos0(pair: tuple[BusClient, BusClient, str]) -> None:
    sub, pub, prefix = pair
    await pub.publish(f"{prefix}/state", b"online", retain=True)
    await pub.flush(5)
    await sub.subscribe(f"{prefix}/state")
    [message] = await take(sub, 1)
    assert message.retain
    assert message.payload == b"online"


async def test_reconnects_after_broker_restart_and_delivers_what_was_queued(
    private_mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    address = private_mosquitto.address
    topic = uid("t") + "/data"
    pub_id = uid("pub")
    connects = 0

    async def count_connect() -> None:
        nonlocal connects
        connects += 1

    async with (
        BusClient(address, uid("sub"), clean_session=False, **FAST) as sub,
        BusClient(address, pub_id, **FAST) as pub,
    ):
        pub.on_connect(count_connect)
        await sub.wait_connected(5)
        await pub.wait_connected(5)
        await sub.subscribe(topic, qos=1)
        for i in range(10):
            await pub.publish(topic, str(i).encode())
        assert [int(m.payload) for m in await take(sub, 10)] == list(range(10))

        with caplog.at_level(logging.INFO, logger="gridpilot.bus"):
            private_mosquitto.stop()
            async with asyncio.timeout(5):
                while pub.connected or sub.connected:  # noqa: ASYNC110 -- no event for "down"
                    await asyncio.sleep(0.01)
            for i in range(10, 110):
                await pub.publish(topic, str(i).encode())
            assert pub.queued == 100
            await asyncio.sleep(1.0)  # several failed reconnect attempts
            private_mosquitto.start()
            await pub.flush(10)
            got: list[int] = []
            async with asyncio.timeout(10):
                async for message in sub.messages():
                    got.append(int(message.payload))
                    if got[-1] == 109:
                        break

    # At least once: what the broker had not yet seen acknowledged when it was stopped
    # (its PUBACKs still in the socket) may come again; everything new comes once, in order.
    assert [n for n in got if n >= 10] == list(range(10, 110))
    assert all(n < 10 for n in got[: len(got) - 100])
    assert pub.stats.connections == 2
    assert pub.stats.connection_losses == 1
    assert connects == 2
    # One warning for the outage, however many attempts failed and messages were queued.
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and pub_id in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "lost" in warnings[0].getMessage()


async def test_subscriptions_are_restored_when_the_broker_forgot_them(tmp_path: Path) -> None:
    # No persistence: after the restart the broker knows nothing about the subscriber.
    server = MosquittoServer(tmp_path, persistent=False)
    server.start()
    try:
        topic = uid("t") + "/x"
        sub = BusClient(server.address, uid("sub"), **FAST)
        pub = BusClient(server.address, uid("pub"), **FAST)
        connections = {sub: 0, pub: 0}
        both_back = asyncio.Event()

        def counter(client: BusClient) -> Callable[[], Awaitable[None]]:
            async def on_connect() -> None:  # runs after subscriptions are restored
                connections[client] += 1
                if min(connections.values()) == 2:
                    both_back.set()

            return on_connect

        sub.on_connect(counter(sub))
        pub.on_connect(counter(pub))
        async with sub, pub:
            await sub.subscribe(topic)
            await sub.wait_connected(5)
            await pub.wait_connected(5)
            server.restart()
            async with asyncio.timeout(10):
                await both_back.wait()
            await pub.publish(topic, b"after restart")
            [message] = await take(sub, 1)
            assert message.payload == b"after restart"
    finally:
        server.stop()


async def test_queue_is_bounded_while_the_broker_is_down_and_drains_later(
    tmp_path: Path, free_port: int
) -> None:
    server = MosquittoServer(tmp_path, persistent=True, port=free_port)
    server.start()
    topic = uid("t") + "/q"
    sub_id = uid("sub")
    try:
        # A persistent subscriber session that will hold messages while it is away.
        async with BusClient(server.address, sub_id, clean_session=False) as sub:
            await sub.wait_connected(5)
            await sub.subscribe(topic, qos=1)
        server.stop()

        async with BusClient(
            server.address, uid("pub"), max_outgoing=50, publish_timeout_s=0.2, **FAST
        ) as pub:
            for i in range(50):
                await pub.publish(topic, str(i).encode())
            assert not pub.connected
            assert pub.queued == 50
            with pytest.raises(BusTimeoutError, match="queue full"):
                await pub.publish(topic, b"one too many")
            server.start()
            await pub.flush(10)
            assert pub.stats.published == 50

        async with BusClient(server.address, sub_id, clean_session=False) as sub:
            got = await take(sub, 50)
        assert [int(m.payload) for m in got] == list(range(50))
    finally:
        server.stop()


async def test_receive_window_bounds_unacknowledged_messages(
    pair: tuple[BusClient, BusClient, str], mosquitto: BrokerAddress
) -> None:
    _, pub, prefix = pair
    topic = f"{prefix}/window"
    async with BusClient(mosquitto, uid("slow"), manual_ack=True, max_incoming=20) as slow:
        await slow.wait_connected(5)
        await slow.subscribe(topic, qos=1)
        for i in range(100):
            await pub.publish(topic, str(i).encode())
        await pub.flush(5)
        first = await take(slow, 20)
        await asyncio.sleep(0.3)
        assert slow.stats.received == 20  # the broker holds the rest until we acknowledge
        for message in first:
            slow.ack(message)
        rest = await take(slow, 80)
        for message in rest:
            slow.ack(message)
    assert [int(m.payload) for m in first + rest] == list(range(100))


async def test_unacknowledged_messages_are_redelivered(mosquitto: BrokerAddress) -> None:
    topic = uid("t") + "/redeliver"
    client_id = uid("worker")
    async with BusClient(mosquitto, uid("pub")) as pub:
        async with BusClient(mosquitto, client_id, clean_session=False, manual_ack=True) as c:
            await c.wait_connected(5)
            await c.subscribe(topic)
            await pub.publish(topic, b"1")
            await pub.publish(topic, b"2")
            first, _second = await take(c, 2)
            c.ack(first)  # "2" is never acknowledged: as if we crashed before committing it
        async with BusClient(mosquitto, client_id, clean_session=False, manual_ack=True) as c:
            [again] = await take(c, 1)
            c.ack(again)
    assert again.payload == b"2"


async def test_last_will_is_published_when_the_process_dies(mosquitto: BrokerAddress) -> None:
    topic = uid("t") + "/gw/state"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from gridpilot.bus.client import BrokerAddress, BusClient, Will

        async def main():
            will = Will({topic!r}, b"offline")
            address = BrokerAddress("127.0.0.1", {mosquitto.port})
            async with BusClient(address, "dying", will=will) as c:
                await c.wait_connected(5)
                await c.publish({topic!r}, b"online", retain=True)
                await c.flush(5)
                print("ready", flush=True)
                await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line.strip() == b"ready"
        async with BusClient(mosquitto, uid("watch")) as watch:
            await watch.subscribe(topic)
            [retained] = await take(watch, 1)
            assert retained.payload == b"online"
            process.kill()  # no DISCONNECT: the broker publishes the will
            [will] = await take(watch, 1)
        assert will.payload == b"offline"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_graceful_close_does_not_publish_the_will(mosquitto: BrokerAddress) -> None:
    topic = uid("t") + "/svc/state"
    async with BusClient(mosquitto, uid("watch")) as watch:
        await watch.wait_connected(5)
        await watch.subscribe(topic)
        async with BusClient(mosquitto, uid("svc"), will=Will(topic, b"offline")) as svc:
            await svc.wait_connected(5)
        assert await nothing_arrives(watch, 0.5)


async def test_connect_timeout_when_the_broker_never_answers() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        address = BrokerAddress("127.0.0.1", port)
        async with BusClient(address, uid("c"), connect_timeout_s=0.2, backoff_max_s=5) as c:
            with pytest.raises(BusTimeoutError) as caught:
                await c.wait_connected(0.6)
        assert "CONNACK" in str(caught.value.__cause__)
        assert accepted  # it did reach the TCP listener
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_unreachable_broker_is_retried_and_logged_once(
    free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    address = BrokerAddress("127.0.0.1", free_port)  # nothing listens there
    with caplog.at_level(logging.DEBUG, logger="gridpilot.bus"):
        async with BusClient(address, "lonely", **FAST) as client:
            for i in range(20):
                await client.publish("t/x", str(i).encode())
            await asyncio.sleep(0.8)
            assert client.queued == 20
            assert not client.connected
    attempts = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(attempts) >= 4
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "lonely" in r.getMessage()
    ]
    # The outage warning, and on close the note that 20 messages were never sent.
    assert [
        ("cannot connect" in r.getMessage(), "not acknowledged" in r.getMessage()) for r in warnings
    ] == [
        (True, False),
        (False, True),
    ]


async def test_wrong_credentials_fail_fast_and_the_password_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55word"  # noqa: S105 -- a test broker's throwaway password
    passwords = tmp_path / "passwords"
    mosquitto_passwd(passwords, "gateway", secret)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    server = MosquittoServer(workdir, anonymous=False, password_file=passwords)
    server.start()
    try:
        secret_file = tmp_path / "broker.secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        config = BrokerConfig(
            url=f"mqtt://127.0.0.1:{server.port}", username="gateway", password_file=secret_file
        )
        good = BrokerAddress.from_config(config)
        assert good.password == secret
        assert secret not in repr(good)
        assert secret not in str(good)
        with caplog.at_level(logging.DEBUG):
            async with BusClient(good, uid("ok")) as client:
                await client.wait_connected(5)
                await client.publish("t/x", b"1")
                await client.flush(5)
            wrong = BrokerAddress("127.0.0.1", server.port, "gateway", "wrong-" + secret)
            async with BusClient(wrong, uid("bad"), **FAST) as bad:
                with pytest.raises(BusRefusedError, match="refused"):
                    await bad.wait_connected(5)
            anonymous = BrokerAddress("127.0.0.1", server.port)
            async with BusClient(anonymous, uid("anon"), **FAST) as anon:
                with pytest.raises(BusRefusedError):
                    await anon.wait_connected(5)
        assert caplog.records
        assert all(secret not in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_password_sources_are_checked(tmp_path: Path) -> None:
    loose = tmp_path / "loose.secret"
    loose.write_text("pw")
    loose.chmod(0o644)
    with pytest.raises(BusRefusedError, match="chmod 600"):
        BrokerAddress.from_config(BrokerConfig(url="mqtt://h:1883", password_file=loose))
    with pytest.raises(BusRefusedError, match="not set"):
        BrokerAddress.from_config(
            BrokerConfig(url="mqtt://h:1883", password_env="GP_NOPE"),  # noqa: S106
            environ={},
        )
    address = BrokerAddress.from_config(
        BrokerConfig(url="mqtts://broker.example:8884", username="u", password_env="PW"),  # noqa: S106
        environ={"PW": "x"},
    )
    assert (address.host, address.port, address.tls, address.password) == (
        "broker.example",
        8884,
        True,
        "x",
    )


async def test_cancelling_a_user_stops_the_client_cleanly(mosquitto: BrokerAddress) -> None:
    started = asyncio.Event()

    async def consumer() -> None:
        async with BusClient(mosquitto, uid("c")) as client:
            await client.wait_connected(5)
            await client.subscribe(uid("t") + "/#")
            started.set()
            async for _ in client.messages():
                pass

    task = asyncio.create_task(consumer())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    async with asyncio.timeout(3):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_closed_client_ends_iteration_and_refuses_work(mosquitto: BrokerAddress) -> None:
    client = BusClient(mosquitto, uid("c"))
    async with client:
        await client.wait_connected(5)
        iterator = client.messages()
        waiter = asyncio.create_task(anext(iterator, None))
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(waiter, 2) is None
    with pytest.raises(BusClosedError):
        await client.publish("t/x", b"1")
    with pytest.raises(BusClosedError):
        await client.subscribe("t/#")


async def test_bad_topics_are_refused_before_sending(mosquitto: BrokerAddress) -> None:
    async with BusClient(mosquitto, uid("c")) as client:
        with pytest.raises(ValueError, match="wildcard"):
            await client.publish("a/+/b", b"")
        with pytest.raises(ValueError, match="wildcard"):
            await client.publish("a/#", b"")
        for bad_filter in ("a/#/b", "a/b#", "a/x+", "", "$share//x", "$share/g", "$share/g+/x"):
            with pytest.raises(ValueError, match="filter"):
                await client.subscribe(bad_filter)
        with pytest.raises(ValueError, match="qos"):
            await client.publish("a/b", b"", qos=3)


async def test_subscribing_behind_a_session_backlog_does_not_deadlock(
    mosquitto: BrokerAddress,
) -> None:
    # A persistent session's backlog arrives before the SUBACK; with a small incoming
    # bound the client stops reading before it sees the SUBACK. subscribe() must return.
    topic = uid("t") + "/backlog"
    worker = uid("worker")
    async with BusClient(mosquitto, worker, clean_session=False) as first:
        await first.subscribe(topic)
    async with BusClient(mosquitto, uid("pub")) as pub:
        for i in range(300):
            await pub.publish(topic, str(i).encode())
        await pub.flush(5)
    async with BusClient(mosquitto, worker, clean_session=False, max_incoming=50) as again:
        async with asyncio.timeout(3):
            await again.subscribe(topic)
        got = await take(again, 300)
    assert [int(m.payload) for m in got] == list(range(300))
