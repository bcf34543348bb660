"""`gridpilot demo` as README command 1 runs it: no broker or database installed, a taken
MQTT port replaced by a free one, live telemetry from every simulated device visible to a
plain `mosquitto_sub`, the API answering, and `gridpilot query` showing the stored points
afterwards; and the utility's export-limit event (IEEE 2030.5) run end to end by the demo."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gridpilot.config import load_config
from gridpilot.model import SeriesKey
from gridpilot.model.time import parse_timestamp_ms
from gridpilot.sim.devices import DEVICE_MAPS
from gridpilot.storage import open_storage

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


SUNNY_SATURDAY = "2026-07-04T10:30"  # ~80 kW of PV against ~45 kW of load
EXPORT_LIMIT_W = 10_000.0
EVENT_IN_S = 20
EVENT_DURATION_S = 45
SETTLE_S = 10.0
"""After the event starts: the client acts on it within its server-clock uncertainty (1 s),
the controller within a cycle (1 s) of the message, and the inverter within a poll (1 s)."""


async def _get_json(client: httpx.AsyncClient, path: str, token: str) -> Any:
    answer = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, (path, answer.text)
    return answer.json()


async def test_demo_utility_export_limit_event(tmp_path: Path) -> None:
    """`gridpilot demo` runs the utility path with nothing else installed: the in-process
    IEEE 2030.5 test server, the site's client (registered with the PIN), the event's
    responses, the timeline, the status API, and the building's export held under the
    utility's limit while the event is active; SIGTERM stops it cleanly."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "demo",
        "--data-dir", str(tmp_path), "--mqtt-port", "0", "--http-port", "0",
        "--sim-start", SUNNY_SATURDAY,
        "--utility-event-in", str(EVENT_IN_S),
        "--utility-event-duration", str(EVENT_DURATION_S),
        "--utility-export-limit-w", str(EXPORT_LIMIT_W),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        banner = ""
        async with asyncio.timeout(30):
            while "Stop with Ctrl-C" not in banner:
                line = await process.stdout.readline()
                assert line, f"demo exited early: {banner}"
                banner += line.decode()
        api = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+)/", banner)
        token_match = re.search(r"sign in with\s+(gpt_\S+)", banner)
        event_match = re.search(r"utility event export limit 10 kW .* event ([0-9A-F]{8})", banner)
        assert api is not None, banner
        assert token_match is not None, banner
        assert event_match is not None, banner
        token, short_mrid = token_match.group(1), event_match.group(1)
        assert "utility       IEEE 2030.5 test server https://127.0.0.1:" in banner
        assert re.search(r"the building exports \d+ kW", banner), banner

        async with httpx.AsyncClient(base_url=api.group(1), timeout=5) as client:
            # --- the 2030.5 client registers and sees the event (status API, topic 2)
            async with asyncio.timeout(EVENT_IN_S + 20):
                while True:
                    view = await _get_json(client, "/api/v1/ieee2030_5", token)
                    status = view["status"] or {}
                    if view["published"] and status.get("active_events"):
                        break
                    await asyncio.sleep(0.5)
            assert status["registered"] is True, status
            assert status["pin_ok"] is True, status
            assert status["last_error"] is None, status
            (active,) = status["active_events"]
            assert active["mrid"].startswith(short_mrid)
            assert active["modes"] == {"opModExpLimW": {"value": EXPORT_LIMIT_W, "unit": "W"}}
            assert status["default_control"] == {"opModConnect": {"value": True}}
            posted = {(r["mrid"], r["status_name"], r["http_status"]) for r in status["responses"]}
            mrid = active["mrid"]
            assert (mrid, "received", 201) in posted, status["responses"]
            assert (mrid, "started", 201) in posted, status["responses"]
            # the CLI reads the same retained status from the demo's broker
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gridpilot", "ieee2030-5", "status", "--json",
                "--config", str(tmp_path / "site.yaml"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            cli_out, cli_err = await asyncio.wait_for(cli.communicate(), timeout=30)
            assert cli.returncode == 0, cli_err.decode()
            shown = json.loads(cli_out)
            assert shown["registered"] is True
            assert [e["mrid"] for e in shown["active_events"]] == [mrid]
            start_ms = parse_timestamp_ms(active["effective_start"])
            end_ms = parse_timestamp_ms(active["effective_end"])
            assert end_ms - start_ms == EVENT_DURATION_S * 1000

            # --- after the event: the timeline (events API) tells it, named
            async with asyncio.timeout(EVENT_DURATION_S + 30):
                while True:
                    events = (await _get_json(client, "/api/v1/events?limit=500", token))["events"]
                    told = [e["message"] for e in events if short_mrid in e["message"]]
                    if any("completed" in m and "Response" not in m for m in told):
                        break
                    await asyncio.sleep(1.0)
            ends = (await _get_json(client, "/api/v1/ieee2030_5", token))["status"]
    finally:
        # SIGTERM, as systemd or a terminal's kill stops it
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=40)
    assert process.returncode == 0, stderr.decode()

    label = f"utility event {short_mrid} 'export limit 10 kW'"
    for wanted in (
        f"IEEE 2030.5: {label} received: opModExpLimW 10000 W",
        f"IEEE 2030.5: {label} started: opModExpLimW 10000 W",
        f"IEEE 2030.5: {label} completed",
        f"IEEE 2030.5: Response 'received' (1) for {label} posted: HTTP 201",
        f"IEEE 2030.5: Response 'started' (2) for {label} posted: HTTP 201",
        f"IEEE 2030.5: Response 'completed' (3) for {label} posted: HTTP 201",
    ):
        assert any(m.startswith(wanted) for m in told), (wanted, told)
    # the grid-operator controller names the event it enforces
    assert any(
        e["source"] == "controller/grid_operator"
        and f"opModExpLimW 10000 W (event {short_mrid}" in e["message"]
        for e in events
    ), events
    assert any(e["message"].startswith("IEEE 2030.5: registered with") for e in events)
    assert [e["status"] for e in ends["ended_events"]] == ["completed"]

    # --- the utility's own record (the demo prints it when it stops)
    out = stdout.decode()
    assert "Utility server: the site registered" in out, out
    assert (
        f"responses to event {short_mrid}: EVENT_RECEIVED (1), EVENT_STARTED (2), "
        "EVENT_COMPLETED (3)" in out
    ), out
    mirrors = re.search(r"mirror posts: (\d+) \((\d+) readings\)", out)
    assert mirrors is not None, out
    assert int(mirrors.group(1)) >= 2, out

    # --- the building's export, as the gateway read the grid meter and ingest stored it
    cfg = load_config(tmp_path / "site.yaml")
    meter = SeriesKey("demo", "grid_meter", "active_power_w")
    async with open_storage(cfg.storage, tmp_path) as storage:
        before = await storage.history(meter, start_ms - 15_000, start_ms)
        during = await storage.history(meter, start_ms + int(SETTLE_S * 1000), end_ms)
        pv_limit = await storage.history(
            SeriesKey("demo", "pv_inverter", "power_limit_pct"), start_ms, end_ms
        )
    assert len(before) >= 10, before
    assert len(during) >= 25, during
    exports_before = [-p.value for p in before]
    exports_during = [-p.value for p in during]
    # the building exported well over the limit before, and visibly less while it was active
    assert min(exports_before) > EXPORT_LIMIT_W + 10_000.0, exports_before
    assert max(exports_during) <= EXPORT_LIMIT_W, exports_during
    assert sum(exports_during) / len(exports_during) < EXPORT_LIMIT_W - 1_000.0
    # the battery starts full, so the inverter was curtailed to hold it
    assert min(p.value for p in pv_limit) < 90.0


async def test_demo_lighter_site_polls_and_cycles_slower(tmp_path: Path) -> None:
    """``--poll-every 10 --cycle 5 --mqtt-keepalive 120``: every device is polled at most
    every 10 s (with a 5 s timeout), the engine cycles every 5 s, the clients keep alive
    every 120 s, and the controllers' age limits allow for readings that old -- so nothing
    falls into its fail-safe -- and it still stores data."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "demo", "--duration", "14", "--no-utility",
        "--data-dir", str(tmp_path), "--mqtt-port", "0", "--http-port", "0",
        "--poll-every", "10", "--cycle", "5", "--mqtt-keepalive", "120",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    config = load_config(tmp_path / "site.yaml")
    assert config.control is not None
    assert config.control.cycle.total_seconds() == 5.0
    assert config.broker.keepalive.total_seconds() == 120.0
    assert {d.poll_interval.total_seconds() for d in config.devices} == {10.0}
    assert {d.timeout.total_seconds() for d in config.devices} == {5.0}
    fail_safe = config.control.fail_safes[0]
    assert fail_safe.max_age.total_seconds() >= 3 * 10.0
    async with open_storage(config.storage, tmp_path) as storage:
        latest = await storage.latest("demo")
    assert {v.series.device for v in latest} >= set(DEVICE_IDS)
    events = [
        json.loads(line) for line in (tmp_path / config.control.journal).read_text().splitlines()
    ]
    # No fail-safe entered: no reading was older than its limit allows.
    entered = [e for e in events if "fail-safe" in e["message"] and "entered" in e["message"]]
    assert entered == [], entered


@pytest.mark.parametrize(
    ("option", "value"),
    [("--poll-every", "0"), ("--cycle", "120"), ("--mqtt-keepalive", "1"), ("--poll-every", "x")],
)
async def test_demo_refuses_an_option_out_of_range_and_names_it(
    tmp_path: Path, option: str, value: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "demo", "--duration", "5", "--data-dir",
        str(tmp_path), option, value,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert option in err.decode()
    assert not (tmp_path / "site.yaml").exists()  # refused before anything ran
