"""Regenerate ``data/reference.csv.gz``: a year of building load and weather at 15 minutes.

Not part of the benchmark run: it needs ``demandlib`` (0.2.2 wants pandas < 3) and ``pvlib``,
which the project's venv does not install. Run it in a throwaway venv::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install demandlib==0.2.2 'pandas<3' 'pvlib>=0.11'
    /tmp/refvenv/bin/python benchmarks/control/make_reference_data.py

Sources and what is done to them (README.md next to this file says why):

* Building base load: the BDEW standard load profile G1 (commercial, weekdays 08-18) of
  ``demandlib.bdew.ElecSlp(YEAR)``, scaled to ``ANNUAL_KWH``. Its 15-minute values are
  read on the site's wall clock (America/New_York, daylight saving included): the value of
  local quarter hour hh:mm is the load at that wall-clock time.
* Weather: the TMY3 file ``723170TYA.CSV`` bundled with pvlib (Greensboro Piedmont Triad
  Intl., NC; 36.1 N, 79.95 W, 273 m), read with ``pvlib.iotools.read_tmy3``. TMY3 stamps are
  local *standard* time (UTC-5 all year) and end the hour they describe: dry-bulb is the value
  at the stamp, irradiance the mean over the hour before it. Temperature is interpolated
  linearly between stamps; each hourly irradiance is placed at its hour's midpoint and
  interpolated linearly, set to 0 while the sun is below the horizon.
* PV: per kWp of DC nameplate, PVWatts (pvlib) on a 20° south-facing roof: isotropic
  transposition of the interpolated GHI/DNI/DHI, SAPM cell temperature (close-mount
  glass/glass), gamma -0.37 %/K, PVWatts' default 14.08 % system losses. DC power; the
  benchmark applies its own inverter efficiency and AC clipping.

Output columns: ``time_utc`` (start of the quarter hour, ISO 8601 ending in Z),
``base_load_w`` (mean power of the quarter hour), ``outdoor_degc``, ``ghi_wm2``,
``pv_dc_w_per_kwp``. Rows: every quarter hour of the local year ``YEAR`` (EST start to EST
end, 35,040 rows).
"""

from __future__ import annotations

import argparse
import gzip
import warnings
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-not-found]
import pvlib  # type: ignore[import-not-found]
from demandlib import bdew  # type: ignore[import-not-found]

YEAR = 2026
ANNUAL_KWH = 400_000.0
PROFILE = "g1"
SITE_ZONE = "America/New_York"
TMY_FILE = "723170TYA.CSV"
TILT_DEG = 20.0
AZIMUTH_DEG = 180.0
GAMMA_PER_K = -0.0037

OUT = Path(__file__).parent / "data" / "reference.csv.gz"


def quarter_hours_utc() -> pd.DatetimeIndex:
    """Every quarter hour of local standard-time year YEAR, in UTC (EST = UTC-5)."""
    start = pd.Timestamp(f"{YEAR}-01-01 05:00", tz="UTC")
    end = pd.Timestamp(f"{YEAR + 1}-01-01 05:00", tz="UTC")
    return pd.date_range(start, end, freq="15min", inclusive="left")


def base_load_w(times: pd.DatetimeIndex) -> np.ndarray:
    """BDEW profile value at each instant's wall-clock time on the site."""
    with warnings.catch_warnings():
        # demandlib turns warnings into errors inside ElecSlp; keep our own filters out of it.
        slp = bdew.ElecSlp(YEAR).get_scaled_power_profiles({PROFILE: ANNUAL_KWH})
    profile_kw = slp[PROFILE]
    wall = times.tz_convert(SITE_ZONE).tz_localize(None).floor("15min")
    # The local year starts at 00:00 on Jan 1 (EST) and ends 23:45 on Dec 31: inside the
    # profile. At the autumn change the repeated hour reads the same values twice; in spring
    # the skipped hour is never read.
    return np.asarray(profile_kw.reindex(wall).to_numpy() * 1000.0, dtype=float)


def weather(times: pd.DatetimeIndex) -> pd.DataFrame:
    path = Path(pvlib.__file__).parent / "data" / TMY_FILE
    tmy, meta = pvlib.iotools.read_tmy3(path, coerce_year=YEAR, map_variables=True)
    location = pvlib.location.Location(
        meta["latitude"], meta["longitude"], altitude=meta["altitude"], tz="Etc/GMT+5"
    )
    stamps = tmy.index.tz_convert("UTC")
    # Extend by one day on each side, cyclically, so the year's edges interpolate.
    year = pd.Timedelta(days=365)
    head = tmy.iloc[-24:]
    tail = tmy.iloc[:24]
    frame = pd.concat([head, tmy, tail])
    index = stamps[-24:] - year
    index = index.append(stamps).append(stamps[:24] + year)
    frame.index = index
    assert (index[1:] > index[:-1]).all(), "TMY stamps must increase"

    grid = times.asi8.astype(float)
    temp = np.interp(grid, frame.index.asi8.astype(float), frame["temp_air"].to_numpy(float))
    wind = np.interp(grid, frame.index.asi8.astype(float), frame["wind_speed"].to_numpy(float))
    mid = (frame.index - pd.Timedelta(minutes=30)).asi8.astype(float)
    solar = location.get_solarposition(times)
    up = solar["apparent_elevation"].to_numpy(float) > 0.0
    irr = {}
    for name in ("ghi", "dni", "dhi"):
        values = np.interp(grid, mid, frame[name].to_numpy(float))
        irr[name] = np.where(up, np.maximum(values, 0.0), 0.0)
    poa = pvlib.irradiance.get_total_irradiance(
        TILT_DEG,
        AZIMUTH_DEG,
        solar["apparent_zenith"],
        solar["azimuth"],
        irr["dni"],
        irr["ghi"],
        irr["dhi"],
    )["poa_global"].fillna(0.0)
    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["close_mount_glass_glass"]
    cell = pvlib.temperature.sapm_cell(poa, temp, wind, **params)
    dc = pvlib.pvsystem.pvwatts_dc(poa, cell, pdc0=1000.0, gamma_pdc=GAMMA_PER_K)
    losses = pvlib.pvsystem.pvwatts_losses() / 100.0
    dc = np.maximum(np.asarray(dc, dtype=float) * (1.0 - losses), 0.0)
    return pd.DataFrame(
        {"outdoor_degc": temp, "ghi_wm2": irr["ghi"], "pv_dc_w_per_kwp": dc}, index=times
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    times = quarter_hours_utc()
    frame = weather(times)
    frame.insert(0, "base_load_w", base_load_w(times))
    if frame.isna().any().any():
        raise SystemExit(f"gaps in the reference data:\n{frame[frame.isna().any(axis=1)]}")
    frame = frame.round({"base_load_w": 0, "outdoor_degc": 2, "ghi_wm2": 1, "pv_dc_w_per_kwp": 1})
    frame["base_load_w"] = frame["base_load_w"].astype(int)
    frame.index = frame.index.strftime("%Y-%m-%dT%H:%MZ")
    frame.index.name = "time_utc"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same inputs give a byte-identical file.
    with gzip.GzipFile(args.out, "wb", mtime=0) as raw:
        raw.write(frame.to_csv(lineterminator="\n").encode())
    load_mwh = frame["base_load_w"].sum() / 4e6
    load_max_kw = frame["base_load_w"].max() / 1e3
    pv_kwh_per_kwp = frame["pv_dc_w_per_kwp"].sum() / 4e3
    print(
        f"{args.out}: {len(frame)} rows; base load {load_mwh:.1f} MWh/yr, max {load_max_kw:.1f}"
        f" kW; PV {pv_kwh_per_kwp:.0f} kWh/kWp/yr (DC)"
    )


if __name__ == "__main__":
    main()
