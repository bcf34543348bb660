"""Pure pieces of the 2030.5 client: the server clock estimate, the bus messages, scaling
of powers into 2030.5's Int16 encodings, and the same-origin rule for links."""

from __future__ import annotations

import httpx
import pytest

from gridpilot.ieee2030_5.client import (
    HttpSession,
    ServerRefusedError,
    Snapshot,
    _active_power,
    _ClockOffset,
    controls_message,
)
from gridpilot.ieee2030_5.controls import ControlValue
from gridpilot.ieee2030_5.schedule import Effective, ScheduleState, StepResult

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
