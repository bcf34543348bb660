"""Modbus RTU driver against simulated units on a pseudo-terminal line: real bytes, real
CRCs, faults injected on the wire (see test_modbus_rtu_support)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from gridpilot.fieldbus.codec import decode
from gridpilot.fieldbus.errors import (
    CrcError,
    DeviceRejected,
    DeviceTimeout,
    PortBusy,
    PortUnavailable,
    ShortReply,
)
from gridpilot.fieldbus.modbus_rtu import ModbusRtuDevice, RtuBus, SerialLine
from gridpilot.fieldbus.planner import ReadBlock, extract, plan_reads
from gridpilot.model import Table
from gridpilot.sim.rtu import RtuSlaveBus
from tests.integration.test_modbus_rtu_support import Line, rtu_line, unit_image, unit_map

pytestmark = pytest.mark.integration

MAP = unit_map("unit", 1)
MEASUREMENTS = [p.spec for p in MAP.points if not p.writable]
BLOCK = plan_reads(MEASUREMENTS, max_gap=0)[0]
SETPOINT = MAP.point("power_limit_pct").spec


@pytest.fixture
async def line() -> AsyncIterator[tuple[Line, RtuSlaveBus]]:
    images = [unit_image(f"unit{u}", u) for u in (1, 2, 3)]
    async with rtu_line(images) as running:
        yield running


def serial_bus(line: Line) -> RtuBus:
    return RtuBus("rs485", line=SerialLine(line.gateway_port, parity="N"))


def values(words: list[int], block: ReadBlock = BLOCK) -> dict[str, float]:
    return {spec.point: decode(spec, extract(block, words, spec)) for spec in block.specs}


async def test_several_units_on_one_port_are_each_read(line: tuple[Line, RtuSlaveBus]) -> None:
    relay, units = line
    bus = serial_bus(relay)
    devices = [ModbusRtuDevice(bus, u, timeout_s=0.5, retries=0) for u in (1, 2, 3)]
    try:
        # Asked all at once: the bus lock puts them on the line one after the other.
        replies = await asyncio.gather(*(d.read_block(BLOCK) for d in devices))
        for unit, words in zip((1, 2, 3), replies, strict=True):
            assert values(words) == {
                "voltage_v": pytest.approx(230.0 + unit),
                "current_a": pytest.approx(10.0 * unit),
                "active_power_w": -1000.0 * unit,
            }
        assert units.requests == {1: 1, 2: 1, 3: 1}
        # One request on the line at a time: each reply came before the next request.
        assert relay.turns() == ["request", "reply"] * 3
        assert units.bad_frames == 0
        assert all(not d.error_counts for d in devices)
    finally:
        bus.drop()


async def test_a_write_reaches_its_unit_only(line: tuple[Line, RtuSlaveBus]) -> None:
    relay, units = line
    bus = serial_bus(relay)
    try:
        await ModbusRtuDevice(bus, 2, timeout_s=0.5).write(SETPOINT, [55])
        block = plan_reads([SETPOINT], max_gap=0)[0]
        assert await ModbusRtuDevice(bus, 2, timeout_s=0.5).read_block(block) == [55]
        assert await ModbusRtuDevice(bus, 1, timeout_s=0.5).read_block(block) == [100]
        assert units.units[2].read(Table.HOLDING, 10, 1) == [55]
    finally:
        bus.drop()


async def test_a_garbled_reply_is_a_crc_error_at_once_and_counted(
    line: tuple[Line, RtuSlaveBus],
) -> None:
    relay, _ = line
    relay.corrupt_units = {2}
    bus = serial_bus(relay)
    timeout_s = 2.0
    garbled = ModbusRtuDevice(bus, 2, timeout_s=timeout_s, retries=1, backoff_s=0.01)
    healthy = ModbusRtuDevice(bus, 1, timeout_s=timeout_s, retries=1)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(CrcError, match=r"unit 2: CRC mismatch"):
            await garbled.read_block(BLOCK)
        # Reported as the frame completed, not after pymodbus' silent drop and a timeout.
        assert loop.time() - started < timeout_s / 2
        assert garbled.error_counts == {"crc": 2}  # the attempt and its retry
        assert relay.corrupted == 2
        assert values(await healthy.read_block(BLOCK))["voltage_v"] == pytest.approx(231.0)
        assert not healthy.error_counts
    finally:
        bus.drop()


async def test_a_reply_cut_short_is_a_short_reply(line: tuple[Line, RtuSlaveBus]) -> None:
    relay, _ = line
    relay.truncate_units = {3}
    bus = serial_bus(relay)
    try:
        device = ModbusRtuDevice(bus, 3, timeout_s=0.2, retries=0)
        with pytest.raises(ShortReply, match=r"stopped after \d+ byte"):
            await device.read_block(BLOCK)
        assert device.error_counts == {"short_reply": 1}
        relay.truncate_units = set()
        assert values(await device.read_block(BLOCK))["current_a"] == pytest.approx(30.0)
    finally:
        bus.drop()


async def test_exception_replies_carry_their_code(line: tuple[Line, RtuSlaveBus]) -> None:
    relay, units = line
    bus = serial_bus(relay)
    try:
        device = ModbusRtuDevice(bus, 1, timeout_s=0.5, retries=1, backoff_s=0.01)
        with pytest.raises(DeviceRejected, match="illegal data address") as refused:
            await device.read_block(ReadBlock(Table.HOLDING, 100, 2, ()))
        assert refused.value.exception_code == 2
        assert device.error_counts == {"exception_2": 1}  # not transient: no retry
        units.busy_units = {1}
        with pytest.raises(DeviceRejected, match="server device busy"):
            await device.read_block(BLOCK)
        assert device.error_counts == {"exception_2": 1, "exception_6": 2}  # busy: retried
    finally:
        bus.drop()


async def test_a_silent_unit_costs_one_timeout_per_call_until_it_answers(
    line: tuple[Line, RtuSlaveBus],
) -> None:
    relay, units = line
    units.silent_units = {3}
    bus = serial_bus(relay)
    loop = asyncio.get_running_loop()
    timeout_s = 0.15
    device = ModbusRtuDevice(bus, 3, timeout_s=timeout_s, retries=2, backoff_s=0.01)
    try:
        with pytest.raises(DeviceTimeout, match="no answer"):
            await device.read_block(BLOCK)
        assert device.error_counts == {"timeout": 3}
        for _ in range(2):
            started = loop.time()
            with pytest.raises(DeviceTimeout):
                await device.read_block(BLOCK)
            # One attempt only: the bus is held for one timeout, not three.
            assert loop.time() - started < 2 * timeout_s
        assert device.error_counts == {"timeout": 5}
        assert units.requests[3] == 5
        units.silent_units = set()
        assert values(await device.read_block(BLOCK))["voltage_v"] == pytest.approx(233.0)
        # Answering again restores its retries.
        units.silent_units = {3}
        with pytest.raises(DeviceTimeout):
            await device.read_block(BLOCK)
        assert device.error_counts == {"timeout": 8}
    finally:
        bus.drop()


async def test_rtu_over_tcp_through_a_converter() -> None:
    images = [unit_image(f"unit{u}", u) for u in (4, 5)]
    async with rtu_line(images, tcp=True) as (relay, _):
        bus = RtuBus("converter", host="127.0.0.1", port=relay.tcp_port)
        try:
            unit4 = ModbusRtuDevice(bus, 4, timeout_s=0.5, retries=0)
            unit5 = ModbusRtuDevice(bus, 5, timeout_s=0.5, retries=0)
            assert values(await unit4.read_block(BLOCK))["active_power_w"] == -4000.0
            assert values(await unit5.read_block(BLOCK))["active_power_w"] == -5000.0
            relay.corrupt_units = {5}
            with pytest.raises(CrcError):
                await unit5.read_block(BLOCK)
            assert values(await unit4.read_block(BLOCK))["active_power_w"] == -4000.0
        finally:
            bus.drop()


async def test_a_port_held_by_another_process_names_that_process(
    line: tuple[Line, RtuSlaveBus],
) -> None:
    relay, _ = line
    holder_code = (
        "import sys, time, serial\n"
        "port = serial.Serial(sys.argv[1], exclusive=True)\n"
        "print('holding', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", holder_code, relay.gateway_port, stdout=asyncio.subprocess.PIPE
    )
    bus = serial_bus(relay)
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(10):
            assert (await holder.stdout.readline()).strip() == b"holding"
        device = ModbusRtuDevice(bus, 1, timeout_s=0.5, retries=0)
        with pytest.raises(PortBusy) as busy:
            await device.read_block(BLOCK)
        message = str(busy.value)
        assert f"{relay.gateway_port} is held by" in message
        assert f"process {holder.pid} ({sys.executable} -c" in message
        assert device.error_counts == {"busy": 1}
        holder.kill()
        await holder.wait()
        # Once the holder is gone the port opens.
        assert values(await device.read_block(BLOCK))["voltage_v"] == pytest.approx(231.0)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        bus.drop()


async def test_a_missing_port_says_so() -> None:
    bus = RtuBus("rs485", line=SerialLine("/dev/ttyNOSUCHPORT", parity="N"))
    device = ModbusRtuDevice(bus, 1, timeout_s=0.5, retries=0)
    with pytest.raises(PortUnavailable, match="no such serial port") as missing:
        await device.read_block(BLOCK)
    assert missing.value.kind == "port"
