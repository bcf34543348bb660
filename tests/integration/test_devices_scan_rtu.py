"""``gridpilot devices scan`` over a serial line (a pseudo-terminal pair) and through an
RTU-over-TCP converter: the simulated building and its SunSpec inverter, meter and storage
answer as RTU units on one line (real bytes, real CRCs); the scan (a subprocess) finds
several unit ids on the one port, tells SunSpec devices from plain Modbus ones and from
silence, decodes the SunSpec models, and prints a snippet that ``gridpilot config check``
accepts and the gateway polls."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.codec import Command, encode_command
from gridpilot.config import GridPilotConfig, load_config
from gridpilot.gateway.service import GatewayService
from gridpilot.model import now_ms
from gridpilot.sim.site import SimulatedSite
from tests.integration.test_gateway_support import observing
from tests.integration.test_modbus_rtu_support import Line

pytestmark = pytest.mark.integration

NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def line() -> AsyncIterator[Line]:
    relay = Line()
    relay.start()
    await relay.serve_tcp()  # the same line, also behind a "serial-to-Ethernet converter"
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
async def site(line: Line) -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(
        speed=1.0, start=NOON, tick_s=0.05, sunspec=True, rtu_port=line.device_port
    ) as running:
        yield running


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def units_to_scan(site: SimulatedSite) -> tuple[dict[str, int], int]:
    """Two building devices, the three SunSpec devices, and a unit id nobody has."""
    picked = ("grid_meter", "battery", "sunspec_inverter", "sunspec_meter", "sunspec_storage")
    units = {d: site.rtu_unit_of(d) for d in picked}
    nobody = max(site.rtu_unit_of(d) for d in site.devices) + 1
    return units, nobody


async def test_scan_of_a_serial_line_finds_several_units_and_decodes_the_sunspec_ones(
    site: SimulatedSite, line: Line, tmp_path: Path
) -> None:
    units, nobody = units_to_scan(site)
    assert (units["sunspec_inverter"], units["sunspec_meter"], units["sunspec_storage"]) == (
        10,
        11,
        12,
    )
    wanted = ",".join(str(u) for u in [*units.values(), nobody])
    target = f"rtu://{line.gateway_port}?baud=19200&parity=N&stopbits=1"
    code, out, err = await run_cli("devices", "scan", target, "--units", wanted, "--json")
    assert code == 0, err
    body = orjson.loads(out)
    assert body["target"] == f"rtu://{line.gateway_port}"
    found = {u["unit"]: u for u in body["units"]}
    assert list(found) == [*units.values(), nobody]
    # The building's devices answer Modbus but hold no SunSpec marker; nobody answers at all.
    for device in ("grid_meter", "battery"):
        assert found[units[device]]["status"] == "no_sunspec", found[units[device]]
        assert "40000 (exception 2)" in found[units[device]]["detail"]
    assert found[nobody]["status"] == "no_answer"
    assert f"unit {nobody}: no answer to read of holding 40000" in found[nobody]["detail"]
    # Three SunSpec devices on one port, each decoded from its own models.
    inverter = found[units["sunspec_inverter"]]
    assert (inverter["status"], inverter["base"]) == ("sunspec", 40000)
    assert inverter["identity"]["SN"] == "GP-INV-0001"
    models = {m["id"]: m for m in inverter["models"]}
    assert list(models) == [1, 103, 120, 121, 122, 123, 160, 701, 704, 705, 706, 711, 712]
    assert models[103]["points"]["W"]["value"] > 10_000.0  # noon in July
    assert models[103]["points"]["PPVphAB"]["value"] is None  # not implemented: missing
    meter = found[units["sunspec_meter"]]
    assert meter["identity"]["SN"] == "GP-MTR-0042"
    hz = next(m for m in meter["models"] if m["id"] == 203)["points"]["Hz"]["value"]
    assert hz == pytest.approx(50.0, abs=0.5)
    storage = found[units["sunspec_storage"]]
    assert [m["id"] for m in storage["models"]] == [1, 802, 713, 704]
    soc = next(m for m in storage["models"] if m["id"] == 802)["points"]["SoC"]["value"]
    assert soc == pytest.approx(site.building.state.battery.soc_pct, abs=0.1)
    # Every request had a good CRC: the scan is the only master on the line.
    assert site.rtu.bad_frames == 0
    assert site.rtu.requests[nobody] >= 1  # asked, never answered

    # The snippet: the serial bus as scanned, and one device per SunSpec unit on it.
    snippet = body["config"]
    assert snippet["serial_buses"] == [
        {
            "id": "scanned-bus",
            "port": line.gateway_port,
            "baudrate": 19200,
            "parity": "N",
            "stopbits": 1,
        }
    ]
    devices = {d["unit_id"]: d for d in snippet["devices"]}
    assert set(devices) == {
        units[d] for d in ("sunspec_inverter", "sunspec_meter", "sunspec_storage")
    }
    for device in devices.values():
        assert (device["protocol"], device["bus"]) == ("modbus_rtu", "scanned-bus")
        assert device["sunspec"] == {"base": 40000}
    site_file = tmp_path / "scanned.yaml"
    site_file.write_text(yaml.safe_dump({"site": {"id": "scanned"}, **snippet}))
    code, out, err = await run_cli("config", "check", str(site_file))
    assert code == 0, out + err
    config = load_config(site_file)
    assert {d.unit_id for d in config.devices} == set(devices)
    assert config.serial_buses[0].port == line.gateway_port


async def test_scan_report_lists_each_unit_and_ends_in_a_snippet_config_check_accepts(
    site: SimulatedSite, line: Line, tmp_path: Path
) -> None:
    grid, storage = site.rtu_unit_of("grid_meter"), site.rtu_unit_of("sunspec_storage")
    target = f"rtu://{line.gateway_port}?baud=19200&parity=N"
    code, out, err = await run_cli(
        "devices", "scan", target, "--units", f"{grid},{storage}", "--no-missing"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"scanned rtu://{line.gateway_port}, unit ids {grid}, {storage}"
    # The plain Modbus unit: it answered, with what each SunSpec base held.
    plain = next(li for li in lines if li.startswith(f"unit {grid}: "))
    assert plain.startswith(f"unit {grid}: no sunspec (no SunS marker (0x5375 0x6E53) at ")
    for base in (40000, 50000, 0):
        assert f" {base} (exception 2)" in plain  # illegal address: it answered, no SunSpec
    assert (
        f"unit {storage}: GridPilot SimStorage 200k (serial GP-BAT-0007); SunSpec at 40000" in lines
    )
    assert any(li.strip().startswith("model 802 ") for li in lines)
    assert not any("not implemented" in li for li in lines)  # --no-missing
    snippet = out.split("# site file snippet", 1)[1].split("\n", 1)[1]
    parsed = yaml.safe_load(snippet)
    assert [d["unit_id"] for d in parsed["devices"]] == [storage]
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"site": {"id": "scanned"}}) + snippet)
    code, out, err = await run_cli("config", "check", str(site_file))
    assert code == 0, out + err


async def test_scan_through_an_rtu_over_tcp_converter(site: SimulatedSite, line: Line) -> None:
    meter, inverter = site.rtu_unit_of("sunspec_meter"), site.rtu_unit_of("sunspec_inverter")
    grid = site.rtu_unit_of("grid_meter")
    code, out, err = await run_cli(
        "devices", "scan", f"rtu-tcp://127.0.0.1:{line.tcp_port}",
        "--units", f"{grid},{inverter},{meter}", "--json",
    )  # fmt: skip
    assert code == 0, err
    body = orjson.loads(out)
    assert body["target"] == f"rtu-tcp://127.0.0.1:{line.tcp_port}"
    statuses = {u["unit"]: u["status"] for u in body["units"]}
    assert statuses == {grid: "no_sunspec", inverter: "sunspec", meter: "sunspec"}
    # Through the converter the frames are RTU's (the relay saw them on its TCP side).
    assert "request" in line.wire
    assert site.rtu.bad_frames == 0
    devices = body["config"]["devices"]
    assert "serial_buses" not in body["config"]
    assert [(d["protocol"], d["host"], d["port"], d["unit_id"]) for d in devices] == [
        ("modbus_rtu_tcp", "127.0.0.1", line.tcp_port, inverter),
        ("modbus_rtu_tcp", "127.0.0.1", line.tcp_port, meter),
    ]
    config = GridPilotConfig.model_validate({"site": {"id": "scanned"}, **body["config"]})
    assert [d.unit_id for d in config.devices] == [inverter, meter]


async def test_gateway_polls_the_scanned_sunspec_units_over_the_serial_line(
    site: SimulatedSite, line: Line, mosquitto: BrokerAddress
) -> None:
    """What the scan found runs: the gateway discovers and decodes the SunSpec devices
    through the same serial port, beside a plain Modbus unit of the building, and sets the
    storage's 704 power setpoint over the line."""
    site_id = f"site-{uuid.uuid4().hex[:12]}"
    data: dict[str, Any] = site.rtu_site_config(line.gateway_port, site_id)
    keep = {"grid_meter", "sunspec_inverter", "sunspec_storage"}
    data["devices"] = [d for d in data["devices"] if d["id"] in keep]
    for device in data["devices"]:
        device.update(poll_interval=1.0, timeout=0.5, retries=1)
    config = GridPilotConfig.model_validate(
        {"site": {"id": site_id}, "gateway": {"id": "gw-scan-rtu"}, **data}
    )
    async with (
        observing(mosquitto, site_id, f"observer-{site_id}") as observer,
        GatewayService(config, mosquitto),
    ):
        inverter = await observer.wait_for(
            lambda r: r.device == "sunspec_inverter" and r.kind == "telemetry", within=20.0
        )
        assert inverter.json["values"]["m103_w"] > 10_000.0
        assert "m103_ppvphab_v" not in inverter.json["values"]
        storage = await observer.wait_for(
            lambda r: r.device == "sunspec_storage" and r.kind == "telemetry", within=20.0
        )
        assert storage.json["values"]["m802_soc_pct"] == pytest.approx(
            site.building.state.battery.soc_pct, abs=0.5
        )
        grid = await observer.wait_for(
            lambda r: r.device == "grid_meter" and r.kind == "telemetry", within=20.0
        )
        assert grid.json["values"]["voltage_l1_v"] == pytest.approx(230, abs=15)
        # A 704 storage setpoint over the serial line: written, read back, obeyed.
        for point, value in (("m704_wset_w", 15_000.0), ("m704_wsetena_state", 1.0)):
            sent = Command(uuid.uuid4().hex, point, value, now_ms() + 10_000, "test")
            await observer.command(site_id, "sunspec_storage", encode_command(sent))
            result = await observer.wait_for(
                lambda r, i=sent.id: r.kind == "command/result" and r.json["id"] == i,
                within=20.0,
            )
            assert result.json["status"] == "applied", result.json
            assert result.json["readback"] == value
        assert site.building.state.battery.setpoint_w == 15_000.0
    assert site.rtu.bad_frames == 0
