"""Support of the RTU integration tests (no tests here): simulated RTU units behind a
pseudo-terminal line with a byte relay that can garble replies on the wire, and the
register maps of the units. Named test_modbus_rtu_* only to live with the tests it serves.

Topology (real bytes, real CRCs)::

    gateway ── pty A ──┐            ┌── pty B ── RtuSlaveBus (the simulated units)
    (or a TCP client ──┤   relay    │
     of a "converter") └── (here) ──┘

The relay cuts the units' replies into frames (``rtu_frame.reply_length``) and, for the
units listed in ``corrupt_units``/``truncate_units``, flips a bit of the frame's last data
byte (a CRC error) or drops its last bytes (a short reply) before passing it on;
``corrupt_every`` garbles only every Nth reply of a unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tty
from collections.abc import AsyncIterator, Iterable

from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.fieldbus.rtu_frame import reply_length
from gridpilot.model import DataType, Table
from gridpilot.sim.devices import DeviceMap, SimPoint
from gridpilot.sim.image import RegisterImage
from gridpilot.sim.rtu import RtuSlaveBus


def unit_map(device_id: str, unit_id: int) -> DeviceMap:
    """A small meter-like unit: three holding registers and a writable setpoint."""
    points = (
        SimPoint(RegisterSpec("voltage_v", Table.HOLDING, 0, DataType.UINT16, scale=0.1), (0, 500)),
        SimPoint(
            RegisterSpec("current_a", Table.HOLDING, 1, DataType.UINT16, scale=0.01), (0, 600)
        ),
        SimPoint(RegisterSpec("active_power_w", Table.HOLDING, 2, DataType.INT32), (-1e6, 1e6)),
        SimPoint(
            RegisterSpec("power_limit_pct", Table.HOLDING, 10, DataType.UINT16),
            (0, 100),
            writable=True,
        ),
    )
    return DeviceMap(device_id, device_id, unit_id, 0.2, points)


def unit_image(device_id: str, unit_id: int) -> RegisterImage:
    image = RegisterImage(unit_map(device_id, unit_id))
    image.update(
        {
            "voltage_v": 230.0 + unit_id,
            "current_a": 10.0 * unit_id,
            "active_power_w": -1000.0 * unit_id,
            "power_limit_pct": 100.0,
        }
    )
    return image


def _raw_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


class Line:
    """The relay between the gateway's side and the units' pty. See the module docstring."""

    def __init__(self) -> None:
        self.corrupt_units: set[int] = set()
        """Every reply of these units arrives garbled."""
        self.corrupt_every: dict[int, int] = {}
        """Unit -> N: every Nth reply of the unit arrives garbled (an intermittent fault)."""
        self.truncate_units: set[int] = set()
        self.reply_delay_s = 0.0
        """Replies are held this long on the wire (a slow line): a master that sent its next
        request meanwhile would show two requests in one turn of ``wire``."""
        self._replies_of: dict[int, int] = {}
        self.corrupted = 0
        self.truncated = 0
        self.wire: list[str] = []
        """Direction of each chunk passed on: "request" (to the units) or "reply"."""
        self._device_master, self._device_slave, self.device_port = _raw_pty()
        self._gateway_master, self._gateway_slave, self.gateway_port = _raw_pty()
        self._replies = b""
        self._tcp: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self.tcp_port = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._gateway_master, self._from_gateway_pty)
        loop.add_reader(self._device_master, self._from_units)

    async def serve_tcp(self) -> None:
        """Also accept one TCP client at a time, like a serial-to-Ethernet converter."""
        self._server = await asyncio.start_server(self._converter_client, "127.0.0.1", 0)
        self.tcp_port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._gateway_master)
        loop.remove_reader(self._device_master)
        if self._server is not None:
            self._server.close()
        if self._tcp is not None:
            self._tcp.close()
        for fd in (
            self._gateway_master,
            self._gateway_slave,
            self._device_master,
            self._device_slave,
        ):
            os.close(fd)

    async def _converter_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._tcp = writer
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                self.wire.append("request")
                os.write(self._device_master, data)
        writer.close()

    def _from_gateway_pty(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self._gateway_master, 4096)
            self.wire.append("request")
            os.write(self._device_master, data)

    def _from_units(self) -> None:
        try:
            self._replies += os.read(self._device_master, 4096)
        except BlockingIOError:
            return
        while (length := reply_length(self._replies)) is not None:
            if length == 0 or len(self._replies) < length:
                if length == 0:  # not a frame we know: pass it on untouched
                    self._deliver(self._replies)
                    self._replies = b""
                return
            reply, self._replies = self._replies[:length], self._replies[length:]
            self._deliver(self._garble(reply))

    def turns(self) -> list[str]:
        """``wire`` with runs of one direction (a frame in several chunks) taken as one."""
        return [direction for direction, _ in itertools.groupby(self.wire)]

    def _garble(self, reply: bytes) -> bytes:
        unit = reply[0]
        self._replies_of[unit] = seen = self._replies_of.get(unit, 0) + 1
        every = self.corrupt_every.get(unit)
        garbled = unit in self.corrupt_units or (every is not None and seen % every == 0)
        if unit in self.truncate_units:
            self.truncated += 1
            return reply[:-3]
        if garbled:
            self.corrupted += 1
            damaged = bytearray(reply)
            damaged[-3] ^= 0x10  # the last data byte: same length, wrong CRC
            return bytes(damaged)
        return reply

    def _deliver(self, data: bytes) -> None:
        if self.reply_delay_s > 0:
            asyncio.get_running_loop().call_later(self.reply_delay_s, self._pass_on, data)
        else:
            self._pass_on(data)

    def _pass_on(self, data: bytes) -> None:
        self.wire.append("reply")
        if self._tcp is not None:
            self._tcp.write(data)
        else:
            os.write(self._gateway_master, data)


@contextlib.asynccontextmanager
async def rtu_line(
    images: Iterable[RegisterImage], *, tcp: bool = False
) -> AsyncIterator[tuple[Line, RtuSlaveBus]]:
    """Simulated units on a line; yields the relay and the units' bus."""
    line = Line()
    line.start()
    if tcp:
        await line.serve_tcp()
    try:
        by_unit = {image.device.unit_id: image for image in images}
        async with RtuSlaveBus(line.device_port, by_unit) as units:
            yield line, units
    finally:
        line.close()
