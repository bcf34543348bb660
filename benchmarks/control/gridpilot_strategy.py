"""Strategy (c): GridPilot's engine and controllers in the benchmark's closed loop.

Every step the harness builds a :class:`~gridpilot.control.base.Snapshot` of the physics
state under the simulator's point names (``grid_meter.active_power_w``, ``battery.soc_pct``,
``hvac_zone_1.temperature_degc``, ``weather_io.outdoor_temperature_degc``, ...), stamped
with the step's time, calls :meth:`Engine.cycle` and applies ``result.targets``
(``battery.active_power_setpoint_w``, ``hvac_zone_N.setpoint_degc``).

Forecasts, rebuilt every 15 minutes from what the site has measured (never from the future),
by GridPilot's own forecasters (``gridpilot.control.forecast``) on 15-minute means of the
last 14 days, called as the controller service calls them (``gridpilot.control.inputs``):
``load_w`` (day-type profile blended with persistence) of the site's consumption — base load
+ chillers, i.e. meter + battery + PV, since the peak shaver subtracts ``pv_w`` itself —,
``uncontrolled_load_w`` the same without the zones' chillers (what the HVAC planners add
their own plans to; a site meters its chillers per zone),
``pv_w`` and ``irradiance_wm2`` (daily profile scaled by today's ratio), ``outdoor_degc``
(daily profile blended with persistence). With ``gridpilot.limit_forecast: net_load_p90``
(the default) also ``net_load_p90_w``, as the controller service issues it
(``net_import_quantile``): the 90th percentile of consumption − PV at the same time of day
over the last ten measured days of the same kind (working day or not), the "high
quantile" the peak shaver's limit prefers; ``net_load_p90_pv`` takes, step by step,
the larger of that and the consumption's 90 % quantile (``load_forecast(quantile=0.9)``)
minus ``pv_w``, so that a PV shortfall measured today (a cloud deck, carried forward by the
PV forecast's ratio) raises the forecast where the quantile of past days cannot;
``load_p90`` gives the peak shaver ``load_p90_w`` (that quantile of consumption) and lets it
subtract ``pv_w`` itself; with ``expected`` it sizes its limit on ``load_w − pv_w``.

The days before the month come from the benchmark's history run (no control).

The HVAC controllers identify their zone model from that history (15-minute means of the
zone's temperature, cooling, occupancy and weather), as they would from the site's stored
telemetry. With ``gridpilot.hvac_planning: joint`` (the default, as GridPilot's factory
builds it for two or more zones) one ``HvacGroupController`` plans the zones together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from bench_control import (
    QUARTER,
    BenchConfig,
    Command,
    Inputs,
    Observation,
    Site,
    Trace,
)

from gridpilot.control.base import Forecast, PointRef, Reading, Snapshot
from gridpilot.control.engine import BatteryWindow, Engine, EngineParams, PointLimits
from gridpilot.control.forecast import load_forecast, net_import_quantile, pv_forecast
from gridpilot.control.hvac import HvacGroupController
from gridpilot.sim.physics import battery_available_power_w

BATTERY_SETPOINT = PointRef("battery", "active_power_setpoint_w")
BATTERY_SOC = PointRef("battery", "soc_pct")
FORECAST_DAYS = 14
"""History the forecasters see, as the controller service reads from storage."""


@dataclass(slots=True)
class _Series:
    """Per-step measurements since the history began (history first, then the run)."""

    step_s: float
    origin: datetime
    consumption_w: np.ndarray
    uncontrolled_w: np.ndarray
    """Consumption without the zones' chillers (the site meters them)."""
    pv_w: np.ndarray
    outdoor_degc: np.ndarray
    ghi_wm2: np.ndarray
    filled: int = 0

    def index(self, when: datetime) -> int:
        return round((when - self.origin).total_seconds() / self.step_s)


@dataclass(slots=True)
class GridPilotStrategy:
    name: str
    description: str
    engine: Engine
    zone_devices: tuple[str, ...]
    series: _Series
    battery: Any
    """BatteryParams of the site (for the available-power points)."""
    capacity_wh: float
    horizon_quarters: int
    zone: ZoneInfo
    net_quantile: bool
    load_quantile: bool
    pv_aware: bool
    forecasts: Mapping[str, Forecast] = field(default_factory=dict)
    forecast_at: datetime | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        name: str,
        cfg: BenchConfig,
        site: Site,
        inp: Inputs,
        *,
        history: tuple[Inputs, Trace],
        battery: bool,
        hvac: bool,
    ) -> GridPilotStrategy:
        hist_inp, hist = history
        controllers: list[Any] = []
        parts: list[str] = []
        if battery:
            controllers.append(_peak_shaving(cfg, inp, cfg.gridpilot.limit_forecast))
            parts.append("PeakShavingController")
        if hvac:
            zones = _hvac(cfg, site, hist_inp, hist)
            if cfg.gridpilot.hvac_planning == "joint":
                controllers.append(HvacGroupController(zones))
                parts.append(f"HvacGroupController ({len(zones)} zones)")
            else:
                controllers.extend(zones)
                parts.append(f"{len(zones)} HvacController")
        b = cfg.battery
        limits = [
            PointLimits(
                BATTERY_SETPOINT,
                minimum=-b.max_charge_kw * 1000.0,
                maximum=b.max_discharge_kw * 1000.0,
                idle=0.0,
            )
        ]
        limits += [
            PointLimits(PointRef(device, "setpoint_degc"), minimum=16.0, maximum=30.0)
            for device in site.zone_devices
        ]
        params = EngineParams(
            limits=tuple(limits),
            batteries=(
                BatteryWindow(
                    BATTERY_SETPOINT,
                    BATTERY_SOC,
                    soc_min_pct=b.soc_min_pct,
                    soc_max_pct=b.soc_max_pct,
                    max_age_s=2.0 * cfg.step_s,
                ),
            ),
        )
        n_hist, n_run = hist_inp.steps, inp.steps
        series = _Series(
            step_s=inp.step_s,
            origin=hist_inp.start,
            consumption_w=np.zeros(n_hist + n_run),
            uncontrolled_w=np.zeros(n_hist + n_run),
            pv_w=np.zeros(n_hist + n_run),
            outdoor_degc=np.zeros(n_hist + n_run),
            ghi_wm2=np.zeros(n_hist + n_run),
        )
        series.consumption_w[:n_hist] = hist_inp.base_w + hist.chillers_w
        series.uncontrolled_w[:n_hist] = hist_inp.base_w
        series.pv_w[:n_hist] = hist_inp.pv_w
        series.outdoor_degc[:n_hist] = hist_inp.outdoor_degc
        series.ghi_wm2[:n_hist] = hist_inp.ghi_wm2
        series.filled = n_hist
        if hist_inp.start + timedelta(seconds=n_hist * inp.step_s) != inp.start:
            raise ValueError("the history must end where the run starts")
        return cls(
            name=name,
            description="GridPilot engine: " + " + ".join(parts) + _others(battery, hvac),
            engine=Engine(controllers, params),
            zone_devices=site.zone_devices,
            series=series,
            battery=site.battery,
            capacity_wh=site.battery.capacity_wh,
            horizon_quarters=round(cfg.gridpilot.forecast_horizon_h * 4),
            zone=ZoneInfo(cfg.timezone),
            net_quantile=cfg.gridpilot.limit_forecast in ("net_load_p90", "net_load_p90_pv"),
            pv_aware=cfg.gridpilot.limit_forecast == "net_load_p90_pv",
            load_quantile=cfg.gridpilot.limit_forecast == "load_p90",
        )

    # ------------------------------------------------------------------------------ loop

    def decide(self, obs: Observation) -> Command:
        self._record(obs)
        now = obs.now
        if self.forecast_at is None or now - self.forecast_at >= QUARTER:
            self.forecasts = self._forecasts(now)
            self.forecast_at = now
        result = self.engine.cycle(self._snapshot(obs), self.forecasts)
        for controller in result.errors:
            self.errors[controller] = self.errors.get(controller, 0) + 1
        battery_w = result.targets.get(BATTERY_SETPOINT)
        setpoints = tuple(
            result.targets.get(PointRef(device, "setpoint_degc")) for device in self.zone_devices
        )
        return Command(
            battery_w=battery_w if battery_w is not None else None,
            zone_setpoints_degc=setpoints,
        )

    def notes(self) -> list[str]:
        return [f"{name} raised in {count} cycles" for name, count in self.errors.items()]

    def _record(self, obs: Observation) -> None:
        """The last step's measurements (obs describes step m - 1) into the series."""
        if obs.m == 0:
            return
        s = self.series
        i = s.filled
        s.consumption_w[i] = obs.base_w + obs.chillers_w
        s.uncontrolled_w[i] = obs.base_w
        s.pv_w[i] = obs.pv_w
        # Weather observed during step m - 1: the snapshot carries the current reading, which
        # the harness also records as the value of the step it starts.
        s.outdoor_degc[i] = obs.outdoor_degc
        s.ghi_wm2[i] = obs.ghi_wm2
        s.filled = i + 1

    def _snapshot(self, obs: Observation) -> Snapshot:
        now = obs.now
        charge_w, discharge_w = battery_available_power_w(self.battery, obs.battery.soc_pct)
        values: dict[PointRef, float] = {
            PointRef("grid_meter", "active_power_w"): obs.grid_w,
            PointRef("pv_inverter", "ac_power_w"): obs.pv_w,
            BATTERY_SOC: obs.battery.soc_pct,
            PointRef("battery", "active_power_w"): obs.battery.active_power_w,
            PointRef("battery", "available_charge_power_w"): charge_w,
            PointRef("battery", "available_discharge_power_w"): discharge_w,
            PointRef("battery", "capacity_wh"): self.capacity_wh,
            BATTERY_SETPOINT: obs.battery.setpoint_w,
            PointRef("weather_io", "outdoor_temperature_degc"): obs.outdoor_degc,
            PointRef("weather_io", "irradiance_wm2"): obs.ghi_wm2,
        }
        for device, zone in zip(self.zone_devices, obs.zones, strict=True):
            values[PointRef(device, "temperature_degc")] = zone.temperature_degc
            values[PointRef(device, "effective_setpoint_degc")] = zone.effective_setpoint_degc
            values[PointRef(device, "cooling_power_w")] = zone.cooling_w
            values[PointRef(device, "chiller_power_w")] = zone.chiller_power_w
            values[PointRef(device, "occupied_state")] = 1.0 if zone.occupied else 0.0
            values[PointRef(device, "setpoint_degc")] = zone.setpoint_degc
        readings = {ref: Reading(v, now) for ref, v in values.items()}
        # Powers are the means of the step that just ended: stamped at its midpoint, so
        # that a controller integrating samples (trapezoid between stamps) books each
        # minute's energy in the right place; states (SoC, temperatures) are as of now.
        mid = now - timedelta(seconds=0.5 * self.series.step_s)
        for ref in (
            PointRef("grid_meter", "active_power_w"),
            PointRef("pv_inverter", "ac_power_w"),
            PointRef("battery", "active_power_w"),
        ):
            readings[ref] = Reading(values[ref], mid)
        return Snapshot(now, readings)

    def _forecasts(self, now: datetime) -> dict[str, Forecast]:
        """GridPilot's own forecasters (``gridpilot.control.forecast``) on 15-minute means of
        the last ``FORECAST_DAYS`` days measured, called as the controller service calls
        them (``gridpilot.control.inputs``), plus the harness's net-import quantile."""
        s = self.series
        per = round(QUARTER.total_seconds() / s.step_s)
        end = s.filled - s.filled % per
        first = max(0, end - FORECAST_DAYS * 96 * per)
        first += (end - first) % per
        quarters = (end - first) // per
        if quarters < 96:
            return {}
        t0 = s.origin + timedelta(seconds=first * s.step_s)
        times = [t0 + k * QUARTER for k in range(quarters)]
        start = t0 + quarters * QUARTER

        def means(a: np.ndarray) -> np.ndarray:
            return np.asarray(a[first:end].reshape(quarters, per).mean(axis=1))

        consumption, pv = means(s.consumption_w), means(s.pv_w)
        outdoor, ghi = means(s.outdoor_degc), means(s.ghi_wm2)
        steps = self.horizon_quarters
        tz = self.zone.key
        out: dict[str, Forecast] = {
            # Consumption (base + chillers): the peak shaver subtracts pv_w itself.
            "load_w": load_forecast(times, consumption, start, steps, kind="daytype", timezone=tz),
            # The same without the zones' chillers, for the HVAC planners' demand term.
            "uncontrolled_load_w": load_forecast(
                times, means(s.uncontrolled_w), start, steps, kind="daytype", timezone=tz
            ),
            "pv_w": pv_forecast(times, pv, start, steps, timezone=tz),
            "outdoor_degc": load_forecast(
                times,
                outdoor,
                start,
                steps,
                kind="daily",
                days=7,
                persistence_time_constant=timedelta(hours=3),
                timezone=tz,
            ),
            "irradiance_wm2": pv_forecast(times, ghi, start, steps, timezone=tz),
        }
        if self.load_quantile:
            # As the controller service issues it: the peak shaver subtracts pv_w.
            out["load_p90_w"] = load_forecast(
                times, consumption, start, steps, kind="daytype", timezone=tz, quantile=0.9
            )
        if self.net_quantile:
            # As the controller service issues it (grid + battery = consumption − PV).
            out["net_load_p90_w"] = net_import_quantile(
                times, consumption - pv, start, steps, timezone=tz
            )
        if self.pv_aware:
            # Today's PV shortfall persists (a cloud deck): never below the consumption's
            # quantile minus the PV forecast, which carries today's measured ratio forward.
            high = load_forecast(
                times, consumption, start, steps, kind="daytype", timezone=tz, quantile=0.9
            )
            net = out["net_load_p90_w"]
            out["net_load_p90_w"] = Forecast(
                net.start,
                net.step,
                tuple(
                    max(n, h - p)
                    for n, h, p in zip(net.values, high.values, out["pv_w"].values, strict=True)
                ),
            )
        return out


def _others(battery: bool, hvac: bool) -> str:
    if battery and not hvac:
        return "; thermostats"
    if hvac and not battery:
        return "; battery idle"
    return ""


def _peak_shaving(cfg: BenchConfig, inp: Inputs, limit_forecast: str) -> Any:
    from gridpilot.control.peak_shaving import (  # noqa: PLC0415 - controllers land separately
        PeakShavingController,
        PeakShavingParams,
    )

    b = cfg.battery
    stale = timedelta(seconds=2.0 * inp.step_s)  # one reading per step: not a gap
    defaults: dict[str, Any] = {
        "capacity_wh": b.capacity_kwh * 1000.0,
        "max_charge_w": b.max_charge_kw * 1000.0,
        "max_discharge_w": b.max_discharge_kw * 1000.0,
        "charge_efficiency": b.charge_efficiency,
        "discharge_efficiency": b.discharge_efficiency,
        "soc_min_pct": b.soc_min_pct,
        "soc_max_pct": b.soc_max_pct,
        "block": cfg.tariff.demand_interval,
        "tariff": cfg.tariff,
        "meter_max_age": stale,
        "battery_max_age": stale,
    }
    params = PeakShavingParams.model_validate({**defaults, **cfg.gridpilot.peak_shaving})
    return PeakShavingController(params)


def _hvac(cfg: BenchConfig, site: Site, hist_inp: Inputs, hist: Trace) -> list[Any]:
    from gridpilot.control.hvac import (  # noqa: PLC0415 - controllers land separately
        ComfortBand,
        CopModel,
        HvacController,
        HvacParams,
    )
    from gridpilot.control.tariff import HourWindow  # noqa: PLC0415
    from gridpilot.control.thermal import ZoneHistory  # noqa: PLC0415

    per = round(QUARTER.total_seconds() / hist_inp.step_s)
    n = hist_inp.steps // per

    def means(a: np.ndarray) -> np.ndarray:
        return np.asarray(a[: n * per].reshape(n, per).mean(axis=1))

    out = []
    overrides = dict(cfg.gridpilot.hvac)
    for i, (device, zp) in enumerate(zip(site.zone_devices, site.zones, strict=True)):
        # Temperature at the start of each quarter: the state after the step before it.
        temps = np.concatenate(([np.nan], hist.zone_degc[per - 1 : n * per - 1 : per, i]))
        history = ZoneHistory.of(
            QUARTER.total_seconds(),
            temperature_degc=temps[:n],
            outdoor_degc=means(hist_inp.outdoor_degc),
            cooling_w=means(hist.cooling_w[:, i]),
            irradiance_wm2=means(hist_inp.ghi_wm2),
            occupied=means(hist_inp.occupied.astype(float)),
        )
        defaults: dict[str, Any] = {
            "zone": device,
            "occupied_band": ComfortBand(
                lower_degc=cfg.comfort.low_degc + cfg.comfort.plan_margin_k,
                upper_degc=cfg.comfort.high_degc - cfg.comfort.plan_margin_k,
            ),
            "occupancy": (
                HourWindow(start_hour=cfg.occupancy.from_hour, end_hour=cfg.occupancy.until_hour),
            ),
            "chiller_capacity_w": zp.chiller_capacity_w,
            "cop": CopModel(
                carnot_fraction=zp.carnot_fraction,
                chilled_water_degc=zp.chilled_water_degc,
                condenser_approach_k=zp.condenser_approach_k,
                cop_min=zp.cop_min,
                cop_max=zp.cop_max,
            ),
            "tariff": cfg.tariff,
            "max_input_age_s": 2.0 * hist_inp.step_s,
        }
        params = HvacParams.model_validate({**defaults, **overrides})
        out.append(HvacController(params, history=history))
    return out
