"""Pure pieces of the 2030.5 client: the server clock estimate, the bus messages, scaling
of powers into 2030.5's Int16 encodings, and the same-origin rule for links."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gridpilot.config.ieee2030_5 import CsipClientConfig
from gridpilot.ieee2030_5.client import (
    CsipClient,
    HttpSession,
    Ieee2030_5Error,
    ServerRefusedError,
    Snapshot,
    _active_power,
    _ClockOffset,
    controls_message,
)
from gridpilot.ieee2030_5.controls import ControlValue
from gridpilot.ieee2030_5.identity import lfdi_of_pem
from gridpilot.ieee2030_5.schedule import Effective, ScheduleState, StepResult
from gridpilot.ieee2030_5.tls import PkiFiles, make_test_pki

T = 1_800_000_000.0


def test_clock_offset_takes_the_lower_bound_and_tightens() -> None:
    clock = _ClockOffset()
    assert clock.value is None
    # Server said 1000 for a request sent at local 10.2, answered at 10.4: the offset is in
    # [1000 - 10.4, 1001 - 10.2] = [989.6, 990.8].
    clock.add(1000, 10.2, 10.4)
    assert clock.value == pytest.approx(989.6)
    # A later sample narrows it: [1005 - 14.9, 1006 - 14.85] = [990.1, 991.15].
    clock.add(1005, 14.85, 14.9)
    assert clock.value == pytest.approx(990.1)
    assert clock.high == pytest.approx(990.8)
    # A sample outside the bounds: the server's clock moved; start over from it.
    clock.add(5000, 20.0, 20.1)
    assert clock.value == pytest.approx(4979.9)


@pytest.mark.parametrize(
    ("watts", "value", "multiplier"),
    [(0, 0, 0), (5000, 5000, 0), (32767, 32767, 0), (50_000, 5000, 1), (-1_500_000, -15000, 2)],
)
def test_active_power_fits_int16(watts: float, value: int, multiplier: int) -> None:
    power = _active_power(watts)
    assert (power.value, power.multiplier) == (value, multiplier)


def _snapshot(next_change: float | None) -> Snapshot:
    controls = {
        "opModExpLimW": Effective(ControlValue(5000.0, "W"), "event", "A1", 1, "/derp/1"),
        "opModConnect": Effective(ControlValue(True), "default", "D1", 1, "/derp/1"),
    }
    result = StepResult(ScheduleState("x"), controls, [], [], next_change)
    return Snapshot(now=T, result=result, status={})


def test_controls_message_shape_and_valid_until() -> None:
    message = controls_message(_snapshot(None), publish_interval_s=60)
    assert message == {
        "ts": "2027-01-15T08:00:00.000Z",
        "source": "ieee2030_5",
        "valid_until": "2027-01-15T08:02:00.000Z",  # two publish intervals
        "controls": {
            "opModConnect": {"value": True, "source": "default", "mrid": "D1", "primacy": 1},
            "opModExpLimW": {
                "value": 5000.0,
                "unit": "W",
                "source": "event",
                "mrid": "A1",
                "primacy": 1,
            },
        },
    }
    # A change due in 30 s: stale 5 s after it, not two minutes later.
    soon = controls_message(_snapshot(T + 30), publish_interval_s=60)
    assert soon["valid_until"] == "2027-01-15T08:00:35.000Z"


def test_links_to_another_host_are_not_followed() -> None:
    session = HttpSession("https://127.0.0.1:8443", httpx.AsyncClient())
    assert session.url("/derp/1") == "https://127.0.0.1:8443/derp/1"
    assert session.url("https://127.0.0.1:8443/rsp") == "https://127.0.0.1:8443/rsp"
    for href in ("https://example.com/rsp", "http://127.0.0.1:8443/rsp", "//evil:1/x"):
        with pytest.raises(ServerRefusedError, match="not followed"):
            session.url(href)


def _section(pki: PkiFiles, **extra: object) -> CsipClientConfig:
    return CsipClientConfig.model_validate(
        {
            "server": "https://127.0.0.1:8443",
            "cert_file": pki.client_cert,
            "key_file": pki.client_key,
            "ca_file": pki.ca_cert,
            **extra,
        }
    )


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    pki.client_key.chmod(0o644)
    with pytest.raises(Ieee2030_5Error, match="chmod 600"):
        CsipClient(_section(pki), base_dir=tmp_path)


def test_pin_from_a_private_file_or_the_environment(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    pin_file = tmp_path / "pin"
    pin_file.write_text("123455\n", encoding="utf-8")
    pin_file.chmod(0o600)
    client = CsipClient(_section(pki, pin_file="pin"), base_dir=tmp_path)
    assert client.pin == 123455
    assert client.lfdi == lfdi_of_pem(pki.client_cert.read_bytes())
    env = CsipClient(_section(pki, pin_env="PIN"), base_dir=tmp_path, environ={"PIN": "111115"})
    assert env.pin == 111115
    pin_file.chmod(0o644)
    with pytest.raises(Ieee2030_5Error, match="readable by others"):
        CsipClient(_section(pki, pin_file="pin"), base_dir=tmp_path)
    with pytest.raises(Ieee2030_5Error, match="not set"):
        CsipClient(_section(pki, pin_env="NOPE"), base_dir=tmp_path, environ={})
