"""The simulated RTU slave's request handling (pure): reads, writes, exceptions."""

from __future__ import annotations

from gridpilot.model import Table
from gridpilot.sim.rtu import respond
from tests.integration.test_modbus_rtu_support import unit_image


def test_read_holding_registers() -> None:
    image = unit_image("m", 2)
    reply, applied = respond(image, bytes.fromhex("03 0000 0004"))
    # 232.0 V x10, 20.00 A x100, -2000 W as int32 big-endian
    assert reply == bytes.fromhex("03 08 0910 07d0 ffff f830")
    assert applied == []


def test_out_of_the_map_is_illegal_data_address() -> None:
    image = unit_image("m", 1)
    assert respond(image, bytes.fromhex("03 0064 0002"))[0] == bytes.fromhex("83 02")
    assert respond(image, bytes.fromhex("04 0000 0001"))[0] == bytes.fromhex("84 02")
    assert respond(image, bytes.fromhex("03 0000 007e"))[0] == bytes.fromhex("83 03")  # 126
    assert respond(image, bytes.fromhex("2b 0e"))[0] == bytes.fromhex("ab 01")


def test_writes_are_checked_applied_and_echoed() -> None:
    image = unit_image("m", 1)
    reply, applied = respond(image, bytes.fromhex("06 000a 0037"))
    assert reply == bytes.fromhex("06 000a 0037")
    assert [(a.point.name, a.value) for a in applied] == [("power_limit_pct", 55.0)]
    assert image.read(Table.HOLDING, 10, 1) == [55]
    reply, applied = respond(image, bytes.fromhex("10 000a 0001 02 0014"))
    assert reply == bytes.fromhex("10 000a 0001")
    assert image.read(Table.HOLDING, 10, 1) == [20]
    # Outside the valid range (0..100): illegal data value; read-only register: address.
    assert respond(image, bytes.fromhex("06 000a 00c8"))[0] == bytes.fromhex("86 03")
    assert respond(image, bytes.fromhex("06 0000 0001"))[0] == bytes.fromhex("86 02")
    assert image.read(Table.HOLDING, 10, 1) == [20]
