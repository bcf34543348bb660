"""A persistent session's shared subscription survives a broker restart.

Mosquitto 2.0 saves a persistent session and restores it after a restart (the CONNACK says
"session present"), but without its shared subscriptions: messages for them are then dropped
without a word. The fault suite found it (tests/faults: everything published after a killed
broker came back was lost, until ingest restarted); BusClient therefore renews shared
subscriptions on every connection.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gridpilot.bus.client import BusClient
from tests.conftest import MosquittoServer

pytestmark = pytest.mark.integration

FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.2, "connect_timeout_s": 2.0}


async def test_a_shared_subscription_delivers_after_the_broker_restored_the_session(
    private_mosquitto: MosquittoServer,
) -> None:
    address = private_mosquitto.address
    topic = f"t-{uuid.uuid4().hex[:8]}/data"
    subscribed = asyncio.Event()

    async def restored() -> None:  # runs once subscriptions are restored after a connect
        subscribed.set()

    async with BusClient(
        address, f"sub-{uuid.uuid4().hex[:8]}", clean_session=False, manual_ack=True, **FAST
    ) as sub:
        await sub.wait_connected(5)
        await sub.subscribe(f"$share/workers/{topic}", qos=1)
        sub.on_connect(restored)
        async with BusClient(address, f"pub-{uuid.uuid4().hex[:8]}", **FAST) as pub:
            await pub.wait_connected(5)
            await pub.publish(topic, b"before", qos=1)
            async with asyncio.timeout(10):
                first = await anext(sub.messages())
            sub.ack(first)
            assert first.payload == b"before"
        subscribed.clear()
        # SIGTERM: Mosquitto saves the session (and it says so at the next CONNACK).
        private_mosquitto.restart()
        async with asyncio.timeout(10):
            await subscribed.wait()
        async with BusClient(address, f"pub-{uuid.uuid4().hex[:8]}", **FAST) as pub:
            await pub.wait_connected(5)
            await pub.publish(topic, b"after", qos=1)
            await pub.flush(5)
        async with asyncio.timeout(10):
            second = await anext(sub.messages())
        sub.ack(second)
    assert second.payload == b"after"
