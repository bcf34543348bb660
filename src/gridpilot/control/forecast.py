"""Load and PV forecasts from the site's own history, and how wrong they were.

Pure functions of a history (evenly spaced timestamps and values; NaN marks a gap) that
return a :class:`gridpilot.control.base.Forecast` on the history's own step:

* **Profile.** The value at the same local time of day on comparable past days, averaged:
  ``weekly`` (the same weekday of past weeks), ``daytype`` (past weekdays for a weekday,
  past weekend days for a weekend day: more samples than weekly, for loads that follow the
  working week) or ``daily`` (every past day: PV, which ignores the calendar); a quantile
  of those days instead of their mean gives a high estimate (``load_p90_w``; of the net
  import without the battery, ``net_load_p90_w``: :func:`net_import_quantile`). Lags are
  taken on the local wall clock of ``timezone``, so a profile survives the daylight-saving
  change. Gaps are skipped; only history strictly before the forecast start is used.
* **Persistence.** The last valid value before the start. It knows today's level (a cold
  day, a holiday, a cloud deck) that the profile averages away, but forgets the shape.
* **Blend.** ``profile + w·(last − profile at the last observation)`` with
  ``w = exp(−lead / time constant)``, the lead counted from the last valid observation:
  the last observation's departure from its profile persists over the next minutes and
  fades over the hours after. It is the departure, not the level, that persists: at the
  foot of an office's morning ramp the level is a third of what the next hour brings.
  (Where the profile has no sample at the last observation, the level itself is blended:
  ``w·last + (1 − w)·profile``.) For PV the persistent quantity is the ratio of the last
  value to the profile at that moment (a clear-sky-index analogue), because a PV value
  itself does not persist across the day's arc.

Where no profile sample exists (too short a history) the forecast falls back to
persistence, and where neither exists to the history's mean; it never returns NaN.

:func:`forecast_errors` scores a forecast against what happened (MAE, RMSE, NMAE in %).
Units follow the values (W for ``load_w``/``pv_w``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from gridpilot.control.base import Forecast

ProfileKind = Literal["weekly", "daytype", "daily"]
Values = Sequence[float] | npt.NDArray[np.float64]

_DAY = timedelta(days=1)
_PV_RATIO_MAX = 1.5
"""A PV ratio above this is a profile built from cloudy days, not a brighter sun: cap it."""
_PV_PROFILE_FLOOR = 0.05
"""Below this share of the profile's peak (dawn, dusk) the PV ratio is too noisy to use."""


@dataclass(frozen=True, slots=True)
class History:
    """Evenly spaced samples: ``values[k]`` was measured at ``start + k·step`` (NaN = gap)."""

    start: datetime
    step: timedelta
    values: npt.NDArray[np.float64]

    @classmethod
    def from_arrays(cls, timestamps: Sequence[datetime], values: Values) -> History:
        """Validate and wrap; raises ``ValueError`` on uneven spacing or mismatched lengths."""
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or len(timestamps) != len(array):
            raise ValueError(
                f"need one value per timestamp: {len(timestamps)} timestamps, {array.shape} values"
            )
        if len(timestamps) < 2:
            raise ValueError("need at least two samples to know the step")
        if any(ts.tzinfo is None for ts in (timestamps[0], timestamps[-1])):
            raise ValueError("timestamps must be timezone-aware")
        step = timestamps[1] - timestamps[0]
        if step <= timedelta(0):
            raise ValueError("timestamps must increase")
        for k in range(1, len(timestamps)):
            if timestamps[k] - timestamps[k - 1] != step:
                raise ValueError(
                    f"timestamps are not evenly spaced: {timestamps[k - 1].isoformat()} -> "
                    f"{timestamps[k].isoformat()} is not {step}; fill gaps with NaN"
                )
        return cls(start=timestamps[0], step=step, values=array)

    def index(self, when: datetime) -> int | None:
        """The sample measured at ``when``, or None when off the grid or outside."""
        offset = when - self.start
        k, rest = divmod(offset, self.step)
        if rest or k < 0 or k >= len(self.values):
            return None
        return int(k)

    def last_valid_before(self, when: datetime) -> tuple[datetime, float] | None:
        """The latest non-NaN sample strictly before ``when``."""
        end = math.ceil((when - self.start) / self.step)
        for k in range(min(end, len(self.values)) - 1, -1, -1):
            value = float(self.values[k])
            if not math.isnan(value):
                return self.start + k * self.step, value
        return None


def _same_kind(a: datetime, b: datetime, kind: ProfileKind) -> bool:
    if kind == "weekly":
        return a.weekday() == b.weekday()
    if kind == "daytype":
        return (a.weekday() >= 5) == (b.weekday() >= 5)
    return True


def profile_value(
    history: History,
    when: datetime,
    before: datetime,
    *,
    kind: ProfileKind,
    days: int,
    zone: ZoneInfo,
    quantile: float | None = None,
) -> float:
    """Mean (or ``quantile``, 0..1) of the values at ``when``'s local time of day on up to
    ``days`` past comparable days (NaN skipped), using only samples before ``before``; NaN
    when there are none."""
    local = when.astimezone(zone)
    samples: list[float] = []
    lag_days = 7 if kind == "weekly" else 1
    lag = lag_days
    # Walk back day by day (week by week) until enough samples or the history's start.
    while len(samples) < days:
        past_local = local - timedelta(days=lag)
        lag += lag_days
        past = past_local.astimezone(zone)  # wall-clock arithmetic, then the real instant
        if past < history.start:
            break
        if past >= before or not _same_kind(past_local, local, kind):
            continue
        k = history.index(past)
        if k is None:
            continue
        value = float(history.values[k])
        if not math.isnan(value):
            samples.append(value)
    if not samples:
        return math.nan
    if quantile is None:
        return sum(samples) / len(samples)
    return float(np.quantile(samples, quantile))


def _horizon(history: History, start: datetime, steps: int) -> list[datetime]:
    if steps < 1:
        raise ValueError("the horizon must have at least one step")
    if (start - history.start) % history.step:
        raise ValueError(f"start {start.isoformat()} is not on the history's {history.step} grid")
    return [start + k * history.step for k in range(steps)]


def _weight(lead: timedelta, time_constant: timedelta) -> float:
    """Persistence weight exp(−lead/τ); τ = 0 means pure profile."""
    if time_constant <= timedelta(0):
        return 0.0
    return math.exp(-(lead / time_constant))


def load_forecast(
    timestamps: Sequence[datetime],
    values: Values,
    start: datetime,
    steps: int,
    *,
    kind: ProfileKind = "daytype",
    days: int = 10,
    persistence_time_constant: timedelta = timedelta(hours=1),
    timezone: str = "UTC",
    quantile: float | None = None,
) -> Forecast:
    """Forecast ``steps`` values from ``start`` (on the history's grid and step), W.

    ``kind`` and ``days`` choose the profile (``days`` comparable past days, or weeks for
    ``weekly``); ``persistence_time_constant`` is τ of the persistence weight exp(−lead/τ).
    ``quantile`` (e.g. 0.9) takes that quantile of the past days instead of their mean: the
    high estimate a peak shaver sizes its limit on (``load_p90_w``). With ten days, 0.9
    lies between the two highest.
    """
    if quantile is not None and not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile {quantile} is not between 0 and 1")
    history = History.from_arrays(timestamps, values)
    zone = ZoneInfo(timezone)
    targets = _horizon(history, start, steps)
    last = history.last_valid_before(start)
    fallback = _mean(history, start)
    # The profile where the last observation was: what persists is the observation's
    # departure from it (a busier day, a warmer one), not its level, which would drag a
    # forecast made at the foot of the morning ramp down for hours.
    at_last = math.nan
    if last is not None:
        at_last = profile_value(
            history, last[0], start, kind=kind, days=days, zone=zone, quantile=quantile
        )
    out: list[float] = []
    for when in targets:
        profile = profile_value(
            history, when, start, kind=kind, days=days, zone=zone, quantile=quantile
        )
        if last is None:
            out.append(fallback if math.isnan(profile) else profile)
            continue
        if math.isnan(profile):
            out.append(last[1])
            continue
        w = _weight(when - last[0], persistence_time_constant)
        if math.isnan(at_last):
            out.append(w * last[1] + (1.0 - w) * profile)
        else:
            out.append(profile + w * (last[1] - at_last))
    return Forecast(start=start, step=history.step, values=tuple(out))


def net_import_quantile(
    timestamps: Sequence[datetime],
    values: Values,
    start: datetime,
    steps: int,
    *,
    quantile: float = 0.9,
    days: int = 10,
    timezone: str = "UTC",
) -> Forecast:
    """The ``quantile`` of the site's import without the battery (consumption − PV) at the
    same local time on the last ``days`` days of the same kind (working day or not), W: the
    high estimate the peak shaver sizes its ``auto`` limit on (``net_load_p90_w``).

    A quantile of the net import, not a quantile of consumption minus a PV forecast: the
    busy mornings that set a month's peak are the dull ones, and a quantile of the net
    import keeps them together where the difference of two forecasts averages them away.
    No persistence: the peak shaver raises the forecast by a measured excess itself.
    (Control benchmark, limit from this against the consumption's quantile minus ``pv_w``:
    BENCHMARKS.md, "limit forecast".)"""
    return load_forecast(
        timestamps, values, start, steps, kind="daytype", days=days,
        persistence_time_constant=timedelta(0), timezone=timezone, quantile=quantile,
    )  # fmt: skip


def pv_forecast(
    timestamps: Sequence[datetime],
    values: Values,
    start: datetime,
    steps: int,
    *,
    days: int = 7,
    persistence_time_constant: timedelta = timedelta(hours=6),
    timezone: str = "UTC",
) -> Forecast:
    """PV generation forecast, W (≥ 0): the daily profile of the last ``days`` days, scaled
    by the persisted ratio of the last value to the profile, blended back to 1 over τ.

    τ = 6 h: a day's cloudiness lasts. On the control benchmark's TMY year (Greensboro,
    May–mid-September, forecasts issued 07:00–13:00 every quarter hour) the RMSE at 1, 2,
    3 and 4 h ahead was 88, 112, 121, 120 W/kWp with 6 h against 95, 124, 135, 133 with
    2 h (4 h: 88, 113, 123, 122; never relaxing: 92, 122, 137, 140)."""
    history = History.from_arrays(timestamps, values)
    zone = ZoneInfo(timezone)
    targets = _horizon(history, start, steps)
    last = history.last_valid_before(start)
    profiles = [
        profile_value(history, when, start, kind="daily", days=days, zone=zone) for when in targets
    ]
    ratio: float | None = None
    if last is not None:
        at_last = profile_value(history, last[0], start, kind="daily", days=days, zone=zone)
        peak = max((p for p in profiles if not math.isnan(p)), default=0.0)
        if not math.isnan(at_last) and at_last > _PV_PROFILE_FLOOR * peak and at_last > 0.0:
            ratio = min(_PV_RATIO_MAX, max(0.0, last[1] / at_last))
    out: list[float] = []
    for when, profile in zip(targets, profiles, strict=True):
        if math.isnan(profile):
            # No history at this time of day: persistence, else nothing known.
            out.append(max(0.0, last[1]) if last is not None else 0.0)
            continue
        scale = 1.0
        if ratio is not None and last is not None:
            w = _weight(when - last[0], persistence_time_constant)
            scale = w * ratio + (1.0 - w)
        out.append(max(0.0, profile * scale))
    return Forecast(start=start, step=history.step, values=tuple(out))


def persistence_forecast(
    timestamps: Sequence[datetime], values: Values, start: datetime, steps: int
) -> Forecast:
    """The last valid value before ``start``, held: the baseline a forecast must beat."""
    history = History.from_arrays(timestamps, values)
    _horizon(history, start, steps)
    last = history.last_valid_before(start)
    value = last[1] if last is not None else _mean(history, start)
    return Forecast(start=start, step=history.step, values=(value,) * steps)


def _mean(history: History, before: datetime) -> float:
    end = math.ceil((before - history.start) / history.step)
    part = history.values[: max(0, end)]
    valid = part[~np.isnan(part)]
    if valid.size == 0:
        raise ValueError(f"no valid sample before {before.isoformat()} to forecast from")
    return float(valid.mean())


@dataclass(frozen=True, slots=True)
class ForecastErrors:
    """How far a forecast was from what happened, in the values' unit (W)."""

    mae: float
    """Mean absolute error."""
    rmse: float
    """Root mean square error (punishes large misses)."""
    nmae_pct: float
    """MAE as a percentage of the normaliser (mean |actual| unless given, e.g. capacity)."""
    bias: float
    """Mean of forecast − actual (positive = over-forecast)."""
    count: int
    """Samples compared (actuals inside the forecast, not NaN)."""


def forecast_errors(
    forecast: Forecast,
    timestamps: Sequence[datetime],
    actual: Values,
    *,
    normaliser: float | None = None,
) -> ForecastErrors:
    """Score ``forecast`` against actual values measured at ``timestamps``.

    Actuals outside the forecast or NaN are skipped. ``normaliser`` (e.g. the PV peak
    power, W) scales NMAE; by default the mean absolute actual. Raises ``ValueError`` when
    nothing can be compared or the normaliser is not positive.
    """
    observed = np.asarray(actual, dtype=np.float64)
    if observed.ndim != 1 or len(timestamps) != len(observed):
        raise ValueError("need one actual value per timestamp")
    pairs = [
        (predicted, float(value))
        for ts, value in zip(timestamps, observed, strict=True)
        if not math.isnan(value) and (predicted := forecast.at(ts)) is not None
    ]
    if not pairs:
        raise ValueError("no actual value falls inside the forecast")
    predicted_arr = np.array([p for p, _ in pairs])
    actual_arr = np.array([a for _, a in pairs])
    error = predicted_arr - actual_arr
    mae = float(np.abs(error).mean())
    scale = float(np.abs(actual_arr).mean()) if normaliser is None else normaliser
    if scale <= 0.0:
        raise ValueError("the NMAE normaliser must be positive (all actuals were zero?)")
    return ForecastErrors(
        mae=mae,
        rmse=float(np.sqrt((error**2).mean())),
        nmae_pct=mae / scale * 100.0,
        bias=float(error.mean()),
        count=len(pairs),
    )
