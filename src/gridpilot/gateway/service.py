"""The gateway service: polls Modbus devices, publishes telemetry and state, executes commands.

The I/O shell around the pure parts of this package (``schedule``, ``health``,
``commands``, ``points``). Tasks, all owned by :class:`GatewayService`:

* one poll task per Modbus device: a fixed-rate schedule; a slow or dead device only
  delays itself. A dead device is retried with backoff (``health.BackoffPolicy``). Points
  have poll classes (fast, normal, slow: ``schedule.PollCycle``); the points due at a tick
  are read in merged blocks (``fieldbus.planner``). How late each poll starts against its
  tick is counted in the device's ``poll_jitter`` histogram (state message, ``/metrics``).
  A Modbus TCP device reads one block at a time unless ``max_outstanding`` allows more
  (each on its own connection); the units of a serial bus wait for each other
  (``modbus_rtu.RtuBus``: one request on the line at a time).
* one command task per device: commands for a device run one at a time, each after the
  device's current poll (they share the device's lock), never waiting for other devices.
* one dispatcher: reads ``gridpilot/v1/{site}/+/command``, validates, hands the command to
  its device's bounded queue or answers ``rejected`` at once.

Telemetry and events go through the gateway's on-disk buffer (``gateway.buffer``): each
message is committed there before it is sent and deleted after its PUBACK, so a broker
outage or a crash of the gateway loses nothing it had taken, and the buffer is replayed in
order (``gateway.buffer`` module). Retained states go straight to the bus; while the broker
is unreachable they are not queued (the reconnection re-announces the current ones).

Ordering rule: everything a device publishes (telemetry, state, command results) is
queued while holding that device's lock, and a command's result waits until the device's
last telemetry has left the buffer for the bus, so a command's result is published
after the telemetry read before the write and before the telemetry read after it: the
first telemetry after an ``applied`` result shows the new value.

A task that fails unexpectedly (a bug, not a device error: those are outcomes) is logged
and restarted after ``RESTART_DELAY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import orjson

from gridpilot.bus.client import BrokerAddress, BusClient, Will
from gridpilot.config.models import (
    DeviceConfig,
    DeviceProtocol,
    GatewayConfig,
    GridPilotConfig,
)
from gridpilot.fieldbus.codec import RegisterSpec, decode, encode
from gridpilot.fieldbus.errors import (
    DeviceRejected,
    DeviceTimeout,
    EncodeError,
    FieldbusError,
    ProtocolError,
)
from gridpilot.fieldbus.modbus_rtu import ModbusRtuDevice, RtuBus, SerialLine
from gridpilot.fieldbus.modbus_tcp import ModbusTcpDevice
from gridpilot.fieldbus.planner import ReadBlock, extract, plan_reads
from gridpilot.fieldbus.rtu_frame import MAX_FRAME, MAX_WRITE_FRAME, char_bits, frame_gap_s
from gridpilot.fieldbus.tcp_pool import ModbusTcpPool
from gridpilot.gateway.buffer import BufferWriteError, DiskBuffer, Outbox, OutboxStats
from gridpilot.gateway.commands import (
    Applied,
    Command,
    FailCode,
    Failed,
    Outcome,
    RecentIds,
    RejectCode,
    Rejected,
    encode_result,
    judge_readback,
    not_representable,
    parse_command,
    rejected_as,
    status_of,
)
from gridpilot.gateway.health import BackoffPolicy, DeviceHealth, DeviceStatus, hint_for
from gridpilot.gateway.payloads import (
    device_state_payload,
    gateway_state_payload,
    gateway_will_payload,
    telemetry_payload,
)
from gridpilot.gateway.point_faults import FaultReport
from gridpilot.gateway.points import PointFault, ReadPlan, evaluate, register_spec
from gridpilot.gateway.schedule import FixedRateSchedule, PollCycle
from gridpilot.gateway.sunspec_poll import DISCOVERY_REQUESTS, SunSpecSession
from gridpilot.model import Topic, TopicKind, now_ms, parse_topic, to_rfc3339
from gridpilot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

COMMAND_QUEUE_SIZE = 16
"""Commands waiting per device at most; more are rejected as ``busy``."""
RESTART_DELAY_S = 1.0
"""Wait before restarting a task that failed unexpectedly."""
_SLACK_S = 1.0
"""Added to the worst-case time of a device call for the guard timeout around it."""
STAGGER_S = 0.002
"""Devices start their poll ticks this far apart (at most spread over a whole tick)."""


class DeviceConnection(Protocol):
    """What the gateway needs of a device driver (``ModbusTcpDevice`` is one)."""

    async def read_block(self, block: ReadBlock) -> list[int]: ...

    async def write(self, spec: RegisterSpec, words: Sequence[int]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class CountsAttempts(Protocol):
    """A driver that counts its failed attempts by kind, retries included (ours do)."""

    @property
    def error_counts(self) -> Mapping[str, int]: ...


Connector = Callable[[DeviceConfig], DeviceConnection]


def modbus_connector(device: DeviceConfig) -> DeviceConnection:
    """The Modbus TCP driver with the device's timeout and retries (TCP devices only): one
    connection, or ``max_outstanding`` of them side by side."""
    if device.max_outstanding > 1:
        return ModbusTcpPool(
            [ModbusTcpDevice.from_config(device) for _ in range(device.max_outstanding)]
        )
    return ModbusTcpDevice.from_config(device)


class ModbusConnector:
    """The production drivers: Modbus TCP per device; Modbus RTU per unit, the units of one
    serial bus (or of one RTU-over-TCP converter, by host:port) sharing one ``RtuBus`` so
    that the line carries one request at a time."""

    def __init__(self, config: GridPilotConfig) -> None:
        self._config = config
        self._buses: dict[str, RtuBus] = {}

    def __call__(self, device: DeviceConfig) -> DeviceConnection:
        timeout_s = device.timeout.total_seconds()
        match device.protocol:
            case DeviceProtocol.MODBUS_RTU:
                if device.bus is None:
                    raise ValueError(f"device {device.id!r} has no bus")
                bus = self._serial_bus(device.bus)
            case DeviceProtocol.MODBUS_RTU_TCP:
                if device.host is None:
                    raise ValueError(f"device {device.id!r} has no host")
                key = f"{device.host}:{device.port}"
                bus = self._buses.get(key) or self._buses.setdefault(
                    key, RtuBus(key, host=device.host, port=device.port)
                )
            case _:
                return modbus_connector(device)
        return ModbusRtuDevice(bus, device.unit_id, timeout_s, device.retries)

    def _serial_bus(self, bus_id: str) -> RtuBus:
        bus = self._buses.get(f"serial:{bus_id}")
        if bus is not None:
            return bus
        settings = self._config.serial_bus(bus_id)
        if settings is None:  # config check rejects this
            raise ValueError(f"no serial bus {bus_id!r}")
        line = SerialLine(
            settings.port,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            frame_gap_s=None if settings.frame_gap is None else settings.frame_gap.total_seconds(),
        )
        bus = RtuBus(bus_id, line=line)
        self._buses[f"serial:{bus_id}"] = bus
        return bus


def _wire_s(config: GridPilotConfig, device: DeviceConfig) -> float:
    """Longest time one request and its reply of ``device`` take on its serial line."""
    if device.protocol is not DeviceProtocol.MODBUS_RTU or device.bus is None:
        return 0.0
    bus = config.serial_bus(device.bus)
    if bus is None:
        return 0.0
    gap_s = (
        bus.frame_gap.total_seconds()
        if bus.frame_gap is not None
        else frame_gap_s(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)
    )
    bits = char_bits(bus.bytesize, bus.parity, bus.stopbits)
    return (MAX_WRITE_FRAME + MAX_FRAME) * bits / bus.baudrate + 2 * gap_s


def _bus_key(device: DeviceConfig) -> str | None:
    """Devices with the same key share one line and wait for each other."""
    if device.protocol is DeviceProtocol.MODBUS_RTU:
        return f"serial:{device.bus}"
    if device.protocol is DeviceProtocol.MODBUS_RTU_TCP:
        return f"{device.host}:{device.port}"
    return None


class _Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None: ...


_RESULT_ORDER_WAIT_S = 2.0
"""How long a command result waits for the device's telemetry to leave the buffer (it is
published anyway after this: the broker is away or the buffer holds a long backlog)."""


class _DeviceWorker:
    """Everything the gateway holds about one polled device."""

    def __init__(
        self,
        *,
        site: str,
        device: DeviceConfig,
        gateway: GatewayConfig,
        connection: DeviceConnection,
        bus: _Bus,
        outbox: Outbox,
        clock: Callable[[], int],
        state_interval_s: float,
        bus_wait_s: float = 0.0,
        wire_s: float = 0.0,
        phase: float = 0.0,
    ) -> None:
        self.site = site
        self.phase = phase
        """Where in its tick this device is polled, as a fraction of the tick (0 <= x < 1)."""
        self.device = device
        self.connection = connection
        self.bus = bus
        self.outbox = outbox
        self._last_buffered = 0
        """Id in the buffer of this device's last telemetry or event."""
        self.clock = clock
        self.state_interval_s = state_interval_s
        self.interval_s = device.poll_interval.total_seconds()
        self.plan = ReadPlan(device)
        self.blocks = self.plan.all_blocks
        self.poll_classes = device.poll_classes or gateway.poll_classes
        self.concurrent_reads = device.max_outstanding > 1
        # Checked once: isinstance against a runtime Protocol is slow for every poll.
        self._attempt_counts = connection if isinstance(connection, CountsAttempts) else None
        self.sunspec = SunSpecSession(device) if device.sunspec is not None else None
        # A request may take (timeout + its time on a serial wire) x (retries + 1)
        # (ModbusClientDevice's budget).
        self.request_budget_s = (device.timeout.total_seconds() + wire_s) * (device.retries + 1)
        # On a shared serial line each request may first wait for the others' (bus_wait_s).
        self.poll_budget_s = (self.request_budget_s + bus_wait_s) * max(
            math.ceil(len(self.blocks) / device.max_outstanding), 1
        ) + _SLACK_S
        if self.request_budget_s > self.interval_s:
            # A silent device costs timeout x (retries + 1) per poll: detection of an
            # outage then takes that long per failed poll, not one interval.
            log.info(
                "%s: timeout %g s x %d attempt(s) exceeds poll_interval %g s; an unanswering "
                "device is reported offline only after %d such polls",
                device.id,
                device.timeout.total_seconds(),
                device.retries + 1,
                self.interval_s,
                gateway.offline_after_failures,
            )
        self.health = DeviceHealth(
            gateway.offline_after_failures,
            BackoffPolicy(self.interval_s, gateway.max_backoff.total_seconds()),
            clock(),
        )
        self.lock = asyncio.Lock()
        self.commands: asyncio.Queue[Command] = asyncio.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self.recent = RecentIds()
        self.current: Command | None = None
        self.executing = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = False
        self.seq = 0
        self._alarmed = False
        """An offline alarm was published and the device has not answered since."""
        self._attempts_logged: dict[str, int] = {}
        """Failed attempts of each kind when it was last logged."""
        self._last_state_at = -math.inf

    @property
    def id(self) -> str:
        return self.device.id

    # ------------------------------------------------------------------ polling

    async def run_polls(self) -> None:
        if self.sunspec is not None:
            await self._run_sunspec_polls(self.sunspec)
            return
        if not self.blocks:
            log.info("%s: no numeric points to poll", self.id)
            return
        loop = asyncio.get_running_loop()
        cycle = PollCycle(
            self.interval_s,
            self.plan.classes,
            fast_divisor=self.poll_classes.fast_divisor,
            slow_multiple=self.poll_classes.slow_multiple,
        )
        schedule = FixedRateSchedule(cycle.tick_s, loop.time() + self.phase * cycle.tick_s)
        while True:
            await asyncio.sleep(max(0.0, schedule.deadline_s - loop.time()))
            if self.stopping:  # also ends a loop whose cancellation was swallowed (tasks.py)
                return
            async with self.lock:
                # Jitter: how late this poll starts against its tick (a command holding the
                # device counts: the poll is late all the same).
                self.health.jitter.observe(loop.time() - schedule.deadline_s)
                await self._poll(self.plan.blocks(cycle.due(schedule.index)))
            now_s = loop.time()
            delay = self.health.retry_delay_s(self.clock())
            tick = schedule.advance(now_s, None if delay is None else now_s + delay)
            if tick.skipped:
                self.health.ticks_skipped(tick.skipped)
                log.debug("%s: poll overran, %d tick(s) skipped", self.id, tick.skipped)

    async def _poll(self, blocks: Sequence[ReadBlock]) -> None:
        """One poll: read ``blocks``, publish telemetry, update health. Holds the lock."""
        ts = self.clock()
        was = self.health.status
        words_by_spec: list[tuple[RegisterSpec, Sequence[int]]] = []
        refused: list[DeviceRejected] = []
        failure: FieldbusError | None = None
        try:
            async with asyncio.timeout(self.poll_budget_s):
                if self.concurrent_reads and len(blocks) > 1:
                    failure = await self._read_side_by_side(blocks, words_by_spec, refused)
                else:
                    for block in blocks:
                        try:
                            words = await self.connection.read_block(block)
                        except DeviceRejected as exc:
                            # The device answered: the rest of the map may still be readable.
                            refused.append(exc)
                            continue
                        words_by_spec.extend(_split(self.plan, block, words))
        except FieldbusError as exc:
            failure = exc
        except TimeoutError:
            failure = DeviceTimeout(
                f"{self.id}: poll did not finish within {self.poll_budget_s:.3g} s"
            )
            await self.connection.close()
        now = self.clock()
        if failure is None and refused and not words_by_spec:
            failure = refused.pop(0)  # every block refused: nothing was read
        if failure is not None:
            changed = self.health.poll_failed(failure.kind, str(failure), now)
        else:
            changed = self.health.poll_succeeded(now)
        for rejection in refused:
            changed = self.health.error(rejection.kind, str(rejection), now) or changed
        self._count_attempts()
        readings = evaluate(self.device, words_by_spec, self.plan.points)
        read = {spec.point for spec, _ in words_by_spec}
        changed = await self._note_point_faults(read, readings.faults, now) or changed
        self.health.values_dropped(len(readings.out_of_range), len(readings.invalid))
        for _, reason in readings.invalid:
            changed = self.health.error("decode", reason, now) or changed
        if readings.out_of_range:
            log.debug("%s: out of valid range, dropped: %s", self.id, readings.out_of_range)
        if readings.values:
            self.seq += 1
            await self._buffered(
                str(Topic.telemetry(self.site, self.id)),
                telemetry_payload(ts, self.seq, readings.values),
            )
        await self._announce_transition(was, now)
        loop_now = asyncio.get_running_loop().time()
        if changed or loop_now - self._last_state_at >= self.state_interval_s:
            await self.publish_state()

    async def _read_side_by_side(
        self,
        blocks: Sequence[ReadBlock],
        words_by_spec: list[tuple[RegisterSpec, Sequence[int]]],
        refused: list[DeviceRejected],
    ) -> FieldbusError | None:
        """Every block at once (the driver bounds how many are on the wire); the first
        failure that is not a refusal, if any."""
        results = await asyncio.gather(
            *(self.connection.read_block(b) for b in blocks), return_exceptions=True
        )
        failure: FieldbusError | None = None
        for block, result in zip(blocks, results, strict=True):
            if isinstance(result, DeviceRejected):
                refused.append(result)
            elif isinstance(result, FieldbusError):
                failure = failure or result
            elif isinstance(result, BaseException):
                raise result
            else:
                words_by_spec.extend(_split(self.plan, block, result))
        return failure

    async def _run_sunspec_polls(self, session: SunSpecSession) -> None:
        """The poll loop of a SunSpec device: every selected model each interval (the
        models are read whole, so poll classes do not apply)."""
        loop = asyncio.get_running_loop()
        schedule = FixedRateSchedule(self.interval_s, loop.time())
        while True:
            await asyncio.sleep(max(0.0, schedule.deadline_s - loop.time()))
            if self.stopping:
                return
            async with self.lock:
                self.health.jitter.observe(loop.time() - schedule.deadline_s)
                await self._poll_sunspec(session)
            now_s = loop.time()
            delay = self.health.retry_delay_s(self.clock())
            tick = schedule.advance(now_s, None if delay is None else now_s + delay)
            if tick.skipped:
                self.health.ticks_skipped(tick.skipped)

    async def _poll_sunspec(self, session: SunSpecSession) -> None:
        """One poll of a SunSpec device: discover if needed, read and decode its models,
        publish the implemented points (missing ones are absent), update health and the
        points commands may set. Holds the lock."""
        ts = self.clock()
        was = self.health.status
        failure: FieldbusError | None = None
        budget_s = self.request_budget_s * (len(session.blocks) + DISCOVERY_REQUESTS) + _SLACK_S
        try:
            async with asyncio.timeout(budget_s):
                await session.poll(self.connection.read_block)
        except FieldbusError as exc:  # SunSpecError included (a ProtocolError)
            failure = exc
        except TimeoutError:
            failure = DeviceTimeout(f"{self.id}: SunSpec poll did not finish in {budget_s:.3g} s")
            await self.connection.close()
        now = self.clock()
        if failure is not None:
            changed = self.health.poll_failed(failure.kind, str(failure), now)
        else:
            changed = self.health.poll_succeeded(now)
        self._count_attempts()
        if failure is None:
            values, _missing = session.values()
            commanded = session.command_device()
            if commanded is not None:
                self.device = commanded  # the command path reads points from here
            if values:
                self.seq += 1
                await self._buffered(
                    str(Topic.telemetry(self.site, self.id)),
                    telemetry_payload(ts, self.seq, values),
                )
        await self._announce_transition(was, now)
        loop_now = asyncio.get_running_loop().time()
        if changed or loop_now - self._last_state_at >= self.state_interval_s:
            await self.publish_state()

    async def _note_point_faults(
        self, read: Collection[str], faults: Sequence[PointFault], now: int
    ) -> bool:
        """Keep the device's point faults (``read``: the points this poll read); each new
        fault is an alarm on the site's events topic, each cleared one an info. True when
        the published state changed."""
        changes = self.health.point_faults.update(
            read, (FaultReport(f.point, str(f.kind), f.message) for f in faults), now
        )
        for fault in changes.raised:
            log.warning("%s: %s", self.id, fault.message)
            await self._event("alarm", f"{self.id}: {fault.message}", now)
        for point in changes.cleared:
            log.info("%s.%s reads a value again", self.id, point)
            await self._event("info", f"{self.id}.{point} reads a value again", now)
        return bool(changes)

    def _count_attempts(self) -> None:
        """Fold the driver's failed attempts into the health counters; log each kind at its
        1st, 10th, 100th... occurrence (a noisy line cured by retries is worth knowing of,
        not worth a line per poll)."""
        source = self._attempt_counts
        if source is None:
            return
        for kind in self.health.attempts_counted(source.error_counts):
            count = self.health.counters.attempt_errors[kind]
            if count >= self._attempts_logged.get(kind, 0) * 10:
                self._attempts_logged[kind] = max(count, 1)
                log.info(
                    "%s: %d request attempt(s) failed with %s so far (retries included) -- %s",
                    self.id,
                    count,
                    kind,
                    hint_for(kind),
                )

    async def _announce_transition(self, was: DeviceStatus, now: int) -> None:
        """Log a change of online state, and publish an alarm on the site's events topic when
        the device is declared dead (also one that never answered since start-up) and a
        notice when it answers again: an operator watching the dashboard's alarms sees a
        device drop out, and why."""
        health = self.health
        if health.status is not was and health.status is DeviceStatus.ONLINE:
            log.info("%s: online", self.id)
        if health.is_dead and not self._alarmed:
            self._alarmed = True
            error = health.last_error
            what = error.message if error is not None else "?"
            log.warning(
                "%s: offline after %d failed poll(s): %s",
                self.id,
                health.consecutive_failures,
                what,
            )
            message = (
                f"{self.id} offline after {health.consecutive_failures} failed poll(s): {what}"
            )
            if error is not None and error.hint:
                message += f" -- {error.hint}"
            await self._event("alarm", message, now)
        elif self._alarmed and health.status is DeviceStatus.ONLINE:
            self._alarmed = False
            await self._event("info", f"{self.id} is online again", now)

    async def _event(self, level: str, message: str, now: int) -> None:
        await self._buffered(
            str(Topic.events(self.site)),
            orjson.dumps(
                {
                    "ts": to_rfc3339(now),
                    "level": level,
                    "source": f"gateway/{self.id}",
                    "message": message,
                }
            ),
        )

    async def _buffered(self, topic: str, payload: bytes) -> None:
        """Commit to the disk buffer (sent from there in order, deleted after PUBACK)."""
        try:
            self._last_buffered = await self.outbox.put(topic, payload)
        except BufferWriteError as exc:
            # Counted by the buffer (write_failed) and logged there; the poll goes on.
            log.debug("%s: not buffered: %s", self.id, exc)

    async def publish_state(self, reason: str | None = None) -> None:
        self._last_state_at = asyncio.get_running_loop().time()
        if reason is None and not self.bus.connected:
            # Retained, superseded by the next one, and re-announced on reconnection:
            # queueing states while the broker is away would only fill the bus's queue.
            return
        await self.bus.publish(
            str(Topic.state(self.site, self.id)),
            device_state_payload(self.health.snapshot(), self.clock(), reason),
            qos=1,
            retain=True,
        )

    # ------------------------------------------------------------------ commands

    def submit(self, command: Command) -> Rejected | None:
        """Queue a validated command; a rejection when it cannot be queued."""
        if self.stopping:
            return rejected_as(command, RejectCode.STOPPING, "the gateway is stopping")
        try:
            self.commands.put_nowait(command)
        except asyncio.QueueFull:
            return rejected_as(
                command,
                RejectCode.BUSY,
                f"{self.commands.qsize()} commands are already waiting for {self.id}",
            )
        return None

    async def run_commands(self) -> None:
        while True:
            command = await self.commands.get()
            self.current = command
            self.idle.clear()
            try:
                async with self.lock:
                    self.executing = True
                    outcome = await self._execute(command)
                    await self.finish(outcome)
            finally:
                self.executing = False
                self.current = None
                self.idle.set()

    async def _execute(self, command: Command) -> Outcome:
        """Write, read back, judge. Holds the lock."""
        now = self.clock()
        if command.is_expired(now):
            return rejected_as(
                command,
                RejectCode.EXPIRED,
                f"expired at {to_rfc3339(command.expires_ms)} while waiting for {self.id}",
            )
        point = self.device.point(command.point)
        if point is None:  # parse_command checked it against the same configuration
            return rejected_as(command, RejectCode.UNKNOWN_POINT, f"no point {command.point!r}")
        spec = register_spec(point)
        try:
            words = encode(spec, command.value)
        except EncodeError as exc:
            return not_representable(command, str(exc))
        try:
            async with asyncio.timeout(self.request_budget_s + _SLACK_S):
                await self.connection.write(spec, words)
        except (FieldbusError, TimeoutError) as exc:
            kind, message = _describe(exc, "write")
            changed = self.health.error(kind, f"write of {command.point}: {message}", self.clock())
            if changed:
                await self.publish_state()
            return Failed(command, FailCode.WRITE_FAILED, f"{kind}: {message}")
        block = plan_reads([spec], max_gap=0)[0]
        try:
            async with asyncio.timeout(self.request_budget_s + _SLACK_S):
                readback = decode(
                    spec, extract(block, await self.connection.read_block(block), spec)
                )
        except (FieldbusError, TimeoutError, ValueError) as exc:
            kind, message = _describe(exc, "read-back")
            changed = self.health.error(
                kind, f"read-back of {command.point}: {message}", self.clock()
            )
            if changed:
                await self.publish_state()
            return Failed(
                command, FailCode.READBACK_FAILED, f"written, but read-back failed: {message}"
            )
        outcome = judge_readback(command, point, readback)
        if isinstance(outcome, Failed) and self.health.error("readback", outcome.reason, now):
            await self.publish_state()
        return outcome

    async def finish(self, outcome: Outcome) -> None:
        """Count and publish the one result of a command."""
        status = status_of(outcome)
        self.health.command_outcome(status)
        match outcome:
            case Applied(command, readback):
                log.info(
                    "%s: %s = %g applied (read back %g)",
                    self.id,
                    command.point,
                    command.value,
                    readback,
                )
            case Failed(command, _, reason):
                log.warning("%s: command %s failed: %s", self.id, command.id, reason)
            case Rejected(_, code, reason, cmd_id):
                log.info("%s: command %s rejected (%s): %s", self.id, cmd_id, code, reason)
        if self.bus.connected:
            # The telemetry read before (and during) the command leaves the buffer first.
            await self.outbox.wait_handed(self._last_buffered, _RESULT_ORDER_WAIT_S)
        await publish_result(self.bus, self.site, self.id, outcome, self.clock())

    def drain(self) -> list[Command]:
        """Take every queued command out (the gateway is stopping)."""
        drained: list[Command] = []
        while not self.commands.empty():
            drained.append(self.commands.get_nowait())
        return drained


def _split(
    plan: ReadPlan, block: ReadBlock, words: list[int]
) -> list[tuple[RegisterSpec, Sequence[int]]]:
    try:
        return plan.split(block, words)
    except ValueError as exc:  # the driver returned the wrong number of words
        raise ProtocolError(str(exc)) from exc


def _describe(exc: BaseException, what: str) -> tuple[str, str]:
    if isinstance(exc, FieldbusError):
        return exc.kind, str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", f"{what} did not finish in time"
    return "protocol", str(exc)


async def publish_result(bus: _Bus, site: str, device: str, outcome: Outcome, ts_ms: int) -> None:
    await bus.publish(str(Topic.command_result(site, device)), encode_result(outcome, ts_ms), qos=1)


class GatewayService:
    """The Modbus gateway of one site. Use as ``async with GatewayService(config, broker):``.

    Entering connects nothing synchronously: the bus client connects (and reconnects) in the
    background and queues what is published meanwhile; device connections open on the first
    poll. Leaving publishes every device and the gateway ``offline`` (retained) and closes.

    ``connector`` builds the driver of a device (default: ``ModbusConnector``: Modbus TCP,
    and RTU units sharing their bus); ``clock`` gives wall
    time in epoch ms (timestamps, expiry); ``state_interval`` is how often a device's state
    is re-published when nothing changed (default: the site's ``gateway.state_interval``).
    ``buffer_path`` is the on-disk buffer's file (``run`` passes ``gateway.buffer.path``
    resolved against the site file's directory); None keeps the buffer in memory (SQLite
    ``:memory:``, the same code, nothing survives the process).
    """

    def __init__(
        self,
        config: GridPilotConfig,
        broker: BrokerAddress,
        *,
        connector: Connector | None = None,
        clock: Callable[[], int] = now_ms,
        state_interval: timedelta | None = None,
        client_id: str | None = None,
        buffer_path: Path | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.site = config.site.id
        self.gateway_id = config.gateway.id
        self._connector = connector if connector is not None else ModbusConnector(config)
        self._clock = clock
        self._state_interval_s = (state_interval or config.gateway.state_interval).total_seconds()
        self._client_id = client_id or (
            f"{config.broker.client_id_prefix}-{self.site}-{self.gateway_id}"
        )
        self._devices = {d.id: d for d in config.devices}
        self._polled = [d for d in config.devices if d.protocol.is_modbus]
        self._workers: dict[str, _DeviceWorker] = {}
        self._poll_tasks: list[asyncio.Task[None]] = []
        self._command_tasks: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._bus: BusClient | None = None
        self._since_ms = clock()
        self._stopping = False
        limits = config.gateway.buffer
        self._disk = DiskBuffer(
            buffer_path, max_messages=limits.max_messages, max_bytes=limits.max_bytes
        )
        self._outbox: Outbox | None = None
        self._drop_alarm_at = 1
        """Total dropped at which the next buffer-full alarm is published (1, 10, 100...)."""
        self._side_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._since_ms = self._clock()
        broker = self.config.broker
        bus = BusClient(
            self.broker,
            self._client_id,
            will=Will(
                str(Topic.state(self.site, self.gateway_id)),
                gateway_will_payload(d.id for d in self._polled),
                qos=1,
                retain=True,
            ),
            # A persistent session: commands sent while the gateway is away are delivered
            # when it is back, and each still gets its one result (``expired`` by then).
            clean_session=False,
            max_outgoing=broker.max_outgoing,
            keepalive_s=broker.keepalive.total_seconds(),
            connect_timeout_s=broker.connect_timeout.total_seconds(),
        )
        limits = self.config.gateway.buffer
        outbox = Outbox(
            self._disk,
            bus,
            # Handed messages count against the buffer's bounds but are never dropped (they
            # may yet be delivered): half the message bound at most, so drops can keep it.
            window=max(1, min(500, broker.max_outgoing // 2, limits.max_messages // 2)),
            on_drop=self._on_buffer_drop,
        )
        self._outbox = outbox
        # Workers first: a register map that cannot be planned fails before any I/O.
        # Devices start STAGGER_S apart: 500 devices at 1 s are polled one every 2 ms rather
        # than all at once, so no poll waits behind the other 499 (jitter) and the devices'
        # replies do not all arrive together. A fixed step, not an even spread over the tick:
        # a small site's meter and battery are still read a few ms apart, so the controller's
        # snapshot of them is coherent (spread over a 1 s tick, a 9-device site read its
        # battery 0.2 s after its meter).
        for index, device in enumerate(self._polled):
            key = _bus_key(device)
            bus_wait_s = sum(
                (other.timeout.total_seconds() + _wire_s(self.config, other)) * (other.retries + 1)
                for other in self._polled
                if key is not None and other is not device and _bus_key(other) == key
            )
            self._workers[device.id] = _DeviceWorker(
                phase=min(
                    index / len(self._polled),
                    index * STAGGER_S / device.poll_interval.total_seconds(),
                ),
                bus_wait_s=bus_wait_s,
                wire_s=_wire_s(self.config, device),
                site=self.site,
                device=device,
                gateway=self.config.gateway,
                connection=self._connector(device),
                bus=bus,
                outbox=outbox,
                clock=self._clock,
                state_interval_s=self._state_interval_s,
            )
        await bus.__aenter__()
        self._bus = bus
        try:
            await outbox.start()
        except BaseException:
            await self._close_connections()
            await bus.close()
            raise
        if self._disk.corrupt_moved_to is not None:
            await self._gateway_event(
                "alarm",
                f"gateway buffer {self._disk.path} was unreadable: moved to "
                f"{self._disk.corrupt_moved_to}; a fresh buffer was started and what the old "
                "one held was not sent",
            )
        try:
            bus.on_connect(self._announce)
            await bus.subscribe(Topic.filter(TopicKind.COMMAND, site=self.site), qos=1)
        except BaseException:
            await self._close_connections()
            await outbox.stop_sending()
            await bus.close()
            await outbox.close()
            raise
        for worker in self._workers.values():
            self._poll_tasks.append(self._spawn(f"poll:{worker.id}", worker.run_polls))
            self._command_tasks.append(self._spawn(f"commands:{worker.id}", worker.run_commands))
        self._dispatcher = self._spawn("dispatch", self._dispatch)
        log.info(
            "gateway %s: polling %d device(s) of site %s, broker %s",
            self.gateway_id,
            len(self._workers),
            self.site,
            self.broker,
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
        """Stop polling, finish or answer every command, announce ``offline``, close."""
        if self._stopping or self._bus is None:
            return
        self._stopping = True
        bus = self._bus
        if self._dispatcher is not None:
            await cancel_and_wait([self._dispatcher])
        for worker in self._workers.values():
            worker.stopping = True
        await cancel_and_wait(self._poll_tasks)
        # Queued commands were not attempted: rejected. The one being executed may finish.
        for worker in self._workers.values():
            for queued in worker.drain():
                await worker.finish(
                    rejected_as(queued, RejectCode.STOPPING, "the gateway stopped first")
                )
        for worker in self._workers.values():
            with contextlib.suppress(TimeoutError):
                # An execution is bounded by its write and read-back guards: wait that long.
                async with asyncio.timeout(2 * (worker.request_budget_s + _SLACK_S) + 0.5):
                    await worker.idle.wait()
        interrupted = {w.id: (w.current, w.executing) for w in self._workers.values()}
        await cancel_and_wait(self._command_tasks)
        for worker in self._workers.values():
            pending, executing = interrupted[worker.id]
            if pending is not None:
                outcome: Outcome = (
                    Failed(
                        pending,
                        FailCode.INTERRUPTED,
                        "the gateway stopped during the write; the device state is unknown",
                    )
                    if executing
                    else rejected_as(pending, RejectCode.STOPPING, "the gateway stopped first")
                )
                await worker.finish(outcome)
        now = self._clock()
        for worker in self._workers.values():
            worker.health.mark_offline(now)
            await worker.publish_state(reason="gateway stopped")
        outbox = self.outbox
        # The readings of a poll cancelled above may still be on their way to the disk.
        await outbox.settle(_RESULT_ORDER_WAIT_S)
        if bus.connected:
            # A clean stop sends what was taken (bounded: the rest stays on disk).
            await outbox.wait_handed(outbox.last_committed, _RESULT_ORDER_WAIT_S)
        await outbox.stop_sending()
        await bus.publish(
            str(Topic.state(self.site, self.gateway_id)),
            gateway_state_payload(
                DeviceStatus.OFFLINE,
                now,
                now,
                self._workers,
                reason="gateway stopped",
                buffer=outbox.stats.as_dict(),
            ),
            qos=1,
            retain=True,
        )
        await self._close_connections()
        await cancel_and_wait(list(self._side_tasks))
        await bus.close()
        await outbox.close()
        log.info("gateway %s: stopped", self.gateway_id)

    async def _close_connections(self) -> None:
        for worker in self._workers.values():
            with contextlib.suppress(FieldbusError, OSError):
                await worker.connection.close()

    def _spawn(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervised(name, run), name=f"gateway:{name}")

    async def _supervised(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Restart policy: a task that fails unexpectedly is logged and restarted."""
        while True:
            try:
                await run()
            except Exception:  # the restart policy covers any failure
                log.exception("gateway task %s failed; restarting in %g s", name, RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)
            else:
                return

    # ------------------------------------------------------------------ bus

    @property
    def bus(self) -> BusClient:
        if self._bus is None:
            raise RuntimeError("use 'async with GatewayService(...)'")
        return self._bus

    @property
    def outbox(self) -> Outbox:
        """The on-disk buffer between polling and the bus (its ``stats`` for /metrics)."""
        if self._outbox is None:
            raise RuntimeError("use 'async with GatewayService(...)'")
        return self._outbox

    @property
    def buffer_stats(self) -> OutboxStats:
        """The on-disk buffer's figures (read by ``/metrics``)."""
        return self.outbox.stats

    def _on_buffer_drop(self, total: int, newly: int) -> None:
        """A bound of the buffer made messages drop: an alarm at the 1st, 10th, 100th...
        dropped message (one per order of magnitude, not one per commit)."""
        if total < self._drop_alarm_at or self._stopping:
            return
        while self._drop_alarm_at <= total:
            self._drop_alarm_at *= 10
        limits = self.config.gateway.buffer
        message = (
            f"gateway buffer full ({limits.max_messages} messages / {limits.max_bytes} bytes, "
            f"gateway.buffer): the oldest unsent telemetry is being dropped, {total} message(s) "
            "so far -- the broker has been unreachable for long; raise the bounds or "
            "restore the broker connection"
        )
        task = asyncio.create_task(self._gateway_event("alarm", message))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _gateway_event(self, level: str, message: str) -> None:
        log.log(logging.WARNING if level == "alarm" else logging.INFO, "%s", message)
        payload = orjson.dumps(
            {
                "ts": to_rfc3339(self._clock()),
                "level": level,
                "source": f"gateway/{self.gateway_id}",
                "message": message,
            }
        )
        # Straight to the bus client (held there until the broker is back), not through the
        # buffer: in a full buffer the alarm would be among the oldest messages dropped.
        await self.bus.publish(str(Topic.events(self.site)), payload, qos=1)

    def health(self, device_id: str) -> DeviceHealth:
        """The live health of a polled device (for status pages and tests)."""
        return self._workers[device_id].health

    @property
    def device_health(self) -> Mapping[str, DeviceHealth]:
        """The live health of every polled device by id (read by ``/metrics``)."""
        return {device_id: worker.health for device_id, worker in self._workers.items()}

    async def _announce(self) -> None:
        """After every (re)connection: retained gateway and device states.

        Stopping is not re-announced: ``stop`` publishes the final states itself.
        """
        if self._stopping:
            return
        bus = self.bus
        await bus.publish(
            str(Topic.state(self.site, self.gateway_id)),
            gateway_state_payload(
                DeviceStatus.ONLINE,
                self._since_ms,
                self._clock(),
                self._workers,
                buffer=self.outbox.stats.as_dict(),
            ),
            qos=1,
            retain=True,
        )
        for worker in self._workers.values():
            if worker.blocks and worker.health.counters.polls == 0:
                continue  # its first poll publishes it: no "offline" flicker at start-up
            await worker.publish_state()

    async def _dispatch(self) -> None:
        async for message in self.bus.messages():
            topic = parse_topic(message.topic)
            if (
                topic is None
                or topic.kind is not TopicKind.COMMAND
                or topic.site != self.site
                or topic.device is None
            ):
                continue
            try:
                await self._on_command(topic.device, message.payload)
            except Exception:  # bad input must never stop the gateway
                # Parsing answers every bad payload with a result; this is for bugs.
                log.exception("%s: handling a command failed", topic.device)

    async def _on_command(self, device_id: str, payload: bytes) -> None:
        worker = self._workers.get(device_id)
        # A worker's device carries the points it discovered (SunSpec): validate against it.
        devices = {device_id: worker.device} if worker is not None else self._devices
        parsed = parse_command(payload, device_id, devices, self._clock())
        cmd_id = parsed.id
        if worker is not None and cmd_id is not None and worker.recent.seen(cmd_id):
            # A redelivery (QoS 1 is at-least-once): it already has its result.
            worker.health.command_outcome("duplicate")
            log.debug("%s: duplicate command %s ignored", device_id, cmd_id)
            return
        if isinstance(parsed, Command):
            if worker is None:  # not possible: parse_command accepts only polled devices
                raise RuntimeError(f"no worker for {device_id}")
            rejected = worker.submit(parsed)
            if rejected is None:
                return
            parsed_outcome: Outcome = rejected
        else:
            parsed_outcome = parsed
        if worker is not None:
            await worker.finish(parsed_outcome)
        else:
            log.info("command for unknown device %r rejected: %s", device_id, parsed_outcome)
            await publish_result(self.bus, self.site, device_id, parsed_outcome, self._clock())


__all__ = [
    "Connector",
    "DeviceConnection",
    "GatewayService",
    "ModbusConnector",
    "modbus_connector",
]
