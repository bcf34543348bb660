"""What ``GET /metrics`` serves: the site's figures in the Prometheus text format (0.0.4).

Every app has its own ``CollectorRegistry`` (no module state: tests and several apps in one
process do not collide). The figures are not mirrored into counters: collectors read the
live stats objects at scrape time, so a scrape shows exactly what the services count.

Where the figures come from:

* **in this process** (``gridpilot run all``, the demo): the composition root hands the
  running services to the API as :class:`LocalServices`; their ``stats`` objects, device
  health and bus clients are read directly.
* **from the bus** (``gridpilot run api`` alone): the retained ``state`` of every polled
  device (its health counters) and of the controller (``counters``, ``cycle_s``), as the
  API's :class:`~gridpilot.api.state_cache.DeviceStateCache` holds them. They are as fresh
  as the last state message (the gateway re-publishes every 10 s, the controller when its
  status changes or every 10 s); the counters restart at 0 when that service restarts,
  which Prometheus' ``rate()`` and ``increase()`` handle. Ingest publishes no state: its
  figures exist only where it runs in the same process.

Metrics (``_total`` = counter, the rest gauges unless noted)::

    gridpilot_info{site,version}                          1
    gridpilot_ingest_messages_total                       telemetry messages received
    gridpilot_ingest_messages_rejected_total              ... with at least one rejection
    gridpilot_ingest_samples_accepted_total               values that passed validation
    gridpilot_ingest_samples_written_total                values stored as new rows
    gridpilot_ingest_samples_duplicate_total              values storage already had
    gridpilot_ingest_rejections_total{reason}             rejected values/messages by reason
    gridpilot_ingest_dead_letters_total, _batches_total, _storage_errors_total,
    gridpilot_ingest_storage_rejected_total
    gridpilot_ingest_buffered_samples                     queue depth: waiting for storage
    gridpilot_ingest_buffer_capacity_samples              its bound (storage.max_buffered)
    gridpilot_ingest_stream_gaps_total{device,kind}       gaps in a device's telemetry: kind
                                                          seq (lost messages) or interval
                                                          (silence > 2.5 expected intervals)
    gridpilot_ingest_stream_missing_messages_total{device,kind}  messages missing in them
    gridpilot_ingest_stream_restarts_total{device}        publisher restarts (seq back to 0/1)
    gridpilot_ingest_stream_out_of_order_total{device}    messages older than one seen before
    gridpilot_gateway_buffer_messages, _bytes             the gateway's on-disk buffer (in-process)
    gridpilot_gateway_buffer_dropped_total                dropped unsent: gateway.buffer full
    gridpilot_gateway_buffer_write_failed_total           not taken: the buffer's disk failed
    gridpilot_device_online{device}                       1 online, 0 offline or unknown
    gridpilot_device_consecutive_failures{device}
    gridpilot_device_polls_total{device}, gridpilot_device_polls_failed_total{device}
    gridpilot_device_errors_total{device,kind}            timeout, refused, disconnected,
                                                          protocol, crc, exception_N, decode...
    gridpilot_device_ticks_skipped_total{device}          poll ticks lost to overruns
    gridpilot_device_values_dropped_total{device,reason}  out_of_range, invalid
    gridpilot_device_commands_total{device,outcome}       applied, rejected, failed, ...
    gridpilot_device_poll_jitter_seconds{device}          histogram: how late polls started
                                                          against their tick (since start)
    gridpilot_device_poll_jitter_quantile_seconds{device,quantile}  its p50 and p99 (0.5, 0.99)
    gridpilot_control_cycles_total, gridpilot_control_cycle_overruns_total
    gridpilot_control_cycle_last_seconds, gridpilot_control_cycle_max_seconds,
    gridpilot_control_cycle_period_seconds
    gridpilot_control_commands_sent_total, gridpilot_control_command_results_total{result}
    gridpilot_control_jobs_started_total, gridpilot_control_jobs_failed_total  solves and
                                                          identifications handed to workers
    gridpilot_control_worker_restarts_total               workers replaced (timeout, died)
    gridpilot_bus_connected{client}                       client: api, ingest, gateway, controller
    gridpilot_bus_outgoing_messages{client}               queue depth: queued or unacknowledged
    gridpilot_bus_incoming_messages{client}               queue depth: received, not yet consumed
    gridpilot_bus_published_total{client}, gridpilot_bus_received_total{client},
    gridpilot_bus_connection_losses_total{client}, gridpilot_bus_publish_refused_total{client}
    gridpilot_api_streams_open, gridpilot_api_streams_max  live telemetry streams (SSE, GraphQL)
    gridpilot_api_streams_refused_total, gridpilot_api_stream_frames_dropped_total
    gridpilot_api_request_duration_seconds{method,route,status}  histogram; route is the
                                                          template (/api/v1/devices/{device}),
                                                          status the class (2xx, 4xx, ...)
    process_*, python_*                                   prometheus_client's collectors

``/metrics`` needs a token like every other route (any role). Prometheus sends it with::

    scrape_configs:
      - job_name: gridpilot
        scheme: https                    # when api.tls is set
        authorization: {credentials_file: /etc/prometheus/gridpilot.token}
        static_configs: [{targets: ["gridpilot.example.com:8443"]}]

(``authorization: {credentials: <token>}`` inline works too; make the token with
``gridpilot token create --role viewer``.)
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridpilot import __version__
from gridpilot.api.state_cache import DeviceStateCache, EffectiveStatus
from gridpilot.config.models import GridPilotConfig
from gridpilot.gateway.health import JITTER_BUCKETS_S, DeviceStatus

if TYPE_CHECKING:
    # Types only: the API reads these services' stats but does not depend on their code.
    from gridpilot.bus.client import BusClient
    from gridpilot.control.service import CycleStats
    from gridpilot.gateway.buffer import OutboxStats
    from gridpilot.gateway.health import DeviceHealth
    from gridpilot.ingest.service import IngestStats
    from gridpilot.ops.gaps import StreamTracker

__all__ = [
    "CONTENT_TYPE",
    "ApiMetrics",
    "ControlFigures",
    "DeviceFigures",
    "LocalServices",
    "RequestMetricsMiddleware",
    "route_template",
]

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
"""``text/plain; version=0.0.4; charset=utf-8``: the classic text format every Prometheus
(and VictoriaMetrics, Grafana Agent, ...) reads."""

MAX_LABELS_PER_DEVICE: Final = 32
"""Error kinds and command outcomes kept per device at most. Device states come from the bus,
where anyone allowed to publish could invent kinds; this bounds the series they can add."""
_MAX_LABEL_CHARS: Final = 64
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE: Final = "unmatched"
"""The ``route`` label of a request no route answers (404): one series, whatever the path."""

_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds. Finer at the low end than the default: latest values answer in about a ms, and
the targets (BENCHMARKS.md) are 50 and 100 ms p99."""


# ---------------------------------------------------------------------------- sources


class IngestSource(Protocol):
    """What the metrics read of an ``IngestService`` running in this process."""

    @property
    def stats(self) -> IngestStats: ...

    @property
    def streams(self) -> StreamTracker | None: ...

    @property
    def bus(self) -> BusClient: ...


class GatewaySource(Protocol):
    """... of a ``GatewayService``."""

    @property
    def device_health(self) -> Mapping[str, DeviceHealth]: ...

    @property
    def bus(self) -> BusClient: ...

    @property
    def buffer_stats(self) -> OutboxStats: ...


class ControllerSource(Protocol):
    """... of a ``ControllerService``."""

    @property
    def stats(self) -> CycleStats: ...

    @property
    def bus(self) -> BusClient | None: ...


class StreamSource(Protocol):
    """... of the API's live streams (``gridpilot.api.stream.StreamHub``)."""

    @property
    def clients(self) -> int: ...

    @property
    def max_clients(self) -> int: ...

    @property
    def refused(self) -> int: ...

    @property
    def dropped(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LocalServices:
    """Services running in the API's process, whose live figures ``/metrics`` reads.

    A part left ``None`` is shown from what the bus says of it (devices, controller) or not
    at all (ingest).
    """

    ingest: IngestSource | None = None
    gateway: GatewaySource | None = None
    controller: ControllerSource | None = None


# ---------------------------------------------------------------------------- figures (pure)


_DEVICE_COUNTERS: Final = (
    ("polls", "gridpilot_device_polls", "Polls attempted."),
    ("polls_failed", "gridpilot_device_polls_failed", "Polls without a usable answer."),
    (
        "ticks_skipped",
        "gridpilot_device_ticks_skipped",
        "Poll ticks skipped because a poll or command overran its interval.",
    ),
)
"""(key in the published ``counters``, metric name, help) of the plain per-device counters."""
_DEVICE_SCALARS: Final = (
    *(key for key, _, _ in _DEVICE_COUNTERS),
    "values_out_of_range",
    "values_invalid",
)


@dataclass(frozen=True, slots=True)
class JitterFigures:
    """A device's poll-jitter histogram as its state publishes it (seconds)."""

    p50: float | None
    p99: float | None
    buckets: tuple[float, ...] | None = None
    """Cumulative counts at each bound of ``JITTER_BUCKETS_S``, then +Inf; None when the
    published buckets are not those (another version) or not cumulative."""
    sum_s: float | None = None

    @classmethod
    def from_state(cls, value: object) -> JitterFigures | None:
        """From the ``poll_jitter`` object of a state (untrusted: never raises)."""
        if not isinstance(value, Mapping):
            return None
        published = value.get("buckets")
        buckets: tuple[float, ...] | None = None
        if isinstance(published, Mapping):
            keys = [f"{le:g}" for le in JITTER_BUCKETS_S] + ["+Inf"]
            counts = [_count(published.get(k)) for k in keys]
            if len(published) == len(keys) and all(
                a is not None and b is not None and a <= b for a, b in itertools.pairwise(counts)
            ):
                buckets = tuple(c for c in counts if c is not None)
        return cls(
            _count(value.get("p50_s")),
            _count(value.get("p99_s")),
            buckets,
            _count(value.get("sum_s")),
        )


@dataclass(frozen=True, slots=True)
class DeviceFigures:
    """One polled device's health as the metrics show it, from either source."""

    device: str
    online: bool | None
    """None: unknown (no state yet, or a stale one: its gateway is offline)."""
    consecutive_failures: float | None = None
    counters: Mapping[str, float] | None = None
    """``polls``, ``polls_failed``, ``ticks_skipped``, ``values_out_of_range``,
    ``values_invalid``: those present and valid."""
    errors: Mapping[str, float] | None = None
    """By kind: timeout, refused, exception_2, ..."""
    commands: Mapping[str, float] | None = None
    """By outcome: applied, rejected, failed, duplicate."""
    jitter: JitterFigures | None = None

    @classmethod
    def from_state(
        cls, device: str, state: Mapping[str, Any] | None, online: bool | None
    ) -> DeviceFigures:
        """From a device's ``state`` object as the gateway publishes it (untrusted: fields of
        the wrong type are left out, never raise)."""
        if state is None:
            return cls(device, online)
        counters = state.get("counters")
        if not isinstance(counters, Mapping):
            counters = {}
        scalars = {
            key: n for key in _DEVICE_SCALARS if (n := _count(counters.get(key))) is not None
        }
        return cls(
            device,
            online,
            _count(state.get("consecutive_failures")),
            scalars,
            _labelled_counts(counters.get("errors")),
            _labelled_counts(counters.get("commands")),
            JitterFigures.from_state(state.get("poll_jitter")),
        )

    @classmethod
    def from_health(cls, device: str, health: DeviceHealth) -> DeviceFigures:
        """From the gateway's live health object (the same figures its state publishes)."""
        snapshot = health.snapshot()
        state = {
            "consecutive_failures": snapshot.consecutive_failures,
            "counters": snapshot.counters,
            "poll_jitter": snapshot.poll_jitter,
        }
        return cls.from_state(device, state, snapshot.status is DeviceStatus.ONLINE)


@dataclass(frozen=True, slots=True)
class ControlFigures:
    """The control loop's timing and commands, from either source."""

    cycles: float | None = None
    overruns: float | None = None
    last_s: float | None = None
    max_s: float | None = None
    commands_sent: float | None = None
    commands_applied: float | None = None
    commands_failed: float | None = None
    jobs_started: float | None = None
    jobs_failed: float | None = None
    worker_restarts: float | None = None

    @classmethod
    def from_stats(cls, stats: CycleStats) -> ControlFigures:
        return cls(
            stats.cycles,
            stats.overruns,
            stats.last_s,
            stats.max_s,
            stats.commands_sent,
            stats.commands_applied,
            stats.commands_failed,
            stats.jobs_started,
            stats.jobs_failed,
            stats.worker_restarts,
        )

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ControlFigures:
        """From the controller's retained ``state`` (``counters``, ``cycle_s``); untrusted."""
        counters = state.get("counters")
        if not isinstance(counters, Mapping):
            counters = {}
        cycle_s = state.get("cycle_s")
        if not isinstance(cycle_s, Mapping):
            cycle_s = {}
        return cls(
            _count(counters.get("cycles")),
            _count(counters.get("overruns")),
            _count(cycle_s.get("last")),
            _count(cycle_s.get("max")),
            _count(counters.get("commands_sent")),
            _count(counters.get("commands_applied")),
            _count(counters.get("commands_failed")),
            _count(counters.get("jobs_started")),
            _count(counters.get("jobs_failed")),
            _count(counters.get("worker_restarts")),
        )


def _count(value: object) -> float | None:
    """A finite, non-negative number, else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _labelled_counts(value: object) -> dict[str, float]:
    """``{label: count}`` with sane labels, at most ``MAX_LABELS_PER_DEVICE`` of them."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, float] = {}
    for key in sorted(k for k in value if isinstance(k, str)):
        if len(out) >= MAX_LABELS_PER_DEVICE:
            break
        n = _count(value[key])
        if n is not None and 0 < len(key) <= _MAX_LABEL_CHARS and key.isprintable():
            out[key] = n
    return out


# ---------------------------------------------------------------------------- collectors


class SiteCollector:
    """Ingest, devices, control and bus figures, read when Prometheus scrapes."""

    def __init__(
        self,
        config: GridPilotConfig,
        device_states: DeviceStateCache,
        local: LocalServices,
        api_bus: Callable[[], BusClient | None],
    ) -> None:
        self._site = config.site.id
        self._buffer_capacity = config.storage.max_buffered
        self._polled = tuple(d.id for d in config.devices if d.protocol.is_modbus)
        self._control_id = None if config.control is None else config.control.id
        self._period_s = None if config.control is None else config.control.cycle.total_seconds()
        self._states = device_states
        self._local = local
        self._api_bus = api_bus
        self.streams: StreamSource | None = None

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "gridpilot_info", "The site this process serves.", labels=["site", "version"]
        )
        info.add_metric([self._site, __version__], 1)
        yield info
        ingest = self._local.ingest
        if ingest is not None:
            yield from ingest_metrics(ingest.stats, self._buffer_capacity)
            if ingest.streams is not None:
                yield from stream_gap_metrics(ingest.streams)
        yield from device_metrics(self.devices())
        if self._local.gateway is not None:
            yield from gateway_buffer_metrics(self._local.gateway.buffer_stats)
        control = self.control()
        if control is not None:
            yield from control_metrics(control, self._period_s)
        yield from bus_metrics(self.buses())
        if self.streams is not None:
            yield from stream_metrics(self.streams)

    def devices(self) -> list[DeviceFigures]:
        gateway = self._local.gateway
        if gateway is not None:
            return [DeviceFigures.from_health(d, h) for d, h in gateway.device_health.items()]
        states = self._states
        return [
            DeviceFigures.from_state(d, states.get(d), _online(states.status(d)))
            for d in self._polled
        ]

    def control(self) -> ControlFigures | None:
        controller = self._local.controller
        if controller is not None:
            return ControlFigures.from_stats(controller.stats)
        if self._control_id is None:
            return None
        state = self._states.get(self._control_id)
        return None if state is None else ControlFigures.from_state(state)

    def buses(self) -> dict[str, BusClient]:
        local = self._local
        clients = {
            "api": self._api_bus(),
            "ingest": None if local.ingest is None else local.ingest.bus,
            "gateway": None if local.gateway is None else local.gateway.bus,
            "controller": None if local.controller is None else local.controller.bus,
        }
        return {name: bus for name, bus in clients.items() if bus is not None}


def _online(status: EffectiveStatus) -> bool | None:
    if status is EffectiveStatus.UNKNOWN:
        return None
    return status is EffectiveStatus.ONLINE


def ingest_metrics(stats: IngestStats, buffer_capacity: int) -> Iterator[Metric]:
    """The ingest service's counters and its buffer's depth."""
    for name, value, doc in (
        ("messages", stats.messages, "Telemetry messages received."),
        (
            "messages_rejected",
            stats.messages_rejected,
            "Messages with at least one rejection (each copied to the dead-letter topic).",
        ),
        ("samples_accepted", stats.samples_accepted, "Values that passed validation."),
        ("samples_written", stats.samples_written, "Values stored as new rows."),
        (
            "samples_duplicate",
            stats.duplicates,
            "Values storage already had (redelivered or replayed messages).",
        ),
        ("dead_letters", stats.dead_letters, "Messages copied to the dead-letter topic."),
        ("batches", stats.batches, "Batches written to storage."),
        ("storage_errors", stats.storage_errors, "Failed storage writes (each retried)."),
        ("storage_rejected", stats.storage_rejected, "Values storage refused as invalid."),
    ):
        yield CounterMetricFamily(f"gridpilot_ingest_{name}", doc, value=value)
    rejections = CounterMetricFamily(
        "gridpilot_ingest_rejections",
        "Rejected values (or whole messages, counted once) by reason.",
        labels=["reason"],
    )
    for reason, n in stats.rejections.items():
        rejections.add_metric([str(reason)], n)
    yield rejections
    yield GaugeMetricFamily(
        "gridpilot_ingest_buffered_samples",
        "Samples waiting for, or being written to, storage.",
        value=stats.buffered_samples,
    )
    yield GaugeMetricFamily(
        "gridpilot_ingest_buffer_capacity_samples",
        "Bound of the ingest buffer (storage.max_buffered); the reader waits when it is full.",
        value=buffer_capacity,
    )


def stream_gap_metrics(streams: StreamTracker) -> Iterator[Metric]:
    """Gaps ingest saw in each device's telemetry (``gridpilot.ops.gaps``). One series per
    configured device and kind: the tracker follows only the site's registry."""
    gaps = CounterMetricFamily(
        "gridpilot_ingest_stream_gaps",
        "Gaps in a device's telemetry: seq (messages lost on the way) or interval (no message "
        "for more than 2.5 expected intervals).",
        labels=["device", "kind"],
    )
    missing = CounterMetricFamily(
        "gridpilot_ingest_stream_missing_messages",
        "Messages missing in those gaps (by seq; by time: intervals without a message).",
        labels=["device", "kind"],
    )
    restarts = CounterMetricFamily(
        "gridpilot_ingest_stream_restarts",
        "Publisher restarts seen (seq back to 0 or 1) and counter resets: not gaps.",
        labels=["device"],
    )
    out_of_order = CounterMetricFamily(
        "gridpilot_ingest_stream_out_of_order",
        "Messages older than one already seen (redeliveries, replays): not gaps.",
        labels=["device"],
    )
    for device, counts in sorted(streams.counts.items()):
        for kind, n in counts.gaps.items():
            gaps.add_metric([device, str(kind)], n)
            missing.add_metric([device, str(kind)], counts.missing[kind])
        restarts.add_metric([device], counts.restarts)
        out_of_order.add_metric([device], counts.out_of_order)
    yield from (gaps, missing, restarts, out_of_order)


def device_metrics(devices: Iterable[DeviceFigures]) -> Iterator[Metric]:
    """Per-device health: online, failures, polls, errors by kind, dropped values, commands."""
    online = GaugeMetricFamily(
        "gridpilot_device_online",
        "1 when the device answers its polls, 0 when offline or unknown.",
        labels=["device"],
    )
    failures = GaugeMetricFamily(
        "gridpilot_device_consecutive_failures",
        "Failed polls since the last answered one.",
        labels=["device"],
    )
    plain = {
        key: CounterMetricFamily(n, doc, labels=["device"]) for key, n, doc in _DEVICE_COUNTERS
    }
    errors = CounterMetricFamily(
        "gridpilot_device_errors",
        "Errors by kind (polls, writes and read-backs): timeout, refused, disconnected, "
        "protocol, crc, exception_<Modbus code>, decode, readback, ...",
        labels=["device", "kind"],
    )
    dropped = CounterMetricFamily(
        "gridpilot_device_values_dropped",
        "Polled values dropped: outside the point's valid_range, or not decodable.",
        labels=["device", "reason"],
    )
    commands = CounterMetricFamily(
        "gridpilot_device_commands",
        "Commands by outcome: applied, rejected, failed, duplicate.",
        labels=["device", "outcome"],
    )
    jitter = HistogramMetricFamily(
        "gridpilot_device_poll_jitter_seconds",
        "How late polls started against their scheduled tick.",
        labels=["device"],
    )
    jitter_quantiles = GaugeMetricFamily(
        "gridpilot_device_poll_jitter_quantile_seconds",
        "Median (0.5) and 99th percentile (0.99) of the poll jitter since the gateway started.",
        labels=["device", "quantile"],
    )
    bounds = [f"{le:g}" for le in JITTER_BUCKETS_S] + ["+Inf"]
    for figures in devices:
        device = figures.device
        online.add_metric([device], 1.0 if figures.online else 0.0)
        if figures.consecutive_failures is not None:
            failures.add_metric([device], figures.consecutive_failures)
        counters = figures.counters or {}
        for key, family in plain.items():
            if key in counters:
                family.add_metric([device], counters[key])
        for reason, key in (("out_of_range", "values_out_of_range"), ("invalid", "values_invalid")):
            if key in counters:
                dropped.add_metric([device, reason], counters[key])
        for kind, n in (figures.errors or {}).items():
            errors.add_metric([device, kind], n)
        for outcome, n in (figures.commands or {}).items():
            commands.add_metric([device, outcome], n)
        if figures.jitter is not None:
            j = figures.jitter
            if j.buckets is not None and j.sum_s is not None:
                jitter.add_metric([device], list(zip(bounds, j.buckets, strict=True)), j.sum_s)
            for quantile, value in (("0.5", j.p50), ("0.99", j.p99)):
                if value is not None:
                    jitter_quantiles.add_metric([device, quantile], value)
    yield online
    yield failures
    yield from plain.values()
    yield errors
    yield dropped
    yield commands
    yield jitter
    yield jitter_quantiles


def control_metrics(figures: ControlFigures, period_s: float | None) -> Iterator[Metric]:
    """The control loop's cycle time against its period, overruns and commands."""
    for name, value, doc in (
        ("cycles", figures.cycles, "Control cycles run."),
        ("cycle_overruns", figures.overruns, "Cycles that took longer than their period."),
        ("commands_sent", figures.commands_sent, "Setpoint commands sent."),
        ("jobs_started", figures.jobs_started, "Solves and identifications handed to workers."),
        ("jobs_failed", figures.jobs_failed, "Of them, those that came back as an error."),
        ("worker_restarts", figures.worker_restarts, "Times the workers were replaced."),
    ):
        if value is not None:
            yield CounterMetricFamily(f"gridpilot_control_{name}", doc, value=value)
    results = CounterMetricFamily(
        "gridpilot_control_command_results",
        "Results of the controller's commands: applied, or failed (rejected or not applied).",
        labels=["result"],
    )
    for result, value in (
        ("applied", figures.commands_applied),
        ("failed", figures.commands_failed),
    ):
        if value is not None:
            results.add_metric([result], value)
    yield results
    for name, value, doc in (
        ("cycle_last_seconds", figures.last_s, "Duration of the last control cycle."),
        ("cycle_max_seconds", figures.max_s, "Longest control cycle since the start."),
        ("cycle_period_seconds", period_s, "The configured cycle (control.cycle)."),
    ):
        if value is not None:
            yield GaugeMetricFamily(f"gridpilot_control_{name}", doc, value=value)


def gateway_buffer_metrics(stats: OutboxStats) -> Iterator[Metric]:
    """The gateway's on-disk buffer: its depth and what it dropped or failed to take."""
    yield GaugeMetricFamily(
        "gridpilot_gateway_buffer_messages",
        "Messages in the gateway's on-disk buffer (awaiting the broker's PUBACK).",
        value=stats.messages,
    )
    yield GaugeMetricFamily(
        "gridpilot_gateway_buffer_bytes",
        "Bytes of topics and payloads in the gateway's on-disk buffer.",
        value=stats.bytes,
    )
    yield CounterMetricFamily(
        "gridpilot_gateway_buffer_dropped",
        "Messages dropped unsent because a bound of gateway.buffer was reached "
        "(since the buffer file was created).",
        value=stats.dropped,
    )
    yield CounterMetricFamily(
        "gridpilot_gateway_buffer_write_failed",
        "Messages the buffer could not commit (disk full, I/O error): lost.",
        value=stats.write_failed,
    )


def bus_metrics(clients: Mapping[str, BusClient]) -> Iterator[Metric]:
    """Connection state, queue depths and message counts of each MQTT client."""
    connected = GaugeMetricFamily(
        "gridpilot_bus_connected", "1 while connected to the broker.", labels=["client"]
    )
    outgoing = GaugeMetricFamily(
        "gridpilot_bus_outgoing_messages",
        "Messages queued for the broker or awaiting its acknowledgement.",
        labels=["client"],
    )
    incoming = GaugeMetricFamily(
        "gridpilot_bus_incoming_messages",
        "Messages received and not yet taken by the service.",
        labels=["client"],
    )
    counters = {
        "published": CounterMetricFamily(
            "gridpilot_bus_published", "Messages the broker acknowledged.", labels=["client"]
        ),
        "received": CounterMetricFamily(
            "gridpilot_bus_received", "Messages received.", labels=["client"]
        ),
        "connection_losses": CounterMetricFamily(
            "gridpilot_bus_connection_losses", "Broker connections lost.", labels=["client"]
        ),
        "publish_refused": CounterMetricFamily(
            "gridpilot_bus_publish_refused",
            "Messages the broker refused (e.g. not authorised).",
            labels=["client"],
        ),
    }
    for name, bus in clients.items():
        connected.add_metric([name], 1.0 if bus.connected else 0.0)
        outgoing.add_metric([name], bus.queued)
        incoming.add_metric([name], bus.incoming_buffered)
        stats = bus.stats
        counters["published"].add_metric([name], stats.published)
        counters["received"].add_metric([name], stats.received)
        counters["connection_losses"].add_metric([name], stats.connection_losses)
        counters["publish_refused"].add_metric([name], stats.publish_refused)
    yield connected
    yield outgoing
    yield incoming
    yield from counters.values()


def stream_metrics(streams: StreamSource) -> Iterator[Metric]:
    """Live telemetry streams: how many are open against their bound, refusals, drops."""
    yield GaugeMetricFamily(
        "gridpilot_api_streams_open", "Live telemetry streams open.", value=streams.clients
    )
    yield GaugeMetricFamily(
        "gridpilot_api_streams_max",
        "Live telemetry streams allowed at once (api.stream_clients).",
        value=streams.max_clients,
    )
    yield CounterMetricFamily(
        "gridpilot_api_streams_refused",
        "Streams refused because the maximum was open.",
        value=streams.refused,
    )
    yield CounterMetricFamily(
        "gridpilot_api_stream_frames_dropped",
        "Telemetry frames dropped for clients too slow to take them (oldest first).",
        value=streams.dropped,
    )


# ---------------------------------------------------------------------------- the registry


class ApiMetrics:
    """The registry of one API app: site figures, request latency, process basics."""

    def __init__(
        self,
        config: GridPilotConfig,
        device_states: DeviceStateCache,
        *,
        local: LocalServices | None = None,
        api_bus: Callable[[], BusClient | None] = lambda: None,
        process: bool = True,
    ) -> None:
        """
        Args:
            config: the site (device list, buffer bound, control cycle).
            device_states: the API's cache of retained states: the source of device and
                controller figures for the parts not in ``local``.
            local: services running in this process, read directly.
            api_bus: the API's own MQTT client, when it has one.
            process: add prometheus_client's process, platform and GC collectors.
        """
        self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.site = SiteCollector(config, device_states, local or LocalServices(), api_bus)
        self.registry.register(self.site)
        self.requests = Histogram(
            "gridpilot_api_request_duration_seconds",
            "HTTP requests by method, route template and status class, from the first byte "
            "received to the last sent (authentication included).",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )

    def watch_streams(self, streams: StreamSource) -> None:
        """Export the figures of the app's live streams too (made after the registry)."""
        self.site.streams = streams

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        status_class = f"{status // 100}xx" if 100 <= status <= 599 else "other"
        self.requests.labels(method, route, status_class).observe(seconds)

    def exposition(self) -> bytes:
        """Everything, in the text format of ``CONTENT_TYPE``."""
        return generate_latest(self.registry)


# ---------------------------------------------------------------------------- middleware


class RequestMetricsMiddleware:
    """Times every HTTP request into ``ApiMetrics.requests``. Plain ASGI; added outermost so
    that answers given before routing (401, 413, 429) are timed too.

    Event streams (``text/event-stream``) are not timed: their duration is the client's
    session, not the API's latency.
    """

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        streaming = False

        async def send_timed(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                streaming = _is_event_stream(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        except Exception:
            # Starlette's outermost error middleware answers 500 when nothing was sent yet.
            self._observe(scope, status or 500, started)
            raise
        if not streaming:
            self._observe(scope, status or 500, started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.observe_request(scope["method"], route_template(scope), status, seconds)


def _is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in headers
    )


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (``/api/v1/devices/{device}``), so that
    the ``route`` label has one value per route, not per URL. A request answered before
    routing (401, 429) is matched against the app's routes here; one no route takes is
    ``UNMATCHED_ROUTE``."""
    route = scope.get("route")
    if route is None:
        router = getattr(scope.get("app"), "router", None)
        partial = None
        for candidate in getattr(router, "routes", ()):
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate  # the path matches, the method does not (405)
        route = route or partial
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else UNMATCHED_ROUTE
