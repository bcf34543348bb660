"""/metrics of a running site: real Mosquitto, the simulated building over Modbus TCP, SQLite,
uvicorn on a loopback port; the exposition parsed with prometheus_client's own parser.

1. ``run_services`` (what ``gridpilot run all`` runs): gateway, ingest, controller and API in
   one process, so ``/metrics`` reads their live stats.
2. The API alone next to a gateway and a controller it is not handed: the figures come from
   their retained states on the bus.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from gridpilot import __version__
from gridpilot.api.metrics import CONTENT_TYPE
from gridpilot.api.service import ApiService
from gridpilot.api.tokens import Role, TokenStore
from gridpilot.app import ALL_SERVICES, Running, run_services
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig
from gridpilot.control.service import ControllerService
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage import open_storage
from tests.conftest import find_free_port
from tests.integration.test_api_support import tcp_client
from tests.unit.test_metrics import Samples

pytestmark = pytest.mark.integration

POLL_S = 0.25
LATENCY = "gridpilot_api_request_duration_seconds_count"


def site_config(
    site: SimulatedSite, site_id: str, broker: BrokerAddress, data_dir: Path
) -> GridPilotConfig:
    """The simulated grid meter and battery, and a meter at a port nobody listens on."""
    devices = [d for d in site.site_config(site_id) if d["id"] in ("grid_meter", "battery")]
    dead = dict(devices[0], id="dead_meter", port=find_free_port())
    for device in (*devices, dead):
        device["poll_interval"] = POLL_S
        device["timeout"] = 0.2
        device["retries"] = 0
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site_id},
            "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
            "storage": {"path": str(data_dir / "site.db"), "flush_interval": 0.1},
            "api": {"port": 0},
            "control": {"cycle": 0.2, "journal": None},
            "devices": [*devices, dead],
        }
    )


def viewer_token(config: GridPilotConfig, base_dir: Path) -> str:
    """A token in the store the API of ``run_services`` reads (``api.tokens_file``)."""
    store = TokenStore(base_dir / config.api.tokens_file)
    return store.create(Role.VIEWER, "prometheus", created_by="test")[1]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return Samples(response.text)


async def scrape_until(
    http: httpx.AsyncClient, accept: Callable[[Samples], bool], within: float = 15.0
) -> Samples:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        samples = await scrape(http)
        if accept(samples):
            return samples
        if loop.time() > deadline:
            raise AssertionError(f"not seen within {within} s; names: {sorted(samples.names())}")
        await asyncio.sleep(0.1)


async def publish(broker: BrokerAddress, topic: str, payload: bytes) -> None:
    async with BusClient(broker, f"pub-{uuid.uuid4().hex[:12]}") as bus:
        await bus.wait_connected(10)
        await bus.publish(topic, payload, qos=1)
        await bus.flush(10)


@asynccontextmanager
async def running_all(config: GridPilotConfig, base_dir: Path) -> AsyncIterator[str]:
    """``run_services`` with every service, as ``gridpilot run all``; yields the API's URL."""
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_services(config, base_dir, ALL_SERVICES, stop, ready.set_result, http_port=0)
    )
    try:
        running = await asyncio.wait_for(asyncio.shield(ready), 20)
        assert running.api_url is not None
        yield running.api_url
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_run_all_exports_live_figures_of_every_service(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site_id = f"metrics-{uuid.uuid4().hex[:10]}"
    async with SimulatedSite(base_port=0, speed=10.0) as site:
        config = site_config(site, site_id, mosquitto, tmp_path)
        token = viewer_token(config, tmp_path)
        async with running_all(config, tmp_path) as url, tcp_client(url, token) as http:
            # Real traffic: the gateway polls, ingest stores.
            first = await scrape_until(
                http,
                lambda s: (
                    s.count("gridpilot_ingest_samples_written_total") > 0
                    and s.get("gridpilot_device_online", device="grid_meter") == 1
                    and s.get("gridpilot_device_online", device="battery") == 1
                ),
            )
            # A malformed telemetry message: rejected as not JSON, the service goes on.
            telemetry = f"gridpilot/v1/{site_id}/grid_meter/telemetry"
            await publish(mosquitto, telemetry, b"{not json")
            written_before = first["gridpilot_ingest_samples_written_total"]
            later = await scrape_until(
                http,
                lambda s: (
                    s.count("gridpilot_ingest_rejections_total", reason="not_json") >= 1
                    and refused(s, "dead_meter") >= 2
                    and s["gridpilot_ingest_samples_written_total"] > written_before
                ),
            )

            # Ingest: counters grew with the traffic, the rejection is counted by its reason.
            messages, written = (
                "gridpilot_ingest_messages_total",
                "gridpilot_ingest_samples_written_total",
            )
            assert later[messages] > first[messages]
            assert later["gridpilot_ingest_samples_accepted_total"] >= later[written]
            assert later["gridpilot_ingest_messages_rejected_total"] == 1
            assert later.value("gridpilot_ingest_rejections_total", reason="out_of_range") == 0
            assert 0 <= later["gridpilot_ingest_buffered_samples"] <= 200_000
            assert later["gridpilot_ingest_buffer_capacity_samples"] == 200_000

            # Devices: the dead one is offline with connection-refused errors; the others poll.
            assert later.value("gridpilot_device_online", device="dead_meter") == 0
            assert later.value("gridpilot_device_online", device="grid_meter") == 1
            polls, failed = "gridpilot_device_polls_total", "gridpilot_device_polls_failed_total"
            assert later.value(failed, device="dead_meter") == later.value(
                polls, device="dead_meter"
            )
            assert later.value("gridpilot_device_consecutive_failures", device="dead_meter") >= 2
            # (a poll of a live device may still time out now and then on a busy machine)
            assert later.value(polls, device="grid_meter") > later.value(
                failed, device="grid_meter"
            )
            assert later.value(polls, device="battery") > 0
            assert refused(later, "grid_meter") == 0

            # Control: the loop runs at its configured period.
            assert later["gridpilot_control_cycles_total"] > 0
            assert later["gridpilot_control_cycle_period_seconds"] == 0.2
            assert later["gridpilot_control_cycle_max_seconds"] > 0

            # Bus: every in-process client, connected, with its queue depths.
            clients = {x["client"] for x in later.labels_of("gridpilot_bus_connected")}
            assert clients == {"api", "ingest", "gateway", "controller"}
            for client in clients:
                assert later.value("gridpilot_bus_connected", client=client) == 1
                assert later.value("gridpilot_bus_outgoing_messages", client=client) >= 0
                assert later.value("gridpilot_bus_incoming_messages", client=client) >= 0
            assert later.value("gridpilot_bus_published_total", client="gateway") > 0
            assert later.value("gridpilot_bus_received_total", client="ingest") > 0

            # Process basics.
            assert later["process_resident_memory_bytes"] > 0
            assert later.labels_of("gridpilot_info") == [{"site": site_id, "version": __version__}]

            # API latency: exactly the requests made, by route template and status class.
            device_route = {"method": "GET", "route": "/api/v1/devices/{device}"}
            before = later.count(LATENCY, **device_route, status="2xx")
            for device in ("grid_meter", "battery", "dead_meter"):
                assert (await http.get(f"/api/v1/devices/{device}")).status_code == 200
            assert (await http.get("/api/v1/devices/nope")).status_code == 404
            async with tcp_client(url) as anonymous:
                no_token = await anonymous.get("/metrics")
                assert no_token.status_code == 401
                assert no_token.headers["www-authenticate"].startswith("Bearer")
            after = await scrape(http)
            assert after.value(LATENCY, **device_route, status="2xx") == before + 3
            assert after.value(LATENCY, **device_route, status="4xx") == 1
            assert after.value(LATENCY, method="GET", route="/metrics", status="4xx") == 1
            # A scrape is timed once it is answered: the next one shows it.
            metrics_route = {"method": "GET", "route": "/metrics", "status": "2xx"}
            scrapes_before = later.count(LATENCY, **metrics_route)
            assert after.value(LATENCY, **metrics_route) == scrapes_before + 1
            seconds = after.value(
                "gridpilot_api_request_duration_seconds_sum", **device_route, status="2xx"
            )
            assert 0 < seconds < 10 * (before + 3)


def refused(samples: Samples, device: str) -> float:
    return samples.count("gridpilot_device_errors_total", device=device, kind="refused")


async def test_the_api_alone_exports_what_the_bus_says(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site_id = f"metrics-{uuid.uuid4().hex[:10]}"
    async with SimulatedSite(base_port=0, speed=10.0) as site:
        config = site_config(site, site_id, mosquitto, tmp_path)
        async with (
            open_storage(config.storage, tmp_path) as storage,
            # Running, but not handed to the API: as if in processes of their own.
            GatewayService(config, mosquitto),
            ControllerService(config, mosquitto, [], base_dir=tmp_path),
            ApiService(config, mosquitto, storage, base_dir=tmp_path, port=0) as api,
        ):
            token = api.tokens.create(Role.VIEWER, "prometheus", created_by="test")[1]
            async with tcp_client(api.url, token) as http:
                samples = await scrape_until(
                    http,
                    lambda s: (
                        refused(s, "dead_meter") >= 1
                        and s.get("gridpilot_device_online", device="grid_meter") == 1
                        and s.get("gridpilot_control_cycles_total") is not None
                    ),
                )
                assert samples.value("gridpilot_device_online", device="dead_meter") == 0
                assert samples.value("gridpilot_device_polls_total", device="grid_meter") >= 1
                assert samples["gridpilot_control_cycle_period_seconds"] == 0.2
                assert samples["gridpilot_control_cycle_last_seconds"] >= 0
                # Ingest publishes no state; only the API's own bus client is in this app.
                assert not any(n.startswith("gridpilot_ingest_") for n in samples.names())
                assert {x["client"] for x in samples.labels_of("gridpilot_bus_connected")} == {
                    "api"
                }
                assert samples.value("gridpilot_bus_received_total", client="api") >= 1
