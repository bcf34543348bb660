"""RTU framing: CRC-16 on known frames, frame lengths, and the verdict on a reply's bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.fieldbus.rtu_frame import (
    ReplyStatus,
    check_reply,
    crc16,
    crc_ok,
    frame,
    frame_gap_s,
    reply_length,
    request_length,
)

# Frames from the examples of the Modbus serial line specification and from pymodbus'
# encoder and server (the last two bytes are the CRC, low byte first).
READ_REQUEST = bytes.fromhex("01 03 00 00 00 0a c5 cd")  # unit 1, FC3, 10 registers at 0
READ_REPLY = bytes.fromhex("01 03 06 00 0a 00 0b 00 0c c8 b3")  # 10, 11, 12
EXCEPTION_REPLY = bytes.fromhex("01 83 02 c0 f1")  # illegal data address
WRITE_ECHO = bytes.fromhex("11 06 00 01 00 03 9a 9b")  # unit 17, FC6, register 1 = 3


@pytest.mark.parametrize("captured", [READ_REQUEST, READ_REPLY, EXCEPTION_REPLY, WRITE_ECHO])
def test_crc_of_captured_frames(captured: bytes) -> None:
    assert crc16(captured[:-2]).to_bytes(2, "little") == captured[-2:]
    assert crc_ok(captured)
    assert frame(captured[0], captured[1:-2]) == captured


def test_crc_check_value() -> None:
    # The CRC-16/MODBUS check value of "123456789".
    assert crc16(b"123456789") == 0x4B37


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"", None),
        (b"\x01", None),
        (b"\x01\x03", None),  # a read reply needs its byte count
        (READ_REPLY[:3], 11),
        (READ_REPLY, 11),
        (EXCEPTION_REPLY[:2], 5),
        (WRITE_ECHO[:2], 8),
        (bytes([1, 0x10]), 8),  # write multiple: address + count echoed
        (bytes([1, 0x2B]), 0),  # a function this module does not frame
    ],
)
def test_reply_length(data: bytes, length: int | None) -> None:
    assert reply_length(data) == length


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (READ_REQUEST[:1], None),
        (READ_REQUEST[:2], 8),
        (bytes.fromhex("01 10 00 00 00 02"), None),  # byte count not there yet
        (bytes.fromhex("01 10 00 00 00 02 04"), 13),
        (bytes([1, 0x2B]), 0),
    ],
)
def test_request_length(data: bytes, length: int | None) -> None:
    assert request_length(data) == length


@pytest.mark.parametrize(
    ("data", "unit", "function", "status"),
    [
        (READ_REPLY[:5], 1, 3, ReplyStatus.INCOMPLETE),
        (READ_REPLY, 1, 3, ReplyStatus.COMPLETE),
        (READ_REPLY + b"\x00", 1, 3, ReplyStatus.COMPLETE),  # trailing noise is pymodbus'
        (EXCEPTION_REPLY, 1, 3, ReplyStatus.COMPLETE),  # an exception answers the request
        (READ_REPLY[:-1] + b"\x00", 1, 3, ReplyStatus.CRC),
        (READ_REPLY, 2, 3, ReplyStatus.MALFORMED),  # another unit's reply
        (READ_REPLY, 1, 4, ReplyStatus.MALFORMED),  # to another function
        (frame(1, bytes([0x2B, 0x0E])), 1, 3, ReplyStatus.MALFORMED),  # intact, not a reply
        (bytes.fromhex("01 2b 17 55 aa"), 1, 3, ReplyStatus.CRC),  # noise
    ],
)
def test_check_reply(data: bytes, unit: int, function: int, status: ReplyStatus) -> None:
    assert check_reply(data, unit, function).status is status


def test_a_crc_error_says_what_arrived() -> None:
    check = check_reply(READ_REPLY[:-1] + b"\x00", 1, 3)
    assert check.message == f"CRC mismatch in a 11-byte reply ({READ_REPLY[:-1].hex(' ')} 00)"
    assert check.expected == 11


@given(
    unit=st.integers(1, 247),
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    position=st.integers(0, 300),
    flip=st.integers(1, 255),
)
def test_any_single_damaged_byte_is_never_taken_for_a_reply(
    unit: int, registers: list[int], position: int, flip: int
) -> None:
    data = b"".join(r.to_bytes(2, "big") for r in registers)
    reply = frame(unit, bytes([3, len(data)]) + data)
    assert check_reply(reply, unit, 3).status is ReplyStatus.COMPLETE
    damaged = bytearray(reply)
    damaged[position % len(reply)] ^= flip
    # CRC-16 catches every burst of up to 16 bits; a damaged byte count may leave the
    # frame looking incomplete (then the timeout reports a short reply).
    assert check_reply(bytes(damaged), unit, 3).status is not ReplyStatus.COMPLETE


def test_frame_gap() -> None:
    # 3.5 characters of 11 bits (8E1) at 9600 baud: ~4.01 ms; fixed 1.75 ms above 19200.
    assert frame_gap_s(9600, 8, "E", 1) == pytest.approx(3.5 * 11 / 9600)
    assert frame_gap_s(9600, 8, "N", 1) == pytest.approx(3.5 * 10 / 9600)
    assert frame_gap_s(115_200) == 0.00175
