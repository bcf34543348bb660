"""The API's one MQTT client: what it follows, and the requests it sends.

Followed (one consumer loop dispatches by topic):

* ``{site}/+/state`` (retained) into the ``DeviceStateCache`` (devices, gateway, controller);
* ``{site}/events`` into a bounded ``EventBuffer`` (newest kept);
* ``{site}/ieee2030_5/status`` (retained): the 2030.5 client's latest status, as received;
* ``{site}/+/command/result`` and ``{site}/+/request/result`` to the request waiting for them;
* ``{site}/+/telemetry`` to live-stream listeners, only while there are some.

Sent: a device command (``send_command``) or a controller request (``control_request``),
each waiting at most ``timeout_s`` for its one answer, matched by id. The number of requests
in flight is bounded; beyond it the caller is told to retry (``BusBusyError``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import orjson

from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.bus.client import BusClient, Message
from gridpilot.bus.codec import (
    Command,
    CommandResult,
    SiteEvent,
    decode_command_result,
    decode_event,
    encode_command,
)
from gridpilot.bus.errors import PayloadError
from gridpilot.control.requests import Reply, decode_reply
from gridpilot.model import Topic, TopicKind, now_ms, parse_topic, to_rfc3339
from gridpilot.storage.base import Storage

__all__ = [
    "BusBusyError",
    "EventBuffer",
    "RetainedMessage",
    "SiteBus",
    "SiteEvents",
    "TelemetryListener",
]

log = logging.getLogger("gridpilot.api")

_SAME_MS_MAX: Final = 10_000
"""Events sharing one millisecond that a page takes in whole (far more than ever occur)."""
MAX_PENDING: Final = 256
"""Commands and controller requests waiting for an answer at once."""

TelemetryListener = Callable[[str, bytes], None]
"""Called with (device id, payload) for each telemetry message; must not block."""


class RetainedMessage:
    """The latest payload of one retained topic, as received (None: none, or cleared)."""

    def __init__(self) -> None:
        self.payload: bytes | None = None
        self.received_ms: int | None = None

    def take(self, payload: bytes, received_ms: int) -> None:
        self.payload = payload or None  # an empty retained message clears the topic
        self.received_ms = received_ms


class BusBusyError(Exception):
    """Too many requests are waiting for an answer; retry shortly."""


class EventBuffer:
    """The site's most recent events (``capacity`` kept), newest last: what the API shows
    when it has no stored events to read (ingest stores them; see ``Storage.events``)."""

    def __init__(self, capacity: int = 1000) -> None:
        self._events: deque[SiteEvent] = deque(maxlen=capacity)
        self.rejected = 0

    def add(self, payload: bytes, received_ms: int) -> None:
        try:
            self._events.append(decode_event(payload, received_ms))
        except PayloadError:
            self.rejected += 1

    def newest(self, limit: int, level: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in reversed(self._events):
            if level is not None and event.level != level:
                continue
            out.append(
                {
                    "ts": to_rfc3339(event.ts_ms),
                    "level": event.level,
                    "source": event.source,
                    "message": event.message,
                }
            )
            if len(out) >= limit:
                break
        return out


class SiteBus:
    """See the module docstring. ``run`` is the consumer loop; it ends when ``bus`` closes."""

    def __init__(
        self,
        bus: BusClient,
        site: str,
        device_states: DeviceStateCache,
        events: EventBuffer,
        *,
        timeout_s: float,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.bus = bus
        self.site = site
        self.device_states = device_states
        self.events = events
        self.timeout_s = timeout_s
        self._clock = clock
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._listeners: set[TelemetryListener] = set()
        self._telemetry_filter = Topic.filter(TopicKind.TELEMETRY, site)
        self.utility_status = RetainedMessage()
        """The 2030.5 client's retained status (``GET /api/v1/ieee2030_5``)."""

    async def run(self) -> None:
        for topic_filter in (
            self.device_states.topic_filter,
            str(Topic.events(self.site)),
            Topic.filter(TopicKind.COMMAND_RESULT, self.site),
            Topic.filter(TopicKind.REQUEST_RESULT, self.site),
            str(Topic.ieee2030_5_status(self.site)),
        ):
            await self.bus.subscribe(topic_filter, qos=1)
        async for message in self.bus.messages():
            try:
                self._dispatch(message)
            except Exception:  # a bug in one message's handling must not stop the feed
                log.exception("API: could not handle a message on %s", message.topic)

    def _dispatch(self, message: Message) -> None:
        topic = parse_topic(message.topic)
        if topic is None or topic.site != self.site:
            return
        match topic.kind:
            case TopicKind.STATE:
                self.device_states.apply(message.topic, message.payload)
            case TopicKind.EVENTS:
                self.events.add(message.payload, self._clock())
            case TopicKind.TELEMETRY if topic.device is not None:
                for listener in tuple(self._listeners):
                    listener(topic.device, message.payload)
            case TopicKind.COMMAND_RESULT | TopicKind.REQUEST_RESULT:
                self._answer(message.payload)
            case TopicKind.IEEE2030_5_STATUS:
                self.utility_status.take(message.payload, self._clock())
            case _:
                pass

    def _answer(self, payload: bytes) -> None:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            return
        future = self._pending.get(doc["id"])
        if future is not None and not future.done():
            future.set_result(payload)

    # ------------------------------------------------------------------ live telemetry

    async def add_listener(self, listener: TelemetryListener) -> None:
        """Start passing telemetry to ``listener`` (subscribing when it is the first)."""
        first = not self._listeners
        self._listeners.add(listener)
        if first:
            await self.bus.subscribe(self._telemetry_filter, qos=0)

    @property
    def listener_count(self) -> int:
        """Live-stream listeners now; telemetry is subscribed to while there are any."""
        return len(self._listeners)

    async def remove_listener(self, listener: TelemetryListener) -> None:
        self._listeners.discard(listener)
        if not self._listeners:
            await self.bus.unsubscribe(self._telemetry_filter)

    # ------------------------------------------------------------------ requests

    async def _ask(self, request_id: str, topic: str, payload: bytes) -> bytes:
        if len(self._pending) >= MAX_PENDING:
            raise BusBusyError(f"{MAX_PENDING} requests are already waiting for an answer")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.bus.publish(topic, payload, qos=1)
                return await future
        finally:
            self._pending.pop(request_id, None)

    async def send_command(
        self, device: str, point: str, value: float, *, ttl_ms: int, source: str
    ) -> CommandResult:
        """Send a setpoint; the gateway's one result. Raises ``TimeoutError`` when none
        comes within ``timeout_s``, ``BusBusyError``, or ``BusError``."""
        command = Command(uuid.uuid4().hex, point, value, self._clock() + ttl_ms, source)
        answer = await self._ask(
            command.id, str(Topic.command(self.site, device)), encode_command(command)
        )
        try:
            return decode_command_result(answer)
        except PayloadError as exc:
            raise ValueError(f"the gateway's result is malformed: {exc}") from exc

    async def control_request(self, controller: str, request: dict[str, Any]) -> Reply:
        """Send a request to the controller (``gridpilot.control.requests``); its reply."""
        request_id = uuid.uuid4().hex
        answer = await self._ask(
            request_id,
            str(Topic.request(self.site, controller)),
            orjson.dumps({**request, "id": request_id}),
        )
        try:
            return decode_reply(answer)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"the controller's reply is malformed: {exc}") from exc


class SiteEvents:
    """The site's events as the API shows them: the stored ones (ingest stores what is
    published on ``.../events``), or -- while storage holds none, e.g. an API running
    without ingest -- those this process saw on the bus since it started."""

    def __init__(self, site: str, storage: Storage, live: EventBuffer) -> None:
        self.site = site
        self.storage = storage
        self.live = live

    async def page(
        self, limit: int, level: str | None = None, before_ms: int | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Up to ``limit`` events newest first (more when several share the last one's
        millisecond: a page never cuts a millisecond in two), and the ``before_ms`` of the
        next page (None on the last)."""
        stored = await self.storage.events(self.site, limit=limit, before_ms=before_ms, level=level)
        if not stored:
            if before_ms is not None:
                return [], None
            return self.live.newest(limit, level), None
        more = len(stored) == limit
        if more:
            last = stored[-1].ts_ms
            same_ms = await self.storage.events(
                self.site, limit=_SAME_MS_MAX, before_ms=last + 1, level=level
            )
            seen = {(e.ts_ms, e.source, e.message) for e in stored}
            stored += [
                e for e in same_ms if e.ts_ms == last and (e.ts_ms, e.source, e.message) not in seen
            ]
        rows = [
            {"ts": to_rfc3339(e.ts_ms), "level": e.level, "source": e.source, "message": e.message}
            for e in stored
        ]
        return rows, stored[-1].ts_ms if more else None
