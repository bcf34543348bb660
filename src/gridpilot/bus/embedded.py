"""An MQTT broker inside the GridPilot process, for ``gridpilot demo`` and single-box runs.

It is amqtt 0.12: MQTT 3.1.1 only, no ``$share`` shared subscriptions (a subscriber to
``$share/g/t`` receives nothing: run one ingest and subscribe plainly), ~9k msg/s QoS 0 and
~3.7k msg/s QoS 1 (DOMAIN.md) -- enough for a demo site, not for a plant; production uses
Mosquitto with ``deploy/mosquitto/gridpilot.conf``.

It has no authentication, so it listens on loopback only. We open the listening socket
ourselves and hand accepted connections to amqtt through its "external" listener: that way
"port taken, use a free one" is a bind error we handle, not a failed broker start (which
amqtt logs with a traceback), and there is no window between probing a port and binding it.
Looking at each CONNECT on the way in also lets us refuse MQTT 5 properly (amqtt would hang
on it), so clients that negotiate fall back to 3.1.1 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import TracebackType
from typing import Any, Self

from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker

from gridpilot.bus.client import BrokerAddress, MqttVersion
from gridpilot.net import bind_or_free_port, is_loopback_host

__all__ = ["EmbeddedBroker"]

log = logging.getLogger("gridpilot.bus.embedded")

_LISTENER = "default"


class EmbeddedBroker:
    """amqtt on ``host:port``; a free port when ``port`` is 0 or already taken.

    ``async with EmbeddedBroker() as broker: BusClient(broker.address, ...)``
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        if not is_loopback_host(host):
            raise ValueError(
                f"the embedded broker has no authentication and listens on loopback only, "
                f"not {host!r}; run Mosquitto (deploy/mosquitto/gridpilot.conf) to serve a network"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        self._host = host
        self._wanted_port = port
        self._port: int | None = None
        self._server: asyncio.Server | None = None
        self._broker: Any = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port actually bound (may differ from the one asked for)."""
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self._host}:{self.port}"

    @property
    def address(self) -> BrokerAddress:
        """How clients reach this broker (MQTT 3.1.1: amqtt refuses MQTT 5)."""
        return BrokerAddress(self._host, self.port, mqtt_version=MqttVersion.V311)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the embedded broker is already running")
        sock = self._bind()
        self._port = sock.getsockname()[1]
        broker = _new_amqtt_broker(self._host, self._port)
        try:
            await broker.start()
            self._server = await asyncio.start_server(self._on_connection, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(Exception):
                await broker.shutdown()
            raise
        self._broker = broker
        if self._wanted_port not in (0, self._port):
            log.warning(
                "port %d is taken; embedded MQTT broker listens on %s instead",
                self._wanted_port,
                self.url,
            )
        else:
            log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) listens on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, drop the connections, stop amqtt. Idempotent.

        Connections are dropped before amqtt shuts down: amqtt 0.12 ending a session whose
        client is still connected can wait forever on that client's reader.
        """
        server, self._server = self._server, None
        broker, self._broker = self._broker, None
        if server is not None:
            server.close()
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5.0)
        if broker is not None:
            await broker.shutdown()
        if server is not None:
            await server.wait_closed()
        self._port = None

    def _bind(self) -> socket.socket:
        # No SO_REUSEADDR on purpose: on Linux it would let us bind next to a broker in
        # TIME_WAIT trouble, and we want "taken" to mean taken.
        sock = bind_or_free_port(self._host, self._wanted_port, reuse_address=False)
        try:
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:  # always: asyncio.start_server runs each connection in a task
            self._connections[task] = writer
        try:
            head = await _read_connect_head(reader)
            if head is None:
                return  # not MQTT, or gone
            prefix, level = head
            if level == _MQTT5:
                # amqtt does not refuse an MQTT 5 CONNECT: it misparses the properties and
                # waits for bytes that never come. Refuse it here, as MQTT 5 prescribes, so
                # that clients negotiating a version fall back to 3.1.1 at once.
                writer.write(_CONNACK_UNSUPPORTED_PROTOCOL_VERSION)
                await writer.drain()
                return
            broker = self._broker
            if broker is not None:
                await broker.external_connected(
                    _PrefixedReader(prefix, reader), StreamWriterAdapter(writer), _LISTENER
                )
        except (OSError, asyncio.IncompleteReadError):
            # The client went away mid-handshake (amqtt may then fail to half-close the
            # socket); amqtt has cleaned up.
            pass
        finally:
            self._connections.pop(task, None)  # type: ignore[arg-type]
            writer.transport.abort()


_MQTT5 = 5
# CONNACK, remaining length 3, no session, reason 0x84 "unsupported protocol version",
# no properties (the MQTT 5 form, which MQTT 5 clients expect).
_CONNACK_UNSUPPORTED_PROTOCOL_VERSION = b"\x20\x03\x00\x84\x00"


async def _read_connect_head(reader: asyncio.StreamReader) -> tuple[bytes, int] | None:
    """Read a CONNECT up to its protocol level byte: (the bytes read, the level), or None
    when the stream does not start with an MQTT CONNECT."""
    head = bytearray(await reader.readexactly(1))
    if head[0] != 0x10:
        return None
    for _ in range(4):  # remaining length: 1-4 bytes, high bit = more
        byte = await reader.readexactly(1)
        head += byte
        if not byte[0] & 0x80:
            break
    head += await reader.readexactly(7)  # protocol name (2 + 4 bytes "MQTT") + level
    return bytes(head), head[-1]


class _PrefixedReader:
    """amqtt's reader interface (``StreamReaderAdapter``: ``read(n)`` reads exactly n bytes,
    -1 to EOF) over a stream whose first bytes were already read."""

    def __init__(self, prefix: bytes, reader: asyncio.StreamReader) -> None:
        self._prefix = prefix
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        data = b""
        if self._prefix:
            if n < 0:
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:n], self._prefix[n:]
                n -= len(data)
                if n == 0:
                    return data
        rest = await (self._reader.read(n) if n < 0 else self._reader.readexactly(n))
        return data + rest

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def _new_amqtt_broker(host: str, port: int) -> Any:
    config = {
        "listeners": {
            # "external": amqtt serves connections we accept (see the module docstring).
            # It still wants a bind value, which it does not use for this type.
            _LISTENER: {"type": "external", "bind": f"{host}:{port}"},
        },
        # Listing the plugins explicitly keeps amqtt from loading them through entry points
        # (deprecated, warns) and leaves out BrokerSysPlugin, whose psutil deprecation
        # warning pytest (filterwarnings = error) would turn into an error; $SYS topics
        # are of no use to GridPilot. So nothing needs silencing.
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }
    return _Broker(config)


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's Broker with one delivery bug fixed.

    amqtt 0.12.1 ``Broker.client_connected`` replays retained messages for every topic
    filter in the broker-wide subscription table, so a client that connects receives the
    retained messages of *other* clients' subscriptions (seen: ``mosquitto_sub -t
    .../command/result`` printed every device's retained ``state``). Deliver retained
    messages only for filters this session itself holds, as MQTT 3.3.1.3 requires.
    """

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        holders = self._subscriptions.get(subscription[0], ())
        if not any(holder.client_id == session.client_id for holder, _qos in holders):
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)
