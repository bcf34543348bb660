"""The site file's ieee2030_5 section."""

from __future__ import annotations

import pytest

from gridpilot.config import ConfigError, validate_config_text

BASE = """
site: {id: plant}
ieee2030_5:
  server: https://127.0.0.1:8443
  cert_file: pki/client.pem
  key_file: pki/client.key
  ca_file: pki/ca.pem
"""


def test_minimal_section_and_defaults() -> None:
    cfg = validate_config_text(BASE + "  pin: 123455\n")
    section = cfg.ieee2030_5
    assert section is not None
    assert section.dcap_path == "/dcap"
    assert section.pin == 123455
    assert section.poll_rate_s is None
    assert section.site_meter is None
    assert validate_config_text("site: {id: plant}\n").ieee2030_5 is None


def test_mirrors_and_nameplate() -> None:
    cfg = validate_config_text(
        BASE
        + "  site_meter: {device: meter, points: {w: grid_power_w, v: voltage_v}}\n"
        + "  der_mirrors: [{device: inverter}]\n"
        + "  der: {type: 4, max_w: 10000, max_var: 4400}\n"
    )
    section = cfg.ieee2030_5
    assert section is not None
    assert section.site_meter is not None
    assert section.site_meter.points == {"w": "grid_power_w", "v": "voltage_v"}
    assert section.der_mirrors[0].points == {"w": "active_power_w"}
    assert section.der is not None
    assert section.der.max_w == 10000


@pytest.mark.parametrize(
    ("extra", "server", "message"),
    [
        ("", "http://127.0.0.1:8443", "https://host:port"),
        ("", "https://127.0.0.1:8443/dcap", "dcap_path"),
        ("  pin: 123455\n  pin_file: pin.txt\n", None, "PIN once"),
        ("  pin: 1234567\n", None, "pin"),
        ("  poll_rate_s: 0\n", None, "poll_rate_s"),
        ("  site_meter: {device: meter, points: {kw: p_w}}\n", None, "kw"),
    ],
)
def test_refused(extra: str, server: str | None, message: str) -> None:
    text = BASE + extra
    if server is not None:
        text = text.replace("https://127.0.0.1:8443", server)
    with pytest.raises(ConfigError, match=message):
        validate_config_text(text)
