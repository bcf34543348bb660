"""What every pymodbus-backed device driver shares: requests, retries, error translation.

A :class:`ModbusClientDevice` turns ``read_block``/``write`` into pymodbus requests, runs
each attempt under ``asyncio.timeout`` with the device timeout, retries (``retries`` extra
attempts, exponential backoff from ``backoff_s``) only errors that are ``transient``, and
never past the call's budget of ``timeout_s * (retries + 1)`` of attempt time, so a call to
a dead device takes a bounded, known time. On a serial line each attempt also gets the time
its request and reply take on the wire at the line's baud rate (a 125-register reply takes
0.3 s at 9600 baud 8E1), so ``timeout`` stays the time the device may take to answer.

Subclasses say where the connection comes from and who else uses it:

* ``modbus_tcp.ModbusTcpDevice``: one TCP connection per device;
* ``modbus_rtu.ModbusRtuDevice``: one unit on a shared RTU bus (a serial port, or a
  serial-to-Ethernet converter), where every attempt holds the bus.

The bus is held per attempt, not per call: between a dead unit's attempts the other units
on the bus get their turn, and time spent waiting for the bus is not charged to a
request's timeout or budget.

pymodbus' own timeout and retries are not used: its timeout is set above ours so that
``asyncio.timeout`` always decides, and its automatic reconnect is off.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

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
    exception_name,
)
from gridpilot.fieldbus.planner import MAX_READ_BITS, MAX_READ_REGISTERS, ReadBlock
from gridpilot.model.registers import Table

__all__ = ["ClientLink", "ModbusClientDevice"]

_log = logging.getLogger(__name__)

T = TypeVar("T")
# Any pymodbus client: the TCP and the serial client share the request methods.
Client = Any
Send = Callable[[Client], Awaitable[ModbusPDU]]

LIBRARY_TIMEOUT_MARGIN_S = 1.0
"""pymodbus waits this much longer than we do, so its "no response" path never fires first."""
# An attempt with less time than this left in the budget cannot finish; do not start it.
_MIN_ATTEMPT_S = 0.01
_MAX_WRITE_REGISTERS = 123


class ConnectError(Exception):
    """pymodbus' connect() returned False: it swallowed an OSError (refused, unreachable)."""


class ConnectionLostError(Exception):
    """The connection closed while a request was waiting for its reply."""


class _ExceptionReplyError(Exception):
    def __init__(self, reply: ModbusPDU) -> None:
        super().__init__(str(reply))
        self.code = int(reply.exception_code)


@dataclass
class ClientLink:
    """One open pymodbus client and the event set when the peer or the network closes it."""

    client: Client
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class ModbusClientDevice(ABC):
    """A Modbus device reached through a pymodbus client. See the module docstring.

    ``error_counts`` maps each error ``kind`` to the number of failed attempts of that
    kind (retries count too).
    """

    def __init__(self, unit_id: int, timeout_s: float, retries: int, *, backoff_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id {unit_id} is outside 0..255")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be 0 or more, not {backoff_s}")
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._error_counts: dict[str, int] = {}
        quiet_pymodbus_logging()

    # ------------------------------------------------------------------ subclass hooks

    @abstractmethod
    def _exclusive(self) -> AbstractAsyncContextManager[Any]:
        """Held for each attempt: the device's own lock, or its bus'."""

    @abstractmethod
    async def _open(self) -> ClientLink:
        """The open link, opened now if needed (called holding ``_exclusive``)."""

    @abstractmethod
    def _drop(self) -> None:
        """Close the link; the next attempt opens a new one."""

    @property
    @abstractmethod
    def connected(self) -> bool:
        """True while the link is open (it may still be dead without knowing)."""

    def _drops_link(self, error: FieldbusError) -> bool:
        """Whether ``error`` leaves the link unusable (close it, reopen on next use)."""
        return not isinstance(error, DeviceRejected)

    def _attempt_retries(self) -> int:
        """Extra attempts allowed in this call."""
        return self.retries

    def _after_call(self, error: FieldbusError | None) -> None:  # noqa: B027  # optional hook
        """Called once per call with its final error (None: it succeeded)."""

    def _wire_time_s(self, request_bytes: int, reply_bytes: int) -> float:
        """Time a request and its reply take on the wire (0 on TCP: negligible)."""
        return 0.0

    def _timeout_error(self, what: str, timeout: float) -> FieldbusError:
        if not self.connected:
            return DeviceTimeout(f"{self}: connection not opened within {timeout:.3g} s ({what})")
        return DeviceTimeout(f"{self}: no answer to {what} within {timeout:.3g} s")

    def _connect_error(self, what: str) -> FieldbusError:
        """The error for a connect that pymodbus reported as failed without saying why."""
        return ConnectionRefused(f"{self}: cannot connect ({what})")

    async def _send(self, link: ClientLink, send: Send) -> ModbusPDU:
        """One exchange on the wire (a bus adds its inter-frame delay and frame check)."""
        return await exchange(link, send(link.client))

    # ------------------------------------------------------------------ public

    @property
    def error_counts(self) -> Mapping[str, int]:
        """Failed attempts by error kind ("timeout", "refused", "exception_2", ...)."""
        return dict(self._error_counts)

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
        await self._retrying("connect", self._open)

    async def close(self) -> None:
        """Close the connection; a later request opens a new one."""
        async with self._exclusive():
            self._drop()

    async def read_block(self, block: ReadBlock) -> list[int]:
        """Read one planned block: register values, or 0/1 per bit for bit tables."""
        limit = MAX_READ_BITS if block.table.is_bit else MAX_READ_REGISTERS
        if not 1 <= block.count <= limit:
            raise RequestError(f"{self}: cannot read {block.count} from {block.table} at once")
        what = f"read of {block.table} {block.address}+{block.count}"
        address, count, unit = block.address, block.count, self.unit_id

        def send(client: Client) -> Awaitable[ModbusPDU]:
            match block.table:
                case Table.HOLDING:
                    return client.read_holding_registers(address, count=count, device_id=unit)  # type: ignore[no-any-return]
                case Table.INPUT:
                    return client.read_input_registers(address, count=count, device_id=unit)  # type: ignore[no-any-return]
                case Table.COIL:
                    return client.read_coils(address, count=count, device_id=unit)  # type: ignore[no-any-return]
                case Table.DISCRETE:
                    return client.read_discrete_inputs(address, count=count, device_id=unit)  # type: ignore[no-any-return]

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

        reply_data = (count + 7) // 8 if block.table.is_bit else 2 * count
        wire_s = self._wire_time_s(8, 5 + reply_data)  # request: unit, fc, addr, count, crc
        return await self._request(what, send, check, wire_s)

    async def write(self, spec: RegisterSpec, words: Sequence[int]) -> None:
        """Write ``words`` (from ``codec.encode``) to the point of ``spec``.

        FC6 for one holding register, FC16 for several, FC5 for a coil. Writes set absolute
        values, so repeating one after a lost reply is safe; they are retried like reads.
        """
        self._check_write(spec, words)
        address, unit = spec.address, self.unit_id
        values = list(words)
        what = f"write of {spec.point!r} to {spec.table} {address}"

        def send(client: Client) -> Awaitable[ModbusPDU]:
            if spec.table is Table.COIL:
                return client.write_coil(address, bool(values[0]), device_id=unit)  # type: ignore[no-any-return]
            if len(values) == 1:
                return client.write_register(address, values[0], device_id=unit)  # type: ignore[no-any-return]
            return client.write_registers(address, values, device_id=unit)  # type: ignore[no-any-return]

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

        wire_s = self._wire_time_s(9 + 2 * len(values), 8)
        await self._request(what, send, check, wire_s)

    # ------------------------------------------------------------------ internals

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

    async def _request(
        self, what: str, send: Send, check: Callable[[ModbusPDU], T], wire_s: float = 0.0
    ) -> T:
        async def attempt() -> T:
            link = await self._open()
            return check(await self._send(link, send))

        return await self._retrying(what, attempt, wire_s)

    async def _retrying(
        self, what: str, attempt: Callable[[], Awaitable[T]], wire_s: float = 0.0
    ) -> T:
        """Run ``attempt`` with retries; each attempt may take the device timeout plus
        ``wire_s``, the time the request and its reply take on a serial line."""
        loop = asyncio.get_running_loop()
        retries = self._attempt_retries()
        attempt_s = self.timeout_s + wire_s
        budget = attempt_s * (retries + 1)
        spent = 0.0  # attempt and backoff time; waiting for the bus is not charged
        tries = 0
        while True:
            failure: FieldbusError
            async with self._exclusive():
                started = loop.time()
                timeout = min(attempt_s, budget - spent)
                try:
                    with self._translated(what, timeout):
                        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                        # cancellation that races with completion (gh-86296).
                        async with asyncio.timeout(timeout):
                            result = await attempt()
                except asyncio.CancelledError:
                    # The caller gave up mid-request; its reply may still come and must
                    # not be read as the answer to the next request.
                    self._drop()
                    raise
                except FieldbusError as error:
                    self._error_counts[error.kind] = self._error_counts.get(error.kind, 0) + 1
                    if self._drops_link(error):
                        self._drop()
                    failure = error
                else:
                    self._after_call(None)
                    return result
                finally:
                    spent += loop.time() - started
            delay = min(self.backoff_s * 2**tries, self.timeout_s)
            out_of_budget = spent + delay + _MIN_ATTEMPT_S > budget
            if not failure.transient or tries >= retries or out_of_budget:
                self._after_call(failure)
                raise failure
            _log.debug("%s: %s failed (%s); retrying in %.3f s", self, what, failure, delay)
            await asyncio.sleep(delay)
            spent += delay
            tries += 1

    @contextmanager
    def _translated(self, what: str, timeout: float) -> Iterator[None]:
        """The one place where library and socket failures become ``FieldbusError``."""
        try:
            yield
        except FieldbusError:
            raise
        except TimeoutError as exc:
            raise self._timeout_error(what, timeout) from exc
        except ConnectError as exc:
            raise self._connect_error(what) from exc
        except _ExceptionReplyError as exc:
            raise DeviceRejected(
                f"{self}: {what} rejected with exception {exc.code} ({exception_name(exc.code)})",
                exc.code,
            ) from exc
        except (ConnectionLostError, ConnectionException, OSError) as exc:
            raise Disconnected(f"{self}: connection lost during {what}") from exc
        except ModbusException as exc:
            raise ProtocolError(f"{self}: bad reply to {what}: {exc}") from exc


async def exchange(
    link: ClientLink,
    request: Awaitable[ModbusPDU],
    garbled: asyncio.Future[FieldbusError] | None = None,
) -> ModbusPDU:
    """Await one reply; fail at once if the peer closes the connection meanwhile, or when
    ``garbled`` is set (an RTU frame check found the reply broken)."""
    reply_task = asyncio.ensure_future(request)
    lost_task = asyncio.ensure_future(link.lost.wait())
    waiting: set[asyncio.Future[Any]] = {reply_task, lost_task}
    if garbled is not None:
        waiting.add(garbled)
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reply_task.cancel()
        lost_task.cancel()
    if reply_task.done() and not reply_task.cancelled():
        reply = reply_task.result()
        if reply.isError():
            raise _ExceptionReplyError(reply)
        return reply
    if garbled is not None and garbled.done():
        raise garbled.result()
    raise ConnectionLostError


def quiet_pymodbus_logging() -> None:
    """pymodbus logs a warning for every failed connect and an error for every unanswered
    request; here each failure already reaches the caller as an exception and a counter.
    An operator who set the level on purpose keeps it."""
    library_logger = logging.getLogger("pymodbus")
    if library_logger.level == logging.NOTSET:
        library_logger.setLevel(logging.ERROR)
