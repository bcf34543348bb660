"""Configuration loading: typed models, and every error named with its file and line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gridpilot.config import ConfigError, load_config, validate_config_text
from gridpilot.model import DataType, Table, WordOrder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
site:
  id: hq
  name: Head office
broker:
  url: mqtt://127.0.0.1:1883
storage:
  path: data/hq.db
  retention:
    raw: 7 days
devices:
  - id: meter
    host: 127.0.0.1
    port: 5020
    poll_interval: 0.5
    points:
      - point: active_power_w
        address: 52
        table: input
        type: float32
        word_order: little
        valid_range: [-500000, 500000]
      - point: status_state
        address: 100
        type: bitfield
        bit: 0
      - point: alarm_state
        address: 100
        type: bitfield
        bit: 3
"""


def test_valid_file_becomes_typed_frozen_models() -> None:
    cfg = validate_config_text(GOOD, "good.yaml")
    device = cfg.devices[0]
    point = device.points[0]
    assert cfg.site.id == "hq"
    assert cfg.broker.port == 1883
    assert cfg.storage.retention.raw == timedelta(days=7)
    assert device.poll_interval == timedelta(milliseconds=500)
    assert (point.table, point.type, point.word_order) == (
        Table.INPUT,
        DataType.FLOAT32,
        WordOrder.LITTLE,
    )
    assert point.register_count == 2
    assert point.valid_range == (-500000.0, 500000.0)
    with pytest.raises(ValueError, match="frozen"):
        device.port = 1  # type: ignore[misc]


BAD = """\
site:
  id: hq
devices:
  - id: meter
    host: 127.0.0.1
    colour: blue
    points:
      - point: active_power_w
        address: 0
        type: float32
      - point: voltage_l1_v
        address: 1
        type: float32
      - point: frequency
        address: 10
      - point: energy_import_wh
        type: uint32
      - point: current_a
        address: 20
        scale: lots
"""


def issues_of(text: str) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(ConfigError) as info:
        validate_config_text(text, "site.yaml")
    return {issue.field: (issue.line, issue.message) for issue in info.value.issues}


def test_every_problem_is_reported_with_its_line() -> None:
    found = issues_of(BAD)
    assert found["devices[0].colour"][0] == 6
    assert "unknown field 'colour'" in found["devices[0].colour"][1]
    assert found["devices[0].points[1].address"][0] == 12
    assert "overlaps point 'active_power_w'" in found["devices[0].points[1].address"][1]
    assert found["devices[0].points[2].point"][0] == 14
    assert "no unit suffix" in found["devices[0].points[2].point"][1]
    assert found["devices[0].points[3]"][0] == 16
    assert "has no address" in found["devices[0].points[3]"][1]
    assert found["devices[0].points[4].scale"][0] == 20
    assert "valid number" in found["devices[0].points[4].scale"][1]
    assert len(found) == 5


def test_issue_text_names_file_line_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config_text(BAD, "site.yaml")
    first = str(info.value.issues[0])
    assert first.startswith("site.yaml:6: devices[0].colour: unknown field")


@pytest.mark.parametrize(
    ("text", "field", "line", "needle"),
    [
        ("site: {id: hq}\nsite: {id: x}\n", "site", 2, "appears twice"),
        ("devices: []\n", "site", 1, "required field 'site' is missing"),
        ("site: {id: 'Head Office'}\n", "site.id", 1, "not a valid id"),
        (
            "site: {id: hq}\nbroker: {url: 'mqtt://u:secret@h:1883'}\n",
            "broker.url",
            2,
            "password_env",
        ),
        (
            "site: {id: hq}\ndevices:\n  - id: m\n    points:\n      - {point: p_w, address: 1}\n",
            "devices[0]",
            3,
            "needs host",
        ),
        (
            "site: {id: hq}\ndevices:\n  - {id: m, host: h, points: [{point: p_w, address: 1}]}\n"
            "  - {id: m, host: h, points: [{point: p_w, address: 1}]}\n",
            "devices[1].id",
            4,
            "already used",
        ),
        (
            "site: {id: hq}\ndevices:\n  - id: m\n    host: h\n    points:\n"
            "      - {point: p_w, address: 1, table: input, writable: true}\n",
            "devices[0].points[0]",
            6,
            "read-only",
        ),
        (
            "site: {id: hq}\ndevices:\n  - id: m\n    host: h\n    points:\n"
            "      - {point: p_w, address: 1, valid_range: [10, 0]}\n",
            "devices[0].points[0]",
            6,
            "min above max",
        ),
    ],
)
def test_single_problems(text: str, field: str, line: int, needle: str) -> None:
    found = issues_of(text)
    assert field in found, found
    assert found[field][0] == line
    assert needle in found[field][1]


def test_bits_of_one_status_word_do_not_overlap_but_same_bit_does() -> None:
    text = (
        GOOD
        + "      - point: fault_state\n"
        + "        address: 100\n        type: bitfield\n        bit: 3\n"
    )
    found = issues_of(text)
    assert "overlaps point 'alarm_state'" in found["devices[0].points[3].address"][1]


def test_yaml_syntax_error_has_a_line() -> None:
    found = issues_of("site:\n  id: hq\n  name: [unclosed\n")
    ((line, message),) = found.values()
    assert line is not None
    assert "not valid YAML" in message


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.devices


CONTROL_SITE = """\
site: {id: hq}
devices:
  - id: meter
    protocol: mqtt
    points: [{point: active_power_w}]
  - id: battery
    protocol: mqtt
    points: [{point: soc_pct},
             {point: active_power_setpoint_w, valid_range: [-5, 5], writable: true}]
control:
"""


@pytest.mark.parametrize(
    ("control", "field", "line", "needle"),
    [
        # a typo in a device name: the controller would be blind at run time
        ("  fail_safes:\n    - name: f\n      inputs: [meterr.active_power_w]\n"
         "      set: {battery.active_power_setpoint_w: 0}\n",
         "control.fail_safes[0].inputs[0]", 13, "no device 'meterr'"),
        # a point the device does not have
        ("  limits:\n    - {point: battery.setpoint_w, idle: 0}\n",
         "control.limits[0].point", 12, "has no point 'setpoint_w'"),
        # not DEVICE.POINT at all
        ("  batteries:\n    - {setpoint: battery, soc: battery.soc_pct}\n",
         "control.batteries[0].setpoint", 12, "DEVICE.POINT"),
        ("  limits:\n    - {point: battery.active_power_setpoint_w, min: 5, max: -5}\n",
         "control.limits[0]", 12, "above max"),
        ("  cycle: 0\n", "control.cycle", 11, "greater than zero"),
        # the worker pool: a negative count, an empty queue, a zero timeout
        ("  workers: -1\n", "control.workers", 11, "greater than or equal to 0"),
        ("  worker_queue: 0\n", "control.worker_queue", 11, "greater than or equal to 1"),
        ("  worker_timeout: 0\n", "control.worker_timeout", 11, "greater than zero"),
        ("  peak_shaving: {limit_w: -3}\n", "control.peak_shaving.limit_w", 11, "limit_w"),
        ("  tariff: {timezone: Mars/Olympus}\n", "control.tariff.timezone", 11,
         "unknown time zone"),
        ("  hvac:\n    - {zone: z, occupied_band: {lower_degc: 25, upper_degc: 21}}\n",
         "control.hvac[0].occupied_band", 12, ""),
        # the planner's demand scenarios: out of range, too short, probabilities over 1
        ("  hvac:\n    - {zone: z, nowcast_margin_pct: -1}\n",
         "control.hvac[0].nowcast_margin_pct", 12, "greater than or equal to 0"),
        ("  hvac:\n    - {zone: z, level_hold_weight: 1.0}\n",
         "control.hvac[0].level_hold_weight", 12, "less than 1"),
        ("  hvac:\n    - {zone: z, level_hold_weight: 0.2, level_hold: 60}\n",
         "control.hvac[0]", 12, "level_hold must be at least one step"),
        ("  hvac:\n    - {zone: z, cloud_window_weight: 0.8, level_hold_weight: 0.3}\n",
         "control.hvac[0]", 12, "must be below 1"),
        ("  hvac:\n    - {zone: z, cloud_window_recourse: -60}\n",
         "control.hvac[0]", 12, "must not be negative"),
        ("  hvac:\n    - {zone: z, replan_within_block: 900}\n",
         "control.hvac[0]", 12, "replan_within_block must be positive and shorter than a step"),
        ("  hvac:\n    - {zone: z, replan_within_block: 300, step: 1800}\n",
         "control.hvac[0]", 12, "replan_within_block needs step equal to the tariff's"),
    ],
)  # fmt: skip
def test_control_section_problems_name_their_line(
    control: str, field: str, line: int, needle: str
) -> None:
    found = issues_of(CONTROL_SITE + control)
    assert field in found, found
    assert found[field][0] == line
    assert needle in found[field][1]


def test_control_section_refers_to_configured_points() -> None:
    cfg = validate_config_text(
        CONTROL_SITE + "  fail_safes:\n    - name: f\n      inputs: [meter.active_power_w]\n"
        "      set: {battery.active_power_setpoint_w: 0}\n  journal: data/j.jsonl\n",
        "site.yaml",
    )
    assert cfg.control is not None
    assert cfg.control.fail_safes[0].inputs == ("meter.active_power_w",)


FLOW_SITE = """\
site: {id: flowsite}
devices:
  - id: meter
    host: 127.0.0.1
    flow: {role: grid}
    points:
      - {point: active_power_w, address: 0, type: int32}
  - id: inverter
    host: 127.0.0.1
    flow: {role: pv, power_point: m103_w}
    points:
      - {point: ac_power_w, address: 0}
  - id: store
    host: 127.0.0.1
    flow: {role: battery, power_sign: -1, soc_point: charge_pct}
    points:
      - {point: active_power_w, address: 0, type: int16}
      - {point: soc_pct, address: 1}
  - id: solar
    sunspec: {}
    host: 127.0.0.1
    flow: {role: pv, power_point: m103_w}
"""


def test_flow_roles_default_their_points_and_must_name_the_devices_points() -> None:
    found = issues_of(FLOW_SITE)
    # the inverter names a point it does not have; the battery's SoC point too
    assert found["devices[1].flow.power_point"][0] == 10
    assert (
        "'m103_w' is not a point of device 'inverter'; name one of: ac_power_w"
        in (found["devices[1].flow.power_point"][1])
    )
    assert found["devices[2].flow.soc_point"][0] == 15
    assert set(found) == {"devices[1].flow.power_point", "devices[2].flow.soc_point"}

    fixed = FLOW_SITE.replace("power_point: m103_w}\n    points", "}\n    points").replace(
        ", soc_point: charge_pct", ""
    )
    config = validate_config_text(fixed)
    flows = {d.id: d.flow for d in config.devices if d.flow is not None}
    assert {k: f.power_point for k, f in flows.items()} == {
        "meter": "active_power_w",
        "inverter": "ac_power_w",
        "store": "active_power_w",
        "solar": "m103_w",  # a SunSpec device's points are discovered: not checked here
    }
    store = flows["store"]
    assert (store.power_sign, store.soc_point) == (-1, "soc_pct")


def test_a_soc_point_belongs_to_a_battery() -> None:
    text = FLOW_SITE.replace("flow: {role: grid}", "flow: {role: grid, soc_point: soc_pct}")
    found = issues_of(text)
    assert "soc_point is for role battery only" in found["devices[0].flow"][1]
