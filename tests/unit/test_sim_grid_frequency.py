"""The simulated grid's frequency a test can hold, as the meter and the SunSpec inverter
measure it; the inverter's own frequency droop (SunSpec 711), its trips and its own
watt-var (SunSpec 712)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gridpilot.model import Table
from gridpilot.sim.building import GRID_METER, PV_INVERTER, Building, BuildingParams
from gridpilot.sim.image import WriteRejectedError, saturating_encode
from gridpilot.sim.physics import MeterParams, PvParams
from gridpilot.sim.sunspec_devices import BASIC_INVERTER_PLAN, INVERTER_PLAN, SunSpecImage

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


# ---------------------------------------------------------------------------- SunSpec 711

CATEGORY_B = {"DbOf": 0.036, "DbUf": 0.036, "KOf": 0.05, "KUf": 0.05, "RspTms": 5.0, "PMin": 0.0}


def write(image: SunSpecImage, building: Building, values: dict[str, float]) -> None:
    """A client's write, point by point, handled as ``SimulatedSite`` does."""
    points = {p.name: p for p in image.device.points}
    for key, value in values.items():
        spec = points[key].spec
        image.write(Table.HOLDING, spec.address, saturating_encode(spec, value))
        if image.plan.on_point is not None:
            image.plan.on_point(image, key)
        image.plan.on_write(image, building)


def sixty_hz_building() -> Building:
    meter = MeterParams(nominal_frequency_hz=60.0, frequency_noise_hz=0.0, frequency_swing_hz=0.0)
    return Building(NOON, BuildingParams(meter=meter))


def test_711_control_written_adopted_and_enabled_droops_the_output() -> None:
    building = sixty_hz_building()
    image = SunSpecImage(INVERTER_PLAN)
    assert INVERTER_PLAN.values(building, image)["121.ECPNomHz"] == 60.0
    points = {p.name: p for p in image.device.points}
    spec = points["711.Ctl[1].KOf"].spec
    with pytest.raises(WriteRejectedError, match="read-only"):
        image.write(Table.HOLDING, spec.address, saturating_encode(spec, 0.05))
    write(image, building, {f"711.Ctl[2].{k}": v for k, v in CATEGORY_B.items()})
    assert image.value("711.Ctl[1].KOf") == 0.03  # the factory control until adopted
    write(image, building, {"711.AdptCtlReq": 2.0})
    assert image.value("711.AdptCtlRslt") == 1.0  # COMPLETED
    assert (image.value("711.Ctl[1].DbOf"), image.value("711.Ctl[1].KOf")) == (0.036, 0.05)
    assert not building.state.pv.freq_droop_mode.enabled
    write(image, building, {"711.Ena": 1.0})
    mode = building.state.pv.freq_droop_mode
    assert (mode.enabled, mode.db_of_hz, mode.k_of, mode.response_s) == (True, 0.036, 0.05, 5.0)
    building.set_grid_frequency(60.0)
    building.advance(2.0)
    before = building.state.pv.ac_power_w
    assert before > 60_000.0
    building.set_grid_frequency(60.5)
    building.advance(60.0)  # the response time many times over; the sun hardly moves
    # 0.464 Hz over the band at 5 % droop: 15.47 % of the rating less than before.
    assert building.state.pv.ac_power_w == pytest.approx(before - 15_467.0, abs=200.0)
    assert building.state.pv.droop_p_pre_pct == pytest.approx(before / 1000.0, abs=0.01)
    building.set_grid_frequency(60.0)
    building.advance(60.0)
    assert building.state.pv.droop_p_pre_pct is None  # let go
    assert building.state.pv.droop_pct == 100.0
    assert building.state.pv.ac_power_w == pytest.approx(before, abs=500.0)


def test_711_a_control_that_is_no_droop_is_not_adopted() -> None:
    building = sixty_hz_building()
    image = SunSpecImage(INVERTER_PLAN)
    write(image, building, {"711.Ctl[2].KOf": 0.001})  # 0.1 % droop: not a droop
    write(image, building, {"711.AdptCtlReq": 2.0})
    assert image.value("711.AdptCtlRslt") == 2.0  # FAILED
    assert image.value("711.Ctl[1].KOf") == 0.03


def test_the_factory_711_control_droops_harder_than_category_b() -> None:
    building = sixty_hz_building()
    image = SunSpecImage(INVERTER_PLAN)
    write(image, building, {"711.Ena": 1.0})
    building.set_grid_frequency(60.0)
    building.advance(2.0)
    before = building.state.pv.ac_power_w
    building.set_grid_frequency(60.5)
    building.advance(60.0)
    # (60.5 - 60.017) / (60 x 0.03) = 26.8 % of the rating.
    assert building.state.pv.ac_power_w == pytest.approx(before - 26_833.0, abs=200.0)
    assert not SunSpecImage(BASIC_INVERTER_PLAN).has("711.Ena")


# ---------------------------------------------------------------------------- trips


@pytest.mark.parametrize(("v_pu", "hz"), [(1.12, 60.0), (0.85, 60.0), (1.0, 61.5), (1.0, 58.0)])
def test_the_inverter_trips_outside_its_limits_and_reconnects_after_its_delay(
    v_pu: float, hz: float
) -> None:
    meter = MeterParams(
        nominal_frequency_hz=60.0, frequency_noise_hz=0.0, frequency_swing_hz=0.0,
        tap_offset_v=0.0, droop_v_per_kw=0.0, voltage_noise_v=0.0,
    )  # fmt: skip
    building = Building(NOON, BuildingParams(meter=meter, pv=PvParams(reconnect_delay_s=20.0)))
    image = SunSpecImage(BASIC_INVERTER_PLAN)
    assert building.state.pv.ac_power_w > 60_000.0
    building.set_grid_voltage(v_pu)
    building.set_grid_frequency(hz)
    building.advance(2.0)
    building.advance(2.0)  # the inverter acts on what it measured the step before
    pv = building.state.pv
    assert (pv.tripped, pv.ac_power_w, pv.reactive_power_var) == (True, 0.0, 0.0)
    values = BASIC_INVERTER_PLAN.values(building, image)
    assert (values["701.ConnSt"], values["103.St"], values["701.W"]) == (0.0, 1.0, 0.0)
    building.set_grid_voltage(1.0)
    building.set_grid_frequency(60.0)
    building.advance(1.0)
    building.advance(15.0)
    assert building.state.pv.tripped  # its own 20 s are not over
    building.advance(10.0)
    assert not building.state.pv.tripped
    assert building.state.pv.ac_power_w > 60_000.0
    assert BASIC_INVERTER_PLAN.values(building, image)["701.ConnSt"] == 1.0


# ---------------------------------------------------------------------------- SunSpec 712


def test_712_watt_var_written_adopted_and_enabled_holds_q_on_p() -> None:
    building = sixty_hz_building()
    image = SunSpecImage(INVERTER_PLAN)
    category_b = {"712.Crv[2].ActPt": 3.0}
    for k, (w, q) in enumerate(((20.0, 0.0), (50.0, 0.0), (100.0, -44.0)), start=1):
        category_b |= {f"712.Crv[2].Pt[{k}].W": w, f"712.Crv[2].Pt[{k}].Var": q}
    write(image, building, category_b)
    assert image.value("712.Crv[1].Pt[3].Var") == -25.0  # Category A until adopted
    write(image, building, {"712.AdptCrvReq": 2.0})
    assert image.value("712.AdptCrvRslt") == 1.0
    assert image.value("712.Crv[1].Pt[3].Var") == -44.0
    write(image, building, {"712.Ena": 1.0})
    mode = building.state.pv.reactive_mode
    assert (mode.kind, mode.curve) == (
        "watt_var", ((20_000.0, 0.0), (50_000.0, 0.0), (100_000.0, -44_000.0))
    )  # fmt: skip
    building.advance(120.0)
    p = building.state.pv.ac_power_w
    assert p > 60_000.0
    assert building.state.pv.reactive_power_var == pytest.approx(
        -44_000.0 * (p - 50_000.0) / 50_000.0, abs=100.0
    )
    # The inverter's 704 limit at 40 %: under half the rating, no reactive power.
    write(image, building, {"704.WMaxLimPctEna": 1.0, "704.WMaxLimPct": 40.0})
    building.advance(120.0)
    assert building.state.pv.ac_power_w == pytest.approx(40_000.0)
    assert building.state.pv.reactive_power_var == pytest.approx(0.0, abs=1.0)
    # 122 WAval: what the sun would give, not what the limit lets out.
    assert INVERTER_PLAN.values(building, image)["122.WAval"] == pytest.approx(p, rel=0.01)
    # Volt-var enabled as well takes precedence (one reactive mode at a time).
    write(image, building, {"705.Ena": 1.0})
    assert building.state.pv.reactive_mode.kind == "volt_var"
