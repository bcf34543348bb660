"""Forecasts and zone histories read from a real SQLite store of the site's own data."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gridpilot.config import GridPilotConfig
from gridpilot.control.base import PointRef
from gridpilot.control.inputs import StoredInputs
from gridpilot.control.thermal import identify_zone
from gridpilot.model import Sample
from gridpilot.sim.control import control_section
from gridpilot.sim.physics import ZoneParams, rc_step
from gridpilot.storage import open_storage

pytestmark = pytest.mark.integration

NOW = datetime(2026, 7, 15, 6, 0, tzinfo=UTC)  # a Wednesday before the working day
DAYS = 14
STEP = timedelta(minutes=5)


def office_load_w(when: datetime) -> float:
    """A working-day plateau on weekdays, a base load otherwise."""
    weekday = when.weekday() < 5
    return 120_000.0 if weekday and 8 <= when.hour < 18 else 40_000.0


def config() -> GridPilotConfig:
    control = control_section(timezone="UTC")
    control["journal"] = None
    points = {
        "grid_meter": ["active_power_w"],
        "battery": ["active_power_w", "soc_pct", "active_power_setpoint_w",
                    "available_charge_power_w", "available_discharge_power_w"],
        "pv_inverter": ["ac_power_w"],
        "load_panel": [f"{c}_{s}" for c in ("ev_chargers", "water_heaters", "kitchen_extract")
                       for s in ("on_state", "power_w")],
        "weather_io": ["outdoor_temperature_degc", "irradiance_wm2"],
        "hvac_zone_1": ["temperature_degc", "cooling_power_w", "occupied_state", "setpoint_degc"],
        "hvac_zone_2": ["temperature_degc", "cooling_power_w", "occupied_state", "setpoint_degc"],
    }  # fmt: skip
    devices = [
        {"id": d, "protocol": "mqtt", "points": [{"point": p} for p in names]}
        for d, names in points.items()
    ]
    return GridPilotConfig.model_validate(
        {"site": {"id": "s"}, "storage": {"path": "t.db"}, "control": control, "devices": devices}
    )


def history_samples(
    start: datetime = NOW - timedelta(days=DAYS), end: datetime = NOW
) -> list[Sample]:
    """Two weeks of 5-minute samples: the office load met half by the battery on one day,
    a zone driven by a known 1R1C model with a cooling schedule that varies."""
    samples: list[Sample] = []
    zone = ZoneParams()
    temperature = 24.0
    t = start
    k = 0
    while t < end:
        ms = int(t.timestamp() * 1000)
        load = office_load_w(t)
        battery = 20_000.0 if t.day == NOW.day - 7 and 8 <= t.hour < 18 else 0.0
        outdoor = 22.0 + 6.0 * math.cos(2 * math.pi * (t.hour + t.minute / 60 - 15) / 24)
        irradiance = max(0.0, 800.0 * math.sin(math.pi * (t.hour + t.minute / 60 - 6) / 12))
        occupied = 1.0 if t.weekday() < 5 and 7 <= t.hour < 19 else 0.0
        cooling = (30_000.0 + 15_000.0 * math.sin(k / 7.0)) if occupied else 0.0
        gains = (15_000.0 if occupied else 3_000.0) + 25.0 * irradiance
        samples += [
            # the meter sees the load less what the battery and the PV supply
            Sample("s", "grid_meter", "active_power_w", ms, load - battery - irradiance * 60.0),
            Sample("s", "battery", "active_power_w", ms, battery),
            Sample("s", "pv_inverter", "ac_power_w", ms, irradiance * 60.0),
            Sample("s", "weather_io", "outdoor_temperature_degc", ms, outdoor),
            Sample("s", "weather_io", "irradiance_wm2", ms, irradiance),
            Sample("s", "hvac_zone_1", "temperature_degc", ms, temperature),
            Sample("s", "hvac_zone_1", "cooling_power_w", ms, cooling),
            Sample("s", "hvac_zone_1", "occupied_state", ms, occupied),
        ]
        temperature = rc_step(
            temperature, outdoor, gains - cooling, STEP.total_seconds(),
            resistance_k_per_w=zone.resistance_k_per_w,
            capacitance_j_per_k=zone.capacitance_j_per_k,
        )  # fmt: skip
        t += STEP
        k += 1
    return samples


async def test_forecasts_and_zone_history_come_from_the_stored_telemetry(tmp_path: Path) -> None:
    cfg = config()
    async with open_storage(cfg.storage, tmp_path) as storage:
        await storage.write(history_samples())
        inputs = StoredInputs(storage, cfg)
        forecasts = await inputs.forecasts(NOW)

        load = forecasts["load_w"]
        assert load.step == timedelta(minutes=15)
        assert len(load.values) == 96
        # the consumption (grid + battery + PV) has the office shape: neither the day the
        # battery covered part of it nor the PV's midday output dent the profile
        noon = load.at(NOW.replace(hour=12))
        night = load.at(NOW + timedelta(hours=20))  # 02:00 next day
        assert noon == pytest.approx(120_000.0, rel=0.02)
        assert night == pytest.approx(40_000.0, rel=0.05)
        assert forecasts["pv_w"].at(NOW.replace(hour=12)) == pytest.approx(48_000.0, rel=0.05)
        # the import without the battery (load less PV): the battery's day does not lift it
        net_p90 = forecasts["net_load_p90_w"]
        assert net_p90.at(NOW.replace(hour=12)) == pytest.approx(120_000.0 - 48_000.0, rel=0.03)
        assert net_p90.at(NOW + timedelta(hours=20)) == pytest.approx(40_000.0, rel=0.05)
        assert forecasts["outdoor_degc"].at(NOW.replace(hour=15)) == pytest.approx(28.0, abs=0.5)

        history = await inputs.zone_history(cfg.control.hvac[0], NOW)  # type: ignore[union-attr]
        assert history is not None
        assert history.step_s == 900.0
        fit = identify_zone(history)
        # 15-minute means of a 5-minute simulation: the time constant comes back close
        rc = ZoneParams().resistance_k_per_w * ZoneParams().capacitance_j_per_k
        assert not hasattr(fit, "reason"), getattr(fit, "reason", "")
        assert fit.rc.time_constant_s == pytest.approx(rc, rel=0.15)  # type: ignore[union-attr]

        # a zone that never reported has no history; a point never stored, no series
        assert await inputs.zone_history(cfg.control.hvac[1], NOW) is None  # type: ignore[union-attr]
        assert await inputs.series(PointRef("weather_io", "nothing_w"), NOW, 1) is None
        gappy = await inputs.series(PointRef("grid_meter", "active_power_w"), NOW, DAYS + 2)
        assert gappy is not None
        assert np.isnan(gappy[:96]).all()  # before the history: gaps, not zeros


async def test_day_ahead_forecasts_are_scored_once_their_horizon_has_passed(
    tmp_path: Path,
) -> None:
    cfg = config()
    async with open_storage(cfg.storage, tmp_path) as storage:
        await storage.write(history_samples())
        inputs = StoredInputs(storage, cfg)
        await inputs.forecasts(NOW)
        assert inputs.metrics() == {}  # nothing has happened yet to score against
        # the day happens (a Wednesday like the last ones), then the next refresh scores it
        await storage.write(history_samples(NOW, NOW + timedelta(days=1, minutes=15)))
        await inputs.forecasts(NOW + timedelta(days=1, minutes=15))
        scores = inputs.metrics()
        assert 0.0 <= scores["load_forecast_nmae_pct"] < 5.0, scores
        assert scores["load_forecast_mae_w"] < 5_000.0
        assert "pv_forecast_nmae_pct" in scores
