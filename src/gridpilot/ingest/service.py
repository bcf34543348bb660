"""The ingest service: MQTT telemetry -> validation -> batched, idempotent storage writes.

    broker --(QoS 1, manual ack)--> reader --validate--> bounded buffer --> writer --> Storage
                                      |                                       |
                                      +--> dead letter (.../{site}/deadletter) +--> ack messages

- A message is acknowledged to the broker only after its samples are committed (or, if it
  had none, after everything before it was): a crash in between makes the broker redeliver,
  and storage's idempotency on (site, device, point, ts) turns the redelivery into a
  duplicate count instead of a double row. Acks go out in arrival order.
- The buffer between reader and writer is bounded by ``storage.max_buffered`` samples. When
  storage is slow or down, the writer retries with backoff, the buffer fills, the reader
  waits, unacknowledged messages pile up at the broker (up to the client's receive window),
  and the broker queues the rest -- memory stays bounded everywhere.
- Bad input never stops the service: each rejected message is counted per reason and copied
  to the dead-letter topic; its valid values are stored.
- With ``ingest.require_signatures`` a telemetry message counts only when it carries the
  signature of the topic's device's publisher (``bus.signing``): the site's services' key
  for Modbus devices and the controller, the device's own key for ``mqtt`` devices. A
  device with valid broker credentials then cannot store data for another device even
  where the broker's ACL would let it publish there.
- Batches close at ``storage.batch_size`` samples, when the oldest buffered sample has waited
  ``storage.flush_interval``, or when half the broker's receive window is unacknowledged
  (the broker would stop sending otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from gridpilot.bus.client import BrokerAddress, BusClient, Message, backoff_delay
from gridpilot.bus.codec import DeadLetter, DeadLetterItem, decode_event, encode_dead_letter
from gridpilot.bus.errors import BusRefusedError, BusTimeoutError, PayloadError
from gridpilot.bus.signing import SIGNATURE_PROPERTY, decode_key, verify
from gridpilot.config.models import DeviceProtocol, GridPilotConfig, site_path
from gridpilot.config.secrets import SecretError, read_secret
from gridpilot.ingest.sparkplug import SparkplugIngest
from gridpilot.ingest.validation import (
    Outcome,
    Rejection,
    RejectReason,
    ValidationRules,
    validate,
)
from gridpilot.model import Sample, Topic, TopicKind, now_ms, parse_topic, to_rfc3339
from gridpilot.ops.gaps import GapKind, StreamTracker
from gridpilot.storage.base import Event, Storage, StorageError, WriteResult

__all__ = ["SHARED_GROUP", "IngestService", "IngestStats"]

log = logging.getLogger("gridpilot.ingest")

SHARED_GROUP: Final = "gridpilot-ingest"
_STORAGE_BACKOFF_INITIAL_S: Final = 0.1
_STORAGE_BACKOFF_MAX_S: Final = 10.0
_MAX_WARNED_KEYS: Final = 1_000
_EVENT_ATTEMPTS: Final = 4
"""Tries to store an event (backing off 0.1, 0.2, 0.4 s) before it is logged and dropped."""
_GAP_EVENT_EVERY_MS: Final = 60_000
"""At most one stored gap event per device a minute (by the messages' timestamps)."""
_GAP_WORDS: Final = {
    GapKind.SEQ: "seq (sent, never received)",
    GapKind.INTERVAL: "interval (nothing for 2.5+ intervals)",
}


@dataclass(slots=True)
class _HeldGaps:
    last_event_ms: int | None = None
    gaps: int = 0


@dataclass(slots=True)
class IngestStats:
    """Counters since the service started (read them any time; they only grow)."""

    messages: int = 0
    """Telemetry messages received."""
    messages_rejected: int = 0
    """Messages with at least one rejection (each was copied to the dead-letter topic)."""
    samples_accepted: int = 0
    """Values that passed validation."""
    samples_written: int = 0
    """Values stored as new rows."""
    duplicates: int = 0
    """Values storage already had (redelivered or replayed messages)."""
    rejections: dict[RejectReason, int] = field(
        default_factory=lambda: dict.fromkeys(RejectReason, 0)
    )
    """Rejected values (or whole messages, counted once) by reason."""
    dead_letters: int = 0
    batches: int = 0
    storage_errors: int = 0
    """Failed write attempts (each retried)."""
    storage_rejected: int = 0
    """Samples storage refused as invalid (never expected: validation comes first)."""
    buffered_samples: int = 0
    """Gauge: samples waiting for, or being written to, storage."""
    events_stored: int = 0
    """Site events (alarms, operators' changes) stored as new."""
    events_rejected: int = 0
    """Messages on the events topic that are not events (logged at debug level)."""

    def as_dict(self) -> dict[str, int]:
        """Flat counters, e.g. for ``/metrics``: ``rejected_<reason>`` per reason."""
        flat = {
            "messages": self.messages,
            "messages_rejected": self.messages_rejected,
            "samples_accepted": self.samples_accepted,
            "samples_written": self.samples_written,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "storage_errors": self.storage_errors,
            "storage_rejected": self.storage_rejected,
            "buffered_samples": self.buffered_samples,
        }
        flat.update({f"rejected_{reason.value}": n for reason, n in self.rejections.items()})
        return flat


@dataclass(slots=True)
class _Entry:
    message: Message
    samples: list[Sample]
    weight: int  # buffer units: the samples, or 1 for a message without any
    arrived: float


class _Buffer:
    """FIFO between reader and writer, bounded in samples; space is returned after commit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: deque[_Entry] = deque()
        self.weight = 0  # queued + being written
        self.pending_samples = 0  # queued only
        self.space = asyncio.Event()
        self.data = asyncio.Event()

    async def put(self, entry: _Entry) -> None:
        # A message larger than the whole buffer is let in alone rather than deadlocking.
        while self.weight and self.weight + entry.weight > self.capacity:
            self.space.clear()
            await self.space.wait()
        self.entries.append(entry)
        self.weight += entry.weight
        self.pending_samples += len(entry.samples)
        self.data.set()

    def take(self, max_samples: int) -> list[_Entry]:
        batch: list[_Entry] = []
        count = 0
        entries = self.entries
        while entries and (not batch or count + len(entries[0].samples) <= max_samples):
            entry = entries.popleft()
            batch.append(entry)
            count += len(entry.samples)
        self.pending_samples -= count
        return batch

    def release(self, weight: int) -> None:
        self.weight -= weight
        self.space.set()


class IngestService:
    """Subscribe to the site's telemetry and store it. An async context manager.

    ``embedded_broker`` says the broker is the embedded amqtt, which ignores shared
    subscriptions: with ``ingest.shared_subscription: auto`` the service then subscribes
    plainly. Run several instances against Mosquitto (each with its own ``instance``) to
    split the load. ``base_dir`` (the site file's directory) resolves relative key files.
    """

    def __init__(
        self,
        config: GridPilotConfig,
        broker: BrokerAddress,
        storage: Storage,
        *,
        embedded_broker: bool = False,
        instance: str = "0",
        clock: Callable[[], int] = now_ms,
        stop_timeout_s: float = 5.0,
        base_dir: Path | None = None,
    ) -> None:
        self._config = config
        self._keys = (
            publisher_keys(config, broker, base_dir) if config.ingest.require_signatures else None
        )
        self._storage = storage
        self._site = config.site.id
        self._rules = ValidationRules.from_config(config)
        self._clock = clock
        self._stop_timeout = stop_timeout_s
        self._batch_size = config.storage.batch_size
        self._flush_interval = config.storage.flush_interval.total_seconds()
        self._deadletter_topic = str(Topic.deadletter(self._site))
        mode = config.ingest.shared_subscription
        self.shared = mode == "on" or (mode == "auto" and not embedded_broker)
        telemetry = Topic.filter(TopicKind.TELEMETRY, site=self._site)
        self.topic_filter = f"$share/{SHARED_GROUP}/{telemetry}" if self.shared else telemetry
        events = str(Topic.events(self._site))
        self.events_filter = f"$share/{SHARED_GROUP}/{events}" if self.shared else events
        self.stats = IngestStats()
        self.streams = StreamTracker(config) if config.ingest.stream_gaps else None
        """Gaps per device in the telemetry this instance received (``seq``, interval)."""
        self._gaps_held: dict[str, _HeldGaps] = {}  # configured devices only (the tracker's)
        bus = config.broker
        handles_sparkplug = config.sparkplug is not None and instance == "0"
        birth_ms = clock()
        self._bus = BusClient(
            broker,
            f"{bus.client_id_prefix}-ingest-{self._site}-{instance}",
            # Sparkplug host application: STATE offline when ingest vanishes.
            will=SparkplugIngest.will(config, birth_ms) if handles_sparkplug else None,
            # A persistent session: telemetry published while ingest restarts waits at the
            # broker, and messages not acknowledged (not committed) are redelivered.
            clean_session=False,
            manual_ack=True,
            max_outgoing=bus.max_outgoing,
            keepalive_s=bus.keepalive.total_seconds(),
            connect_timeout_s=bus.connect_timeout.total_seconds(),
        )
        self._buffer = _Buffer(config.storage.max_buffered)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._rng = random.Random()  # noqa: S311 -- backoff jitter
        self._warned: set[tuple[str, RejectReason]] = set()
        # Sparkplug values ingest republished as telemetry: every instance skips them (the
        # copies arrive through the shared subscription; instance 0 stored the originals).
        spb = config.sparkplug
        self._republished = frozenset(
            d.id for d in (spb.devices if spb is not None and spb.republish else ())
        )
        # Sparkplug B: sequence numbers and aliases are per edge node session, so one
        # process must see all of a group's messages: instance "0" subscribes, plainly.
        self.sparkplug = (
            SparkplugIngest(config, self._rules, self._bus, birth_ms=birth_ms)
            if handles_sparkplug
            else None
        )

    @property
    def bus(self) -> BusClient:
        """The service's MQTT client (for health reporting)."""
        return self._bus

    async def __aenter__(self) -> Self:
        await self._bus.__aenter__()  # returns once the first connection attempt settled
        try:
            # Refused credentials fail the start (retrying cannot fix them); a broker that
            # is down does not: the client keeps trying and subscribes when it connects.
            await self._bus.wait_connected(timeout=0)
        except BusTimeoutError as exc:
            log.warning("ingest starts without the broker (%s); it subscribes on connect", exc)
        except BaseException:
            await self._bus.close()
            raise
        # Reader and writer first: a persistent session's backlog arrives the moment we
        # subscribe, and it must flow while we wait for the SUBACK behind it.
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="ingest-writer"),
            asyncio.create_task(self._read_loop(), name="ingest-reader"),
        ]
        try:
            await self._bus.subscribe(self.topic_filter, qos=1)
            await self._bus.subscribe(self.events_filter, qos=1)
            if self.sparkplug is not None:
                await self._bus.subscribe(self.sparkplug.topic_filter, qos=1)
                self._bus.on_connect(self.sparkplug.announce)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "ingest subscribed to %s on %s (batch %d samples / %.3f s)",
            self.topic_filter,
            self._bus.address,
            self._batch_size,
            self._flush_interval,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop reading, write (and acknowledge) what is buffered, disconnect."""
        if not self._tasks:
            return
        writer, reader = self._tasks
        self._tasks = []
        self._stopping = True
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        buffer = self._buffer
        if buffer.entries and not writer.done():
            buffer.data.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._stop_timeout):
                    while buffer.weight and not writer.done():
                        buffer.space.clear()
                        await buffer.space.wait()
        if buffer.weight:
            log.warning(
                "ingest stopped with %d sample(s) unwritten; the broker redelivers them",
                buffer.weight,
            )
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        # Operators splitting a shared subscription read each process's share here.
        stats = self.stats
        log.info(
            "ingest %s stopped: %d messages, %d samples written, %d duplicates, %d rejected "
            "messages",
            self._bus.client_id,
            stats.messages,
            stats.samples_written,
            stats.duplicates,
            stats.messages_rejected,
        )
        if self.sparkplug is not None:
            with contextlib.suppress(Exception):  # closing anyway; the will covers it
                await self.sparkplug.goodbye()
        await self._bus.close()

    # ------------------------------------------------------------------ reader

    async def _read_loop(self) -> None:
        buffer = self._buffer
        loop = asyncio.get_running_loop()
        async for message in self._bus.messages():
            samples = await self._handle(message)
            await buffer.put(_Entry(message, samples, max(1, len(samples)), loop.time()))
            self.stats.buffered_samples = buffer.weight

    async def _handle(self, message: Message) -> list[Sample]:
        if self.sparkplug is not None and self.sparkplug.accepts(message.topic):
            return await self._handle_sparkplug(message)
        topic = parse_topic(message.topic)
        if topic is not None and topic.kind is TopicKind.EVENTS and topic.site == self._site:
            await self._store_event(message)
            return []
        if topic is None or topic.kind is not TopicKind.TELEMETRY or topic.device is None:
            log.debug("ignoring a message on %s", message.topic)
            return []
        if topic.device in self._republished:
            return []  # ingest's own copy of Sparkplug values it stored already
        stats = self.stats
        stats.messages += 1
        now = self._clock()
        if self._keys is not None:
            rejection = _authenticate(self._keys, message, topic.device)
            if rejection is not None:
                await self._reject(message, topic.device, Outcome([], [rejection]), now)
                return []
        outcome = validate(topic.site, topic.device, message.payload, now, self._rules)
        stats.samples_accepted += len(outcome.samples)
        if self.streams is not None and outcome.ts_ms is not None:
            found = self.streams.observe(topic.device, outcome.seq, outcome.ts_ms)
            if found:
                await self._gap_event(topic.device, found, outcome.ts_ms)
        if outcome.rejections:
            await self._reject(message, topic.device, outcome, now)
        return outcome.samples

    async def _handle_sparkplug(self, message: Message) -> list[Sample]:
        assert self.sparkplug is not None  # noqa: S101 -- checked by the caller
        now = self._clock()
        outcome = await self.sparkplug.handle(message.topic, message.payload, now)
        if outcome is None:
            return []
        self.stats.messages += 1
        self.stats.samples_accepted += len(outcome.samples)
        if outcome.rejections:
            where = outcome.device or message.topic
            await self._reject(message, where, Outcome([], outcome.rejections), now)
        return outcome.samples

    async def _store_event(self, message: Message) -> None:
        """Store a site event at once (they are few; each is one short transaction). Its
        acknowledgement then follows the samples before it, in order, like any message."""
        try:
            event = decode_event(message.payload, self._clock())
        except PayloadError as exc:
            self.stats.events_rejected += 1
            log.debug("not an event on %s: %s", message.topic, exc)
            return
        stored = Event(self._site, event.ts_ms, event.level, event.source, event.message)
        for attempt in range(_EVENT_ATTEMPTS):
            try:
                self.stats.events_stored += await self._storage.write_events([stored])
            except StorageError as exc:
                self.stats.storage_errors += 1
                if attempt + 1 == _EVENT_ATTEMPTS:
                    log.warning("an event could not be stored (%s): %s", exc, event.message)
                    return
                await asyncio.sleep(0.1 * 2**attempt)
            else:
                return

    async def _gap_event(
        self, device: str, found: Sequence[tuple[GapKind, int]], ts_ms: int
    ) -> None:
        """Log a gap ingest saw and store it as a site event (``GET /api/v1/events``), so an
        API in another process shows it too. At most one event per device and
        ``_GAP_EVENT_EVERY_MS`` (a flapping device must not flood the events); the gaps in
        between are summed into the next one. One attempt: the metric counts the gap anyway."""
        what = " and ".join(f"{n} by {_GAP_WORDS[kind]}" for kind, n in found)
        log.info("gap in %s's telemetry before %s: messages missing: %s", device,
                 to_rfc3339(ts_ms), what)  # fmt: skip
        held = self._gaps_held.setdefault(device, _HeldGaps())
        if held.last_event_ms is not None and ts_ms - held.last_event_ms < _GAP_EVENT_EVERY_MS:
            held.gaps += 1
            return
        more = f" (and {held.gaps} more gap(s) since the last such event)" if held.gaps else ""
        held.last_event_ms, held.gaps = ts_ms, 0
        event = Event(
            self._site, ts_ms, "warning", "ingest",
            f"gap in the telemetry of {device} before {to_rfc3339(ts_ms)}: messages missing: "
            f"{what}{more}; 'gridpilot gaps' lists the gaps in the stored data",
        )  # fmt: skip
        try:
            self.stats.events_stored += await self._storage.write_events([event])
        except StorageError as exc:
            self.stats.storage_errors += 1
            log.debug("the gap event of %s was not stored: %s", device, exc)

    async def _reject(self, message: Message, device: str, outcome: Outcome, now: int) -> None:
        stats = self.stats
        stats.messages_rejected += 1
        for rejection in outcome.rejections:
            stats.rejections[rejection.reason] += 1
            self._warn_once(device, rejection.reason, rejection.point, rejection.detail)
        letter = DeadLetter(
            topic=message.topic,
            received_at_ms=now,
            payload=message.payload,
            rejections=[
                DeadLetterItem(r.point, r.reason.value, r.detail) for r in outcome.rejections
            ],
        )
        payload = encode_dead_letter(letter, max_payload_bytes=self._rules.max_payload_bytes)
        await self._bus.publish(self._deadletter_topic, payload, qos=1)
        stats.dead_letters += 1

    def _warn_once(self, device: str, reason: RejectReason, point: str | None, detail: str) -> None:
        """The first rejection per (device, reason) is a warning, the rest debug: a broken
        sensor must not flood the log, nor an unknown-device storm grow the set."""
        key = ("*" if reason is RejectReason.UNKNOWN_DEVICE else device, reason)
        if key in self._warned or len(self._warned) >= _MAX_WARNED_KEYS:
            log.debug("rejected %s/%s: %s: %s", device, point, reason, detail)
            return
        self._warned.add(key)
        log.warning(
            "rejected telemetry of %s (%s): %s: %s; further %s rejections of this device "
            "are counted, copied to %s, and logged at debug level",
            device,
            point or "whole message",
            reason,
            detail,
            reason,
            self._deadletter_topic,
        )

    # ------------------------------------------------------------------ writer

    async def _write_loop(self) -> None:
        buffer = self._buffer
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch(buffer, loop)
            batch = buffer.take(self._batch_size)
            samples = [s for entry in batch for s in entry.samples]
            if samples:
                result = await self._write(samples)
                self.stats.samples_written += result.written
                self.stats.duplicates += result.duplicates
                self.stats.batches += 1
            weight = 0
            for entry in batch:
                self._bus.ack(entry.message)
                weight += entry.weight
            buffer.release(weight)
            self.stats.buffered_samples = buffer.weight

    async def _wait_for_batch(self, buffer: _Buffer, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            entries = buffer.entries
            if entries:
                if (
                    buffer.pending_samples >= self._batch_size
                    or len(entries) >= self._bus.receive_window // 2
                    or self._stopping  # write what is there
                ):
                    return
                wait = entries[0].arrived + self._flush_interval - loop.time()
                if wait <= 0:
                    return
            else:
                wait = None
            buffer.data.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await buffer.data.wait()

    async def _write(self, samples: Sequence[Sample]) -> WriteResult:
        """Write until it succeeds; the buffer (bounded) absorbs the outage meanwhile."""
        attempt = 0
        while True:
            try:
                result = await self._storage.write(samples)
            except ValueError:
                # Storage refuses a sample validation should have stopped (a bug, not an
                # outage): retrying the same batch would wedge ingest forever. Keep what
                # storage can take; count and log the rest.
                storable = [s for s in samples if _storable(s)]
                refused = len(samples) - len(storable) or len(samples)
                self.stats.storage_rejected += refused
                log.exception("storage refused %d of %d samples", refused, len(samples))
                if refused == len(samples):
                    return WriteResult(0, 0)
                samples = storable
                continue
            except Exception as exc:  # noqa: BLE001 -- any other storage failure is retried
                self.stats.storage_errors += 1
                if attempt == 0:
                    log.warning(
                        "storage write of %d samples failed: %s; retrying with backoff "
                        "(up to %g s) while up to %d samples buffer",
                        len(samples),
                        exc,
                        _STORAGE_BACKOFF_MAX_S,
                        self._config.storage.max_buffered,
                    )
                await asyncio.sleep(
                    backoff_delay(
                        attempt,
                        initial_s=_STORAGE_BACKOFF_INITIAL_S,
                        max_s=_STORAGE_BACKOFF_MAX_S,
                        jitter=self._rng.random(),
                    )
                )
                attempt += 1
                continue
            if attempt:
                log.info("storage write succeeded after %d failed attempt(s)", attempt)
            return result


def _authenticate(keys: dict[str, bytes], message: Message, device: str) -> Rejection | None:
    """Why the message is not the device's publisher's own, or None when it is. A device
    without a key is not in the registry: validation rejects it as unknown."""
    key = keys.get(device)
    if key is None or verify(key, message.topic, message.payload, message.signature):
        return None
    if message.signature is None:
        detail = (
            f"not signed (MQTT 5 user property {SIGNATURE_PROPERTY!r}), and "
            "ingest.require_signatures is on: configure the publisher's signing key"
        )
    else:
        detail = (
            f"the signature does not verify with the key of {device!r}'s publisher: "
            "published by another device or gateway, or with a different key"
        )
    return Rejection(None, RejectReason.UNAUTHENTICATED, detail)


def publisher_keys(
    config: GridPilotConfig, broker: BrokerAddress, base_dir: Path | None = None
) -> dict[str, bytes]:
    """Device id -> the key its telemetry must be signed with: ``broker.signing_key_*`` (the
    site's services, which publish for Modbus devices and the controller) or an ``mqtt``
    device's own ``signing_key_*``. Raises ``BusRefusedError`` saying which key is missing."""
    services_key = broker.signing_key
    needs_services_key = [d.id for d in config.devices if d.protocol is not DeviceProtocol.MQTT]
    if config.control is not None:
        needs_services_key.append(config.control.id)
    if needs_services_key and services_key is None:
        raise BusRefusedError(
            "ingest.require_signatures is on but broker.signing_key_env/_file is not set: "
            f"the services sign the telemetry of {', '.join(needs_services_key[:5])} with it"
        )
    keys: dict[str, bytes] = {}
    if services_key is not None:
        keys.update(dict.fromkeys(needs_services_key, services_key))
    for device in config.devices:
        if device.protocol is not DeviceProtocol.MQTT:
            continue
        what = f"devices[{device.id}].signing_key"
        file = device.signing_key_file
        if file is not None and base_dir is not None:
            file = site_path(base_dir, file)
        try:
            text = read_secret(what=what, env_name=device.signing_key_env, file=file)
            if text is None:
                raise BusRefusedError(
                    f"ingest.require_signatures is on but mqtt device {device.id!r} has no "
                    "signing_key_env or signing_key_file: give it the key it signs with"
                )
            keys[device.id] = decode_key(text, what=what)
        except (SecretError, ValueError) as exc:
            raise BusRefusedError(str(exc)) from exc
    return keys


def _storable(sample: Sample) -> bool:
    """What every backend accepts: an integer timestamp and a finite value."""
    return type(sample.ts_ms) is int and math.isfinite(sample.value)
