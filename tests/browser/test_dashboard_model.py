"""The dashboard's pure functions (static/js/model.js), run in the real browser: which
numbers the power flow shows, how history is bucketed, what the controller panel reads."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import PageProblems

pytestmark = pytest.mark.integration


@pytest.fixture
def model(page: tuple[Page, PageProblems], static_url: str) -> Any:
    """run(js_function, *args): ``js_function(model, ...args)`` in the page, where model is
    static/js/model.js; the result comes back through JSON (undefined fields dropped)."""
    browser_page, problems = page
    browser_page.goto(f"{static_url}/favicon.svg")

    def run(function: str, *args: Any) -> Any:
        return browser_page.evaluate(
            f"""async (args) => {{
                const model = await import("/js/model.js");
                const result = ({function})(model, ...args);
                return result === undefined ? null : JSON.parse(JSON.stringify(result));
            }}""",
            list(args),
        )

    yield run
    assert problems.errors == []


FLOW = """(m, body) => {
    const f = m.deriveFlow(m.indexLatest(body));
    const w = (part) => (part ? part.w : null);
    return {grid: w(f.grid), pv: w(f.pv), battery: w(f.battery),
            soc: f.battery ? f.battery.socPct : null, load: w(f.load),
            grid_stale: f.grid ? f.grid.stale : null};
}"""
CONTROL = """(m, state, body, id) => {
    const byDevice = m.indexLatest(body);
    const metrics = m.controllerMetrics(byDevice, id);
    return [m.demandCards(state, metrics), m.zoneCards(state, metrics, byDevice)];
}"""


def latest(*rows: tuple[str, str, float], age_s: float = 0.5) -> dict[str, Any]:
    return {
        "values": [
            {"device": d, "point": p, "value": v, "unit": None, "ts": "", "age_s": age_s}
            for d, p, v in rows
        ]
    }


DEMO = latest(
    ("grid_meter", "active_power_w", 94_000.0),
    ("grid_meter", "active_power_l1_w", 31_000.0),
    ("pv_inverter", "ac_power_w", 12_000.0),
    ("battery", "active_power_w", -50_000.0),
    ("battery", "soc_pct", 60.0),
    ("battery", "capacity_wh", 200_000.0),
    ("ahu_fan", "power_w", 7_700.0),
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # the demo: importing 94 kW, PV 12 kW, charging 50 kW -> the building uses 56 kW
        (DEMO, {"grid": 94_000, "pv": 12_000, "battery": -50_000, "soc": 60, "load": 56_000}),
        # exporting with the battery discharging
        (
            latest(
                ("grid_meter", "active_power_w", -8_000.0),
                ("pv_inverter", "ac_power_w", 30_000.0),
                ("battery", "active_power_w", 5_000.0),
                ("battery", "soc_pct", 80.0),
            ),
            {"grid": -8_000, "pv": 30_000, "battery": 5_000, "soc": 80, "load": 27_000},
        ),
        # no battery, two inverters summed
        (
            latest(
                ("grid_meter", "active_power_w", 10_000.0),
                ("pv_roof", "ac_power_w", 3_000.0),
                ("pv_carport", "ac_power_w", 2_000.0),
            ),
            {"grid": 10_000, "pv": 5_000, "battery": None, "soc": None, "load": 15_000},
        ),
        # two batteries: power summed, SoC weighted by capacity
        (
            latest(
                ("grid_meter", "active_power_w", 1_000.0),
                ("battery_a", "active_power_w", 1_000.0),
                ("battery_a", "soc_pct", 90.0),
                ("battery_a", "capacity_wh", 300_000.0),
                ("battery_b", "active_power_w", 1_000.0),
                ("battery_b", "soc_pct", 50.0),
                ("battery_b", "capacity_wh", 100_000.0),
            ),
            {"grid": 1_000, "pv": None, "battery": 2_000, "soc": 80, "load": 3_000},
        ),
        # a battery whose power is missing: the load cannot be known
        (
            latest(("grid_meter", "active_power_w", 1_000.0), ("battery", "soc_pct", 50.0)),
            {"grid": 1_000, "pv": None, "battery": None, "soc": 50, "load": None},
        ),
        # no grid meter: nothing to balance against
        (
            latest(("pv_inverter", "ac_power_w", 1_000.0)),
            {"grid": None, "pv": 1_000, "battery": None, "soc": None, "load": None},
        ),
    ],
)
def test_power_flow_from_latest_values(
    model: Any, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    summary = model(FLOW, body)
    del summary["grid_stale"]
    assert summary == pytest.approx(expected)


FLOW_WITH_DEVICES = """(m, body, devices) => {
    const f = m.deriveFlow(m.indexLatest(body), devices);
    const w = (part) => (part ? part.w : null);
    return {grid: w(f.grid), pv: w(f.pv), battery: w(f.battery),
            soc: f.battery ? f.battery.socPct : null, load: w(f.load),
            pv_devices: f.pv ? f.pv.devices : null};
}"""


def flow(role: str, power: str, sign: int = 1, soc: str | None = None) -> dict[str, Any]:
    return {"role": role, "power_point": power, "power_sign": sign, "soc_point": soc}


SUNSPEC_SITE = [  # as GET /devices lists them: names the guessing would not recognise
    {"id": "utility", "flow": flow("grid", "m203_w", sign=-1)},  # meter counts export +
    {"id": "roof", "flow": flow("pv", "m103_w")},
    {"id": "carport", "flow": flow("pv", "m103_w")},
    {"id": "storage", "flow": flow("battery", "m802_w", soc="m802_soc_pct")},
    {"id": "weather", "flow": None},
]


def test_power_flow_from_the_roles_the_site_file_gives(model: Any) -> None:
    body = latest(
        ("utility", "m203_w", -20_000.0),  # importing 20 kW
        ("roof", "m103_w", 30_000.0),
        ("carport", "m103_w", 5_000.0),
        ("storage", "m802_w", -4_000.0),  # charging
        ("storage", "m802_soc_pct", 55.0),
        ("weather", "ac_power_w", 999.0),  # not in the flow: its names do not matter
    )
    assert model(FLOW_WITH_DEVICES, body, SUNSPEC_SITE) == {
        "grid": 20_000.0,
        "pv": 35_000.0,
        "battery": -4_000.0,
        "soc": 55.0,
        "load": 51_000.0,
        "pv_devices": ["roof", "carport"],
    }
    # An inverter without a value yet: PV (and so the load) unknown, not under-counted.
    partial = latest(("utility", "m203_w", -20_000.0), ("roof", "m103_w", 30_000.0))
    summary = model(FLOW_WITH_DEVICES, partial, SUNSPEC_SITE)
    assert summary["pv"] is None
    assert summary["load"] is None
    assert summary["grid"] == 20_000.0
    # Devices without roles: recognised by their point names, as before.
    guessed = model(FLOW_WITH_DEVICES, DEMO, [{"id": "grid_meter", "flow": None}])
    del guessed["pv_devices"]
    as_before = model(FLOW, DEMO)
    del as_before["grid_stale"]
    assert guessed == pytest.approx(as_before)


def test_old_values_are_marked_stale(model: Any) -> None:
    stale = latest(("grid_meter", "active_power_w", 5.0), age_s=120)
    fresh = latest(("grid_meter", "active_power_w", 5.0), age_s=2)
    assert model(FLOW, stale)["grid_stale"] is True
    assert model(FLOW, fresh)["grid_stale"] is False


@pytest.mark.parametrize(
    ("span_ms", "every"),
    [
        (3_600_000, "5s"),
        (86_400_000, "1m"),
        (7 * 86_400_000, "15m"),
        (30 * 86_400_000, "30m"),
        (365 * 86_400_000, "6h"),
        (60_000, "1s"),
        (50 * 365 * 86_400_000, "7d"),
    ],
)
def test_history_buckets_stay_under_two_thousand(model: Any, span_ms: int, every: str) -> None:
    chosen = model("(m, span) => m.chooseEvery(span)", span_ms)
    assert chosen["text"] == every
    if every != "7d":  # the longest bucket, whatever the span
        assert span_ms / chosen["ms"] + 1 <= 2000


def test_history_columns_break_the_line_at_missing_buckets(model: Any) -> None:
    mean = {
        "every_ms": 60_000,
        "values": [
            {"ts": "2026-11-26T12:00:00Z", "value": 1.0},
            {"ts": "2026-11-26T12:01:00Z", "value": 2.0},
            {"ts": "2026-11-26T12:05:00Z", "value": 3.0},  # 12:02-12:04 missing
        ],
    }
    high = {"values": [{"ts": "2026-11-26T12:00:00Z", "value": 1.5}]}
    low = {"values": [{"ts": "2026-11-26T12:01:00Z", "value": 1.9}]}
    xs, ys, hi, lo = model("(m, ...a) => m.alignHistory(...a)", mean, high, low)
    t0 = 1_795_694_400  # 2026-11-26T12:00:00Z
    assert xs == [t0, t0 + 60, t0 + 120, t0 + 300]
    assert ys == [1.0, 2.0, None, 3.0]
    assert hi == [1.5, None, None, None]
    assert lo == [None, 1.9, None, None]


CONTROL_STATE = {
    "controllers": {
        "peak_shaving": {"enabled": True, "error": None},
        "hvac_zone_1_planner": {"enabled": True, "error": None},
    },
    "targets": {
        "battery.active_power_setpoint_w": {"value": -5000.0, "source": "manual"},
        "hvac_zone_1.setpoint_degc": {"value": 23.5, "source": "hvac_zone_1_planner"},
    },
}
CONTROL_LATEST = latest(
    ("controller", "peak_shaving_demand_w", 80_000.0),
    ("controller", "peak_shaving_limit_w", 110_000.0),
    ("controller", "peak_shaving_allowed_import_w", 150_000.0),
    ("controller", "peak_shaving_block_elapsed_s", 300.0),
    ("controller", "hvac_zone_1_planner_comfort_deviation_degc", 0.4),
    ("hvac_zone_1", "temperature_degc", 24.4),
    ("hvac_zone_1", "occupied_state", 1.0),
)


def test_controller_panel_reads_demand_and_zones(model: Any) -> None:
    demand, zones = model(CONTROL, CONTROL_STATE, CONTROL_LATEST, "controller")
    assert demand == [
        {
            "name": "peak_shaving",
            "demandW": 80_000.0,
            "limitW": 110_000.0,
            "allowedImportW": 150_000.0,
            "blockElapsedS": 300.0,
        }
    ]
    assert zones == [
        {
            "name": "hvac_zone_1_planner",
            "zone": "hvac_zone_1",
            "temperatureDegc": 24.4,
            "setpointDegc": 23.5,
            "setpointSource": "hvac_zone_1_planner",
            "deviationDegc": 0.4,
            "occupied": 1.0,
        }
    ]


def test_zones_of_a_group_planner_and_an_overridden_zone(model: Any) -> None:
    # One planner for both zones names its metrics <planner>_<zone>_<metric>; zone 2's
    # setpoint is held by an operator, so its target's source is "manual".
    state = {
        "controllers": {"hvac_group_planner": {"enabled": True, "error": None}},
        "targets": {
            "hvac_zone_1.setpoint_degc": {"value": 22.0, "source": "hvac_group_planner"},
            "hvac_zone_2.setpoint_degc": {"value": 26.0, "source": "manual"},
        },
    }
    body = latest(
        ("controller", "hvac_group_planner_hvac_zone_1_comfort_deviation_degc", 0.0),
        ("controller", "hvac_group_planner_hvac_zone_1_comfort_lower_degc", 21.0),
        ("controller", "hvac_group_planner_hvac_zone_1_comfort_upper_degc", 24.0),
        ("controller", "hvac_group_planner_hvac_zone_2_comfort_deviation_degc", 1.5),
        ("hvac_zone_1", "temperature_degc", 22.5),
        ("hvac_zone_2", "temperature_degc", 25.5),
        ("hvac_zone_3", "temperature_degc", 20.0),
        ("hvac_zone_3", "setpoint_degc", 21.0),
    )
    _, zones = model(CONTROL, state, body, "controller")
    assert [
        (z["zone"], z.get("name"), z["setpointDegc"], z.get("deviationDegc"), z.get("lowerDegc"))
        for z in zones
    ] == [
        ("hvac_zone_1", "hvac_group_planner", 22.0, 0.0, 21.0),
        ("hvac_zone_2", "hvac_group_planner", 26.0, 1.5, None),
        # no controller: its own setpoint and temperature, nothing planned
        ("hvac_zone_3", None, 21.0, None, None),
    ]


@pytest.mark.parametrize(
    ("value", "reached"), [(-5000.0, True), (-5000.000001, True), (-4000.0, False)]
)
def test_override_counts_as_applied_when_the_target_equals_it(
    model: Any, value: float, reached: bool
) -> None:
    point = "battery.active_power_setpoint_w"
    reached_js = "(m, ...a) => m.targetReached(...a)"
    assert model(reached_js, CONTROL_STATE, point, value) is reached
    assert model(reached_js, CONTROL_STATE, "battery.other_w", value) is False
