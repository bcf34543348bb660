"""Modbus RTU with pymodbus: several units on one bus, one request on the bus at a time.

An :class:`RtuBus` is one RS-485 line: a serial port (``SerialLine``), or a TCP connection
to a serial-to-Ethernet converter that passes RTU frames through unchanged (RTU over TCP).
Each unit on it is a :class:`ModbusRtuDevice`. The bus holds one lock: every attempt of
every unit holds it from sending the request to the end of the reply, so the line carries
one request at a time (the master/slave rule of RS-485). The lock is fair (first come,
first served), so units take turns.

Faults, as a line produces them:

* a garbled reply (``CrcError``) is reported as soon as the frame is whole, not after the
  timeout: pymodbus drops such frames silently, so the bus looks at the received bytes
  itself (``rtu_frame.check_reply``) through pymodbus' packet trace;
* bytes that stop short of a frame become ``ShortReply`` at the timeout, silence
  ``DeviceTimeout``; another unit's reply or a wrong function is a ``ProtocolError``;
* a unit that stopped answering must not starve the others: after a call of a unit ends in
  a timeout, its next calls make one attempt (no retries) until it answers again, so a
  dead unit costs the bus one timeout per poll, and the gateway spaces those polls out
  with its backoff;
* a port held by another process is ``PortBusy`` naming that process
  (``serial_port.open_failure``); ports are opened with an exclusive lock (pyserial's
  ``exclusive=True``, an ``flock``), so two gateways never share a line unknowingly.

Timeouts and garbled replies keep the port open (the line is fine; pymodbus empties its
buffer before each request, and the bus waits for the inter-frame gap after the last byte
received before it sends); a lost connection or an unusable port closes it.
"""

from __future__ import annotations

import asyncio
import logging
import termios
from dataclasses import dataclass
from typing import Any

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from gridpilot.fieldbus.errors import (
    ConnectionRefused,
    CrcError,
    DeviceTimeout,
    Disconnected,
    FieldbusError,
    PortUnavailable,
    ProtocolError,
    ShortReply,
)
from gridpilot.fieldbus.modbus_client import (
    LIBRARY_TIMEOUT_MARGIN_S,
    ClientLink,
    ModbusClientDevice,
    Send,
    exchange,
)
from gridpilot.fieldbus.rtu_frame import ReplyStatus, char_bits, check_reply, frame_gap_s
from gridpilot.fieldbus.serial_port import open_failure

__all__ = ["ModbusRtuDevice", "RtuBus", "SerialLine"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SerialLine:
    """Settings of a serial port. Modbus' default line is 19200 baud, 8 data bits, even
    parity, 1 stop bit (8E1)."""

    port: str
    baudrate: int = 19_200
    bytesize: int = 8
    parity: str = "E"
    """``N`` none, ``E`` even, ``O`` odd."""
    stopbits: int = 1
    frame_gap_s: float | None = None
    """Silence kept between frames; None: 3.5 character times (``rtu_frame.frame_gap_s``)."""

    @property
    def gap_s(self) -> float:
        if self.frame_gap_s is not None:
            return self.frame_gap_s
        return frame_gap_s(self.baudrate, self.bytesize, self.parity, self.stopbits)


class RtuBus:
    """One RTU line shared by the units on it. See the module docstring.

    Give either ``line`` (a serial port) or ``host`` and ``port`` (RTU over TCP).
    ``timeout_s`` is only pymodbus' own (set above every unit's so ours decides).
    """

    def __init__(
        self,
        name: str,
        *,
        line: SerialLine | None = None,
        host: str | None = None,
        port: int = 502,
        frame_gap_s: float | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if (line is None) == (host is None):
            raise ValueError("an RTU bus has a serial line or a host: give exactly one")
        self.name = name
        self.line = line
        self.host = host
        self.port = port
        if line is not None:
            self.gap_s = line.gap_s if frame_gap_s is None else frame_gap_s
        else:
            self.gap_s = frame_gap_s if frame_gap_s is not None else 0.0
        self.timeout_s = timeout_s
        self.lock = asyncio.Lock()
        self._link: ClientLink | None = None
        self._quiet_after = 0.0  # loop time before which the line is not yet silent
        # The exchange in progress: what it asked, what came back, and its frame verdict.
        self._expect: tuple[int, int] | None = None
        self._received = b""
        self._garbled: asyncio.Future[FieldbusError] | None = None

    def __str__(self) -> str:
        where = self.line.port if self.line is not None else f"{self.host}:{self.port}"
        return f"bus {self.name} ({where})"

    @property
    def connected(self) -> bool:
        return self._link is not None and bool(self._link.client.connected)

    def wire_time_s(self, byte_count: int) -> float:
        """Time ``byte_count`` bytes take on the serial line, plus a frame gap each way
        (0 for RTU over TCP: the converter's line speed is not known here)."""
        line = self.line
        if line is None:
            return 0.0
        bits = char_bits(line.bytesize, line.parity, line.stopbits)
        return byte_count * bits / line.baudrate + 2 * self.gap_s

    @property
    def received(self) -> bytes:
        """Bytes received so far in answer to the request on the wire."""
        return self._received

    async def open(self) -> ClientLink:
        """The open port or connection, opened now if needed. Call holding ``lock``."""
        if self._link is not None and self._link.client.connected:
            return self._link
        self.drop()
        lost = asyncio.Event()
        client: Any
        common: dict[str, Any] = {
            "name": self.name,
            "timeout": self.timeout_s + LIBRARY_TIMEOUT_MARGIN_S,
            "retries": 0,
            "reconnect_delay": 0,  # 0 turns pymodbus' background reconnect off
            "trace_packet": self._trace,
            "trace_connect": lambda up: None if up else lost.set(),
        }
        if self.line is not None:
            line = self.line
            client = AsyncModbusSerialClient(
                line.port,
                framer=FramerType.RTU,
                baudrate=line.baudrate,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
                **common,
            )
        else:
            assert self.host is not None  # noqa: S101  # checked in __init__
            client = AsyncModbusTcpClient(
                self.host, port=self.port, framer=FramerType.RTU, **common
            )
        link = ClientLink(client, lost)
        self._link = link
        try:
            opened = await client.connect()
        except termios.error as exc:  # not an OSError: the driver refused the line settings
            self.drop()
            raise PortUnavailable(
                f"{self}: the port refuses the line settings {self._settings()} ({exc}); "
                "note that Linux pseudo-terminals accept parity N only"
            ) from exc
        if not opened:
            self.drop()
            raise self._open_error()
        _log.debug("%s: opened", self)
        return link

    def drop(self) -> None:
        """Close the port or connection; the next request opens it again."""
        if self._link is not None:
            self._link.client.close()
            self._link = None
            _log.debug("%s: closed", self)

    async def exchange(self, link: ClientLink, send: Send) -> ModbusPDU:
        """One request and its reply on the line. Call holding ``lock``."""
        loop = asyncio.get_running_loop()
        silent_for = self._quiet_after - loop.time()
        if silent_for > 0:
            await asyncio.sleep(silent_for)
        self._expect = None
        self._received = b""
        self._garbled = loop.create_future()
        try:
            return await exchange(link, send(link.client), self._garbled)
        finally:
            self._quiet_after = loop.time() + self.gap_s
            garbled, self._garbled = self._garbled, None
            if not garbled.done():
                garbled.cancel()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' packet trace: on receive, ``data`` is everything buffered so far."""
        loop = asyncio.get_running_loop()
        if sending:
            self._expect = (data[0], data[1]) if len(data) >= 2 else None
            return data
        self._received = data
        self._quiet_after = loop.time() + self.gap_s
        garbled = self._garbled
        if self._expect is None or garbled is None or garbled.done():
            return data
        unit, function = self._expect
        verdict = check_reply(data, unit, function)
        if verdict.status is ReplyStatus.CRC:
            garbled.set_result(CrcError(f"{self}: unit {unit}: {verdict.message}"))
        elif verdict.status is ReplyStatus.MALFORMED:
            garbled.set_result(ProtocolError(f"{self}: unit {unit}: {verdict.message}"))
        return data

    def _settings(self) -> str:
        line = self.line
        if line is None:
            return "(RTU over TCP)"
        return f"{line.baudrate} {line.bytesize}{line.parity}{line.stopbits}"

    def _open_error(self) -> FieldbusError:
        """Why the port or connection did not open (pymodbus only says that it did not)."""
        if self.line is None:
            return ConnectionRefused(f"{self}: cannot connect")
        line = self.line
        try:
            probe = serial.Serial(
                line.port,
                baudrate=line.baudrate,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
                exclusive=True,
            )
        except OSError as exc:  # serial.SerialException is an OSError
            error = open_failure(line.port, exc)
            return type(error)(f"{self}: {error}")
        probe.close()
        return PortUnavailable(f"{self}: cannot open {line.port} (it opened on a second try)")


class ModbusRtuDevice(ModbusClientDevice):
    """One unit on an :class:`RtuBus`. Entering does not open the bus: the first request does."""

    def __init__(
        self,
        bus: RtuBus,
        unit_id: int,
        timeout_s: float = 0.5,
        retries: int = 1,
        *,
        backoff_s: float = 0.05,
    ) -> None:
        if not 1 <= unit_id <= 247:
            # 0 is the broadcast address (no reply); 248-255 are reserved on serial lines.
            raise ValueError(f"an RTU unit_id is 1..247, not {unit_id}")
        super().__init__(unit_id, timeout_s, retries, backoff_s=backoff_s)
        self.bus = bus
        self._silent = False
        """The last call timed out: make one attempt per call until the unit answers."""

    def __repr__(self) -> str:
        return f"ModbusRtuDevice({self.bus.name!r}, unit_id={self.unit_id})"

    def __str__(self) -> str:
        return f"{self.bus} unit {self.unit_id}"

    @property
    def connected(self) -> bool:
        return self.bus.connected

    def _exclusive(self) -> asyncio.Lock:
        return self.bus.lock

    async def _open(self) -> ClientLink:
        return await self.bus.open()

    def _drop(self) -> None:
        self.bus.drop()

    async def _send(self, link: ClientLink, send: Send) -> ModbusPDU:
        return await self.bus.exchange(link, send)

    def _drops_link(self, error: FieldbusError) -> bool:
        return isinstance(error, Disconnected | PortUnavailable | ConnectionRefused)

    def _attempt_retries(self) -> int:
        return 0 if self._silent else self.retries

    def _after_call(self, error: FieldbusError | None) -> None:
        self._silent = isinstance(error, DeviceTimeout)

    def _wire_time_s(self, request_bytes: int, reply_bytes: int) -> float:
        return self.bus.wire_time_s(request_bytes + reply_bytes)

    def _timeout_error(self, what: str, timeout: float) -> FieldbusError:
        received = self.bus.received
        if received and self.connected:
            return ShortReply(
                f"{self}: reply to {what} stopped after {len(received)} byte(s) "
                f"({received[:16].hex(' ')}) within {timeout:.3g} s"
            )
        return super()._timeout_error(what, timeout)
