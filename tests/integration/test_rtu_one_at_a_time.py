"""A serial bus carries one request at a time, however many units are polled at once:
every attempt holds the bus' lock from request to reply (``modbus_rtu.RtuBus``). Checked on
the wire, with real frames on a pseudo-terminal line whose replies are held back."""

from __future__ import annotations

import asyncio

import pytest

from gridpilot.fieldbus.codec import decode
from gridpilot.fieldbus.modbus_rtu import ModbusRtuDevice, RtuBus, SerialLine
from gridpilot.fieldbus.planner import extract, plan_reads
from tests.integration.test_modbus_rtu_support import rtu_line, unit_image, unit_map

pytestmark = pytest.mark.integration

UNITS = (1, 2, 3)
READS_PER_UNIT = 8


async def test_units_polled_at_once_take_turns_on_the_line() -> None:
    images = [unit_image(f"unit{u}", u) for u in UNITS]
    async with rtu_line(images) as (line, slaves):
        line.reply_delay_s = 0.01  # each reply lingers: room for a second request to sneak in
        bus = RtuBus("rs485", line=SerialLine(line.gateway_port, parity="N"))
        devices = [ModbusRtuDevice(bus, u, timeout_s=1.0, retries=0) for u in UNITS]
        block = plan_reads([p.spec for p in unit_map("u", 1).points if not p.writable])[0]
        voltage = next(s for s in block.specs if s.point == "voltage_v")
        try:
            # Every unit's reads at once, as the gateway's poll tasks issue them.
            results = await asyncio.gather(
                *(d.read_block(block) for d in devices for _ in range(READS_PER_UNIT))
            )
        finally:
            bus.drop()
    expected = len(UNITS) * READS_PER_UNIT
    # Every read answered, by its own unit.
    volts = [decode(voltage, extract(block, words, voltage)) for words in results]
    assert volts == pytest.approx(
        [230.0 + u for u in UNITS for _ in range(READS_PER_UNIT)], abs=0.05
    )
    assert sum(slaves.requests.values()) == expected
    # On the wire: request, reply, request, reply... -- never two requests in one turn
    # (the units saw exactly one request frame per turn: ``expected`` of each).
    assert line.turns() == ["request", "reply"] * expected
    assert slaves.bad_frames == 0
