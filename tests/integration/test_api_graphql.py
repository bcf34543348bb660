"""GraphQL at /graphql: the same answers as REST, its limits, and live subscriptions.

Queries run against the ASGI app in-process over a real SQLite file (as ``test_api.py``);
subscriptions run against ``ApiService`` (uvicorn on loopback) fed by the real Mosquitto,
spoken to with the ``websockets`` client in the graphql-transport-ws protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from graphql import get_introspection_query
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from gridpilot.api.app import create_app
from gridpilot.api.graphql import MAX_ALIASES, MAX_COST, MAX_DEPTH, MAX_TOKENS
from gridpilot.api.service import ApiService
from gridpilot.api.site_bus import EventBuffer
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.config import GridPilotConfig
from gridpilot.model import Topic, now_ms
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from tests.integration.test_api_support import (
    NOW,
    Auth,
    client_for,
    eventually,
    fill,
    site_config,
    tcp_client,
    unique_site,
)

pytestmark = pytest.mark.integration

PROTOCOLS = [Subprotocol("graphql-transport-ws")]


@pytest.fixture
def site_id() -> str:
    return unique_site("api-gql")


@pytest.fixture
def config(site_id: str, tmp_path: Path) -> GridPilotConfig:
    return site_config(site_id, tmp_path)


@pytest.fixture
async def storage(config: GridPilotConfig, site_id: str, tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(config.storage, tmp_path) as store:
        await fill(store, site_id)
        yield store


@pytest.fixture
def auth(tmp_path: Path) -> Auth:
    return Auth.in_dir(tmp_path)


@pytest.fixture
def states(config: GridPilotConfig, site_id: str) -> DeviceStateCache:
    cache = DeviceStateCache.for_config(config)
    state = {"status": "online", "since": "2026-11-26T12:00:00.000Z", "counters": {"polls": 3}}
    assert cache.apply(str(Topic.state(site_id, "battery")), orjson.dumps(state))
    return cache


@pytest.fixture
def events() -> EventBuffer:
    buffer = EventBuffer()
    buffer.add(
        orjson.dumps(
            {"ts": "2026-11-26T12:00:00Z", "level": "alarm", "source": "peak", "message": "over"}
        ),
        NOW,
    )
    buffer.add(orjson.dumps({"level": "info", "message": "started"}), NOW)
    return buffer


@pytest.fixture
def app(
    config: GridPilotConfig,
    storage: Storage,
    states: DeviceStateCache,
    auth: Auth,
    events: EventBuffer,
) -> Any:
    return create_app(
        config,
        storage,
        states,
        tokens=auth.tokens,
        audit=auth.audit,
        events=events,
        clock=lambda: NOW,
    )


@pytest.fixture
async def http(app: Any, auth: Auth) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, auth.viewer) as client:
        yield client


async def graphql(
    http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def rest(http: httpx.AsyncClient, url: str, status: int = 200) -> Any:
    response = await http.get(url)
    assert response.status_code == status, response.text
    return response.json()


def camel(value: Any) -> Any:
    """REST's JSON with GraphQL's field names (the free-form health/state kept as they are)."""
    if isinstance(value, list):
        return [camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, inner in value.items():
        name = re.sub(r"_([a-z0-9])", lambda m: m[1].upper(), key)
        out[name] = inner if key in ("health", "state") else camel(inner)
    return out


def only_error(body: dict[str, Any]) -> str:
    assert body.get("data") is None, body
    assert len(body["errors"]) == 1, body
    message: str = body["errors"][0]["message"]
    return message


DEVICE_FIELDS = (
    "id name protocol pollIntervalS flow { role powerPoint powerSign socPoint } status health "
    "points { name unit writable validRange }"
)
LATEST_FIELDS = "site now values { device point unit value ts ageS }"
HISTORY_FIELDS = "device point unit start end everyMs agg values { ts value }"


# ---------------------------------------------------------------------------- same as REST


async def test_queries_answer_what_rest_answers(http: httpx.AsyncClient) -> None:
    body = await graphql(
        http,
        f"""{{
            site {{ id name timezone deviceCount gateway {{ id status health }} }}
            devices {{ {DEVICE_FIELDS} }}
            battery: device(id: "battery") {{ {DEVICE_FIELDS} }}
            latest {{ {LATEST_FIELDS} }}
            meterLatest: latest(device: "meter") {{ {LATEST_FIELDS} }}
            events(limit: 10) {{ ts level source message }}
            alarms: events(level: "alarm") {{ ts level source message }}
            me {{ name role tokenId }}
        }}""",
    )
    assert "errors" not in body, body
    data = body["data"]
    assert data["site"] == camel(await rest(http, "/api/v1/site"))
    assert data["devices"] == camel((await rest(http, "/api/v1/devices"))["devices"])
    battery = camel(await rest(http, "/api/v1/devices/battery"))
    assert data["battery"] == battery
    assert battery["health"]["counters"] == {"polls": 3}  # the health really travelled
    assert data["latest"] == camel(await rest(http, "/api/v1/latest"))
    assert data["meterLatest"] == camel(await rest(http, "/api/v1/devices/meter/latest"))
    assert len(data["latest"]["values"]) == 4
    assert data["events"] == (await rest(http, "/api/v1/events?limit=10"))["events"]
    assert data["alarms"] == (await rest(http, "/api/v1/events?level=alarm"))["events"]
    assert [e["message"] for e in data["events"]] == ["started", "over"]
    assert data["me"] == camel(await rest(http, "/api/v1/me"))
    assert data["me"]["role"] == "viewer"


async def test_history_raw_and_aggregated_as_rest(http: httpx.AsyncClient) -> None:
    body = await graphql(
        http,
        f"""query($start: String, $every: String, $agg: String) {{
            raw: history(device: "meter", point: "voltage_l1_v") {{ {HISTORY_FIELDS} }}
            agg: history(device: "meter", point: "active_power_w", start: $start,
                         every: $every, agg: $agg) {{ {HISTORY_FIELDS} }}
        }}""",
        {"start": "-2h", "every": "15m", "agg": "max"},
    )
    assert "errors" not in body, body
    base = "/api/v1/devices/meter/points"
    raw = await rest(http, f"{base}/voltage_l1_v/history")
    assert body["data"]["raw"] == camel(raw)
    assert [v["value"] for v in raw["values"]] == [231.4]
    aggregated = await rest(http, f"{base}/active_power_w/history?start=-2h&every=15m&agg=max")
    assert body["data"]["agg"] == camel(aggregated)
    assert [v["value"] for v in aggregated["values"]] == [899.0 + 900 * i for i in range(8)]


async def test_errors_carry_the_rest_message(http: httpx.AsyncClient) -> None:
    cases = [
        ('{ device(id: "nope") { id } }', "/api/v1/devices/nope"),
        ("{ control { id } }", "/api/v1/control"),
        (
            '{ history(device: "meter", point: "nope") { unit } }',
            "/api/v1/devices/meter/points/nope/history",
        ),
        (  # 18,000 raw rows in the last hour: refused, with the advice to aggregate
            '{ history(device: "meter", point: "energy_import_wh") { unit } }',
            "/api/v1/devices/meter/points/energy_import_wh/history",
        ),
        (
            '{ history(device: "meter", point: "active_power_w", every: "1x") { unit } }',
            "/api/v1/devices/meter/points/active_power_w/history?every=1x",
        ),
    ]
    for query, url in cases:
        response = await http.get(url)
        assert response.status_code in (404, 422), response.text
        assert only_error(await graphql(http, query)) == response.json()["error"]
    message = only_error(await graphql(http, "{ events(limit: 5000) { ts } }"))
    assert message == "limit must be 1 to 1000"
    message = only_error(
        await graphql(
            http,
            '{ history(device: "meter", point: "active_power_w", every: "1m", agg: "avg") '
            "{ unit } }",
        )
    )
    assert message == "agg must be one of mean, min, max, last, sum, count"


async def test_a_failure_is_masked_and_logged(
    config: GridPilotConfig,
    states: DeviceStateCache,
    auth: Auth,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_storage(config.storage, tmp_path) as closed:
        pass  # closed now: every read fails with the database's path in its message
    app = create_app(config, closed, states, tokens=auth.tokens, audit=auth.audit)
    async with client_for(app, auth.viewer) as http:
        with caplog.at_level(logging.ERROR, logger="gridpilot.api"):
            body = await graphql(http, "{ site { id } latest { now } }")
    assert body["data"] is None  # latest is non-null, so its error nulls the whole answer
    assert [e["message"] for e in body["errors"]] == [
        "internal error; the server log has the details"
    ]
    assert str(tmp_path) not in json.dumps(body)
    assert "GraphQL: ['latest'] failed" in caplog.text
    assert "is not open" in caplog.text


async def test_graphql_needs_a_token(app: Any, auth: Auth) -> None:
    query = {"query": "{ me { name } }"}
    async with client_for(app) as anonymous:
        response = await anonymous.post("/graphql", json=query)
        assert response.status_code == 401
        assert "Bearer" in response.json()["error"]
        assert (await anonymous.get("/graphql", params=query)).status_code == 401
    async with client_for(app, "gpt_not-a-token") as stranger:
        assert (await stranger.post("/graphql", json=query)).status_code == 401
    async with client_for(app, auth.admin) as admin:
        response = await admin.get("/graphql", params=query)  # queries may come as GET
        assert response.status_code == 200
        assert response.json() == {"data": {"me": {"name": "test-admin"}}}


async def test_no_graphiql_and_no_route_in_the_openapi_document(http: httpx.AsyncClient) -> None:
    response = await http.get("/graphql", headers={"Accept": "text/html"})
    assert "graphiql" not in response.text.lower()
    paths = (await rest(http, "/api/v1/openapi.json"))["paths"]
    assert "/graphql" not in paths
    assert "/api/v1/stream" in paths


# ---------------------------------------------------------------------------- limits


async def test_a_query_over_the_depth_limit_is_refused(http: httpx.AsyncClient) -> None:
    # The schema has no cycles, so nesting past the limit also selects into scalars; the
    # depth limit is what a future recursive type relies on, and it reports by name.
    nested = "x " + "{ x " * MAX_DEPTH + "}" * MAX_DEPTH
    body = await graphql(http, f"query Deep {{ devices {{ points {{ name {{ {nested} }} }} }} }}")
    assert body["data"] is None
    messages = [e["message"] for e in body["errors"]]
    assert f"'Deep' exceeds maximum operation depth of {MAX_DEPTH}" in messages


async def test_a_query_over_the_cost_limit_is_refused(http: httpx.AsyncClient) -> None:
    # Each history with its values costs 100 + 1 + 10 x 2 = 121: eight fit in 1000, nine not.
    def histories(count: int) -> str:
        one = 'history(device: "meter", point: "voltage_l1_v") { values { ts value } }'
        return "query Charts { " + " ".join(f"h{i}: {one}" for i in range(count)) + " }"

    body = await graphql(http, histories(8))
    assert "errors" not in body, body
    assert all(h["values"][0]["value"] == 231.4 for h in body["data"].values())
    message = only_error(await graphql(http, histories(9)))
    assert message.startswith(f"operation 'Charts' costs 1089, over the limit of {MAX_COST}")


async def test_introspection_works_but_not_nested_deeper(http: httpx.AsyncClient) -> None:
    body = await graphql(http, get_introspection_query(descriptions=True))
    assert "errors" not in body
    types = {t["name"] for t in body["data"]["__schema"]["types"]}
    assert {"Device", "History", "TelemetryFrame"} <= types
    nested = (
        "__schema { types { fields { type { fields { type { fields { type { name } } } } } } } }"
    )
    message = only_error(await graphql(http, f"{{ {nested} }}"))
    assert message == "Maximum introspection depth exceeded"


async def test_too_many_aliases_or_tokens_are_refused(http: httpx.AsyncClient) -> None:
    aliases = " ".join(f"a{i}: site {{ id }}" for i in range(MAX_ALIASES + 1))
    message = only_error(await graphql(http, f"{{ {aliases} }}"))
    assert message == f"{MAX_ALIASES + 1} aliases found. Allowed: {MAX_ALIASES}"

    fields = " ".join(["id"] * MAX_TOKENS)
    message = only_error(await graphql(http, f"{{ site {{ {fields} }} }}"))
    assert f"more than {MAX_TOKENS} tokens" in message


# ---------------------------------------------------------------------------- subscriptions


@pytest.fixture
async def api(site_id: str, tmp_path: Path, mosquitto: BrokerAddress) -> AsyncIterator[ApiService]:
    config = site_config(site_id, tmp_path / "svc", port=0, stream_clients=2)
    (tmp_path / "svc").mkdir()
    async with (
        open_storage(config.storage, tmp_path / "svc") as store,
        ApiService(
            config, mosquitto, store, base_dir=tmp_path / "svc", shutdown_timeout_s=2
        ) as service,
    ):
        yield service


def ws_url(api: ApiService) -> str:
    return api.url.replace("http://", "ws://") + "/graphql"


def token(api: ApiService, role: Role = Role.VIEWER) -> str:
    return api.tokens.create(role, f"test-{role}", created_by="test")[1]


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection, within: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        message: dict[str, Any] = json.loads(await ws.recv())
        return message


async def initialised(ws: ClientConnection, payload: dict[str, Any]) -> dict[str, Any]:
    await send(ws, {"type": "connection_init", "payload": payload})
    ack = await receive(ws)
    assert ack["type"] == "connection_ack", ack
    return ack


TELEMETRY = (
    "subscription($device: String) "
    "{ telemetry(device: $device) { device ts values { point value } dropped } }"
)


async def subscribe(ws: ClientConnection, op_id: str, device: str | None) -> None:
    await send(
        ws,
        {
            "id": op_id,
            "type": "subscribe",
            "payload": {"query": TELEMETRY, "variables": {"device": device}},
        },
    )


@contextlib.asynccontextmanager
async def publisher(broker: BrokerAddress) -> AsyncIterator[BusClient]:
    async with BusClient(broker, f"pub-{uuid.uuid4().hex[:12]}") as bus:
        await bus.wait_connected(10)
        yield bus


async def publish_until(
    bus: BusClient, site_id: str, ws: ClientConnection, op_id: str, *, device: str, value: float
) -> dict[str, Any]:
    """Publish telemetry of ``device`` until the subscription passes it on (the API
    subscribes on the broker when the first stream starts, a moment after ``subscribe``)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ts = now_ms()
        await bus.publish(
            str(Topic.telemetry(site_id, device)), encode_telemetry(ts, {"active_power_w": value})
        )
        with contextlib.suppress(TimeoutError):
            message = await receive(ws, within=0.3)
            assert message["id"] == op_id, message
            assert message["type"] == "next", message
            return message
    raise AssertionError("no telemetry came through the subscription")


async def test_a_subscription_receives_live_telemetry(
    api: ApiService, site_id: str, mosquitto: BrokerAddress
) -> None:
    async with connect(ws_url(api), subprotocols=PROTOCOLS) as ws:
        ack = await initialised(ws, {"authorization": f"Bearer {token(api)}"})
        assert ack["payload"] == {"name": "test-viewer", "role": "viewer"}
        await subscribe(ws, "1", "meter")
        async with publisher(mosquitto) as bus:
            first = await publish_until(bus, site_id, ws, "1", device="meter", value=1520.0)
            frame = first["payload"]["data"]["telemetry"]
            assert frame["device"] == "meter"
            assert frame["values"] == [{"point": "active_power_w", "value": 1520.0}]
            assert frame["dropped"] == 0
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", frame["ts"])

            # Other devices are filtered out; the next meter message comes through in order.
            await bus.publish(
                str(Topic.telemetry(site_id, "battery")),
                encode_telemetry(now_ms(), {"soc_pct": 55.0}),
            )
            await bus.publish(
                str(Topic.telemetry(site_id, "meter")),
                encode_telemetry(now_ms(), {"active_power_w": -300.0, "voltage_l1_v": 230.1}),
            )
            second = (await receive(ws))["payload"]["data"]["telemetry"]
            assert second["device"] == "meter"
            assert second["values"] == [
                {"point": "active_power_w", "value": -300.0},
                {"point": "voltage_l1_v", "value": 230.1},
            ]
        assert api.site_bus is not None
        assert api.site_bus.listener_count == 1

        await send(ws, {"id": "1", "type": "complete"})
        # Unsubscribed: the API no longer follows telemetry.
        await eventually(_listener_count(api), lambda n: n == 0)


def _listener_count(api: ApiService) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        assert api.site_bus is not None
        return api.site_bus.listener_count

    return count


async def test_queries_also_work_over_the_socket(api: ApiService) -> None:
    async with connect(ws_url(api), subprotocols=PROTOCOLS) as ws:
        await initialised(ws, {"token": token(api, Role.OPERATOR)})
        await send(ws, {"id": "q", "type": "subscribe", "payload": {"query": "{ me { role } }"}})
        assert await receive(ws) == {
            "id": "q",
            "type": "next",
            "payload": {"data": {"me": {"role": "operator"}}},
        }
        assert await receive(ws) == {"id": "q", "type": "complete"}


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"token": "gpt_not-a-token"},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer "},
    ],
)
async def test_a_socket_without_a_valid_token_is_closed_4403(
    api: ApiService, payload: dict[str, Any]
) -> None:
    async with connect(ws_url(api), subprotocols=PROTOCOLS) as ws:
        await send(ws, {"type": "connection_init", "payload": payload})
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4403


async def test_a_subscribe_before_connection_init_is_closed_4401(api: ApiService) -> None:
    async with connect(ws_url(api), subprotocols=PROTOCOLS) as ws:
        await subscribe(ws, "1", None)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401


async def test_a_revoked_token_cannot_open_a_socket(api: ApiService) -> None:
    secret = token(api)
    record = next(r for r in api.tokens.records() if secret.startswith(f"gpt_{r.id}"))
    api.tokens.revoke(record.id)
    async with connect(ws_url(api), subprotocols=PROTOCOLS) as ws:
        await send(ws, {"type": "connection_init", "payload": {"token": secret}})
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4403


async def test_a_subscription_ends_when_its_token_is_revoked(
    api: ApiService, site_id: str, mosquitto: BrokerAddress
) -> None:
    api.streams.recheck_s = 0.2
    secret = token(api)
    record = next(r for r in api.tokens.records() if secret.startswith(f"gpt_{r.id}_"))
    async with connect(ws_url(api), subprotocols=PROTOCOLS) as ws:
        await initialised(ws, {"token": secret})
        await subscribe(ws, "1", "meter")
        async with publisher(mosquitto) as bus:
            await publish_until(bus, site_id, ws, "1", device="meter", value=1.0)
            api.tokens.revoke(record.id)
            deadline = time.monotonic() + 10
            message = await receive(ws)
            while message.get("payload", {}).get("data") and time.monotonic() < deadline:
                message = await receive(ws)  # frames that were on their way
        assert message["id"] == "1"
        assert message["type"] == "next", message
        assert [e["message"] for e in message["payload"]["errors"]] == [
            f"the stream ended: token {record.id} was revoked"
        ]
        assert await receive(ws) == {"id": "1", "type": "complete"}
    await eventually(_listener_count(api), lambda n: n == 0)


async def test_subscriptions_beyond_stream_clients_are_refused(
    api: ApiService, site_id: str, mosquitto: BrokerAddress
) -> None:
    # stream_clients = 2: an SSE stream and one subscription fill it; the next is refused.
    async with (
        tcp_client(api.url, token(api)) as http,
        http.stream("GET", "/api/v1/stream") as sse,
        connect(ws_url(api), subprotocols=PROTOCOLS) as ws,
    ):
        assert sse.status_code == 200
        await initialised(ws, {"token": token(api)})
        await subscribe(ws, "1", None)
        async with publisher(mosquitto) as bus:
            await publish_until(bus, site_id, ws, "1", device="meter", value=1.0)
        await subscribe(ws, "2", None)
        refused = await receive(ws)
        while refused["id"] == "1":  # a frame of the first subscription still in flight
            refused = await receive(ws)
        assert refused["id"] == "2"
        assert refused == {
            "id": "2",
            "type": "next",
            "payload": {
                "data": None,
                "errors": [
                    {
                        "message": "too many live streams: 2 are open (api.stream_clients); "
                        "close one, or raise the limit in the site file"
                    }
                ],
            },
        }
        assert await receive(ws) == {"id": "2", "type": "complete"}


async def test_a_page_of_another_origin_cannot_open_a_socket(api: ApiService) -> None:
    # Browsers do not apply CORS to WebSockets; the origin is checked (api.cors_origins).
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            ws_url(api), subprotocols=PROTOCOLS, origin=Origin("http://evil.example")
        ):
            pass
    assert refused.value.response.status_code == 403
    async with connect(
        ws_url(api), subprotocols=PROTOCOLS, origin=Origin(api.url)
    ) as ws:  # the dashboard's own origin
        await initialised(ws, {"token": token(api)})
