"""Simulated devices as Modbus RTU slaves sharing one serial port (multi-drop).

:class:`RtuSlaveBus` opens a serial port (in tests, one end of a pseudo-terminal pair; the
gateway opens the other) and answers, for each simulated device, the requests addressed
to its unit id, serving its ``RegisterImage``: real bytes, real CRCs. Frames come apart by
their length (``rtu_frame.request_length``); a request with a bad CRC is ignored, as a
real slave ignores it (the master times out), and so is a request for a unit nobody has.

Faults an operator meets on a real bus are switches here: ``silent_units`` never answer
(a unit that is off or wired wrong), ``busy_units`` answer exception 6 (server busy).

The request handling (``respond``) is pure; the class only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Mapping

import serial

from gridpilot.fieldbus.rtu_frame import crc_ok, frame, request_length
from gridpilot.model import Table
from gridpilot.sim.image import AppliedWrite, RegisterImage, WriteRejectedError

__all__ = ["RtuSlaveBus", "respond"]

log = logging.getLogger(__name__)

UnitWriteHandler = Callable[[str, AppliedWrite], None]
"""Called with the device id and each point a client write changed."""

ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
SERVER_BUSY = 6

_READ_TABLES = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}


def _exception(function: int, code: int) -> bytes:
    return bytes([function | 0x80, code])


def _pack_bits(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def respond(image: RegisterImage, pdu: bytes) -> tuple[bytes, list[AppliedWrite]]:
    """The reply PDU to a request PDU (function code first), and the points it changed."""
    function = pdu[0]
    if function in _READ_TABLES:
        table = _READ_TABLES[function]
        address, count = struct.unpack(">HH", pdu[1:5])
        limit = 2000 if table.is_bit else 125
        if not 1 <= count <= limit:
            return _exception(function, ILLEGAL_DATA_VALUE), []
        try:
            words = image.read(table, address, count)
        except (KeyError, IndexError):
            return _exception(function, ILLEGAL_DATA_ADDRESS), []
        if table.is_bit:
            data = _pack_bits(words)
        else:
            data = b"".join(word.to_bytes(2, "big") for word in words)
        return bytes([function, len(data)]) + data, []
    if function in (5, 6, 15, 16):
        table = Table.COIL if function in (5, 15) else Table.HOLDING
        address = int.from_bytes(pdu[1:3], "big")
        if function == 5:
            words = [1 if pdu[3:5] == b"\xff\x00" else 0]
        elif function == 6:
            words = [int.from_bytes(pdu[3:5], "big")]
        elif function == 16:
            count = int.from_bytes(pdu[3:5], "big")
            words = [int.from_bytes(pdu[6 + 2 * i : 8 + 2 * i], "big") for i in range(count)]
        else:
            count = int.from_bytes(pdu[3:5], "big")
            words = [(pdu[6 + i // 8] >> (i % 8)) & 1 for i in range(count)]
        if table not in image.blocks:
            return _exception(function, ILLEGAL_DATA_ADDRESS), []
        try:
            applied = image.write(table, address, words)
        except WriteRejectedError as exc:
            return _exception(function, exc.exception_code), []
        return pdu[:5], applied  # single writes echo the request, multiple ones address+count
    return _exception(function, ILLEGAL_FUNCTION), []


class RtuSlaveBus:
    """Several simulated devices behind one serial port. ``async with`` opens and closes it."""

    def __init__(
        self,
        port: str,
        units: Mapping[int, RegisterImage],
        on_write: UnitWriteHandler | None = None,
        *,
        baudrate: int = 19_200,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        """``units``: the image each unit id serves. Parity defaults to N: Linux
        pseudo-terminals refuse E and O."""
        for unit in units:
            if not 1 <= unit <= 247:
                raise ValueError(f"RTU unit ids are 1..247, not {unit}")
        self.port = port
        self.units: dict[int, RegisterImage] = dict(units)
        self.silent_units: set[int] = set()
        """Units that never answer."""
        self.busy_units: set[int] = set()
        """Units that answer every request with exception 6 (server busy)."""
        self.requests: dict[int, int] = {}
        """Well-formed requests seen per unit (also for silent or unknown units)."""
        self.bad_frames = 0
        """Requests dropped for a bad CRC or an unknown function."""
        self._on_write = on_write
        self._line = {"baudrate": baudrate, "bytesize": bytesize, "parity": parity}
        self._stopbits = stopbits
        self._serial: serial.Serial | None = None
        self._buffer = b""

    async def __aenter__(self) -> RtuSlaveBus:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        port = serial.Serial(self.port, stopbits=self._stopbits, timeout=0, **self._line)
        self._serial = port
        asyncio.get_running_loop().add_reader(port.fileno(), self._readable)
        log.info("simulated RTU units %s on %s", sorted(self.units), self.port)

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            asyncio.get_running_loop().remove_reader(port.fileno())
            port.close()

    def _readable(self) -> None:
        port = self._serial
        if port is None:
            return
        try:
            data = port.read(4096)
        except (OSError, serial.SerialException):
            log.exception("simulated RTU bus %s: read failed", self.port)
            self.close()
            return
        self._buffer += data
        self._serve()

    def _serve(self) -> None:
        while True:
            length = request_length(self._buffer)
            if length is None or (length and len(self._buffer) < length):
                return  # wait for the rest
            if length == 0:
                self.bad_frames += 1
                self._buffer = b""  # unknown function or noise: drop it all, resync
                return
            request, self._buffer = self._buffer[:length], self._buffer[length:]
            if not crc_ok(request):
                self.bad_frames += 1
                self._buffer = b""
                return
            self._answer(request[0], request[1:-2])

    def _answer(self, unit: int, pdu: bytes) -> None:
        self.requests[unit] = self.requests.get(unit, 0) + 1
        image = self.units.get(unit)
        if image is None or unit in self.silent_units or self._serial is None:
            return
        if unit in self.busy_units:
            reply = _exception(pdu[0], SERVER_BUSY)
        else:
            reply, applied = respond(image, pdu)
            for item in applied:
                if self._on_write is not None:
                    self._on_write(image.device.id, item)
        self._serial.write(frame(unit, reply))
