"""Modbus RTU framing, pure: CRC-16, frame lengths, and the check of a reply's bytes.

An RTU frame is ``unit | function | data | CRC-16`` (CRC low byte first, poly 0xA001
reflected, init 0xFFFF). Frames have no length field: the length follows from the
function code (and, for reads, from the byte count), which is what ``reply_length`` and
``request_length`` compute. Frames are separated by at least 3.5 character times of silence
(``frame_gap_s``).

The gateway's RTU client is pymodbus'; pymodbus drops a frame whose CRC is wrong without a
word and lets the request time out. ``check_reply`` looks at the same bytes so that a
garbled frame is reported as what it is (``crc``), at once, and bytes that stop short of a
frame are reported as a short reply rather than as silence.

No I/O, no clock: table-tested in ``tests/unit/test_rtu_frame.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()

READ_FUNCTIONS = frozenset({1, 2, 3, 4})
"""Read coils, discrete inputs, holding registers, input registers: reply has a byte count."""
ECHO_FUNCTIONS = frozenset({5, 6, 15, 16})
"""Write single coil/register, write multiple coils/registers: reply echoes 4 bytes."""
EXCEPTION_FLAG = 0x80
MAX_FRAME = 256
"""An RTU frame is at most 256 bytes (unit + 253-byte PDU + CRC)."""
MAX_WRITE_FRAME = 9 + 2 * 123
"""The longest request the gateway sends: write multiple registers (123 of them)."""


def crc16(data: bytes) -> int:
    """The Modbus CRC-16 of ``data`` as an integer (sent low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    """``unit | pdu | CRC`` as sent on the wire."""
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame_bytes: bytes) -> bool:
    """True when the last two bytes are the CRC of the others."""
    if len(frame_bytes) < 4:
        return False
    return crc16(frame_bytes[:-2]) == int.from_bytes(frame_bytes[-2:], "little")


def reply_length(data: bytes) -> int | None:
    """Bytes of the reply frame that ``data`` starts with; None while too few bytes are
    there to tell; 0 when the function code is not one a reply can carry."""
    if len(data) < 2:
        return None
    function = data[1]
    if function & EXCEPTION_FLAG:
        return 5  # unit, function | 0x80, exception code, CRC
    if function in READ_FUNCTIONS:
        if len(data) < 3:
            return None
        return 3 + data[2] + 2
    if function in ECHO_FUNCTIONS:
        return 8
    return 0


def request_length(data: bytes) -> int | None:
    """Bytes of the request frame that ``data`` starts with (for a slave); None while too
    few bytes are there to tell; 0 for a function this module does not frame."""
    if len(data) < 2:
        return None
    function = data[1]
    if function in READ_FUNCTIONS or function in (5, 6):
        return 8  # unit, function, address, count or value, CRC
    if function in (15, 16):
        if len(data) < 7:
            return None
        return 7 + data[6] + 2
    return 0


class ReplyStatus(StrEnum):
    INCOMPLETE = "incomplete"
    """Fewer bytes than the frame needs: keep reading."""
    COMPLETE = "complete"
    """A whole frame with a good CRC, from the unit asked, for the function asked."""
    CRC = "crc"
    """A whole frame whose CRC does not match: garbled on the line."""
    MALFORMED = "malformed"
    """Not a reply to this request: another unit, another function, a function no reply
    carries, or a byte count that does not fit a frame."""


@dataclass(frozen=True, slots=True)
class ReplyCheck:
    status: ReplyStatus
    message: str = ""
    expected: int | None = None
    """Length of the frame, when it is known."""


def check_reply(data: bytes, unit: int, function: int) -> ReplyCheck:
    """Judge the bytes received so far in answer to ``function`` sent to ``unit``.

    The CRC is checked before the unit and function: a flipped bit anywhere in the frame
    is line noise (``crc``); only a frame that arrived intact and still does not answer
    the request is ``malformed``.
    """
    length = reply_length(data)
    if length is None:
        return ReplyCheck(ReplyStatus.INCOMPLETE)
    if length == 0 or length > MAX_FRAME:
        if len(data) >= 4 and _any_frame_crc_ok(data):
            return ReplyCheck(
                ReplyStatus.MALFORMED,
                f"reply with function code {data[1]} to a request with function {function}",
            )
        return ReplyCheck(ReplyStatus.CRC, f"garbled reply ({data[:8].hex(' ')}...)")
    if len(data) < length:
        return ReplyCheck(ReplyStatus.INCOMPLETE, expected=length)
    whole = data[:length]
    if not crc_ok(whole):
        return ReplyCheck(
            ReplyStatus.CRC,
            f"CRC mismatch in a {length}-byte reply ({whole.hex(' ')})",
            length,
        )
    if data[0] != unit:
        return ReplyCheck(
            ReplyStatus.MALFORMED, f"reply from unit {data[0]}, expected unit {unit}", length
        )
    if data[1] & ~EXCEPTION_FLAG != function:
        return ReplyCheck(
            ReplyStatus.MALFORMED,
            f"reply with function {data[1] & ~EXCEPTION_FLAG}, expected {function}",
            length,
        )
    return ReplyCheck(ReplyStatus.COMPLETE, expected=length)


def _any_frame_crc_ok(data: bytes) -> bool:
    return any(crc_ok(data[:end]) for end in range(4, min(len(data), MAX_FRAME) + 1))


def char_bits(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the wire per character: start + data + parity + stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def frame_gap_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """The silence that ends a frame: 3.5 character times, or 1.75 ms above 19200 baud
    (the Modbus serial line specification fixes it there for high rates)."""
    if baudrate > 19_200:
        return 0.00175
    return 3.5 * char_bits(bytesize, parity, stopbits) / baudrate
