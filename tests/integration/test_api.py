"""The HTTP app against a real SQLite file (and, for device health, a real Mosquitto).

httpx calls the ASGI app in-process; ``test_api_service.py`` covers the real TCP server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request

from gridpilot.api.app import _on_storage_error, create_app
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig
from gridpilot.gateway.health import BackoffPolicy, DeviceHealth
from gridpilot.gateway.payloads import device_state_payload, gateway_will_payload
from gridpilot.model import Sample, Topic, to_rfc3339
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage, StorageUnavailable
from tests.integration.test_api_support import (
    ENERGY_SAMPLES,
    NOW,
    Auth,
    H,
    client_for,
    eventually,
    fill,
    publish_retained,
    site_config,
    unique_site,
)

pytestmark = pytest.mark.integration

HISTORY = "/api/v1/devices/{device}/points/{point}/history"
POWER = HISTORY.format(device="meter", point="active_power_w")
ENERGY = HISTORY.format(device="meter", point="energy_import_wh")


@pytest.fixture
def site_id() -> str:
    return unique_site()


@pytest.fixture
def config(site_id: str, tmp_path: Path) -> GridPilotConfig:
    return site_config(site_id, tmp_path)


@pytest.fixture
async def storage(config: GridPilotConfig, site_id: str, tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(config.storage, tmp_path) as store:
        await fill(store, site_id)
        yield store


@pytest.fixture
def states(config: GridPilotConfig) -> DeviceStateCache:
    return DeviceStateCache.for_config(config)


@pytest.fixture
def auth(tmp_path: Path) -> Auth:
    return Auth.in_dir(tmp_path)


def make_app(
    config: GridPilotConfig, storage: Storage, states: DeviceStateCache, auth: Auth, **kw: Any
) -> Any:
    return create_app(
        config, storage, states, tokens=auth.tokens, audit=auth.audit, clock=lambda: NOW, **kw
    )


@pytest.fixture
async def client(
    config: GridPilotConfig, storage: Storage, states: DeviceStateCache, auth: Auth
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(config, storage, states, auth), auth.viewer) as http:
        yield http


async def get_json(client: httpx.AsyncClient, url: str, status: int = 200) -> Any:
    response = await client.get(url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def assert_error(body: Any, *fragments: str) -> None:
    assert set(body) == {"error", "detail"}
    for fragment in fragments:
        assert fragment in body["error"]


# ---------------------------------------------------------------------------- site, devices


async def test_healthz(client: httpx.AsyncClient) -> None:
    assert await get_json(client, "/healthz") == {"status": "ok"}


async def test_site(client: httpx.AsyncClient, site_id: str) -> None:
    assert await get_json(client, "/api/v1/site") == {
        "id": site_id,
        "name": "Test plant",
        "timezone": "Europe/Berlin",
        "device_count": 3,
        "gateway": {"id": "gateway", "status": "unknown", "health": None},
    }


async def test_devices_with_points_and_no_health_yet(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/api/v1/devices")
    devices = {d["id"]: d for d in body["devices"]}
    assert list(devices) == ["meter", "battery", "weather"]  # configuration order
    meter = devices["meter"]
    assert meter["name"] == "Grid meter"
    assert meter["protocol"] == "modbus_tcp"
    assert meter["poll_interval_s"] == 1.0
    assert meter["points"] == [
        {
            "name": "active_power_w",
            "unit": "W",
            "writable": False,
            "valid_range": [-1_000_000.0, 1_000_000.0],
        },
        {"name": "voltage_l1_v", "unit": "V", "writable": False, "valid_range": None},
        {"name": "energy_import_wh", "unit": "Wh", "writable": False, "valid_range": None},
    ]
    assert devices["battery"]["points"] == [
        {"name": "soc_pct", "unit": "%", "writable": False, "valid_range": [0.0, 100.0]},
        {"name": "active_power_setpoint_w", "unit": "W", "writable": True, "valid_range": None},
    ]
    assert devices["battery"]["poll_interval_s"] == 2.0
    assert devices["weather"]["protocol"] == "mqtt"
    # its part in the power flow, as the site file gives it (the dashboard reads it)
    assert meter["flow"] == {
        "role": "grid",
        "power_point": "active_power_w",
        "power_sign": 1,
        "soc_point": None,
    }
    assert devices["battery"]["flow"] is None
    for device in devices.values():
        assert device["health"] is None
        assert device["status"] == "unknown"


async def test_device_health_is_the_gateways_state_passed_through(
    client: httpx.AsyncClient, states: DeviceStateCache, site_id: str
) -> None:
    health = DeviceHealth(2, BackoffPolicy(1.0, 60.0), now_ms=NOW - 60_000)
    health.poll_succeeded(NOW - 50_000)
    health.poll_failed("timeout", "no answer within 1.0 s", NOW - 2_000)
    payload = device_state_payload(health.snapshot(), NOW - 2_000)
    states.apply(str(Topic.state(site_id, "meter")), payload)

    meter = await get_json(client, "/api/v1/devices/meter")
    assert meter["health"] == orjson.loads(payload)
    assert meter["status"] == "online"  # one failure of the two that make it offline
    assert meter["health"]["last_error"]["kind"] == "timeout"
    assert meter["health"]["since"] == to_rfc3339(NOW - 50_000)
    assert meter["health"]["counters"]["polls_failed"] == 1


async def test_unknown_device_is_404(client: httpx.AsyncClient) -> None:
    for url in (
        "/api/v1/devices/pump",
        "/api/v1/devices/pump/latest",
        HISTORY.format(device="pump", point="active_power_w"),
    ):
        body = await get_json(client, url, 404)
        assert_error(body, "no device 'pump'", "/api/v1/devices")
        assert body["detail"] == {"device": "pump", "known": ["battery", "meter", "weather"]}


# ---------------------------------------------------------------------------- latest


async def test_latest_of_the_site(client: httpx.AsyncClient, site_id: str) -> None:
    body = await get_json(client, "/api/v1/latest")
    assert body["site"] == site_id
    assert body["now"] == to_rfc3339(NOW)
    values = {(v["device"], v["point"]): v for v in body["values"]}
    assert set(values) == {
        ("meter", "active_power_w"),
        ("meter", "voltage_l1_v"),
        ("meter", "energy_import_wh"),
        ("battery", "soc_pct"),
    }
    assert values[("meter", "active_power_w")] == {
        "device": "meter",
        "point": "active_power_w",
        "unit": "W",
        "value": 7199.0,
        "ts": to_rfc3339(NOW - 1000),
        "age_s": 1.0,
    }
    assert values[("meter", "voltage_l1_v")]["value"] == 231.4
    assert values[("meter", "voltage_l1_v")]["age_s"] == 5.0
    assert values[("meter", "energy_import_wh")]["age_s"] == pytest.approx(0.1)
    assert values[("battery", "soc_pct")]["ts"] == to_rfc3339(NOW - 60_000)
    assert values[("battery", "soc_pct")]["value"] == pytest.approx(50 + 119 / 10)
    assert values[("battery", "soc_pct")]["unit"] == "%"


async def test_latest_of_one_device(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/api/v1/devices/battery/latest")
    assert [(v["device"], v["point"]) for v in body["values"]] == [("battery", "soc_pct")]
    assert (await get_json(client, "/api/v1/devices/weather/latest"))["values"] == []


# ---------------------------------------------------------------------------- history


async def test_raw_history_defaults_to_the_last_hour(client: httpx.AsyncClient) -> None:
    body = await get_json(client, POWER)
    assert body["start"] == to_rfc3339(NOW - H)
    assert body["end"] == to_rfc3339(NOW)
    assert (body["every_ms"], body["agg"], body["unit"]) == (None, None, "W")
    values = body["values"]
    assert len(values) == 3600
    assert values[0] == {"ts": to_rfc3339(NOW - H), "value": 3600.0}
    assert values[-1] == {"ts": to_rfc3339(NOW - 1000), "value": 7199.0}


@pytest.mark.parametrize(
    "query",
    [
        "start={start}&end={end}",
        "start={start_ms}&end={end_ms}",
        "start=-10s&end=-5s",
        # An RFC 3339 offset written by hand, '+' unencoded: the query string turns it into
        # a space, which the API reads back as '+'.
        "start={start_plus}&end={end}",
        "start={start_plus_encoded}&end={end}",
    ],
)
async def test_raw_history_window_forms(client: httpx.AsyncClient, query: str) -> None:
    start_ms, end_ms = NOW - 10_000, NOW - 5_000
    plus_one_hour = to_rfc3339(start_ms + H).replace("Z", "+01:00")
    url = (
        POWER
        + "?"
        + query.format(
            start=to_rfc3339(start_ms),
            end=to_rfc3339(end_ms),
            start_ms=start_ms,
            end_ms=end_ms,
            start_plus=plus_one_hour,
            start_plus_encoded=plus_one_hour.replace("+", "%2B"),
        )
    )
    body = await get_json(client, url)
    assert [v["value"] for v in body["values"]] == [7190.0, 7191.0, 7192.0, 7193.0, 7194.0]
    assert body["start"] == to_rfc3339(start_ms)


@pytest.mark.parametrize(
    ("agg", "of_bucket"),
    [
        ("mean", lambda first: first + 449.5),
        ("min", float),
        ("max", lambda first: first + 899.0),
        ("last", lambda first: first + 899.0),
        ("sum", lambda first: 900 * (first + 449.5)),
        ("count", lambda first: 900.0),
    ],
)
async def test_15_minute_aggregates(client: httpx.AsyncClient, agg: str, of_bucket: Any) -> None:
    body = await get_json(client, f"{POWER}?start=-1h&every=15m&agg={agg}")
    assert (body["every_ms"], body["agg"]) == (900_000, agg)
    # Bucket k of the last hour holds the values 3600 + 900k ... 3600 + 900k + 899.
    assert body["values"] == [
        {"ts": to_rfc3339(NOW - H + k * 900_000), "value": pytest.approx(of_bucket(3600 + 900 * k))}
        for k in range(4)
    ]


@pytest.mark.parametrize(("every", "bucket_s"), [("1m", 60), ("30m", 1800), ("1h", 3600)])
async def test_mean_over_other_bucket_lengths(
    client: httpx.AsyncClient, every: str, bucket_s: int
) -> None:
    body = await get_json(client, f"{POWER}?start=-2h&every={every}")
    assert body["agg"] == "mean"
    assert len(body["values"]) == 7200 // bucket_s
    for k, point in enumerate(body["values"]):
        assert point["ts"] == to_rfc3339(NOW - 2 * H + k * bucket_s * 1000)
        assert point["value"] == pytest.approx(k * bucket_s + (bucket_s - 1) / 2)


async def test_aggregates_of_a_dense_series(client: httpx.AsyncClient) -> None:
    body = await get_json(client, f"{ENERGY}?start=-30m&every=1s&agg=count")
    assert len(body["values"]) == 1800
    assert {v["value"] for v in body["values"]} == {10.0}


async def test_raw_history_over_the_row_limit_asks_for_every(client: httpx.AsyncClient) -> None:
    # The last hour holds 18,000 samples; the hourly count says so before any is read.
    body = await get_json(client, ENERGY, 422)
    assert_error(body, "at least 18000 raw samples, more than 10000", "add every", "every=1s")
    assert body["detail"]["parameter"] == "every"


async def test_raw_row_limit_is_exact(client: httpx.AsyncClient) -> None:
    """Neither window is made of whole hours: the API reads and counts."""
    exactly = await get_json(client, f"{ENERGY}?start={NOW - 1_000_000}&end={NOW}")
    assert len(exactly["values"]) == 10_000
    body = await get_json(client, f"{ENERGY}?start={NOW - 1_000_100}&end={NOW}", 422)
    assert_error(body, "holds 10001 raw samples", "add every")
    assert len((await get_json(client, f"{ENERGY}?start=-30m&every=1s"))["values"]) == 1800
    assert ENERGY_SAMPLES > 10_000


async def test_unknown_point_is_404(client: httpx.AsyncClient) -> None:
    body = await get_json(client, HISTORY.format(device="meter", point="soc_pct"), 404)
    assert_error(body, "device 'meter' has no point 'soc_pct'", "/api/v1/devices/meter")
    assert body["detail"]["known"] == ["active_power_w", "voltage_l1_v", "energy_import_wh"]


async def test_unconfigured_stored_points_follow_accept_unknown_points(
    tmp_path: Path, site_id: str
) -> None:
    for accept, status in ((False, 404), (True, 200)):
        config = GridPilotConfig.model_validate(
            site_config(site_id, tmp_path).model_dump()
            | {"ingest": {"accept_unknown_points": accept}}
        )
        async with open_storage(config.storage, tmp_path) as storage:
            await storage.write([Sample(site_id, "meter", "frequency_hz", NOW - 1000, 50.01)])
            auth = Auth.in_dir(tmp_path / f"auth-{accept}")
            app = make_app(config, storage, DeviceStateCache.for_config(config), auth)
            async with client_for(app, auth.viewer) as client:
                url = HISTORY.format(device="meter", point="frequency_hz")
                body = await get_json(client, url, status)
                if accept:
                    assert body["values"] == [{"ts": to_rfc3339(NOW - 1000), "value": 50.01}]
                    assert body["unit"] == "Hz"
                # Points nobody stored are unknown either way.
                await get_json(client, HISTORY.format(device="meter", point="speed_rpm"), 404)


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        ("start=yesterday", ["start: 'yesterday' is not a time"]),
        ("start=-1h&end=-2h", ["must be after start"]),
        ("every=soon", ["every: 'soon' is not a duration", "15m"]),
        ("every=15m&agg=median", ["invalid agg", "'mean'"]),
        ("agg=max", ["agg=max needs every"]),
        ("start=-7d&every=1s", ["604800 buckets", "longer every"]),
    ],
)
async def test_bad_parameters_are_422_with_the_reason(
    client: httpx.AsyncClient, query: str, fragments: list[str]
) -> None:
    body = await get_json(client, f"{POWER}?{query}", 422)
    assert_error(body, *fragments)
    assert body["detail"]


# ---------------------------------------------------------------------------- HTTP edges


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/api/v1/nothing-here", 404)
    assert_error(body, "no such resource: /api/v1/nothing-here")
    response = await client.post("/api/v1/site")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert_error(response.json(), "POST is not allowed on /api/v1/site (allowed: GET)")


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8080", 200),
        ("localhost:8080", 200),
        ("[::1]:8080", 200),
        ("LOCALHOST", 200),
        ("attacker.example:8080", 400),  # DNS rebinding: the page's own name
        ("127.0.0.1.nip.io", 400),
        ("", 400),
    ],
)
async def test_only_loopback_host_names_are_answered(
    client: httpx.AsyncClient, host: str, status: int
) -> None:
    response = await client.get("/api/v1/site", headers={"Host": host})
    assert response.status_code == status
    if status == 400:
        assert_error(response.json(), "only requests to a loopback address")


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    doc = await get_json(client, "/api/v1/openapi.json")
    assert set(doc["paths"]) == {
        "/healthz",
        "/api/v1/site",
        "/api/v1/devices",
        "/api/v1/devices/{device}",
        "/api/v1/latest",
        "/api/v1/devices/{device}/latest",
        "/api/v1/devices/{device}/points/{point}/history",
        "/api/v1/devices/{device}/gaps",
        "/api/v1/control",
        "/api/v1/ieee2030_5",
        "/api/v1/me",
        "/api/v1/devices/{device}/points/{point}/command",
        "/api/v1/control/overrides",
        "/api/v1/control/overrides/{point}",
        "/api/v1/control/dry-run",
        "/api/v1/control/controllers/{name}",
        "/api/v1/events",
        "/api/v1/audit",
        "/api/v1/tokens",
        "/api/v1/tokens/{token_id}",
        "/api/v1/control/controllers/{name}/params",
        "/api/v1/stream",
    }
    history = doc["paths"]["/api/v1/devices/{device}/points/{point}/history"]["get"]
    assert {p["name"] for p in history["parameters"]} == {
        "device",
        "point",
        "start",
        "end",
        "every",
        "agg",
        "format",
    }
    for status in ("401", "404", "422", "429"):
        schema = history["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}
    # No Swagger UI (it would come from a CDN); the document itself needs a token.
    assert (await client.get("/api/v1/docs")).status_code == 404
    anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://127.0.0.1")
    async with anonymous:
        assert (await anonymous.get("/api/v1/openapi.json")).status_code == 401


async def test_dashboard_is_served_from_this_origin_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Nothing is loaded from another origin (the site may be offline): every asset the page
    # names is a file of the package, served here without a token.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"'#]+)["']""", html)
    assert assets, "the dashboard names its scripts and styles"
    anonymous = httpx.AsyncClient(transport=client._transport, base_url="http://127.0.0.1")
    async with anonymous:
        for asset in assets:
            served = await anonymous.get("/" + asset.removeprefix("./").lstrip("/"))
            assert served.status_code == 200, asset
            if "static/" in asset:  # the page's files are revalidated on every load
                assert served.headers["cache-control"] == "no-cache", asset
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    for kind in ("script", "style"):
        for body in re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.DOTALL):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------- Mosquitto


async def test_health_follows_the_retained_state_topics(
    client: httpx.AsyncClient, states: DeviceStateCache, site_id: str, mosquitto: BrokerAddress
) -> None:
    meter_topic = str(Topic.state(site_id, "meter"))
    health = DeviceHealth(2, BackoffPolicy(1.0, 60.0), now_ms=NOW - 10_000)
    health.poll_succeeded(NOW - 9_000)
    online = device_state_payload(health.snapshot(), NOW - 9_000)
    # Published (retained) before anyone listens: the cache still gets it.
    await publish_retained(mosquitto, meter_topic, online)
    await publish_retained(mosquitto, str(Topic.state("other-" + site_id, "meter")), b"{}")

    async def devices() -> dict[str, Any]:
        body = await get_json(client, "/api/v1/devices")
        return {d["id"]: d for d in body["devices"]}

    async with BusClient(mosquitto, f"api-{site_id}") as bus:
        follower = asyncio.create_task(states.follow(bus))
        try:
            found = await eventually(devices, lambda d: d["meter"]["health"] is not None)
            assert found["meter"]["health"] == orjson.loads(online)
            assert found["meter"]["status"] == "online"
            assert found["weather"]["health"] is None

            # The gateway vanishes: its last will makes its devices' states stale.
            gateway_topic = str(Topic.state(site_id, "gateway"))
            await publish_retained(mosquitto, gateway_topic, gateway_will_payload(["meter"]))
            found = await eventually(devices, lambda d: d["meter"]["status"] == "unknown")
            assert found["meter"]["health"] == orjson.loads(online)  # shown, but stale
            site = await get_json(client, "/api/v1/site")
            assert site["gateway"]["status"] == "offline"
            assert "last will" in site["gateway"]["health"]["reason"]

            # Garbage is ignored and counted; the last good state stays.
            await publish_retained(mosquitto, meter_topic, b"not json")
            await eventually(lambda: _stat(states), lambda n: n == 1)
            assert (await devices())["meter"]["health"] == orjson.loads(online)

            # Clearing the retained state makes it unknown again.
            await publish_retained(mosquitto, meter_topic, b"")
            found = await eventually(devices, lambda d: d["meter"]["health"] is None)
            assert found["meter"]["status"] == "unknown"
        finally:
            await bus.close()
            await asyncio.wait_for(follower, 5)
    assert states.get("meter") is None
    assert len(states) == 1  # the gateway; nothing of the other site


async def _stat(states: DeviceStateCache) -> int:
    return states.stats.unparseable


# ---------------------------------------------------------------------------- storage errors


async def test_a_failing_storage_is_a_json_500_without_internals(
    config: GridPilotConfig,
    site_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    auth: Auth,
) -> None:
    async with open_storage(config.storage, tmp_path) as storage:
        await fill(storage, site_id)
    # Closed now: every read raises StorageError.
    app = make_app(config, storage, DeviceStateCache.for_config(config), auth)
    async with client_for(app, auth.viewer) as client:
        for url in ("/api/v1/latest", POWER):
            body = await get_json(client, url, 500)
            assert_error(body, "storage failed; the server log has the details")
            assert str(tmp_path) not in str(body)
        assert (await client.get("/healthz")).status_code == 200
    assert "storage failed while serving /api/v1/latest" in caplog.text


async def test_unavailable_storage_is_a_503_asking_to_retry() -> None:
    scope = {"type": "http", "method": "GET", "path": "/api/v1/latest", "headers": []}
    response = await _on_storage_error(Request(scope), StorageUnavailable("database is locked"))
    assert response.status_code == 503
    assert orjson.loads(response.body) == {
        "error": "storage is unavailable; retry later",
        "detail": None,
    }


# ---------------------------------------------------------------------------- control


async def test_control_is_404_without_a_control_section(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/api/v1/control", 404)
    assert_error(body, "no control section")


async def test_control_shows_the_controllers_retained_state(
    config: GridPilotConfig, storage: Storage, site_id: str, auth: Auth
) -> None:
    with_control = config.model_copy(
        update={"control": GridPilotConfig.model_validate(
            {"site": {"id": site_id}, "control": {}}).control}
    )  # fmt: skip
    states = DeviceStateCache.for_config(with_control)
    app = make_app(with_control, storage, states, auth)
    async with client_for(app, auth.viewer) as http:
        unseen = await get_json(http, "/api/v1/control")
        assert unseen == {"id": "controller", "status": "unknown", "state": None}
        state = {
            "status": "online",
            "dry_run": True,
            "controllers": {"peak_shaving": {"enabled": True, "error": None}},
            "fail_safes_active": ["battery-without-meter"],
        }
        assert states.apply(f"gridpilot/v1/{site_id}/controller/state", json.dumps(state).encode())
        seen = await get_json(http, "/api/v1/control")
        assert seen["status"] == "online"
        assert seen["state"]["dry_run"] is True
        assert seen["state"]["fail_safes_active"] == ["battery-without-meter"]


async def test_history_as_columns_holds_the_same_values(client: httpx.AsyncClient) -> None:
    for query in ("?start=-2h&end=now", "?start=-2h&every=15m&agg=max"):
        rows = await get_json(client, POWER + query)
        columns = await get_json(client, POWER + query + "&format=columns")
        assert {k: v for k, v in rows.items() if k != "values"} == {
            k: v for k, v in columns.items() if k not in ("ts_ms", "value")
        }
        assert [to_rfc3339(ts) for ts in columns["ts_ms"]] == [v["ts"] for v in rows["values"]]
        assert columns["value"] == [v["value"] for v in rows["values"]]
    empty = await get_json(
        client, HISTORY.format(device="weather", point="air_temperature_degc") + "?format=columns"
    )
    assert (empty["ts_ms"], empty["value"]) == ([], [])
    await get_json(client, POWER + "?format=csv", 422)
