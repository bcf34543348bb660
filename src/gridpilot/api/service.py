"""The API service: uvicorn in-process, serving ``create_app`` over storage and the bus.

``ApiService`` is an async context manager. Entering it

1. refuses an ``api.host`` beyond loopback unless ``api.tls`` is set (tokens must not cross
   a network in clear text), and checks the TLS files (key mode 0600, cert and key match);
2. binds ``api.host``:``api.port`` itself -- or, when that port is taken, a free port
   (logged; ``.url`` tells which) -- so there is no race between probing and binding;
3. starts a ``BusClient`` and a ``SiteBus`` over it: device and controller states, events,
   command and request results, live telemetry (the API serves without the broker too:
   health is then unknown and commands answer 503/504);
4. runs ``uvicorn.Server.serve`` as a task, without uvicorn's signal handlers: the
   composition root owns SIGINT/SIGTERM and leaves through ``__aexit__``.

Leaving it stops accepting connections, lets running requests finish (up to
``shutdown_timeout_s``), then closes the bus client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable, Generator
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import uvicorn
from fastapi import FastAPI

from gridpilot.api.app import create_app
from gridpilot.api.audit import AuditLog
from gridpilot.api.errors import ApiStartError, InsecureBindError
from gridpilot.api.metrics import LocalServices
from gridpilot.api.site_bus import EventBuffer, SiteBus
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.api.stream import StreamHub
from gridpilot.api.tls import server_ssl_context
from gridpilot.api.tokens import TokenStore
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.errors import BusError
from gridpilot.config.models import GridPilotConfig, site_path
from gridpilot.model import now_ms
from gridpilot.net import bind_or_free_port, is_loopback_host
from gridpilot.storage.base import Storage

__all__ = ["ApiService"]

log = logging.getLogger("gridpilot.api")

_START_TIMEOUT_S: Final = 10.0
_INCOMING_BUFFERED: Final = 10_000
"""States, events, results and (while someone streams) telemetry waiting for the feed."""


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers.

    ``Server.serve`` swaps SIGINT/SIGTERM handlers for its own while it runs (with
    ``signal.signal``, which also displaces the event loop's handlers) and re-raises the
    signal afterwards. In GridPilot the composition root handles signals and stops every
    service in order, so here that is a no-op.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiService:
    """Serves the HTTP API of one site. Use as ``async with ApiService(...) as api``."""

    def __init__(
        self,
        config: GridPilotConfig,
        broker: BrokerAddress,
        storage: Storage,
        *,
        base_dir: Path,
        port: int | None = None,
        client_id: str | None = None,
        clock: Callable[[], int] = now_ms,
        shutdown_timeout_s: int = 5,
        local: LocalServices | None = None,
    ) -> None:
        """
        Args:
            config: the site; ``api.host``/``api.port`` say where to listen.
            broker: where the device states are published.
            storage: read for latest values and history (the caller owns it).
            base_dir: where relative paths of ``api`` (tokens, audit log, TLS files) start.
            port: overrides ``api.port`` (0: any free port).
            client_id: MQTT client id; default ``{prefix}-{site}-api-{random}``, unique per
                process so that several API replicas do not take over each other's session.
            clock: epoch ms for ages and default history windows.
            shutdown_timeout_s: how long running requests may take to finish on exit.
            local: services running in this process; ``/metrics`` reads their live figures
                (without them it shows what their states on the bus say).
        """
        self.config = config
        self.broker = broker
        self.storage = storage
        self.host = config.api.host
        self.requested_port = config.api.port if port is None else port
        self.client_id = client_id or (
            f"{config.broker.client_id_prefix}-{config.site.id}-api-{secrets.token_hex(3)}"
        )
        self.base_dir = base_dir
        self.device_states = DeviceStateCache.for_config(config)
        self.events = EventBuffer()
        self.tokens = TokenStore(site_path(base_dir, config.api.tokens_file))
        self.audit = AuditLog(
            site_path(base_dir, config.api.audit_file), config.api.audit_max_bytes
        )
        self.site_bus: SiteBus | None = None
        self._clock = clock
        self._shutdown_timeout_s = shutdown_timeout_s
        self._local = local
        self._stack: AsyncExitStack | None = None
        self._server: _Server | None = None
        self._app: FastAPI | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._entered = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("an ApiService is entered once")
        self._entered = True
        tls = self.config.api.tls
        if not is_loopback_host(self.host) and tls is None:
            raise InsecureBindError(
                f"api.host is {self.host!r} but api.tls is not set: tokens would cross the "
                "network in clear text. Set api.tls.cert_file and api.tls.key_file, or bind "
                "127.0.0.1 (behind a TLS-terminating proxy)"
            )
        ssl_context = None if tls is None else server_ssl_context(tls, self.base_dir)
        sock = _bind(self.host, self.requested_port)
        self._port = sock.getsockname()[1]
        self._stack = stack = AsyncExitStack()
        try:
            bus = await stack.enter_async_context(
                BusClient(
                    self.broker,
                    self.client_id,
                    max_outgoing=64,  # commands and controller requests
                    max_incoming=_INCOMING_BUFFERED,
                    keepalive_s=self.config.broker.keepalive.total_seconds(),
                    connect_timeout_s=self.config.broker.connect_timeout.total_seconds(),
                )
            )
            api_config = self.config.api
            self.site_bus = SiteBus(
                bus,
                self.config.site.id,
                self.device_states,
                self.events,
                timeout_s=api_config.command_timeout.total_seconds(),
                clock=self._clock,
            )
            self._feed_task = asyncio.create_task(self._feed(self.site_bus), name="api:bus")
            stack.push_async_callback(self._stop_feed, bus)
            self._app = app = create_app(
                self.config,
                self.storage,
                self.device_states,
                tokens=self.tokens,
                audit=self.audit,
                events=self.events,
                site_bus=self.site_bus,
                clock=self._clock,
                check_host=is_loopback_host(self.host),
                tls=ssl_context is not None,
                local=self._local,
            )
            config = uvicorn.Config(
                app,
                lifespan="off",  # the app has no startup/shutdown work
                http="h11",
                ws="websockets-sansio",
                ws_max_size=api_config.max_body_bytes,
                log_config=None,  # the application configures logging
                access_log=False,  # the dashboard alone makes several requests a second
                proxy_headers=False,
                server_header=False,
                timeout_graceful_shutdown=self._shutdown_timeout_s,
                limit_concurrency=1000,  # beyond this, 503 rather than unbounded memory
            )
            config.load()
            if ssl_context is not None:
                config.ssl = ssl_context
            self._server = _Server(config)
            stack.push_async_callback(self._stop_server)
            self._serve_task = asyncio.create_task(
                self._server.serve(sockets=[sock]), name="api:http"
            )
            await self._wait_started()
        except BaseException:
            sock.close()
            self._stack = None
            await stack.aclose()
            raise
        log.info("API on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _wait_started(self) -> None:
        server, task = self._server, self._serve_task
        if server is None or task is None:
            raise RuntimeError("use 'async with ApiService(...)'")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT_S
        while not server.started:
            if task.done():
                cause = None if task.cancelled() else task.exception()
                raise ApiStartError(f"the HTTP server on {self.url} stopped while starting") from (
                    cause
                )
            if loop.time() > deadline:
                raise ApiStartError(f"the HTTP server on {self.url} did not start in time")
            await asyncio.sleep(0.01)
        task.add_done_callback(self._serve_ended)

    def _serve_ended(self, task: asyncio.Task[None]) -> None:
        if self._stack is None or task.cancelled():
            return  # stopping
        exc = task.exception()
        log.error("the HTTP server on %s stopped unexpectedly", self.url, exc_info=exc)

    async def _stop_server(self) -> None:
        server, task = self._server, self._serve_task
        if server is None or task is None:
            return
        if self._app is not None:
            # Live streams never end by themselves: end them first, or uvicorn waits the
            # whole graceful period for them and then cancels them mid-write.
            self._app.state.streams.close()
        server.should_exit = True
        try:
            # uvicorn waits up to timeout_graceful_shutdown for requests, then cancels them.
            await asyncio.wait_for(asyncio.shield(task), self._shutdown_timeout_s + 5)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not task.cancelled() and task.exception() is not None:
            log.error("the HTTP server failed", exc_info=task.exception())

    async def _feed(self, site_bus: SiteBus) -> None:
        try:
            await site_bus.run()
        except BusError as exc:
            # E.g. an ACL refuses the subscription: the API still serves values and history,
            # but device health stays unknown. Say so once, loudly.
            log.error(  # noqa: TRY400 -- the message says it all; no traceback needed
                "the API's bus feed is unavailable (health will show unknown, commands "
                "will time out): %s; allow this client to subscribe to gridpilot/v1/%s/#",
                exc,
                self.config.site.id,
            )
        except Exception:  # a bug here must not take the HTTP API down; it is logged
            log.exception("the API's bus feed stopped (health will go stale)")

    async def _stop_feed(self, bus: BusClient) -> None:
        # Closing the client ends its messages(), so the feed finishes by itself; it is
        # cancelled only if it does not within the timeout.
        await bus.close()
        task = self._feed_task
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 2.0)

    # ------------------------------------------------------------------ state

    @property
    def port(self) -> int:
        """The port bound (which differs from ``api.port`` when that one was taken)."""
        if self._port is None:
            raise RuntimeError("use 'async with ApiService(...)'")
        return self._port

    @property
    def streams(self) -> StreamHub:
        """The live streams (SSE and GraphQL subscriptions) this API serves."""
        if self._app is None:
            raise RuntimeError("use 'async with ApiService(...)'")
        hub: StreamHub = self._app.state.streams
        return hub

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080`` (``https://`` with TLS)."""
        host = "127.0.0.1" if self.host == "localhost" else self.host
        if ":" in host:
            host = f"[{host}]"
        scheme = "http" if self.config.api.tls is None else "https"
        return f"{scheme}://{host}:{self.port}"


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket on ``host``:``port``, or on a free port if it is taken."""
    try:
        sock = bind_or_free_port(host, port, reuse_address=True)
    except OSError as exc:
        raise ApiStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    if port and sock.getsockname()[1] != port:
        log.warning(
            "port %d on %s is taken (another GridPilot or web server?); the API uses port %d "
            "instead. Set api.port to choose another one.",
            port,
            host,
            sock.getsockname()[1],
        )
    return sock
