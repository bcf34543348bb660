"""Modbus TCP I/O with pymodbus: one connection per device, bounded time, our error tree.

Every request runs under ``asyncio.timeout`` with the device timeout. A failed request is
retried (``retries`` extra attempts, exponential backoff from ``backoff_s``) only when
its error is ``transient``, and never past the call's budget of
``timeout_s * (retries + 1)``, so a poll of a dead device takes a bounded, known time.

After a transport or protocol failure the connection is closed and the next attempt opens
a new one: a reply that arrives after its timeout would otherwise be taken as the answer
to the next request. An exception response (``DeviceRejected``) keeps the connection. A
connection the device closed while idle (many close after a minute) is reopened without
counting an error.

pymodbus' own timeout and retries are not used: its timeout is set above ours so that
``asyncio.timeout`` always decides, and its automatic reconnect is off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.fieldbus.errors import (
    ConnectionRefused,
    DeviceRejected,
    DeviceTimeout,
    Disconnected,
    FieldbusError,
    ProtocolError,
    RequestError,
    TransportError,
    exception_name,
)
from gridpilot.fieldbus.planner import MAX_READ_BITS, MAX_READ_REGISTERS, ReadBlock
from gridpilot.model.registers import Table

if TYPE_CHECKING:
    from gridpilot.config.models import DeviceConfig

__all__ = ["ModbusTcpDevice"]

_log = logging.getLogger(__name__)

T = TypeVar("T")
_Send = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]

# pymodbus waits this much longer than we do, so its "no response" path never fires first.
_LIBRARY_TIMEOUT_MARGIN_S = 1.0
# An attempt with less time than this left in the budget cannot finish; do not start it.
_MIN_ATTEMPT_S = 0.01
_MAX_WRITE_REGISTERS = 123


class _ConnectError(Exception):
    """pymodbus' connect() returned False: it swallowed an OSError (refused, unreachable)."""


class _ConnectionLostError(Exception):
    """The connection closed while a request was waiting for its reply."""


class _ExceptionReplyError(Exception):
    def __init__(self, reply: ModbusPDU) -> None:
        super().__init__(str(reply))
        self.code = int(reply.exception_code)


@dataclass
class _Link:
    """One TCP connection and the event set when the peer or the network closes it."""

    client: AsyncModbusTcpClient
    lost: asyncio.Event


class ModbusTcpDevice:
    """A Modbus TCP device (or one unit id behind a gateway), used by one poller.

    Use as ``async with ModbusTcpDevice(...) as device``. Entering does not connect: the
    first request does, so a device that is offline at start-up is handled like one that
    drops later. ``error_counts`` maps each error ``kind`` to the number of failed
    attempts of that kind (retries count too).

    Requests are serialized: one is on the wire at a time, as most devices require.

    Creating a device quiets pymodbus' logger (to ERROR) unless its level was set
    explicitly: it logs a warning for each failed connect, which reach callers as
    ``FieldbusError`` and counters here.
    """

    def __init__(
        self,
        host: str,
        port: int = 502,
        unit_id: int = 1,
        timeout_s: float = 1.0,
        retries: int = 1,
        *,
        backoff_s: float = 0.05,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id {unit_id} is outside 0..255")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be 0 or more, not {backoff_s}")
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._error_counts: dict[str, int] = {}
        _quiet_pymodbus_logging()

    @classmethod
    def from_config(cls, device: DeviceConfig) -> ModbusTcpDevice:
        """The device as a ``modbus_tcp`` entry of the site configuration describes it."""
        if device.host is None:
            raise ValueError(f"device {device.id!r} has no host")
        return cls(
            device.host,
            device.port,
            device.unit_id,
            timeout_s=device.timeout.total_seconds(),
            retries=device.retries,
        )

    def __repr__(self) -> str:
        return f"ModbusTcpDevice({self.host!r}, {self.port}, unit_id={self.unit_id})"

    def __str__(self) -> str:
        return f"{self.host}:{self.port} unit {self.unit_id}"

    @property
    def error_counts(self) -> Mapping[str, int]:
        """Failed attempts by error kind ("timeout", "refused", "exception_2", ...)."""
        return dict(self._error_counts)

    @property
    def connected(self) -> bool:
        """True while a TCP connection is open (it may still be dead without knowing)."""
        return self._link is not None and self._link.client.connected

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection now rather than on the first request."""
        async with self._lock:
            await self._retrying("connect", self._open)

    async def close(self) -> None:
        """Close the connection; a later request opens a new one."""
        async with self._lock:
            self._drop()

    async def read_block(self, block: ReadBlock) -> list[int]:
        """Read one planned block: register values, or 0/1 per bit for bit tables."""
        limit = MAX_READ_BITS if block.table.is_bit else MAX_READ_REGISTERS
        if not 1 <= block.count <= limit:
            raise RequestError(f"{self}: cannot read {block.count} from {block.table} at once")
        what = f"read of {block.table} {block.address}+{block.count}"
        address, count, unit = block.address, block.count, self.unit_id

        def send(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            match block.table:
                case Table.HOLDING:
                    return client.read_holding_registers(address, count=count, device_id=unit)
                case Table.INPUT:
                    return client.read_input_registers(address, count=count, device_id=unit)
                case Table.COIL:
                    return client.read_coils(address, count=count, device_id=unit)
                case Table.DISCRETE:
                    return client.read_discrete_inputs(address, count=count, device_id=unit)

        def check(reply: ModbusPDU) -> list[int]:
            if block.table.is_bit:
                # Bits arrive packed in bytes; pymodbus unpacks the padding bits too.
                padded = (count + 7) // 8 * 8
                if len(reply.bits) != padded:
                    raise ProtocolError(
                        f"{self}: {what} returned {len(reply.bits)} bits, expected {padded}"
                    )
                return [int(bit) for bit in reply.bits[:count]]
            if len(reply.registers) != count:
                raise ProtocolError(
                    f"{self}: {what} returned {len(reply.registers)} registers, expected {count}"
                )
            return list(reply.registers)

        return await self._request(what, send, check)

    async def write(self, spec: RegisterSpec, words: Sequence[int]) -> None:
        """Write ``words`` (from ``codec.encode``) to the point of ``spec``.

        FC6 for one holding register, FC16 for several, FC5 for a coil. Writes set absolute
        values, so repeating one after a lost reply is safe; they are retried like reads.
        """
        self._check_write(spec, words)
        address, unit = spec.address, self.unit_id
        values = list(words)
        what = f"write of {spec.point!r} to {spec.table} {address}"

        def send(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            if spec.table is Table.COIL:
                return client.write_coil(address, bool(values[0]), device_id=unit)
            if len(values) == 1:
                return client.write_register(address, values[0], device_id=unit)
            return client.write_registers(address, values, device_id=unit)

        def check(reply: ModbusPDU) -> None:
            # The reply echoes the request; a different echo means the write went elsewhere.
            if spec.table is Table.COIL:
                echoed = list(reply.bits[:1]) == [bool(values[0])]
            elif len(values) == 1:
                echoed = list(reply.registers) == values
            else:
                echoed = reply.count == len(values)
            if reply.address != address or not echoed:
                raise ProtocolError(f"{self}: {what} {values} was echoed as {reply}")

        await self._request(what, send, check)

    def _check_write(self, spec: RegisterSpec, words: Sequence[int]) -> None:
        if not spec.table.is_writable:
            raise RequestError(f"{self}: point {spec.point!r} is in the read-only {spec.table}")
        if len(words) != spec.register_count:
            raise RequestError(
                f"{self}: point {spec.point!r} takes {spec.register_count} words, "
                f"received {len(words)}"
            )
        if len(words) > _MAX_WRITE_REGISTERS:
            raise RequestError(f"{self}: one write carries at most {_MAX_WRITE_REGISTERS}")
        top = 1 if spec.table.is_bit else 0xFFFF
        for word in words:
            if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= top:
                raise RequestError(f"{self}: {word!r} is not a valid {spec.table} value")

    async def _request(self, what: str, send: _Send, check: Callable[[ModbusPDU], T]) -> T:
        async def attempt() -> T:
            link = await self._open()
            return check(await self._exchange(link, send))

        async with self._lock:
            return await self._retrying(what, attempt)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s * (self.retries + 1)
        tries = 0
        while True:
            timeout = min(self.timeout_s, deadline - loop.time())
            try:
                with self._translated(what, timeout):
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                    # cancellation that races with completion (gh-86296).
                    async with asyncio.timeout(timeout):
                        return await attempt()
            except asyncio.CancelledError:
                # The caller gave up mid-request; its reply may still come and must not be
                # read as the answer to the next request.
                self._drop()
                raise
            except FieldbusError as error:
                self._error_counts[error.kind] = self._error_counts.get(error.kind, 0) + 1
                if isinstance(error, TransportError | ProtocolError):
                    self._drop()
                delay = min(self.backoff_s * 2**tries, self.timeout_s)
                out_of_budget = loop.time() + delay + _MIN_ATTEMPT_S > deadline
                if not error.transient or tries >= self.retries or out_of_budget:
                    raise
                _log.debug("%s: %s failed (%s); retrying in %.3f s", self, what, error, delay)
            await asyncio.sleep(delay)
            tries += 1

    @contextmanager
    def _translated(self, what: str, timeout: float) -> Iterator[None]:
        """The one place where library and socket failures become ``FieldbusError``."""
        try:
            yield
        except FieldbusError:
            raise
        except TimeoutError as exc:
            if not self.connected:
                raise DeviceTimeout(
                    f"{self}: connection not opened within {timeout:.3g} s ({what})"
                ) from exc
            raise DeviceTimeout(f"{self}: no answer to {what} within {timeout:.3g} s") from exc
        except _ConnectError as exc:
            raise ConnectionRefused(f"{self}: cannot connect ({what})") from exc
        except _ExceptionReplyError as exc:
            raise DeviceRejected(
                f"{self}: {what} rejected with exception {exc.code} ({exception_name(exc.code)})",
                exc.code,
            ) from exc
        except (_ConnectionLostError, ConnectionException, OSError) as exc:
            raise Disconnected(f"{self}: connection lost during {what}") from exc
        except ModbusException as exc:
            raise ProtocolError(f"{self}: bad reply to {what}: {exc}") from exc

    async def _open(self) -> _Link:
        if self._link is not None and self._link.client.connected:
            return self._link
        self._drop()
        # A fresh client per connection: no state (transaction ids, a half-received frame)
        # survives from the connection that failed.
        lost = asyncio.Event()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=f"{self.host}:{self.port}",
            timeout=self.timeout_s + _LIBRARY_TIMEOUT_MARGIN_S,
            retries=0,
            reconnect_delay=0,  # 0 turns pymodbus' background reconnect off
            trace_connect=lambda up: None if up else lost.set(),
        )
        link = _Link(client, lost)
        # Registered before connecting so that a connect cut short by the timeout is closed.
        self._link = link
        if not await link.client.connect():
            self._drop()
            raise _ConnectError
        _log.debug("%s: connected", self)
        return link

    async def _exchange(self, link: _Link, send: _Send) -> ModbusPDU:
        """Send one request; fail at once if the peer closes the connection meanwhile."""
        reply_task = asyncio.ensure_future(send(link.client))
        lost_task = asyncio.ensure_future(link.lost.wait())
        try:
            await asyncio.wait((reply_task, lost_task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reply_task.cancel()
            lost_task.cancel()
        if not reply_task.done() or reply_task.cancelled():
            raise _ConnectionLostError
        reply = reply_task.result()
        if reply.isError():
            raise _ExceptionReplyError(reply)
        return reply

    def _drop(self) -> None:
        if self._link is not None:
            self._link.client.close()
            self._link = None
            _log.debug("%s: connection closed", self)


def _quiet_pymodbus_logging() -> None:
    # pymodbus logs a warning for every failed connect and an error for every unanswered
    # request; here each failure already reaches the caller as an exception and a counter.
    # An operator who set the level on purpose keeps it.
    library_logger = logging.getLogger("pymodbus")
    if library_logger.level == logging.NOTSET:
        library_logger.setLevel(logging.ERROR)
