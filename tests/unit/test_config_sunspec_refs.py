"""Control settings naming points of a SunSpec device: its points are found at discovery, so
the site file is checked for a SunSpec point name of a known (and selected) model."""

from __future__ import annotations

import pytest

from gridpilot.config import ConfigError, validate_config_text
from gridpilot.control.base import PointRef

SITE = """
site: {{id: hq}}
devices:
  - id: inverter
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1502
    unit_id: 1
    sunspec: {sunspec}
control:
  volt_var:
    mode: setpoint
    voltage: {voltage}
    nominal_voltage_v: 230
    rated_va: 100000
    var_setpoint: inverter.m704_varset_var
    enable: {{inverter.m704_varsetena_state: 1}}
"""


def site(voltage: str = "inverter.m701_lnv_v", sunspec: str = "{base: 40000}") -> str:
    return SITE.format(voltage=voltage, sunspec=sunspec)


def test_sunspec_point_names_of_known_models_are_accepted() -> None:
    config = validate_config_text(site())
    assert config.control is not None
    assert config.control.volt_var is not None
    assert config.control.volt_var.voltage == PointRef("inverter", "m701_lnv_v")


@pytest.mark.parametrize(
    ("voltage", "sunspec", "message"),
    [
        ("inverter.lnv_v", "{base: 40000}", "'lnv_v' is not a SunSpec point name"),
        ("inverter.m799_lnv_v", "{base: 40000}", "SunSpec has no model 799"),
        ("inverter.m701_lnv_v", "{models: [103, 704]}", "model 701 is not in the device's"),
        ("inverter.m701_lnv_v", "{points: [m103_w]}", "is not in the device's sunspec.points"),
    ],
)  # fmt: skip
def test_a_point_the_sunspec_device_cannot_have_is_reported_at_its_line(
    voltage: str, sunspec: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config_text(site(voltage, sunspec))
    issues = [i for i in caught.value.issues if i.field.endswith("voltage")]
    assert len(issues) == 1, caught.value.issues
    assert message in issues[0].message
    assert issues[0].line == 13
