"""What the API answers when the gateway or the controller answers wrongly.

A real gateway and controller never send a malformed result, so a test peer on the real
broker plays them: it answers each request with the right id but a broken body. The API
must turn that into a 502 that names who answered badly, audit the failure, and keep
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gridpilot.api.service import ApiService
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config.models import ControlConfig
from gridpilot.model.topics import Topic
from gridpilot.storage import open_storage
from tests.integration.test_api_support import Auth, site_config, tcp_client, unique_site

pytestmark = pytest.mark.integration

Answer = Callable[[dict[str, Any]], bytes]


@contextlib.asynccontextmanager
async def impostor(
    broker: BrokerAddress, request_topic: str, result_topic: str, answer: Answer
) -> AsyncIterator[list[dict[str, Any]]]:
    """Answer every request on ``request_topic`` with ``answer(request)`` on
    ``result_topic``; yields the requests seen."""
    seen: list[dict[str, Any]] = []
    async with BusClient(broker, f"impostor-{uuid.uuid4().hex[:8]}") as bus:
        await bus.wait_connected(10)
        await bus.subscribe(request_topic, qos=1)

        async def serve() -> None:
            async for message in bus.messages():
                request = orjson.loads(message.payload)
                seen.append(request)
                await bus.publish(result_topic, answer(request), qos=1)

        task = asyncio.create_task(serve())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda r: orjson.dumps({"id": r["id"]}), id="no-status"),
        pytest.param(
            lambda r: orjson.dumps({"id": r["id"], "status": "exploded", "point": 7}),
            id="unknown-status",
        ),
        pytest.param(lambda r: orjson.dumps({"id": r["id"], "status": None}), id="null-status"),
    ],
)
async def test_a_malformed_gateway_result_is_a_502_and_audited(
    mosquitto: BrokerAddress, tmp_path: Path, answer: Answer
) -> None:
    site = unique_site("upstream")
    config = site_config(site, tmp_path, port=0, command_timeout=3)
    async with (
        open_storage(config.storage, tmp_path) as storage,
        ApiService(config, mosquitto, storage, base_dir=tmp_path) as api,
        impostor(
            mosquitto,
            str(Topic.command(site, "battery")),
            str(Topic.command_result(site, "battery")),
            answer,
        ) as seen,
    ):
        auth = Auth.of_service(api.tokens, api.audit)
        async with tcp_client(api.url, auth.operator) as operator:
            response = await operator.post(
                "/api/v1/devices/battery/points/active_power_setpoint_w/command",
                json={"value": -500},
            )
            assert response.status_code == 502, response.text
            assert "the gateway's result is malformed" in response.json()["error"]
            assert [r["point"] for r in seen] == ["active_power_setpoint_w"]

            # the failure is in the audit log, and the API still serves
            async with tcp_client(api.url, auth.admin) as admin:
                entries = (await admin.get("/api/v1/audit")).json()["entries"]
            command = next(e for e in entries if e["action"] == "command")
            assert command["ok"] is False
            assert "malformed" in command["result"]["error"]
            assert (await operator.get("/api/v1/me")).status_code == 200


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda r: orjson.dumps({"id": r["id"], "ok": "yes"}), id="ok-not-bool"),
        pytest.param(lambda r: orjson.dumps({"id": r["id"]}), id="no-ok"),
        pytest.param(lambda r: orjson.dumps({"id": r["id"], "ok": None}), id="ok-null"),
    ],
)
async def test_a_malformed_controller_reply_is_a_502_and_audited(
    mosquitto: BrokerAddress, tmp_path: Path, answer: Answer
) -> None:
    site = unique_site("upstream")
    config = site_config(site, tmp_path, port=0, command_timeout=3).model_copy(
        update={"control": ControlConfig()}
    )
    assert config.control is not None
    controller = config.control.id

    async with (
        open_storage(config.storage, tmp_path) as storage,
        ApiService(config, mosquitto, storage, base_dir=tmp_path) as api,
        impostor(
            mosquitto,
            str(Topic.request(site, controller)),
            str(Topic.request_result(site, controller)),
            answer,
        ) as seen,
    ):
        auth = Auth.of_service(api.tokens, api.audit)
        async with tcp_client(api.url, auth.operator) as operator:
            response = await operator.put("/api/v1/control/dry-run", json={"enabled": True})
            assert response.status_code == 502, response.text
            assert "the controller's reply is malformed" in response.json()["error"]
            assert len(seen) == 1
            assert seen[0]["by"].startswith("test-operator (operator")
            assert (await operator.get("/api/v1/me")).status_code == 200
