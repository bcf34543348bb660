"""Peak shaving: keep every demand block's average import at or below a limit L.

The utility bills the month's highest block demand D = E_block / T (T = 15 min by default),
so what matters is the *energy* imported per block, not the instantaneous power. At τ into a
block with E(τ) already imported, the average import still allowed for the rest of the block is

    P_allow = (L·T − E(τ)) / (T − τ)                                       (DOMAIN.md)

and the battery discharges max(0, P_net − P_allow), where P_net = grid + battery power is the
site's import without the battery (the meter already sees the battery's present output).
Spikes that never lift the block average cost no battery energy, unlike a threshold rule.

**Target margin.** The battery holds P_allow for the *aim* A = L − margin (``target_margin_w``
+ ``target_margin_pct`` of L; default 1 % of L), not for L itself: what the controller cannot
correct before a block closes (the load's change since the last reading, a meter that lags
or integrates a little differently) then lands between A and L instead of above L. Aiming at
L exactly, every such deviation became the month's new billed peak, and with it the floor of
L, so the bill crept up a few hundred watts a day (the closed-loop benchmark at 1-minute
steps: blocks closed up to ~0.5 kW, 0.6 %, above L; with 1 % none did, the worst 0.2 kW above
A). A block closing between A and L is billed like any other, but L is unchanged (it is
only raised by a bill *above* it), so the next block aims at A again. Shedding and
restoring loads work against L: the margin is the battery's alone.

Per cycle, in this order:

1. **Energy accounting.** Every new grid-meter sample is integrated (trapezoid between
   consecutive samples, split at block boundaries by linear interpolation). Samples further
   apart than ``meter_max_age`` are a *gap*: the gap is bridged pessimistically with the larger
   of its two end values (erring toward discharging more), its seconds are counted, and a
   block with a gap never sets the billed peak, since its figure is not a measurement. A gap
   longer than a whole block restarts the accounting; so does start-up mid-block, where the
   part of the block before the first sample is filled with that first value (also a gap).
   Between the last sample and ``now`` the last value is held (the meter is fresh, so that
   is at most ``meter_max_age``); that extrapolation steers this cycle only and is never
   committed to the ledger.
2. **Billed peak.** Each completed block (rolling: each completed window) that counts for
   demand (the tariff's ``demand_hours``; all hours without a tariff) raises the month's
   billed peak. The month is the tariff's local month (UTC without a tariff); a new month
   resets it. L never drops below the billed peak: shaving below a figure already on the bill
   spends battery energy for nothing.
3. **Staleness.** A grid reading older than ``meter_max_age`` (or a battery SoC/power older
   than ``battery_max_age``) means no action: no battery request, no new shedding or
   restoring (loads already shed stay shed: restoring blind could create the peak), a
   ``meter_stale_state`` metric of 1 and an event when it starts and ends. Never a guess.
4. **Limit.** A fixed L in W, or ``auto``: the smallest L the battery can hold over the
   forecast, found by bisection. In its plain form (:func:`choose_limit_w`) the forecast
   blocks' Σ max(0, D̂_b − L)·T / η_discharge must fit the usable energy and the largest
   excess the inverter. The controller uses the form with the state of charge in it
   (:func:`plan_limit_w`): the stored energy followed block by block from the present SoC,
   discharging above the aim A (``auto_forecast_margin_pct`` more than the forecast says)
   and recharging below A − recharge margin, never below soc_min. It is re-planned at every
   block start and whenever the forecast changes, so a day running hotter than forecast
   raises L early and a little, rather than holding a low L until the battery is empty and
   then losing the block outright. ``forecasts["net_load_p90_w"]`` (a high quantile of
   the import without the battery, which the controller service issues) is preferred;
   else ``forecasts["load_p90_w"]`` or ``forecasts["load_w"]`` (consumption) minus
   ``forecasts["pv_w"]`` when present.
   When the net load measured now runs above the current block's forecast by more than
   ``excess_deadband_pct``, the forecast ahead is raised by that excess, fading over
   ``excess_persistence`` (:func:`with_measured_excess`): a day busier than the high
   quantile raises L while the battery still holds energy.
5. **Battery.** Discharge to hold P_allow (for the aim A), within the SoC window and power
   limits, never exporting (some meters register import only, and exported energy earns
   little). Otherwise recharge towards the recharge target while the import stays below
   min(A, P_allow) − ``recharge_margin_w``; never in demand hours if
   ``recharge_in_demand_hours`` is off and the tariff has demand hours.
   *Price-aware recharging*: with a tariff, in a period priced above
   ``recharge_max_price_per_kwh`` (default: the tariff's base price, so on-peak periods)
   the battery recharges only up to the reserve the forecast blocks need until the next
   block priced at or below it (:func:`reserve_until_cheap_pct`: soc_min + their energy
   above A + ``reserve_margin_pct``; ``reserve_pct`` without a forecast); the rest waits for
   the cheap hours. With ``recharge_in_cheapest_blocks`` and a forecast, recharging also
   waits while the price is above :func:`refill_price_cutoff`: the cheapest forecast blocks
   before the battery is next needed (the first counted block above A) that can still take
   the refill (a night rate rather than the evening's base price). *Short of the
   reserve*: while the SoC is below the forecast-sized reserve (that one above the price
   cap, the whole horizon's otherwise) the battery is short of what the forecast asks of
   it: it recharges whatever the price, and up to A itself, without the recharge margin (a
   midday trough between two peaks is worth every watt of it; the target margin still
   keeps the block under L). When this controller neither discharges nor charges it sends
   no battery request, leaving the battery to lower priorities, and instead publishes a
   :class:`Constraint`: lower priorities may not charge beyond the import headroom, nor
   discharge below the SoC reserve.
6. **Shedding.** When the battery cannot hold P_allow (empty, or at its power limit), loads
   are shed in ``order`` (lowest first) until their expected savings cover the shortfall
   (the measured power when a fresh ``power_point`` is given, else the nominal power),
   skipping loads switched on less than ``min_on`` ago and loads drawing nothing. A
   shortfall sheds only once readings of both the meter and the battery newer than those
   that first showed it show it again, and then the smaller of the two: the two devices are
   polled at different moments, so in the cycle after the battery stops a fresh meter
   reading beside its last (discharging) reading counts that output twice. Loads
   shed less than ``shed_settle`` ago count as already saving, since the meter has not seen
   them drop yet. A shed load is held shed (its shed value requested every cycle) and
   restored, one at a time in reverse order and only when every switch has settled, once
   it has been off ``min_off`` and P_net + nominal < min(P_allow, L) − hysteresis. The
   restore cycle requests the normal value once; after that the point is left to other
   controllers (so the engine's idle value for such a point should be its normal value).

**A lost block.** When E(τ) > L·T the block will exceed L whatever happens. The block's
average then becomes the month's billed demand, so the battery discharges as hard as it can
(still no export) and loads are shed to keep that average as low as possible; an event says
so. The next block starts against the raised billed-peak floor.

**Rolling blocks.** A rolling meter registers, at the end of every sub-interval Δ = T/n, the
average over the last n sub-intervals. The controller accounts sub-interval energies and
takes P_allow as the smaller of two bounds: the window that closes at the end of the current
sub-interval, (L·T − E_window(τ)) / (T − τ_window) with E_window the last n − 1 completed
sub-intervals plus the current one so far; and the current sub-interval on its own,
(L·Δ − E_sub(τ)) / (Δ − τ_sub), because the current sub-interval is part of the next n − 1
windows too, whose remaining sub-intervals are not yet known. Holding every sub-interval at
or below L keeps every window at or below L.

Sign conventions as in :mod:`gridpilot.control.base`: grid positive = import, battery
positive = discharge. Energies in Wh, powers in W, durations in hours inside formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gridpilot.control.base import (
    Constraint,
    Decision,
    Forecast,
    Forecasts,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.tariff import Tariff, local_month, slot_start

_HOUR = timedelta(hours=1)
_US = timedelta(microseconds=1)
_UTC_ZONE = ZoneInfo("UTC")
_EXCEED_TOLERANCE_W = 1.0
"""A completed block this far above L is reported as an exceedance (float round-off)."""


def _point(text: str) -> str:
    PointRef.parse(text)
    return text


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SheddableLoad(_Frozen):
    """A load that may be switched off while the battery cannot hold the limit."""

    name: str = Field(min_length=1)
    point: str
    """``device.point`` written with ``shed_value`` / ``normal_value`` (e.g. a run command)."""
    shed_value: float = 0.0
    """Value that sheds the load (a relay: 0 = off)."""
    normal_value: float = 1.0
    """Value written on restore (a relay: 1 = on)."""
    nominal_w: float = Field(gt=0.0)
    """Power the load draws when on, W: what shedding it is expected to save."""
    order: int = 0
    """Shed order: lower values are shed first and restored last."""
    min_on: timedelta = timedelta(minutes=5)
    """The load stays on at least this long after a restore."""
    min_off: timedelta = timedelta(minutes=10)
    """The load stays shed at least this long."""
    restore_hysteresis_w: float = Field(default=2_000.0, ge=0.0)
    """Restore only when P_net + nominal stays this far below the allowed import, W."""
    power_point: str | None = None
    """Optional ``device.point`` measuring the load's power, W: when fresh, shedding is
    expected to save what it draws now (a circuit drawing nothing is not worth shedding)."""
    power_max_age: timedelta = timedelta(seconds=30)

    @field_validator("point", "power_point")
    @classmethod
    def _point_form(cls, value: str | None) -> str | None:
        return None if value is None else _point(value)

    @property
    def ref(self) -> PointRef:
        """The point written to shed and restore the load."""
        return PointRef.parse(self.point)

    def saving_w(self, snapshot: Snapshot) -> float:
        """What shedding the load now is expected to save, W."""
        if self.power_point is None:
            return self.nominal_w
        measured = snapshot.value(
            PointRef.parse(self.power_point), self.power_max_age.total_seconds()
        )
        if measured is None or not math.isfinite(measured):
            return self.nominal_w
        return max(0.0, measured)


class PeakShavingParams(_Frozen):
    """Configuration of :class:`PeakShavingController` (defaults: the simulator's battery)."""

    name: str = "peak_shaving"
    grid_power_point: str = "grid_meter.active_power_w"
    """Grid import, W (positive = import)."""
    battery_setpoint_point: str = "battery.active_power_setpoint_w"
    """Written: battery power, W (positive = discharge)."""
    battery_soc_point: str = "battery.soc_pct"
    battery_power_point: str = "battery.active_power_w"
    """Measured battery power, W (positive = discharge)."""
    battery_available_charge_point: str | None = "battery.available_charge_power_w"
    """Optional: the inverter's present charge capability, W; ignored when missing or stale."""
    battery_available_discharge_point: str | None = "battery.available_discharge_power_w"
    capacity_wh: float = Field(default=200_000.0, gt=0.0)
    max_charge_w: float = Field(default=50_000.0, gt=0.0)
    max_discharge_w: float = Field(default=50_000.0, gt=0.0)
    charge_efficiency: float = Field(default=0.96, gt=0.0, le=1.0)
    """Stored energy per AC energy taken while charging."""
    discharge_efficiency: float = Field(default=0.96, gt=0.0, le=1.0)
    """AC energy delivered per stored energy while discharging."""
    soc_min_pct: float = Field(default=5.0, ge=0.0, le=100.0)
    soc_max_pct: float = Field(default=95.0, ge=0.0, le=100.0)
    block: timedelta = timedelta(minutes=15)
    """Demand block T (must divide an hour)."""
    block_mode: Literal["fixed", "rolling"] = "fixed"
    sub_intervals: int = Field(default=3, ge=1, le=60)
    """Rolling blocks: sub-intervals per block (15 min = 3 × 5 min)."""
    limit_w: float | Literal["auto"] = "auto"
    """Block-average import limit L, W, or ``auto`` (from the load forecast)."""
    fallback_limit_w: float | None = Field(default=None, ge=0.0)
    """``auto`` without a usable forecast: this L, W (None: the billed peak, if any)."""
    target_margin_w: float = Field(default=0.0, ge=0.0)
    """The battery aims each block's average at L − margin, margin = this + ``target_margin_pct``
    of L, W: what the controller cannot see before a block closes (the minute's load change,
    a meter that lags or integrates differently) then lands under L instead of on the bill."""
    target_margin_pct: float = Field(default=1.0, ge=0.0, le=50.0)
    """Part of the target margin proportional to L, %."""
    recharge_margin_w: float = Field(default=5_000.0, ge=0.0)
    """Recharge only while import stays this far below the allowed import, W."""
    recharge_max_price_per_kwh: float | None = None
    """With a tariff: above this import price (None: the tariff's base price) the battery
    recharges only while its SoC is below the reserve needed until the next block priced at
    or below it. None without a tariff: recharging is never priced."""
    recharge_in_cheapest_blocks: bool = True
    """With a tariff and a forecast: recharge in the cheapest blocks that still refill the
    battery before it is next needed, not simply in the first ones with headroom."""
    recharge_target: Literal["reserve", "full"] = "full"
    """Recharge to soc_max, or only up to the SoC reserve (when a lower-priority controller,
    e.g. economics, uses the battery above it)."""
    recharge_in_demand_hours: bool = False
    """Whether recharging is allowed inside the tariff's demand hours (if it has any)."""
    reserve_pct: float = Field(default=50.0, ge=0.0, le=100.0)
    """SoC reserve without a load forecast, %."""
    reserve_margin_pct: float = Field(default=5.0, ge=0.0, le=100.0)
    """Added to the forecast-sized reserve, %."""
    horizon: timedelta = timedelta(hours=24)
    """Forecast horizon for the reserve and the ``auto`` limit."""
    auto_forecast_margin_pct: float = Field(default=20.0, ge=0.0, le=100.0)
    """``auto`` plans discharges this much larger than the forecast excess, %: the margin
    for forecast error. It shrinks with the energy still ahead, where a fixed SoC buffer
    would be off limits to every plan made during a long peak and raise L mid-peak."""
    excess_persistence: timedelta | None = timedelta(hours=6)
    """When the net load measured now runs above the forecast for the current block, the
    forecast ahead is raised by that excess, fading as exp(−lead/τ): a day busier than even
    the high quantile foresaw raises the ``auto`` limit while the battery still has energy,
    not once it is empty. Only an excess counts: the forecast is a high estimate, and a
    quieter moment says little about the hours ahead. None = the forecast as given.

    What makes such a day -- a cloud deck that hides the PV all morning, a heat wave -- lasts
    hours, so τ is hours too. (Control benchmark, August: τ = 2 h let a long overcast morning
    empty the battery at 12:00 and set a 101.2 kW peak, ratio 0.54; a sweep over July and
    August gave 4 h 86.9/78.7 kW, 6 h 84.5/78.8, 8 h 86.0/78.2, 12 h 87.4/78.3 (August/July):
    6 h is the best worst case of the two months, both ratios ≥ 0.90.)"""
    excess_deadband_pct: float = Field(default=10.0, ge=0.0, le=100.0)
    """Only the part of that excess beyond this share of the block's forecast counts: a
    reading a few kW over a high quantile is noise, not a busier day. (Control benchmark:
    10 % keeps July at 78.1 kW and lifts August's peak-reduction ratio from 0.18 to 0.54;
    5 % gave August 0.62 but ratcheted July up to 79.7 kW, 0 % to 81.2 kW.)"""
    net_forecast_keys: tuple[str, ...] = ("net_load_p90_w",)
    """Forecasts of the import without the battery (PV already in them), tried first, in
    order: the controller service issues ``net_load_p90_w``, a 90 % quantile of it."""
    load_forecast_keys: tuple[str, ...] = ("load_p90_w", "load_w")
    """Then forecasts of consumption, tried in order (a high quantile first), minus the
    PV forecast. A forecast is used from the start of the current block on, so it must
    cover that block."""
    pv_forecast_key: str | None = "pv_w"
    """Subtracted from the load forecast when present (the net import is what is billed);
    None when the load forecast already is the net import without the battery."""
    meter_max_age: timedelta = timedelta(seconds=10)
    """Older grid readings are stale; samples further apart are a gap."""
    battery_max_age: timedelta = timedelta(seconds=30)
    sheddable_loads: tuple[SheddableLoad, ...] = ()
    shed_settle: timedelta = timedelta(seconds=30)
    """After a switch the meter needs time to show it: loads shed this recently count as
    already saving, and nothing is restored until every switch is this old."""
    tariff: Tariff | None = None
    """Demand hours, local month and block alignment; None = every hour counts, UTC."""

    @field_validator(
        "grid_power_point",
        "battery_setpoint_point",
        "battery_soc_point",
        "battery_power_point",
        "battery_available_charge_point",
        "battery_available_discharge_point",
    )
    @classmethod
    def _point_form(cls, value: str | None) -> str | None:
        return None if value is None else _point(value)

    @field_validator("limit_w")
    @classmethod
    def _limit(cls, value: float | str) -> float | str:
        if isinstance(value, float) and (value < 0.0 or not math.isfinite(value)):
            raise ValueError("limit_w must be a finite power >= 0 W or 'auto'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.soc_max_pct <= self.soc_min_pct:
            raise ValueError("soc_max_pct must be above soc_min_pct")
        if self.block <= timedelta(0) or _HOUR % self.block:
            raise ValueError("block must divide an hour (e.g. 5, 15, 30 min)")
        if self.block_mode == "rolling" and (self.block // _US) % self.sub_intervals:
            raise ValueError("block must be a whole number of microseconds per sub-interval")
        if self.meter_max_age <= timedelta(0) or self.battery_max_age <= timedelta(0):
            raise ValueError("meter_max_age and battery_max_age must be positive")
        names = [load.name for load in self.sheddable_loads]
        if len(set(names)) != len(names):
            raise ValueError(f"sheddable load names must be unique: {names}")
        return self

    @property
    def slots_per_block(self) -> int:
        """Accounting slots per block: 1 for fixed blocks, the sub-intervals for rolling."""
        return self.sub_intervals if self.block_mode == "rolling" else 1

    @property
    def slot(self) -> timedelta:
        """Length of one accounting slot (the block, or a rolling sub-interval)."""
        return self.block / self.slots_per_block

    @property
    def zone(self) -> ZoneInfo:
        """The time zone of blocks, demand hours and months (the tariff's, else UTC)."""
        return self.tariff.zone if self.tariff is not None else _UTC_ZONE

    def aim_w(self, limit_w: float) -> float:
        """What the battery holds each block's average at: L − the target margin, W."""
        margin = self.target_margin_w + self.target_margin_pct / 100.0 * limit_w
        return max(0.0, limit_w - margin)

    @property
    def recharge_price_cap(self) -> float | None:
        """Import price above which recharging waits for cheaper blocks (None: never)."""
        if self.tariff is None:
            return None
        if self.recharge_max_price_per_kwh is not None:
            return self.recharge_max_price_per_kwh
        return self.tariff.base_price_per_kwh

    @property
    def usable_energy_wh(self) -> float:
        """Stored energy between soc_min and soc_max, Wh."""
        return (self.soc_max_pct - self.soc_min_pct) / 100.0 * self.capacity_wh


# --- Energy accounting ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockLedger:
    """Energy imported per accounting slot (the block, or a rolling block's sub-interval)."""

    slot_start: datetime
    slot_energy_wh: float
    """Imported in the current slot up to ``sample.ts``, Wh."""
    slot_gap_s: float
    """Seconds of the current slot not covered by consecutive fresh samples."""
    history: tuple[tuple[float, float], ...]
    """Rolling: the last n − 1 completed slots as (energy_wh, gap_s), oldest first."""
    sample: tuple[float, datetime]
    """The last integrated grid sample: (W, ts)."""

    @property
    def window_energy_wh(self) -> float:
        """Energy of the window closing at the end of the current slot so far, Wh."""
        return self.slot_energy_wh + sum(energy for energy, _ in self.history)

    @property
    def window_gap_s(self) -> float:
        """Seconds of that window not covered by fresh samples."""
        return self.slot_gap_s + sum(gap for _, gap in self.history)


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A completed block (rolling: window) as the utility meter registers it."""

    slot_start: datetime
    """Start of its last slot: decides its month and whether it counts for demand."""
    demand_w: float
    has_gap: bool


def start_ledger(value_w: float, ts: datetime, params: PeakShavingParams) -> BlockLedger:
    """A ledger from a first sample: the unseen past of the window is the first value, held
    (a gap: it steers the controller but never sets the billed peak)."""
    slot = params.slot
    start = slot_start(ts, slot, params.zone)
    before_h = (ts - start) / _HOUR
    history = ((value_w * slot / _HOUR, slot.total_seconds()),) * (params.slots_per_block - 1)
    return BlockLedger(
        slot_start=start,
        slot_energy_wh=value_w * before_h,
        slot_gap_s=(ts - start).total_seconds(),
        history=history,
        sample=(value_w, ts),
    )


def integrate(
    ledger: BlockLedger,
    value_w: float,
    ts: datetime,
    params: PeakShavingParams,
    *,
    held: bool = False,
) -> tuple[BlockLedger, tuple[ClosedWindow, ...]]:
    """Add the import between the ledger's last sample and (``ts``, ``value_w``).

    Trapezoid between samples; ``held`` integrates the last value held instead (the
    extrapolation to ``now``). A segment longer than ``meter_max_age`` is a gap bridged with
    the larger end value; one longer than a block restarts the ledger. Returns the new ledger
    and the windows completed on the way.
    """
    v0, t0 = ledger.sample
    if ts <= t0:
        return ledger, ()
    if ts - t0 > params.block and not held:
        return start_ledger(value_w, ts, params), ()
    slot = params.slot
    n = params.slots_per_block
    gap = not held and ts - t0 > params.meter_max_age
    # Power over the segment: linear between fresh samples, the last value held for the
    # extrapolation, the larger end value across a gap.
    if held:
        va = vb = v0
    elif gap:
        va = vb = max(v0, value_w)
    else:
        va, vb = v0, value_w
    span = ts - t0

    def power_at(when: datetime) -> float:
        return va + (vb - va) * ((when - t0) / span)

    start, energy, gap_s, history = (
        ledger.slot_start,
        ledger.slot_energy_wh,
        ledger.slot_gap_s,
        ledger.history,
    )
    closed: list[ClosedWindow] = []
    cursor = t0
    while True:
        end = start + slot
        seg_end = min(ts, end)
        energy += (power_at(cursor) + power_at(seg_end)) / 2.0 * ((seg_end - cursor) / _HOUR)
        if gap:
            gap_s += (seg_end - cursor).total_seconds()
        if ts < end:
            break
        # The slot is complete: the window ending here is what the meter registers.
        window_energy = energy + sum(e for e, _ in history)
        window_gap = gap_s + sum(g for _, g in history)
        closed.append(
            ClosedWindow(
                slot_start=start,
                demand_w=window_energy / (params.block / _HOUR),
                has_gap=window_gap > 0.0,
            )
        )
        history = (*history, (energy, gap_s))[-(n - 1) :] if n > 1 else ()
        start, energy, gap_s, cursor = end, 0.0, 0.0, end
        if ts == end:
            break
    new = BlockLedger(
        slot_start=start,
        slot_energy_wh=energy,
        slot_gap_s=gap_s,
        history=history,
        sample=(value_w if not held else v0, ts),
    )
    return new, tuple(closed)


def allowed_import_w(
    limit_w: float,
    block: timedelta,
    elapsed: timedelta,
    energy_wh: float,
) -> float:
    """P_allow = (L·T − E(τ)) / (T − τ), W: the average import that keeps the block at L.

    ``elapsed`` is τ (0 ≤ τ < T), ``energy_wh`` is E(τ). Negative when the block is lost.
    """
    remaining_h = (block - elapsed) / _HOUR
    if remaining_h <= 0.0:
        raise ValueError(f"elapsed {elapsed} must be shorter than the block {block}")
    return (limit_w * (block / _HOUR) - energy_wh) / remaining_h


# --- Choosing L and the reserve from a forecast ---------------------------------------


def block_averages(
    forecast: Forecast, start: datetime, block: timedelta, count: int
) -> list[float]:
    """Average of ``forecast`` over consecutive blocks from ``start``, stopping at the first
    block the forecast does not cover completely (sampled at the finer of its step and T)."""
    sub = min(forecast.step, block)
    per_block = max(1, round(block / sub))
    out: list[float] = []
    for b in range(count):
        values = forecast.window(start + b * block, block / per_block, per_block)
        if values is None or any(math.isnan(v) for v in values):
            break
        out.append(sum(values) / per_block)
    return out


def choose_limit_w(
    block_demand_w: Sequence[float],
    block: timedelta,
    usable_energy_wh: float,
    *,
    discharge_efficiency: float,
    max_discharge_w: float,
    floor_w: float = 0.0,
    tolerance_w: float = 1.0,
) -> float:
    """The smallest limit L ≥ ``floor_w``, W, the battery can hold over the forecast blocks.

    Feasible L: Σ_b max(0, D̂_b − L)·T / η_discharge ≤ ``usable_energy_wh`` and
    max_b(D̂_b) − L ≤ ``max_discharge_w``. Both sides fall as L rises, so bisection to
    ``tolerance_w`` finds the smallest; the returned value is always feasible.
    """
    block_h = block / _HOUR

    def feasible(limit: float) -> bool:
        excess = [max(0.0, d - limit) for d in block_demand_w]
        energy = sum(excess) * block_h / discharge_efficiency
        return energy <= usable_energy_wh and max(excess, default=0.0) <= max_discharge_w

    return _smallest_feasible(feasible, floor_w, max(block_demand_w, default=0.0), tolerance_w)


def _smallest_feasible(
    feasible: Callable[[float], bool], floor_w: float, high_w: float, tolerance_w: float
) -> float:
    """Bisection for the smallest feasible L in [floor_w, high_w]; ``high_w`` (no excess
    anywhere) must be feasible. Returns a feasible value within ``tolerance_w``."""
    low = max(0.0, floor_w)
    if feasible(low):
        return low
    high = max(low, high_w)
    while high - low > tolerance_w:
        mid = (low + high) / 2.0
        if feasible(mid):
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True, slots=True)
class SocBudget:
    """The battery as :func:`plan_limit_w` sees it; energies are stored (DC) energy above
    soc_min, Wh."""

    stored_wh: float
    """Now."""
    room_wh: float
    """At soc_max."""
    charge_efficiency: float
    discharge_efficiency: float
    max_charge_w: float
    max_discharge_w: float
    recharge_margin_w: float
    """Recharging keeps the import this far below L (as the controller does)."""
    charge_in_counted_blocks: bool = True
    """Whether recharging is allowed in blocks that count for demand."""
    forecast_margin: float = 0.0
    """Discharges are planned (1 + this) × the forecast excess: room for forecast error."""
    target_margin_w: float = 0.0
    target_margin_pct: float = 0.0
    """The controller holds L − (target_margin_w + target_margin_pct % of L): the plan
    discharges down to that aim, and recharges below it."""

    def aim_w(self, limit_w: float) -> float:
        """The block average the controller holds under L, W."""
        return max(0.0, limit_w - self.target_margin_w - self.target_margin_pct / 100.0 * limit_w)


def plan_limit_w(
    block_demand_w: Sequence[float],
    counts: Sequence[bool],
    block: timedelta,
    budget: SocBudget,
    *,
    floor_w: float = 0.0,
    tolerance_w: float = 1.0,
) -> float:
    """The smallest limit L ≥ ``floor_w``, W, the battery can hold over the forecast blocks,
    following its stored energy block by block from now.

    The energy form of :func:`choose_limit_w` with the state of charge in it, against the
    aim A = L − target margin the controller holds: a counted block above A discharges
    (D̂ − A)·T/η_discharge (at most the inverter's power); a block below A − recharge
    margin recharges min(max charge, A − margin − D̂)·T·η_charge up to soc_max (a
    block that does not count recharges at full power). L is feasible when no discharge
    takes the stored energy below soc_min, with every discharge planned
    ``1 + forecast_margin`` times larger than forecast. A higher L discharges less and recharges
    more, so feasibility is monotone and bisection applies. Starting from the present SoC
    lets a day that runs hotter than forecast raise L early (a little above the plan)
    instead of holding a low L until the battery is empty and the block fails outright.
    """
    if len(counts) != len(block_demand_w):
        raise ValueError("one counts flag per forecast block")
    block_h = block / _HOUR
    b = budget

    def feasible(limit: float) -> bool:
        energy = b.stored_wh
        aim = b.aim_w(limit)
        for demand, counted in zip(block_demand_w, counts, strict=True):
            excess = demand - aim if counted else -math.inf
            if excess > 0.0:
                if excess > b.max_discharge_w:
                    return False
                energy -= excess * block_h * (1.0 + b.forecast_margin) / b.discharge_efficiency
                if energy < 0.0:
                    return False
                continue
            if counted and not b.charge_in_counted_blocks:
                continue
            headroom = aim - b.recharge_margin_w - demand if counted else math.inf
            charge = min(b.max_charge_w, headroom)
            if charge > 0.0:
                energy = min(b.room_wh, energy + charge * block_h * b.charge_efficiency)
        return True

    counted_demand = [d for d, c in zip(block_demand_w, counts, strict=True) if c]
    return _smallest_feasible(feasible, floor_w, max(counted_demand, default=0.0), tolerance_w)


def net_forecast_blocks(
    forecasts: Forecasts, params: PeakShavingParams, start: datetime
) -> tuple[str | None, list[float]]:
    """Forecast block averages of the site's import without the battery from ``start``
    over ``params.horizon``: the first of ``net_forecast_keys`` present, else the first of
    ``load_forecast_keys`` minus PV where the PV forecast covers. Returns the key used
    (None: no forecast) and the values."""
    count = max(1, round(params.horizon / params.block))
    for key in (*params.net_forecast_keys, *params.load_forecast_keys):
        load = forecasts.get(key)
        if load is None:
            continue
        blocks = block_averages(load, start, params.block, count)
        pv = _pv_forecast(forecasts, params, key)
        if pv is not None:
            pv_blocks = block_averages(pv, start, params.block, len(blocks))
            blocks = [
                d - (pv_blocks[i] if i < len(pv_blocks) else 0.0) for i, d in enumerate(blocks)
            ]
        if blocks:
            return key, blocks
    return None, []


def _pv_forecast(forecasts: Forecasts, params: PeakShavingParams, key: str) -> Forecast | None:
    """The PV forecast to subtract from forecast ``key``: none from a net-import one."""
    if key in params.net_forecast_keys or params.pv_forecast_key is None:
        return None
    return forecasts.get(params.pv_forecast_key)


def with_measured_excess(
    blocks_w: Sequence[float], net_w: float, params: PeakShavingParams
) -> list[float]:
    """The forecast blocks raised by what the net load ``net_w`` measured now exceeds the
    first (current) block's forecast by more than ``params.excess_deadband_pct``, fading
    over ``params.excess_persistence`` block by block; unchanged without such an excess, a
    forecast or a persistence."""
    tau = params.excess_persistence
    if not blocks_w or tau is None or tau <= timedelta(0) or not math.isfinite(net_w):
        return list(blocks_w)
    excess = net_w - blocks_w[0] * (1.0 + params.excess_deadband_pct / 100.0)
    if excess <= 0.0:
        return list(blocks_w)
    fade = params.block / tau
    return [d + excess * math.exp(-k * fade) for k, d in enumerate(blocks_w)]


def _confirm_shortfall(
    seen: ShortfallSighting | None, shortfall_w: float, grid_ts: datetime, battery_ts: datetime
) -> tuple[ShortfallSighting | None, float]:
    """The sighting to carry on, and the shortfall confirmed for shedding (0 while pending).

    A shortfall counts once readings of both devices newer than those of the last sighting
    show one too, and then only the smaller: a single pair of readings taken at different
    moments can count a battery that just stopped twice (see the module docstring, 6).
    """
    if shortfall_w <= _EXCEED_TOLERANCE_W:
        return None, 0.0
    now_seen = ShortfallSighting(shortfall_w, grid_ts, battery_ts)
    if seen is None:
        return now_seen, 0.0
    if grid_ts > seen.grid_ts and battery_ts > seen.battery_ts:
        return now_seen, min(shortfall_w, seen.shortfall_w)
    return seen, 0.0


def reserve_pct(blocks_w: Sequence[float], limit_w: float, params: PeakShavingParams) -> float:
    """SoC reserve, %: soc_min + the energy to shave the forecast blocks to L + the margin,
    at most soc_max."""
    block_h = params.block / _HOUR
    need_wh = sum(max(0.0, d - limit_w) for d in blocks_w) * block_h / params.discharge_efficiency
    pct = params.soc_min_pct + need_wh / params.capacity_wh * 100.0 + params.reserve_margin_pct
    return min(params.soc_max_pct, pct)


def reserve_until_cheap_pct(
    blocks_w: Sequence[float],
    counts: Sequence[bool],
    start: datetime,
    aim_w: float,
    params: PeakShavingParams,
) -> float:
    """SoC reserve, %, for the forecast blocks from ``start`` (the current block) up to the
    next one priced at or below :attr:`PeakShavingParams.recharge_price_cap`: soc_min + the
    energy to shave their counted blocks to the aim + ``reserve_margin_pct``, at most
    soc_max. No cheap block within the forecast: the whole forecast counts."""
    tariff, cap = params.tariff, params.recharge_price_cap
    block_h = params.block / _HOUR
    need_wh = 0.0
    for b, (demand, counted) in enumerate(zip(blocks_w, counts, strict=True)):
        when = start + b * params.block
        if b > 0 and tariff is not None and cap is not None and tariff.price_per_kwh(when) <= cap:
            break
        if counted:
            need_wh += max(0.0, demand - aim_w) * block_h / params.discharge_efficiency
    pct = params.soc_min_pct + need_wh / params.capacity_wh * 100.0 + params.reserve_margin_pct
    return min(params.soc_max_pct, pct)


def refill_price_cutoff(
    blocks_w: Sequence[float],
    counts: Sequence[bool],
    start: datetime,
    aim_w: float,
    *,
    refill_wh: float,
    params: PeakShavingParams,
) -> float:
    """The highest import price, per kWh, the battery needs to recharge at to take in
    ``refill_wh`` (AC) before it is next needed; inf when it cannot (or without a tariff).

    The candidates are the forecast blocks from ``start`` (the current block) up to the
    first counted block above the aim: each can take min(max charge, aim − recharge margin
    − D̂)·T (a block that does not count: max charge·T; none where recharging is not allowed).
    The cheapest are filled first; recharging now waits while the current price is above
    the cutoff. No need within the forecast: every forecast block is a candidate.
    """
    tariff = params.tariff
    if tariff is None or refill_wh <= 0.0:
        return math.inf
    has_windows = bool(tariff.demand_hours)
    block_h = params.block / _HOUR
    offers: list[tuple[float, float]] = []
    for b, (demand, counted) in enumerate(zip(blocks_w, counts, strict=True)):
        if counted and demand > aim_w:
            break
        if not counted:
            power = params.max_charge_w
        elif has_windows and not params.recharge_in_demand_hours:
            power = 0.0
        else:
            power = min(params.max_charge_w, aim_w - params.recharge_margin_w - demand)
        if power > 0.0:
            offers.append((tariff.price_per_kwh(start + b * params.block), power * block_h))
    taken = 0.0
    for price, energy_wh in sorted(offers, key=lambda offer: offer[0]):
        taken += energy_wh
        if taken >= refill_wh:
            return price
    return math.inf


# --- State and the controller ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadState:
    """One sheddable load: shed or not, and since when (None: never switched by us)."""

    shed: bool = False
    since: datetime | None = None
    saving_w: float = 0.0
    """Expected saving when it was shed, W (counts while the meter settles)."""


@dataclass(frozen=True, slots=True)
class ShortfallSighting:
    """A shortfall the battery leaves above the limit, and the readings that showed it."""

    shortfall_w: float
    grid_ts: datetime
    battery_ts: datetime


@dataclass(frozen=True, slots=True)
class PeakShavingState:
    """What the controller carries from one cycle to the next (see :meth:`decide`)."""

    ledger: BlockLedger | None = None
    month: tuple[int, int] | None = None
    """The local (year, month) the billed peak belongs to."""
    billed_peak_w: float = 0.0
    """Highest completed, counted, gap-free block (window) average this month, W."""
    limit_w: float | None = None
    """L used in the last cycle (after the billed-peak floor), W."""
    auto_limit_w: float | None = None
    auto_key: tuple[object, ...] | None = None
    """What the ``auto`` limit was planned from: block start, forecast key, forecasts."""
    stale: bool = False
    lost_window_slot: datetime | None = None
    """Slot start of the window already reported as lost (one event per window)."""
    loads: tuple[LoadState, ...] = ()
    shortfall_seen: ShortfallSighting | None = None
    """The last shortfall seen, awaiting newer readings of both devices to shed on."""


@dataclass(frozen=True, slots=True)
class _Battery:
    soc_pct: float
    power_w: float
    power_ts: datetime
    can_discharge_w: float
    can_charge_w: float


class PeakShavingController:
    """Holds each demand block's average import at or below L (see the module docstring)."""

    def __init__(self, params: PeakShavingParams) -> None:
        self._params = params
        self._grid = PointRef.parse(params.grid_power_point)
        self._setpoint = PointRef.parse(params.battery_setpoint_point)
        self._soc = PointRef.parse(params.battery_soc_point)
        self._power = PointRef.parse(params.battery_power_point)
        self._avail_charge = (
            PointRef.parse(params.battery_available_charge_point)
            if params.battery_available_charge_point
            else None
        )
        self._avail_discharge = (
            PointRef.parse(params.battery_available_discharge_point)
            if params.battery_available_discharge_point
            else None
        )
        # Shed order, stable for equal orders: indices into params.sheddable_loads.
        self._shed_order = sorted(
            range(len(params.sheddable_loads)), key=lambda i: params.sheddable_loads[i].order
        )

    @property
    def name(self) -> str:
        return self._params.name

    @property
    def priority(self) -> Priority:
        return Priority.PEAK_SHAVING

    @property
    def params(self) -> PeakShavingParams:
        """The configuration the controller was built with."""
        return self._params

    def initial_state(self) -> PeakShavingState:
        """No energy accounted yet, no billed peak, every sheddable load on."""
        return PeakShavingState(loads=(LoadState(),) * len(self._params.sheddable_loads))

    # -- one cycle ------------------------------------------------------------------------

    def decide(
        self,
        snapshot: Snapshot,
        state: PeakShavingState,
        now: datetime,
        forecasts: Forecasts,
    ) -> Decision[PeakShavingState]:
        """One cycle: account the meter, update the billed peak, then discharge, recharge,
        shed or restore (see the module docstring)."""
        p = self._params
        events: list[str] = []
        state = self._account(snapshot, state, now, events)
        metrics: dict[str, float] = {"billed_peak_w": state.billed_peak_w}

        battery = self._battery(snapshot)
        grid_w = snapshot.value(self._grid, p.meter_max_age.total_seconds())
        grid = snapshot.reading(self._grid)
        ledger = state.ledger
        if (
            ledger is None
            or grid is None
            or grid_w is None
            or not math.isfinite(grid_w)
            or battery is None
        ):
            if not state.stale:
                what = "battery SoC/power" if battery is None else "grid meter"
                events.append(f"{what} stale: peak shaving holds off (no battery action)")
            metrics["meter_stale_state"] = 1.0
            # Loads already shed stay shed: restoring them blind could create the peak.
            return Decision(
                state=replace(state, stale=True, shortfall_seen=None),
                requests=self._hold_shed(state.loads),
                metrics=metrics,
                events=tuple(events),
            )
        if state.stale:
            events.append("inputs fresh again: peak shaving resumes")
        state = replace(state, stale=False)
        metrics["meter_stale_state"] = 0.0
        # The meter already sees the battery's present output: add it back for the net load.
        net_w = grid_w + battery.power_w
        return self._act(
            state=state,
            savings_w=tuple(load.saving_w(snapshot) for load in p.sheddable_loads),
            ledger=ledger,
            net_w=net_w,
            grid_ts=grid.ts,
            battery=battery,
            now=now,
            forecasts=forecasts,
            metrics=metrics,
            events=events,
        )

    def _act(
        self,
        *,
        state: PeakShavingState,
        savings_w: tuple[float, ...],
        ledger: BlockLedger,
        net_w: float,
        grid_ts: datetime,
        battery: _Battery,
        now: datetime,
        forecasts: Forecasts,
        metrics: dict[str, float],
        events: list[str],
    ) -> Decision[PeakShavingState]:
        p = self._params
        # The view holds the last sample up to now: it steers this cycle, never committed.
        t_ref = max(now, ledger.sample[1])
        view, _ = integrate(ledger, ledger.sample[0], t_ref, p, held=True)
        in_demand = p.tariff is None or p.tariff.counts_for_demand(view.slot_start)
        block_start = slot_start(t_ref, p.block, p.zone)
        key, blocks = net_forecast_blocks(forecasts, p, block_start)
        blocks = with_measured_excess(blocks, net_w, p)
        counts = self._counts(block_start, len(blocks))
        counted = [d for d, c in zip(blocks, counts, strict=True) if c]
        state, limit_w = self._limit(
            state=state,
            block_start=block_start,
            key=key,
            blocks=blocks,
            counts=counts,
            soc_pct=battery.soc_pct,
            forecasts=forecasts,
            events=events,
        )

        tau_slot = t_ref - view.slot_start
        tau_window = (p.slots_per_block - 1) * p.slot + tau_slot
        window_wh = view.window_energy_wh
        aim_w = p.aim_w(limit_w) if limit_w is not None else None

        # The battery holds the aim (L − the target margin); shedding and restoring hold L.
        p_allow = p_allow_limit = math.inf
        if limit_w is not None and aim_w is not None and in_demand:
            p_allow, p_allow_limit = (
                self._allowed(target, view, tau_window) for target in (aim_w, limit_w)
            )
            if (
                window_wh > limit_w * (p.block / _HOUR)
                and state.lost_window_slot != view.slot_start
            ):
                events.append(
                    f"block lost: {window_wh:.0f} Wh already imported > L·T = "
                    f"{limit_w * (p.block / _HOUR):.0f} Wh; discharging and shedding all it can "
                    "to keep the billed demand low"
                )
                state = replace(state, lost_window_slot=view.slot_start)

        reserve = (
            reserve_pct(counted, aim_w, p)
            if aim_w is not None and key is not None and counted
            else p.reserve_pct
        )
        need_w = max(0.0, net_w - p_allow) if math.isfinite(p_allow) else 0.0
        # Never export: discharging beyond the net load only pushes energy out of the site.
        discharge_w = min(need_w, battery.can_discharge_w, max(0.0, net_w))
        headroom_w = self._charge_headroom_w(
            aim_w, p_allow, net_w, p.recharge_margin_w, in_demand=in_demand
        )
        charge_w, target_soc = self._recharge(
            battery=battery,
            need_w=need_w,
            headroom_w=headroom_w,
            # Short of what the forecast asks: recharge up to the aim (no forecast: no
            # measure of what is needed, the recharge margin stays).
            short_headroom_w=(
                self._charge_headroom_w(aim_w, p_allow, net_w, 0.0, in_demand=in_demand)
                if key is not None
                else headroom_w
            ),
            reserve=reserve,
            until_cheap=(
                (lambda: reserve_until_cheap_pct(blocks, counts, block_start, aim_w, p))
                if aim_w is not None and key is not None
                else (lambda: p.reserve_pct)
            ),
            cutoff=(
                (
                    lambda refill_wh: refill_price_cutoff(
                        blocks, counts, block_start, aim_w, refill_wh=refill_wh, params=p
                    )
                )
                if aim_w is not None and key is not None
                else (lambda _: math.inf)
            ),
            now=t_ref,
            metrics=metrics,
        )

        requests: list[SetpointRequest] = []
        constraints: list[Constraint] = []
        if discharge_w > 0.0:
            requests.append(
                self._battery_request(discharge_w, f"hold {p_allow:.0f} W: net {net_w:.0f} W")
            )
        elif charge_w > 0.0:
            requests.append(
                self._battery_request(-charge_w, f"recharge to {target_soc:.1f} % within L")
            )
        else:
            # Others may always charge from the site's surplus (net load below zero): it
            # adds no import, even in demand hours where this controller itself does not
            # recharge (recharge_in_demand_hours: false would otherwise waste the PV).
            others_w = max(headroom_w, -net_w)
            constraint = self._battery_constraint(others_w, battery.soc_pct, reserve)
            if constraint is not None:
                constraints.append(constraint)

        # What the battery leaves above P_allow for L (the target margin is the battery's
        # alone: no load is shed for it); an import of zero is as low as it gets, so a lost
        # block with the battery covering the whole net load sheds nothing.
        need_limit_w = max(0.0, net_w - p_allow_limit) if math.isfinite(p_allow_limit) else 0.0
        shortfall_w = min(need_limit_w, max(0.0, net_w)) - discharge_w
        loads, sighting, load_requests = self._shed_or_restore(
            loads=state.loads,
            savings_w=savings_w,
            seen=state.shortfall_seen,
            readings_ts=(grid_ts, battery.power_ts),
            shortfall_w=shortfall_w,
            net_w=net_w,
            allow_w=min(p_allow_limit, limit_w if limit_w is not None else math.inf),
            now=now,
            events=events,
        )
        requests.extend(load_requests)
        state = replace(state, loads=loads, limit_w=limit_w, shortfall_seen=sighting)

        metrics.update(
            {
                "block_energy_wh": window_wh,
                "block_elapsed_s": tau_window.total_seconds(),
                "block_gap_s": view.window_gap_s,
                "net_load_w": net_w,
                "reserve_pct": reserve,
                "battery_request_w": discharge_w - charge_w,
                # AC energy to reach the recharge target: what a planner must leave room for.
                "recharge_needed_wh": max(0.0, target_soc - battery.soc_pct)
                / 100.0
                * p.capacity_wh
                / p.charge_efficiency,
                "shortfall_w": max(0.0, shortfall_w),
                "shed_loads_state": float(sum(1 << i for i, load in enumerate(loads) if load.shed)),
                "shed_count": float(sum(1 for load in loads if load.shed)),
                "in_demand_hours_state": 1.0 if in_demand else 0.0,
            }
        )
        if tau_window > timedelta(0):
            metrics["demand_w"] = window_wh / (tau_window / _HOUR)
        if limit_w is not None:
            metrics["limit_w"] = limit_w
        if aim_w is not None:
            metrics["aim_w"] = aim_w
        if math.isfinite(p_allow):
            metrics["allowed_import_w"] = p_allow
        return Decision(
            state=state,
            requests=tuple(requests),
            constraints=tuple(constraints),
            metrics=metrics,
            events=tuple(events),
        )

    # -- helpers --------------------------------------------------------------------------

    def _account(
        self, snapshot: Snapshot, state: PeakShavingState, now: datetime, events: list[str]
    ) -> PeakShavingState:
        """Integrate a new grid sample; completed windows update the month's billed peak."""
        p = self._params
        reading = snapshot.reading(self._grid)
        ledger = state.ledger
        closed: tuple[ClosedWindow, ...] = ()
        if reading is not None and math.isfinite(reading.value):
            if ledger is None:
                ledger = start_ledger(reading.value, reading.ts, p)
            else:
                ledger, closed = integrate(ledger, reading.value, reading.ts, p)
        month, billed = state.month, state.billed_peak_w
        for window in closed:
            window_month = local_month(window.slot_start, p.zone)
            if month is None or window_month > month:
                if month is not None:
                    events.append(
                        f"new month {window_month}: billed peak reset from {billed:.0f} W"
                    )
                month, billed = window_month, 0.0
            if window_month < month:
                continue  # a late sample of last month: its bill is closed
            if p.tariff is not None and not p.tariff.counts_for_demand(window.slot_start):
                continue
            if state.limit_w is not None and window.demand_w > state.limit_w + _EXCEED_TOLERANCE_W:
                events.append(
                    f"block at {window.slot_start.isoformat()}: demand {window.demand_w:.0f} W "
                    f"exceeded the limit {state.limit_w:.0f} W"
                )
            if not window.has_gap:
                billed = max(billed, window.demand_w)
        now_month = local_month(now, p.zone)
        if month is None or now_month > month:
            if month is not None:
                events.append(f"new month {now_month}: billed peak reset from {billed:.0f} W")
            month, billed = now_month, 0.0
        return replace(state, ledger=ledger, month=month, billed_peak_w=billed)

    def _battery(self, snapshot: Snapshot) -> _Battery | None:
        """Fresh SoC and power, and what the battery can do now; None when stale."""
        p = self._params
        max_age = p.battery_max_age.total_seconds()
        soc = snapshot.value(self._soc, max_age)
        power = snapshot.value(self._power, max_age)
        if soc is None or power is None or not (math.isfinite(soc) and math.isfinite(power)):
            return None
        can_discharge = p.max_discharge_w if soc > p.soc_min_pct else 0.0
        can_charge = p.max_charge_w if soc < p.soc_max_pct else 0.0
        # The inverter's own capability (temperature, BMS limits) narrows ours when known.
        if self._avail_discharge is not None:
            avail = snapshot.value(self._avail_discharge, max_age)
            if avail is not None and math.isfinite(avail):
                can_discharge = min(can_discharge, max(0.0, avail))
        if self._avail_charge is not None:
            avail = snapshot.value(self._avail_charge, max_age)
            if avail is not None and math.isfinite(avail):
                can_charge = min(can_charge, max(0.0, avail))
        power_ts = snapshot.readings[self._power].ts
        return _Battery(soc, power, power_ts, can_discharge, can_charge)

    def _counts(self, start: datetime, count: int) -> list[bool]:
        """Whether each block from ``start`` counts for billed demand."""
        tariff = self._params.tariff
        block = self._params.block
        if tariff is None:
            return [True] * count
        return [tariff.counts_for_demand(start + b * block) for b in range(count)]

    def _limit(
        self,
        *,
        state: PeakShavingState,
        block_start: datetime,
        key: str | None,
        blocks: list[float],
        counts: list[bool],
        soc_pct: float,
        forecasts: Forecasts,
        events: list[str],
    ) -> tuple[PeakShavingState, float | None]:
        """L for this cycle, W (None: no limit known yet), never below the billed peak.

        ``auto`` plans L at every block start (the SoC has moved) and whenever the forecast
        changes: :func:`plan_limit_w` from the present SoC over the forecast horizon.
        """
        p = self._params
        base: float | None
        if not isinstance(p.limit_w, str):
            base = p.limit_w
        elif key is None or not any(counts):
            base = p.fallback_limit_w
        else:
            auto_key = (block_start, key, forecasts[key], _pv_forecast(forecasts, p, key))
            if state.auto_key != auto_key or state.auto_limit_w is None:
                has_windows = p.tariff is not None and bool(p.tariff.demand_hours)
                budget = SocBudget(
                    stored_wh=max(0.0, soc_pct - p.soc_min_pct) / 100.0 * p.capacity_wh,
                    room_wh=p.usable_energy_wh,
                    charge_efficiency=p.charge_efficiency,
                    discharge_efficiency=p.discharge_efficiency,
                    max_charge_w=p.max_charge_w,
                    max_discharge_w=p.max_discharge_w,
                    recharge_margin_w=p.recharge_margin_w,
                    charge_in_counted_blocks=p.recharge_in_demand_hours or not has_windows,
                    forecast_margin=p.auto_forecast_margin_pct / 100.0,
                    target_margin_w=p.target_margin_w,
                    target_margin_pct=p.target_margin_pct,
                )
                chosen = plan_limit_w(blocks, counts, p.block, budget, floor_w=state.billed_peak_w)
                # A forecast rebuilt every block nudges L a little: report real moves only.
                previous = state.auto_limit_w
                if previous is None or abs(chosen - previous) > max(1.0, 0.01 * previous):
                    events.append(f"auto limit {chosen:.0f} W from forecast {key!r}")
                state = replace(state, auto_limit_w=chosen, auto_key=auto_key)
            base = state.auto_limit_w
        if base is None:
            return state, (state.billed_peak_w if state.billed_peak_w > 0.0 else None)
        return state, max(base, state.billed_peak_w)

    def _allowed(self, target_w: float, view: BlockLedger, tau_window: timedelta) -> float:
        """P_allow against ``target_w``, W; rolling: the smaller of the window's and the
        current sub-interval's bound (see the module docstring)."""
        p = self._params
        bound = allowed_import_w(target_w, p.block, tau_window, view.window_energy_wh)
        if p.slots_per_block > 1:
            tau_slot = tau_window - (p.slots_per_block - 1) * p.slot
            bound = min(bound, allowed_import_w(target_w, p.slot, tau_slot, view.slot_energy_wh))
        return bound

    def _recharge(
        self,
        *,
        battery: _Battery,
        need_w: float,
        headroom_w: float,
        short_headroom_w: float,
        reserve: float,
        until_cheap: Callable[[], float],
        cutoff: Callable[[float], float],
        now: datetime,
        metrics: dict[str, float],
    ) -> tuple[float, float]:
        """Charging power, W, and the SoC it recharges towards, %.

        Above the recharge price cap only up to ``until_cheap()``: the reserve the blocks
        before the next cheap one need; the rest waits for the cheap hours. Below the
        reserve needed (``reserve``, or ``until_cheap()`` above the cap) the battery is short
        of what the forecast asks of it: it recharges up to the aim itself
        (``short_headroom_w``, no recharge margin; the target margin still keeps it under L).
        Otherwise, with ``recharge_in_cheapest_blocks``, it waits while the price is above
        ``cutoff(refill_wh)``: the cheapest blocks before the next need refill it.
        """
        p = self._params
        target_soc = reserve if p.recharge_target == "reserve" else p.soc_max_pct
        needed = reserve
        cap = p.recharge_price_cap
        if p.tariff is not None and cap is not None:
            capped = p.tariff.price_per_kwh(now) > cap
            metrics["recharge_price_capped_state"] = 1.0 if capped else 0.0
            if capped:
                needed = until_cheap()
                metrics["reserve_until_cheap_pct"] = needed
                target_soc = min(target_soc, needed)
        if battery.soc_pct < needed:
            headroom_w = max(headroom_w, short_headroom_w)
        elif p.tariff is not None and p.recharge_in_cheapest_blocks and need_w <= 0.0:
            refill_wh = (
                max(0.0, target_soc - battery.soc_pct) / 100.0 * p.capacity_wh
            ) / p.charge_efficiency
            if p.tariff.price_per_kwh(now) > cutoff(refill_wh):
                metrics["recharge_deferred_state"] = 1.0
                return 0.0, target_soc
        if need_w <= 0.0 and battery.soc_pct < target_soc and headroom_w > 0.0:
            return min(headroom_w, battery.can_charge_w), target_soc
        return 0.0, target_soc

    def _charge_headroom_w(
        self, aim_w: float | None, p_allow: float, net_w: float, margin_w: float, *, in_demand: bool
    ) -> float:
        """How much charging the import can take, W (inf outside demand hours)."""
        p = self._params
        has_windows = p.tariff is not None and bool(p.tariff.demand_hours)
        if not in_demand:
            return math.inf
        if (has_windows and not p.recharge_in_demand_hours) or aim_w is None:
            return 0.0
        return min(aim_w, p_allow) - margin_w - net_w

    def _battery_request(self, value_w: float, reason: str) -> SetpointRequest:
        return SetpointRequest(
            target=self._setpoint,
            value=value_w,
            priority=Priority.PEAK_SHAVING,
            source=self._params.name,
            reason=reason,
        )

    def _battery_constraint(
        self, headroom_w: float, soc_pct: float, reserve: float
    ) -> Constraint | None:
        """Bounds for lower priorities while this controller leaves the battery alone:
        no charging beyond the import headroom, no discharging below the reserve."""
        minimum = -max(0.0, headroom_w) if math.isfinite(headroom_w) else -math.inf
        maximum = 0.0 if soc_pct <= reserve else math.inf
        if minimum == -math.inf and maximum == math.inf:
            return None
        return Constraint(
            target=self._setpoint,
            priority=Priority.PEAK_SHAVING,
            source=self._params.name,
            minimum=minimum,
            maximum=maximum,
            reason=f"import headroom {headroom_w:.0f} W, SoC reserve {reserve:.1f} %",
        )

    def _shed_or_restore(
        self,
        *,
        loads: tuple[LoadState, ...],
        savings_w: tuple[float, ...],
        seen: ShortfallSighting | None,
        readings_ts: tuple[datetime, datetime],
        shortfall_w: float,
        net_w: float,
        allow_w: float,
        now: datetime,
        events: list[str],
    ) -> tuple[tuple[LoadState, ...], ShortfallSighting | None, list[SetpointRequest]]:
        """Shed in order until the shortfall, once confirmed by a newer poll of the meter
        and the battery (``readings_ts``: this cycle's), is covered, or restore one load
        with hysteresis once no shortfall is left. Returns the loads, the sighting to carry
        on and the requests.

        ``allow_w`` is min(P_allow, L): restoring against an early block's slack above L
        would bring a load back that the next block cannot carry.
        """
        sighting, shed_w = _confirm_shortfall(seen, shortfall_w, *readings_ts)
        specs = self._params.sheddable_loads
        new = list(loads)
        restored: int | None = None
        settle = self._params.shed_settle
        # Loads shed moments ago have not reached the meter yet: count them as saving.
        covered = sum(
            load.saving_w
            for load in loads
            if load.shed and load.since is not None and now - load.since < settle
        )
        last_switch = max((load.since for load in loads if load.since is not None), default=None)
        settled = last_switch is None or now - last_switch >= settle
        if shed_w > _EXCEED_TOLERANCE_W:
            for i in self._shed_order:
                if covered >= shed_w:
                    break
                spec, load = specs[i], new[i]
                if load.shed or (load.since is not None and now - load.since < spec.min_on):
                    continue
                if savings_w[i] <= 0.0:
                    continue  # drawing nothing now: shedding it would not help
                new[i] = LoadState(shed=True, since=now, saving_w=savings_w[i])
                covered += savings_w[i]
                events.append(
                    f"shed {spec.name} ({savings_w[i]:.0f} W): battery short by {shed_w:.0f} W"
                )
        elif shortfall_w <= 0.0 and settled:
            for i in reversed(self._shed_order):
                spec, load = specs[i], new[i]
                if not load.shed or (load.since is not None and now - load.since < spec.min_off):
                    continue
                if net_w + spec.nominal_w < allow_w - spec.restore_hysteresis_w:
                    new[i] = LoadState(shed=False, since=now)
                    restored = i
                    events.append(f"restored {spec.name} ({spec.nominal_w:.0f} W)")
                    break
        requests = list(self._hold_shed(tuple(new)))
        if restored is not None:
            spec = specs[restored]
            requests.append(
                SetpointRequest(
                    target=spec.ref,
                    value=spec.normal_value,
                    priority=Priority.PEAK_SHAVING,
                    source=self._params.name,
                    reason="restore after shedding",
                )
            )
        return tuple(new), sighting, requests

    def _hold_shed(self, loads: tuple[LoadState, ...]) -> tuple[SetpointRequest, ...]:
        """The shed value for every load currently shed (absolute targets, every cycle)."""
        specs = self._params.sheddable_loads
        return tuple(
            SetpointRequest(
                target=specs[i].ref,
                value=specs[i].shed_value,
                priority=Priority.PEAK_SHAVING,
                source=self._params.name,
                reason="shed for peak shaving",
            )
            for i, load in enumerate(loads)
            if load.shed
        )
