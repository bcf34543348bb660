"""Closed-loop control benchmark: a month at 1-minute steps through the simulator's physics.

    .venv/bin/python benchmarks/control/bench_control.py                  # July, ~N minutes
    .venv/bin/python benchmarks/control/bench_control.py --days 2         # smoke run
    .venv/bin/python benchmarks/control/bench_control.py --json out.json  # figures as JSON

The building: the BDEW G1 office load and Greensboro TMY3 weather of ``data/reference.csv.gz``
(see README.md), a PV array with inverter clipping, a battery (``step_battery``) and two
1R1C zones with their chillers (``step_zone``), all from ``gridpilot.sim.physics``, composed
here without the simulator's Modbus shell. Each strategy drives the same inputs (the same
base-load noise too):

* ``none`` — battery idle, thermostats at a fixed setpoint;
* ``threshold`` — the instantaneous rule: discharge by grid - L above L, recharge below
  L - margin; thermostats;
* ``gridpilot*`` — GridPilot's engine and controllers fed snapshots of the physics state;
* ``optimum*`` — an LP over the whole span with perfect foresight (the upper bound),
  replayed through the same 1-minute physics.

The ``-battery``/``-hvac`` variants control one asset and leave the other as in ``none``, so
that each target is judged on its own; the plain names control both.

Sign conventions as in :mod:`gridpilot.control.base` (grid import +, battery discharge +).
Powers in W inside, kW / kWh / $ in the report.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import scipy.sparse as sp
import yaml
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linprog

from gridpilot.control.tariff import Tariff
from gridpilot.sim.physics import (
    BatteryParams,
    BatteryState,
    ZoneParams,
    ZoneState,
    chiller_cop,
    rc_coefficient,
    step_battery,
    step_zone,
    zone_gains_w,
)

HERE = Path(__file__).parent
DATA = HERE / "data" / "reference.csv.gz"
CONFIG = HERE / "config.yaml"
QUARTER = timedelta(minutes=15)
WH_PER_J = 1.0 / 3600.0

# --------------------------------------------------------------------------------------------
# Configuration (validated once, here; frozen afterwards)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BatteryConfig(_Frozen):
    capacity_kwh: float = Field(gt=0)
    max_charge_kw: float = Field(gt=0)
    max_discharge_kw: float = Field(gt=0)
    charge_efficiency: float = Field(gt=0, le=1)
    discharge_efficiency: float = Field(gt=0, le=1)
    soc_min_pct: float = Field(ge=0, le=100)
    soc_max_pct: float = Field(ge=0, le=100)
    initial_soc_pct: float = Field(ge=0, le=100)

    def params(self) -> BatteryParams:
        return BatteryParams(
            capacity_wh=self.capacity_kwh * 1000.0,
            max_charge_w=self.max_charge_kw * 1000.0,
            max_discharge_w=self.max_discharge_kw * 1000.0,
            charge_efficiency=self.charge_efficiency,
            discharge_efficiency=self.discharge_efficiency,
            soc_min_pct=self.soc_min_pct,
            soc_max_pct=self.soc_max_pct,
        )


class PvConfig(_Frozen):
    dc_kwp: float = Field(ge=0)
    ac_kw: float = Field(ge=0)
    inverter_efficiency: float = Field(gt=0, le=1)


class HoursConfig(_Frozen):
    from_hour: float = Field(ge=0, le=24)
    until_hour: float = Field(ge=0, le=24)


class ComfortConfig(HoursConfig):
    low_degc: float
    high_degc: float
    plan_margin_k: float = Field(default=0.1, ge=0)
    """Planners (the optimum's LP, GridPilot's HVAC controllers) aim this far inside the
    band: the 1-minute physics strays a little from a 15-minute plan (chiller ramps)."""


class ZoneConfig(_Frozen):
    """A zone: its device id and any ``ZoneParams`` field to change from the default."""

    model_config = ConfigDict(frozen=True, extra="allow")
    device: str

    def params(self) -> ZoneParams:
        extra = dict(self.model_extra or {})
        return ZoneParams(**{k: float(v) for k, v in extra.items()})


class ThresholdConfig(_Frozen):
    limit_kw: float | Literal["auto"] = "auto"
    recharge_margin_kw: float = Field(default=10.0, ge=0)


class OptimumConfig(_Frozen):
    step_minutes: int = Field(default=15, gt=0)
    comfort_penalty_per_kh: float = Field(default=100.0, ge=0)
    throughput_cost_per_kwh: float = Field(default=1e-4, ge=0)


class GridPilotConfig(_Frozen):
    forecast_horizon_h: float = Field(default=24.0, gt=0)
    limit_forecast: Literal["net_load_p90", "net_load_p90_pv", "load_p90", "expected"] = (
        "net_load_p90"
    )
    """What the peak shaver sizes its limit on (see gridpilot_strategy.py)."""
    peak_shaving: dict[str, Any] = Field(default_factory=dict)
    hvac: dict[str, Any] = Field(default_factory=dict)
    hvac_planning: Literal["joint", "per_zone"] = "joint"
    """One HvacGroupController for the zones, or one HvacController per zone."""


class BenchConfig(_Frozen):
    year: int
    month: int = Field(ge=1, le=12)
    timezone: str
    step_s: float = Field(default=60.0, gt=0)
    seed: int = 1
    base_load_noise: float = Field(default=0.015, ge=0)
    """Relative std of the base load per 5-second simulator step (``gridpilot sim``'s own
    figure); a step of ``step_s`` sees the mean of step_s / 5 such draws."""
    history_days: int = Field(default=28, ge=7)
    tariff: Tariff
    battery: BatteryConfig
    pv: PvConfig
    occupancy: HoursConfig
    comfort: ComfortConfig
    thermostat_setpoint_degc: float
    zones: tuple[ZoneConfig, ...]
    threshold: ThresholdConfig = ThresholdConfig()
    optimum: OptimumConfig = OptimumConfig()
    gridpilot: GridPilotConfig = GridPilotConfig()


def load_config(path: Path) -> BenchConfig:
    with path.open() as f:
        raw = yaml.safe_load(f)
    return BenchConfig.model_validate(raw)


# --------------------------------------------------------------------------------------------
# Inputs: the reference data at 1-minute steps


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the physics and the bill need, per step (index m covers [t_m, t_m + dt))."""

    start: datetime
    step_s: float
    base_w: np.ndarray
    pv_w: np.ndarray
    outdoor_degc: np.ndarray
    ghi_wm2: np.ndarray
    occupied: np.ndarray
    comfort: np.ndarray
    price_per_kwh: np.ndarray
    demand_counts: np.ndarray
    """Per demand block: whether it counts towards billed demand."""

    @property
    def steps(self) -> int:
        return len(self.base_w)

    def time(self, m: int) -> datetime:
        return self.start + timedelta(seconds=m * self.step_s)


@dataclass(frozen=True, slots=True)
class Reference:
    """The committed quarter-hour data (UTC stamps, start of each quarter)."""

    start: datetime
    base_w: np.ndarray
    outdoor_degc: np.ndarray
    ghi_wm2: np.ndarray
    pv_dc_w_per_kwp: np.ndarray

    @property
    def end(self) -> datetime:
        return self.start + QUARTER * len(self.base_w)


def load_reference(path: Path = DATA) -> Reference:
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    expected = ["time_utc", "base_load_w", "outdoor_degc", "ghi_wm2", "pv_dc_w_per_kwp"]
    if header != expected:
        raise SystemExit(f"{path}: columns {header}, expected {expected}")
    start = datetime.fromisoformat(body[0][0].replace("Z", "+00:00"))
    for k in (1, len(body) - 1):  # the file is written on a regular grid; check its ends
        stamp = datetime.fromisoformat(body[k][0].replace("Z", "+00:00"))
        if stamp != start + k * QUARTER:
            raise SystemExit(f"{path}: row {k + 1} is {stamp}, not on the quarter-hour grid")
    values = np.array([[float(v) for v in row[1:]] for row in body])
    return Reference(start, values[:, 0], values[:, 1], values[:, 2], values[:, 3])


def _in_hours(local: datetime, hours: HoursConfig) -> bool:
    hour = local.hour + local.minute / 60.0
    return local.weekday() < 5 and hours.from_hour <= hour < hours.until_hour


def make_inputs(cfg: BenchConfig, ref: Reference, start: datetime, days: float) -> Inputs:
    """The reference data from ``start`` (UTC, on a quarter hour) for ``days``, per step."""
    dt = cfg.step_s
    steps = round(days * 86400.0 / dt)
    if start < ref.start or start + timedelta(seconds=steps * dt) > ref.end:
        raise SystemExit(
            f"{start:%Y-%m-%d} + {days:g} days (with {cfg.history_days} days of history) is "
            f"outside the reference data ({ref.start:%Y-%m-%d} .. {ref.end:%Y-%m-%d})"
        )
    t = (start - ref.start).total_seconds() + dt * np.arange(steps)  # s since ref.start
    quarter = np.floor(t / 900.0).astype(int)
    stamps = 900.0 * np.arange(len(ref.base_w))
    rng = np.random.default_rng(cfg.seed + int(start.timestamp()) // 86400)
    noise = cfg.base_load_noise * math.sqrt(min(1.0, 5.0 / dt))
    base = ref.base_w[quarter] * (1.0 + rng.normal(0.0, noise, steps))
    # Point values (weather) are interpolated; the load is a quarter-hour mean and is held.
    outdoor = np.interp(t, stamps, ref.outdoor_degc)
    ghi = np.interp(t, stamps, ref.ghi_wm2)
    dc = np.interp(t, stamps, ref.pv_dc_w_per_kwp) * cfg.pv.dc_kwp
    pv = np.minimum(dc * cfg.pv.inverter_efficiency, cfg.pv.ac_kw * 1000.0)
    zone = ZoneInfo(cfg.timezone)
    occupied = np.zeros(steps, dtype=bool)
    comfort = np.zeros(steps, dtype=bool)
    price = np.zeros(steps)
    for m in range(steps):
        when = start + timedelta(seconds=m * dt)
        local = when.astimezone(zone)
        occupied[m] = _in_hours(local, cfg.occupancy)
        comfort[m] = _in_hours(local, cfg.comfort)
        if m % 15 == 0 or dt != 60.0:  # prices change on quarter hours at the finest
            current = cfg.tariff.price_per_kwh(when)
        price[m] = current
    per_block = round(cfg.tariff.demand_interval.total_seconds() / dt)
    blocks = steps // per_block
    demand_counts = np.array(
        [
            cfg.tariff.counts_for_demand(start + k * cfg.tariff.demand_interval)
            for k in range(blocks)
        ]
    )
    return Inputs(
        start, dt, np.maximum(base, 0.0), pv, outdoor, ghi, occupied, comfort, price, demand_counts
    )


# --------------------------------------------------------------------------------------------
# The closed loop


@dataclass(frozen=True, slots=True)
class Observation:
    """What a strategy sees at the start of step m: the state after step m - 1."""

    m: int
    now: datetime
    grid_w: float
    """Meter reading of the last step (import +)."""
    base_w: float
    chillers_w: float
    pv_w: float
    battery: BatteryState
    zones: tuple[ZoneState, ...]
    outdoor_degc: float
    ghi_wm2: float


@dataclass(frozen=True, slots=True)
class Command:
    battery_w: float | None = None
    """Battery setpoint (discharge +); ``None`` keeps the last."""
    zone_setpoints_degc: tuple[float | None, ...] | None = None


class Strategy(Protocol):
    name: str

    def decide(self, obs: Observation) -> Command: ...


@dataclass(slots=True)
class Trace:
    """Per-step results of one run (values over step m, states at its end)."""

    grid_w: np.ndarray
    battery_w: np.ndarray
    chillers_w: np.ndarray
    soc_pct: np.ndarray
    zone_degc: np.ndarray
    """Shape (steps, zones)."""
    cooling_w: np.ndarray
    """Thermal cooling per zone, shape (steps, zones)."""
    charged_wh: float = 0.0
    discharged_wh: float = 0.0
    soc_start_pct: float = 0.0
    compute_s: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Site:
    battery: BatteryParams
    zones: tuple[ZoneParams, ...]
    zone_devices: tuple[str, ...]


def site_of(cfg: BenchConfig) -> Site:
    return Site(
        cfg.battery.params(),
        tuple(z.params() for z in cfg.zones),
        tuple(z.device for z in cfg.zones),
    )


@dataclass(frozen=True, slots=True)
class InitialState:
    soc_pct: float
    zones: tuple[ZoneState, ...]


def run(
    site: Site, inp: Inputs, strategy: Strategy, init: InitialState, thermostat_degc: float
) -> Trace:
    """Step the physics through ``inp`` with ``strategy`` deciding before every step."""
    n, dt = inp.steps, inp.step_s
    battery = BatteryState(soc_pct=init.soc_pct, setpoint_w=0.0)
    zones = [replace(z, setpoint_degc=thermostat_degc) for z in init.zones]
    trace = Trace(
        grid_w=np.zeros(n),
        battery_w=np.zeros(n),
        chillers_w=np.zeros(n),
        soc_pct=np.zeros(n),
        zone_degc=np.zeros((n, len(zones))),
        cooling_w=np.zeros((n, len(zones))),
        soc_start_pct=init.soc_pct,
    )
    # The first observation: the meter as it would have read with the battery idle.
    chillers = sum(z.chiller_power_w for z in zones)
    base, pv = float(inp.base_w[0]), float(inp.pv_w[0])
    grid = base + chillers - pv
    compute = 0.0
    base_w, pv_w, outdoor, ghi, occupied = (
        inp.base_w,
        inp.pv_w,
        inp.outdoor_degc,
        inp.ghi_wm2,
        inp.occupied,
    )
    for m in range(n):
        obs = Observation(
            m,
            inp.time(m),
            grid,
            base,
            chillers,
            pv,
            battery,
            tuple(zones),
            float(outdoor[m]),
            float(ghi[m]),
        )
        tick = time.perf_counter()
        command = strategy.decide(obs)
        compute += time.perf_counter() - tick
        if command.battery_w is not None:
            battery = replace(battery, setpoint_w=command.battery_w)
        if command.zone_setpoints_degc is not None:
            for i, setpoint in enumerate(command.zone_setpoints_degc):
                if setpoint is not None:
                    zones[i] = replace(zones[i], setpoint_degc=setpoint)
        battery = step_battery(site.battery, battery, dt)
        zones = [
            step_zone(
                zp,
                zs,
                outdoor_degc=float(outdoor[m]),
                irradiance_wm2=float(ghi[m]),
                occupied=bool(occupied[m]),
                dt_s=dt,
            )
            for zp, zs in zip(site.zones, zones, strict=True)
        ]
        base, pv = float(base_w[m]), float(pv_w[m])
        chillers = sum(z.chiller_power_w for z in zones)
        grid = base + chillers - pv - battery.active_power_w
        trace.grid_w[m] = grid
        trace.battery_w[m] = battery.active_power_w
        trace.chillers_w[m] = chillers
        trace.soc_pct[m] = battery.soc_pct
        trace.zone_degc[m] = [z.temperature_degc for z in zones]
        trace.cooling_w[m] = [z.cooling_w for z in zones]
    trace.charged_wh = battery.energy_charged_wh
    trace.discharged_wh = battery.energy_discharged_wh
    trace.compute_s = compute
    return trace


# --------------------------------------------------------------------------------------------
# Strategies (a) and (b)


@dataclass(slots=True)
class NoControl:
    """Battery idle; the thermostats keep their fixed setpoint."""

    name: str = "none"

    def decide(self, obs: Observation) -> Command:
        return Command(battery_w=0.0)


@dataclass(slots=True)
class ThresholdRule:
    """The instantaneous rule: hold the meter at L by discharging, recharge below L - margin.

    From the meter and the battery's own power: the import without the battery is
    grid + battery, so a setpoint of (grid + battery) - L puts the meter on L (as OpenEMS'
    ``Controller.Symmetric.PeakShaving`` does). Recharging targets L - margin.
    """

    limit_w: float
    margin_w: float
    name: str = "threshold"

    def decide(self, obs: Observation) -> Command:
        net = obs.grid_w + obs.battery.active_power_w
        if net > self.limit_w:
            return Command(battery_w=net - self.limit_w)
        recharge_to = self.limit_w - self.margin_w
        if net < recharge_to:
            return Command(battery_w=-(recharge_to - net))
        return Command(battery_w=0.0)


def threshold_limit_w(history: Trace, inp: Inputs, battery: BatteryConfig) -> float:
    """Commissioning the rule from last month's meter data: the smallest L such that, on every
    day of the history, the energy above L (15-minute means) fits the usable battery energy
    and the largest excess fits the inverter (DOMAIN.md, "Choosing L")."""
    blocks = _blocks(np.maximum(history.grid_w, 0.0), inp)
    per_day = round(86400.0 / inp.step_s) // _per_block(inp)
    days = blocks[: len(blocks) // per_day * per_day].reshape(-1, per_day)
    usable_wh = battery.capacity_kwh * 1000.0 * (battery.soc_max_pct - battery.soc_min_pct) / 100.0
    block_h = _per_block(inp) * inp.step_s / 3600.0

    def fits(limit: float) -> bool:
        excess = np.maximum(days - limit, 0.0)
        need_wh = excess.sum(axis=1) * block_h / battery.discharge_efficiency
        inverter_w = battery.max_discharge_kw * 1000.0
        return bool(need_wh.max() <= usable_wh and excess.max() <= inverter_w)

    lo, hi = 0.0, float(days.max())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------------------------
# Metrics


def _per_block(inp: Inputs) -> int:
    return round(QUARTER.total_seconds() / inp.step_s)


def _blocks(values: np.ndarray, inp: Inputs) -> np.ndarray:
    per = _per_block(inp)
    whole = len(values) // per * per
    return np.asarray(values[:whole].reshape(-1, per).mean(axis=1))


@dataclass(frozen=True, slots=True)
class Figures:
    peak_kw: float
    energy_cost: float
    demand_charge: float
    comfort_kh: float
    throughput_kwh: float
    """AC energy the battery delivered (discharged)."""
    charged_kwh: float
    import_kwh: float
    export_kwh: float
    chillers_kwh: float
    soc_min_pct: float
    soc_max_pct: float
    soc_end_pct: float
    balance_error_kwh: float
    """|Σ grid - Σ (base + chillers - pv - battery)| · dt: the meter balance."""
    battery_balance_error_kwh: float
    """|ΔSoC·capacity - (charged·η_c - discharged/η_d)|: the battery's own books."""
    compute_s: float

    @property
    def total_cost(self) -> float:
        return self.energy_cost + self.demand_charge


def figures(trace: Trace, inp: Inputs, cfg: BenchConfig) -> Figures:
    h = inp.step_s / 3600.0
    imp = np.maximum(trace.grid_w, 0.0)
    exp = np.maximum(-trace.grid_w, 0.0)
    demand = _blocks(imp, inp)
    counted = demand[inp.demand_counts[: len(demand)]]
    peak_kw = float(counted.max()) / 1000.0 if counted.size else 0.0
    energy_cost = float(
        (inp.price_per_kwh * imp).sum() * h / 1000.0
        - cfg.tariff.export_price_per_kwh * exp.sum() * h / 1000.0
    )
    band_lo, band_hi = cfg.comfort.low_degc, cfg.comfort.high_degc
    zone_degc = trace.zone_degc
    outside = np.maximum(zone_degc - band_hi, 0.0) + np.maximum(band_lo - zone_degc, 0.0)
    comfort_kh = float(outside[inp.comfort].sum() * h)
    balance = float(
        abs(trace.grid_w.sum() - (inp.base_w + trace.chillers_w - inp.pv_w - trace.battery_w).sum())
        * h
        / 1000.0
    )
    b = cfg.battery
    stored_kwh = (
        (trace.soc_pct[-1] - trace.soc_start_pct) / 100.0 * b.capacity_kwh
        if len(trace.soc_pct)
        else 0.0
    )
    books_kwh = (
        trace.charged_wh * b.charge_efficiency - trace.discharged_wh / b.discharge_efficiency
    ) / 1000.0
    return Figures(
        peak_kw=peak_kw,
        energy_cost=energy_cost,
        demand_charge=peak_kw * cfg.tariff.demand_charge_per_kw,
        comfort_kh=comfort_kh,
        throughput_kwh=trace.discharged_wh / 1000.0,
        charged_kwh=trace.charged_wh / 1000.0,
        import_kwh=float(imp.sum() * h / 1000.0),
        export_kwh=float(exp.sum() * h / 1000.0),
        chillers_kwh=float(trace.chillers_w.sum() * h / 1000.0),
        soc_min_pct=float(trace.soc_pct.min()),
        soc_max_pct=float(trace.soc_pct.max()),
        soc_end_pct=float(trace.soc_pct[-1]),
        balance_error_kwh=balance,
        battery_balance_error_kwh=abs(stored_kwh - books_kwh),
        compute_s=trace.compute_s,
    )


# --------------------------------------------------------------------------------------------
# (d) The perfect-foresight optimum: one LP over the whole span


@dataclass(frozen=True, slots=True)
class Plan:
    """The LP's schedule per LP interval, and its own figures."""

    step_s: float
    battery_w: np.ndarray
    """Discharge + per interval (0 when the battery is not optimised)."""
    grid_w: np.ndarray
    """Planned meter power per interval (import +)."""
    zone_degc: np.ndarray | None
    """Planned temperatures at interval boundaries, shape (intervals + 1, zones)."""
    zone_cooling_w: np.ndarray | None
    objective: float
    peak_kw: float
    solve_s: float


def optimise(
    cfg: BenchConfig,
    site: Site,
    inp: Inputs,
    init: InitialState,
    *,
    battery: bool,
    hvac: bool,
    fixed_chillers_w: np.ndarray | None = None,
    setback_cooling_w: np.ndarray | None = None,
) -> Plan:
    """min energy cost + demand charge + comfort penalty (+ a tie-breaking throughput cost).

    Variables per interval k: import g, export x, charge c, discharge d (W), stored energy
    e (Wh, at boundaries), per zone cooling q (W thermal) and temperature T (°C, at
    boundaries) with comfort slacks; one peak D (W). The zone model is the simulator's exact
    1R1C step at the LP resolution with the interval's mean outdoor temperature, irradiance
    and gains; chiller electric power = q / COP(mean outdoor temperature). Outside the BMS
    occupancy the zones run on their setback thermostat, which the EMS cannot steer (it
    cools only above the setback, never below): there the LP's cooling is fixed to what the
    setback thermostat did in the ``none`` run (``setback_cooling_w``, per step and zone), so
    that it can neither plan a night-time pre-cooling the replay could not carry out nor
    start its mornings from zones hotter than the thermostat would leave them.
    """
    opt = cfg.optimum
    per = round(opt.step_minutes * 60.0 / inp.step_s)
    n = inp.steps // per
    dt_s = per * inp.step_s
    h = dt_s / 3600.0

    def mean(a: np.ndarray) -> np.ndarray:
        return np.asarray(a[: n * per].reshape(n, per).mean(axis=1))

    base, pv = mean(inp.base_w), mean(inp.pv_w)
    outdoor, ghi = mean(inp.outdoor_degc), mean(inp.ghi_wm2)
    price = mean(inp.price_per_kwh)
    occupied = inp.occupied[: n * per].reshape(n, per).all(axis=1)
    comfort_k = inp.comfort[: n * per].reshape(n, per).any(axis=1)
    block_per = _per_block(inp)
    if per > block_per or block_per % per:
        raise SystemExit("optimum.step_minutes must divide the demand interval")
    counts = np.repeat(inp.demand_counts, block_per // per)[:n]
    fixed = np.zeros(n) if fixed_chillers_w is None else mean(fixed_chillers_w)

    names: list[tuple[str, int]] = []
    offsets: dict[str, int] = {}
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []

    def var(name: str, size: int, lo: np.ndarray | float, hi: np.ndarray | float) -> int:
        offsets[name] = sum(s for _, s in names)
        names.append((name, size))
        lower.append(np.broadcast_to(np.asarray(lo, dtype=float), (size,)).copy())
        upper.append(np.broadcast_to(np.asarray(hi, dtype=float), (size,)).copy())
        return offsets[name]

    bp = site.battery
    cap_wh = bp.capacity_wh
    e0 = init.soc_pct / 100.0 * cap_wh
    e_min, e_max = bp.soc_min_pct / 100.0 * cap_wh, bp.soc_max_pct / 100.0 * cap_wh
    g = var("g", n, 0.0, np.inf)
    x = var("x", n, 0.0, np.inf)
    c = var("c", n, 0.0, bp.max_charge_w if battery else 0.0)
    d = var("d", n, 0.0, bp.max_discharge_w if battery else 0.0)
    e_lo = np.full(n + 1, min(e_min, e0))
    e_hi = np.full(n + 1, max(e_max, e0))
    e_lo[0] = e_hi[0] = e0
    e_lo[-1] = e0  # end no emptier than it started: no free energy from the battery
    e = var("e", n + 1, e_lo, e_hi)
    zones = site.zones if hvac else ()
    zq, zt, zu, zl = [], [], [], []
    for i, zp in enumerate(zones):
        setback = mean(setback_cooling_w[:, i]) if setback_cooling_w is not None else np.zeros(n)
        q_lo = np.where(occupied, 0.0, setback)
        q_hi = np.where(occupied, zp.chiller_capacity_w, setback)
        zq.append(var(f"q{i}", n, q_lo, q_hi))
        t_lo = np.full(n + 1, -np.inf)
        t_hi = np.full(n + 1, np.inf)
        t_lo[0] = t_hi[0] = init.zones[i].temperature_degc
        zt.append(var(f"T{i}", n + 1, t_lo, t_hi))
        zu.append(var(f"u{i}", n, 0.0, np.inf))
        zl.append(var(f"l{i}", n, 0.0, np.inf))
    peak = var("D", 1, 0.0, np.inf)
    size = sum(s for _, s in names)

    cost = np.zeros(size)
    cost[g : g + n] = price * h / 1000.0
    cost[x : x + n] = -cfg.tariff.export_price_per_kwh * h / 1000.0
    cost[c : c + n] = opt.throughput_cost_per_kwh * h / 1000.0
    cost[d : d + n] = opt.throughput_cost_per_kwh * h / 1000.0
    for i in range(len(zones)):
        cost[zu[i] : zu[i] + n] = opt.comfort_penalty_per_kh * h
        cost[zl[i] : zl[i] + n] = opt.comfort_penalty_per_kh * h
    cost[peak] = cfg.tariff.demand_charge_per_kw / 1000.0

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    rhs_eq: list[np.ndarray] = []
    k = np.arange(n)
    row0 = 0

    def put(r: np.ndarray, col: np.ndarray, v: np.ndarray | float) -> None:
        rows.append(r)
        cols.append(col)
        vals.append(np.broadcast_to(np.asarray(v, dtype=float), r.shape).copy())

    # Meter balance: g - x + d - c - Σ q/COP = base + fixed chillers - pv.
    r = row0 + k
    put(r, g + k, 1.0)
    put(r, x + k, -1.0)
    put(r, d + k, 1.0)
    put(r, c + k, -1.0)
    for i, zp in enumerate(zones):
        cop = np.array([chiller_cop(zp, float(t)) for t in outdoor])
        put(r, zq[i] + k, -1.0 / cop)
    rhs_eq.append(base + fixed - pv)
    row0 += n
    # Battery: e_{k+1} - e_k - η_c·h·c_k + h/η_d·d_k = 0.
    r = row0 + k
    put(r, e + k + 1, 1.0)
    put(r, e + k, -1.0)
    put(r, c + k, -bp.charge_efficiency * h)
    put(r, d + k, h / bp.discharge_efficiency)
    rhs_eq.append(np.zeros(n))
    row0 += n
    # Zones: T_{k+1} - a·T_k + (1 - a)·R·q_k = (1 - a)(T_o + R·gains).
    for i, zp in enumerate(zones):
        a = rc_coefficient(dt_s, zp.resistance_k_per_w, zp.capacitance_j_per_k)
        gains = np.array(
            [
                zone_gains_w(zp, bool(o), float(s))
                for o, s in zip(
                    inp.occupied[: n * per].reshape(n, per).mean(axis=1) > 0.5, ghi, strict=True
                )
            ]
        )
        r = row0 + k
        put(r, zt[i] + k + 1, 1.0)
        put(r, zt[i] + k, -a)
        put(r, zq[i] + k, (1.0 - a) * zp.resistance_k_per_w)
        rhs_eq.append((1.0 - a) * (outdoor + zp.resistance_k_per_w * gains))
        row0 += n
    a_eq = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(row0, size)
    )
    b_eq = np.concatenate(rhs_eq)

    rows, cols, vals = [], [], []
    rhs_ub: list[np.ndarray] = []
    row0 = 0
    # Peak: g_k - D <= 0 where the block counts.
    kd = k[counts]
    r = row0 + np.arange(len(kd))
    put(r, g + kd, 1.0)
    put(r, np.full(len(kd), peak), -1.0)
    rhs_ub.append(np.zeros(len(kd)))
    row0 += len(kd)
    # Comfort: the temperatures at both ends of each comfort interval inside the band, less
    # a margin for what the 1-minute replay does between the LP's points (chiller ramps,
    # gains that vary inside an interval); the slack of the later end is penalised.
    kc = k[comfort_k]
    hi_degc = cfg.comfort.high_degc - cfg.comfort.plan_margin_k
    lo_degc = cfg.comfort.low_degc + cfg.comfort.plan_margin_k
    for i in range(len(zones)):
        for end in (0, 1):
            r = row0 + np.arange(len(kc))
            put(r, zt[i] + kc + end, 1.0)
            put(r, zu[i] + kc, -1.0)
            rhs_ub.append(np.full(len(kc), hi_degc))
            row0 += len(kc)
            r = row0 + np.arange(len(kc))
            put(r, zt[i] + kc + end, -1.0)
            put(r, zl[i] + kc, -1.0)
            rhs_ub.append(np.full(len(kc), -lo_degc))
            row0 += len(kc)
    # Chiller ramps: a chiller going from standstill to full capacity delivers on average
    # capacity·(1 - ramp time / (2·interval)) over that interval; the same bound holds for
    # every rise from one interval to the next (linear, a little loose for smaller rises).
    for i, zp in enumerate(zones):
        ramp_s = zp.chiller_capacity_w / zp.chiller_ramp_w_per_s
        rise = zp.chiller_capacity_w * max(0.0, 1.0 - ramp_s / (2.0 * dt_s))
        r = row0 + k
        put(r, zq[i] + k, 1.0)
        put(r[1:], zq[i] + k[1:] - 1, -1.0)
        rhs_ub.append(np.full(n, rise))
        row0 += n
    a_ub = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(row0, size)
    )
    b_ub = np.concatenate(rhs_ub)

    tick = time.perf_counter()
    result = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=np.column_stack([np.concatenate(lower), np.concatenate(upper)]),
        method="highs",
    )
    solve_s = time.perf_counter() - tick
    if result.status != 0:
        raise SystemExit(f"optimum LP failed: {result.message}")
    sol = result.x
    zone_degc = zone_cooling = None
    if zones:
        zone_degc = np.column_stack([sol[zt[i] : zt[i] + n + 1] for i in range(len(zones))])
        zone_cooling = np.column_stack([sol[zq[i] : zq[i] + n] for i in range(len(zones))])
    return Plan(
        step_s=dt_s,
        battery_w=sol[d : d + n] - sol[c : c + n],
        grid_w=sol[g : g + n] - sol[x : x + n],
        zone_degc=zone_degc,
        zone_cooling_w=zone_cooling,
        objective=float(result.fun),
        peak_kw=float(sol[peak]) / 1000.0,
        solve_s=solve_s,
    )


@dataclass(slots=True)
class Replay:
    """Apply an LP plan: zone setpoints that follow the planned temperature (linearly while
    the plan cools, the interval's end value while it floats), so the ideal thermostat in
    ``step_zone`` tracks the plan; the battery holds the planned meter power of the interval
    from the last minute's reading (setpoint = load without battery - planned import), so
    that the zones' minute-by-minute deviation from the plan's 15-minute cooling does not
    lift a flat-topped block above the planned peak."""

    plan: Plan
    step_s: float
    thermostat_degc: float
    battery: bool
    occupied: np.ndarray
    name: str = "optimum"

    def decide(self, obs: Observation) -> Command:
        per = round(self.plan.step_s / self.step_s)
        k = min(obs.m // per, len(self.plan.battery_w) - 1)
        battery_w = float(self.plan.battery_w[k]) if self.battery else 0.0
        setpoints: tuple[float | None, ...] | None = None
        if not self.occupied[obs.m]:
            # The BMS setback rules outside occupancy; a setpoint above the thermostat's
            # would only let the zone float higher than the setback.
            setpoints = (self.thermostat_degc,) * len(obs.zones)
        elif self.plan.zone_degc is not None and self.plan.zone_cooling_w is not None:
            frac = (obs.m % per + 1) / per
            out: list[float | None] = []
            for i in range(self.plan.zone_degc.shape[1]):
                t0, t1 = self.plan.zone_degc[k, i], self.plan.zone_degc[k + 1, i]
                cooling = self.plan.zone_cooling_w[k, i] > 1.0
                out.append(float(t0 + (t1 - t0) * frac) if cooling else float(t1))
            setpoints = tuple(out)
        return Command(battery_w=battery_w, zone_setpoints_degc=setpoints)


# --------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    description: str
    figures: Figures
    lp_objective: float | None = None
    lp_peak_kw: float | None = None
    lp_solve_s: float | None = None
    notes: tuple[str, ...] = ()


def ratio(saving: float, best: float) -> float | None:
    return saving / best if abs(best) > 1e-9 else None


def summary(rows: Mapping[str, Row]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    none = rows["none"].figures
    if "optimum-battery" in rows:
        best = none.peak_kw - rows["optimum-battery"].figures.peak_kw
        for name in ("threshold", "gridpilot-battery"):
            if name in rows:
                key = f"{name}_peak_reduction_ratio"
                out[key] = ratio(none.peak_kw - rows[name].figures.peak_kw, best)
    if "optimum-hvac" in rows:
        best = none.total_cost - rows["optimum-hvac"].figures.total_cost
        if "gridpilot-hvac" in rows:
            hv = rows["gridpilot-hvac"].figures
            out["gridpilot-hvac_cost_saving_ratio"] = ratio(none.total_cost - hv.total_cost, best)
            out["gridpilot-hvac_comfort_minus_thermostat_kh"] = hv.comfort_kh - none.comfort_kh
            # The HVAC controller prices energy only (demand is the peak shaver's): its
            # saving on the energy bill alone, against the optimum's.
            out["gridpilot-hvac_energy_cost_saving_ratio"] = ratio(
                none.energy_cost - hv.energy_cost,
                none.energy_cost - rows["optimum-hvac"].figures.energy_cost,
            )
    if "optimum" in rows:
        opt = rows["optimum"].figures
        for name, row in rows.items():
            if name in ("none", "optimum"):
                continue
            f = row.figures
            out[f"{name}_vs_optimum_peak_reduction_ratio"] = ratio(
                none.peak_kw - f.peak_kw, none.peak_kw - opt.peak_kw
            )
            out[f"{name}_vs_optimum_cost_saving_ratio"] = ratio(
                none.total_cost - f.total_cost, none.total_cost - opt.total_cost
            )
    return out


def markdown(rows: Mapping[str, Row], currency: str) -> str:
    head = (
        f"| strategy | billed 15-min peak kW | energy cost {currency} | demand charge {currency} "
        f"| total {currency} | comfort K·h | battery throughput kWh | LP objective {currency} |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows.values():
        f = row.figures
        lp = f"{row.lp_objective:,.2f}" if row.lp_objective is not None else ""
        lines.append(
            f"| {row.name} | {f.peak_kw:.1f} | {f.energy_cost:,.2f} | {f.demand_charge:,.2f} "
            f"| {f.total_cost:,.2f} | {f.comfort_kh:.2f} | {f.throughput_kwh:,.0f} | {lp} |"
        )
    return head + "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main


STRATEGIES = (
    "none",
    "threshold",
    "gridpilot-battery",
    "gridpilot-hvac",
    "gridpilot",
    "optimum-battery",
    "optimum-hvac",
    "optimum",
)


def month_start(cfg: BenchConfig, month: int) -> datetime:
    local = datetime(cfg.year, month, 1, tzinfo=ZoneInfo(cfg.timezone))
    return local.astimezone(UTC)


def month_days(cfg: BenchConfig, month: int) -> float:
    start = month_start(cfg, month)
    nxt = month_start(cfg, month + 1) if month < 12 else None
    if nxt is None:
        nxt = datetime(cfg.year + 1, 1, 1, tzinfo=ZoneInfo(cfg.timezone)).astimezone(UTC)
    return (nxt - start).total_seconds() / 86400.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--month", type=int, help="1-12 (default: the config's)")
    parser.add_argument("--days", type=float, help="simulate only the month's first N days")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated subset of {','.join(STRATEGIES)}",
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(chosen) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    if "none" not in chosen:
        chosen.insert(0, "none")  # every ratio is against doing nothing

    cfg = load_config(args.config)
    month = args.month or cfg.month
    ref = load_reference()
    start = month_start(cfg, month)
    days = month_days(cfg, month) if args.days is None else args.days
    history_start = start - timedelta(days=cfg.history_days)
    if history_start < ref.start:
        raise SystemExit(
            f"month {month} needs {cfg.history_days} days of history before {start:%Y-%m-%d},"
            f" the data start {ref.start:%Y-%m-%d}: choose month 2-12"
        )
    site = site_of(cfg)
    wall = time.perf_counter()
    print(
        f"# {start.astimezone(ZoneInfo(cfg.timezone)):%Y-%m} ({days:g} days at {cfg.step_s:g} s),"
        f" history {cfg.history_days} days",
        file=sys.stderr,
    )

    # History: the building without control, from the config's initial zone state.
    hist_inp = make_inputs(cfg, ref, history_start, cfg.history_days)
    cold = InitialState(cfg.battery.initial_soc_pct, tuple(ZoneState() for _ in site.zones))
    history = run(site, hist_inp, NoControl(), cold, cfg.thermostat_setpoint_degc)
    init = InitialState(
        cfg.battery.initial_soc_pct,
        tuple(
            ZoneState(temperature_degc=float(history.zone_degc[-1, i]))
            for i in range(len(site.zones))
        ),
    )
    inp = make_inputs(cfg, ref, start, days)
    thermostat = cfg.thermostat_setpoint_degc

    rows: dict[str, Row] = {}
    traces: dict[str, Trace] = {}

    def record(name: str, description: str, trace: Trace, plan: Plan | None = None) -> None:
        traces[name] = trace
        rows[name] = Row(
            name,
            description,
            figures(trace, inp, cfg),
            plan.objective if plan else None,
            plan.peak_kw if plan else None,
            plan.solve_s if plan else None,
            tuple(trace.notes),
        )
        print(f"#   {name}: done at {time.perf_counter() - wall:.1f} s", file=sys.stderr)

    record("none", "battery idle, thermostats", run(site, inp, NoControl(), init, thermostat))
    limit_w = 0.0
    if "threshold" in chosen:
        limit = cfg.threshold.limit_kw
        limit_w = (
            threshold_limit_w(history, hist_inp, cfg.battery)
            if limit == "auto"
            else float(limit) * 1000.0
        )
        rule = ThresholdRule(limit_w, cfg.threshold.recharge_margin_kw * 1000.0)
        record(
            "threshold",
            f"instantaneous rule, L = {limit_w / 1000:.1f} kW; thermostats",
            run(site, inp, rule, init, thermostat),
        )
    gridpilot_runs = [s for s in chosen if s.startswith("gridpilot")]
    if gridpilot_runs:
        from gridpilot_strategy import (  # noqa: PLC0415 - only when asked for
            GridPilotStrategy,
        )

        for name in gridpilot_runs:
            strategy = GridPilotStrategy.build(
                name,
                cfg,
                site,
                inp,
                history=(hist_inp, history),
                battery=name in ("gridpilot", "gridpilot-battery"),
                hvac=name in ("gridpilot", "gridpilot-hvac"),
            )
            trace = run(site, inp, strategy, init, thermostat)
            trace.notes.extend(strategy.notes())
            record(name, strategy.description, trace)
    for name in (s for s in chosen if s.startswith("optimum")):
        battery = name in ("optimum", "optimum-battery")
        hvac = name in ("optimum", "optimum-hvac")
        plan = optimise(
            cfg,
            site,
            inp,
            init,
            battery=battery,
            hvac=hvac,
            fixed_chillers_w=None if hvac else traces["none"].chillers_w,
            setback_cooling_w=traces["none"].cooling_w,
        )
        replay = Replay(plan, inp.step_s, thermostat, battery, inp.occupied, name)
        what = {
            "optimum": "LP over the span, battery and zones",
            "optimum-battery": "LP over the span, battery; thermostats",
            "optimum-hvac": "LP over the span, zones; battery idle",
        }[name]
        record(name, what, run(site, inp, replay, init, thermostat), plan)

    order = [s for s in STRATEGIES if s in rows]
    ordered = {name: rows[name] for name in order}
    table = markdown(ordered, cfg.tariff.currency)
    ratios = summary(ordered)
    print(table)
    print()
    for key, value in ratios.items():
        print(f"- {key}: {'n/a' if value is None else f'{value:.3f}'}")
    elapsed = time.perf_counter() - wall
    print(f"\n{inp.steps} steps of {inp.step_s:g} s per strategy; wall time {elapsed:.1f} s")
    if args.json:
        doc = {
            "month": month,
            "start_utc": start.isoformat(),
            "days": days,
            "step_s": inp.step_s,
            "threshold_limit_kw": limit_w / 1000.0 if "threshold" in rows else None,
            "wall_s": elapsed,
            "strategies": {
                name: {
                    "description": row.description,
                    **{k: getattr(row.figures, k) for k in row.figures.__dataclass_fields__},
                    "total_cost": row.figures.total_cost,
                    "lp_objective": row.lp_objective,
                    "lp_peak_kw": row.lp_peak_kw,
                    "lp_solve_s": row.lp_solve_s,
                    "notes": list(row.notes),
                }
                for name, row in ordered.items()
            },
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
