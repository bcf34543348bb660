"""The ``control`` section of a site file for the simulated building (demo, tests, example).

Kept beside the register maps so that the points it names are the simulator's points; the
demo writes it into its site file and ``examples/building.yaml`` shows the same settings
with comments.
"""

from __future__ import annotations

from typing import Any

from gridpilot.sim.physics import BatteryParams, LoadPanelParams

SHED_ORDER = ("ev_chargers", "water_heaters", "kitchen_extract")
"""Least important first: EV charging can wait, then hot water, then the kitchen."""


def control_section(
    *,
    limit_w: float | str = 150_000.0,
    cycle_s: float = 1.0,
    meter_max_age_s: float = 10.0,
    min_on_s: float = 300.0,
    min_off_s: float = 600.0,
    shed_settle_s: float = 30.0,
    timezone: str = "Europe/London",
    hvac: bool = True,
) -> dict[str, Any]:
    """Peak shaving (battery, then the load panel's circuits), the zone planners, the battery
    envelope and its fail-safe, with a time-of-use tariff that has an evening peak."""
    battery = BatteryParams()
    circuits = {c.name: c for c in LoadPanelParams().circuits}
    tariff = {
        "timezone": timezone,
        "base_price_per_kwh": 0.14,
        "periods": [
            {"name": "peak", "start_hour": 16, "end_hour": 19, "price_per_kwh": 0.34},
            {"name": "night", "start_hour": 0, "end_hour": 7, "price_per_kwh": 0.09,
             "weekdays": [0, 1, 2, 3, 4, 5, 6]},
        ],
        "demand_charge_per_kw": 15.0,
    }  # fmt: skip
    section: dict[str, Any] = {
        "cycle": cycle_s,
        "tariff": tariff,
        "limits": [
            {"point": "battery.active_power_setpoint_w", "ramp_per_s": 25_000, "idle": 0,
             "deadband": 250},
            {"point": "hvac_zone_1.setpoint_degc", "min": 18, "max": 28, "deadband": 0.05},
            {"point": "hvac_zone_2.setpoint_degc", "min": 18, "max": 28, "deadband": 0.05},
        ],
        "batteries": [
            {"setpoint": "battery.active_power_setpoint_w", "soc": "battery.soc_pct",
             "soc_min_pct": 10, "soc_max_pct": 90, "max_age": max(30.0, 3 * meter_max_age_s)},
        ],
        "fail_safes": [
            {"name": "battery-without-meter", "inputs": ["grid_meter.active_power_w"],
             "max_age": meter_max_age_s, "set": {"battery.active_power_setpoint_w": 0}},
        ],
        "peak_shaving": {
            "limit_w": limit_w,
            "capacity_wh": battery.capacity_wh,
            "max_charge_w": battery.max_charge_w,
            "max_discharge_w": battery.max_discharge_w,
            "charge_efficiency": battery.charge_efficiency,
            "discharge_efficiency": battery.discharge_efficiency,
            "soc_min_pct": 10,
            "soc_max_pct": 90,
            "meter_max_age": meter_max_age_s,
            "battery_max_age": max(30.0, 3 * meter_max_age_s),
            "shed_settle": shed_settle_s,
            "sheddable_loads": [
                {
                    "name": name,
                    "point": f"load_panel.{name}_on_state",
                    "power_point": f"load_panel.{name}_power_w",
                    "nominal_w": circuits[name].demand_w,
                    "order": order,
                    "min_on": min_on_s,
                    "min_off": min_off_s,
                    "power_max_age": max(30.0, 3 * meter_max_age_s),
                }
                for order, name in enumerate(SHED_ORDER)
            ],
        },
    }  # fmt: skip
    if hvac:
        section["hvac"] = [{"zone": "hvac_zone_1"}, {"zone": "hvac_zone_2"}]
    return section
