"""Serial buses and Modbus RTU devices in the site file, and ``gridpilot config check``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridpilot.cli.main import cli
from gridpilot.config import ConfigError, DeviceProtocol, validate_config_text

RTU_SITE = """\
site:
  id: plant
serial_buses:
  - id: rs485-1
    port: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0
    baudrate: 9600
    parity: N
    stopbits: 2
    frame_gap: 0.005
devices:
  - id: meter-1
    protocol: modbus_rtu
    bus: rs485-1
    unit_id: 1
    points:
      - {point: active_power_w, address: 12, table: input, type: float32}
  - id: meter-2
    protocol: modbus_rtu
    bus: rs485-1
    unit_id: 2
    points:
      - {point: active_power_w, address: 12, table: input, type: float32}
  - id: vfd-1
    protocol: modbus_rtu_tcp
    host: 192.0.2.10
    port: 4001
    unit_id: 1
    points:
      - {point: speed_rpm, address: 3}
"""


def test_serial_buses_and_rtu_devices_load() -> None:
    config = validate_config_text(RTU_SITE, "plant.yaml")
    bus = config.serial_buses[0]
    assert (bus.id, bus.baudrate, bus.bytesize, bus.parity, bus.stopbits) == (
        "rs485-1",
        9600,
        8,
        "N",
        2,
    )
    assert bus.frame_gap == timedelta(milliseconds=5)
    assert config.serial_bus("rs485-1") is bus
    meter = config.devices[1]
    assert (meter.protocol, meter.bus, meter.unit_id) == (DeviceProtocol.MODBUS_RTU, "rs485-1", 2)
    vfd = config.devices[2]
    assert (vfd.protocol, vfd.host, vfd.port) == (DeviceProtocol.MODBUS_RTU_TCP, "192.0.2.10", 4001)
    assert all(d.protocol.is_modbus for d in config.devices)
    assert not DeviceProtocol.MQTT.is_modbus


def test_defaults_are_the_modbus_serial_line() -> None:
    text = RTU_SITE.replace(
        "    baudrate: 9600\n    parity: N\n    stopbits: 2\n    frame_gap: 0.005\n", ""
    )
    bus = validate_config_text(text).serial_buses[0]
    assert (bus.baudrate, bus.bytesize, bus.parity, bus.stopbits, bus.frame_gap) == (
        19200,
        8,
        "E",
        1,
        None,
    )


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        validate_config_text(text, "plant.yaml")
    return [str(issue) for issue in error.value.issues]


def test_unknown_bus_is_named_with_its_line() -> None:
    text = RTU_SITE.replace("    bus: rs485-1\n    unit_id: 2", "    bus: rs485-2\n    unit_id: 2")
    assert issues_of(text) == [
        "plant.yaml:19: devices[1].bus: no serial bus 'rs485-2' (serial buses: rs485-1)"
    ]


def test_duplicate_unit_on_one_bus_is_refused() -> None:
    text = RTU_SITE.replace("    unit_id: 2\n", "    unit_id: 1\n")
    assert issues_of(text) == [
        "plant.yaml:20: devices[1].unit_id: unit_id 1 on bus 'rs485-1' is already device "
        "'meter-1' (devices[0]); each unit on a line needs its own id"
    ]


def test_same_unit_on_another_line_is_fine() -> None:
    # vfd-1 is unit 1 too, behind a converter: another line.
    config = validate_config_text(RTU_SITE)
    assert [d.unit_id for d in config.devices] == [1, 2, 1]


def test_duplicate_unit_behind_one_converter_is_refused() -> None:
    text = (
        RTU_SITE
        + """\
  - id: vfd-2
    protocol: modbus_rtu_tcp
    host: 192.0.2.10
    port: 4001
    unit_id: 1
    points:
      - {point: speed_rpm, address: 3}
"""
    )
    (issue,) = issues_of(text)
    assert issue.startswith("plant.yaml:34: devices[3].unit_id: unit_id 1 on converter ")


def test_bus_and_port_ids_are_unique() -> None:
    text = RTU_SITE.replace(
        "devices:\n",
        "  - id: rs485-1\n    port: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0\ndevices:\n",
        1,
    )
    issues = issues_of(text)
    assert (
        "plant.yaml:10: serial_buses[1].id: serial bus id 'rs485-1' is already used by "
        in (issues[0])
    )
    assert issues[1].startswith("plant.yaml:11: serial_buses[1].port: port ")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("    bus: rs485-1\n    unit_id: 1\n", "    unit_id: 1\n"), "needs bus"),
        (("    unit_id: 2\n", "    unit_id: 0\n"), "RTU units are 1..247"),
        (("    unit_id: 2\n", "    unit_id: 248\n"), "RTU units are 1..247"),
        (("    port: 4001\n", "    port: 4001\n    bus: rs485-1\n"), "bus is for modbus_rtu"),
        (("    parity: N\n", "    parity: X\n"), "serial_buses[0].parity"),
        (("    frame_gap: 0.005\n", "    frame_gap: 2\n"), "must be between 0 and 1 s"),
    ],
)
def test_rtu_mistakes_are_reported(change: tuple[str, str], expected: str) -> None:
    text = RTU_SITE.replace(*change, 1)
    assert text != RTU_SITE
    issues = issues_of(text)
    assert any(expected in issue for issue in issues), issues


def test_config_check_passes_an_rtu_site(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(RTU_SITE)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK (site plant, 3 devices" in result.output


def test_config_check_rejects_an_unknown_bus(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(RTU_SITE.replace("bus: rs485-1\n    unit_id: 2", "bus: rs458\n    unit_id: 2"))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:19: devices[1].bus: no serial bus 'rs458'" in result.stderr
