"""Forecasts from history: profiles, persistence blend, PV ratio, gaps, error measures."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gridpilot.control.base import Forecast
from gridpilot.control.forecast import (
    History,
    ProfileKind,
    forecast_errors,
    load_forecast,
    net_import_quantile,
    persistence_forecast,
    profile_value,
    pv_forecast,
)

STEP = timedelta(minutes=15)
PER_DAY = 96
# Monday 2 March 2026, four weeks of history before Monday 30 March.
HISTORY_START = datetime(2026, 3, 2, tzinfo=UTC)
FORECAST_START = HISTORY_START + timedelta(weeks=4)
UTC_ZONE = ZoneInfo("UTC")


def stamps(start: datetime, count: int, step: timedelta = STEP) -> list[datetime]:
    return [start + k * step for k in range(count)]


def office_load_w(when: datetime) -> float:
    """A deterministic office: 20 kW base, +60 kW 08-18 on weekdays, +10 kW Saturday
    mornings; Wednesdays have an extra 15 kW in the afternoon (a weekly, not daily, trait)."""
    hour = when.hour + when.minute / 60
    value = 20_000.0
    if when.weekday() < 5 and 8 <= hour < 18:
        value += 60_000.0
    if when.weekday() == 5 and 8 <= hour < 12:
        value += 10_000.0
    if when.weekday() == 2 and 13 <= hour < 17:
        value += 15_000.0
    return value


def history(days: int = 28, start: datetime = HISTORY_START) -> tuple[list[datetime], list[float]]:
    ts = stamps(start, days * PER_DAY)
    return ts, [office_load_w(t) for t in ts]


# --- History validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamps", "values", "message"),
    [
        (stamps(HISTORY_START, 3), [1.0, 2.0], "one value per timestamp"),
        (stamps(HISTORY_START, 1), [1.0], "at least two samples"),
        (
            [HISTORY_START, HISTORY_START + STEP, HISTORY_START + 3 * STEP],
            [1.0, 2.0, 3.0],
            "not evenly spaced",
        ),
        ([HISTORY_START + STEP, HISTORY_START], [1.0, 2.0], "must increase"),
        (
            [datetime(2026, 3, 2), datetime(2026, 3, 2, 0, 15)],  # noqa: DTZ001 - the point
            [1.0, 2.0],
            "timezone-aware",
        ),
    ],
)
def test_history_validation(timestamps: list[datetime], values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        History.from_arrays(timestamps, values)


def test_forecast_start_must_be_on_the_grid() -> None:
    ts, values = history(days=2)
    with pytest.raises(ValueError, match="grid"):
        load_forecast(ts, values, HISTORY_START + timedelta(days=2, minutes=5), 4)


# --- Profiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "when", "expected_w"),
    [
        # Wednesday 14:00: weekly sees the Wednesday extra; daytype averages it over the
        # ten past weekdays (two of which are Wednesdays).
        ("weekly", datetime(2026, 4, 1, 14, 0, tzinfo=UTC), 95_000.0),
        ("daytype", datetime(2026, 4, 1, 14, 0, tzinfo=UTC), 80_000.0 + 15_000.0 * 2 / 10),
        # Saturday 09:00: weekly is Saturdays only; daytype mixes Saturdays and Sundays.
        ("weekly", datetime(2026, 4, 4, 9, 0, tzinfo=UTC), 30_000.0),
        ("daytype", datetime(2026, 4, 4, 9, 0, tzinfo=UTC), 25_000.0),
        # daily mixes every day: the 10 days before Saturday 4 April are 8 weekdays, one
        # Saturday and one Sunday.
        (
            "daily",
            datetime(2026, 4, 4, 9, 0, tzinfo=UTC),
            (8 * 80_000.0 + 30_000.0 + 20_000.0) / 10,
        ),
    ],
)
def test_profile_kinds(kind: ProfileKind, when: datetime, expected_w: float) -> None:
    ts, values = history(days=34)
    h = History.from_arrays(ts, values)
    days = 4 if kind == "weekly" else 10
    got = profile_value(h, when, when, kind=kind, days=days, zone=UTC_ZONE)
    assert got == pytest.approx(expected_w)


@pytest.mark.parametrize(
    ("quantile", "expected_w"),
    [
        # The 10 weekdays before Wednesday 1 April at 14:00: 8 at 80 kW, 2 Wednesdays at 95.
        (None, 80_000.0 + 15_000.0 * 2 / 10),
        (0.5, 80_000.0),
        (0.9, 95_000.0),  # between the two highest (numpy's linear interpolation)
        (0.85, 80_000.0 + 15_000.0 * 0.65),  # 0.85 × 9 = 7.65: 65 % of the way to the 9th
        (1.0, 95_000.0),
    ],
)
def test_profile_quantile(quantile: float | None, expected_w: float) -> None:
    ts, values = history(days=34)
    h = History.from_arrays(ts, values)
    when = datetime(2026, 4, 1, 14, 0, tzinfo=UTC)
    got = profile_value(h, when, when, kind="daytype", days=10, zone=UTC_ZONE, quantile=quantile)
    assert got == pytest.approx(expected_w)


def test_load_forecast_quantile_is_the_high_estimate() -> None:
    ts, values = history(days=28)
    common: dict[str, Any] = {"kind": "daytype", "persistence_time_constant": timedelta(0)}
    mean = load_forecast(ts, values, FORECAST_START, 7 * PER_DAY, **common)
    p90 = load_forecast(ts, values, FORECAST_START, 7 * PER_DAY, quantile=0.9, **common)
    assert all(high >= avg for high, avg in zip(p90.values, mean.values, strict=True))
    # Wednesday 14:00 (the 13-17 h extra on 2 of 10 weekdays): the p90 sees it.
    wednesday = FORECAST_START + timedelta(days=2, hours=14)
    assert p90.at(wednesday) == 95_000.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_forecast(ts, values, FORECAST_START, 4, quantile=90.0)


def test_net_import_quantile_is_the_daytype_quantile_without_persistence() -> None:
    ts, values = history(days=28)
    # The last quarter-hour read far above the profile: a quantile of past days ignores it
    # (the peak shaver raises its forecast by a measured excess itself).
    values = list(values)
    values[-1] = 500_000.0
    got = net_import_quantile(ts, values, FORECAST_START, 7 * PER_DAY)
    wednesday = FORECAST_START + timedelta(days=2, hours=14)
    assert got.at(wednesday) == 95_000.0  # two of ten weekdays at 95 kW: the 0.9 quantile
    assert got.values[0] == load_forecast(
        ts, values, FORECAST_START, 1, kind="daytype", quantile=0.9,
        persistence_time_constant=timedelta(0),
    ).values[0]  # fmt: skip
    assert got.values[0] < 100_000.0
    median = net_import_quantile(ts, values, FORECAST_START, 7 * PER_DAY, quantile=0.5)
    assert median.at(wednesday) == 80_000.0


def test_profile_uses_only_history_before_the_start() -> None:
    ts, values = history(days=34)
    h = History.from_arrays(ts, values)
    when = datetime(2026, 4, 1, 14, 0, tzinfo=UTC)
    # Cut at 20 March: only the Wednesdays of 18, 11 and 4 March remain.
    cut = datetime(2026, 3, 20, tzinfo=UTC)
    values_changed = np.array(values)
    values_changed[h.index(datetime(2026, 3, 25, 14, 0, tzinfo=UTC)) or 0] = 1e9
    h2 = History.from_arrays(ts, values_changed)
    assert profile_value(h2, when, cut, kind="weekly", days=4, zone=UTC_ZONE) == 95_000.0


def test_profile_skips_gaps() -> None:
    ts, values = history(days=28)
    array = np.array(values)
    h = History.from_arrays(ts, array)
    wednesday = datetime(2026, 3, 25, 14, 0, tzinfo=UTC)
    array[h.index(wednesday) or 0] = math.nan
    array[h.index(wednesday - timedelta(weeks=1)) or 0] = 5_000.0
    h = History.from_arrays(ts, array)
    got = profile_value(
        h, wednesday + timedelta(weeks=1), FORECAST_START, kind="weekly", days=4, zone=UTC_ZONE
    )
    # 25 March is a gap; 18 March is 5 kW; 11 and 4 March are 95 kW.
    assert got == pytest.approx((5_000.0 + 2 * 95_000.0) / 3)


@pytest.mark.parametrize("kind", ["weekly", "daytype"])
def test_pure_profile_reproduces_a_periodic_week(kind: ProfileKind) -> None:
    ts, values = history(days=28)
    days = 3 if kind == "weekly" else 10
    forecast = load_forecast(
        ts,
        values,
        FORECAST_START,
        7 * PER_DAY,
        kind=kind,
        days=days,
        persistence_time_constant=timedelta(0),
    )
    truth = [office_load_w(t) for t in stamps(FORECAST_START, 7 * PER_DAY)]
    errors = np.abs(np.array(forecast.values) - np.array(truth))
    if kind == "weekly":
        assert errors.max() == 0.0  # the same weekday repeats exactly
    else:
        # daytype smears the Wednesday afternoon over all weekdays: only those differ.
        assert errors.max() == pytest.approx(15_000.0 * (1 - 2 / 10))
        # 13-17 h on five weekdays; Saturday and Sunday mornings are mixed likewise.
        assert np.count_nonzero(errors) == 5 * 16 + 2 * 16


@pytest.mark.parametrize(
    ("time_constant", "k", "expected_weight"),
    [
        (timedelta(hours=1), 0, math.exp(-0.25)),  # lead 15 min
        (timedelta(hours=1), 3, math.exp(-1.0)),  # lead 1 h
        (timedelta(hours=4), 7, math.exp(-0.5)),  # lead 2 h
        (timedelta(0), 0, 0.0),  # pure profile
    ],
)
def test_persistence_weight_decays_with_lead(
    time_constant: timedelta, k: int, expected_weight: float
) -> None:
    ts = stamps(HISTORY_START, 14 * PER_DAY)
    values = np.full(len(ts), 50_000.0)
    values[-1] = 70_000.0  # the last observation: 20 kW above the profile
    forecast = load_forecast(
        ts,
        values,
        ts[-1] + STEP,
        8,
        kind="weekly",
        days=2,
        persistence_time_constant=time_constant,
    )
    expected = expected_weight * 70_000.0 + (1 - expected_weight) * 50_000.0
    assert forecast.values[k] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("offset_w", "k"),
    [
        (0.0, 0),  # an ordinary morning: the profile itself, not dragged to the last level
        (0.0, 3),
        (10_000.0, 0),  # a busier morning: its surplus persists ...
        (10_000.0, 7),  # ... and fades with the lead
        (-10_000.0, 3),
    ],
)
def test_the_departure_from_the_profile_persists_not_the_level(offset_w: float, k: int) -> None:
    """At 07:45 an office is at its night level; at 08:00 it jumps by 60 kW. A forecast
    made at the foot of the ramp expects the ramp, plus today's departure from the
    profile fading over τ."""
    ts, values = history(days=29)
    start = datetime(2026, 3, 30, 7, 45, tzinfo=UTC)  # a Monday, on the 15-min grid
    cut = ts.index(start)
    observed = list(values[:cut])
    observed[-1] += offset_w  # 07:30: the last observation
    tau = timedelta(hours=1)
    forecast = load_forecast(
        ts[:cut], observed, start, 8, kind="daytype", persistence_time_constant=tau
    )
    when = start + k * STEP
    lead = when - ts[cut - 1]
    expected = office_load_w(when) + math.exp(-(lead / tau)) * offset_w
    assert forecast.values[k] == pytest.approx(expected)


def test_lead_is_counted_from_the_last_valid_observation() -> None:
    ts = stamps(HISTORY_START, 14 * PER_DAY)
    values = np.full(len(ts), 50_000.0)
    values[-4] = 70_000.0
    values[-3:] = math.nan  # the meter went quiet 45 minutes ago
    forecast = load_forecast(
        ts,
        values,
        ts[-1] + STEP,
        1,
        kind="weekly",
        days=2,
        persistence_time_constant=timedelta(hours=1),
    )
    w = math.exp(-1.0)  # lead: 4 steps = 1 h
    assert forecast.values[0] == pytest.approx(w * 70_000.0 + (1 - w) * 50_000.0)


@pytest.mark.parametrize(
    ("days_of_history", "expected"),
    [
        # Two days of history: no weekly profile yet, persistence holds the last value.
        (2, "persistence"),
        # Ten days: the profile exists from day 8.
        (10, "blend"),
    ],
)
def test_short_history_falls_back_to_persistence(days_of_history: int, expected: str) -> None:
    ts, values = history(days=days_of_history)
    start = ts[-1] + STEP
    forecast = load_forecast(
        ts, values, start, 4, kind="weekly", days=4, persistence_time_constant=timedelta(0)
    )
    if expected == "persistence":
        assert forecast.values == (values[-1],) * 4
    else:
        assert forecast.values == tuple(office_load_w(t) for t in stamps(start, 4))


def test_all_gaps_cannot_be_forecast() -> None:
    ts = stamps(HISTORY_START, 10)
    with pytest.raises(ValueError, match="no valid sample"):
        load_forecast(ts, [math.nan] * 10, ts[-1] + STEP, 2)


def test_blend_beats_persistence_on_a_noisy_periodic_signal() -> None:
    rng = np.random.default_rng(20260302)
    ts = stamps(HISTORY_START, 35 * PER_DAY)
    # The office week plus a day-to-day level (weather) and sample noise.
    level = np.repeat(rng.normal(0.0, 4_000.0, 35), PER_DAY)
    values = np.array([office_load_w(t) for t in ts]) + level + rng.normal(0.0, 5_000.0, len(ts))
    blend_mae, persistence_mae = [], []
    # Forecast origins every 6 hours through the fifth week, 24 hours ahead each.
    for origin in range(28 * PER_DAY, 34 * PER_DAY, 24):
        past_ts, past = ts[:origin], values[:origin]
        actual_ts, actual = ts[origin : origin + PER_DAY], values[origin : origin + PER_DAY]
        blend = load_forecast(past_ts, past, ts[origin], PER_DAY, kind="daytype")
        naive = persistence_forecast(past_ts, past, ts[origin], PER_DAY)
        blend_mae.append(forecast_errors(blend, actual_ts, actual).mae)
        persistence_mae.append(forecast_errors(naive, actual_ts, actual).mae)
    assert np.mean(blend_mae) < 0.4 * np.mean(persistence_mae)
    # Persistence only competes across a quiet weekend, where holding the night level is
    # right by luck; everywhere else the profile's shape wins.
    wins = sum(b < p for b, p in zip(blend_mae, persistence_mae, strict=True))
    assert wins >= 0.8 * len(blend_mae)


# --- PV ---------------------------------------------------------------------------------


def clear_sky_w(when: datetime) -> float:
    hour = when.hour + when.minute / 60
    return max(0.0, 100_000.0 * math.sin(math.pi * (hour - 6.0) / 12.0)) if 6 <= hour <= 18 else 0.0


@pytest.mark.parametrize(
    ("today_share", "time_constant", "k"),
    [
        (0.5, timedelta(hours=2), 0),  # overcast since dawn: half the profile, persisted
        (0.5, timedelta(hours=2), 8),  # two hours later the profile has taken over more
        (1.0, timedelta(hours=2), 4),  # a clear day: the profile itself
        (0.5, timedelta(0), 0),  # no persistence: the profile
    ],
)
def test_pv_forecast_persists_the_ratio_to_the_profile(
    today_share: float, time_constant: timedelta, k: int
) -> None:
    ts = stamps(HISTORY_START, 7 * PER_DAY + 40)  # a week and today until 10:00
    values = [clear_sky_w(t) for t in ts]
    for i in range(7 * PER_DAY, len(ts)):
        values[i] *= today_share
    start = ts[-1] + STEP
    forecast = pv_forecast(ts, values, start, 16, persistence_time_constant=time_constant)
    lead = (k + 1) * STEP
    w = 0.0 if time_constant == timedelta(0) else math.exp(-(lead / time_constant))
    target = start + k * STEP
    assert forecast.values[k] == pytest.approx(clear_sky_w(target) * (w * today_share + 1 - w))


def test_pv_forecast_is_zero_at_night_and_never_negative() -> None:
    ts = stamps(HISTORY_START, 7 * PER_DAY)
    values = np.array([clear_sky_w(t) for t in ts]) + 500.0 * np.sin(np.arange(len(ts)))
    forecast = pv_forecast(ts, np.maximum(values, -300.0), ts[-1] + STEP, PER_DAY)
    assert min(forecast.values) >= 0.0
    assert forecast.values[0] == pytest.approx(0.0, abs=500.0)  # midnight
    assert max(forecast.values) == pytest.approx(100_000.0, rel=0.02)


# --- Error measures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("normaliser", "expected"),
    [
        # Errors −2, +2, 0 (the NaN and the sample outside the forecast are skipped).
        (None, (4 / 3, math.sqrt(8 / 3), 4 / 3 / 20 * 100, 0.0, 3)),
        (100.0, (4 / 3, math.sqrt(8 / 3), 4 / 3, 0.0, 3)),
    ],
)
def test_forecast_errors(
    normaliser: float | None, expected: tuple[float, float, float, float, int]
) -> None:
    start = HISTORY_START
    forecast = Forecast(start, timedelta(hours=1), (10.0, 20.0, 30.0, 40.0))
    ts = stamps(start, 5, timedelta(hours=1))
    errors = forecast_errors(
        forecast, ts, [12.0, 18.0, 30.0, math.nan, 50.0], normaliser=normaliser
    )
    got = (errors.mae, errors.rmse, errors.nmae_pct, errors.bias, errors.count)
    assert got == pytest.approx(expected)


def test_forecast_errors_bias_and_refusals() -> None:
    forecast = Forecast(HISTORY_START, STEP, (10.0, 10.0))
    ts = stamps(HISTORY_START, 2)
    assert forecast_errors(forecast, ts, [8.0, 6.0]).bias == pytest.approx(3.0)
    with pytest.raises(ValueError, match="inside the forecast"):
        forecast_errors(forecast, stamps(HISTORY_START + timedelta(days=1), 2), [1.0, 2.0])
    with pytest.raises(ValueError, match="normaliser"):
        forecast_errors(forecast, ts, [0.0, 0.0])


def test_persistence_forecast_holds_the_last_valid_value() -> None:
    ts = stamps(HISTORY_START, 4)
    forecast = persistence_forecast(ts, [1.0, 2.0, 3.0, math.nan], ts[-1] + STEP, 3)
    assert forecast.values == (3.0, 3.0, 3.0)
    assert forecast.start == ts[-1] + STEP
    assert forecast.step == STEP


def test_profile_follows_local_time_across_daylight_saving() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    ts = stamps(HISTORY_START, 28 * PER_DAY)
    # Office hours on the local clock; clocks go forward on Sunday 29 March 2026.
    values = [office_load_w(t.astimezone(berlin)) for t in ts]
    start = ts[-1] + STEP
    forecast = load_forecast(
        ts,
        values,
        start,
        5 * PER_DAY,
        kind="weekly",
        days=3,
        persistence_time_constant=timedelta(0),
        timezone="Europe/Berlin",
    )
    truth = tuple(office_load_w(t.astimezone(berlin)) for t in stamps(start, 5 * PER_DAY))
    assert forecast.values == truth
    # Lags of whole UTC weeks would be an hour off after the change.
    shifted = load_forecast(
        ts,
        values,
        start,
        5 * PER_DAY,
        kind="weekly",
        days=3,
        persistence_time_constant=timedelta(0),
        timezone="UTC",
    )
    assert shifted.values != truth
