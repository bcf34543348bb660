"""The grid operator's controls as a pure controller, and how they win arbitration."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gridpilot.control.base import Decision, PointRef, Priority, Reading, Snapshot
from gridpilot.control.engine import Engine, EngineParams
from gridpilot.control.grid_controls import (
    ControlMode,
    Curve,
    GridControls,
    ModeValue,
    PowerFactor,
)
from gridpilot.control.grid_operator import (
    GridOperatorController,
    GridOperatorParams,
    GridOperatorState,
)
from gridpilot.control.pv_export import PvExportController, PvExportParams

NOW = datetime(2026, 7, 4, 10, 30, tzinfo=UTC)
GRID = PointRef("grid_meter", "active_power_w")
PV = PointRef("pv_inverter", "ac_power_w")
PV_LIMIT = PointRef("pv_inverter", "power_limit_pct")
SOC = PointRef("battery", "soc_pct")
BATTERY = PointRef("battery", "active_power_w")
SETPOINT = PointRef("battery", "active_power_setpoint_w")
CONNECT = PointRef("pv_inverter", "connect_state")
PF = PointRef("pv_inverter", "power_factor_setpoint_pf")
RATED_W = 100_000.0
UNITS = {"opModExpLimW": "W", "opModImpLimW": "W", "opModGenLimW": "W", "opModLoadLimW": "W",
         "opModTargetW": "W", "opModMaxLimW": "%", "opModFixedW": "%"}  # fmt: skip


def params(**overrides: Any) -> GridOperatorParams:
    fields: dict[str, Any] = {
        "pv_rated_power_w": RATED_W,
        "battery_soc": SOC,
        "battery_power": BATTERY,
        "battery_setpoint": SETPOINT,
        "battery_max_charge_w": 50_000.0,
        "battery_max_discharge_w": 40_000.0,
        "connect": CONNECT,
        "power_factor": PF,
    }
    fields |= overrides
    return GridOperatorParams.model_validate({k: v for k, v in fields.items() if v is not None})


def controls(
    modes: Mapping[str, ModeValue],
    *,
    source: str = "event",
    valid_until: datetime = NOW + timedelta(minutes=5),
    defaults: Mapping[str, ModeValue] | None = None,
) -> GridControls:
    out = {
        name: ControlMode(name, value, "event" if source == "event" else "default", UNITS.get(name),
                          mrid="A1B2C3D4E5" if source == "event" else None,
                          primacy=1 if source == "event" else None)
        for name, value in modes.items()
    }  # fmt: skip
    for name, value in (defaults or {}).items():
        out[name] = ControlMode(name, value, "default")
    return GridControls(NOW - timedelta(minutes=1), "ieee2030_5", valid_until, out)


def snapshot(
    grid_controls: GridControls | None,
    *,
    grid_w: float | None = -70_000.0,
    pv_w: float | None = 80_000.0,
    soc_pct: float = 60.0,
    battery_w: float = 0.0,
    now: datetime = NOW,
) -> Snapshot:
    readings = {SOC: Reading(soc_pct, now), BATTERY: Reading(battery_w, now)}
    if grid_w is not None:
        readings[GRID] = Reading(grid_w, now)
    if pv_w is not None:
        readings[PV] = Reading(pv_w, now)
    return Snapshot(now, readings, grid_controls)


def decide(
    controller: GridOperatorController,
    snap: Snapshot,
    state: GridOperatorState | None = None,
) -> Decision[GridOperatorState]:
    return controller.decide(snap, state or controller.initial_state(), snap.now, {})


def requested(decision: Decision[GridOperatorState]) -> dict[PointRef, tuple[float, Priority]]:
    return {r.target: (r.value, r.priority) for r in decision.requests}


def bounds(decision: Decision[GridOperatorState]) -> dict[PointRef, tuple[float, float]]:
    return {c.target: (c.minimum, c.maximum) for c in decision.constraints}


# ------------------------------------------------------------------------ export limit


def test_an_export_limit_charges_the_battery_first_then_curtails_pv() -> None:
    controller = GridOperatorController(params())
    # load 10 kW, PV 80 kW, battery idle: 70 kW export against a 5 kW limit
    d = decide(controller, snapshot(controls({"opModExpLimW": 5000.0})))
    # battery credited with its 50 kW; PV may deliver 10 + 50 + 5 - 0.3 = 64.7 kW; the limit
    # lands in the middle of the 400 W band: 80 - 15.3 - 0.2 = 64.5 kW
    # limits are bounds at GRID_OPERATOR priority; the requests move the points when no other
    # controller asks for them
    assert requested(d)[PV_LIMIT] == (pytest.approx(64.5), Priority.COMFORT)
    assert requested(d)[SETPOINT] == (pytest.approx(-49_800.0), Priority.COMFORT)
    assert bounds(d)[PV_LIMIT] == (float("-inf"), pytest.approx(64.5))
    assert bounds(d)[SETPOINT] == (float("-inf"), pytest.approx(-49_800.0))
    assert {c.priority for c in d.constraints} == {Priority.GRID_OPERATOR}
    assert d.metrics["export_limit_w"] == 5000.0
    assert any("utility controls in force: opModExpLimW 5000 W" in e for e in d.events)


def test_the_least_charge_rises_at_once_and_falls_slowly() -> None:
    """A battery read a moment before or after the meter makes the needed charge swing; the
    bound follows it up at once and down at battery_release_pct_per_s (2 % of 50 kW per s)."""
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModExpLimW": 5000.0})))
    assert bounds(d)[SETPOINT][1] == pytest.approx(-49_800.0)
    # 3 s later the meter shows an import: by it, no charging is needed any more
    later = NOW + timedelta(seconds=3)
    snap = snapshot(controls({"opModExpLimW": 5000.0}), grid_w=5_000.0, pv_w=64_500.0,
                    battery_w=-49_800.0, now=later)  # fmt: skip
    d = decide(controller, snap, d.state)
    assert bounds(d)[SETPOINT][1] == pytest.approx(-49_800.0 + 3 * 1_000.0)
    assert requested(d)[SETPOINT] == (pytest.approx(-46_800.0), Priority.COMFORT)
    # and once the event ends, the bound goes with it
    d = decide(controller, snapshot(controls({}), now=later + timedelta(seconds=3)), d.state)
    assert SETPOINT not in bounds(d)
    assert d.state.charge_floor_w == 0.0


def test_an_export_limit_that_does_not_bind_sends_nothing() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModExpLimW": 50_000.0}), grid_w=-20_000.0))
    assert requested(d) == {}
    assert d.constraints == ()
    assert d.state.applied == ("opModExpLimW 50000 W (event A1B2C3D4, primacy 1)",)


def test_the_export_limit_fails_safe_on_a_stale_meter() -> None:
    controller = GridOperatorController(params(min_site_load_w=2_000.0))
    d = decide(controller, snapshot(controls({"opModExpLimW": 5000.0}), grid_w=None))
    # PV may cover only what cannot break the limit: 5 - 0.3 + 2 kW = 6.7 kW of 100 kW
    assert requested(d)[PV_LIMIT][0] == pytest.approx(6.7)
    assert SETPOINT not in requested(d)
    assert any("stale" in e for e in d.events)


def test_the_grid_operator_bounds_what_lower_priorities_ask_of_the_battery_and_pv() -> None:
    """The same site with self-consumption (economics) and a connection limit of 60 kW: the
    utility's 5 kW export limit holds the battery's charging and the inverter limit, whoever
    asks for them."""
    operator = GridOperatorController(params())
    self_consumption = PvExportController(
        PvExportParams(
            pv_rated_power_w=RATED_W,
            export_limit_w=60_000.0,
            battery_soc=SOC,
            battery_power=BATTERY,
            battery_setpoint=SETPOINT,
            battery_max_charge_w=20_000.0,  # what the economics would charge
        )
    )
    engine = Engine([self_consumption, operator], EngineParams())
    # 90 kW of export: self-consumption alone would curtail to its 60 kW limit
    snap = snapshot(controls({"opModExpLimW": 5000.0}), grid_w=-90_000.0, pv_w=100_000.0)
    result = engine.cycle(snap, {})
    # self-consumption asked for its 20 kW of charging; the export limit needs 49.8 kW
    battery = result.arbitrations[SETPOINT]
    assert battery.source == "pv_export"
    assert battery.requested == pytest.approx(-20_000.0)
    assert battery.limited_by == ("grid_operator",)
    assert battery.value == pytest.approx(-49_800.0)
    # self-consumption curtails to its 60 kW connection limit; the utility's is lower:
    # 10 kW load + 50 kW battery + 5 kW export - 0.3 margin - 0.2 half band
    pv = result.arbitrations[PV_LIMIT]
    assert pv.source == "pv_export"
    assert pv.limited_by == ("grid_operator",)
    assert pv.value == pytest.approx(64.5)


def test_charging_more_than_the_export_limit_needs_is_not_held_back() -> None:
    """Zero export by the connection agreement (self-consumption takes every exported watt)
    and a utility limit of 5 kW: the battery charges what self-consumption asks, not only
    what the utility's limit needs -- a bound, not a target."""
    operator = GridOperatorController(params())
    zero_export = PvExportController(
        PvExportParams(
            pv_rated_power_w=RATED_W,
            export_limit_w=0.0,
            battery_soc=SOC,
            battery_power=BATTERY,
            battery_setpoint=SETPOINT,
            battery_max_charge_w=50_000.0,
        )
    )
    engine = Engine([zero_export, operator], EngineParams())
    # 30 kW of surplus: the utility's limit needs 30 - 5 + 0.3 = 25.3 kW of charging
    snap = snapshot(controls({"opModExpLimW": 5000.0}), grid_w=-30_000.0, pv_w=40_000.0)
    result = engine.cycle(snap, {})
    battery = result.arbitrations[SETPOINT]
    assert battery.source == "pv_export"
    assert battery.limited_by == ()
    assert battery.value <= -30_000.0  # all of the surplus
    assert PV_LIMIT not in result.arbitrations  # nothing to curtail


def test_a_battery_target_wins_outright() -> None:
    operator = GridOperatorController(params())
    d = decide(operator, snapshot(controls({"opModTargetW": 10_000.0})))
    assert requested(d)[SETPOINT] == (10_000.0, Priority.GRID_OPERATOR)


def test_when_the_event_ends_pv_is_released_at_the_ramp_and_the_battery_handed_back() -> None:
    controller = GridOperatorController(params(release_rate_pct_per_s=1.0))
    d = decide(controller, snapshot(controls({"opModExpLimW": 5000.0})))
    assert requested(d)[PV_LIMIT][0] == pytest.approx(64.5)
    later = NOW + timedelta(seconds=3)
    # the message is replaced by one without the mode; PV now measures its limit
    d = decide(
        controller,
        snapshot(controls({}), grid_w=-4_800.0 + 49_800.0 - 49_800.0, pv_w=64_500.0,
                 battery_w=-49_800.0, now=later),
        d.state,
    )  # fmt: skip
    pv_value, pv_priority = requested(d)[PV_LIMIT]
    assert pv_value == pytest.approx(64.5 + 3.0)  # 1 %/s for 3 s
    assert pv_priority == Priority.COMFORT
    assert bounds(d)[PV_LIMIT][1] == pytest.approx(64.5 + 3.0)  # still a bound while it ramps
    # the battery goes back at the lowest priority: any other controller takes it at once
    assert requested(d)[SETPOINT] == (0.0, Priority.COMFORT)
    assert any("no utility control in force any more" in e for e in d.events)
    state = d.state
    for step in range(1, 60):
        d = decide(
            controller,
            snapshot(controls({}), grid_w=-20_000.0, pv_w=60_000.0,
                     now=later + timedelta(seconds=step)),
            state,
        )  # fmt: skip
        state = d.state
        if PV_LIMIT not in requested(d):
            break
    else:
        pytest.fail("the PV limit was never released")
    assert requested(d) == {}  # silent once released
    assert state.export.limit_pct == 100.0


# ------------------------------------------------------------------------ the other modes


def test_an_import_limit_discharges_the_excess() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModImpLimW": 60_000.0}), grid_w=80_000.0,
                                    pv_w=0.0))  # fmt: skip
    assert requested(d)[SETPOINT] == (pytest.approx(20_300.0), Priority.COMFORT)
    assert bounds(d)[SETPOINT][0] == pytest.approx(20_300.0)  # at least that
    # beyond what the battery can give: the rest is reported
    d = decide(controller, snapshot(controls({"opModImpLimW": 20_000.0}), grid_w=80_000.0,
                                    pv_w=0.0))  # fmt: skip
    assert requested(d)[SETPOINT][0] == 40_000.0
    assert d.metrics["import_excess_w"] == pytest.approx(20_300.0)


def test_an_import_limit_with_headroom_only_bounds_charging() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModImpLimW": 60_000.0}), grid_w=40_000.0,
                                    pv_w=0.0, battery_w=-5_000.0))  # fmt: skip
    assert SETPOINT not in requested(d)
    # without the battery the site draws 35 kW: charging may add 60 - 0.3 - 35 kW at most
    assert bounds(d)[SETPOINT] == (pytest.approx(-24_700.0), float("inf"))


@pytest.mark.parametrize(
    ("modes", "pv_limit", "battery"),
    [
        ({"opModMaxLimW": 40.0}, 40.0, None),
        ({"opModGenLimW": 30_000.0}, 30.0, None),
        ({"opModMaxLimW": 40.0, "opModGenLimW": 30_000.0}, 30.0, None),
        ({"opModFixedW": 50.0}, None, 20_000.0),  # 50 % of the 40 kW discharge
        ({"opModFixedW": -50.0}, None, -25_000.0),  # 50 % of the 50 kW charge
        ({"opModTargetW": -10_000.0}, None, -10_000.0),
        ({"opModTargetW": 90_000.0}, None, 40_000.0),  # the battery's most
    ],
)
def test_limits_and_targets(
    modes: dict[str, ModeValue], pv_limit: float | None, battery: float | None
) -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls(modes), grid_w=10_000.0, pv_w=60_000.0))
    got = requested(d)
    assert (got[PV_LIMIT][0] if PV_LIMIT in got else None) == pytest.approx(pv_limit)
    assert (got[SETPOINT][0] if SETPOINT in got else None) == pytest.approx(battery)
    if pv_limit is not None:
        assert bounds(d)[PV_LIMIT][1] == pytest.approx(pv_limit)


def test_a_generation_limit_bounds_the_battery_discharge_by_what_pv_leaves() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModGenLimW": 50_000.0}), grid_w=10_000.0,
                                    pv_w=30_000.0))  # fmt: skip
    assert requested(d)[PV_LIMIT][0] == pytest.approx(50.0)
    assert bounds(d)[SETPOINT] == (float("-inf"), pytest.approx(20_000.0))


def test_without_a_battery_a_fixed_w_becomes_a_pv_limit() -> None:
    controller = GridOperatorController(
        params(battery_soc=None, battery_power=None, battery_setpoint=None,
               rated_power_w=80_000.0)
    )  # fmt: skip
    d = decide(controller, snapshot(controls({"opModFixedW": 50.0})))
    assert requested(d)[PV_LIMIT][0] == pytest.approx(40.0)  # 50 % of 80 kW = 40 % of 100 kW


def test_a_load_limit_bounds_charging_only() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModLoadLimW": 20_000.0})))
    assert SETPOINT not in requested(d)
    assert bounds(d)[SETPOINT] == (-20_000.0, float("inf"))


def test_disconnect_holds_everything_at_zero_then_reconnects_once() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModConnect": False, "opModExpLimW": 5000.0})))
    got = requested(d)
    assert got[PV_LIMIT] == (0.0, Priority.GRID_OPERATOR)
    assert got[SETPOINT] == (0.0, Priority.GRID_OPERATOR)
    assert got[CONNECT] == (0.0, Priority.GRID_OPERATOR)
    assert bounds(d)[SETPOINT] == (0.0, 0.0)
    assert bounds(d)[CONNECT][1] == 0.0
    d = decide(
        controller, snapshot(controls({"opModConnect": True}), pv_w=0.0, grid_w=10_000.0,
                             now=NOW + timedelta(seconds=1)), d.state
    )  # fmt: skip
    got = requested(d)
    assert got[CONNECT] == (1.0, Priority.GRID_OPERATOR)
    assert got[PV_LIMIT][0] == pytest.approx(1.0)  # released from 0 at 1 %/s
    d = decide(
        controller, snapshot(controls({"opModConnect": True}), pv_w=0.0, grid_w=10_000.0,
                             now=NOW + timedelta(seconds=2)), d.state
    )  # fmt: skip
    assert CONNECT not in requested(d)  # once


def test_de_energize_without_a_connect_point_is_held_at_zero_and_reported() -> None:
    controller = GridOperatorController(params(connect=None))
    d = decide(controller, snapshot(controls({"opModEnergize": False})))
    assert requested(d)[PV_LIMIT][0] == 0.0
    assert any("no connect point configured" in e for e in d.events)


def test_a_fixed_power_factor_and_its_end() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(controls({"opModFixedPFInjectW": PowerFactor(0.9, "under")})))
    assert requested(d)[PF] == (-0.9, Priority.GRID_OPERATOR)
    d = decide(controller, snapshot(controls({})), d.state)
    assert requested(d)[PF] == (1.0, Priority.COMFORT)


def test_modes_it_cannot_apply_are_reported_once() -> None:
    controller = GridOperatorController(params(power_factor=None))
    curve = Curve(((0.92, 44.0), (1.08, -44.0)), "V_pu", "var_pct")
    gc = controls({"opModVoltVar": curve, "opModFixedPFInjectW": PowerFactor(0.95, "over")})
    d = decide(controller, snapshot(gc))
    (event,) = [e for e in d.events if "not applied" in e]
    assert "opModVoltVar (a curve" in event
    assert "opModFixedPFInjectW (no power_factor point configured)" in event
    d = decide(controller, snapshot(gc, now=NOW + timedelta(seconds=1)), d.state)
    assert not [e for e in d.events if "not applied" in e]


# ------------------------------------------------------------------------ staleness


@pytest.mark.parametrize(
    ("policy", "applied"),
    [
        ("defaults", ("opModGenLimW 80000 W (default)",)),
        ("keep_last", ("opModMaxLimW 40 % (event A1, primacy 1)",
                       "opModGenLimW 80000 W (default)")),
        ("none", ()),
    ],
)  # fmt: skip
def test_a_stale_message_falls_back_as_configured(policy: str, applied: tuple[str, ...]) -> None:
    controller = GridOperatorController(params(on_stale=policy))
    modes = {
        "opModMaxLimW": ControlMode("opModMaxLimW", 40.0, "event", "%", "A1", 1),
        "opModGenLimW": ControlMode("opModGenLimW", 80_000.0, "default", "W"),
    }
    gc = GridControls(NOW, "ieee2030_5", NOW + timedelta(seconds=30), modes)
    fresh = decide(controller, snapshot(gc, grid_w=10_000.0))
    assert requested(fresh)[PV_LIMIT][0] == 40.0
    assert fresh.metrics["controls_stale_state"] == 0.0
    stale = decide(
        controller, snapshot(gc, grid_w=10_000.0, now=NOW + timedelta(seconds=31)), fresh.state
    )
    assert stale.metrics["controls_stale_state"] == 1.0
    assert stale.state.applied == applied
    (event,) = [e for e in stale.events if "stale" in e]
    assert "valid until 2026-07-04T10:30:30+00:00" in event
    assert "is the 2030.5 client running?" in event
    got = requested(stale)[PV_LIMIT][0]
    if policy == "keep_last":
        assert got == 40.0
    else:
        # the 40 % cap is gone: released at the ramp (1 %/s; after a gap of 31 s, one step of
        # at most max_age_s = 5 s), not at once
        assert got == pytest.approx(45.0)
    again = decide(
        controller, snapshot(gc, grid_w=10_000.0, now=NOW + timedelta(seconds=32)), stale.state
    )
    assert not [e for e in again.events if "stale" in e]  # said once


def test_a_stale_message_keeps_only_the_default_modes() -> None:
    controller = GridOperatorController(params())
    modes = {
        "opModExpLimW": ControlMode("opModExpLimW", 5000.0, "event", "W", "A1", 1),
        "opModMaxLimW": ControlMode("opModMaxLimW", 70.0, "default", "%"),
    }
    gc = GridControls(NOW, "ieee2030_5", NOW + timedelta(seconds=10), modes)
    d = decide(controller, snapshot(gc, grid_w=10_000.0, pv_w=50_000.0,
                                    now=NOW + timedelta(seconds=11)))  # fmt: skip
    assert "export_limit_w" not in d.metrics
    assert d.state.applied == ("opModMaxLimW 70 % (default)",)
    # fresh again: an event says so
    gc2 = GridControls(NOW, "ieee2030_5", NOW + timedelta(minutes=5), modes)
    d = decide(controller, snapshot(gc2, now=NOW + timedelta(seconds=12)), d.state)
    assert any("fresh again" in e for e in d.events)
    assert d.metrics["export_limit_w"] == 5000.0


def test_no_message_means_nothing_is_requested() -> None:
    controller = GridOperatorController(params())
    d = decide(controller, snapshot(None))
    assert d.requests == ()
    assert d.constraints == ()
    assert d.metrics["controls_in_force_count"] == 0.0


# ------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pv_rated_power_w": None}, "pv_limit needs pv_power and pv_rated_power_w"),
        ({"battery_power": None}, "go together"),
        ({"battery_max_discharge_w": 0.0}, "battery_max_discharge_w"),
        ({"margin_w": 100.0}, "at least hysteresis_w / 2"),
        ({"on_stale": "forever"}, "on_stale"),
    ],
)
def test_parameters_are_checked(overrides: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "pv_rated_power_w": RATED_W,
        "battery_soc": SOC,
        "battery_power": BATTERY,
        "battery_setpoint": SETPOINT,
        "battery_max_charge_w": 50_000.0,
        "battery_max_discharge_w": 40_000.0,
    }
    fields.update(overrides)
    with pytest.raises(ValidationError, match=message):
        GridOperatorParams.model_validate({k: v for k, v in fields.items() if v is not None})
