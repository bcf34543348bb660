"""`gridpilot demo` as README command 1 runs it: no broker or database installed, a taken
MQTT port replaced by a free one, live telemetry from every simulated device visible to a
plain `mosquitto_sub`, the API answering, and `gridpilot query` showing the stored points
afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from pathlib import Path

import httpx
import pytest

from gridpilot.sim.devices import DEVICE_MAPS

DEVICE_IDS = [m.id for m in DEVICE_MAPS]

pytestmark = pytest.mark.integration


async def test_demo_end_to_end(tmp_path: Path) -> None:
    # Hold a port so the demo must fall back, as it must where Mosquitto owns 1883.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        taken_port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridpilot", "demo", "--duration", "12",
            "--data-dir", str(tmp_path), "--mqtt-port", str(taken_port), "--http-port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        banner = ""
        async with asyncio.timeout(30):
            while "Stopping after" not in banner:
                line = await process.stdout.readline()
                assert line, f"demo exited early: {banner}"
                banner += line.decode()
        mqtt = re.search(r"MQTT broker\s+mqtt://127\.0\.0\.1:(\d+)", banner)
        api = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+)/", banner)
        token = re.search(r"sign in with\s+(gpt_\S+)", banner)
        assert mqtt is not None, banner
        assert api is not None, banner
        assert token is not None, banner
        port = int(mqtt.group(1))
        assert port != taken_port

        sub = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "gridpilot/#", "-v",
            "-W", "6", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        output, _ = await sub.communicate()
        async with httpx.AsyncClient(base_url=api.group(1), timeout=5) as client:
            health = (await client.get("/healthz")).json()
            anonymous = await client.get("/api/v1/devices")
            signed_in = {"Authorization": f"Bearer {token.group(1)}"}
            devices = (await client.get("/api/v1/devices", headers=signed_in)).json()["devices"]
            me = (await client.get("/api/v1/me", headers=signed_in)).json()
            page = await client.get("/")
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=40)

    assert process.returncode == 0, stderr.decode()
    assert "Stored " in stdout.decode()
    telemetry_from = {
        line.split(" ", 1)[0].split("/")[3]
        for line in output.decode().splitlines()
        if line.split(" ", 1)[0].endswith("/telemetry")
    }
    # every simulated device, and the control engine's own figures
    assert telemetry_from == {*DEVICE_IDS, "controller"}
    assert health == {"status": "ok"}
    assert anonymous.status_code == 401
    assert me["role"] == "admin"
    assert {d["id"] for d in devices} == set(DEVICE_IDS)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]

    query = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "query", "--json",
        "--config", str(tmp_path / "site.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await query.communicate()
    assert query.returncode == 0, err.decode()
    stored = json.loads(out)
    assert {row["device"] for row in stored} == {*DEVICE_IDS, "controller"}
