"""Home Assistant discovery payloads against a JSON Schema written from Home Assistant's
documentation (tests/fixtures/homeassistant_mqtt_sensor.schema.json, which cites its
sources: the MQTT sensor's configuration variables and the sensor device-class table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gridpilot.bus.homeassistant import SensorKind, discovery_configs, sensor_kind
from gridpilot.config.models import GridPilotConfig
from gridpilot.sim.control import control_section
from gridpilot.sim.site import SimulatedSite

SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent / "fixtures" / "homeassistant_mqtt_sensor.schema.json"
)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def demo_config(**extra: Any) -> GridPilotConfig:
    """The site ``gridpilot demo`` runs: the simulated building's devices and control."""
    return GridPilotConfig.model_validate(
        {
            "site": {"id": "demo", "name": "GridPilot demo building"},
            "control": control_section(limit_w=110_000.0),
            "devices": SimulatedSite(base_port=25_000).site_config("demo"),
            "homeassistant": {"enabled": True},
            **extra,
        }
    )


def test_every_payload_for_the_demo_site_validates(
    validator: jsonschema.Draft202012Validator,
) -> None:
    config = demo_config()
    configs = discovery_configs(config)
    assert len(configs) == sum(len(d.points) for d in config.devices)
    for item in configs:
        errors = [e.message for e in validator.iter_errors(json.loads(item.encode()))]
        assert not errors, (item.topic, errors)
    assert len({c.unique_id for c in configs}) == len(configs)
    assert all(c.topic == f"homeassistant/sensor/{c.unique_id}/config" for c in configs)


def test_a_demo_payload_in_full() -> None:
    configs = {c.unique_id: c.payload for c in discovery_configs(demo_config())}
    power = configs["gridpilot_demo_grid_meter_active_power_w"]
    assert power["state_topic"] == "gridpilot/v1/demo/grid_meter/telemetry"
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == (
        "power",
        "measurement",
        "W",
    )
    assert power["device"]["manufacturer"] == "GridPilot"
    assert power["device"]["identifiers"] == ["gridpilot_demo_grid_meter"]
    assert [a["topic"] for a in power["availability"]] == [
        "gridpilot/v1/demo/grid_meter/state",
        "gridpilot/v1/demo/gateway/state",
    ]
    assert power["availability_mode"] == "all"
    assert "value_json['values']['active_power_w']" in power["value_template"]
    energy = configs["gridpilot_demo_grid_meter_energy_import_wh"]
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    assert configs["gridpilot_demo_battery_soc_pct"]["device_class"] == "battery"
    assert configs["gridpilot_demo_battery_capacity_wh"]["device_class"] == "energy_storage"


def test_the_schema_refuses_what_home_assistant_would(
    validator: jsonschema.Draft202012Validator,
) -> None:
    """The schema has teeth: incompatible units, classes and keys are errors."""
    base = dict(discovery_configs(demo_config())[0].payload)
    bad: list[dict[str, Any]] = [
        {**base, "device_class": "power", "unit_of_measurement": "kWh"},
        {
            **base,
            "device_class": "energy",
            "unit_of_measurement": "Wh",
            "state_class": "measurement",
        },
        {**base, "device_class": "current", "unit_of_measurement": "W"},
        {**base, "state_class": "sometimes"},
        {**base, "device_class": "watts"},
        {k: v for k, v in base.items() if k != "state_topic"},
        {**base, "stat_t": "x"},  # abbreviations are not ours
        {**base, "state_topic": "gridpilot/v1/+/telemetry"},
        {**base, "device": {"name": "no identifiers"}},
        {**base, "availability": [{"payload_available": "online"}]},
    ]
    for payload in bad:
        assert list(validator.iter_errors(payload)), payload


@pytest.mark.parametrize(
    ("point", "kind"),
    [
        ("active_power_w", SensorKind("W", "power", "measurement")),
        ("energy_import_wh", SensorKind("Wh", "energy", "total_increasing")),
        ("capacity_wh", SensorKind("Wh", "energy_storage", "measurement")),
        ("reactive_power_var", SensorKind("var", "reactive_power", "measurement")),
        ("apparent_power_va", SensorKind("VA", "apparent_power", "measurement")),
        ("voltage_l1_v", SensorKind("V", "voltage", "measurement")),
        ("current_l1_a", SensorKind("A", "current", "measurement")),
        ("ai0_current_ma", SensorKind("mA", "current", "measurement")),
        ("frequency_hz", SensorKind("Hz", "frequency", "measurement")),
        ("soc_pct", SensorKind("%", "battery", "measurement")),
        ("outdoor_humidity_pct", SensorKind("%", "humidity", "measurement")),
        ("speed_pct", SensorKind("%", None, "measurement")),
        ("temperature_degc", SensorKind("°C", "temperature", "measurement")),
        ("power_factor_pf", SensorKind(None, "power_factor", "measurement")),
        ("irradiance_wm2", SensorKind("W/m²", "irradiance", "measurement")),
        ("flow_m3h", SensorKind("m³/h", "volume_flow_rate", "measurement")),
        ("motor_speed_rpm", SensorKind("rpm", None, "measurement")),
        ("operating_state", SensorKind(None, None, None)),
    ],
)
def test_units_map_to_home_assistant_classes(point: str, kind: SensorKind) -> None:
    assert sensor_kind(point) == kind


def test_mqtt_and_sparkplug_devices_get_the_availability_they_have() -> None:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": "s"},
            "homeassistant": {"enabled": True, "discovery_prefix": "ha/test"},
            "sparkplug": {"group": "g", "devices": [{"edge_node": "e", "id": "spb"}]},
            "devices": [
                {"id": "plain", "protocol": "mqtt", "points": [{"point": "a_w"}]},
                {"id": "spb", "protocol": "mqtt", "points": [{"point": "b_w"}]},
            ],
        }
    )
    by_id = {c.unique_id: c for c in discovery_configs(config)}
    assert "availability" not in by_id["gridpilot_s_plain_a_w"].payload
    assert [a["topic"] for a in by_id["gridpilot_s_spb_b_w"].payload["availability"]] == [
        "gridpilot/v1/s/spb/state"
    ]
    assert by_id["gridpilot_s_spb_b_w"].topic == "ha/test/sensor/gridpilot_s_spb_b_w/config"


def test_the_value_template_renders_as_home_assistant_would() -> None:
    """Home Assistant renders value templates with Jinja2 (sandboxed), ``value_json`` the
    decoded payload and ``this`` the entity's state object."""
    configs = {c.unique_id: c.payload for c in discovery_configs(demo_config())}
    template = ImmutableSandboxedEnvironment().from_string(
        configs["gridpilot_demo_grid_meter_active_power_w"]["value_template"]
    )

    class State:
        def __init__(self, state: str) -> None:
            self.state = state

    def render(values: dict[str, float], state: str) -> str:
        payload = {"ts": "2026-11-26T12:00:00.000Z", "values": values}
        return template.render(value_json=payload, this=State(state))

    assert render({"active_power_w": 41250.0, "voltage_l1_v": 231.4}, "40000.0") == "41250.0"
    # A message without the point (another poll class) keeps the entity's state...
    assert render({"voltage_l1_v": 231.4}, "41250.0") == "41250.0"
    # ...and before any value, "None": Home Assistant's unknown, not the text "unknown".
    assert render({"voltage_l1_v": 231.4}, "unknown") == "None"
    assert render({"voltage_l1_v": 231.4}, "unavailable") == "None"
