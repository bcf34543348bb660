"""The simulated grid's frequency a test can hold, as the meter and the SunSpec inverter
measure it (frequency droop is tested against it end to end)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gridpilot.sim.building import GRID_METER, PV_INVERTER, Building, BuildingParams
from gridpilot.sim.physics import MeterParams
from gridpilot.sim.sunspec_devices import BASIC_INVERTER_PLAN, SunSpecImage

NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def test_a_held_frequency_is_what_meter_and_inverter_measure_then_the_swing_returns() -> None:
    params = BuildingParams(meter=MeterParams(nominal_frequency_hz=60.0, frequency_noise_hz=0.0))
    building = Building(NOON, params)
    building.advance(200.0)
    swinging = building.device_values(GRID_METER)["frequency_hz"]
    assert swinging != 60.0  # the slow swing of the nominal frequency
    assert swinging == pytest.approx(60.0, abs=0.02)
    building.set_grid_frequency(60.5)
    building.advance(1.0)
    assert building.device_values(GRID_METER)["frequency_hz"] == 60.5
    assert building.device_values(PV_INVERTER)["ac_frequency_hz"] == 60.5
    values = BASIC_INVERTER_PLAN.values(building, SunSpecImage(BASIC_INVERTER_PLAN))
    assert (values["701.Hz"], values["103.Hz"]) == (60.5, 60.5)
    building.set_grid_frequency(None)
    building.advance(1.0)
    assert building.device_values(GRID_METER)["frequency_hz"] != 60.5


def test_the_noise_stays_on_a_held_frequency() -> None:
    building = Building(NOON, BuildingParams(meter=MeterParams(frequency_noise_hz=0.004)))
    building.set_grid_frequency(49.8)
    readings = []
    for _ in range(50):
        building.advance(1.0)
        readings.append(building.device_values(GRID_METER)["frequency_hz"])
    assert sum(readings) / len(readings) == pytest.approx(49.8, abs=0.003)
    assert len(set(readings)) > 1


@pytest.mark.parametrize("hz", [39.9, 70.1])
def test_a_frequency_no_grid_runs_at_is_refused(hz: float) -> None:
    with pytest.raises(ValueError, match=r"outside 40\.\.70"):
        Building(NOON).set_grid_frequency(hz)
