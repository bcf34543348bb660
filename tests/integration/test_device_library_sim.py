"""A site file that names library profiles (examples/profiles.yaml) runs against the
simulator: real Modbus TCP to the simulated SDM630 and ADAM-6017, a private Mosquitto, and
a broken 4-20 mA loop reported as a fault on its point, never as a value."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.config import validate_config_text
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.devices import ANALOG_IO_MAP, METER
from gridpilot.sim.site import SimulatedSite
from tests.integration.test_gateway_support import Observer, Record, observing

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "profiles.yaml"
INTERVAL_S = 0.3
NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
HUMIDITY_CHANNEL = 1  # ai1 -> outdoor_humidity_pct in the example


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(
        speed=1.0, start=NOON, tick_s=0.05, device_maps=(METER, ANALOG_IO_MAP)
    ) as running:
        yield running


def example_config(site: SimulatedSite, site_id: str) -> str:
    """The example file as a user has it, pointed at this test's ports and faster polls."""
    text = EXAMPLE.read_text()
    text = text.replace("port: 15020", f"port: {site.port_of('grid_meter')}")
    text = text.replace("port: 15028", f"port: {site.port_of('analog_io')}")
    text = text.replace("id: profiles-demo", f"id: {site_id}")
    text = text.replace("poll_interval: 2 ", f"poll_interval: {INTERVAL_S} ")
    return text.replace(
        "    unit_id: 1\n", f"    unit_id: 1\n    poll_interval: {INTERVAL_S}\n    timeout: 0.2\n"
    )


@pytest.fixture
def site_id() -> str:
    return f"site-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


def telemetry(device: str) -> Callable[[Record], bool]:
    return lambda r: r.device == device and r.kind == "telemetry"


def state_with(device: str, check: Callable[[Any], bool]) -> Callable[[Record], bool]:
    return lambda r: r.device == device and r.kind == "state" and check(r.json)


async def test_profiles_by_name_poll_the_simulator_and_a_broken_loop_is_a_fault(
    site: SimulatedSite, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> None:
    config = validate_config_text(example_config(site, site_id), str(EXAMPLE))
    meter = config.device("grid_meter")
    io = config.device("analog_io")
    assert meter is not None
    assert meter.profile == "eastron_sdm630"
    assert io is not None
    assert io.poll_interval.total_seconds() == INTERVAL_S
    async with GatewayService(config, mosquitto):
        # The meter: every selected profile point arrives, decoded from float32 registers.
        record: Record = await observer.wait_for(telemetry("grid_meter"), within=10)
        values = record.json["values"]
        assert set(values) == {p.point for p in meter.points}
        truth = site.building.device_values("grid_meter")
        assert 200 < values["voltage_l1_v"] < 260
        assert values["frequency_hz"] == pytest.approx(truth["frequency_hz"], abs=0.05)
        assert values["energy_import_wh"] == pytest.approx(truth["energy_import_wh"], rel=1e-4)

        # The analog module: 4-20 mA loops scaled to engineering units.
        record = await observer.wait_for(telemetry("analog_io"), within=10)
        values = record.json["values"]
        assert set(values) == {
            "outdoor_temperature_degc",
            "outdoor_humidity_pct",
            "irradiance_wm2",
            "ai0_range_state",
        }
        weather = site.building.device_values("weather_io")
        assert values["outdoor_humidity_pct"] == pytest.approx(
            weather["outdoor_humidity_pct"], abs=0.5
        )
        assert values["outdoor_temperature_degc"] == pytest.approx(
            weather["outdoor_temperature_degc"], abs=0.5
        )
        assert values["ai0_range_state"] == 0x0182
        await observer.wait_for(state_with("analog_io", lambda s: s["status"] == "online"))

        # Break the humidity transmitter's wire: 2.0 mA of leakage on channel 1.
        site.building.force_loop(HUMIDITY_CHANNEL, 2.0)
        broken = await observer.wait_for(
            state_with("analog_io", lambda s: "outdoor_humidity_pct" in s["point_faults"]),
            within=10,
        )
        fault = broken.json["point_faults"]["outdoor_humidity_pct"]
        assert fault["kind"] == "wire_break"
        assert "2 mA" in fault["message"]
        assert broken.json["status"] == "online"  # the module answers; one loop is broken
        alarm = await observer.wait_for(
            lambda r: r.topic.endswith("/events") and "outdoor_humidity_pct" in r.json["message"]
        )
        assert alarm.json["level"] == "alarm"
        assert "wire_break" in alarm.json["message"]
        # From now on the telemetry has no humidity value (missing, not a number); the other
        # channels keep theirs.
        later = await observer.wait_for(telemetry("analog_io"), after=broken.index)
        assert "outdoor_humidity_pct" not in later.json["values"]
        assert "outdoor_temperature_degc" in later.json["values"]

        # Repaired: the value returns and the fault clears.
        site.building.force_loop(HUMIDITY_CHANNEL, None)
        cleared = await observer.wait_for(
            state_with("analog_io", lambda s: s["point_faults"] == {}), after=broken.index
        )
        back = await observer.wait_for(telemetry("analog_io"), after=cleared.index)
        assert "outdoor_humidity_pct" in back.json["values"]
