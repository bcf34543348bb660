"""The device library: every profile decodes a fixture of register words through the real
decoding path, and site files use profiles by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gridpilot.cli.main import cli
from gridpilot.config import ConfigError, DeviceConfig, validate_config_text
from gridpilot.config.profiles import ProfileKind, expand_device, library
from gridpilot.fieldbus.analog import LoopFault
from gridpilot.gateway.points import evaluate, register_spec
from gridpilot.model import Table

FIXTURES = Path(__file__).parents[1] / "fixtures" / "profiles"
EXAMPLE = Path(__file__).parents[2] / "examples" / "profiles.yaml"


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _decode(device: DeviceConfig, registers: dict[str, dict[str, int]]) -> Any:
    """Every point of ``device`` decoded from the fixture's words, as the gateway does."""
    words_by_spec = []
    for point in device.points:
        spec = register_spec(point)
        table = registers[spec.table.value]
        words = [table[str(spec.address + i)] for i in range(spec.register_count)]
        words_by_spec.append((spec, words))
    return evaluate(device, words_by_spec)


def test_the_library_has_the_devices_it_promises() -> None:
    profiles = library()
    kinds = [p.kind for p in profiles.values()]
    assert ProfileKind.INVERTER in kinds  # sunspec: any compliant inverter
    assert kinds.count(ProfileKind.METER) >= 2
    assert kinds.count(ProfileKind.VFD) >= 2
    assert ProfileKind.ANALOG_INPUT in kinds
    for profile in profiles.values():
        assert profile.manual
        assert all(p.valid_range is not None for p in profile.points), profile.name
        assert all(p.doc for p in profile.points), profile.name


MAPPED = sorted(name for name, p in library().items() if not p.sunspec)
"""Profiles with a register map (the sunspec entry's maps come from the devices themselves,
decoded by gridpilot.fieldbus.sunspec and tested in test_sunspec)."""


def test_every_profile_has_a_fixture() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(MAPPED)


def test_sunspec_profile_turns_on_discovery() -> None:
    device = DeviceConfig.model_validate({"id": "inverter", "host": "h", "profile": "sunspec"})
    assert device.sunspec is not None
    assert device.sunspec.base == "auto"
    assert device.points == ()
    narrowed = DeviceConfig.model_validate(
        {"id": "inverter", "host": "h", "profile": "sunspec", "sunspec": {"models": [103]}}
    )
    assert narrowed.sunspec is not None
    assert narrowed.sunspec.models == (103,)


@pytest.mark.parametrize("name", MAPPED)
def test_profile_decodes_its_fixture(name: str) -> None:
    fixture = _fixture(name)
    assert fixture["source"]
    device = DeviceConfig.model_validate({"id": "dev", "host": "h", "profile": name})
    readings = _decode(device, fixture["registers"])
    assert readings.invalid == ()
    assert readings.out_of_range == ()
    assert readings.faults == ()
    # Every point of the profile is in the fixture, and decodes to the expected value.
    assert set(readings.values) == set(fixture["expected"]) == set(library()[name].point_names)
    for point, expected in fixture["expected"].items():
        assert readings.values[point] == pytest.approx(expected, rel=1e-6, abs=5e-4), point


def test_every_profile_names_the_drivers_it_was_checked_against() -> None:
    for name in MAPPED:
        profile = library()[name]
        for driver in profile.confirmed_by:
            repo, _, path = driver.partition(": ")
            assert repo.count("/") == 1, (name, driver)
            assert path, (name, driver)
        # A profile checked against its manual alone says so where users read it.
        assert profile.confirmed_by or "no open-source driver" in profile.notes, name


def test_danfoss_fc102_maps_parameter_numbers_to_wire_addresses() -> None:
    fc = library()["danfoss_fc102"]
    # Register = parameter number x 10, sent as register - 1 (1-00 -> 999 in the guide).
    for point, parameter in (("running_state", 1603), ("motor_current_a", 1614)):
        assert fc.point(point).address == parameter * 10 - 1  # type: ignore[union-attr]
    # Points whose conversion index was not verified are not in the profile.
    assert not {"power_w", "energy_wh", "output_frequency_hz"} & set(fc.point_names)


def test_janitza_umg604_reads_the_frequently_required_block_as_float32() -> None:
    umg = library()["janitza_umg604"]
    assert {p.table for p in umg.points} == {Table.HOLDING}
    assert {p.type.value for p in umg.points} == {"float32"}
    assert all(p.word_order.value == "big" for p in umg.points)
    assert umg.point("voltage_l1_v").address == 19000  # type: ignore[union-attr]
    assert umg.point("active_power_w").address == 19026  # type: ignore[union-attr]
    assert umg.point("energy_import_wh").address == 19068  # type: ignore[union-attr]
    assert umg.point("energy_export_wh").address == 19076  # type: ignore[union-attr]


def test_em24_profile_is_the_ethernet_map() -> None:
    em24 = library()["carlo_gavazzi_em24"]
    assert "Ethernet" in em24.model
    assert "RS-485" in em24.notes  # says the serial models' map differs
    assert em24.point("frequency_hz").address == 0x0033  # type: ignore[union-attr]
    assert em24.point("energy_export_wh").address == 0x004E  # type: ignore[union-attr]


def test_sdm630_addresses_are_zero_based() -> None:
    sdm = library()["eastron_sdm630"]
    # The manual's 30001 is input register 0; 30073 (import kWh) is 72; 30343 is 342.
    assert (sdm.point("voltage_l1_v").address, sdm.point("voltage_l1_v").table) == (0, Table.INPUT)  # type: ignore[union-attr]
    assert sdm.point("energy_import_wh").address == 72  # type: ignore[union-attr]
    assert sdm.point("energy_total_wh").address == 342  # type: ignore[union-attr]


def test_adam6017_fixture_through_analog_scaling_shows_mid_range_and_wire_break() -> None:
    fixture = _fixture("advantech_adam6017")
    device = DeviceConfig.model_validate(
        {
            "id": "plant_io",
            "host": "h",
            "profile": "advantech_adam6017",
            "points": [
                {
                    "point": "ai0_current_ma",
                    "as": "supply_pressure_pa",
                    "analog": {"signal": "4-20mA", "low": 0, "high": 1_000_000},
                },
                {
                    "point": "ai3_current_ma",
                    "as": "return_pressure_pa",
                    "analog": {"signal": "4-20mA", "low": 0, "high": 1_000_000},
                },
            ],
        }
    )
    # The renamed points lost the profile's range (it was in mA).
    assert all(p.valid_range is None for p in device.points)
    readings = _decode(device, fixture["registers"])
    assert readings.values == {"supply_pressure_pa": pytest.approx(500_000.0)}  # 12 mA
    (fault,) = readings.faults
    assert (fault.point, fault.kind) == ("return_pressure_pa", LoopFault.WIRE_BREAK)


def test_selection_overrides_and_own_points() -> None:
    device = DeviceConfig.model_validate(
        {
            "id": "meter",
            "host": "h",
            "profile": "eastron_sdm630",
            "points": [
                "active_power_w",
                {"point": "frequency_hz", "valid_range": [49, 51]},
                {"point": "my_extra_w", "table": "input", "address": 300, "type": "float32"},
            ],
        }
    )
    assert [p.point for p in device.points] == ["active_power_w", "frequency_hz", "my_extra_w"]
    assert device.profile == "eastron_sdm630"
    assert device.point("frequency_hz").valid_range == (49.0, 51.0)  # type: ignore[union-attr]
    assert device.point("frequency_hz").type.value == "float32"  # type: ignore[union-attr]
    assert device.point("frequency_hz").address == 70  # type: ignore[union-attr]


def test_profile_defaults_apply_where_the_site_sets_nothing() -> None:
    fc = DeviceConfig.model_validate({"id": "fan", "host": "h", "profile": "danfoss_fc102"})
    assert fc.max_gap == 0
    own = DeviceConfig.model_validate(
        {"id": "fan", "host": "h", "profile": "danfoss_fc102", "max_gap": 4}
    )
    assert own.max_gap == 4


def test_expansion_is_idempotent() -> None:
    entry = {
        "id": "io",
        "host": "h",
        "profile": "advantech_adam6017",
        "points": [
            {
                "point": "ai1_current_ma",
                "as": "outdoor_temperature_degc",
                "analog": {"signal": "4-20mA", "low": -30, "high": 70},
            }
        ],
    }
    once = expand_device(entry)
    twice = expand_device(once.device)
    assert once.problems == twice.problems == ()
    assert once.device == twice.device


SITE = """\
site: {id: plant}
devices:
  - id: meter
    host: 127.0.0.1
    profile: PROFILE
  - id: io
    host: 127.0.0.1
    profile: advantech_adam6017
    points:
      - ai0_current_ma
      - {point: ai9_current_ma}
"""


def test_unknown_profile_is_reported_at_its_line_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config_text(SITE.replace("PROFILE", "eastron_sdm360"), "site.yaml")
    messages = [str(issue) for issue in caught.value.issues]
    assert messages[0].startswith(
        "site.yaml:5: devices[0].profile: unknown profile 'eastron_sdm360'"
    )
    for name in library():
        assert name in messages[0]
    # ... and the unknown point of the other device at its own line, with the profile's points.
    assert messages[1].startswith(
        "site.yaml:11: devices[1].points[1].point: profile 'advantech_adam6017' has no point "
        "'ai9_current_ma'"
    )
    assert "ai7_current_ma" in messages[1]
    assert len(messages) == 2


def test_problems_of_expanded_points_name_the_entry_that_caused_them() -> None:
    text = """\
site: {id: plant}
devices:
  - id: meter
    host: 127.0.0.1
    profile: eastron_sdm630
    points:
      - active_power_w
      - {point: frequency_hz, valid_range: [51, 49]}
      - {point: other_w, table: input, address: 53, type: float32}
"""
    with pytest.raises(ConfigError) as caught:
        validate_config_text(text, "site.yaml")
    messages = sorted(str(issue) for issue in caught.value.issues)
    assert messages == [
        "site.yaml:8: devices[0].points[1]: valid_range [51.0, 49.0] has min above max",
        "site.yaml:9: devices[0].points[2].address: point 'other_w' (input 53..54) overlaps "
        "point 'active_power_w' (input 52..53) at points[0]",
    ]


def test_example_site_file_passes_config_check() -> None:
    result = CliRunner().invoke(cli, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    config = validate_config_text(EXAMPLE.read_text(), str(EXAMPLE))
    io = config.device("analog_io")
    assert io is not None
    assert io.profile == "advantech_adam6017"
    scaled = {p.point for p in io.points if p.analog is not None}
    assert scaled == {"outdoor_temperature_degc", "outdoor_humidity_pct", "irradiance_wm2"}


def test_devices_list_shows_the_library_and_a_profiles_points() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["devices", "list"])
    assert listing.exit_code == 0, listing.output
    for profile in library().values():
        line = next(row for row in listing.output.splitlines() if row.startswith(profile.name))
        assert profile.vendor in line
        assert profile.model in line
        assert str(profile.kind) in line
        assert f" {len(profile.points)} " in line
        assert profile.manual in line
    detail = runner.invoke(cli, ["devices", "list", "eastron_sdm630"])
    assert detail.exit_code == 0, detail.output
    assert "energy_import_wh" in detail.output
    assert "30073 Import Wh since last reset" in detail.output
    assert "confirmed by: nmakel/sdm_modbus: src/sdm_modbus/sdm.py" in detail.output
    as_json = json.loads(runner.invoke(cli, ["devices", "list", "--json"]).output)
    assert {p["name"] for p in as_json} == set(library())
    missing = runner.invoke(cli, ["devices", "list", "no_such"])
    assert missing.exit_code == 2
    assert "eastron_sdm630" in missing.output
