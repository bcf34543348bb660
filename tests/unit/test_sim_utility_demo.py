"""The demo's utility (sim/utility_demo.py): the plan's checks, the program it serves, the
site file sections it writes (valid as the site file's models), and the building prepared
so that the PV surplus is exported until the utility limits it."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gridpilot.config.ieee2030_5 import CsipClientConfig
from gridpilot.control.grid_operator import GridOperatorParams
from gridpilot.ieee2030_5.identity import has_valid_check_digit
from gridpilot.ieee2030_5.models import EventStatusType
from gridpilot.sim.building import Building
from gridpilot.sim.utility_demo import DemoUtility, DemoUtilityPlan, grid_operator_section


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"export_limit_w": -1.0}, "export limit must be 0..32767000 W"),
        ({"export_limit_w": float("nan")}, "export limit must be 0..32767000 W"),
        ({"event_in_s": -5.0}, "must start now or later"),
        ({"event_duration_s": 0.5}, "must last at least 1 s"),
    ],
)
def test_the_plan_refuses_what_2030_5_cannot_carry(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoUtilityPlan(**kwargs)


async def test_the_utility_serves_the_event_and_writes_the_client_section(tmp_path: Path) -> None:
    plan = DemoUtilityPlan(export_limit_w=45_000.0, event_in_s=90.0, event_duration_s=300.0)
    async with DemoUtility(tmp_path / "pki", plan) as utility:
        server = utility.server
        assert utility.event_mrid is not None
        assert utility.event_start is not None
        assert utility.event_end is not None
        assert 89 <= utility.event_start - server.now_s() <= 90
        assert utility.event_end - utility.event_start == 300
        assert server.event_status(utility.event_mrid) is EventStatusType.Scheduled
        assert server.url.startswith("https://127.0.0.1:")
        # keys readable by their owner only
        for key in (utility.pki.client_key, utility.pki.server_key, utility.pki.ca_key):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key

        section = CsipClientConfig.model_validate(utility.client_section(pki_dir="pki"))
        assert section.server == server.url
        assert section.cert_file == Path("pki/client.crt")
        assert section.pin is not None
        assert has_valid_check_digit(section.pin)
        assert section.site_meter is not None
        assert section.site_meter.device == "grid_meter"
        assert [m.device for m in section.der_mirrors] == ["pv_inverter"]

        lines = utility.banner_lines(-32_000.0, datetime(2026, 7, 4, 10, 30, tzinfo=UTC))
        assert f"event {utility.event_mrid[:8]}" in lines[1]
        assert "export limit 45 kW (opModExpLimW)" in lines[1]
        assert "exports 32 kW at 2026-07-04 10:30" in lines[2]
        night = utility.banner_lines(80_000.0, datetime(2026, 11, 27, 2, 0, tzinfo=UTC))
        assert "imports 80 kW, so the limit will not bite; try --sim-start" in night[2]
        # before anything registered, the summary says so
        assert utility.summary()[0].startswith("Utility server: the site did NOT register")


def test_prepare_adds_the_grid_operator_and_fills_the_battery() -> None:
    building = Building(datetime(2026, 7, 4, 10, 30, tzinfo=UTC))
    control: dict[str, object] = {"limits": []}
    DemoUtility(Path("unused"), DemoUtilityPlan()).prepare(building, control)
    params = GridOperatorParams.model_validate(control["grid_operator"])
    assert params.battery_soc_max_pct == 90.0
    assert str(params.pv_limit) == "pv_inverter.power_limit_pct"
    assert control["limits"] == [{"point": "pv_inverter.power_limit_pct", "min": 0, "max": 100}]
    assert building.state.battery.soc_pct == 90.0
    assert GridOperatorParams.model_validate(grid_operator_section()) == params


def test_the_battery_soc_is_set_only_within_its_range() -> None:
    building = Building(datetime(2026, 7, 4, 10, 30, tzinfo=UTC))
    building.set_battery_soc(42.0)
    assert building.state.battery.soc_pct == 42.0
    with pytest.raises(ValueError, match=r"battery SoC 99.0 % is outside 5.0..95.0"):
        building.set_battery_soc(99.0)
