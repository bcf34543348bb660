"""/metrics collectors over real stats objects, states as the services publish them, and the
request-timing middleware on a small ASGI app (no broker, no sockets)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gridpilot.api.metrics import (
    CONTENT_TYPE,
    MAX_LABELS_PER_DEVICE,
    UNMATCHED_ROUTE,
    ApiMetrics,
    ControlFigures,
    DeviceFigures,
    LocalServices,
    RequestMetricsMiddleware,
)
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.api.stream import StreamHub, TooManyStreamsError
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig
from gridpilot.control.service import CycleStats
from gridpilot.gateway.buffer import OutboxStats
from gridpilot.gateway.health import BackoffPolicy, DeviceHealth
from gridpilot.gateway.payloads import device_state_payload, gateway_state_payload
from gridpilot.ingest.service import IngestStats
from gridpilot.ingest.validation import RejectReason
from gridpilot.ops.gaps import StreamTracker

SITE = "plant"
T0 = 1_764_158_400_000  # 2025-11-26T12:00:00Z


# ---------------------------------------------------------------------------- helpers


class Samples:
    """A parsed exposition: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in self.families.values()
            for s in family.samples
        }

    def get(self, name: str, default: float | None = None, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())), default)

    def count(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when there is none (yet)."""
        value = self.get(name, **labels)
        return 0.0 if value is None else value

    def __getitem__(self, key: str) -> float:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def value(self, name: str, **labels: str) -> float:
        value = self.get(name, **labels)
        assert value is not None, f"no sample {name}{labels}; have {sorted(self.names())}"
        return value

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for n, labels in self.values if n == name]


def scrape(metrics: ApiMetrics) -> Samples:
    return Samples(metrics.exposition().decode())


def config(**control: Any) -> GridPilotConfig:
    doc: dict[str, Any] = {
        "site": {"id": SITE},
        "gateway": {"id": "gw"},
        "storage": {"max_buffered": 5000},
        "devices": [
            {"id": "meter", "host": "127.0.0.1", "points": [{"point": "power_w", "address": 0}]},
            {"id": "battery", "host": "127.0.0.1", "points": [{"point": "soc_pct", "address": 0}]},
            {"id": "weather", "protocol": "mqtt", "points": [{"point": "air_temperature_degc"}]},
        ],
    }
    if control:
        doc["control"] = control
    return GridPilotConfig.model_validate(doc)


def troubled_health() -> DeviceHealth:
    """A device with a history: answered, timed out, refused, dropped values, commands."""
    health = DeviceHealth(2, BackoffPolicy(1.0, 60.0), T0)
    health.poll_succeeded(T0 + 1000)
    health.poll_succeeded(T0 + 2000)
    health.poll_failed("timeout", "no answer in 0.5 s", T0 + 3000)
    health.poll_failed("refused", "connection refused", T0 + 4000)
    health.poll_failed("refused", "connection refused", T0 + 5000)
    health.error("exception_2", "illegal data address", T0 + 5000)
    health.values_dropped(out_of_range=3, invalid=1)
    health.ticks_skipped(2)
    health.command_outcome("applied")
    health.command_outcome("rejected")
    health.command_outcome("applied")
    return health


def published(health: DeviceHealth) -> dict[str, Any]:
    """The state object the gateway publishes for ``health`` (what the API caches)."""
    state: dict[str, Any] = orjson.loads(device_state_payload(health.snapshot(), T0 + 6000))
    return state


def state_topic(device: str) -> str:
    return f"gridpilot/v1/{SITE}/{device}/state"


def an_unconnected_bus(name: str) -> BusClient:
    return BusClient(BrokerAddress("127.0.0.1", 1), name)


@dataclass
class IngestLike:
    stats: IngestStats
    bus: BusClient
    streams: StreamTracker | None = None


@dataclass
class GatewayLike:
    device_health: Mapping[str, DeviceHealth]
    bus: BusClient
    buffer_stats: OutboxStats = field(default_factory=OutboxStats)


@dataclass
class ControllerLike:
    stats: CycleStats
    bus: BusClient | None


# ---------------------------------------------------------------------------- figures


def test_device_figures_are_the_same_from_live_health_and_from_its_published_state() -> None:
    health = troubled_health()
    live = DeviceFigures.from_health("meter", health)
    from_bus = DeviceFigures.from_state("meter", published(health), online=False)
    assert live == from_bus
    assert live.online is False
    assert live.consecutive_failures == 3
    assert live.counters == {
        "polls": 5,
        "polls_failed": 3,
        "ticks_skipped": 2,
        "values_out_of_range": 3,
        "values_invalid": 1,
    }
    assert live.errors == {"exception_2": 1, "refused": 2, "timeout": 1}
    assert live.commands == {"applied": 2, "rejected": 1}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({}, DeviceFigures("d", None, None, {}, {}, {})),
        ({"counters": "lots"}, DeviceFigures("d", None, None, {}, {}, {})),
        (
            {
                "consecutive_failures": True,
                "counters": {
                    "polls": "7",
                    "polls_failed": -1,
                    "ticks_skipped": float("nan"),
                    "values_invalid": 2.0,
                    "errors": {"timeout": 4, "": 1, "bad\nkind": 1, "x" * 65: 1, "refused": None},
                    "commands": ["applied"],
                },
            },
            DeviceFigures("d", None, None, {"values_invalid": 2.0}, {"timeout": 4}, {}),
        ),
    ],
    ids=["empty", "counters-not-an-object", "wrong-types"],
)
def test_fields_of_a_state_from_the_bus_that_are_not_counts_are_left_out(
    state: dict[str, Any], expected: DeviceFigures
) -> None:
    assert DeviceFigures.from_state("d", state, None) == expected


def test_error_kinds_from_the_bus_are_bounded() -> None:
    state = {"counters": {"errors": {f"kind_{i:03}": i for i in range(1000)}}}
    figures = DeviceFigures.from_state("d", state, True)
    assert figures.errors is not None
    assert len(figures.errors) == MAX_LABELS_PER_DEVICE


_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_counter_keys = st.sampled_from(
    ["polls", "polls_failed", "ticks_skipped", "values_invalid", "errors", "commands"]
)


@given(
    st.dictionaries(
        st.sampled_from(["status", "consecutive_failures", "counters"]) | st.text(max_size=5),
        _json | st.dictionaries(_counter_keys, _scalar | st.dictionaries(st.text(), _scalar)),
        max_size=4,
    )
)
def test_any_json_state_gives_finite_non_negative_figures(state: dict[str, Any]) -> None:
    figures = DeviceFigures.from_state("d", state, None)
    numbers = [
        *(figures.counters or {}).values(),
        *(figures.errors or {}).values(),
        *(figures.commands or {}).values(),
    ]
    if figures.consecutive_failures is not None:
        numbers.append(figures.consecutive_failures)
    assert all(math.isfinite(n) and n >= 0 for n in numbers)
    control = ControlFigures.from_state(state)
    assert all(v is None or (math.isfinite(v) and v >= 0) for v in vars_of(control))


def vars_of(figures: ControlFigures) -> list[float | None]:
    return [getattr(figures, name) for name in figures.__slots__]


def test_control_figures_from_the_retained_status_match_the_live_stats() -> None:
    stats = CycleStats(
        cycles=120,
        overruns=2,
        last_s=0.0123,
        max_s=0.25,
        commands_sent=9,
        commands_applied=7,
        commands_failed=1,
        jobs_started=40,
        jobs_failed=3,
        worker_restarts=1,
    )
    # The shape ControllerService.status() publishes (rounded to 0.1 ms there).
    state = {
        "status": "online",
        "counters": {
            "cycles": 120,
            "overruns": 2,
            "commands_sent": 9,
            "commands_applied": 7,
            "commands_failed": 1,
            "jobs_started": 40,
            "jobs_failed": 3,
            "worker_restarts": 1,
        },
        "cycle_s": {"last": 0.0123, "max": 0.25},
    }
    assert ControlFigures.from_state(state) == ControlFigures.from_stats(stats)


# ---------------------------------------------------------------------------- exposition


def test_api_alone_shows_devices_and_controller_from_their_states_on_the_bus() -> None:
    cfg = config(cycle=0.5, journal=None)
    cache = DeviceStateCache.for_config(cfg)
    health = troubled_health()
    cache.apply(state_topic("gw"), gateway_state_payload(health.status, T0, T0, ["meter"]))
    cache.apply(state_topic("meter"), device_state_payload(health.snapshot(), T0 + 6000))
    online = DeviceHealth(2, BackoffPolicy(1.0, 60.0), T0)
    online.poll_succeeded(T0 + 1000)
    cache.apply(state_topic("battery"), device_state_payload(online.snapshot(), T0 + 1000))
    controller_state = {
        "status": "online",
        "counters": {
            "cycles": 40,
            "overruns": 1,
            "commands_sent": 3,
            "commands_applied": 2,
            "commands_failed": 1,
        },
        "cycle_s": {"last": 0.004, "max": 0.7},
    }
    cache.apply(state_topic("controller"), orjson.dumps(controller_state))
    metrics = ApiMetrics(cfg, cache, process=False)

    samples = scrape(metrics)

    assert samples.labels_of("gridpilot_info")[0]["site"] == SITE
    assert samples.value("gridpilot_device_online", device="meter") == 0
    assert samples.value("gridpilot_device_online", device="battery") == 1
    assert samples.value("gridpilot_device_consecutive_failures", device="meter") == 3
    assert samples.value("gridpilot_device_polls_total", device="meter") == 5
    assert samples.value("gridpilot_device_polls_failed_total", device="meter") == 3
    assert samples.value("gridpilot_device_errors_total", device="meter", kind="refused") == 2
    assert samples.value("gridpilot_device_errors_total", device="meter", kind="timeout") == 1
    assert samples.value("gridpilot_device_errors_total", device="meter", kind="exception_2") == 1
    assert (
        samples.value(
            "gridpilot_device_values_dropped_total", device="meter", reason="out_of_range"
        )
        == 3
    )
    assert samples.value("gridpilot_device_commands_total", device="meter", outcome="applied") == 2
    assert samples.value("gridpilot_device_polls_total", device="battery") == 1
    assert samples.get("gridpilot_device_errors_total", device="battery", kind="timeout") is None
    # Only polled devices: an MQTT-native sensor has no poll health.
    assert {x["device"] for x in samples.labels_of("gridpilot_device_online")} == {
        "meter",
        "battery",
    }

    assert samples["gridpilot_control_cycles_total"] == 40
    assert samples["gridpilot_control_cycle_overruns_total"] == 1
    assert samples["gridpilot_control_cycle_last_seconds"] == 0.004
    assert samples["gridpilot_control_cycle_max_seconds"] == 0.7
    assert samples["gridpilot_control_cycle_period_seconds"] == 0.5
    assert samples["gridpilot_control_commands_sent_total"] == 3
    assert samples.value("gridpilot_control_command_results_total", result="failed") == 1

    # Ingest publishes no state: without it in this process there are no ingest figures,
    # and without a bus client no bus figures.
    assert not any(n.startswith(("gridpilot_ingest_", "gridpilot_bus_")) for n in samples.names())


def test_a_device_state_is_unknown_while_its_gateway_is_offline() -> None:
    cfg = config()
    cache = DeviceStateCache.for_config(cfg)
    online = DeviceHealth(2, BackoffPolicy(1.0, 60.0), T0)
    online.poll_succeeded(T0 + 1000)
    cache.apply(state_topic("meter"), device_state_payload(online.snapshot(), T0 + 1000))
    metrics = ApiMetrics(cfg, cache, process=False)
    assert scrape(metrics).value("gridpilot_device_online", device="meter") == 1
    offline_gw = gateway_state_payload(online.status, T0, T0, ["meter", "battery"])
    cache.apply(state_topic("gw"), offline_gw.replace(b'"online"', b'"offline"'))
    samples = scrape(metrics)
    assert samples.value("gridpilot_device_online", device="meter") == 0
    # ... but what it counted up to then is still shown.
    assert samples.value("gridpilot_device_polls_total", device="meter") == 1


def test_local_services_are_read_live_at_every_scrape() -> None:
    cfg = config(cycle=1.0, journal=None)
    ingest = IngestLike(IngestStats(), an_unconnected_bus("ingest"))
    health = {"meter": troubled_health(), "battery": DeviceHealth(2, BackoffPolicy(1, 60), T0)}
    gateway = GatewayLike(health, an_unconnected_bus("gateway"))
    controller = ControllerLike(CycleStats(cycles=5, last_s=0.01, max_s=0.02), None)
    cache = DeviceStateCache.for_config(cfg)
    # A stale retained state on the bus says otherwise: the live figures win.
    cache.apply(state_topic("meter"), orjson.dumps({"status": "online", "counters": {"polls": 1}}))
    metrics = ApiMetrics(
        cfg,
        cache,
        local=LocalServices(ingest, gateway, controller),
        api_bus=lambda: an_unconnected_bus("api"),
        process=False,
    )

    first = scrape(metrics)
    assert first["gridpilot_ingest_messages_total"] == 0
    assert first.value("gridpilot_ingest_rejections_total", reason="not_json") == 0
    assert first["gridpilot_ingest_buffer_capacity_samples"] == 5000
    assert first.value("gridpilot_device_polls_total", device="meter") == 5
    assert first.value("gridpilot_device_online", device="battery") == 0
    assert first["gridpilot_control_cycles_total"] == 5
    assert "gridpilot_control_cycle_period_seconds" in first.names()
    assert {x["client"] for x in first.labels_of("gridpilot_bus_connected")} == {
        "api",
        "ingest",
        "gateway",
    }  # the controller's client is not made yet
    assert first.value("gridpilot_bus_outgoing_messages", client="ingest") == 0
    assert first.value("gridpilot_bus_incoming_messages", client="gateway") == 0

    stats = ingest.stats
    stats.messages += 10
    stats.samples_accepted += 25
    stats.samples_written += 24
    stats.duplicates += 1
    stats.messages_rejected += 2
    stats.rejections[RejectReason.NOT_JSON] += 1
    stats.rejections[RejectReason.OUT_OF_RANGE] += 3
    stats.buffered_samples = 17
    health["battery"].poll_succeeded(T0 + 1000)
    controller.stats.cycles += 1
    controller.stats.overruns += 1

    second = scrape(metrics)
    assert second["gridpilot_ingest_messages_total"] == 10
    assert second["gridpilot_ingest_samples_accepted_total"] == 25
    assert second["gridpilot_ingest_samples_written_total"] == 24
    assert second["gridpilot_ingest_samples_duplicate_total"] == 1
    assert second["gridpilot_ingest_messages_rejected_total"] == 2
    assert second.value("gridpilot_ingest_rejections_total", reason="not_json") == 1
    assert second.value("gridpilot_ingest_rejections_total", reason="out_of_range") == 3
    assert second["gridpilot_ingest_buffered_samples"] == 17
    assert second.value("gridpilot_device_online", device="battery") == 1
    assert second["gridpilot_control_cycles_total"] == 6
    assert second["gridpilot_control_cycle_overruns_total"] == 1
    assert second["gridpilot_gateway_buffer_messages"] == 0
    gateway.buffer_stats.messages = 1200
    gateway.buffer_stats.dropped = 7
    third = scrape(metrics)
    assert third["gridpilot_gateway_buffer_messages"] == 1200
    assert third["gridpilot_gateway_buffer_dropped_total"] == 7


def test_process_basics_and_content_type() -> None:
    metrics = ApiMetrics(config(), DeviceStateCache.for_config(config()))
    samples = scrape(metrics)
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["process_open_fds"] > 0
    assert any(n.startswith("python_gc_") for n in samples.names())
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_several_apps_in_one_process_keep_their_own_figures() -> None:
    one = ApiMetrics(config(), DeviceStateCache.for_config(config()))
    two = ApiMetrics(config(), DeviceStateCache.for_config(config()))
    one.observe_request("GET", "/api/v1/site", 200, 0.002)
    assert (
        scrape(one).value(
            "gridpilot_api_request_duration_seconds_count",
            method="GET",
            route="/api/v1/site",
            status="2xx",
        )
        == 1
    )
    assert "gridpilot_api_request_duration_seconds_count" not in scrape(two).names()


# ---------------------------------------------------------------------------- middleware


class RefuseWithoutToken:
    """Answers 401 before routing when there is no Authorization header, like AuthMiddleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(k == b"authorization" for k, _ in scope["headers"]):
            await JSONResponse({"error": "no token"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


TOKEN = {"authorization": "Bearer x"}


@pytest.fixture
def timed() -> tuple[FastAPI, ApiMetrics]:
    metrics = ApiMetrics(config(), DeviceStateCache.for_config(config()), process=False)
    app = FastAPI()

    @app.get("/items/{item}")
    async def item(item: str) -> dict[str, str]:
        return {"item": item}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_middleware(RefuseWithoutToken)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app, metrics


async def test_requests_are_counted_by_route_template_method_and_status_class(
    timed: tuple[FastAPI, ApiMetrics],
) -> None:
    app, metrics = timed
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://t", headers=TOKEN) as http,
        httpx.AsyncClient(transport=transport, base_url="http://t") as anonymous,
    ):
        for name in ("a", "b", "c"):
            assert (await http.get(f"/items/{name}")).status_code == 200
        assert (await anonymous.get("/items/a")).status_code == 401  # refused before routing
        assert (await http.post("/items/a")).status_code == 405
        assert (await http.get("/nowhere/1")).status_code == 404
        assert (await http.get("/nowhere/2")).status_code == 404
        assert (await http.request("BREW", "/items/a")).status_code == 405
        assert (await http.get("/broken")).status_code == 500
        assert (await http.get("/stream")).status_code == 200

    samples = scrape(metrics)
    counts = {
        (x["method"], x["route"], x["status"]): samples.value(
            "gridpilot_api_request_duration_seconds_count", **x
        )
        for x in samples.labels_of("gridpilot_api_request_duration_seconds_count")
    }
    assert counts == {
        ("GET", "/items/{item}", "2xx"): 3,
        ("GET", "/items/{item}", "4xx"): 1,
        ("POST", "/items/{item}", "4xx"): 1,
        ("GET", UNMATCHED_ROUTE, "4xx"): 2,
        ("other", "/items/{item}", "4xx"): 1,
        ("GET", "/broken", "5xx"): 1,
    }  # the event stream is not timed
    total = samples.value(
        "gridpilot_api_request_duration_seconds_sum",
        method="GET",
        route="/items/{item}",
        status="2xx",
    )
    assert 0 < total < 5


# ---------------------------------------------------------------------------- live streams


class Telemetry:
    """An in-memory telemetry source for a StreamHub: hands payloads to its listeners."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[str, bytes], None]] = []

    async def add_listener(self, listener: Callable[[str, bytes], None]) -> None:
        self.listeners.append(listener)

    async def remove_listener(self, listener: Callable[[str, bytes], None]) -> None:
        self.listeners.remove(listener)

    def publish(self, device: str, value: float) -> None:
        payload = orjson.dumps({"ts": T0, "values": {"power_w": value}})
        for listener in self.listeners:
            listener(device, payload)


async def test_live_streams_open_refused_and_dropped_frames() -> None:
    telemetry = Telemetry()
    hub = StreamHub(telemetry, max_clients=1, queue_size=2)
    metrics = ApiMetrics(config(), DeviceStateCache.for_config(config()), process=False)
    assert "gridpilot_api_streams_open" not in scrape(metrics).names()
    metrics.watch_streams(hub)
    assert scrape(metrics)["gridpilot_api_streams_open"] == 0

    async with hub.subscribe("meter"):
        with pytest.raises(TooManyStreamsError):
            hub.open(None)
        for value in range(5):  # nobody reads: 2 kept, 3 dropped
            telemetry.publish("meter", value)
        samples = scrape(metrics)
        assert samples["gridpilot_api_streams_open"] == 1
        assert samples["gridpilot_api_streams_max"] == 1
        assert samples["gridpilot_api_streams_refused_total"] == 1
        assert samples["gridpilot_api_stream_frames_dropped_total"] == 3

    samples = scrape(metrics)
    assert samples["gridpilot_api_streams_open"] == 0
    assert samples["gridpilot_api_stream_frames_dropped_total"] == 3  # kept after it closed
