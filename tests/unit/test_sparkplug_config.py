"""The sparkplug: and homeassistant: sections of a site file, through the real loader."""

from __future__ import annotations

import pytest

from gridpilot.config import ConfigError, validate_config_text

SITE = """\
site: {id: plant}
devices:
  - id: meter
    host: 10.0.0.5
    points: [{point: active_power_w, address: 0}]
sparkplug:
  group: Plant A
  host_id: gridpilot
  devices:
    - {edge_node: edge-1, id: edge1}
    - edge_node: edge-1
      device: Inverter-7
      id: pv_inverter
      points: {"Grid/Frequency": grid_frequency_hz}
homeassistant: {enabled: true}
"""


def test_a_sparkplug_site_file_loads() -> None:
    config = validate_config_text(SITE, "site.yaml")
    assert config.sparkplug is not None
    assert config.sparkplug.group == "Plant A"
    mapping = config.sparkplug.mapping("edge-1", "Inverter-7")
    assert mapping is not None
    assert mapping.id == "pv_inverter"
    assert mapping.points == {"Grid/Frequency": "grid_frequency_hz"}
    assert config.sparkplug.mapping("edge-1", None) is not None
    assert config.homeassistant.enabled
    assert config.homeassistant.discovery_prefix == "homeassistant"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "id: pv_inverter",
            "id: meter",
            "site.yaml:13: sparkplug.devices[1].id: device 'meter' is polled",
        ),
        ("id: pv_inverter", "id: edge1", "already mapped by sparkplug.devices[0]"),
        ("grid_frequency_hz", "grid_frequency", "has no unit suffix"),
        ("group: Plant A", "group: Plant/A", "sparkplug.group"),
        ("{enabled: true}", "{enabled: true, discovery_prefix: 'ha/#'}", "discovery_prefix"),
    ],
)
def test_mistakes_are_reported_at_their_line(old: str, new: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config_text(SITE.replace(old, new, 1), "site.yaml")
    assert expected in str(caught.value)
