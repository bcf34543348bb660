"""ModbusTcpDevice against real servers on 127.0.0.1: a pymodbus server for the protocol,
raw asyncio servers for the failures a pymodbus server will not produce (silence, hang-ups,
short replies)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from gridpilot.config.models import DeviceConfig
from gridpilot.fieldbus.codec import RegisterSpec, decode, encode
from gridpilot.fieldbus.errors import (
    ConnectionRefused,
    DeviceRejected,
    DeviceTimeout,
    Disconnected,
    ProtocolError,
    RequestError,
    TransportError,
)
from gridpilot.fieldbus.modbus_tcp import ModbusTcpDevice
from gridpilot.fieldbus.planner import ReadBlock, extract, plan_reads
from gridpilot.model.registers import DataType, Table, WordOrder

pytestmark = pytest.mark.integration

HOLDING = [0x4366, 0x8000, 0xFFF6, 0x5375, 0x6E53] + [0] * 15  # 230.5, -10, "SunS"
INPUT = [0x0000, 0x0001, 0x86A0, 0x0102, 0x0304, 0x0506, 0x0708, 2305]
DISCRETE = [True, False, True, True, False]


# --- a pymodbus server ------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    function_codes: list[int] = field(default_factory=list)
    """Function code of every request received, in order."""


def _device_image() -> SimDevice:
    return SimDevice(
        id=1,
        simdata=(
            [SimData(0, count=16, values=False, datatype=SimType.BITS)],
            [SimData(0, values=DISCRETE, datatype=SimType.BITS)],
            [SimData(0, values=HOLDING, datatype=SimType.REGISTERS)],
            [SimData(0, values=INPUT, datatype=SimType.REGISTERS)],
        ),
    )


@asynccontextmanager
async def modbus_server(port: int = 0) -> AsyncIterator[Server]:
    record = Server(port)

    def trace(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            record.function_codes.append(pdu.function_code)
        return pdu

    server = ModbusTcpServer(_device_image(), address=("127.0.0.1", port), trace_pdu=trace)
    await server.serve_forever(background=True)
    record.port = server.transport.sockets[0].getsockname()[1]
    try:
        yield record
    finally:
        await server.shutdown()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with modbus_server() as running:
        yield running


def device(port: int, *, timeout_s: float = 0.5, retries: int = 0) -> ModbusTcpDevice:
    return ModbusTcpDevice("127.0.0.1", port, unit_id=1, timeout_s=timeout_s, retries=retries)


# --- raw servers for failures -----------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class RawServer:
    port: int
    connections: int = 0


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    """A TCP server on loopback running ``handler(reader, writer, connection_number)``."""
    record = RawServer(0)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer, record.connections)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    record.port = server.sockets[0].getsockname()[1]
    try:
        yield record
    finally:
        server.close()
        await server.wait_closed()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One Modbus TCP request frame (MBAP header and PDU)."""
    header = await reader.readexactly(7)
    (length,) = struct.unpack(">H", header[4:6])
    return header + await reader.readexactly(length - 1)


def reply(request: bytes, pdu: bytes) -> bytes:
    """A response frame to ``request`` carrying ``pdu``."""
    return request[0:2] + b"\x00\x00" + struct.pack(">H", len(pdu) + 1) + request[6:7] + pdu


def registers_pdu(function_code: int, registers: list[int]) -> bytes:
    data = b"".join(struct.pack(">H", r) for r in registers)
    return bytes([function_code, len(data)]) + data


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await reader.read(1024):
        pass  # accept requests, never answer


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    await read_request(reader)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port with nothing listening: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


HOLDING_0_2 = ReadBlock(Table.HOLDING, 0, 2, ())


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "count", "expected"),
    [
        (Table.HOLDING, 5, HOLDING[:5]),
        (Table.INPUT, 8, INPUT),
        (Table.COIL, 3, [0, 0, 0]),
        (Table.DISCRETE, 5, [1, 0, 1, 1, 0]),
    ],
)
async def test_reads_each_table(
    server: Server, table: Table, count: int, expected: list[int]
) -> None:
    async with device(server.port) as dev:
        assert await dev.read_block(ReadBlock(table, 0, count, ())) == expected
    assert server.function_codes == [
        {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}[table]
    ]


async def test_planned_reads_decode_to_engineering_values(server: Server) -> None:
    specs = [
        RegisterSpec("voltage_v", Table.HOLDING, 0, DataType.FLOAT32),
        RegisterSpec("power_w", Table.HOLDING, 2, DataType.INT16),
        RegisterSpec("model_state", Table.HOLDING, 3, DataType.STRING, length=2),
        RegisterSpec("energy_wh", Table.INPUT, 1, DataType.UINT32, word_order=WordOrder.BIG),
        RegisterSpec("counter_count", Table.INPUT, 3, DataType.UINT64),
        RegisterSpec("frequency_hz", Table.INPUT, 7, DataType.UINT16, scale=0.1),
        RegisterSpec("door_state", Table.DISCRETE, 2, DataType.BOOL),
        RegisterSpec("relay_state", Table.COIL, 0, DataType.BOOL),
    ]
    values = {}
    async with device(server.port) as dev:
        for block in plan_reads(specs):
            words = await dev.read_block(block)
            for spec in block.specs:
                values[spec.point] = decode(spec, extract(block, words, spec))
    assert values == {
        "voltage_v": 230.5,
        "power_w": -10.0,
        "model_state": "SunS",
        "energy_wh": 100_000.0,
        "counter_count": float(0x0102030405060708),
        "frequency_hz": 230.5,
        "door_state": 1.0,
        "relay_state": 0.0,
    }
    assert len(server.function_codes) == 4  # one read per table


async def test_connection_is_reused_between_requests(server: Server) -> None:
    async with device(server.port) as dev:
        assert not dev.connected  # entering does not connect
        await dev.read_block(HOLDING_0_2)
        await dev.read_block(HOLDING_0_2)
        assert dev.connected
    assert not dev.connected


# --- writing ----------------------------------------------------------------------------------


async def test_write_one_register_uses_fc6_and_reads_back(server: Server) -> None:
    setpoint = RegisterSpec("limit_w", Table.HOLDING, 10, DataType.INT16, scale=10.0)
    async with device(server.port) as dev:
        await dev.write(setpoint, encode(setpoint, -1500.0))
        words = await dev.read_block(ReadBlock(Table.HOLDING, 10, 1, ()))
    assert decode(setpoint, words) == -1500.0
    assert server.function_codes == [6, 3]


async def test_write_several_registers_uses_fc16_and_reads_back(server: Server) -> None:
    setpoint = RegisterSpec("limit_w", Table.HOLDING, 12, DataType.FLOAT32)
    async with device(server.port) as dev:
        await dev.write(setpoint, encode(setpoint, 4321.5))
        words = await dev.read_block(ReadBlock(Table.HOLDING, 12, 2, ()))
    assert decode(setpoint, words) == 4321.5
    assert server.function_codes == [16, 3]


async def test_write_coil_uses_fc5_and_reads_back(server: Server) -> None:
    relay = RegisterSpec("relay_state", Table.COIL, 3, DataType.BOOL)
    async with device(server.port) as dev:
        await dev.write(relay, encode(relay, 1.0))
        on = await dev.read_block(ReadBlock(Table.COIL, 0, 5, ()))
        await dev.write(relay, encode(relay, 0.0))
        off = await dev.read_block(ReadBlock(Table.COIL, 0, 5, ()))
    assert on == [0, 0, 0, 1, 0]
    assert off == [0, 0, 0, 0, 0]
    assert server.function_codes == [5, 1, 5, 1]


@pytest.mark.parametrize(
    ("spec", "words", "expected"),
    [
        (RegisterSpec("a_w", Table.INPUT, 0, DataType.UINT16), [1], "read-only input"),
        (RegisterSpec("a_w", Table.DISCRETE, 0, DataType.BOOL), [1], "read-only discrete"),
        (RegisterSpec("a_w", Table.HOLDING, 0, DataType.FLOAT32), [1], "takes 2 words"),
        (RegisterSpec("a_w", Table.HOLDING, 0, DataType.UINT16), [0x10000], "not a valid"),
        (RegisterSpec("a_w", Table.COIL, 0, DataType.BOOL), [2], "not a valid coil"),
    ],
)
async def test_impossible_writes_are_refused_before_sending(
    server: Server, spec: RegisterSpec, words: list[int], expected: str
) -> None:
    async with device(server.port) as dev:
        with pytest.raises(RequestError, match=expected):
            await dev.write(spec, words)
    assert server.function_codes == []


async def test_oversized_read_is_refused_before_sending(server: Server) -> None:
    async with device(server.port) as dev:
        with pytest.raises(RequestError, match="126"):
            await dev.read_block(ReadBlock(Table.HOLDING, 0, 126, ()))
    assert server.function_codes == []


# --- failures ---------------------------------------------------------------------------------


async def test_exception_reply_is_device_rejected_and_keeps_the_connection(
    server: Server,
) -> None:
    async with device(server.port, retries=2) as dev:
        with pytest.raises(DeviceRejected, match="illegal data address") as caught:
            await dev.read_block(ReadBlock(Table.HOLDING, 100, 2, ()))
        assert caught.value.exception_code == 2
        assert caught.value.kind == "exception_2"
        assert dev.connected
        assert await dev.read_block(HOLDING_0_2) == HOLDING[:2]
        assert dev.error_counts == {"exception_2": 1}  # not transient: no retry
    assert server.function_codes == [3, 3]


async def test_connection_refused(closed_port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gridpilot")
    async with device(closed_port, retries=2) as dev:
        started = time.monotonic()
        with pytest.raises(ConnectionRefused, match=f"127.0.0.1:{closed_port}"):
            await dev.read_block(HOLDING_0_2)
        assert time.monotonic() - started < 1.0
        assert dev.error_counts == {"refused": 3}
        assert not dev.connected
    # pymodbus would log a warning per failed connect; the caller has the exception instead.
    assert [r for r in caplog.records if r.name.startswith("pymodbus")] == []


async def test_connect_reports_refusal_up_front(closed_port: int) -> None:
    async with device(closed_port) as dev:
        with pytest.raises(ConnectionRefused):
            await dev.connect()
        assert dev.error_counts == {"refused": 1}


async def test_silent_device_times_out_within_the_budget() -> None:
    async with (
        raw_server(silent) as silent_server,
        device(silent_server.port, timeout_s=0.2, retries=1) as dev,
    ):
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match="no answer to read of holding 0"):
            await dev.read_block(HOLDING_0_2)
        elapsed = time.monotonic() - started
        assert dev.error_counts == {"timeout": 2}
    # Budget: timeout_s * (retries + 1); the backoff comes out of it.
    assert 0.35 <= elapsed < 0.8
    # The first timeout keeps the connection (a late reply is skipped by its transaction
    # id), the second in a row closes it: the next call opens a new one.
    assert silent_server.connections == 1
    assert not dev.connected


async def test_a_late_reply_is_skipped_and_the_retry_answers_on_the_same_connection() -> None:
    """A device (or a loaded gateway) slower than the timeout once: the retry goes out on
    the same connection, the late reply to the first request arrives first and is skipped
    (its transaction id is not the retry's), the retry's own reply is the answer."""

    async def slow_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        first = await read_request(reader)
        second = await read_request(reader)  # sent after the first timed out
        writer.write(reply(first, registers_pdu(3, [0xDEAD, 0xBEEF])))  # late: stale
        writer.write(reply(second, registers_pdu(3, [0x4366, 0x8000])))
        await writer.drain()
        while True:
            request = await read_request(reader)
            writer.write(reply(request, registers_pdu(3, [1, 2])))

    async with (
        raw_server(slow_once) as slow,
        device(slow.port, timeout_s=0.2, retries=1) as dev,
    ):
        assert await dev.read_block(HOLDING_0_2) == [0x4366, 0x8000]
        assert dev.error_counts == {"timeout": 1}
        # The connection carries on, the stale reply consumed: the next read is answered.
        assert await dev.read_block(HOLDING_0_2) == [1, 2]
    assert slow.connections == 1


async def test_connect_that_never_completes_times_out() -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so connect() hangs
    # the way it does towards a device that is powered off behind a switch.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            async with device(port, timeout_s=0.2) as dev:
                with pytest.raises(DeviceTimeout, match=r"connection not opened within 0\.2 s"):
                    await dev.read_block(HOLDING_0_2)
                assert dev.error_counts == {"timeout": 1}
                assert not dev.connected
        finally:
            for filler in fillers:
                filler.close()


async def test_peer_hanging_up_is_disconnected_without_waiting_for_the_timeout() -> None:
    async with raw_server(hang_up) as rude, device(rude.port, timeout_s=2.0, retries=1) as dev:
        started = time.monotonic()
        with pytest.raises(Disconnected, match="connection lost during read"):
            await dev.read_block(HOLDING_0_2)
        assert time.monotonic() - started < 1.0
        assert dev.error_counts == {"disconnected": 2}
    assert rude.connections == 2


@pytest.mark.parametrize(
    ("block", "answer", "expected"),
    [
        # two registers asked, one sent
        (HOLDING_0_2, registers_pdu(3, [0x4366]), "returned 1 registers, expected 2"),
        # ten coils take two bytes; one byte holds only eight
        (ReadBlock(Table.COIL, 0, 10, ()), bytes([1, 1, 0xFF]), "returned 8 bits, expected 16"),
    ],
)
async def test_short_reply_is_a_protocol_error(
    block: ReadBlock, answer: bytes, expected: str
) -> None:
    async def short_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        while True:
            writer.write(reply(await read_request(reader), answer))

    async with raw_server(short_answer) as short, device(short.port, retries=1) as dev:
        with pytest.raises(ProtocolError, match=expected):
            await dev.read_block(block)
        assert dev.error_counts == {"protocol": 2}
    assert short.connections == 2  # a garbled exchange is not continued on that connection


async def test_wrong_write_echo_is_a_protocol_error() -> None:
    async def echo_other_address(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        while True:
            request = await read_request(reader)
            writer.write(reply(request, bytes([6]) + struct.pack(">HH", 99, 7)))

    setpoint = RegisterSpec("limit_w", Table.HOLDING, 10, DataType.UINT16)
    async with raw_server(echo_other_address) as odd, device(odd.port) as dev:
        with pytest.raises(ProtocolError, match="echoed"):
            await dev.write(setpoint, [7])
        assert dev.error_counts == {"protocol": 1}


async def test_retry_recovers_on_a_new_connection() -> None:
    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        request = await read_request(reader)
        if n == 1:
            return  # the first connection is dropped without an answer
        writer.write(reply(request, registers_pdu(3, [0x4366, 0x8000])))
        await writer.drain()
        await reader.read()

    async with raw_server(flaky) as flaky_server, device(flaky_server.port, retries=1) as dev:
        assert await dev.read_block(HOLDING_0_2) == [0x4366, 0x8000]
        assert dev.error_counts == {"disconnected": 1}


async def test_reconnects_on_next_use_after_the_device_comes_back() -> None:
    async with modbus_server() as first:
        port = first.port
        dev = device(port)
        assert await dev.read_block(HOLDING_0_2) == HOLDING[:2]
    # The device is gone: the connection is lost and a new one is refused.
    with pytest.raises(TransportError):
        await dev.read_block(HOLDING_0_2)
    async with modbus_server(port):
        assert await dev.read_block(HOLDING_0_2) == HOLDING[:2]
        await dev.close()
    assert sum(dev.error_counts.values()) == 1
    assert set(dev.error_counts) <= {"refused", "disconnected"}


async def test_counters_count_each_kind_separately() -> None:
    async def rejects_twice_then_silent(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        for _answered in range(2):
            request = await read_request(reader)
            writer.write(reply(request, bytes([0x83, 2])))  # FC3 exception, illegal address
        await silent(reader, writer, 0)

    async with (
        raw_server(rejects_twice_then_silent) as moody,
        device(moody.port, timeout_s=0.2) as dev,
    ):
        for _attempt in range(2):
            with pytest.raises(DeviceRejected):
                await dev.read_block(HOLDING_0_2)
        with pytest.raises(DeviceTimeout):
            await dev.read_block(HOLDING_0_2)
        counts = dev.error_counts
    assert counts == {"exception_2": 2, "timeout": 1}
    counts["timeout"] = 99  # type: ignore[index]  # a copy: callers cannot corrupt the counters
    assert dev.error_counts["timeout"] == 1


def test_from_config() -> None:
    config = DeviceConfig.model_validate(
        {
            "id": "meter-1",
            "host": "127.0.0.1",
            "port": 1502,
            "unit_id": 7,
            "timeout": timedelta(milliseconds=250),
            "retries": 3,
            "points": [{"point": "power_w", "address": 0}],
        }
    )
    dev = ModbusTcpDevice.from_config(config)
    assert (dev.host, dev.port, dev.unit_id, dev.timeout_s, dev.retries) == (
        "127.0.0.1",
        1502,
        7,
        0.25,
        3,
    )


def test_creating_a_device_quiets_pymodbus_logging() -> None:
    device(1)
    assert logging.getLogger("pymodbus.logging").getEffectiveLevel() >= logging.ERROR
