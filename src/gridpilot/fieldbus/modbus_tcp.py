"""Modbus TCP I/O with pymodbus: one connection per device, bounded time, our error tree.

Requests, retries and the translation of library errors are ``modbus_client``'s; this
module opens and closes the TCP connection.

After a transport or protocol failure the connection is closed and the next attempt opens
a new one. An exception response (``DeviceRejected``) keeps the connection, and so does a
first timeout: Modbus TCP numbers each request (the MBAP transaction id) and pymodbus skips
a reply whose id is not the pending request's, so a reply that arrives late is dropped,
not taken as the answer to the next request. Reconnecting there would cost a TCP handshake
per late reply exactly when the gateway is already behind (a loaded machine: replies wait
in the socket while the event loop catches up), which makes it fall further behind. A
second timeout in a row closes the connection (a half-open one is replaced within one
poll). A device that answers every request with transaction id 0 defeats the check; such a
late reply of the same block would read as current. A connection the device closed while
idle (many close after a minute) is reopened without counting an error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pymodbus.client import AsyncModbusTcpClient

from gridpilot.fieldbus.errors import DeviceRejected, DeviceTimeout, FieldbusError
from gridpilot.fieldbus.modbus_client import (
    LIBRARY_TIMEOUT_MARGIN_S,
    ClientLink,
    ConnectError,
    ModbusClientDevice,
)

if TYPE_CHECKING:
    from gridpilot.config.models import DeviceConfig

__all__ = ["ModbusTcpDevice"]

_log = logging.getLogger(__name__)


class ModbusTcpDevice(ModbusClientDevice):
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
        super().__init__(unit_id, timeout_s, retries, backoff_s=backoff_s)
        self.host = host
        self.port = port
        self._link: ClientLink | None = None
        self._lock = asyncio.Lock()
        self._timed_out = False
        """The last attempt on the open connection timed out (see the module docstring)."""

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
    def connected(self) -> bool:
        """True while a TCP connection is open (it may still be dead without knowing)."""
        return self._link is not None and bool(self._link.client.connected)

    def _exclusive(self) -> asyncio.Lock:
        return self._lock

    def _drops_link(self, error: FieldbusError) -> bool:
        if isinstance(error, DeviceRejected):
            self._timed_out = False  # it answers: the connection is alive
            return False
        if isinstance(error, DeviceTimeout) and self.connected and not self._timed_out:
            self._timed_out = True  # a late reply is skipped by its transaction id
            return False
        return True

    def _after_call(self, error: FieldbusError | None) -> None:
        if error is None:
            self._timed_out = False

    async def _open(self) -> ClientLink:
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
            timeout=self.timeout_s + LIBRARY_TIMEOUT_MARGIN_S,
            retries=0,
            reconnect_delay=0,  # 0 turns pymodbus' background reconnect off
            trace_connect=lambda up: None if up else lost.set(),
        )
        link = ClientLink(client, lost)
        # Registered before connecting so that a connect cut short by the timeout is closed.
        self._link = link
        if not await link.client.connect():
            self._drop()
            raise ConnectError
        _log.debug("%s: connected", self)
        return link

    def _drop(self) -> None:
        self._timed_out = False
        if self._link is not None:
            self._link.client.close()
            self._link = None
            _log.debug("%s: connection closed", self)
