"""``gridpilot ieee2030-5 status`` and ``GET /api/v1/ieee2030_5`` (+ GraphQL) over a real
Mosquitto: the 2030.5 client's retained status as the test publishes it, and the message
each gives when no client has published (none configured, none running)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gridpilot.api.service import ApiService
from gridpilot.api.tokens import Role
from gridpilot.bus.client import BrokerAddress
from gridpilot.model import Topic
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from tests.integration.test_api_support import (
    NOW,
    eventually,
    publish_retained,
    site_config,
    tcp_client,
    unique_site,
)

pytestmark = pytest.mark.integration

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
STATUS: dict[str, Any] = {
    "ts": "2026-11-27T10:00:00.000Z",
    "server": "https://127.0.0.1:8443",
    "lfdi": LFDI,
    "sfdi": 167261211391,
    "registered": True,
    "pin_ok": True,
    "end_device": "/edev/3",
    "clock_offset_s": 1200.25,
    "poll_rate_s": 60,
    "post_rate_s": 300,
    "programs": [
        {"href": "/derp/1", "description": "Export limits", "primacy": 1},
        {"href": "/derp/2", "description": "Volt-var", "primacy": 2},
    ],
    "events": [
        {
            "mrid": "5A7E0C1D2B3F40A1", "program": "/derp/1", "primacy": 1,
            "description": "Feeder 12 export limit", "creation_time": "2026-11-27T09:00:00.000Z",
            "start": "2026-11-27T09:55:00.000Z", "duration": 3600,
            "effective_start": "2026-11-27T09:55:00.000Z",
            "effective_end": "2026-11-27T10:55:00.000Z", "status": "active", "reason": None,
            "modes": {"opModExpLimW": {"value": 5000.0, "unit": "W"}},
        },
        {
            "mrid": "6B8F1D2E3C4051B2", "program": "/derp/1", "primacy": 1,
            "description": "Evening limit", "creation_time": "2026-11-27T09:01:00.000Z",
            "start": "2026-11-27T17:00:00.000Z", "duration": 7200,
            "effective_start": "2026-11-27T17:02:13.000Z",
            "effective_end": "2026-11-27T19:02:13.000Z", "status": "scheduled", "reason": None,
            "modes": {"opModExpLimW": {"value": 0.0, "unit": "W"}},
        },
        {
            "mrid": "7C901E3F4D5162C3", "program": "/derp/1", "primacy": 1,
            "description": "Morning", "creation_time": "2026-11-26T09:00:00.000Z",
            "start": "2026-11-27T07:00:00.000Z", "duration": 600,
            "effective_start": "2026-11-27T07:00:00.000Z",
            "effective_end": "2026-11-27T07:10:00.000Z", "status": "completed", "reason": None,
            "modes": {"opModConnect": {"value": False}},
        },
    ],
    "default_control": {"opModExpLimW": {"value": 10000.0, "unit": "W"}},
    "responses": [
        {"mrid": "5A7E0C1D2B3F40A1", "status": 1, "status_name": "received",
         "at": "2026-11-27T09:50:00.000Z", "http_status": 201},
        {"mrid": "5A7E0C1D2B3F40A1", "status": 2, "status_name": "started",
         "at": "2026-11-27T09:55:00.000Z", "http_status": 201},
    ],
    "mirrors": [
        {"mup": "/mup/1", "at": "2026-11-27T09:55:00.000Z", "readings": 3, "http_status": 201},
    ],
    "last_error": None,
}  # fmt: skip


def write_site(tmp_path: Path, site_id: str, broker: BrokerAddress, *, client: bool) -> Path:
    doc: dict[str, Any] = {
        "site": {"id": site_id},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
    }
    if client:
        for name in ("client.pem", "client.key", "ca.pem"):
            (tmp_path / name).write_text("not read by the status command\n")
        (tmp_path / "client.key").chmod(0o600)
        doc["ieee2030_5"] = {
            "server": "https://127.0.0.1:8443",
            "cert_file": "client.pem",
            "key_file": "client.key",
            "ca_file": "ca.pem",
        }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# ------------------------------------------------------------------------------- CLI


async def test_cli_shows_the_retained_status(mosquitto: BrokerAddress, tmp_path: Path) -> None:
    site_id = unique_site("csip")
    path = write_site(tmp_path, site_id, mosquitto, client=True)
    await publish_retained(mosquitto, str(Topic.ieee2030_5_status(site_id)), orjson.dumps(STATUS))
    try:
        code, out, err = await run_cli("ieee2030-5", "status", str(path))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith(
            f"IEEE 2030.5 client of site {site_id}: status of 2026-11-27T10:00:00.000Z ("
        )
        assert f"  LFDI:            {LFDI}" in lines
        assert "  SFDI:            167261211391" in lines
        assert "  registered:      yes (EndDevice /edev/3), PIN ok" in lines
        assert "  server clock:    +1200.2 s from ours" in lines
        assert "  poll / post:     every 60 s / 300 s" in lines
        assert "    /derp/1 'Export limits' primacy 1" in lines
        active = lines.index("  active events:   1")
        assert lines[active + 1] == (
            "    5A7E0C1D2B3F40A1 'Feeder 12 export limit' (/derp/1, primacy 1) "
            "2026-11-27T09:55:00.000Z .. 2026-11-27T10:55:00.000Z: opModExpLimW 5000 W"
        )
        scheduled = lines.index("  scheduled events:1")
        assert lines[scheduled + 1].startswith("    6B8F1D2E3C4051B2 'Evening limit'")
        assert "7C901E3F4D5162C3" not in out  # ended: in --json only
        assert "  default control: opModExpLimW 10000 W" in lines
        assert "  responses:       2 recorded, newest last:" in lines
        assert "    2026-11-27T09:55:00.000Z 5A7E0C1D2B3F40A1 started (2) HTTP 201" in lines
        assert "    2026-11-27T09:55:00.000Z /mup/1 3 reading(s) HTTP 201" in lines
        assert "  last error:      none" in lines

        code, out, err = await run_cli("ieee2030-5", "status", "--config", str(path), "--json")
        assert code == 0, err
        view = json.loads(out)
        assert view["published"] is True
        assert (view["lfdi"], view["sfdi"], view["registered"]) == (LFDI, 167261211391, True)
        assert [e["mrid"] for e in view["active_events"]] == ["5A7E0C1D2B3F40A1"]
        assert [e["mrid"] for e in view["scheduled_events"]] == ["6B8F1D2E3C4051B2"]
        assert [e["mrid"] for e in view["ended_events"]] == ["7C901E3F4D5162C3"]
        assert view["responses"] == STATUS["responses"]
        assert view["mirrors"] == STATUS["mirrors"]
        assert isinstance(view["age_s"], float)  # now - ts, by this machine's clock
    finally:
        await publish_retained(mosquitto, str(Topic.ieee2030_5_status(site_id)), b"")


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (True, "the client is not running or has not reached the broker yet"),
        (False, "has no 'ieee2030_5' section, so no IEEE 2030.5 client runs for it"),
    ],
)
async def test_cli_says_why_there_is_no_status(
    mosquitto: BrokerAddress, tmp_path: Path, client: bool, expected: str
) -> None:
    site_id = unique_site("csip")
    path = write_site(tmp_path, site_id, mosquitto, client=client)
    code, out, _ = await run_cli("ieee2030-5", "status", str(path))
    assert code == 1
    assert expected in out
    assert f"gridpilot/v1/{site_id}/ieee2030_5/status" in out
    code, out, _ = await run_cli("ieee2030-5", "status", str(path), "--json")
    assert code == 1
    assert json.loads(out)["published"] is False


# ------------------------------------------------------------------------------- API


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    config = site_config(unique_site("csip"), tmp_path)
    async with open_storage(config.storage, tmp_path) as store:
        yield store


async def test_api_and_graphql_show_the_retained_status(
    mosquitto: BrokerAddress, tmp_path: Path, storage: Storage, free_port: int
) -> None:
    site_id = unique_site("csip")
    config = site_config(site_id, tmp_path, port=free_port)
    topic = str(Topic.ieee2030_5_status(site_id))
    async with ApiService(config, mosquitto, storage, base_dir=tmp_path, clock=lambda: NOW) as api:
        token = api.tokens.create(Role.VIEWER, "test-viewer", created_by="test")[1]
        async with tcp_client(api.url, token) as http:
            # nothing published: the reason, not an error
            body = (await http.get("/api/v1/ieee2030_5")).json()
            assert body["published"] is False
            assert body["status"] is None
            assert "has no 'ieee2030_5' section" in body["message"]

            await publish_retained(mosquitto, topic, orjson.dumps(STATUS))
            try:

                async def probe() -> Any:
                    return (await http.get("/api/v1/ieee2030_5")).json()

                body = await eventually(probe, lambda b: b["published"])
                status = body["status"]
                assert body["message"] is None
                assert (status["lfdi"], status["sfdi"]) == (LFDI, 167261211391)
                assert status["registered"] is True
                assert status["pin_ok"] is True
                assert [e["mrid"] for e in status["active_events"]] == ["5A7E0C1D2B3F40A1"]
                assert [e["mrid"] for e in status["scheduled_events"]] == ["6B8F1D2E3C4051B2"]
                assert status["responses"][-1]["status_name"] == "started"
                assert status["mirrors"][0]["mup"] == "/mup/1"

                query = "{ ieee2030_5 { published message status } }"
                graphql = (await http.post("/graphql", json={"query": query})).json()
                assert "errors" not in graphql, graphql
                got = graphql["data"]["ieee2030_5"]
                assert got["published"] is True
                assert got["status"]["lfdi"] == LFDI
                assert got["status"]["active_events"][0]["modes"] == {
                    "opModExpLimW": {"value": 5000.0, "unit": "W"}
                }

                # something that is not a status on the topic: said so, not passed on
                await publish_retained(mosquitto, topic, b"\xff not json")
                body = await eventually(probe, lambda b: not b["published"])
                assert "is not a 2030.5 status: status is not JSON" in body["message"]
            finally:
                await publish_retained(mosquitto, topic, b"")
            # cleared (the client's section removed and its message with it)
            body = await eventually(probe, lambda b: not b["published"])
            assert body["status"] is None
