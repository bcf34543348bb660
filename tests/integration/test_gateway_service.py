"""GatewayService with in-memory fake devices (a real driver interface, real registers,
controllable delays and faults) and the session's real Mosquitto.

The fakes make the timing cases deterministic: a slow device, a device that clamps its
setpoint, one that refuses writes, one whose readings leave their valid range.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.config import DeviceConfig, GridPilotConfig
from gridpilot.fieldbus.codec import RegisterSpec, decode, encode
from gridpilot.fieldbus.errors import ConnectionRefused, DeviceRejected, FieldbusError
from gridpilot.fieldbus.planner import ReadBlock
from gridpilot.gateway.service import COMMAND_QUEUE_SIZE, GatewayService
from gridpilot.model import DataType, Table, now_ms, to_rfc3339
from tests.integration.test_gateway_support import Observer, Record, observing

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2


class FakeDevice:
    """Registers in a dict; reads take ``delay_s``; faults are set by the test."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.registers: dict[tuple[Table, int], int] = {}
        self.delay_s = delay_s
        self.write_delay_s = delay_s / 4
        self.down = False
        self.write_error: FieldbusError | None = None
        self.limit: Callable[[float], float] | None = None
        self.reads = 0
        self.writes: list[tuple[str, list[int]]] = []
        self.closed = 0

    def set(self, spec: RegisterSpec, value: float) -> None:
        for i, word in enumerate(encode(spec, value)):
            self.registers[(spec.table, spec.address + i)] = word

    async def read_block(self, block: ReadBlock) -> list[int]:
        await asyncio.sleep(self.delay_s)
        if self.down:
            raise ConnectionRefused("fake: connection refused")
        self.reads += 1
        return [
            self.registers.get((block.table, a), 0)
            for a in range(block.address, block.address + block.count)
        ]

    async def write(self, spec: RegisterSpec, words: Sequence[int]) -> None:
        await asyncio.sleep(self.write_delay_s)
        if self.down:
            raise ConnectionRefused("fake: connection refused")
        if self.write_error is not None:
            raise self.write_error
        self.writes.append((spec.point, list(words)))
        value = decode(spec, list(words))
        assert isinstance(value, float)
        # A device that limits its setpoint stores the limited value.
        self.set(spec, self.limit(value) if self.limit else value)

    async def close(self) -> None:
        self.closed += 1


SETPOINT = RegisterSpec("active_power_setpoint_w", Table.HOLDING, 0, DataType.INT32)
TEMPERATURE = RegisterSpec("temperature_degc", Table.INPUT, 0, DataType.INT16, scale=0.1)


def device(device_id: str) -> dict[str, object]:
    return {
        "id": device_id,
        "host": "127.0.0.1",
        "poll_interval": INTERVAL_S,
        "timeout": 0.5,
        "retries": 0,
        "points": [
            {
                "point": "active_power_setpoint_w",
                "address": 0,
                "type": "int32",
                "writable": True,
                "valid_range": [-50000, 50000],
            },
            {
                "point": "temperature_degc",
                "table": "input",
                "address": 0,
                "type": "int16",
                "scale": 0.1,
                "valid_range": [-20, 60],
            },
        ],
    }


@pytest.fixture
def site_id() -> str:
    return f"fake-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


@asynccontextmanager
async def running(
    mosquitto: BrokerAddress,
    observer: Observer,
    site_id: str,
    fakes: dict[str, FakeDevice],
) -> AsyncIterator[GatewayService]:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": site_id},
            "gateway": {"id": "gw", "max_backoff": 1},
            "devices": [device(d) for d in fakes],
        }
    )

    def connector(device: DeviceConfig) -> FakeDevice:
        return fakes[device.id]

    async with GatewayService(
        config, mosquitto, connector=connector, state_interval=timedelta(seconds=1)
    ) as service:
        await observer.wait_for(lambda r: r.device == "gw" and r.json["status"] == "online")
        yield service


def command(point: str, value: float, expires_in_ms: int = 10_000) -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex,
        "point": point,
        "value": value,
        "expires": to_rfc3339(now_ms() + expires_in_ms),
    }


async def result_of(observer: Observer, device: str, cmd_id: object, within: float = 5) -> Record:
    return await observer.wait_for(
        lambda r: r.device == device and r.kind == "command/result" and r.json["id"] == cmd_id,
        within=within,
    )


def telemetry(observer: Observer, device: str, after: int = -1) -> Callable[[Record], bool]:
    return lambda r: r.device == device and r.kind == "telemetry" and r.index > after


async def test_readback_mismatch_is_failed(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    fake = FakeDevice()
    fake.limit = lambda w: max(w, -30000.0)  # discharges at most 30 kW
    async with running(mosquitto, observer, site_id, {"battery": fake}) as gateway:
        body = command("active_power_setpoint_w", -45000.0)
        await observer.command(site_id, "battery", body)
        answer = (await result_of(observer, "battery", body["id"])).json
        assert answer["status"] == "failed"
        assert answer["code"] == "readback_mismatch"
        assert answer["readback"] == -30000.0
        assert answer["value"] == -45000.0
        assert "differs from the target" in answer["reason"]
        # Within the register's resolution: applied.
        body = command("active_power_setpoint_w", -1000.4)
        await observer.command(site_id, "battery", body)
        answer = (await result_of(observer, "battery", body["id"])).json
        assert answer["status"] == "applied"
        assert answer["readback"] == -1000.0
        health = gateway.health("battery")
        assert health.counters.commands == {"failed": 1, "applied": 1}
        assert health.last_error is not None
        assert health.last_error.kind == "readback"


async def test_write_refused_by_device_is_failed(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    fake = FakeDevice()
    fake.write_error = DeviceRejected("fake: server device failure", 4)
    async with running(mosquitto, observer, site_id, {"battery": fake}) as gateway:
        body = command("active_power_setpoint_w", 100.0)
        await observer.command(site_id, "battery", body)
        answer = (await result_of(observer, "battery", body["id"])).json
        assert answer["status"] == "failed"
        assert answer["code"] == "write_failed"
        assert "exception_4" in answer["reason"]
        state = await observer.wait_for(
            lambda r: (
                r.device == "battery"
                and r.kind == "state"
                and (r.json["last_error"] or {}).get("kind") == "exception_4"
            )
        )
        assert "device failure" in state.json["last_error"]["hint"]
        # A refused write does not make the device offline: it answered.
        assert gateway.health("battery").status == "online"


async def test_out_of_range_readings_are_dropped_and_counted(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    fake = FakeDevice()
    fake.set(TEMPERATURE, 85.0)  # outside [-20, 60]
    fake.set(SETPOINT, 500.0)
    async with running(mosquitto, observer, site_id, {"zone": fake}):
        first = await observer.wait_for(telemetry(observer, "zone"))
        assert first.json["values"] == {"active_power_setpoint_w": 500.0}
        state = await observer.wait_for(
            lambda r: (
                r.device == "zone"
                and r.kind == "state"
                and r.json["counters"]["values_out_of_range"] >= 2
            )
        )
        assert state.json["status"] == "online"
        fake.set(TEMPERATURE, 21.5)
        later = await observer.wait_for(
            lambda r: telemetry(observer, "zone")(r) and "temperature_degc" in r.json["values"]
        )
        assert later.json["values"]["temperature_degc"] == 21.5


async def test_slow_device_delays_only_itself(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    slow, fast = FakeDevice(delay_s=0.35), FakeDevice()
    loop = asyncio.get_running_loop()
    async with running(mosquitto, observer, site_id, {"slow": slow, "fast": fast}) as gateway:
        start = loop.time()
        await asyncio.sleep(2.5)
        fast_times = [r.at for r in observer.of("fast", "telemetry", since=start)]
        gaps = [b - a for a, b in itertools.pairwise(fast_times)]
        # Arrival times at the observer also carry the broker's and the observer's
        # scheduling: one late arrival on a loaded machine is not the slow device's doing
        # (the gateway's own count, ticks_skipped == 0 below, says the fast one never
        # waited). Were polls serialised, every gap would hold the slow device's 0.35 s.
        assert sorted(gaps)[-2] < INTERVAL_S * 1.5 + 0.05, gaps
        assert len(fast_times) >= 2.5 / INTERVAL_S - 2
        # Two blocks of 0.35 s per poll: the slow one skips ticks, without bursts.
        slow_times = [r.at for r in observer.of("slow", "telemetry", since=start)]
        assert min(b - a for a, b in itertools.pairwise(slow_times)) > INTERVAL_S * 0.9
        assert gateway.health("slow").counters.ticks_skipped > 0
        assert gateway.health("fast").counters.ticks_skipped == 0

        # A command to the fast device does not wait for the slow device's poll.
        await asyncio.sleep(0.05)
        slow_body = command("active_power_setpoint_w", 1.0)
        fast_body = command("active_power_setpoint_w", 2.0)
        sent = loop.time()
        await observer.command(site_id, "slow", slow_body)
        await observer.command(site_id, "fast", fast_body)
        fast_result = await result_of(observer, "fast", fast_body["id"])
        slow_result = await result_of(observer, "slow", slow_body["id"])
        assert fast_result.json["status"] == slow_result.json["status"] == "applied"
        assert fast_result.at - sent < 0.2
        assert fast_result.index < slow_result.index


async def test_command_waits_for_current_poll_and_next_telemetry_shows_it(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    slow = FakeDevice(delay_s=0.15)
    slow.set(SETPOINT, 7.0)
    async with running(mosquitto, observer, site_id, {"battery": slow}):
        await observer.wait_for(telemetry(observer, "battery"))
        body = command("active_power_setpoint_w", -1234.0)
        await observer.command(site_id, "battery", body)
        result = await result_of(observer, "battery", body["id"])
        assert result.json["status"] == "applied"
        # Every telemetry published before the result shows the old value, every one
        # after it the new one: the write never interleaves with a poll.
        await observer.wait_for(telemetry(observer, "battery", after=result.index))
        for record in observer.of("battery", "telemetry"):
            value = record.json["values"]["active_power_setpoint_w"]
            assert value == (7.0 if record.index < result.index else -1234.0), record


async def test_command_expiring_while_queued_is_rejected(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    slow = FakeDevice(delay_s=0.6)
    async with running(mosquitto, observer, site_id, {"battery": slow}):
        await asyncio.sleep(0.1)  # the first poll is under way and holds the device
        body = command("active_power_setpoint_w", 10.0, expires_in_ms=300)
        await observer.command(site_id, "battery", body)
        answer = (await result_of(observer, "battery", body["id"])).json
        assert answer["status"] == "rejected"
        assert answer["code"] == "expired"
        assert "while waiting" in answer["reason"]
        assert slow.writes == []


async def test_full_queue_rejects_busy_and_every_command_gets_one_result(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    slow = FakeDevice(delay_s=0.05)
    count = COMMAND_QUEUE_SIZE + 8
    async with running(mosquitto, observer, site_id, {"battery": slow}):
        bodies = [command("active_power_setpoint_w", float(i), 60_000) for i in range(count)]
        for body in bodies:
            await observer.command(site_id, "battery", body)
        answers = [(await result_of(observer, "battery", b["id"], within=30)).json for b in bodies]
    statuses = [a["status"] for a in answers]
    # The queue holds COMMAND_QUEUE_SIZE, and one more may be in the executor's hands.
    assert COMMAND_QUEUE_SIZE <= statuses.count("applied") <= COMMAND_QUEUE_SIZE + 1, statuses
    busy = [a for a in answers if a["code"] == "busy"]
    assert len(busy) == count - statuses.count("applied"), statuses
    assert "already waiting" in busy[0]["reason"]
    results = observer.of("battery", "command/result")
    assert len(results) == count  # exactly one each


async def test_stop_answers_queued_commands(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    slow = FakeDevice(delay_s=0.3)
    bodies = [command("active_power_setpoint_w", float(i)) for i in range(4)]
    async with running(mosquitto, observer, site_id, {"battery": slow}):
        for body in bodies:
            await observer.command(site_id, "battery", body)
        await observer.wait_for(
            lambda r: r.kind == "command/result" and r.json["status"] == "applied", within=5
        )
    answers = [(await result_of(observer, "battery", b["id"])).json for b in bodies]
    assert len(observer.of("battery", "command/result")) == len(bodies)
    codes = [a["code"] for a in answers if a["status"] == "rejected"]
    assert codes, answers  # some were still queued when the gateway stopped
    assert set(codes) == {"stopping"}
    offline = await observer.wait_for(
        lambda r: r.device == "battery" and r.kind == "state" and "reason" in r.json
    )
    assert offline.json["status"] == "offline"
    assert offline.json["reason"] == "gateway stopped"


async def test_dead_device_backs_off_and_recovers(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    dead, alive = FakeDevice(), FakeDevice()
    dead.down = True
    loop = asyncio.get_running_loop()
    async with running(mosquitto, observer, site_id, {"dead": dead, "alive": alive}) as gateway:
        offline = await observer.wait_for(
            lambda r: r.device == "dead" and r.kind == "state" and r.json["last_error"]
        )
        assert offline.json["status"] == "offline"
        assert offline.json["last_error"]["kind"] == "refused"
        # Dead from start-up (never online): still one alarm on the events topic.
        alarm = await observer.wait_for(lambda r: r.topic.endswith("/events"))
        assert alarm.json["level"] == "alarm"
        assert alarm.json["source"] == "gateway/dead"
        assert "refused" in alarm.json["message"]
        start = loop.time()
        polls_before = gateway.health("dead").counters.polls
        await asyncio.sleep(2.0)
        attempts = gateway.health("dead").counters.polls - polls_before
        # 10 ticks passed; with backoff (1, 2, 4 intervals, capped) far fewer attempts.
        assert 2 <= attempts <= 5, attempts
        dead.down = False
        back = await observer.wait_for(
            lambda r: r.device == "dead" and r.kind == "state" and r.json["status"] == "online",
            within=5,
        )
        # max_backoff 1 s: back within one backoff plus one tick.
        assert back.at - start - 2.0 <= 1.0 + INTERVAL_S + 0.1
        assert gateway.health("alive").counters.polls_failed == 0


async def test_hanging_write_fails_with_timeout(
    mosquitto: BrokerAddress, observer: Observer, site_id: str
) -> None:
    hanging = FakeDevice()
    hanging.write_delay_s = 30.0  # the driver never returns; the gateway's guard ends it
    async with running(mosquitto, observer, site_id, {"battery": hanging}) as gateway:
        body = command("active_power_setpoint_w", 5.0)
        await observer.command(site_id, "battery", body)
        answer = (await result_of(observer, "battery", body["id"])).json
        assert answer["status"] == "failed"
        assert answer["code"] == "write_failed"
        assert answer["reason"].startswith("timeout")
        # Polls went on after the guard released the device.
        mark = len(observer.records)
        await observer.wait_for(telemetry(observer, "battery", after=mark))
        assert gateway.health("battery").counters.errors["timeout"] == 1
