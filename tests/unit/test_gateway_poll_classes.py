"""Poll classes: which classes fall due at each tick, and how the due points merge into
reads (pure: ``schedule.PollCycle``, ``points.ReadPlan``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.config.models import DeviceConfig, GridPilotConfig, PollClass
from gridpilot.gateway.points import ReadPlan
from gridpilot.gateway.schedule import PollCycle

FAST, NORMAL, SLOW = PollClass.FAST, PollClass.NORMAL, PollClass.SLOW


@pytest.mark.parametrize(
    ("classes", "divisor", "multiple", "tick_s", "periods"),
    [
        ({FAST, NORMAL, SLOW}, 5, 10, 0.2, {FAST: 1, NORMAL: 5, SLOW: 50}),
        ({NORMAL}, 5, 10, 1.0, {NORMAL: 1}),
        # Without fast points the device wakes once per poll_interval, not five times.
        ({NORMAL, SLOW}, 5, 10, 1.0, {NORMAL: 1, SLOW: 10}),
        ({SLOW}, 5, 10, 10.0, {SLOW: 1}),
        ({FAST, SLOW}, 4, 3, 0.25, {FAST: 1, SLOW: 12}),
        ({FAST, NORMAL}, 1, 1, 1.0, {FAST: 1, NORMAL: 1}),
    ],
    ids=["all", "normal-only", "no-fast", "slow-only", "fast-and-slow", "ratios-of-one"],
)
def test_tick_and_periods_of_each_set_of_classes(
    classes: set[PollClass],
    divisor: int,
    multiple: int,
    tick_s: float,
    periods: dict[PollClass, int],
) -> None:
    cycle = PollCycle(1.0, classes, fast_divisor=divisor, slow_multiple=multiple)
    assert cycle.tick_s == pytest.approx(tick_s)
    assert cycle.periods == periods
    for c in classes:
        assert cycle.interval_s(c) == pytest.approx(tick_s * periods[c])


def test_due_sets_tick_by_tick() -> None:
    cycle = PollCycle(1.0, {FAST, NORMAL, SLOW}, fast_divisor=2, slow_multiple=3)
    due = [cycle.due(tick) for tick in range(13)]
    assert due == [
        {FAST, NORMAL, SLOW},  # 0: everything at the start
        {FAST},
        {FAST, NORMAL},
        {FAST},
        {FAST, NORMAL},
        {FAST},
        {FAST, NORMAL, SLOW},  # 6 = 2 x 3
        {FAST},
        {FAST, NORMAL},
        {FAST},
        {FAST, NORMAL},
        {FAST},
        {FAST, NORMAL, SLOW},
    ]


def test_a_class_whose_tick_was_skipped_is_due_at_the_next_served_tick() -> None:
    cycle = PollCycle(1.0, {FAST, NORMAL, SLOW}, fast_divisor=2, slow_multiple=3)
    assert cycle.due(0) == {FAST, NORMAL, SLOW}
    assert cycle.due(1) == {FAST}
    # An overrun: ticks 2..6 were skipped, the slow tick (6) among them.
    assert cycle.due(7) == {FAST, NORMAL, SLOW}
    # ... and then back on the grid, not shifted by the overrun.
    assert cycle.due(8) == {FAST, NORMAL}
    assert cycle.due(12) == {FAST, NORMAL, SLOW}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 0.0}, "interval_s"),
        ({"fast_divisor": 0}, "at least 1"),
        ({"slow_multiple": 0}, "at least 1"),
        ({"classes": set()}, "at least one class"),
    ],
)
def test_invalid_cycles_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "interval_s": 1.0,
        "classes": {NORMAL},
        "fast_divisor": 5,
        "slow_multiple": 10,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PollCycle(args.pop("interval_s"), args.pop("classes"), **args)


@given(
    classes=st.sets(st.sampled_from(list(PollClass)), min_size=1),
    divisor=st.integers(1, 10),
    multiple=st.integers(1, 10),
    skips=st.lists(st.booleans(), min_size=1, max_size=300),
)
def test_every_class_is_polled_at_its_rate_and_never_less(
    classes: set[PollClass], divisor: int, multiple: int, skips: list[bool]
) -> None:
    """A class never waits longer than its period plus the ticks actually skipped, and
    without skips it is polled on its own grid (multiples of its period)."""
    cycle = PollCycle(1.0, classes, fast_divisor=divisor, slow_multiple=multiple)
    last: dict[PollClass, int] = {}
    served = [tick for tick, skip in enumerate(skips) if not skip or tick == 0]
    for tick in served:
        for c in cycle.due(tick):
            if c in last:
                gap = tick - last[c]
                skipped = sum(skips[last[c] + 1 : tick])
                assert gap <= cycle.periods[c] + skipped
                if not skipped:  # on its own grid: a late poll does not shift it
                    assert tick % cycle.periods[c] == 0
            last[c] = tick
    assert set(last) == classes


# ---------------------------------------------------------------------------- merged reads


def device(points: list[dict[str, Any]], max_gap: int = 8) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {"id": "d", "host": "127.0.0.1", "max_gap": max_gap, "points": points}
    )


def point(name: str, address: int, poll_class: str = "normal", **extra: Any) -> dict[str, Any]:
    return {"point": name, "address": address, "poll_class": poll_class, **extra}


def spans(blocks: list[Any]) -> list[tuple[str, int, int, list[str]]]:
    return [(str(b.table), b.address, b.count, [s.point for s in b.specs]) for b in blocks]


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        # Fast alone: only its registers.
        ({FAST}, [("holding", 2, 1, ["setpoint_w"])]),
        # Fast with normal: one merged read across both classes.
        (
            {FAST, NORMAL},
            [("holding", 0, 4, ["power_w", "current_a", "setpoint_w", "voltage_v"])],
        ),
        ({NORMAL}, [("holding", 0, 4, ["power_w", "current_a", "voltage_v"])]),
        # Slow points far away are a read of their own, and only at slow ticks.
        (
            {FAST, NORMAL, SLOW},
            [
                ("holding", 0, 4, ["power_w", "current_a", "setpoint_w", "voltage_v"]),
                ("holding", 100, 4, ["energy_wh"]),
                ("input", 0, 1, ["temperature_degc"]),
            ],
        ),
        ({SLOW}, [("holding", 100, 4, ["energy_wh"]), ("input", 0, 1, ["temperature_degc"])]),
    ],
    ids=["fast", "fast+normal", "normal", "all", "slow"],
)
def test_points_due_together_are_read_in_merged_blocks(
    due: set[PollClass], expected: list[tuple[str, int, int, list[str]]]
) -> None:
    plan = ReadPlan(
        device(
            [
                point("power_w", 0),
                point("current_a", 1),
                point("setpoint_w", 2, "fast", writable=True),
                point("voltage_v", 3),
                point("energy_wh", 100, "slow", type="uint64"),
                point("temperature_degc", 0, "slow", table="input", type="int16"),
                point("serial_number_count", 200, "slow", type="string", length=4),
            ]
        )
    )
    assert plan.classes == {FAST, NORMAL, SLOW}
    assert spans(plan.blocks(frozenset(due))) == expected
    assert plan.blocks(frozenset(due)) is plan.blocks(frozenset(due))  # planned once


def test_a_device_of_normal_points_reads_as_before() -> None:
    plan = ReadPlan(device([point("a_w", 0), point("b_w", 9), point("c_w", 30)], max_gap=8))
    assert plan.classes == {NORMAL}
    assert spans(plan.all_blocks) == [
        ("holding", 0, 10, ["a_w", "b_w"]),
        ("holding", 30, 1, ["c_w"]),
    ]


def test_poll_classes_in_the_site_file() -> None:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": "s"},
            "gateway": {"poll_classes": {"fast_divisor": 4, "slow_multiple": 60}},
            "devices": [
                {"id": "a", "host": "h", "points": [point("p_w", 0, "fast")]},
                {
                    "id": "b",
                    "host": "h",
                    "poll_classes": {"fast_divisor": 10},
                    "max_outstanding": 2,
                    "points": [point("p_w", 0, "slow")],
                },
            ],
        }
    )
    assert config.gateway.poll_classes.fast_divisor == 4
    a, b = config.devices
    assert a.points[0].poll_class is FAST
    assert a.poll_classes is None  # the gateway's apply
    assert b.poll_classes is not None
    assert (b.poll_classes.fast_divisor, b.poll_classes.slow_multiple) == (10, 10)
    assert b.max_outstanding == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"points": [point("p_w", 0, "sometimes")]}, "poll_class"),
        ({"poll_classes": {"fast_divisor": 0}, "points": [point("p_w", 0)]}, "fast_divisor"),
        (
            {
                "protocol": "modbus_rtu_tcp",
                "max_outstanding": 2,
                "points": [point("p_w", 0)],
            },
            "one request at a time",
        ),
    ],
    ids=["unknown-class", "divisor-0", "outstanding-on-rtu"],
)
def test_bad_poll_settings_are_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeviceConfig.model_validate({"id": "d", "host": "h", **entry})
