"""Who may do what through the API: tokens, roles, audit, limits, CORS, headers.

The app runs in-process over a real SQLite file; the command tests at the end run the real
gateway polling the simulated site, the controller, and the API service over a real
Mosquitto, so a setpoint sent through REST is one the battery's registers end up holding.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridpilot.api.app import create_app
from gridpilot.api.service import ApiService
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress
from gridpilot.config import GridPilotConfig, validate_config_text
from gridpilot.control.factory import build_controllers
from gridpilot.control.service import ControllerService
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.control import control_section
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from tests.integration.test_api_support import (
    NOW,
    Auth,
    bearer,
    client_for,
    eventually,
    fill,
    site_config,
    tcp_client,
    unique_site,
)
from tests.integration.test_control_service import WEDNESDAY_NOON, cli, site_file, until

pytestmark = pytest.mark.integration

PATH_VALUES = {
    "device": "meter",
    "point": "active_power_w",
    "name": "peak_shaving",
    "token_id": "deadbeef",
}


@pytest.fixture
def site_id() -> str:
    return unique_site("auth")


@pytest.fixture
async def storage(site_id: str, tmp_path: Path) -> AsyncIterator[Storage]:
    config = site_config(site_id, tmp_path)
    async with open_storage(config.storage, tmp_path) as store:
        await fill(store, site_id)
        yield store


@pytest.fixture
def auth(tmp_path: Path) -> Auth:
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o700)
    return Auth.in_dir(directory)


def app_for(site_id: str, tmp_path: Path, storage: Storage, auth: Auth, **api: Any) -> Any:
    config = site_config(site_id, tmp_path, **api)
    return create_app(
        config,
        storage,
        DeviceStateCache.for_config(config),
        tokens=auth.tokens,
        audit=auth.audit,
        clock=lambda: NOW,
    )


@pytest.fixture
def app(site_id: str, tmp_path: Path, storage: Storage, auth: Auth) -> Any:
    return app_for(site_id, tmp_path, storage, auth)


def routes(app: Any) -> Iterator[tuple[str, str]]:
    """Every (method, concrete path) of the OpenAPI document."""
    for template, operations in app.openapi()["paths"].items():
        path = template.format(**PATH_VALUES)
        for method in operations:
            yield method.upper(), path


async def test_every_route_but_healthz_needs_a_token(app: Any) -> None:
    seen = 0
    async with client_for(app) as anonymous, client_for(app, "gpt_0000_forged") as forged:
        for method, path in routes(app):
            if path == "/healthz":
                assert (await anonymous.request(method, path)).status_code == 200
                continue
            for client in (anonymous, forged):
                response = await client.request(method, path, json={})
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == 'Bearer realm="gridpilot"'
                assert "gridpilot token create" in response.json()["error"]
            seen += 1
        # Not in the OpenAPI document, but behind the token as well.
        assert (await anonymous.get("/api/v1/nothing-here")).status_code == 401
    assert seen >= 15


async def test_a_viewer_reads_but_every_write_is_refused_and_audited(app: Any, auth: Auth) -> None:
    async with client_for(app, auth.viewer) as viewer, client_for(app, auth.operator) as operator:
        assert (await viewer.get("/api/v1/site")).status_code == 200
        me = (await viewer.get("/api/v1/me")).json()
        assert me == {"name": "test-viewer", "role": "viewer", "token_id": me["token_id"]}
        writes = [
            ("POST", "/api/v1/devices/battery/points/active_power_setpoint_w/command",
             {"value": 5000}),
            ("POST", "/api/v1/control/overrides",
             {"point": "battery.active_power_setpoint_w", "value": 1, "duration_s": 60}),
            ("DELETE", "/api/v1/control/overrides/battery.active_power_setpoint_w", None),
            ("PUT", "/api/v1/control/dry-run", {"enabled": True}),
            ("PUT", "/api/v1/control/controllers/peak_shaving", {"enabled": False}),
            ("POST", "/api/v1/tokens", {"name": "x", "role": "admin"}),
        ]  # fmt: skip
        for method, path, body in writes:
            response = await viewer.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert "the role viewer may not do this" in response.json()["error"]
        for path in ("/api/v1/audit", "/api/v1/tokens"):
            assert (await viewer.get(path)).status_code == 403

        entries = (await operator.get("/api/v1/audit")).json()["entries"]
    refused = [e for e in entries if not e["ok"] and e["who"]["role"] == "viewer"]
    assert {e["action"] for e in refused} == {f"{m} {p}" for m, p, _ in writes}
    assert all("may not do this" in e["result"]["error"] for e in refused)


async def test_only_an_admin_manages_tokens_and_the_audit_never_holds_one(
    app: Any, auth: Auth
) -> None:
    async with client_for(app, auth.admin) as admin, client_for(app, auth.operator) as operator:
        assert (
            await operator.post("/api/v1/tokens", json={"name": "x", "role": "viewer"})
        ).status_code == 403
        created = await admin.post(
            "/api/v1/tokens", json={"name": "grafana", "role": "viewer", "expires_in_s": 3600}
        )
        assert created.status_code == 200, created.text
        token = created.json()["token"]
        record = created.json()["record"]
        assert record["role"] == "viewer"
        assert record["expires"] is not None
        async with client_for(app, token) as grafana:
            assert (await grafana.get("/api/v1/latest")).status_code == 200
            listed = (await admin.get("/api/v1/tokens")).json()["tokens"]
            assert "grafana" in {t["name"] for t in listed}
            assert all("secret" not in str(t) for t in listed)
            revoked = await admin.delete(f"/api/v1/tokens/{record['id']}")
            assert revoked.json()["revoked"] is not None
            # revoked: refused at the very next request
            assert (await grafana.get("/api/v1/latest")).status_code == 401
        assert (await admin.delete("/api/v1/tokens/deadbeef")).status_code == 404
        bad = await admin.post("/api/v1/tokens", json={"name": "x", "role": "root"})
        assert bad.status_code == 422
    audit_text = auth.audit.path.read_text()
    assert token not in audit_text
    assert token.split("_", 2)[2] not in audit_text
    assert '"action":"token_create"' in audit_text
    assert '"action":"token_revoke"' in audit_text


async def test_a_token_file_others_can_read_stops_all_access_with_advice(
    app: Any, auth: Auth
) -> None:
    auth.tokens.path.chmod(0o644)
    async with client_for(app, auth.admin) as admin:
        response = await admin.get("/api/v1/site")
    assert response.status_code == 503
    assert "chmod 600" in response.json()["error"]


async def test_rate_limit_per_token_answers_429_with_retry_after(
    site_id: str, tmp_path: Path, storage: Storage, auth: Auth
) -> None:
    app = app_for(site_id, tmp_path, storage, auth, rate_limit_per_minute=6, rate_limit_burst=3)
    async with client_for(app, auth.viewer) as viewer, client_for(app, auth.admin) as other:
        codes = [(await viewer.get("/api/v1/site")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = await viewer.get("/api/v1/site")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "api.rate_limit_per_minute" in limited.json()["error"]
        assert (await other.get("/api/v1/site")).status_code == 200
        assert (await viewer.get("/healthz")).status_code == 200


async def test_request_bodies_over_the_limit_are_refused(
    site_id: str, tmp_path: Path, storage: Storage, auth: Auth
) -> None:
    app = app_for(site_id, tmp_path, storage, auth, max_body_bytes=1024)
    url = "/api/v1/control/overrides"
    big = {"point": "battery.active_power_setpoint_w", "value": 1, "duration_s": 60,
           "reason": "x" * 2000}  # fmt: skip
    async with client_for(app, auth.operator) as operator:
        declared = await operator.post(url, json=big)
        assert declared.status_code == 413
        assert "api.max_body_bytes" in declared.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b" " * 500  # no Content-Length: the limit counts what arrives

        streamed = await operator.post(
            url, content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413


async def test_unknown_body_fields_and_bad_values_are_422(app: Any, auth: Auth) -> None:
    async with client_for(app, auth.operator) as operator:
        url = "/api/v1/control/overrides"
        typo = {"point": "battery.active_power_setpoint_w", "valeu": 1, "duration_s": 60}
        assert (await operator.post(url, json=typo)).status_code == 422
        for value in ("NaN", "Infinity"):
            response = await operator.post(
                url,
                content=f'{{"point": "battery.x_w", "value": {value}, "duration_s": 60}}',
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 422
        forever = {"point": "battery.active_power_setpoint_w", "value": 1, "duration_s": 1e9}
        assert (await operator.post(url, json=forever)).status_code == 422


async def test_commands_without_a_broker_connection_are_503(app: Any, auth: Auth) -> None:
    async with client_for(app, auth.operator) as operator:
        response = await operator.post(
            "/api/v1/devices/battery/points/active_power_setpoint_w/command", json={"value": 1}
        )
        assert response.status_code == 503
        # Read-only points and unknown points are refused before anything is sent.
        response = await operator.post(
            "/api/v1/devices/meter/points/active_power_w/command", json={"value": 1}
        )
        assert response.status_code == 422
        assert "not writable" in response.json()["error"]
        response = await operator.post(
            "/api/v1/devices/meter/points/nothing_w/command", json={"value": 1}
        )
        assert response.status_code == 404


async def test_cors_is_closed_unless_origins_are_configured(
    site_id: str, tmp_path: Path, storage: Storage, auth: Auth
) -> None:
    preflight = {
        "Origin": "https://grafana.plant.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    closed = app_for(site_id, tmp_path, storage, auth)
    async with client_for(closed) as client:
        response = await client.options("/api/v1/site", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        response = await client.get("/api/v1/site", headers={**preflight, **bearer(auth.viewer)})
        assert "access-control-allow-origin" not in response.headers
    opened = app_for(
        site_id, tmp_path, storage, auth, cors_origins=["https://grafana.plant.example"]
    )
    async with client_for(opened) as client:
        response = await client.options("/api/v1/site", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://grafana.plant.example"
        other = await client.options(
            "/api/v1/site", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_cors_origins_must_be_origins() -> None:
    for wrong in ("*", "grafana.example", "https://x.example/path"):
        with pytest.raises(ValueError, match="origin"):
            GridPilotConfig.model_validate({"site": {"id": "x"}, "api": {"cors_origins": [wrong]}})


async def test_security_headers_on_data_and_errors(app: Any, auth: Auth) -> None:
    async with client_for(app, auth.viewer) as viewer, client_for(app) as anonymous:
        for response in (await viewer.get("/api/v1/site"), await anonymous.get("/api/v1/site")):
            headers = response.headers
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["cache-control"] == "no-store"
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "strict-transport-security" not in headers  # plain HTTP on loopback


# ---------------------------------------------------------------------------- real services


@pytest.fixture
async def plant(
    mosquitto: BrokerAddress, tmp_path: Path
) -> AsyncIterator[tuple[SimulatedSite, GridPilotConfig, ApiService]]:
    """The simulated site, its gateway, a controller with no controllers of its own (only
    operator requests drive it), and the API service, all over the session's Mosquitto."""
    site_id = f"auth-{uuid.uuid4().hex[:10]}"
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as site:
        path = site_file(site, site_id, mosquitto, tmp_path)
        config = validate_config_text(path.read_text())
        async with (
            open_storage(config.storage, tmp_path) as storage,
            GatewayService(config, mosquitto),
            ApiService(config, mosquitto, storage, base_dir=tmp_path, port=0) as api,
        ):
            yield site, config, api


async def test_an_operator_command_reaches_the_battery_and_is_audited(
    plant: tuple[SimulatedSite, GridPilotConfig, ApiService],
) -> None:
    site, _, api = plant
    tokens = Auth.of_service(api.tokens, api.audit)
    url = "/api/v1/devices/battery/points/active_power_setpoint_w/command"
    async with tcp_client(api.url, tokens.operator) as operator:
        response = await operator.post(url, json={"value": -12000, "reason": "load test"})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["status"] == "applied"
        assert result["readback"] == -12000
        assert site.building.state.battery.setpoint_w == -12000

        # out of the point's valid range: the gateway rejects it, the API says why
        response = await operator.post(url, json={"value": 1e9})
        assert response.status_code == 422
        assert "gateway rejected" in response.json()["error"]

        entries = (await operator.get("/api/v1/audit")).json()["entries"]
    applied, rejected = entries[1], entries[0]
    assert applied["action"] == "command"
    assert applied["target"] == "battery.active_power_setpoint_w"
    assert applied["who"]["name"] == "test-operator"
    assert applied["params"]["value"] == -12000
    assert applied["params"]["reason"] == "load test"
    assert applied["ok"] is True
    assert applied["result"]["status"] == "applied"
    assert rejected["ok"] is False


async def test_overrides_go_through_the_controller_and_direct_commands_are_refused(
    plant: tuple[SimulatedSite, GridPilotConfig, ApiService],
    mosquitto: BrokerAddress,
    tmp_path: Path,
) -> None:
    site, config, api = plant
    tokens = Auth.of_service(api.tokens, api.audit)
    async with (
        ControllerService(config, mosquitto, [], base_dir=tmp_path),
        tcp_client(api.url, tokens.operator) as operator,
    ):
        body = {"point": "battery.active_power_setpoint_w", "value": 8000, "duration_s": 600}
        response = await operator.post("/api/v1/control/overrides", json=body)
        assert response.status_code == 200, response.text
        assert "held at 8000" in response.json()["message"]
        await until(lambda: site.building.state.battery.setpoint_w == 8000)

        # ... and it is an event of the site, naming who did it
        async def events() -> Any:
            return (await operator.get("/api/v1/events")).json()["events"]

        found = await eventually(events, lambda es: any("held at 8000" in e["message"] for e in es))
        held = next(e for e in found if "held at 8000" in e["message"])
        assert held["source"] == "controller/request"
        assert "test-operator" in held["message"]

        # the controller now drives the point: a direct command would be undone next cycle
        async def control() -> Any:
            return (await operator.get("/api/v1/control")).json()

        await eventually(
            control,
            lambda c: "battery.active_power_setpoint_w" in (c["state"] or {}).get("targets", {}),
        )
        response = await operator.post(
            "/api/v1/devices/battery/points/active_power_setpoint_w/command", json={"value": 1}
        )
        assert response.status_code == 409
        assert "/api/v1/control/overrides" in response.json()["error"]

        # the controller's own refusals come back as 422 with its reason
        too_big = {**body, "value": 90_000}
        response = await operator.post("/api/v1/control/overrides", json=too_big)
        assert response.status_code == 422
        assert "valid range" in response.json()["error"]

        released = await operator.delete(
            "/api/v1/control/overrides/battery.active_power_setpoint_w"
        )
        assert released.status_code == 200, released.text
        await until(lambda: site.building.state.battery.setpoint_w == 0)


async def test_a_controller_that_is_not_running_is_a_504_that_says_so(
    plant: tuple[SimulatedSite, GridPilotConfig, ApiService],
) -> None:
    _, config, api = plant
    tokens = Auth.of_service(api.tokens, api.audit)
    async with tcp_client(api.url, tokens.operator) as operator:
        response = await operator.put("/api/v1/control/dry-run", json={"enabled": True})
    assert response.status_code == 504
    assert "gridpilot run controller" in response.json()["error"]
    assert config.api.command_timeout.total_seconds() == 5


def test_roles_cover_viewer_operator_admin() -> None:
    assert [r.value for r in Role] == ["viewer", "operator", "admin"]


async def test_the_audit_log_pages_newest_first_without_gaps(app: Any, auth: Auth) -> None:
    async with client_for(app, auth.admin) as admin:
        for i in range(7):  # quick succession: several entries share a millisecond
            created = await admin.post("/api/v1/tokens", json={"name": f"t{i}", "role": "viewer"})
            assert created.status_code == 200
        names: list[str] = []
        before: int | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3} | ({} if before is None else {"before": before})
            page = (await admin.get("/api/v1/audit", params=params)).json()
            names += [e["target"] for e in page["entries"]]
            pages += 1
            before = page["next_before"]
            if before is None:
                break
    assert names == [f"t{i}" for i in reversed(range(7))]
    assert pages == 3


async def test_an_operator_changes_the_peak_shaving_limit_while_it_runs(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site_id = f"params-{uuid.uuid4().hex[:10]}"
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as site:
        doc = {
            "site": {"id": site_id},
            "broker": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}"},
            "control": control_section(limit_w=110_000.0, cycle_s=0.2, hvac=False),
            "devices": site.site_config(site_id),
        }
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(doc))
        config = validate_config_text(path.read_text())
        async with (
            open_storage(config.storage, tmp_path) as storage,
            GatewayService(config, mosquitto),
            ControllerService(config, mosquitto, build_controllers(config), base_dir=tmp_path),
            ApiService(config, mosquitto, storage, base_dir=tmp_path, port=0) as api,
        ):
            tokens = Auth.of_service(api.tokens, api.audit)
            url = "/api/v1/control/controllers/peak_shaving/params"
            async with (
                tcp_client(api.url, tokens.operator) as operator,
                tcp_client(api.url, tokens.viewer) as viewer,
            ):

                async def limit() -> Any:
                    state = (await operator.get("/api/v1/control")).json()["state"] or {}
                    ps = state.get("controllers", {}).get("peak_shaving") or {}
                    return (ps.get("params") or {}).get("limit_w")

                assert await eventually(limit, lambda v: v is not None) == 110_000.0
                changed = await operator.put(url, json={"params": {"limit_w": 95_000}})
                assert changed.status_code == 200, changed.text
                assert "limit_w=95000" in changed.json()["message"]
                await eventually(limit, lambda v: v == 95_000)

                wrong = await operator.put(url, json={"params": {"limit_w": "lots"}})
                assert wrong.status_code == 422
                assert "control.peak_shaving.limit_w" in wrong.json()["error"]
                unknown = await operator.put(url, json={"params": {"limit_kw": 95}})
                assert unknown.status_code == 422
                assert "no parameter 'limit_kw'" in unknown.json()["error"]
                nobody = await operator.put(
                    "/api/v1/control/controllers/nobody/params", json={"params": {"x": 1}}
                )
                assert nobody.status_code == 404
                assert (await viewer.put(url, json={"params": {"limit_w": 1}})).status_code == 403
                entries = (await operator.get("/api/v1/audit")).json()["entries"]

                # the same from the shell
                code, out, err = await cli(path, "set", "peak_shaving", "limit_w=90000")
                assert code == 0, err
                assert "limit_w=90000" in out
                await eventually(limit, lambda v: v == 90_000)
                code, _, err = await cli(path, "set", "peak_shaving", "limit_w")
                assert code != 0
                assert "is not FIELD=VALUE" in err
    ok = [e for e in entries if e["action"] == "set_params" and e["ok"]]
    assert ok[0]["params"]["params"] == {"limit_w": 95_000}
