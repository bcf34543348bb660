"""The simulated inverter's reactive power: its 704/705 controls, its own volt-var curve, the
grid voltage a test can set, and what the grid meter sees of it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.control.ieee1547 import Curve, VoltVar, volt_var_q_pu
from gridpilot.model import Table
from gridpilot.sim.building import Building, BuildingParams
from gridpilot.sim.image import WriteRejectedError, saturating_encode
from gridpilot.sim.physics import (
    MeterParams,
    PvParams,
    PvState,
    ReactiveMode,
    reactive_target_var,
    step_pv,
)
from gridpilot.sim.sunspec_devices import BASIC_INVERTER_PLAN, INVERTER_PLAN, SunSpecImage

NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
CAT_B_VAR = ((0.92, 44_000.0), (0.98, 0.0), (1.02, 0.0), (1.08, -44_000.0))


@pytest.mark.parametrize(
    ("v_ref", "v_pu", "q_var"),
    [
        (1.0, 0.85, 44_000.0),
        (1.0, 0.92, 44_000.0),
        (1.0, 0.95, 22_000.0),
        (1.0, 0.98, 0.0),
        (1.0, 1.0, 0.0),
        (1.0, 1.02, 0.0),
        (1.0, 1.05, -22_000.0),
        (1.0, 1.08, -44_000.0),
        (1.0, 1.2, -44_000.0),
        (1.02, 1.04, 0.0),
        (1.02, 1.07, -22_000.0),
    ],
)
def test_the_inverter_interpolates_the_curve_it_holds(
    v_ref: float, v_pu: float, q_var: float
) -> None:
    mode = ReactiveMode(kind="volt_var", curve=CAT_B_VAR, v_ref_pu=v_ref)
    assert reactive_target_var(mode, 50_000.0, v_pu) == pytest.approx(q_var)


def test_other_reactive_modes() -> None:
    assert reactive_target_var(ReactiveMode(), 80_000.0, 1.1) == 0.0
    assert reactive_target_var(ReactiveMode(kind="var", var=-12_000.0), 0.0, 1.0) == -12_000.0
    pf = ReactiveMode(kind="power_factor", pf=0.9, injecting=False)
    assert reactive_target_var(pf, 90_000.0, 1.0) == pytest.approx(-43_588.9, abs=0.1)


def test_reactive_power_lags_with_the_response_time_and_stays_in_the_ratings() -> None:
    params = PvParams()
    mode = ReactiveMode(kind="var", var=-50_000.0, response_s=5.0)
    state = PvState(reactive_mode=mode)
    # 800 W/m² at 25 °C: about 80 kW, leaving 60 kvar of the 100 kVA.
    stepped = step_pv(params, state, 800.0, 25.0, 5.0)
    assert stepped.reactive_power_var == pytest.approx(-45_000.0)  # 90 % in the response time
    settled = step_pv(params, stepped, 800.0, 25.0, 60.0)
    assert settled.reactive_power_var == pytest.approx(-50_000.0)
    # Beyond the var rating, or what the VA rating leaves beside P: clipped.
    too_much = PvState(reactive_mode=ReactiveMode(kind="var", var=90_000.0, response_s=0.0))
    full_sun = step_pv(params, too_much, 1000.0, 10.0, 1.0)
    headroom = (params.ac_rating_va**2 - full_sun.ac_power_w**2) ** 0.5
    assert full_sun.reactive_power_var == pytest.approx(min(params.var_rating, headroom))


def write(image: SunSpecImage, building: Building, values: dict[str, float]) -> None:
    """A client's write, point by point, handled as ``SimulatedSite`` does."""
    points = {p.name: p for p in image.device.points}
    for key, value in values.items():
        spec = points[key].spec
        image.write(Table.HOLDING, spec.address, saturating_encode(spec, value))
        if image.plan.on_point is not None:
            image.plan.on_point(image, key)
        image.plan.on_write(image, building)


def category_b(index: int) -> dict[str, float]:
    values = {f"705.Crv[{index}].ActPt": 4.0, f"705.Crv[{index}].RspTms": 5.0}
    for k, (v, q) in enumerate(((92.0, 44.0), (98.0, 0.0), (102.0, 0.0), (108.0, -44.0)), 1):
        values[f"705.Crv[{index}].Pt[{k}].V"] = v
        values[f"705.Crv[{index}].Pt[{k}].Var"] = q
    return values


def quiet_building() -> Building:
    params = BuildingParams(
        meter=MeterParams(tap_offset_v=0.0, droop_v_per_kw=0.0, voltage_noise_v=0.0)
    )
    return Building(NOON, params)


def test_705_curve_written_adopted_and_enabled_drives_the_physics() -> None:
    building = quiet_building()
    image = SunSpecImage(INVERTER_PLAN)
    # Curve 1, the active one, is read-only.
    points = {p.name: p for p in image.device.points}
    spec = points["705.Crv[1].Pt[1].V"].spec
    with pytest.raises(WriteRejectedError, match="read-only"):
        image.write(Table.HOLDING, spec.address, saturating_encode(spec, 95.0))
    write(image, building, category_b(2))
    assert image.value("705.Crv[1].Pt[1].V") == 90.0  # not adopted yet: Category A
    write(image, building, {"705.AdptCrvReq": 2.0})
    assert image.value("705.AdptCrvRslt") == 1.0  # COMPLETED
    assert image.value("705.Crv[1].Pt[1].V") == 92.0
    assert image.value("705.Crv[1].Pt[4].Var") == -44.0
    assert building.state.pv.reactive_mode.kind == "unity"  # not enabled yet
    write(image, building, {"705.Ena": 1.0})
    mode = building.state.pv.reactive_mode
    assert (mode.kind, mode.curve, mode.v_ref_pu, mode.response_s) == (
        "volt_var", CAT_B_VAR, 1.0, 5.0
    )  # fmt: skip
    # The grid at 1.05 pu: the inverter absorbs 22 kvar once settled, the meter sees it.
    building.set_grid_voltage(1.05)
    building.advance(60.0)
    assert sum(building.state.meter.reading.voltage_v) / 3 == pytest.approx(241.5)
    assert building.state.pv.reactive_power_var == pytest.approx(-22_000.0, abs=1.0)
    values = INVERTER_PLAN.values(building, image)
    assert values["701.Var"] == pytest.approx(-22_000.0, abs=1.0)
    assert values["701.LNV"] == pytest.approx(241.5)
    # The meter counts the inverter's absorbed vars as drawn by the site.
    flows = building.state.flows
    loads_var = (flows.base_w + flows.chillers_w + flows.fan_w + flows.switched_w) * 0.3287
    assert building.state.meter.reading.reactive_power_var == pytest.approx(
        loads_var + 22_000.0, rel=1e-3
    )
    building.set_grid_voltage(None)
    building.advance(60.0)
    assert sum(building.state.meter.reading.voltage_v) / 3 == pytest.approx(230.0)
    assert building.state.pv.reactive_power_var == pytest.approx(0.0, abs=1.0)


def test_705_adoption_of_a_curve_that_is_no_curve_fails_and_keeps_curve_1() -> None:
    building = quiet_building()
    image = SunSpecImage(INVERTER_PLAN)
    write(image, building, category_b(2) | {"705.Crv[2].Pt[3].V": 97.0})  # V going down
    write(image, building, {"705.AdptCrvReq": 2.0})
    assert image.value("705.AdptCrvRslt") == 2.0  # FAILED
    assert image.value("705.Crv[1].Pt[1].V") == 90.0
    write(image, building, {"705.Crv[2].ActPt": 1.0, "705.Crv[2].Pt[3].V": 102.0})
    write(image, building, {"705.AdptCrvReq": 2.0})
    assert image.value("705.AdptCrvRslt") == 2.0  # one point is no curve either


def test_704_var_setpoint_on_the_inverter_without_705() -> None:
    building = quiet_building()
    image = SunSpecImage(BASIC_INVERTER_PLAN)
    assert not image.has("705.Ena")
    write(image, building, {"704.VarSet": -15_000.0})
    assert building.state.pv.reactive_mode.kind == "unity"  # VarSetEna still off
    write(image, building, {"704.VarSetEna": 1.0})
    assert building.state.pv.reactive_mode == ReactiveMode(kind="var", var=-15_000.0)
    # VarSetMod 3 (VA_MAX_PCT): VarSetPct of the 100 kVA.
    write(image, building, {"704.VarSetMod": 3.0, "704.VarSetPct": 12.5})
    assert building.state.pv.reactive_mode.var == pytest.approx(12_500.0)
    building.advance(30.0)
    assert building.state.pv.reactive_power_var == pytest.approx(12_500.0, abs=1.0)


def test_grid_voltage_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"grid voltage 2.0 pu is outside 0.5..1.5"):
        quiet_building().set_grid_voltage(2.0)


@st.composite
def curves(draw: st.DrawFn) -> tuple[tuple[float, float], ...]:
    count = draw(st.integers(min_value=2, max_value=10))
    xs = sorted(draw(st.lists(st.floats(0.8, 1.2), min_size=count, max_size=count)))
    ys = draw(st.lists(st.floats(-0.6, 0.6), min_size=count, max_size=count))
    points = list(zip(xs, ys, strict=True))
    # Equal x only with equal y (the one shape both sides refuse otherwise).
    for k in range(1, count):
        if points[k][0] == points[k - 1][0]:
            points[k] = (points[k][0], points[k - 1][1])
    return tuple(points)


@given(curve=curves(), v_pu=st.floats(0.7, 1.3), v_ref=st.floats(0.95, 1.05))
def test_the_inverter_firmware_and_gridpilots_curve_agree(
    curve: tuple[tuple[float, float], ...], v_pu: float, v_ref: float
) -> None:
    """Two independent implementations (the simulated inverter's and control.ieee1547's)
    give the same Q for any valid curve, voltage and V_ref."""
    mode = ReactiveMode(kind="volt_var", curve=curve, v_ref_pu=v_ref)
    expected = volt_var_q_pu(v_pu, VoltVar(Curve(curve), v_ref_pu=v_ref))
    assert reactive_target_var(mode, 0.0, v_pu) == pytest.approx(expected, abs=1e-9)


def test_706_volt_watt_written_adopted_and_enabled_limits_the_output() -> None:
    building = quiet_building()
    image = SunSpecImage(INVERTER_PLAN)
    building.advance(1.0)
    assert building.state.pv.ac_power_w > 60_000.0  # noon in July
    # Category B with Pmin 0: 100 % at 106 %, 0 at 110 % (the factory curve ends at 20 %).
    curve = {
        "706.Crv[2].ActPt": 2.0,
        "706.Crv[2].RspTms": 10.0,
        "706.Crv[2].Pt[1].V": 106.0,
        "706.Crv[2].Pt[1].W": 100.0,
        "706.Crv[2].Pt[2].V": 110.0,
        "706.Crv[2].Pt[2].W": 0.0,
    }
    write(image, building, curve | {"706.AdptCrvReq": 2.0, "706.Ena": 1.0})
    assert image.value("706.AdptCrvRslt") == 1.0
    assert building.state.pv.volt_watt_mode.curve == ((1.06, 100.0), (1.10, 0.0))
    building.set_grid_voltage(1.08)
    # The inverter acts on the voltage it measured the step before: one 5 s step to see it,
    # then 90 % of the way in the 10 s response time.
    building.advance(5.0)
    assert building.state.pv.volt_watt_pct == 100.0
    building.advance(10.0)
    assert building.state.pv.volt_watt_pct == pytest.approx(55.0, abs=0.1)
    building.advance(60.0)
    assert building.state.pv.volt_watt_pct == pytest.approx(50.0, abs=0.01)
    assert building.state.pv.ac_power_w == pytest.approx(50_000.0, abs=1.0)
    assert building.state.pv.power_limit_pct == 100.0  # the commanded limit is not touched
    # Disabled: the output returns to what the sun gives.
    write(image, building, {"706.Ena": 0.0})
    building.advance(60.0)
    assert building.state.pv.ac_power_w > 60_000.0


def test_706_curve_in_percent_of_available_power_is_not_adopted() -> None:
    building = quiet_building()
    image = SunSpecImage(INVERTER_PLAN)
    write(image, building, {"706.Crv[2].DeptRef": 1.0, "706.AdptCrvReq": 2.0})  # W_AVAL_PCT
    assert image.value("706.AdptCrvRslt") == 2.0  # FAILED: this inverter limits % of WMax
    assert image.value("706.Crv[1].Pt[2].W") == 20.0
