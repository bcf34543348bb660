"""SunSpec end to end: the simulator's SunSpec inverter, meter and storage over real Modbus TCP,
found and decoded by ``gridpilot devices scan`` (a subprocess), and a 704 power limit sent
through the gateway on a real Mosquitto, applied, read back and seen in the physics."""

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
from tests.integration.test_gateway_support import Observer, observing

pytestmark = pytest.mark.integration

NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
GATEWAY = "gw-sunspec"


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(speed=1.0, start=NOON, tick_s=0.05, sunspec=True) as running:
        yield running


async def run_scan(*args: str) -> tuple[int, str, str]:
    return await run_cli("devices", "scan", *args)


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_scan_discovers_and_fully_decodes_the_sunspec_inverter(
    site: SimulatedSite, tmp_path: Path
) -> None:
    port = site.port_of("sunspec_inverter")
    code, out, err = await run_scan(f"tcp://127.0.0.1:{port}", "--units", "1-2", "--json")
    assert code == 0, err
    body = orjson.loads(out)
    units = {u["unit"]: u for u in body["units"]}
    assert units[2]["status"] == "no_answer"  # the server has nothing behind unit 2
    inverter = units[1]
    assert inverter["status"] == "sunspec"
    assert inverter["base"] == 40000
    assert inverter["identity"]["Mn"] == "GridPilot"
    assert inverter["identity"]["SN"] == "GP-INV-0001"
    models = {m["id"]: m for m in inverter["models"]}
    assert list(models) == [1, 103, 120, 121, 122, 123, 160, 701, 704, 705, 706, 711, 712]
    # Volt-var: two stored curves of four points, the active one read-only (Category A).
    volt_var = models[705]["points"]
    assert (volt_var["NCrv"]["value"], volt_var["NPt"]["value"]) == (2.0, 4.0)
    assert volt_var["Crv[1].ReadOnly"]["symbol"] == "R"
    assert volt_var["Crv[2].Pt[4].V"]["value"] == 110.0
    assert volt_var["Crv[2].Pt[4].Var"]["value"] == -25.0
    # Decoded with the device's own scale factors: the physics' values to their resolution.
    pv = site.building.state.pv
    w = models[103]["points"]["W"]
    assert w["units"] == "W"
    assert w["point"] == "m103_w"
    assert w["value"] == pytest.approx(pv.ac_power_w, abs=1000.0)
    assert w["value"] > 10_000.0  # noon in July
    assert models[103]["points"]["St"]["symbol"] == "MPPT"
    assert models[120]["points"]["WRtg"]["value"] == 100_000.0
    assert models[160]["points"]["module[2].IDStr"]["value"] == "string B"
    assert models[704]["points"]["WMaxLimPct"]["value"] == 100.0
    # Unimplemented registers arrive as missing, never as 32768/65535.
    assert models[103]["points"]["PPVphAB"]["value"] is None  # uint16 0xFFFF
    assert models[103]["points"]["TmpTrns"]["value"] is None  # int16 0x8000
    assert models[103]["points"]["Evt2"]["value"] is None  # bitfield32 0xFFFFFFFF
    assert models[704]["points"]["WSet"]["value"] is None  # int32, scale factor not there
    values = [
        p["value"] for m in models.values() for p in m["points"].values() if p["value"] is not None
    ]
    assert all(v not in (32768.0, 65535.0, -32768.0, 4294967295.0) for v in values)
    # The snippet is a valid site file as it stands.
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"site": {"id": "scanned"}, **body["config"]}))
    config = load_config(site_file)
    (device,) = config.devices
    assert device.sunspec is not None
    assert device.sunspec.base == 40000
    assert (device.port, device.unit_id) == (port, 1)


async def test_scan_decodes_the_sunspec_meter_and_prints_a_snippet_config_check_accepts(
    site: SimulatedSite, tmp_path: Path
) -> None:
    port = site.port_of("sunspec_meter")
    code, out, err = await run_scan(f"tcp://127.0.0.1:{port}", "--units", "1")
    assert code == 0, err
    assert (
        "unit 1: GridPilot SimMeter 3P4W (serial GP-MTR-0042, version 2.0); SunSpec at 40000" in out
    )
    assert "model 203 ac_meter_abcn at 40070" in out
    reading = site.building.state.meter.reading
    line = next(li for li in out.splitlines() if li.strip().startswith("Hz "))
    # The grid frequency moves while the scan runs: the scanned value is within 0.05 Hz of
    # the simulator's now (read after the scan).
    scanned_hz = float(line.split()[1])
    assert abs(scanned_hz - reading.frequency_hz) <= 0.05, (line, reading.frequency_hz)
    # The apparent energies have no scale factor on this meter: missing, with their name.
    assert any("TotVAhImp" in li and "not implemented" in li for li in out.splitlines())
    snippet = out.split("# site file snippet", 1)[1].split("\n", 1)[1]
    site_file = tmp_path / "meter.yaml"
    site_file.write_text(yaml.safe_dump({"site": {"id": "scanned"}}) + snippet)
    code, out, err = await run_cli("config", "check", str(site_file))
    assert code == 0, out + err


async def test_scan_of_a_closed_port_says_what_to_check() -> None:
    code, _, err = await run_scan("tcp://127.0.0.1:1", "--units", "1", "--timeout", "0.2")
    assert code == 1
    assert "cannot scan tcp://127.0.0.1:1" in err


# ---------------------------------------------------------------------------- gateway


@pytest.fixture
def site_id() -> str:
    return f"site-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


def sunspec_config(site: SimulatedSite, site_id: str) -> GridPilotConfig:
    devices: list[dict[str, Any]] = [d for d in site.site_config(site_id) if "sunspec" in d]
    for device in devices:
        device.update(poll_interval=0.3, timeout=0.3, retries=0)
    return GridPilotConfig.model_validate(
        {"site": {"id": site_id}, "gateway": {"id": GATEWAY}, "devices": devices}
    )


async def test_gateway_publishes_sunspec_points_and_applies_a_704_power_limit(
    site: SimulatedSite, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> None:
    config = sunspec_config(site, site_id)
    assert {d.id for d in config.devices} == {
        "sunspec_inverter",
        "sunspec_meter",
        "sunspec_storage",
    }
    async with GatewayService(config, mosquitto) as gateway:
        telemetry = await observer.wait_for(
            lambda r: r.device == "sunspec_inverter" and r.kind == "telemetry", within=10.0
        )
        values = telemetry.json["values"]
        assert values["m103_w"] > 10_000.0
        assert values["m704_wmaxlimpct_pct"] == 100.0
        assert values["m1_da_count"] == 1.0
        # Not implemented on the device: absent, not a number.
        assert "m103_ppvphab_v" not in values
        assert "m103_tmptrns_degc" not in values
        meter = await observer.wait_for(
            lambda r: r.device == "sunspec_meter" and r.kind == "telemetry", within=10.0
        )
        assert meter.json["values"]["m203_hz"] == pytest.approx(50.0, abs=0.5)
        assert "m203_totvahimp_vah" not in meter.json["values"]

        # Enable the limit, then set it: two commands, each written and read back.
        for point, value in (("m704_wmaxlimpctena_state", 1.0), ("m704_wmaxlimpct_pct", 30.0)):
            sent = Command(uuid.uuid4().hex, point, value, now_ms() + 10_000, "test")
            await observer.command(site_id, "sunspec_inverter", encode_command(sent))
            result = await observer.wait_for(
                lambda r, i=sent.id: r.kind == "command/result" and r.json["id"] == i,
                within=10.0,
            )
            assert result.json["status"] == "applied", result.json
            assert result.json["readback"] == value
        # The physics obeys: 30 % of 100 kW at most.
        await site.wait_ticks(5)
        assert site.building.state.pv.power_limit_pct == 30.0
        limited = await observer.wait_for(
            lambda r: (
                r.device == "sunspec_inverter"
                and r.kind == "telemetry"
                and r.json["values"]["m704_wmaxlimpct_pct"] == 30.0
                and r.json["values"]["m103_w"] <= 30_000.0
            ),
            within=10.0,
        )
        assert limited.json["values"]["m701_throtpct_pct"] == 30.0

        # Out of range and read-only points are refused before anything is written.
        for point, value, code in (
            ("m704_wmaxlimpct_pct", 120.0, "out_of_range"),
            ("m103_w", 5.0, "unknown_point"),
        ):
            sent = Command(uuid.uuid4().hex, point, value, now_ms() + 10_000, "test")
            await observer.command(site_id, "sunspec_inverter", encode_command(sent))
            result = await observer.wait_for(
                lambda r, i=sent.id: r.kind == "command/result" and r.json["id"] == i,
                within=10.0,
            )
            assert result.json["status"] == "rejected"
            assert result.json["code"] == code
        assert gateway.health("sunspec_inverter").counters.polls > 0


async def send(observer: Observer, site_id: str, device: str, point: str, value: float) -> Any:
    """Send one command through Mosquitto and return its command/result payload."""
    sent = Command(uuid.uuid4().hex, point, value, now_ms() + 10_000, "test")
    await observer.command(site_id, device, encode_command(sent))
    result = await observer.wait_for(
        lambda r, i=sent.id: r.kind == "command/result" and r.json["id"] == i, within=10.0
    )
    return result.json


async def test_gateway_sets_the_sunspec_storage_power_through_704_wset_and_reads_it_back(
    site: SimulatedSite, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> None:
    config = sunspec_config(site, site_id)
    battery = site.building.state.battery
    assert battery.active_power_w == 0.0  # idle until told otherwise
    async with GatewayService(config, mosquitto):
        first = await observer.wait_for(
            lambda r: r.device == "sunspec_storage" and r.kind == "telemetry", within=10.0
        )
        values = first.json["values"]
        assert values["m802_soc_pct"] == pytest.approx(battery.soc_pct, abs=0.1)
        assert values["m704_wsetena_state"] == 0.0
        assert values["m802_chast_state"] == 6.0  # HOLDING

        # A fraction for the enable flag is refused over the wire, nothing written.
        refused = await send(observer, site_id, "sunspec_storage", "m704_wsetena_state", 0.5)
        assert (refused["status"], refused["code"]) == ("rejected", "not_an_integer")
        assert "0.5 is not an integer: m704_wsetena_state" in refused["reason"]
        assert refused["readback"] is None

        # Charge at 20 kW: the setpoint (WSet, W_SF-scaled int32, negative = absorbing),
        # then its enable. Each is written and read back from the device.
        for point, value in (("m704_wset_w", -20_000.0), ("m704_wsetena_state", 1.0)):
            result = await send(observer, site_id, "sunspec_storage", point, value)
            assert result["status"] == "applied", result
            assert result["readback"] == value
        await site.wait_ticks(5)
        assert site.building.state.battery.setpoint_w == -20_000.0
        charging = await observer.wait_for(
            lambda r: (
                r.device == "sunspec_storage"
                and r.kind == "telemetry"
                and r.json["values"].get("m802_w") == -20_000.0
            ),
            within=10.0,
        )
        assert charging.json["values"]["m802_chast_state"] == 4.0  # CHARGING
        assert charging.json["values"]["m704_wset_w"] == -20_000.0
        assert charging.json["values"]["m704_wsetena_state"] == 1.0

        # Beyond the register's range and a read-only 802 point: refused, nothing written.
        for point, value, code in (
            ("m704_wset_w", 1e12, "out_of_range"),
            ("m802_w", 5_000.0, "unknown_point"),
        ):
            result = await send(observer, site_id, "sunspec_storage", point, value)
            assert (result["status"], result["code"]) == ("rejected", code), result

        # Disable: the battery goes back to idle.
        result = await send(observer, site_id, "sunspec_storage", "m704_wsetena_state", 0.0)
        assert result["status"] == "applied", result
        await observer.wait_for(
            lambda r: (
                r.device == "sunspec_storage"
                and r.kind == "telemetry"
                and r.json["values"].get("m802_w") == 0.0
            ),
            within=10.0,
        )
        assert site.building.state.battery.setpoint_w == 0.0
