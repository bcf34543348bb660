"""Live telemetry for API clients: the hub every stream draws from, and ``/api/v1/stream``.

    GET /api/v1/stream[?device=ID]      viewer    Server-Sent Events, one ``telemetry`` event
                                                  per message, a comment every 15 s

``StreamHub`` follows the site's telemetry through ``SiteBus`` only while someone streams:
the first subscription adds one listener (so the broker sends telemetry to the API), the
last one removes it. Each message is decoded once and offered to every subscription.

A subscription is one stream client -- an SSE response or one GraphQL ``telemetry``
subscription (``gridpilot.api.graphql``) -- and holds one slot of ``api.stream_clients``;
beyond that a new one is refused (``TooManyStreamsError``, 503). Its frames wait in a bounded
queue (``QUEUE_SIZE``): a client that does not keep up loses the oldest frames, never the
server its memory, and each frame says how many were dropped so far. ``StreamHub.close``
ends every stream (for a shutdown that should not wait for clients to hang up).

A token is checked when a stream opens, and -- because a stream can stay open for weeks --
again every ``RECHECK_S`` while it runs: a stream whose token has been revoked or has
expired since ends with the reason (an SSE ``end`` event, a GraphQL error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

import orjson
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gridpilot.api.auth import Principal, require
from gridpilot.api.errors import UnavailableError
from gridpilot.api.schemas import ErrorOut
from gridpilot.api.tokens import Role
from gridpilot.bus.codec import decode_telemetry
from gridpilot.bus.errors import BusError, PayloadError
from gridpilot.config.models import DeviceConfig
from gridpilot.model import to_rfc3339

__all__ = [
    "HEARTBEAT_S",
    "QUEUE_SIZE",
    "RECHECK_S",
    "StreamHub",
    "Subscription",
    "TelemetryEventOut",
    "TelemetryFrame",
    "TelemetrySource",
    "TokenCheck",
    "TooManyStreamsError",
    "event_stream",
    "frame_json",
    "stream_router",
]

log = logging.getLogger("gridpilot.api")

QUEUE_SIZE: Final = 1000
"""Frames waiting for one slow client; beyond this its oldest are dropped (and counted)."""
HEARTBEAT_S: Final = 15.0
"""An SSE comment after this long without an event keeps proxies and clients from timing out."""
RECHECK_S: Final = 5.0
"""How long an open stream may outlive the revocation or expiry of its token, at most."""

TokenCheck = Callable[[str], str | None]
"""Given a token id: None while it may still stream, else why it may not."""


class TooManyStreamsError(UnavailableError):
    """503: ``api.stream_clients`` streams are open already."""


class TelemetrySource(Protocol):
    """Where telemetry comes from (``SiteBus``): listeners get (device id, payload)."""

    async def add_listener(self, listener: Callable[[str, bytes], None]) -> None: ...

    async def remove_listener(self, listener: Callable[[str, bytes], None]) -> None: ...


class DeviceLookup(Protocol):
    """The configured device or ``NotFoundError`` (``_SiteView.device``)."""

    def device(self, device_id: str) -> DeviceConfig: ...


@dataclass(frozen=True, slots=True)
class TelemetryFrame:
    """One telemetry message of one device, as the streams pass it on."""

    device: str
    ts_ms: int
    seq: int | None
    values: dict[str, float]


class Subscription:
    """One stream client: frames of ``device`` (every device when None), oldest dropped
    beyond ``capacity``. Iterate it for the frames; the iteration ends when it is closed."""

    def __init__(
        self, device: str | None, capacity: int = QUEUE_SIZE, holder: str | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.device = device
        self.capacity = capacity
        self.holder = holder
        """The id of the token it was opened with (None: not tied to a token)."""
        self.dropped = 0
        """Frames lost because the client did not take them in time."""
        self.closed = False
        self.end_reason: str | None = None
        """Why the server ended it, when it did (the token was revoked...)."""
        self._frames: deque[TelemetryFrame] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: TelemetryFrame) -> None:
        """Queue ``frame`` if it is for this subscription; never blocks."""
        if self.closed or (self.device is not None and frame.device != self.device):
            return
        if len(self._frames) >= self.capacity:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    def close(self, reason: str | None = None) -> None:
        """End the iteration at once; frames still queued are discarded (not counted).
        ``reason``: why the server ends it, for the client to see."""
        if reason is not None and not self.closed:
            self.end_reason = reason
        self.closed = True
        self._frames.clear()
        self._ready.set()

    async def next(self, timeout_s: float | None = None) -> TelemetryFrame | None:
        """The next frame; None after ``timeout_s`` without one. Raises ``StopAsyncIteration``
        once closed."""
        while not self._frames:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            if timeout_s is None:
                await self._ready.wait()
                continue
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self._frames.popleft()

    def __aiter__(self) -> AsyncIterator[TelemetryFrame]:
        return self

    async def __anext__(self) -> TelemetryFrame:
        frame = await self.next()
        assert frame is not None  # noqa: S101 -- next() without a timeout always has one
        return frame


class StreamHub:
    """The live streams of one API (see the module docstring)."""

    def __init__(
        self,
        source: TelemetrySource | None,
        *,
        max_clients: int,
        queue_size: int = QUEUE_SIZE,
        token_check: TokenCheck | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.source = source
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.token_check = token_check
        self.recheck_s = recheck_s
        self._recheck: asyncio.Task[None] | None = None
        self.rejected = 0
        """Telemetry payloads that could not be decoded (the ingest service counts why)."""
        self.refused = 0
        """Streams refused because ``max_clients`` were open."""
        self._subscriptions: set[Subscription] = set()
        self._dropped_by_closed = 0
        self._listening = False
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def clients(self) -> int:
        return len(self._subscriptions)

    @property
    def dropped(self) -> int:
        """Frames dropped for slow clients, over all streams since the start."""
        return self._dropped_by_closed + sum(s.dropped for s in self._subscriptions)

    def open(self, device: str | None, holder: str | None = None) -> Subscription:
        """A new subscription for the token ``holder`` (its id), holding one client slot
        until ``release``.

        Raises ``TooManyStreamsError`` beyond ``max_clients``, ``UnavailableError`` without
        a broker connection or while shutting down.
        """
        if self._closed:
            raise UnavailableError("the API is shutting down; reconnect in a moment")
        if self.source is None:
            raise UnavailableError(
                "this API runs without a broker connection; live telemetry needs one"
            )
        if len(self._subscriptions) >= self.max_clients:
            self.refused += 1
            raise TooManyStreamsError(
                f"too many live streams: {self.max_clients} are open (api.stream_clients); "
                "close one, or raise the limit in the site file",
                {"limit": self.max_clients},
            )
        subscription = Subscription(device, self.queue_size, holder)
        self._subscriptions.add(subscription)
        if self.token_check is not None and (self._recheck is None or self._recheck.done()):
            self._recheck = asyncio.get_running_loop().create_task(
                self._recheck_tokens(), name="stream-token-recheck"
            )
        return subscription

    async def _recheck_tokens(self) -> None:
        """End the streams whose token may no longer stream; runs while any are open."""
        check = self.token_check
        assert check is not None  # noqa: S101 -- only started with one
        while self._subscriptions and not self._closed:
            await asyncio.sleep(self.recheck_s)
            verdicts: dict[str, str | None] = {}
            for subscription in tuple(self._subscriptions):
                holder = subscription.holder
                if holder is None:
                    continue
                if holder not in verdicts:
                    verdicts[holder] = check(holder)
                reason = verdicts[holder]
                if reason is not None:
                    log.info("ending a live stream of token %s: %s", holder, reason)
                    subscription.close(reason)

    async def start(self, subscription: Subscription) -> None:
        """Make sure telemetry flows (subscribes on the broker for the first stream).

        Raises ``UnavailableError`` when the broker refuses or does not answer; the
        subscription is released then.
        """
        source = self.source
        assert source is not None  # noqa: S101 -- open() refused it otherwise
        try:
            async with self._lock:
                if not self._listening and self._subscriptions:
                    try:
                        await source.add_listener(self._on_telemetry)
                    except BusError:
                        with contextlib.suppress(BusError):
                            await source.remove_listener(self._on_telemetry)
                        raise
                    self._listening = True
        except BusError as exc:
            await self.release(subscription)
            raise UnavailableError(f"cannot follow the site's telemetry: {exc}") from exc
        except BaseException:  # cancelled (the client left while subscribing): free the slot
            await self.release(subscription)
            raise

    async def release(self, subscription: Subscription) -> None:
        """Close ``subscription`` and free its slot (unsubscribing after the last one)."""
        if subscription not in self._subscriptions:
            return
        self._subscriptions.discard(subscription)
        self._dropped_by_closed += subscription.dropped
        subscription.close()
        async with self._lock:
            if self._listening and not self._subscriptions and self.source is not None:
                self._listening = False
                try:
                    await self.source.remove_listener(self._on_telemetry)
                except BusError as exc:  # closing: the subscription ends with the client
                    log.debug("could not unsubscribe from telemetry: %s", exc)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, device: str | None, holder: str | None = None
    ) -> AsyncIterator[Subscription]:
        """``open`` and ``start`` a subscription; ``release`` it on the way out."""
        subscription = self.open(device, holder)
        try:
            await self.start(subscription)
            yield subscription
        finally:
            await self.release(subscription)

    def close(self) -> None:
        """End every stream now and refuse new ones (the API is stopping)."""
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
        for subscription in tuple(self._subscriptions):
            subscription.close()

    def _on_telemetry(self, device: str, payload: bytes) -> None:
        try:
            telemetry = decode_telemetry(payload)
        except PayloadError:
            self.rejected += 1
            return
        frame = TelemetryFrame(device, telemetry.ts_ms, telemetry.seq, dict(telemetry.values))
        for subscription in tuple(self._subscriptions):
            subscription.offer(frame)


# ---------------------------------------------------------------------------- SSE


class TelemetryEventOut(BaseModel):
    """The data of a ``telemetry`` event on ``/api/v1/stream`` (``frame_json`` makes it)."""

    model_config = ConfigDict(frozen=True)

    device: str
    ts: str = Field(description="When the values were read (RFC 3339 UTC).")
    seq: int | None = Field(description="The publisher's sequence number, if it sends one.")
    values: dict[str, float] = Field(description="Point name -> value in the unit it names.")
    dropped: int = Field(description="Events this client lost so far by reading too slowly.")


def frame_json(frame: TelemetryFrame, dropped: int) -> dict[str, Any]:
    """The JSON of a frame on ``/api/v1/stream`` (``TelemetryEventOut``)."""
    return {
        "device": frame.device,
        "ts": to_rfc3339(frame.ts_ms),
        "seq": frame.seq,
        "values": frame.values,
        "dropped": dropped,
    }


async def event_stream(
    subscription: Subscription, heartbeat_s: float = HEARTBEAT_S
) -> AsyncIterator[bytes]:
    """The SSE body of ``subscription``: a ``telemetry`` event per frame, a comment line
    after ``heartbeat_s`` without one; it ends when the subscription is closed, with an
    ``end`` event when the server ended it for a reason."""
    yield b": GridPilot live telemetry\nretry: 5000\n\n"
    while True:
        try:
            frame = await subscription.next(heartbeat_s)
        except StopAsyncIteration:
            if subscription.end_reason is not None:
                reason = orjson.dumps({"reason": subscription.end_reason})
                yield b"event: end\ndata: " + reason + b"\n\n"
            return
        if frame is None:
            yield b": heartbeat\n\n"
            continue
        data = orjson.dumps(frame_json(frame, subscription.dropped))
        yield b"event: telemetry\ndata: " + data + b"\n\n"


class _EventStreamResponse(StreamingResponse):
    """Streams a subscription and releases it however the response ends (the client hung
    up, the hub closed, the server cancelled the request)."""

    def __init__(self, hub: StreamHub, subscription: Subscription, heartbeat_s: float) -> None:
        super().__init__(
            event_stream(subscription, heartbeat_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.hub = hub
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.hub.release(self.subscription)


_SSE_DESCRIPTION = """\
A Server-Sent Events stream (`text/event-stream`) of the site's live telemetry, for clients
without GraphQL. Each telemetry message is one event:

    event: telemetry
    data: {"device": "meter", "ts": "2026-11-26T12:00:00.000Z", "seq": 42,
           "values": {"active_power_w": 1520.0}, "dropped": 0}

`dropped` counts the events this client lost because it read too slowly (the server keeps at
most 1000 per client). A comment line (`: heartbeat`) comes after 15 s without an event. The
stream does not end by itself; it ends when the client disconnects or the server stops. At
most `api.stream_clients` streams (SSE and GraphQL subscriptions together) are open at once.

A stream whose token is revoked or expires while it is open ends within 5 s with an `end`
event, `data: {"reason": "..."}`; reconnecting then needs a valid token.
"""


_SSE_EVENT_SCHEMA: Final = {
    "description": "One event of the stream (comment lines are not events).",
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["telemetry", "end"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": TelemetryEventOut.model_json_schema(),
        },
    },
}


def stream_router(
    view: DeviceLookup,
    hub: StreamHub,
    *,
    api_prefix: str,
    heartbeat_s: float = HEARTBEAT_S,
) -> APIRouter:
    """``GET {api_prefix}/stream``: Server-Sent Events of ``hub`` (viewer role)."""
    api = APIRouter(prefix=api_prefix, dependencies=[Depends(require(Role.VIEWER))])

    @api.get(
        "/stream",
        tags=["values"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": _SSE_DESCRIPTION,
                "content": {"text/event-stream": {"schema": _SSE_EVENT_SCHEMA}},
            },
            401: {"model": ErrorOut, "description": "No token, or an unknown one."},
            404: {"model": ErrorOut, "description": "Unknown device."},
            503: {
                "model": ErrorOut,
                "description": "No broker connection, or api.stream_clients streams are open.",
            },
        },
    )
    async def stream(
        principal: Annotated[Principal, Depends(require(Role.VIEWER))],
        device: Annotated[
            str | None, Query(description="Only this device's telemetry. Default: all.")
        ] = None,
    ) -> StreamingResponse:
        """Live telemetry as Server-Sent Events (see the 200 response)."""
        if device is not None:
            view.device(device)  # 404 for an unknown one
        subscription = hub.open(device, principal.token_id)
        await hub.start(subscription)
        return _EventStreamResponse(hub, subscription, heartbeat_s)

    return api
