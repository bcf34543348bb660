"""What the controllers learn from storage: forecasts and each zone's thermal history.

The I/O side of :mod:`gridpilot.control.forecast` and :mod:`gridpilot.control.thermal`: it
reads 15-minute means of the site's own measurements from storage and hands arrays to their
pure functions.

* ``load_w`` — the site's consumption (grid + battery + PV power: what the loads drew,
  whoever supplied it), the day-type profile blended with persistence
  (:func:`~gridpilot.control.forecast.load_forecast`); the peak shaver subtracts ``pv_w``;
* ``net_load_p90_w`` — the 90 % quantile of the import without the battery (grid +
  battery power: consumption − PV) over the last ten comparable days
  (:func:`~gridpilot.control.forecast.net_import_quantile`): what the peak shaver's
  ``auto`` limit is sized on first;
* ``uncontrolled_load_w`` — the same without the planned zones' chillers (their
  ``chiller_power_point``), when every zone has stored it: the zone planners' other load;
* ``pv_w`` — PV output, the daily profile scaled by today's ratio
  (:func:`~gridpilot.control.forecast.pv_forecast`);
* ``outdoor_degc`` and ``irradiance_wm2`` — daily profile blended with persistence, for the
  zone planners;
* a :class:`~gridpilot.control.thermal.ZoneHistory` per planned zone, for identification.

A series with no history gives no forecast (the controllers fall back and say so).

Each issued ``load_w`` and ``pv_w`` forecast is kept until its horizon has passed, then
scored against what was stored meanwhile (:func:`~gridpilot.control.forecast.forecast_errors`):
:meth:`StoredInputs.metrics` gives the latest day-ahead MAE and NMAE, which the controller
publishes with its own figures, so forecast quality is a time series like any other.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from gridpilot.config.models import GridPilotConfig
from gridpilot.control.base import Forecast, Forecasts, PointRef
from gridpilot.control.forecast import (
    forecast_errors,
    load_forecast,
    net_import_quantile,
    pv_forecast,
)
from gridpilot.control.hvac import HvacParams
from gridpilot.control.thermal import ZoneHistory
from gridpilot.model import SeriesKey
from gridpilot.storage.base import Agg, Storage

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


class StoredInputs:
    """Forecasts and zone histories from a :class:`~gridpilot.storage.base.Storage`."""

    def __init__(
        self,
        storage: Storage,
        config: GridPilotConfig,
        *,
        step: timedelta = timedelta(minutes=15),
        forecast_days: int = 14,
        horizon: timedelta = timedelta(hours=24),
        identification_days: int = 14,
    ) -> None:
        self.storage = storage
        self.config = config
        self.site = config.site.id
        self.step = step
        self.forecast_days = forecast_days
        self.horizon = horizon
        self.identification_days = identification_days
        control = config.control
        self.timezone = control.tariff.timezone if control and control.tariff else "UTC"
        self._issued: dict[str, list[tuple[Forecast, tuple[PointRef, ...]]]] = {}
        self._errors: dict[str, float] = {}

    MAX_ISSUED = 200
    """Forecasts kept for scoring per name (a day of 15-minute refreshes is 96)."""

    def metrics(self) -> dict[str, float]:
        """The latest scores of day-ahead forecasts, e.g. ``load_forecast_nmae_pct``."""
        return dict(self._errors)

    def _issue(self, name: str, forecast: Forecast, sources: tuple[PointRef, ...]) -> None:
        """Keep ``forecast`` to score against the sum of ``sources`` once it has passed."""
        issued = self._issued.setdefault(name, [])
        issued.append((forecast, sources))
        del issued[: -self.MAX_ISSUED]

    async def _score(self, now: datetime) -> None:
        """Score every kept forecast whose horizon has passed, then forget it."""
        for name, issued in self._issued.items():
            due = [
                item for item in issued if item[0].start + len(item[0].values) * item[0].step <= now
            ]
            if not due:
                continue
            self._issued[name] = [item for item in issued if item not in due]
            forecast, refs = due[-1]  # the most recent full horizon: today's figure
            end = forecast.start + len(forecast.values) * forecast.step
            days = max(1, math.ceil((now - forecast.start) / timedelta(days=1)))
            actual: FloatArray | None = None
            for ref in refs:
                values = await self.series(ref, now, days)
                if values is None:
                    actual = None
                    break
                actual = values if actual is None else actual + values
            if actual is None:
                continue
            times, _, _ = self._grid(now, days)
            pairs = [
                (t, v) for t, v in zip(times, actual, strict=True) if forecast.start <= t < end
            ]
            try:
                errors = forecast_errors(forecast, [t for t, _ in pairs], [v for _, v in pairs])
            except ValueError:
                continue  # nothing stored over the horizon, or all zero (PV at night)
            self._errors[f"{name}_mae_w"] = errors.mae
            self._errors[f"{name}_nmae_pct"] = errors.nmae_pct

    # ------------------------------------------------------------------ series

    def _grid(self, now: datetime, days: int) -> tuple[list[datetime], int, int]:
        step_ms = int(self.step.total_seconds() * 1000)
        end_ms = int(now.timestamp() * 1000) // step_ms * step_ms
        start_ms = end_ms - days * 86_400_000
        times = [datetime.fromtimestamp(ms / 1000, UTC) for ms in range(start_ms, end_ms, step_ms)]
        return times, start_ms, end_ms

    async def series(self, ref: PointRef, now: datetime, days: int) -> FloatArray | None:
        """15-minute means of ``ref`` over the last ``days`` days (NaN where nothing was
        stored); ``None`` when nothing at all was."""
        times, start_ms, end_ms = self._grid(now, days)
        step_ms = int(self.step.total_seconds() * 1000)
        points = await self.storage.history(
            SeriesKey(self.site, ref.device, ref.point), start_ms, end_ms, step_ms, Agg.MEAN
        )
        if not points:
            return None
        values = np.full(len(times), np.nan)
        for point in points:
            index = (point.ts_ms - start_ms) // step_ms
            if 0 <= index < len(values):
                values[index] = point.value
        return values

    # ------------------------------------------------------------------ forecasts

    async def forecasts(self, now: datetime) -> Forecasts:
        """The forecasts the configured controllers read; see the module docstring."""
        control = self.config.control
        out: dict[str, Forecast] = {}
        if control is None:
            return out
        await self._score(now)
        times, _, end_ms = self._grid(now, self.forecast_days)
        start = datetime.fromtimestamp(end_ms / 1000, UTC)
        steps = math.ceil(self.horizon / self.step)

        if control.peak_shaving is not None:
            params = control.peak_shaving
            grid = await self.series(
                PointRef.parse(params.grid_power_point), now, self.forecast_days
            )
            battery = await self.series(
                PointRef.parse(params.battery_power_point), now, self.forecast_days
            )
            pv_point = self._pv_point()
            pv = await self.series(pv_point, now, self.forecast_days) if pv_point else None
            if grid is not None:
                # The site's consumption: what the meter saw, plus what the battery and the
                # PV supplied (the peak shaver subtracts the PV forecast itself). A battery or
                # PV that never reported supplied nothing the meter needs correcting for.
                without_battery = grid + (battery if battery is not None else 0.0)
                net = without_battery
                if pv is not None:
                    net = net + np.nan_to_num(pv)
                out["load_w"] = load_forecast(
                    times, net, start, steps, kind="daytype", timezone=self.timezone
                )
                sources: tuple[PointRef, ...] = (PointRef.parse(params.grid_power_point),)
                if battery is not None:
                    sources += (PointRef.parse(params.battery_power_point),)
                if pv is not None and pv_point is not None:
                    sources += (pv_point,)
                self._issue("load_forecast", out["load_w"], sources)
                # The import without the battery (consumption − PV): the quantile the
                # peak shaver's auto limit is sized on, PV already in it.
                out["net_load_p90_w"] = net_import_quantile(
                    times, without_battery, start, steps, timezone=self.timezone
                )
                chillers = [
                    await self.series(
                        PointRef(z.zone, z.chiller_power_point), now, self.forecast_days
                    )
                    for z in control.hvac
                ]
                if control.hvac and all(c is not None for c in chillers):
                    # Without the planned chillers: the zone planners add their own plans.
                    uncontrolled = net - sum(np.nan_to_num(c) for c in chillers if c is not None)
                    out["uncontrolled_load_w"] = load_forecast(
                        times, uncontrolled, start, steps, kind="daytype", timezone=self.timezone
                    )
        pv_ref = self._pv_point()
        if pv_ref is not None:
            pv = await self.series(pv_ref, now, self.forecast_days)
            if pv is not None:
                out["pv_w"] = pv_forecast(times, pv, start, steps, timezone=self.timezone)
                self._issue("pv_forecast", out["pv_w"], (pv_ref,))
        if control.hvac:
            weather = control.hvac[0]
            for name, ref in (
                ("outdoor_degc", weather.outdoor_temperature),
                ("irradiance_wm2", weather.irradiance),
            ):
                if ref is None:
                    continue
                values = await self.series(ref, now, self.forecast_days)
                if values is None:
                    continue
                # Weather has a daily shape and persists for hours: the same blend as load,
                # over every past day. Irradiance is forecast like PV output.
                if name == "irradiance_wm2":
                    out[name] = pv_forecast(times, values, start, steps, timezone=self.timezone)
                else:
                    out[name] = load_forecast(
                        times,
                        values,
                        start,
                        steps,
                        kind="daily",
                        days=7,
                        persistence_time_constant=timedelta(hours=3),
                        timezone=self.timezone,
                    )
        return out

    def _pv_point(self) -> PointRef | None:
        """The PV output: the PV export controller's, else the simulator's inverter name."""
        control = self.config.control
        if control is not None and control.pv_export is not None:
            return control.pv_export.pv_power
        return self._configured(PointRef("pv_inverter", "ac_power_w"))

    def _configured(self, ref: PointRef) -> PointRef | None:
        device = self.config.device(ref.device)
        return ref if device is not None and device.point(ref.point) is not None else None

    # ------------------------------------------------------------------ zones

    async def zone_history(self, params: HvacParams, now: datetime) -> ZoneHistory | None:
        """The zone's last ``identification_days`` days, or ``None`` without temperatures."""
        days = self.identification_days

        async def get(ref: PointRef | None) -> FloatArray | None:
            return None if ref is None else await self.series(ref, now, days)

        zone = params.zone
        temperature = await get(PointRef(zone, params.temperature_point))
        if temperature is None:
            return None
        length = len(temperature)

        def filled(values: FloatArray | None, default: float = math.nan) -> FloatArray:
            return values if values is not None else np.full(length, default, dtype=np.float64)

        outdoor = await get(params.outdoor_temperature)
        cooling = await get(PointRef(zone, params.cooling_point))
        irradiance = await get(params.irradiance)
        occupied = await get(PointRef(zone, params.occupied_point))
        return ZoneHistory.of(
            self.step.total_seconds(),
            temperature_degc=temperature,
            outdoor_degc=filled(outdoor),
            cooling_w=filled(cooling),
            # Without an irradiance sensor the solar gain folds into the constant gains.
            irradiance_wm2=filled(irradiance, 0.0),
            occupied=filled(occupied),
        )
