"""One simulated device as a Modbus TCP server (pymodbus 3.x), serving a ``RegisterImage``.

pymodbus 3.16 deprecates ``ModbusSequentialDataBlock``/``ModbusDeviceContext``/
``ModbusServerContext`` (they log a warning and go away in v4). This module uses the
supported path instead: a ``SimDevice`` handed straight to ``ModbusTcpServer``, with its
four tables as separate blocks and an ``action`` coroutine that pymodbus calls on every
request. The action is the whole bridge:

* on a read it copies the image's current words into pymodbus' block, so a reply always
  carries what the physics said at the last tick;
* on a write it lets ``RegisterImage.write`` check and apply it (the answer is a Modbus
  exception when the device refuses) and hands the changed points to ``on_write``.

Requests to any other unit id than the device's get exception 11 (gateway target device failed
to respond), as from a TCP gateway with nothing behind that id.

``SimData`` addresses are zero-based as on the wire (the 1-based offset of the old data
blocks does not apply here). In the bit tables pymodbus addresses bits, packed 16 to a word.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridpilot.model import Table
from gridpilot.sim.image import AppliedWrite, RegisterImage, WriteRejectedError

log = logging.getLogger(__name__)

WriteHandler = Callable[[AppliedWrite], None]
"""Called for each point a client write changed, after the image accepted it."""

_TABLE_OF_FUNCTION: dict[int, Table] = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    22: Table.HOLDING,
    23: Table.HOLDING,
    4: Table.INPUT,
}
# SimDevice's four-block tuple order.
_BLOCK_ORDER = (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT)


def _pack_bits(bits: list[int], first_bit: int) -> list[int]:
    """Bits from ``first_bit`` packed 16 to a word (bit 0 = least significant), the way
    pymodbus stores a bit block that starts at ``first_bit`` rounded down to 16."""
    lead = first_bit % 16
    padded = [0] * lead + bits
    padded += [0] * (-len(padded) % 16)
    return [
        sum(1 << i for i, bit in enumerate(padded[w : w + 16]) if bit)
        for w in range(0, len(padded), 16)
    ]


_Blocks = tuple[list[SimData], list[SimData], list[SimData], list[SimData]]


def _table_blocks(image: RegisterImage) -> _Blocks:
    blocks: list[list[SimData]] = []
    for table in _BLOCK_ORDER:
        if table in image.blocks:
            start, end = image.blocks[table]
            datatype = DataType.BITS if table.is_bit else DataType.REGISTERS
            values: list[bool] | list[int] = (
                [False] * (end - start) if table.is_bit else [0] * (end - start)
            )
            blocks.append([SimData(start, values=values, datatype=datatype)])
        elif table.is_bit:
            # pymodbus needs a block per table; the action refuses access to it (exception 2).
            blocks.append([SimData(0, values=[False] * 16, datatype=DataType.BITS)])
        else:
            blocks.append([SimData(0, datatype=DataType.INVALID)])
    return (blocks[0], blocks[1], blocks[2], blocks[3])


class DeviceServer:
    """A Modbus TCP server for one device; can be stopped and started again on the same port."""

    def __init__(
        self, image: RegisterImage, on_write: WriteHandler, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.image = image
        self.host = host
        self._port = port
        self._on_write = on_write
        self._server: ModbusTcpServer | None = None
        self.reads: Counter[tuple[Table, int, int]] = Counter()
        """Read requests served, by (table, first address, count): what a client polled."""

    @property
    def device_id(self) -> str:
        return self.image.device.id

    @property
    def port(self) -> int:
        """The TCP port; after the first start this is the bound port, also when 0 was asked."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen on ``host:port`` (the same port again after a stop)."""
        if self._server is not None:
            return
        device = self.image.device
        blocks = _table_blocks(self.image)
        devices = [SimDevice(id=device.unit_id, simdata=blocks, action=self._action)]
        if device.unit_id != 0:
            # id 0 answers every other unit id: same layout, every request refused with 11.
            devices.append(SimDevice(id=0, simdata=_table_blocks(self.image), action=_no_such_unit))
        server = ModbusTcpServer(devices, address=(self.host, self._port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus' word for "bind failed" (it logs the OSError)
            raise OSError(
                f"{device.id}: cannot listen on {self.host}:{self._port} (port in use?)"
            ) from exc
        listener = server.transport
        if not isinstance(listener, asyncio.Server):
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
            raise OSError(f"{device.id}: cannot listen on {self.host}:{self._port}")
        self._port = listener.sockets[0].getsockname()[1]
        self._server = server
        log.info(
            "simulated %s (unit %d) on %s:%d", device.id, device.unit_id, self.host, self._port
        )

    async def stop(self) -> None:
        """Close the listening socket and every client connection (clients then see refused)."""
        server, self._server = self._server, None
        if server is None:
            return
        listener = server.transport
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
        if isinstance(listener, asyncio.Server):
            await listener.wait_closed()
        # Let the closed transports run their connection_lost callbacks before a restart.
        await asyncio.sleep(0)
        log.info("simulated %s stopped", self.device_id)

    async def _action(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _TABLE_OF_FUNCTION.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if table not in self.image.blocks:
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values is None:
            self.reads[table, address, count] += 1
        if set_values is not None:
            words = [int(v) for v in set_values]
            try:
                applied = self.image.write(table, address, words)
            except WriteRejectedError as exc:
                log.info("%s refused a write: %s", self.device_id, exc)
                return ExcCodes(exc.exception_code)
            for item in applied:
                try:
                    self._on_write(item)
                except Exception:
                    log.exception("%s: applying %s failed", self.device_id, item.point.name)
                    return ExcCodes.DEVICE_FAILURE
        self._refresh(table, registers)
        return None

    @property
    def client_count(self) -> int:
        """Client connections open now."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    def reads_covering(self, table: Table, address: int) -> int:
        """Read requests served that included ``address`` of ``table``."""
        return sum(
            n
            for (t, start, count), n in self.reads.items()
            if t is table and start <= address < start + count
        )

    def _refresh(self, table: Table, registers: list[int]) -> None:
        """Copy the image into pymodbus' block (in place: pymodbus slices the reply from it)."""
        words = self.image.words(table)
        if table.is_bit:
            first_bit, _ = self.image.blocks[table]
            # pymodbus starts the block at the word holding first_bit (see _table_blocks).
            words = _pack_bits(words, first_bit)
        registers[: len(words)] = words


async def _no_such_unit(
    _function_code: int,
    _start_address: int,
    _address: int,
    _count: int,
    _registers: list[int],
    _set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE
