"""IngestService end to end: real Mosquitto, real storage, real dead letters."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import DeadLetter, decode_dead_letter, encode_telemetry
from gridpilot.bus.embedded import EmbeddedBroker
from gridpilot.bus.errors import BusRefusedError
from gridpilot.config.models import GridPilotConfig, StorageConfig
from gridpilot.ingest.service import SHARED_GROUP, IngestService
from gridpilot.ingest.validation import RejectReason
from gridpilot.model import Sample, SeriesKey, Topic, parse_timestamp_ms
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage, StorageUnavailable, WriteResult
from tests.conftest import MosquittoServer

pytestmark = pytest.mark.integration

NOW = 1_795_694_400_000  # 2026-11-26T12:00:00Z; the services under test use this clock
DAY = 86_400_000


def clock() -> int:
    return NOW


def site_config(
    site: str, *, ingest: dict[str, Any] | None = None, **storage: Any
) -> GridPilotConfig:
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site},
            "ingest": {"max_payload_bytes": 512, **(ingest or {})},
            "storage": {"flush_interval": "PT0.05S", **storage},
            "devices": [
                {
                    "id": "meter1",
                    "protocol": "mqtt",
                    "points": [
                        {"point": "active_power_w", "valid_range": [-100000, 100000]},
                        {"point": "voltage_l1_v", "valid_range": [0, 400]},
                    ],
                }
            ],
        }
    )


def new_site() -> str:
    return f"site-{uuid.uuid4().hex[:8]}"


async def eventually(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 -- the counters have no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(StorageConfig(path=tmp_path / "ingest.db"), tmp_path) as opened:
        yield opened


@asynccontextmanager
async def publisher(broker: BrokerAddress) -> AsyncIterator[BusClient]:
    async with BusClient(broker, f"pub-{uuid.uuid4().hex[:8]}") as client:
        await client.wait_connected(5)
        yield client


@asynccontextmanager
async def dead_letters(broker: BrokerAddress, site: str) -> AsyncIterator[list[DeadLetter]]:
    """Collects the site's dead letters while the block runs."""
    got: list[DeadLetter] = []
    async with BusClient(broker, f"dl-{uuid.uuid4().hex[:8]}") as client:
        await client.wait_connected(5)
        await client.subscribe(str(Topic.deadletter(site)))

        async def collect() -> None:
            async for message in client.messages():
                got.append(decode_dead_letter(message.payload))

        task = asyncio.create_task(collect())
        try:
            yield got
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def stored(storage: Storage, site: str, point: str, device: str = "meter1") -> list[float]:
    rows = await storage.history(SeriesKey(site, device, point), NOW - DAY, NOW + DAY)
    return [row.value for row in rows]


def telemetry(values: dict[str, Any], ts: Any = NOW) -> bytes:
    return json.dumps({"ts": ts, "values": values}).encode()


async def test_telemetry_is_validated_batched_and_stored(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    config = site_config(site, batch_size=100)
    async with IngestService(config, mosquitto, storage, clock=clock) as ingest:
        # a plain subscription by default (a shared one loses messages over a broker restart)
        assert ingest.topic_filter == f"gridpilot/v1/{site}/+/telemetry"
        async with publisher(mosquitto) as pub:
            topic = str(Topic.telemetry(site, "meter1"))
            for i in range(300):
                payload = encode_telemetry(
                    NOW - 300_000 + i * 1000,
                    {"active_power_w": float(i), "voltage_l1_v": 230},
                    seq=i,
                )
                await pub.publish(topic, payload)
            await eventually(lambda: ingest.stats.samples_written == 600)
    stats = ingest.stats
    assert stats.messages == 300
    assert stats.messages_rejected == 0
    assert stats.duplicates == 0
    assert 6 <= stats.batches < 300  # batched, at most batch_size samples each
    assert stats.buffered_samples == 0
    assert await stored(storage, site, "active_power_w") == [float(i) for i in range(300)]


def bad_input_cases() -> list[Any]:
    """(payload, device, reason, points kept): one per kind of bad input of the contract."""
    ok = {"voltage_l1_v": 231.0}
    cases = [
        ("not-json", b"\xff\x00 not json", "meter1", RejectReason.NOT_JSON, []),
        ("not-object", b"[1, 2, 3]", "meter1", RejectReason.NOT_OBJECT, []),
        (
            "missing-values",
            json.dumps({"ts": NOW}).encode(),
            "meter1",
            RejectReason.MISSING_VALUES,
            [],
        ),
        (
            "boolean",
            telemetry({"active_power_w": True, **ok}),
            "meter1",
            RejectReason.WRONG_TYPE,
            ["voltage_l1_v"],
        ),
        (
            "text",
            telemetry({"active_power_w": "41 kW", **ok}),
            "meter1",
            RejectReason.WRONG_TYPE,
            ["voltage_l1_v"],
        ),
        (
            "nan",
            json.dumps({"ts": NOW, "values": {"active_power_w": math.nan, **ok}}).encode(),
            "meter1",
            RejectReason.NOT_FINITE,
            ["voltage_l1_v"],
        ),
        (
            "infinity",
            b'{"ts": 1795694400000, "values": {"active_power_w": -Infinity, "voltage_l1_v": 231}}',
            "meter1",
            RejectReason.NOT_FINITE,
            ["voltage_l1_v"],
        ),
        (
            "out-of-range",
            telemetry({"active_power_w": 2e6, **ok}),
            "meter1",
            RejectReason.OUT_OF_RANGE,
            ["voltage_l1_v"],
        ),
        ("future-ts", telemetry(ok, ts=NOW + 3_600_000), "meter1", RejectReason.FUTURE_TS, []),
        ("bad-ts", telemetry(ok, ts="half past noon"), "meter1", RejectReason.BAD_TS, []),
        (
            "oversized",
            telemetry({**ok, "note_count": 1}) + b" " * 600,
            "meter1",
            RejectReason.OVERSIZED,
            [],
        ),
        ("unknown-device", telemetry(ok), "meter9", RejectReason.UNKNOWN_DEVICE, []),
        (
            "unknown-point",
            telemetry({"frequency_hz": 50.0, **ok}),
            "meter1",
            RejectReason.UNKNOWN_POINT,
            ["voltage_l1_v"],
        ),
        (
            "bad-point-name",
            telemetry({"Active Power": 5.0, **ok}),
            "meter1",
            RejectReason.BAD_POINT_NAME,
            ["voltage_l1_v"],
        ),
    ]
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


@pytest.mark.parametrize(("payload", "device", "reason", "kept"), bad_input_cases())
async def test_bad_input_is_counted_dead_lettered_and_valid_siblings_kept(  # noqa: PLR0917 -- pytest passes these by name
    mosquitto: BrokerAddress,
    storage: Storage,
    payload: bytes,
    device: str,
    reason: RejectReason,
    kept: Sequence[str],
) -> None:
    site = new_site()
    topic = str(Topic.telemetry(site, device))
    async with (
        IngestService(site_config(site), mosquitto, storage, clock=clock) as ingest,
        dead_letters(mosquitto, site) as letters,
        publisher(mosquitto) as pub,
    ):
        await pub.publish(topic, payload)
        # A good message after the bad one: the service goes on.
        await pub.publish(
            str(Topic.telemetry(site, "meter1")), telemetry({"active_power_w": 1.0}, ts=NOW + 1)
        )
        await eventually(lambda: ingest.stats.messages == 2 and ingest.stats.buffered_samples == 0)
        await eventually(lambda: len(letters) == 1)

    stats = ingest.stats
    assert stats.messages_rejected == 1
    assert stats.rejections[reason] == 1
    assert sum(stats.rejections.values()) == 1
    assert stats.dead_letters == 1

    [letter] = letters
    assert letter.topic == topic
    assert letter.reasons == [reason.value]
    assert letter.received_at_ms == NOW
    if reason is RejectReason.OVERSIZED:
        assert letter.payload_truncated
        assert letter.payload == payload[:512]
        assert letter.payload_bytes == len(payload)
    else:
        assert letter.payload == payload  # binary payloads travel base64-encoded, intact
    assert all(item.detail for item in letter.rejections)

    for point in kept:
        assert await stored(storage, site, point) == [231.0]
    assert await stored(storage, site, "active_power_w") == [1.0]
    assert stats.samples_written == len(kept) + 1


async def test_binary_payloads_are_base64_in_the_dead_letter(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    raw = bytes(range(200, 256))
    async with (
        IngestService(site_config(site), mosquitto, storage, clock=clock),
        BusClient(mosquitto, f"raw-{uuid.uuid4().hex[:8]}") as watch,
        publisher(mosquitto) as pub,
    ):
        await watch.subscribe(str(Topic.deadletter(site)))
        await pub.publish(str(Topic.telemetry(site, "meter1")), raw)
        async with asyncio.timeout(10):
            message = await anext(watch.messages())
    doc = json.loads(message.payload)
    assert doc["payload_encoding"] == "base64"
    assert base64.b64decode(doc["payload"]) == raw
    assert doc["reasons"] == ["not_json"]
    assert doc["rejections"] == [
        {"point": None, "reason": "not_json", "detail": doc["rejections"][0]["detail"]}
    ]


async def test_the_same_message_twice_is_stored_once(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    payload = encode_telemetry(NOW, {"active_power_w": 5.0, "voltage_l1_v": 230.0}, seq=7)
    async with (
        IngestService(site_config(site), mosquitto, storage, clock=clock) as ingest,
        publisher(mosquitto) as pub,
    ):
        await pub.publish(str(Topic.telemetry(site, "meter1")), payload)
        await pub.publish(str(Topic.telemetry(site, "meter1")), payload)
        await eventually(lambda: ingest.stats.samples_written + ingest.stats.duplicates == 4)
    assert ingest.stats.samples_written == 2
    assert ingest.stats.duplicates == 2
    assert await stored(storage, site, "active_power_w") == [5.0]


async def test_site_events_are_stored_once_and_non_events_counted(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    alarm = orjson.dumps(
        {"ts": "2026-11-26T12:00:00.000Z", "level": "alarm", "source": "gateway/meter1",
         "message": "meter1 offline after 2 failed poll(s): refused"}
    )  # fmt: skip
    controller = orjson.dumps(  # the controller says "kind" and has no level
        {"ts": "2026-11-26T12:00:01.000Z", "kind": "warning", "source": "controller/peak",
         "message": "battery empty"}
    )  # fmt: skip
    async with (
        IngestService(site_config(site), mosquitto, storage, clock=clock) as ingest,
        publisher(mosquitto) as pub,
    ):
        for payload in (alarm, alarm, controller, b"not json", b'{"no": "message"}'):
            await pub.publish(str(Topic.events(site)), payload)
        await eventually(lambda: ingest.stats.events_rejected == 2)
        await eventually(lambda: ingest.stats.events_stored == 2)
    events = await storage.events(site, limit=10)
    assert [(e.level, e.source, e.message) for e in events] == [
        ("warning", "controller/peak", "battery empty"),
        ("alarm", "gateway/meter1", "meter1 offline after 2 failed poll(s): refused"),
    ]
    assert events[1].ts_ms == parse_timestamp_ms("2026-11-26T12:00:00.000Z")


class GatedStorage:
    """A real storage behind a switch: while closed, writes fail like an unreachable backend."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.open = False
        self.failed_writes = 0

    async def write(self, samples: Sequence[Sample]) -> WriteResult:
        if not self.open:
            self.failed_writes += 1
            raise StorageUnavailable("disk unplugged (test)")
        return await self.inner.write(samples)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_storage_outage_fills_a_bounded_buffer_and_nothing_is_lost(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    gated = GatedStorage(storage)
    config = site_config(site, batch_size=10, max_buffered=40)
    topic = str(Topic.telemetry(site, "meter1"))
    async with (
        IngestService(config, mosquitto, gated, clock=clock) as ingest,  # type: ignore[arg-type]
        publisher(mosquitto) as pub,
    ):
        for i in range(100):
            await pub.publish(
                topic,
                encode_telemetry(NOW - i, {"active_power_w": float(i), "voltage_l1_v": 230.0}),
            )
        await pub.flush(10)
        peak = 0
        for _ in range(50):  # watch the buffer for half a second of outage
            peak = max(peak, ingest.stats.buffered_samples)
            await asyncio.sleep(0.01)
        assert 0 < peak <= 40
        assert ingest.stats.samples_written == 0
        assert gated.failed_writes >= 2  # retried
        gated.open = True
        await eventually(lambda: ingest.stats.samples_written == 200)
    assert ingest.stats.storage_errors == gated.failed_writes
    assert sorted(await stored(storage, site, "active_power_w")) == [float(i) for i in range(100)]


class RefusingStorage:
    """A real storage that refuses, as invalid, every batch holding voltage_l1_v = 399 V,
    a refusal validation can never let happen; it stands in for a backend bug."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.refusals = 0

    async def write(self, samples: Sequence[Sample]) -> WriteResult:
        if any(s.point == "voltage_l1_v" and s.value == 399.0 for s in samples):
            self.refusals += 1
            raise ValueError("voltage_l1_v = 399 is not storable (test)")
        return await self.inner.write(samples)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_batch_storage_refuses_is_counted_and_ingest_goes_on(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    refusing = RefusingStorage(storage)
    topic = str(Topic.telemetry(site, "meter1"))
    async with (
        IngestService(site_config(site, batch_size=2), mosquitto, refusing, clock=clock) as ingest,  # type: ignore[arg-type]
        publisher(mosquitto) as pub,
    ):
        await pub.publish(
            topic, encode_telemetry(NOW, {"active_power_w": 1.0, "voltage_l1_v": 399.0})
        )
        await eventually(lambda: ingest.stats.storage_rejected == 2)
        await pub.publish(
            topic, encode_telemetry(NOW + 1, {"active_power_w": 2.0, "voltage_l1_v": 230.0})
        )
        await eventually(lambda: ingest.stats.samples_written == 2)
    assert refusing.refusals == 1  # not retried forever
    assert ingest.stats.storage_errors == 0
    assert await stored(storage, site, "active_power_w") == [2.0]


async def test_messages_not_yet_stored_are_redelivered_to_the_next_ingest(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    # Ingest acknowledges a message only after its samples are committed: if it stops
    # before that, the broker keeps the message for the next ingest with the same id.
    site = new_site()
    gated = GatedStorage(storage)
    config = site_config(site)
    topic = str(Topic.telemetry(site, "meter1"))
    async with publisher(mosquitto) as pub:
        async with IngestService(
            config, mosquitto, gated, clock=clock, stop_timeout_s=0.2
        ) as first:  # type: ignore[arg-type]
            for i in range(20):
                await pub.publish(topic, encode_telemetry(NOW - i, {"active_power_w": float(i)}))
            await eventually(lambda: first.stats.messages == 20)
        assert first.stats.samples_written == 0
        async with IngestService(config, mosquitto, storage, clock=clock) as second:
            await eventually(lambda: second.stats.samples_written == 20)
    assert sorted(await stored(storage, site, "active_power_w")) == [float(i) for i in range(20)]


async def test_two_ingest_instances_share_the_load(
    mosquitto: BrokerAddress, storage: Storage
) -> None:
    site = new_site()
    config = site_config(site, ingest={"shared_subscription": "on"})  # off by default
    topic = str(Topic.telemetry(site, "meter1"))
    async with (
        IngestService(config, mosquitto, storage, clock=clock, instance="a") as a,
        IngestService(config, mosquitto, storage, clock=clock, instance="b") as b,
        publisher(mosquitto) as pub,
    ):
        for i in range(200):
            await pub.publish(topic, encode_telemetry(NOW - i, {"active_power_w": float(i)}))
        await eventually(lambda: a.stats.samples_written + b.stats.samples_written == 200)
    assert a.stats.messages + b.stats.messages == 200  # each message went to one of them
    assert a.stats.messages > 0
    assert b.stats.messages > 0
    assert len(await stored(storage, site, "active_power_w")) == 200


async def test_ingest_through_the_embedded_broker(storage: Storage) -> None:
    site = new_site()
    async with (
        EmbeddedBroker(port=0) as broker,
        IngestService(
            site_config(site), broker.address, storage, clock=clock, embedded_broker=True
        ) as ingest,
    ):
        assert ingest.topic_filter == f"gridpilot/v1/{site}/+/telemetry"  # amqtt ignores $share
        async with publisher(broker.address) as pub:
            for i in range(20):
                await pub.publish(
                    str(Topic.telemetry(site, "meter1")),
                    encode_telemetry(NOW - i, {"voltage_l1_v": 230.0 + i}),
                )
            await eventually(lambda: ingest.stats.samples_written == 20)
    assert len(await stored(storage, site, "voltage_l1_v")) == 20


def test_shared_subscription_setting() -> None:
    site = "s1"
    storage: Any = object()
    broker = BrokerAddress("127.0.0.1", 1)
    shared = f"$share/{SHARED_GROUP}/gridpilot/v1/s1/+/telemetry"
    plain = "gridpilot/v1/s1/+/telemetry"
    for mode, embedded, expected in [
        ("auto", False, shared),
        ("auto", True, plain),
        ("on", True, shared),
        ("off", False, plain),
    ]:
        config = site_config(site, ingest={"shared_subscription": mode})
        service = IngestService(config, broker, storage, embedded_broker=embedded)
        assert service.topic_filter == expected, (mode, embedded)


async def test_ingest_started_before_the_broker_catches_up(
    tmp_path: Path, free_port: int, storage: Storage
) -> None:
    site = new_site()
    server = MosquittoServer(tmp_path, port=free_port)  # not started yet
    try:
        async with asyncio.timeout(3):  # a broker that is down does not hold the start
            ingest = await IngestService(
                site_config(site), server.address, storage, clock=clock
            ).__aenter__()
        try:
            assert not ingest.bus.connected
            subscribed = asyncio.Event()

            async def on_connect() -> None:  # runs once subscriptions are in place
                subscribed.set()

            ingest.bus.on_connect(on_connect)
            server.start()
            async with asyncio.timeout(10):
                await subscribed.wait()
            async with publisher(server.address) as pub:
                topic = str(Topic.telemetry(site, "meter1"))
                await pub.publish(topic, telemetry({"active_power_w": 3.0}))
                await eventually(lambda: ingest.stats.samples_written == 1)
        finally:
            await ingest.stop()
    finally:
        server.stop()


async def test_refused_credentials_fail_the_start(tmp_path: Path, storage: Storage) -> None:
    server = MosquittoServer(tmp_path, anonymous=False)
    server.start()
    try:
        with pytest.raises(BusRefusedError, match="refused"):
            async with IngestService(site_config(new_site()), server.address, storage, clock=clock):
                pass
    finally:
        server.stop()
