"""The engine's pure cycle: arbitration, envelope, fail-safe, overrides, failing controllers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from gridpilot.control.base import (
    Constraint,
    Decision,
    Forecasts,
    PointRef,
    Priority,
    Reading,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.engine import (
    BatteryWindow,
    DuplicateControllerError,
    Engine,
    EngineParams,
    FailSafe,
    Override,
    PointLimits,
)

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
BATTERY = PointRef("battery", "active_power_setpoint_w")
SOC = PointRef("battery", "soc_pct")
METER = PointRef("grid_meter", "active_power_w")
ZONE = PointRef("hvac_zone_1", "setpoint_degc")


@dataclass(frozen=True)
class Fixed:
    """A controller that always asks for the same things (a pure table entry)."""

    name: str
    priority: Priority
    requests: tuple[tuple[PointRef, float], ...] = ()
    constraints: tuple[Constraint, ...] = ()

    def initial_state(self) -> int:
        return 0

    def decide(
        self, snapshot: Snapshot, state: int, now: datetime, forecasts: Forecasts
    ) -> Decision[int]:
        return Decision(
            state=state + 1,
            requests=tuple(
                SetpointRequest(t, v, self.priority, self.name) for t, v in self.requests
            ),
            constraints=self.constraints,
            metrics={"calls_count": float(state + 1)},
        )


@dataclass(frozen=True)
class Raising:
    name: str = "broken"
    priority: Priority = Priority.ECONOMICS

    def initial_state(self) -> None:
        return None

    def decide(
        self, snapshot: Snapshot, state: None, now: datetime, forecasts: Forecasts
    ) -> Decision[None]:
        raise ZeroDivisionError("division by zero in the plan")


def snap(now: datetime = T0, **ages: float) -> Snapshot:
    """A snapshot with the meter and SoC read ``ages`` seconds ago (default fresh)."""
    readings = {
        METER: Reading(80_000.0, now - timedelta(seconds=ages.get("meter", 0.0))),
        SOC: Reading(ages.get("soc_pct", 50.0), now - timedelta(seconds=ages.get("soc", 0.0))),
    }
    return Snapshot(now, readings)


@pytest.mark.parametrize(
    ("requests", "expected_value", "expected_source"),
    [
        # highest priority wins
        ([("comfort", Priority.COMFORT, 1.0), ("peak", Priority.PEAK_SHAVING, 2.0)], 2.0, "peak"),
        (
            [("grid", Priority.GRID_OPERATOR, 3.0), ("peak", Priority.PEAK_SHAVING, 2.0)],
            3.0,
            "grid",
        ),
        # equal priority: the controller listed first
        ([("a", Priority.ECONOMICS, 1.0), ("b", Priority.ECONOMICS, 2.0)], 1.0, "a"),
    ],
)
def test_highest_priority_request_wins(
    requests: list[tuple[str, Priority, float]], expected_value: float, expected_source: str
) -> None:
    engine = Engine([Fixed(n, p, ((ZONE, v),)) for n, p, v in requests], EngineParams())
    result = engine.cycle(snap(), {})
    assert result.targets == {ZONE: expected_value}
    arbitration = result.arbitrations[ZONE]
    assert arbitration.source == expected_source
    assert set(arbitration.overridden) == {n for n, _, _ in requests} - {expected_source}


def test_constraints_clip_only_requests_of_lower_or_equal_priority() -> None:
    cap = Constraint(ZONE, Priority.PEAK_SHAVING, "peak", maximum=24.0)
    low = Engine(
        [
            Fixed("comfort", Priority.COMFORT, ((ZONE, 26.0),)),
            Fixed("peak", Priority.PEAK_SHAVING, constraints=(cap,)),
        ],
        EngineParams(),
    )
    result = low.cycle(snap(), {})
    assert result.targets[ZONE] == 24.0
    assert result.arbitrations[ZONE].limited_by == ("peak",)

    high = Engine(
        [
            Fixed("grid", Priority.GRID_OPERATOR, ((ZONE, 26.0),)),
            Fixed("peak", Priority.PEAK_SHAVING, constraints=(cap,)),
        ],
        EngineParams(),
    )
    assert high.cycle(snap(), {}).targets[ZONE] == 26.0


def test_highest_constraint_has_the_last_word_when_constraints_conflict() -> None:
    constraints = (
        Constraint(ZONE, Priority.GRID_OPERATOR, "grid", maximum=20.0),
        Constraint(ZONE, Priority.PEAK_SHAVING, "peak", minimum=23.0),
    )
    engine = Engine(
        [Fixed("comfort", Priority.COMFORT, ((ZONE, 25.0),), constraints)], EngineParams()
    )
    assert engine.cycle(snap(), {}).targets[ZONE] == 20.0


@pytest.mark.parametrize(
    ("request_w", "soc_pct", "soc_age_s", "expected_w"),
    [
        (30_000.0, 50.0, 0.0, 30_000.0),  # inside the window: as asked
        (30_000.0, 10.0, 0.0, 0.0),  # empty: no discharge
        (-30_000.0, 10.0, 0.0, -30_000.0),  # empty: charging is fine
        (-30_000.0, 90.0, 0.0, 0.0),  # full: no charge
        (30_000.0, 90.0, 0.0, 30_000.0),  # full: discharging is fine
        (30_000.0, 50.0, 120.0, 0.0),  # SoC unknown (stale): held at 0
        (-30_000.0, 50.0, 120.0, 0.0),
        (90_000.0, 50.0, 0.0, 50_000.0),  # device limit
    ],
)
def test_battery_envelope(
    request_w: float, soc_pct: float, soc_age_s: float, expected_w: float
) -> None:
    params = EngineParams(
        limits=(PointLimits(BATTERY, -50_000.0, 50_000.0),),
        batteries=(BatteryWindow(BATTERY, SOC, 10.0, 90.0, max_age_s=30.0),),
    )
    engine = Engine([Fixed("peak", Priority.PEAK_SHAVING, ((BATTERY, request_w),))], params)
    result = engine.cycle(snap(soc_pct=soc_pct, soc=soc_age_s), {})
    assert result.targets[BATTERY] == expected_w


def test_ramp_from_previous_target() -> None:
    params = EngineParams(
        limits=(PointLimits(BATTERY, -50_000.0, 50_000.0, max_ramp_per_s=1_000.0),),
        fail_safes=(FailSafe("meter", (METER,), 5.0, {BATTERY: 0.0}),),
    )
    wanted = {"w": 0.0}

    @dataclass(frozen=True)
    class Follow:
        name: str = "peak"
        priority: Priority = Priority.PEAK_SHAVING

        def initial_state(self) -> None:
            return None

        def decide(
            self, snapshot: Snapshot, state: None, now: datetime, forecasts: Forecasts
        ) -> Decision[None]:
            return Decision(
                None, (SetpointRequest(BATTERY, wanted["w"], self.priority, self.name),)
            )

    engine = Engine([Follow()], params)
    assert engine.cycle(snap(T0), {}).targets[BATTERY] == 0.0
    wanted["w"] = 40_000.0
    t1 = T0 + timedelta(seconds=2)
    result = engine.cycle(snap(t1), {})
    assert result.targets[BATTERY] == 2_000.0
    assert "ramp" in result.arbitrations[BATTERY].limited_by
    t2 = t1 + timedelta(seconds=10)
    assert engine.cycle(snap(t2), {}).targets[BATTERY] == 12_000.0
    # the meter goes stale: the fail-safe sets 0 at once, without ramping down
    t3 = t2 + timedelta(seconds=1)
    result = engine.cycle(snap(t3, meter=6.0), {})
    assert result.targets[BATTERY] == 0.0
    assert result.fail_safes_active == ("meter",)
    assert result.arbitrations[BATTERY].source == "fail_safe"


def test_fail_safe_enters_and_leaves_with_one_event_each() -> None:
    params = EngineParams(fail_safes=(FailSafe("meter", (METER,), 5.0, {BATTERY: 0.0}),))
    engine = Engine([Fixed("peak", Priority.PEAK_SHAVING, ((BATTERY, 30_000.0),))], params)
    fresh = engine.cycle(snap(T0), {})
    assert fresh.targets[BATTERY] == 30_000.0
    assert fresh.fail_safes_active == ()

    stale1 = engine.cycle(snap(T0 + timedelta(seconds=1), meter=5.5), {})
    stale2 = engine.cycle(snap(T0 + timedelta(seconds=2), meter=6.5), {})
    assert stale1.targets[BATTERY] == stale2.targets[BATTERY] == 0.0
    entered = [e for e in stale1.events if "entered" in e.message]
    assert len(entered) == 1
    assert "grid_meter.active_power_w" in entered[0].message
    assert entered[0].kind == "alarm"
    assert not [e for e in stale2.events if "entered" in e.message]

    back = engine.cycle(snap(T0 + timedelta(seconds=3)), {})
    assert back.targets[BATTERY] == 30_000.0
    assert [e.message for e in back.events if "left" in e.message]


def test_missing_input_counts_as_stale_without_an_alarm_while_starting() -> None:
    params = EngineParams(
        fail_safes=(FailSafe("meter", (PointRef("nowhere", "power_w"),), 5.0, {BATTERY: 0.0}),)
    )
    engine = Engine([], params)
    result = engine.cycle(snap(), {})
    assert result.targets == {BATTERY: 0.0}
    assert result.events[0].kind == "info"
    assert "until the first reading of nowhere.power_w" in result.events[0].message
    # an input that goes missing long after the start: that is an alarm
    params = EngineParams(fail_safes=(FailSafe("meter", (METER,), 5.0, {BATTERY: 0.0}),))
    later = Engine([], params)
    assert later.cycle(snap(T0), {}).events == ()
    result = later.cycle(Snapshot(T0 + timedelta(seconds=6), {}), {})
    assert result.events[0].kind == "alarm"
    assert "never seen" in result.events[0].message


def test_a_raising_controller_is_reported_and_skipped_others_go_on() -> None:
    engine = Engine(
        [Raising(), Fixed("peak", Priority.PEAK_SHAVING, ((BATTERY, 10_000.0),))], EngineParams()
    )
    first = engine.cycle(snap(), {})
    assert first.targets == {BATTERY: 10_000.0}
    assert "ZeroDivisionError" in first.errors["broken"]
    assert [e.kind for e in first.events if e.source == "broken"] == ["alarm"]
    second = engine.cycle(snap(T0 + timedelta(seconds=1)), {})
    assert "broken" in second.errors
    assert not [e for e in second.events if e.source == "broken"]  # reported once
    assert second.metrics["controller_errors_count"] == 1.0
    assert second.metrics["peak_calls_count"] == 2.0


def test_override_beats_controllers_but_not_safety_and_expires() -> None:
    params = EngineParams(fail_safes=(FailSafe("meter", (METER,), 5.0, {BATTERY: 0.0}),))
    engine = Engine([Fixed("grid", Priority.GRID_OPERATOR, ((BATTERY, 10_000.0),))], params)
    engine.set_override(Override(BATTERY, -20_000.0, T0 + timedelta(minutes=5), "alice"))
    held = engine.cycle(snap(T0), {})
    assert held.targets[BATTERY] == -20_000.0
    assert held.arbitrations[BATTERY].source == "manual"

    stale = engine.cycle(snap(T0 + timedelta(seconds=10), meter=10.0), {})
    assert stale.targets[BATTERY] == 0.0  # safety beats the operator

    after = engine.cycle(snap(T0 + timedelta(minutes=5)), {})
    assert after.targets[BATTERY] == 10_000.0
    assert any("expired" in e.message and "alice" in e.message for e in after.events)
    assert engine.overrides == {}


def test_disabled_controller_releases_its_point_to_idle_once() -> None:
    params = EngineParams(limits=(PointLimits(BATTERY, -50_000.0, 50_000.0, idle=0.0),))
    engine = Engine([Fixed("peak", Priority.PEAK_SHAVING, ((BATTERY, 25_000.0),))], params)
    assert engine.cycle(snap(T0), {}).targets == {BATTERY: 25_000.0}
    engine.set_enabled("peak", False)
    released = engine.cycle(snap(T0 + timedelta(seconds=1)), {})
    assert released.targets == {BATTERY: 0.0}
    assert released.arbitrations[BATTERY].source == "release"
    assert engine.cycle(snap(T0 + timedelta(seconds=2)), {}).targets == {}
    engine.set_enabled("peak", True)
    assert engine.cycle(snap(T0 + timedelta(seconds=3)), {}).targets == {BATTERY: 25_000.0}


def test_controller_state_is_threaded_through_cycles_and_metrics_are_prefixed() -> None:
    engine = Engine([Fixed("peak", Priority.PEAK_SHAVING)], EngineParams())
    for k in range(3):
        result = engine.cycle(snap(T0 + timedelta(seconds=k)), {})
    assert engine.controller_state("peak") == 3
    assert result.metrics["peak_calls_count"] == 3.0
    assert result.metrics["fail_safes_active_count"] == 0.0


def test_duplicate_and_unknown_controller_names() -> None:
    with pytest.raises(DuplicateControllerError, match="unique name"):
        Engine([Fixed("a", Priority.COMFORT), Fixed("a", Priority.COMFORT)], EngineParams())
    with pytest.raises(KeyError, match="known: a"):
        Engine([Fixed("a", Priority.COMFORT)], EngineParams()).set_enabled("b", False)


def test_snapshot_age_and_value() -> None:
    s = snap(meter=12.0)
    assert s.age_s(METER) == 12.0
    assert s.value(METER, max_age_s=10.0) is None
    assert s.value(METER) == 80_000.0
    assert math.isinf(s.age_s(PointRef("x", "y_w")))
    assert PointRef.parse("battery.soc_pct") == SOC
    with pytest.raises(ValueError, match=r"DEVICE\.POINT"):
        PointRef.parse("battery")
