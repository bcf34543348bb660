"""ApiService: uvicorn on a real loopback port, fed by a real Mosquitto and a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gridpilot.api.errors import InsecureBindError
from gridpilot.api.service import ApiService
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress
from gridpilot.config import GridPilotConfig
from gridpilot.model import Topic
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from tests.conftest import find_free_port
from tests.integration.test_api_support import (
    NOW,
    eventually,
    fill,
    publish_retained,
    site_config,
    tcp_client,
    unique_site,
)

pytestmark = pytest.mark.integration


def viewer_token(api: ApiService) -> str:
    return api.tokens.create(Role.VIEWER, "test-viewer", created_by="test")[1]


@pytest.fixture
def site_id() -> str:
    return unique_site("api-svc")


@pytest.fixture
async def storage(site_id: str, tmp_path: Path) -> AsyncIterator[Storage]:
    config = site_config(site_id, tmp_path)
    async with open_storage(config.storage, tmp_path) as store:
        await fill(store, site_id)
        yield store


async def test_serves_healthz_api_and_page_over_tcp(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress, free_port: int
) -> None:
    config = site_config(site_id, tmp_path, port=free_port)
    state = {"status": "online", "since": "2026-11-26T12:00:00.000Z", "counters": {"polls": 3}}
    await publish_retained(mosquitto, str(Topic.state(site_id, "battery")), orjson.dumps(state))

    async with ApiService(config, mosquitto, storage, base_dir=tmp_path, clock=lambda: NOW) as api:
        assert api.port == free_port
        assert api.url == f"http://127.0.0.1:{free_port}"
        async with tcp_client(api.url, viewer_token(api)) as http:
            healthz = await http.get("/healthz")
            assert healthz.status_code == 200
            assert healthz.json() == {"status": "ok"}
            assert "server" not in healthz.headers

            page = await http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "<title>GridPilot</title>" in page.text
            assert "content-security-policy" in page.headers

            latest = (await http.get("/api/v1/devices/meter/latest")).json()
            assert {v["point"] for v in latest["values"]} == {
                "active_power_w",
                "voltage_l1_v",
                "energy_import_wh",
            }

            # The service's own subscription feeds device health.
            async def battery() -> Any:
                return (await http.get("/api/v1/devices/battery")).json()

            found = await eventually(battery, lambda d: d["health"] is not None)
            assert found["health"] == state
            assert found["status"] == "online"
            assert api.device_states.stats.updates >= 1

    # Stopped: nothing listens any more.
    with pytest.raises(httpx.ConnectError):
        async with tcp_client(f"http://127.0.0.1:{free_port}") as http:
            await http.get("/healthz")


async def test_falls_back_to_a_free_port_when_the_configured_one_is_taken(
    site_id: str,
    tmp_path: Path,
    storage: Storage,
    mosquitto: BrokerAddress,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        config = site_config(site_id, tmp_path, port=taken)
        with caplog.at_level(logging.WARNING, logger="gridpilot.api"):
            async with ApiService(config, mosquitto, storage, base_dir=tmp_path) as api:
                assert api.port != taken
                assert api.url == f"http://127.0.0.1:{api.port}"
                async with tcp_client(api.url, viewer_token(api)) as http:
                    assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert f"port {taken} on 127.0.0.1 is taken" in caplog.text


async def test_port_argument_overrides_the_configuration(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    config = site_config(site_id, tmp_path, port=find_free_port())
    async with ApiService(config, mosquitto, storage, base_dir=tmp_path, port=0) as api:
        assert api.port != config.api.port
        async with tcp_client(api.url, viewer_token(api)) as http:
            assert (await http.get("/api/v1/site")).json()["id"] == site_id


async def test_serves_values_while_the_broker_is_unreachable(
    site_id: str, tmp_path: Path, storage: Storage
) -> None:
    nowhere = BrokerAddress("127.0.0.1", find_free_port())
    config = site_config(site_id, tmp_path, port=0)
    async with (
        ApiService(config, nowhere, storage, base_dir=tmp_path, clock=lambda: NOW) as api,
        tcp_client(api.url, viewer_token(api)) as http,
    ):
        devices = (await http.get("/api/v1/devices")).json()["devices"]
        assert {d["status"] for d in devices} == {"unknown"}
        latest = (await http.get("/api/v1/latest")).json()
        assert len(latest["values"]) == 4


async def test_leaves_signal_handling_to_the_application(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    config = site_config(site_id, tmp_path, port=0)
    async with ApiService(config, mosquitto, storage, base_dir=tmp_path) as api:
        async with tcp_client(api.url, viewer_token(api)) as http:
            assert (await http.get("/healthz")).status_code == 200
        assert {sig: signal.getsignal(sig) for sig in before} == before
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "gridpilot.example.com"])
async def test_refuses_to_listen_beyond_loopback_without_tls(
    host: str, site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    config = site_config(site_id, tmp_path, host=host, port=0)
    with pytest.raises(InsecureBindError) as refused:
        async with ApiService(config, mosquitto, storage, base_dir=tmp_path):
            pytest.fail("the service started")
    message = str(refused.value)
    assert "api.tls is not set: tokens would cross the network in clear text" in message
    assert "Set api.tls.cert_file and api.tls.key_file, or bind 127.0.0.1" in message
    assert repr(host) in message


@pytest.mark.parametrize("host", ["localhost", "::1"])
async def test_other_loopback_names_are_fine(
    host: str, site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    if host == "::1" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    config = GridPilotConfig.model_validate(
        site_config(site_id, tmp_path).model_dump() | {"api": {"host": host, "port": 0}}
    )
    async with (
        ApiService(config, mosquitto, storage, base_dir=tmp_path) as api,
        tcp_client(api.url, viewer_token(api)) as http,
    ):
        assert (await http.get("/healthz")).json() == {"status": "ok"}


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_stops_promptly_even_with_an_idle_keep_alive_connection(
    site_id: str, tmp_path: Path, storage: Storage, mosquitto: BrokerAddress
) -> None:
    config = site_config(site_id, tmp_path, port=0)
    loop = asyncio.get_running_loop()
    async with tcp_client("http://127.0.0.1") as http:
        service = ApiService(config, mosquitto, storage, base_dir=tmp_path)
        async with service as api:
            # A keep-alive connection stays open after this, like a browser's would.
            assert (await http.get(f"{api.url}/healthz")).status_code == 200
            started = loop.time()
        assert loop.time() - started < 1.5
