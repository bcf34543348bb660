"""The controller service: the I/O shell around :class:`~gridpilot.control.engine.Engine`.

Tasks, owned by :class:`ControllerService`:

* **reader** — keeps the latest reading of every point from ``{site}/+/telemetry`` (the
  snapshot) and answers operator requests on ``{site}/{id}/request``. It also keeps the
  last good message of the retained ``{site}/grid/controls`` (the utility's controls from
  the 2030.5 client), which goes into the snapshot for the grid-operator controller; a
  message that does not parse is refused with an event and the last good one kept.
* **cycle loop** — every ``control.cycle``: snapshot → ``engine.cycle`` → commands
  (``{site}/{device}/command``, each with an expiry), the controller's metrics as its own
  telemetry (``{site}/{id}/telemetry``, stored by ingest like any device's), events on
  ``{site}/events``, the journal, and a retained status on ``{site}/{id}/state``.

A target is sent when it differs from the last one sent by more than the point's deadband,
or when ``resend_after`` has passed (a device that rebooted gets it again), or -- when the
gateway reports it did not reach the point for a passing reason (it expired behind a busy
device, the queue was full, the write failed) -- again after a backoff of one cycle,
doubling at each such failure up to ``resend_after``, for as long as it is the target. In dry-run
nothing is sent; decisions that would have been sent go to the journal and the metrics.

Cycle time is measured against the wall clock; an overrun (a cycle longer than its period)
is counted and the next cycle starts at once rather than piling up.

CPU-heavy work never runs in the cycle: with ``control.workers`` > 0 (the default: two) the
zone planners are built offloaded (``offloaded()``) and hand their LP solves and model
identifications out as jobs, which the service runs in a :class:`~gridpilot.workers.WorkerPool`
of processes while the cycles go on, and gives each outcome back to its controller
(``Engine.finish_job``) as it arrives. A job that fails, times out, loses its worker or
finds the pool full comes back as an error: the zones fall back to their thermostats and
say so. ``control.workers: 0`` solves inline, in the cycle, as the benchmark does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import orjson

from gridpilot.bus.client import BrokerAddress, BusClient, Message, Will
from gridpilot.bus.codec import (
    Command,
    CommandStatus,
    decode_command_result,
    decode_telemetry,
    encode_command,
    encode_telemetry,
)
from gridpilot.bus.errors import BusError, PayloadError
from gridpilot.config.models import ControlConfig, GridPilotConfig, site_path
from gridpilot.control.base import (
    Controller,
    Forecasts,
    Job,
    JobOutcome,
    PointRef,
    Reading,
    Snapshot,
)
from gridpilot.control.engine import (
    BatteryWindow,
    CycleResult,
    Engine,
    EngineEvent,
    EngineParams,
    FailSafe,
    Override,
    PointLimits,
)
from gridpilot.control.grid_controls import (
    GridControls,
    GridControlsError,
    parse_grid_controls,
)
from gridpilot.control.hvac import HvacController, HvacGroupController, HvacParams
from gridpilot.control.journal import Journal
from gridpilot.control.params import ParamsError, controller_params, with_params
from gridpilot.control.requests import (
    Action,
    Reply,
    Request,
    RequestError,
    encode_reply,
    parse_request,
)
from gridpilot.control.thermal import ZoneHistory
from gridpilot.gateway.commands import FailCode, RejectCode
from gridpilot.model import Topic, TopicKind, is_valid_identifier, parse_topic, to_rfc3339
from gridpilot.tasks import cancel_and_wait
from gridpilot.workers import (
    JobTimeoutError,
    PoolError,
    WorkerLostError,
    WorkerPool,
    default_workers,
)

log = logging.getLogger(__name__)

STATUS_EVERY_S = 10.0
"""The retained status is refreshed at least this often (and whenever it changes)."""
MAX_POINTS = 100_000
"""Readings kept in the snapshot at most (one per point): a bound against a flood of
made-up point names."""
MAX_JOB_EVENTS = 1_000
"""Events of finished jobs kept for the next cycle to publish, at most."""
WORKER_PRELOAD = ("gridpilot.control.hvac",)
"""Imported once by the pool's forkserver (numpy, scipy): workers start with them."""


class ForecastSource(Protocol):
    """Where forecasts come from (``StoredInputs`` in production)."""

    async def forecasts(self, now: datetime) -> Forecasts:
        """The forecasts for ``now``; called every ``forecast_every``."""
        ...

    def metrics(self) -> Mapping[str, float]:
        """Figures to publish with the controller's own (forecast errors)."""
        ...

    async def zone_history(self, params: HvacParams, now: datetime) -> ZoneHistory | None:
        """The zone's recent history, to identify its thermal model from again."""
        ...


def engine_params(config: GridPilotConfig) -> EngineParams:
    """The engine's envelope from the site file: every writable point is kept inside its
    configured ``valid_range`` (the gateway would refuse anything else), and ``limits``
    narrow that and add ramps and idle values."""
    control = config.control
    if control is None:
        return EngineParams()
    limits = []
    listed = {PointRef.parse(limit.point) for limit in control.limits}
    for device_config in config.devices:
        for point_config in device_config.points:
            ref = PointRef(device_config.id, point_config.point)
            valid = point_config.valid_range
            if point_config.writable and valid is not None and ref not in listed:
                limits.append(PointLimits(ref, valid[0], valid[1]))
    for limit in control.limits:
        ref = PointRef.parse(limit.point)
        lo, hi = limit.min, limit.max
        device = config.device(ref.device)
        point = device.point(ref.point) if device is not None else None
        if point is not None and point.valid_range is not None:
            lo = max(lo, point.valid_range[0])
            hi = min(hi, point.valid_range[1])
        limits.append(PointLimits(ref, lo, hi, limit.ramp_per_s, limit.idle))
    batteries = tuple(
        BatteryWindow(
            PointRef.parse(b.setpoint),
            PointRef.parse(b.soc),
            b.soc_min_pct,
            b.soc_max_pct,
            b.max_age.total_seconds(),
        )
        for b in control.batteries
    )
    fail_safes = tuple(
        FailSafe(
            f.name,
            tuple(PointRef.parse(i) for i in f.inputs),
            f.max_age.total_seconds(),
            {PointRef.parse(k): v for k, v in f.set.items()},
        )
        for f in control.fail_safes
    )
    return EngineParams(tuple(limits), batteries, fail_safes)


# A command that did not reach its point for a passing reason: it waited past its expiry
# behind a busy device, found the gateway's queue full or stopping, or the write or its
# read-back failed on the wire. Sent again while it is still the target, after a backoff.
# Refusals that another try would only repeat (out of range, not writable, a read-back
# the device clipped) wait for ``resend_after`` like an applied one.
_TRANSIENT_CODES: frozenset[str] = frozenset(
    {
        RejectCode.EXPIRED,
        RejectCode.BUSY,
        RejectCode.STOPPING,
        FailCode.WRITE_FAILED,
        FailCode.READBACK_FAILED,
        FailCode.INTERRUPTED,
    }
)


@dataclass(slots=True)
class _Sent:
    value: float
    id: str
    due: float
    """Monotonic seconds at which an unchanged target is sent again."""
    failures: int = 0
    """Consecutive transient failures of this target's commands."""


@dataclass(slots=True)
class CycleStats:
    cycles: int = 0
    overruns: int = 0
    last_s: float = 0.0
    max_s: float = 0.0
    commands_sent: int = 0
    commands_applied: int = 0
    commands_failed: int = 0
    """Results of our commands other than ``applied`` (rejected, failed)."""
    publish_errors: int = 0
    jobs_started: int = 0
    """Jobs the controllers handed out (solves, identifications)."""
    jobs_finished: int = 0
    """Of them, whose outcome (a result or an error) went back to their controller."""
    jobs_failed: int = 0
    """Of those, the ones that came back as an error: the job raised, ran over
    ``worker_timeout``, lost its worker, found the pool full or was superseded."""
    worker_restarts: int = 0
    """Times the pool's workers were replaced (a timeout or a dead worker)."""


class ControllerService:
    """Runs the engine against the bus. An async context manager; see the module docstring."""

    def __init__(
        self,
        config: GridPilotConfig,
        broker: BrokerAddress,
        controllers: Sequence[Controller[Any]],
        *,
        base_dir: Path,
        forecasts: ForecastSource | None = None,
        forecast_every: timedelta = timedelta(minutes=15),
        reidentify_every: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if config.control is None:
            raise ValueError("the site file has no 'control' section: nothing to run")
        self.config = config
        self._params_cache: tuple[GridPilotConfig, dict[str, dict[str, Any]]] | None = None
        self.control: ControlConfig = config.control
        self.site = config.site.id
        self.id = self.control.id
        self.broker = broker
        workers = self.control.workers
        self.pool = WorkerPool(
            default_workers() if workers is None else workers,
            max_pending=self.control.worker_queue,
            timeout_s=self.control.worker_timeout.total_seconds(),
            preload=WORKER_PRELOAD,
        )
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._job_events: list[EngineEvent] = []
        self.engine = Engine([self._offloaded(c) for c in controllers], engine_params(config))
        self.dry_run = self.control.dry_run
        self.stats = CycleStats()
        self._clock = clock
        self._forecast_source = forecasts
        self._forecast_every_s = forecast_every.total_seconds()
        self._forecasts: Forecasts = {}
        self._forecasts_at = -float("inf")
        self._reidentify_every_s = reidentify_every.total_seconds()
        self._identified_at = time.monotonic()
        """The zone planners got their history when they were built (at start)."""
        self._readings: dict[PointRef, Reading] = {}
        self._grid_controls: GridControls | None = None
        """The last good ``{site}/grid/controls`` message (the utility's controls)."""
        self._grid_controls_refused = 0
        self._grid_controls_refusal: str | None = None
        self._sent: dict[PointRef, _Sent] = {}
        self._retry_base_s = self.control.cycle.total_seconds()
        self._would: dict[PointRef, float] = {}
        """Dry-run: the last value that would have been sent, to journal changes only."""
        self._deadbands = {PointRef.parse(x.point): x.deadband for x in self.control.limits}
        journal_path = self.control.journal
        self.journal = (
            Journal(site_path(base_dir, journal_path), self.control.journal_max_bytes)
            if journal_path
            else None
        )
        self._pending: list[dict[str, Any]] = []
        self._last_result: CycleResult | None = None
        self._status_sent_at = -float("inf")
        self._status_last: bytes = b""
        self._bus: BusClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        bus = BusClient(
            self.broker,
            f"{self.config.broker.client_id_prefix}-controller-{self.site}",
            will=Will(
                str(Topic.state(self.site, self.id)),
                orjson.dumps({"status": "offline", "last_error": "controller connection lost"}),
                qos=1,
                retain=True,
            ),
            max_outgoing=self.config.broker.max_outgoing,
            keepalive_s=self.config.broker.keepalive.total_seconds(),
            connect_timeout_s=self.config.broker.connect_timeout.total_seconds(),
        )
        await bus.__aenter__()
        self._bus = bus
        try:
            await bus.subscribe(Topic.filter(TopicKind.TELEMETRY, site=self.site), qos=0)
            await bus.subscribe(str(Topic.request(self.site, self.id)), qos=1)
            await bus.subscribe(Topic.filter(TopicKind.COMMAND_RESULT, site=self.site), qos=1)
            await bus.subscribe(str(Topic.grid_controls(self.site)), qos=1)
        except BaseException:
            await bus.close()
            raise
        self._tasks = [
            asyncio.create_task(self._read(bus), name="control-reader"),
            asyncio.create_task(self._loop(bus), name="control-cycle"),
        ]
        if any(getattr(c, "offload", False) for c in self.engine.controllers()):
            # The forkserver imports numpy and scipy once (about a second of CPU): now, in
            # the background, rather than when the first plan is due.
            warm_up = asyncio.create_task(self.pool.warm_up(), name="control-workers-warm-up")
            self._job_tasks.add(warm_up)
            warm_up.add_done_callback(self._job_tasks.discard)
        self._record("info", "controller", "started" + (" in dry-run" if self.dry_run else ""))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await cancel_and_wait(self._tasks)
        await cancel_and_wait(list(self._job_tasks))
        await self.pool.close()
        bus = self._bus
        if bus is not None:
            self._record("info", "controller", "stopped")
            with contextlib.suppress(BusError):
                await bus.publish(
                    str(Topic.state(self.site, self.id)),
                    orjson.dumps({"status": "offline", "last_error": None}),
                    retain=True,
                )
            await self._flush_journal()
            await bus.close()

    @property
    def _params_json(self) -> dict[str, dict[str, Any]]:
        """Each controller's parameters for the status; recomputed only after a change."""
        cached = self._params_cache
        if cached is None or cached[0] is not self.config:
            cached = self._params_cache = (self.config, controller_params(self.config))
        return cached[1]

    @property
    def bus(self) -> BusClient | None:
        """The service's MQTT client once entered (read by ``/metrics``)."""
        return self._bus

    # ------------------------------------------------------------------ reading

    async def _read(self, bus: BusClient) -> None:
        async for message in bus.messages():
            try:
                await self._on_message(bus, message)
            except Exception:  # a bug handling one message must not stop the reader
                log.exception("controller: failed to handle a message on %s", message.topic)

    async def _on_message(self, bus: BusClient, message: Message) -> None:
        topic = parse_topic(message.topic)
        if topic is None or topic.site != self.site:
            return
        if topic.kind is TopicKind.GRID_CONTROLS:
            await self._take_grid_controls(bus, message.payload)
            return
        if topic.device is None:
            return
        if topic.kind is TopicKind.TELEMETRY:
            if topic.device == self.id:
                return  # our own metrics
            self._take_telemetry(topic.device, message.payload)
        elif topic.kind is TopicKind.COMMAND_RESULT:
            self._take_result(topic.device, message.payload)
        elif topic.kind is TopicKind.REQUEST and topic.device == self.id:
            reply = self._handle_request(message.payload)
            await bus.publish(str(Topic.request_result(self.site, self.id)), encode_reply(reply))
            if reply.ok and not reply.message.startswith("status"):
                # An operator's change is an event of the site, not only a journal line:
                # whoever watches the events (the dashboard) sees who overrode what.
                await self._publish_event(bus, "info", "request", reply.message)
            await self._publish_status(bus, force=True)

    def _take_telemetry(self, device: str, payload: bytes) -> None:
        try:
            telemetry = decode_telemetry(payload)
        except PayloadError as exc:
            log.debug("controller: ignoring telemetry of %s: %s", device, exc)
            return
        ts = datetime.fromtimestamp(telemetry.ts_ms / 1000.0, UTC)
        for point, value in telemetry.values.items():
            ref = PointRef(device, point)
            known = self._readings.get(ref)
            if known is not None and known.ts >= ts:
                continue  # out of order: keep the newer reading
            if known is None and len(self._readings) >= MAX_POINTS:
                continue
            self._readings[ref] = Reading(value, ts)

    async def _take_grid_controls(self, bus: BusClient, payload: bytes) -> None:
        """Keep the utility's controls; refuse a bad message with an event, keep the last."""
        if not payload:
            # The retained message was cleared: no client publishes any more.
            if self._grid_controls is not None:
                self._grid_controls = None
                await self._event_now(
                    bus, "warning", "grid_controls", "utility controls cleared (retained "
                    "message removed): no utility control is known any more"
                )  # fmt: skip
            return
        try:
            controls = parse_grid_controls(payload)
        except GridControlsError as exc:
            self._grid_controls_refused += 1
            self._grid_controls_refusal = str(exc)
            last = self._grid_controls
            kept = (
                f"keeping the last good one of {last.ts.isoformat()}"
                if last is not None
                else "no earlier one to keep"
            )
            await self._event_now(
                bus,
                "warning",
                "grid_controls",
                f"utility controls message on {Topic.grid_controls(self.site)} refused: "
                f"{exc}; {kept}",
            )
            return
        # The newest message wins, even with an earlier ts: one publisher's messages on one
        # topic arrive in order, while its server-clock estimate may step back a little.
        self._grid_controls = controls

    async def _event_now(self, bus: BusClient, kind: str, source: str, message: str) -> None:
        self._record(kind, source, message)
        await self._publish_event(bus, kind, source, message)

    def _take_result(self, device: str, payload: bytes) -> None:
        """A command of ours that was not applied is worth an operator's attention: the
        device refused the value, the write failed, or it arrived after its expiry."""
        try:
            result = decode_command_result(payload)
        except PayloadError:
            return
        if result.id is None or not result.id.startswith(f"{self.id}-"):
            return  # someone else's command
        sent = None if result.point is None else self._sent.get(PointRef(device, result.point))
        if sent is not None and sent.id != result.id:
            sent = None  # the result of an earlier command to that point
        if result.status is CommandStatus.APPLIED:
            self.stats.commands_applied += 1
            if sent is not None:
                sent.failures = 0
            return
        self.stats.commands_failed += 1
        if sent is not None and result.code in _TRANSIENT_CODES:
            sent.failures += 1
            backoff = self._retry_base_s * 2.0 ** (sent.failures - 1)
            sent.due = min(sent.due, time.monotonic() + backoff)
        self._record(
            "warning",
            "gateway",
            f"command {device}.{result.point} = {result.value} {result.status}: "
            f"{result.code}: {result.reason}",
        )

    # ------------------------------------------------------------------ requests

    def _handle_request(self, payload: bytes) -> Reply:
        try:
            request = parse_request(payload)
        except RequestError as exc:
            self._record("warning", "request", f"refused: {exc}")
            return Reply(exc.request_id, False, str(exc))
        try:
            message = self._apply_request(request)
        except RequestError as exc:
            self._record("warning", "request", f"refused: {exc}", by=request.by)
            return Reply(request.id, False, str(exc))
        self._record("info", "request", message, by=request.by, reason=request.reason)
        return Reply(request.id, True, message)

    def _apply_request(self, request: Request) -> str:
        now = self._clock()
        match request.action:
            case Action.OVERRIDE:
                # parse_request guarantees these for an override
                assert request.point is not None  # noqa: S101
                assert request.value is not None  # noqa: S101
                assert request.duration_s is not None  # noqa: S101
                self._check_writable(request.point, request.value)
                until = now + timedelta(seconds=request.duration_s)
                self.engine.set_override(
                    Override(request.point, request.value, until, request.by, request.reason)
                )
                return (
                    f"{request.point} held at {request.value:g} until "
                    f"{until.isoformat(timespec='seconds')} (override by {request.by})"
                )
            case Action.RELEASE:
                assert request.point is not None  # noqa: S101
                if self.engine.clear_override(request.point) is None:
                    raise RequestError(f"{request.point} has no override", request.id)
                return f"override of {request.point} released by {request.by}"
            case Action.DRY_RUN:
                self.dry_run = bool(request.enabled)
                # Leaving dry-run, what the devices hold is unknown: send every target anew.
                self._sent.clear()
                self._would.clear()
                return f"dry-run {'on' if self.dry_run else 'off'} (by {request.by})"
            case Action.ENABLE | Action.DISABLE:
                assert request.controller is not None  # noqa: S101
                enabled = request.action is Action.ENABLE
                try:
                    self.engine.set_enabled(request.controller, enabled)
                except KeyError as exc:
                    raise RequestError(str(exc.args[0]), request.id) from None
                return f"controller {request.controller} {'enabled' if enabled else 'disabled'}"
            case Action.SET_PARAMS:
                assert request.controller is not None  # noqa: S101
                assert request.params is not None  # noqa: S101
                try:
                    controller, changed = with_params(
                        self.config, request.controller, request.params
                    )
                except ParamsError as exc:
                    raise RequestError(str(exc), request.id) from None
                self.engine.replace_controller(self._offloaded(controller))
                self.config = changed
                fields = ", ".join(f"{k}={v!r}" for k, v in request.params.items())
                return (
                    f"controller {request.controller}: {fields} (by {request.by}; until the "
                    "controller restarts: edit the site file to keep it)"
                )
            case Action.STATUS:
                return "status published on the controller's state topic"

    def _check_writable(self, ref: PointRef, value: float) -> None:
        """Refuse an override the gateway would refuse anyway: an operator should hear it
        now, in the reply, not find a rejected command later."""
        device = self.config.device(ref.device)
        point = device.point(ref.point) if device is not None else None
        if point is None:
            raise RequestError(f"{ref} is not a configured point")
        if not point.writable:
            raise RequestError(f"{ref} is not writable (set writable: true in the site file)")
        if point.valid_range is not None:
            lo, hi = point.valid_range
            if not lo <= value <= hi:
                raise RequestError(
                    f"{value:g} is outside the valid range [{lo:g}, {hi:g}] of {ref}"
                )

    # ------------------------------------------------------------------ cycle

    async def _loop(self, bus: BusClient) -> None:
        period = self.control.cycle.total_seconds()
        next_at = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                await self._cycle(bus, started)
            except BusError as exc:
                self.stats.publish_errors += 1
                log.warning("controller: bus unavailable this cycle: %s", exc)
            except Exception:  # a bug in the shell must not stop control for good
                log.exception("controller: cycle failed; trying again next cycle")
            elapsed = time.monotonic() - started
            self.stats.cycles += 1
            self.stats.last_s = elapsed
            self.stats.max_s = max(self.stats.max_s, elapsed)
            next_at += period
            now = time.monotonic()
            if now > next_at:
                self.stats.overruns += 1
                log.warning(
                    "controller: cycle took %.3f s, over its %.3f s period", elapsed, period
                )
                next_at = now
            await asyncio.sleep(next_at - now)

    async def _cycle(self, bus: BusClient, mono: float) -> None:
        now = self._clock()
        if (
            self._forecast_source is not None
            and mono - self._forecasts_at >= self._forecast_every_s
        ):
            self._forecasts_at = mono
            try:
                self._forecasts = await self._forecast_source.forecasts(now)
            except Exception as exc:  # noqa: BLE001 - forecasts are an input that may fail
                log.warning("controller: forecasts unavailable: %s", exc)
                self._record("warning", "forecast", f"forecasts unavailable: {exc}")
        if (
            self._forecast_source is not None
            and mono - self._identified_at >= self._reidentify_every_s
        ):
            self._identified_at = mono
            await self._reidentify(self._forecast_source, now)
        snapshot = Snapshot(now, dict(self._readings), self._grid_controls)
        result = self.engine.cycle(snapshot, self._forecasts)
        self._last_result = result
        for name, job in result.jobs:
            self._start_job(name, job)
        finished, self._job_events = self._job_events, []
        for event in (*finished, *result.events):
            self._record(event.kind, event.source, event.message)
            await self._publish_event(bus, event.kind, event.source, event.message)
        await self._act(bus, result, mono)
        await self._publish_metrics(bus, result)
        await self._publish_status(bus)
        await self._flush_journal()

    # ------------------------------------------------------------------ jobs

    def _offloaded(self, controller: Controller[Any]) -> Controller[Any]:
        """``controller`` handing its CPU-heavy work out as jobs, when there are workers
        and it can (the zone planners)."""
        if self.pool.workers > 0 and isinstance(controller, HvacController | HvacGroupController):
            return controller.offloaded()
        return controller

    def _start_job(self, name: str, job: Job) -> None:
        self.stats.jobs_started += 1
        task = asyncio.create_task(self._run_job(name, job), name=f"control-job-{name}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _run_job(self, name: str, job: Job) -> None:
        """Run ``job`` in the pool and give its outcome to controller ``name``. The pool
        bounds how many run or wait (``worker_queue``): one more is refused at once."""
        try:
            value = await self.pool.run(job.fn, *job.args, key=f"{name}/{job.key}")
            outcome = JobOutcome(value=value)
        except PoolError as exc:
            outcome = JobOutcome(error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, JobTimeoutError | WorkerLostError):
                self._job_event(EngineEvent("workers", f"{name} {job.key}: {exc}", "warning"))
        except Exception as exc:  # noqa: BLE001 - the job's own error goes to its controller
            outcome = JobOutcome(error=f"{type(exc).__name__}: {exc}")
        for event in self.engine.finish_job(name, job, outcome):
            self._job_event(event)
        self.stats.jobs_finished += 1
        self.stats.jobs_failed += outcome.error is not None
        self.stats.worker_restarts = self.pool.stats.restarts

    def _job_event(self, event: EngineEvent) -> None:
        if len(self._job_events) < MAX_JOB_EVENTS:
            self._job_events.append(event)

    async def _reidentify(self, source: ForecastSource, now: datetime) -> None:
        """Hand each zone planner its latest history: a building changes (a new tenant, a
        retrofit), and a planner that started without history gets one once there is.

        The histories are read first and the planners' states after: a job that finishes
        while storage is read updates the state (a model identified, a plan solved), and a
        copy taken before the read would overwrite it."""
        for controller in self.engine.controllers():
            if isinstance(controller, HvacController):
                history = await self._zone_history(source, controller, now)
                if history is not None:
                    state = self.engine.controller_state(controller.name)
                    self.engine.set_controller_state(
                        controller.name, replace(state, history=history)
                    )
            elif isinstance(controller, HvacGroupController):
                histories = [
                    await self._zone_history(source, zone, now, controller.name)
                    for zone in controller.zones
                ]
                group = self.engine.controller_state(controller.name)
                zones = tuple(
                    zone if history is None else replace(zone, history=history)
                    for zone, history in zip(group.zones, histories, strict=True)
                )
                self.engine.set_controller_state(controller.name, replace(group, zones=zones))

    async def _zone_history(
        self,
        source: ForecastSource,
        zone: HvacController,
        now: datetime,
        reporter: str | None = None,
    ) -> ZoneHistory | None:
        """The zone's latest history to identify from (the planner identifies from a history
        in its state in its next cycle, or hands that out to a worker and keeps its model
        meanwhile); None without one."""
        try:
            return await source.zone_history(zone.params, now)
        except Exception as exc:  # noqa: BLE001 - keep the current model and say so
            self._record("warning", reporter or zone.name, f"no history to re-identify from: {exc}")
            return None

    async def _act(self, bus: BusClient, result: CycleResult, mono: float) -> None:
        resend_s = self.control.resend_after.total_seconds()
        ttl_ms = int(self.control.command_ttl.total_seconds() * 1000)
        now_ms = int(result.now.timestamp() * 1000)
        for target, value in result.targets.items():
            sent = self._sent.get(target)
            deadband = self._deadbands.get(target, 0.0)
            if sent is not None and abs(sent.value - value) <= deadband and mono < sent.due:
                continue
            arbitration = result.arbitrations[target]
            if self.dry_run:
                would = self._would.get(target)
                if would is None or would != value:
                    self._would[target] = value
                    self._record(
                        "info",
                        arbitration.source,
                        f"dry-run: would set {target} to {value:g}",
                        point=str(target),
                        value=value,
                        requested=arbitration.requested,
                        limited_by=list(arbitration.limited_by),
                    )
                continue
            self._seq += 1
            command = Command(
                id=f"{self.id}-{uuid.uuid4().hex[:12]}",
                point=target.point,
                value=value,
                expires_ms=now_ms + ttl_ms,
                source=arbitration.source,
            )
            await bus.publish(str(Topic.command(self.site, target.device)), encode_command(command))
            self.stats.commands_sent += 1
            failures = 0 if sent is None or sent.value != value else sent.failures
            self._sent[target] = _Sent(value, command.id, mono + resend_s, failures)

    async def _publish_metrics(self, bus: BusClient, result: CycleResult) -> None:
        values: dict[str, float] = {}
        for name, value in result.metrics.items():
            if is_valid_identifier(name):
                values[name] = value
        for target, value in result.targets.items():
            name = f"{target.device}_{target.point}".replace("-", "_")
            if is_valid_identifier(name):
                values[name] = value
        if self._forecast_source is not None:
            values.update(self._forecast_source.metrics())
        values["dry_run_state"] = float(self.dry_run)
        values["cycle_time_s"] = self.stats.last_s
        values["cycle_overruns_count"] = float(self.stats.overruns)
        values["commands_failed_count"] = float(self.stats.commands_failed)
        if self.pool.workers > 0:
            pool = self.pool.stats
            values["worker_jobs_running_count"] = float(pool.running)
            values["worker_jobs_waiting_count"] = float(pool.waiting)
            values["worker_jobs_rejected_count"] = float(pool.rejected)
            values["worker_timeouts_count"] = float(pool.timed_out)
            values["worker_restarts_count"] = float(pool.restarts)
        ts_ms = int(result.now.timestamp() * 1000)
        await bus.publish(
            str(Topic.telemetry(self.site, self.id)), encode_telemetry(ts_ms, values), qos=0
        )

    def status(self) -> dict[str, Any]:
        """What ``gridpilot control status`` shows (also the retained state payload)."""
        result = self._last_result
        names = self.engine.controller_names
        errors: Mapping[str, str] = result.errors if result is not None else {}
        params = self._params_json
        return {
            "status": "online",
            "ts": to_rfc3339(int(self._clock().timestamp() * 1000)),
            "last_error": next(iter(errors.values()), None),
            "counters": {
                "cycles": self.stats.cycles,
                "overruns": self.stats.overruns,
                "commands_sent": self.stats.commands_sent,
                "commands_applied": self.stats.commands_applied,
                "commands_failed": self.stats.commands_failed,
                "jobs_started": self.stats.jobs_started,
                "jobs_failed": self.stats.jobs_failed,
                "worker_restarts": self.stats.worker_restarts,
            },
            "dry_run": self.dry_run,
            "cycle_s": {"last": round(self.stats.last_s, 4), "max": round(self.stats.max_s, 4)},
            "controllers": {
                name: {
                    "enabled": self.engine.is_enabled(name),
                    "error": errors.get(name),
                    "params": params.get(name),
                }
                for name in names
            },
            "overrides": [
                {
                    "point": str(o.target),
                    "value": o.value,
                    "until": o.until.isoformat(timespec="seconds"),
                    "by": o.by,
                    "reason": o.reason,
                }
                for o in self.engine.overrides.values()
            ],
            "fail_safes_active": list(result.fail_safes_active) if result else [],
            "targets": {
                str(t): {
                    "value": a.value,
                    "source": a.source,
                    "limited_by": list(a.limited_by),
                    "overridden": list(a.overridden),
                }
                for t, a in (result.arbitrations.items() if result else ())
            },
            "grid_controls": self._grid_controls_status(),
        }

    def _grid_controls_status(self) -> dict[str, Any] | None:
        controls = self._grid_controls
        if controls is None and not self._grid_controls_refused:
            return None
        return {
            "ts": controls.ts.isoformat() if controls else None,
            "source": controls.source if controls else None,
            "valid_until": controls.valid_until.isoformat() if controls else None,
            "stale": controls.is_stale(self._clock()) if controls else None,
            "modes": [m.describe() for m in controls.modes.values()] if controls else [],
            "refused": self._grid_controls_refused,
            "last_refusal": self._grid_controls_refusal,
        }

    async def _publish_event(self, bus: BusClient, kind: str, source: str, message: str) -> None:
        await bus.publish(
            str(Topic.events(self.site)),
            orjson.dumps(
                {
                    "ts": to_rfc3339(int(self._clock().timestamp() * 1000)),
                    "source": f"{self.id}/{source}",
                    "kind": kind,
                    "message": message,
                }
            ),
        )

    async def _publish_status(self, bus: BusClient, *, force: bool = False) -> None:
        mono = time.monotonic()
        status = self.status()
        comparable = orjson.dumps(
            {k: v for k, v in status.items() if k not in ("ts", "counters", "cycle_s")}
        )
        if (
            not force
            and comparable == self._status_last
            and mono - self._status_sent_at < STATUS_EVERY_S
        ):
            return
        self._status_last = comparable
        self._status_sent_at = mono
        await bus.publish(str(Topic.state(self.site, self.id)), orjson.dumps(status), retain=True)

    # ------------------------------------------------------------------ journal

    def _record(self, kind: str, source: str, message: str, **extra: Any) -> None:
        entry = {
            "ts": self._clock().isoformat(timespec="milliseconds"),
            "kind": kind,
            "source": source,
            "message": message,
            **extra,
        }
        level = logging.WARNING if kind in ("warning", "alarm") else logging.INFO
        log.log(level, "control %s: %s", source, message)
        if self.journal is not None and len(self._pending) < 10_000:
            self._pending.append(entry)

    async def _flush_journal(self) -> None:
        if self.journal is None or not self._pending:
            return
        entries, self._pending = self._pending, []
        try:
            await asyncio.to_thread(self.journal.append, entries)
        except OSError as exc:
            log.warning("controller: cannot write the journal %s: %s", self.journal.path, exc)
