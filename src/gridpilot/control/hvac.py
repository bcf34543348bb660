"""HVAC with thermal inertia: plan a zone's cooling over a day and steer its thermostat.

Each cycle the controller either reuses its plan or solves a new one (the plan is older than
``replan_interval``, the zone has drifted ``replan_deviation_k`` away from it, or there is
none). The plan is a linear programme over the horizon (``plan_cooling``)::

    min  Σ_k price_k · Φ_k/COP(T_o,k) · Δt  +  penalty · Σ_k (s⁺_k + s⁻_k) · Δt
         + c_d · Σ_j w_j · E_j                                     (demand charge, optional)
    s.t. T_{k+1} = a·T_k + (1 − a)·(T_o,k + R·(G_k − Φ_k))      (identified 1R1C zone)
         lo_k + m − s⁻_k ≤ T_{k+1} ≤ hi_k − m + s⁺_k             (soft comfort band)
         |Φ_k − Φ_{k−1}| ≤ ΔΦ_ramp                               (chiller ramp, optional)
         mean_{k∈b}(O_k + z_j·σ_k + Φ_k/COP_k) − E_j ≤ D_billed  (each counted block b, j)
         0 ≤ Φ_k ≤ chiller capacity,  s⁺, s⁻, E ≥ 0,  T_{k+1} ≤ ceiling (optional, hard)

with Φ the thermal cooling power, G the modelled gains (occupancy + aperture × irradiance)
and price_k the tariff's energy price. The comfort band is soft, so a zone that starts
outside it gets a plan that brings it back at a price, never an infeasible problem; only
the optional hard ceiling can make it infeasible. The plan aims ``comfort_margin_k`` (m)
inside the band: the thermostat overshoots a setpoint by what its chiller's ramp delivers
after it gets there (≈ 0.1 K), and a plan at the edge itself ends pre-cooling minutes
below the band. ΔΦ_ramp is the change of a step's mean cooling that a ramp from
standstill at ``chiller_ramp_w_per_s`` allows.

**Demand charge** (the tariff's ``demand_charge_per_kw`` c_d, per kW of the month's highest
``demand_interval`` mean import): min Σ price·P·Δt + c_d·max(0, D − D_billed), with D the
highest block of the site's net import. The charge is monthly, so inside a day's horizon
the whole of it applies to any rise of the month's peak, and nothing below the peak
already billed costs anything. D_billed is tracked in the controller's state from the site
meter (``grid_point``: the month's highest block mean of import, as
:class:`DemandLedger`), raised to a published billed peak (``billed_peak_point``) or to the
peak shaver's import limit (``import_limit_point``: with a battery holding L, load up to L
is the battery's concern). The other load O_k is the consumption forecast
(``forecasts["load_w"]``: base load and every chiller) minus this zone's chiller as that
forecast holds it (the zone's last plan; before one, a thermostat's holding power) minus
``forecasts["pv_w"]``. With several zones, each :class:`HvacController` counts the others
as forecast in O_k: zones that pre-cool into the same hour each believe they have the room,
and a pre-cooling burst of this zone's plan is subtracted from a forecast that held only a
typical day's chiller. :class:`HvacGroupController` plans the zones in one LP
(:func:`plan_zones`: the demand rows hold the sum of their chillers) against the forecast
of the consumption without them (``forecasts["uncontrolled_load_w"]``) less PV. Forecasts
of net import miss by many kW (a cloud deck the PV profile did not see), so the term is an
expectation over scenarios j of the other load with probabilities w_j: J equally likely
levels, the
forecast shifted by normal quantiles z_j of its spread σ_k (``load_forecast_error`` ×
load ⊕ ``pv_forecast_error`` × PV, widened to reach ``forecasts["net_load_p90_w"]`` at
90 % where that quantile forecast exists) in every block at once (``demand_scenarios``;
J = 1, the forecast alone, by default), and optionally an overcast day with probability
``overcast_weight``, PV at ``overcast_pv_fraction`` of its forecast: a dawn forecast cannot
tell a cloud deck at 10:00, and a plan hedged against it keeps pre-cooling in reserve for
the hours such a day would peak in. A plateau (``pv_plateau_weight``) and cloud windows
(``cloud_window_weight``) add further PV-shortfall scenarios, and a level hold
(``level_hold_weight``) the other load held for a while at what the meter shows now where
the forecast has it falling. A scenario shares the plan's cooling, unless it has a branch
(``cloud_window_recourse``; the level hold always): then it has its own Φ, T and slacks
from the cloud's first step (the hold's: the next one), starting from the plan's
temperature there and handing the zone back no warmer (a two-stage programme: the
controller answers a cloud it sees, so what the plan owes the scenario is a cold zone when
it comes), its costs weighted by its probability and the plan's by the rest. Only blocks
of the current local day count: tomorrow's blocks are planned tomorrow on a better
forecast, and a high forecast for them would let any block today go unpriced below it.
Without a consumption forecast (or without a demand charge) the plan prices energy only.

The controller does not drive the chiller: it writes the zone's **setpoint**, the planned
temperature at the end of the current step, and the zone's own thermostat tracks it (the
simulator's ``step_zone`` reaches a setpoint within one step when the chiller can). So a
lower planned temperature before an expensive window is pre-cooling, carried out by the
thermostat.

Fallback: when the zone temperature is stale or missing, there is no usable model (none,
refused or fitting badly), the outdoor temperature is neither forecast nor measured, or the
solver does not return an optimum, the controller requests a plain thermostat setpoint
(``fallback_band_position`` up the current comfort band) and says why in ``Decision.events``
— once, when the reason changes — and in the ``fallback_state`` metric.

Offloaded (``offloaded()``, what the service runs when it has worker processes), ``decide``
never solves: a due plan becomes a :class:`~gridpilot.control.base.Job` (``solve_plans`` on a
:class:`PlanJob`, pure inputs) and an identification a job of ``identify_zone``; the zone
follows the plan it has meanwhile, or without one its thermostat (``solving``), and
``finish`` takes the outcome in between cycles. A solve that fails, times out or loses its
worker falls back as a failed inline solve does. Inline (the default, as the control
benchmark drives it) ``decide`` solves there and then.

Priority ECONOMICS: the plan is a cost optimisation with comfort as a priced constraint.
Peak shaving and the grid operator (demand response raising setpoints) must outrank it, and
it should outrank a plain comfort schedule at COMFORT. One instance per zone, each from its
own ``HvacParams``: zones have their own model, band and chiller, and one failing zone then
falls back alone. Several zones of one site are better planned together, by one
:class:`HvacGroupController` over their ``HvacController`` s (the factory builds one for two
or more zones unless ``control.hvac_planning`` is ``per_zone``); a zone still falls back
alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from statistics import NormalDist
from typing import Any, Literal, Self, cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import sparse
from scipy.optimize import linprog

from gridpilot.control.base import (
    Decision,
    Forecast,
    Forecasts,
    Job,
    JobOutcome,
    PointField,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.tariff import HourWindow, Tariff, local_month, slot_start
from gridpilot.control.thermal import (
    IdentificationParams,
    IdentificationRefused,
    RcModel,
    ThermalFit,
    ZoneHistory,
    identify_zone,
)

KELVIN = 273.15


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ComfortBand(_Frozen):
    """Zone temperatures that cost nothing: [lower_degc, upper_degc]."""

    lower_degc: float = Field(ge=0.0, le=40.0)
    upper_degc: float = Field(ge=0.0, le=40.0)

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.upper_degc < self.lower_degc:
            raise ValueError(f"upper_degc {self.upper_degc} is below lower_degc {self.lower_degc}")
        return self

    def deviation_degc(self, temperature_degc: float) -> float:
        """Kelvin outside the band (0 inside)."""
        return max(0.0, self.lower_degc - temperature_degc, temperature_degc - self.upper_degc)


class CopModel(_Frozen):
    """Chiller efficiency: a fixed COP, or a Carnot fraction of the ideal lift (kelvin)."""

    fixed_cop: float | None = Field(default=None, gt=0.0)
    """When set, the COP regardless of the weather; otherwise the Carnot model below."""
    carnot_fraction: float = Field(default=0.45, gt=0.0, le=1.0)
    chilled_water_degc: float = 7.0
    condenser_approach_k: float = Field(default=8.0, ge=0.0)
    """Condensing temperature above the outdoor air."""
    cop_min: float = Field(default=1.5, gt=0.0)
    cop_max: float = Field(default=7.0, gt=0.0)

    def cop(self, outdoor_degc: float) -> float:
        """COP = η·T_cold/(T_hot − T_cold), clipped to [cop_min, cop_max]."""
        if self.fixed_cop is not None:
            return self.fixed_cop
        t_cold = self.chilled_water_degc + KELVIN
        lift = outdoor_degc + self.condenser_approach_k + KELVIN - t_cold
        if lift <= 0.0:
            return self.cop_max
        return min(max(self.carnot_fraction * t_cold / lift, self.cop_min), self.cop_max)


class HvacParams(_Frozen):
    """One zone's cooling planner. Temperatures °C, powers W (thermal unless named)."""

    zone: str = Field(min_length=1)
    """Device id of the zone controller, e.g. ``hvac_zone_1``."""
    name: str | None = None
    """The controller's name (unique in the engine); default ``<zone>_planner``."""
    temperature_point: str = "temperature_degc"
    setpoint_point: str = "setpoint_degc"
    """The writable occupied cooling setpoint the controller requests."""
    cooling_point: str = "cooling_power_w"
    """Thermal cooling power: with the temperature, what identification learns from."""
    occupied_point: str = "occupied_state"
    outdoor_temperature: PointField | None = PointRef("weather_io", "outdoor_temperature_degc")
    """Read for persistence when the ``outdoor_degc`` forecast is missing."""
    irradiance: PointField | None = PointRef("weather_io", "irradiance_wm2")
    """Read for persistence when the ``irradiance_wm2`` forecast is missing."""
    occupied_band: ComfortBand = ComfortBand(lower_degc=21.0, upper_degc=24.0)
    unoccupied_band: ComfortBand = ComfortBand(lower_degc=18.0, upper_degc=28.0)
    occupancy: tuple[HourWindow, ...] = (HourWindow(start_hour=7.0, end_hour=19.0),)
    """Occupied hours, local time of the tariff's time zone (the building's)."""
    horizon: timedelta = timedelta(hours=24)
    step: timedelta = timedelta(minutes=15)
    replan_interval: timedelta = timedelta(minutes=15)
    replan_deviation_k: float = Field(default=1.0, gt=0.0)
    """Re-plan early when the zone is this far from the plan's temperature."""
    replan_within_block: timedelta | None = None
    """Joint planning with ``step`` equal to the tariff's ``demand_interval``: re-plan this
    often inside a demand block too, and plan the block under way from its start, as it
    is billed -- the zones from their temperatures when it began (the plan's), the cooling
    they have had since (their models, from their temperatures now) a floor on the step's,
    and its other load the meter's energy so far less that cooling's chillers plus, for
    the rest of it, the meter's reading now less the chillers. A plan made at a block's
    start fills the headroom under the billed peak from a forecast of the block's mean;
    minutes later the meter tells how the block is going, and the plan can still take
    cooling out of it (or add some). None: plans only at a block's start (or on a drift)."""
    comfort_penalty_per_kh: float = Field(default=1000.0, ge=0.0)
    """Price of one kelvin outside the band for one hour, in the tariff's currency. The
    default outweighs what leaving the band could save: pre-cooling below it at usual TOU
    spreads (about 1 currency unit per K of an 18 MJ/K zone), and above all a demand charge
    (a zone floating 1 K warm for 15 minutes spares ~1 kW of a block's demand, worth
    15-20 per kW-month), so the band holds when it can."""
    chiller_capacity_w: float = Field(default=60_000.0, gt=0.0)
    cop: CopModel = CopModel()
    tariff: Tariff = Tariff()
    max_input_age_s: float = Field(default=120.0, gt=0.0)
    """Readings older than this are stale (the zone temperature, persisted weather)."""
    setpoint_min_degc: float = 16.0
    setpoint_max_degc: float = 30.0
    temperature_ceiling_degc: float | None = None
    """A hard limit the zone must never exceed (server rooms); None = the band is all soft.
    A chiller too small to hold it makes the plan infeasible and the controller fall back."""
    comfort_margin_k: float = Field(default=0.1, ge=0.0, le=2.0)
    """The plan keeps the zone this far inside both edges of the band (half the band at
    most). The thermostat chases a new setpoint as fast as its chiller ramps and overshoots
    it while the chiller ramps back: up to ≈ (cooling − holding cooling)² / (2·ramp rate·C),
    0.1-0.15 K for a 60 kW chiller with a 5-minute ramp on an 18 MJ/K zone. A plan aimed at
    the edge itself ends pre-cooling minutes below the band, and a zone floated up to the
    upper edge overshoots it while the chiller starts."""
    chiller_ramp_w_per_s: float | None = Field(default=200.0, gt=0.0)
    """Thermal capacity change rate of the chiller (200 W/s: a 60 kW chiller's 5-minute
    ramp). The plan's cooling changes from one step to the next by no more than a ramp from
    standstill can deliver in a step's mean; None = no ramp limit in the plan."""
    grid_point: PointField | None = PointRef("grid_meter", "active_power_w")
    """The site meter (import +): the controller tracks the month's billed demand from it,
    as the tariff bills it (the highest ``demand_interval`` mean import in demand hours)."""
    billed_peak_point: PointField | None = None
    """A published billed demand, W (e.g. the peak shaver's ``billed_peak_w`` metric where the
    service exposes controller metrics as points): the larger of it and the tracked one."""
    import_limit_point: PointField | None = None
    """A published import limit, W (the peak shaver's ``limit_w``): when fresh, demand up to
    it is the battery's to hold, so the plan only pays for consumption above it."""
    load_forecast_key: str | None = "load_w"
    """The site's consumption forecast (this zone's chiller included); None or missing =
    plan on energy prices only, as without a demand charge."""
    pv_forecast_key: str | None = "pv_w"
    """Subtracted from the consumption when present: the billed quantity is net import."""
    net_load_high_key: str | None = "net_load_p90_w"
    """A high quantile (90 %) of the net import, when forecast: where it lies above the
    consumption − PV forecast, it widens the demand scenarios' spread so that their 90 %
    level reaches it (a morning ramp the blended forecast is late on)."""
    uncontrolled_load_key: str | None = "uncontrolled_load_w"
    """Joint planning (:class:`HvacGroupController`): the site's consumption *without* the
    planned zones' chillers, when forecast (the site meters them: ``chiller_power_point``).
    Without it the group takes ``load_forecast_key`` less what thermostats holding the
    zones would draw."""
    chiller_power_point: str = "chiller_power_w"
    """The zone chiller's electric power, W (the uncontrolled load is measured without it)."""
    load_forecast_error: float = Field(default=0.03, ge=0.0, le=1.0)
    """Relative standard error of the consumption forecast, for the demand scenarios."""
    pv_forecast_error: float = Field(default=0.4, ge=0.0, le=2.0)
    """Relative standard error of the PV forecast (a cloud deck the profile did not see)."""
    demand_scenarios: int = Field(default=1, ge=1, le=50)
    """The demand charge is the expected one over this many equally likely levels of the
    other load (normal quantiles of the errors above); 1 = the forecast taken as certain.
    In the control benchmark (July) 5 levels kept the early, cloudy days' peaks near the
    optimum's but cost energy, and did not help on the day that set the month's peak."""
    overcast_weight: float = Field(default=0.0, ge=0.0, lt=1.0)
    """The probability the demand charge gives to an overcast day the PV forecast does not
    see: a scenario where PV delivers only ``overcast_pv_fraction`` of its forecast (the
    forecast and its demand scenarios share the rest). A profile-and-persistence PV
    forecast made at dawn cannot tell a cloud deck at 10:00; with this the plan keeps some
    pre-cooling for the hours such a day would peak in. 0 = no such scenario."""
    overcast_pv_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """PV output in the overcast scenario, as a fraction of the forecast. (On the control
    benchmark's first 17 July days, with ``overcast_weight`` 0.3, 0.5 and 0.25 both cut the
    cloudy day's peak from 120.5 to 118.8 and 118.7 kW; 0.25 also held back more of the
    pre-cooling before the on-peak price, at +6 $ of energy.)"""
    pv_plateau_weight: float = Field(default=0.0, ge=0.0, lt=1.0)
    """The probability the demand charge gives to a sky that gets no brighter today: PV
    capped at ``pv_plateau_fraction`` of the forecast for the current step (a cloud deck
    holding PV at its morning level while the load climbs to its peak, as on the control
    benchmark's 14 July and 13 August). The overcast scenario scales the forecast, which
    still rises with the sun; this one does not. 0 = no such scenario."""
    pv_plateau_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    """The plateau scenario's cap, as a fraction of the PV forecast for the current step
    (1 = no brighter than now; below 1 the deck thickens too). (Control benchmark, cost
    saving ratio July/August with weight 0.3: fraction 1 with the overcast scenario
    0.463/0.450, 0.5 alone 0.338/0.777 -- its own morning bursts set July's peak --, 0.5 with
    the overcast scenario 0.462/0.594; without either 0.436/0.450.)"""
    cloud_window_weight: float = Field(default=0.0, ge=0.0, lt=1.0)
    """The probability the demand charge gives to a cloud deck arriving at some hour today
    and lasting ``cloud_window``: one scenario per hourly start from now -- per window when
    it is shorter than an hour, so that the windows tile the day -- while today lasts and
    its window has PV to lose, sharing this probability equally, each with PV
    at ``overcast_pv_fraction`` of its forecast inside its window only. The all-day
    overcast scenario's peak sits in the busiest block, which the zones cannot shave, and
    every lower block is then free in it; each window scenario has its own peak, so
    pre-cooling is kept for a later block a cloud could push over the billed peak.
    0 = no such scenarios."""
    cloud_window: timedelta = timedelta(hours=2)
    """How long a cloud deck of the window scenarios lasts."""
    cloud_window_recourse: timedelta | None = None
    """None: a window scenario shares the whole plan -- the zones' cooling inside the
    window is the plan's, so the plan protects a block against a cloud only by cooling
    less in it whatever the sky does. A duration: the zones answer the cloud, as the
    controller does once it sees it (it re-plans every step): in the scenario their
    cooling from the window's first step with PV lost until this long after the window's
    end is the scenario's own, and what the plan must provide is a zone cold enough, when
    the cloud comes, to ride it out. One more copy of the zones' variables over that span
    per window."""
    nowcast_first_step: bool = False
    """Joint planning: the first step's other load is at least what the meter shows now
    (the import less the planned chillers), and the PV-shortfall scenarios leave that
    step's PV alone: the quarter hour now starting is nowcast from the meter, not forecast.
    Without it the overcast and window-now scenarios make the current block the day's
    darkest, so every kW of cooling in it looks like a new peak and the headroom under the
    billed peak goes unused. (Control benchmark, H1's scenarios: HVAC cost-saving ratio
    July 0.571 → 0.815, but August 0.558 → 0.373, a quarter still rising after its first
    reading filled to the billed peak; so off by default.)"""
    nowcast_margin_pct: float = Field(default=0.0, ge=0.0, le=50.0)
    """The nowcast first step's other load raised by this share: the meter's reading is of
    the instant the quarter starts, and on a morning ramp (or under a thickening cloud) the
    quarter's mean runs above it -- a plan that fills the headroom to the billed peak
    exactly sets a new peak whenever it does. (Control benchmark: 2 % and 4 % gave August
    back 0.496 but July only 0.285: the margin also takes the headroom.)"""
    level_hold_weight: float = Field(default=0.0, ge=0.0, lt=1.0)
    """The probability the demand charge gives to a site that gets no quieter for
    ``level_hold``: the other load (net of PV) held from the next step at the larger of the
    next step's forecast and what the meter shows now (joint planning), wherever the
    forecast has it falling -- a morning whose PV does not rise as forecast. The zones
    answer it from the next step on (the controller re-plans then), so what the plan must
    provide is zones cold enough now to ride it out: the reserve kept in the headroom under
    the billed peak. 0 = no such scenario."""
    level_hold: timedelta = timedelta(hours=2)
    """How long the held level lasts; the zones hand back to the plan at its end."""
    fallback_band_position: float = Field(default=0.75, ge=0.0, le=1.0)
    """Fallback setpoint: this far up the current comfort band (0 = lower, 1 = upper)."""
    solver_time_limit_s: float = Field(default=5.0, ge=0.0)
    identification: IdentificationParams = IdentificationParams()
    """Used when the controller identifies its model from a history in its state."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.step <= timedelta(0) or self.horizon < self.step:
            raise ValueError("step must be positive and horizon at least one step")
        if self.setpoint_max_degc <= self.setpoint_min_degc:
            raise ValueError("setpoint_max_degc must be above setpoint_min_degc")
        weights = (
            self.overcast_weight
            + self.pv_plateau_weight
            + self.cloud_window_weight
            + self.level_hold_weight
        )
        if weights >= 1.0:
            raise ValueError(
                "overcast_weight + pv_plateau_weight + cloud_window_weight + "
                "level_hold_weight must be below 1 "
                "(the forecast itself keeps the rest of the probability)"
            )
        if self.level_hold_weight > 0.0 and self.level_hold < self.step:
            raise ValueError("level_hold must be at least one step")
        if self.cloud_window < self.step:
            raise ValueError("cloud_window must be at least one step")
        if self.cloud_window_recourse is not None and self.cloud_window_recourse < timedelta(0):
            raise ValueError("cloud_window_recourse must not be negative")
        if self.replan_within_block is not None and not (
            timedelta(0) < self.replan_within_block < self.step
        ):
            raise ValueError("replan_within_block must be positive and shorter than a step")
        if self.replan_within_block is not None and self.step != self.tariff.demand_interval:
            raise ValueError(
                "replan_within_block needs step equal to the tariff's demand_interval "
                "(each step one demand block)"
            )
        return self

    @property
    def steps(self) -> int:
        """Steps in the horizon."""
        return max(1, round(self.horizon / self.step))

    @property
    def step_s(self) -> float:
        return self.step.total_seconds()

    def ref(self, point: str) -> PointRef:
        return PointRef(self.zone, point)

    def history_points(self) -> tuple[PointRef, ...]:
        """What an identification history is built from: temperature, cooling, occupancy,
        outdoor temperature, irradiance (in the order of :class:`ZoneHistory`'s inputs)."""
        refs = [
            self.ref(self.temperature_point),
            self.ref(self.cooling_point),
            self.ref(self.occupied_point),
        ]
        refs += [r for r in (self.outdoor_temperature, self.irradiance) if r is not None]
        return tuple(refs)

    def occupied_at(self, when: datetime) -> bool:
        local = when.astimezone(self.tariff.zone)
        return any(window.contains(local) for window in self.occupancy)

    def band(self, occupied: bool) -> ComfortBand:
        return self.occupied_band if occupied else self.unoccupied_band

    def clip_setpoint(self, value_degc: float) -> float:
        return min(max(value_degc, self.setpoint_min_degc), self.setpoint_max_degc)

    def fallback_setpoint_degc(self, occupied: bool) -> float:
        band = self.band(occupied)
        position = self.fallback_band_position
        return self.clip_setpoint(band.lower_degc + position * (band.upper_degc - band.lower_degc))


# --------------------------------------------------------------------------------------------
# The optimiser


PlanStatus = Literal["optimal", "infeasible", "failed"]


@dataclass(frozen=True, slots=True)
class Plan:
    """A cooling plan over ``len(cooling_w)`` steps of ``step_s``.

    ``temperatures_degc[k]`` is the zone at k·Δt (index 0 = the measured start), so it has
    one value more than the per-step series. Empty series when the solver found no plan.
    """

    status: PlanStatus
    message: str
    step_s: float
    temperatures_degc: tuple[float, ...] = ()
    cooling_w: tuple[float, ...] = ()
    """Thermal cooling per step."""
    chiller_power_w: tuple[float, ...] = ()
    """Electric power per step (cooling / COP)."""
    cost: float = math.nan
    """Energy cost over the horizon, tariff currency (comfort penalty not included)."""
    energy_wh: float = math.nan
    """Electric energy over the horizon."""
    comfort_violation_kh: float = math.nan
    """Σ kelvin outside the band × hours (BOPTEST's thermal discomfort)."""
    peak_w: float = math.nan
    """The highest counted demand block of the plan: the other load's forecast plus this
    zone's chiller (NaN without a demand term)."""
    demand_charge: float = math.nan
    """What the plan adds to the demand charge: charge × max(0, peak − threshold)."""

    @property
    def ok(self) -> bool:
        return self.status == "optimal"


@dataclass(frozen=True, slots=True)
class DemandTerm:
    """The demand charge as the plan sees it, per step of the horizon.

    The plan pays ``charge_per_kw`` per kW by which a counted demand block — the mean over
    its steps of ``other_load_w`` plus the planned zones' chiller power — exceeds ``threshold_w``
    (the month's billed demand so far: anything below it is already paid for).
    """

    other_load_w: Sequence[float]
    """The site's net import without the planned zones' chillers, per step (W): the forecast."""
    blocks: Sequence[int]
    """The demand block of each step; steps of one block are averaged (equal weights)."""
    counts: Sequence[bool]
    """Whether the step's block counts towards billed demand (the tariff's demand hours)."""
    threshold_w: float
    charge_per_kw: float
    spread_w: Sequence[float] | None = None
    """Standard error of ``other_load_w`` per step (W); None = the forecast is certain."""
    scenarios: int = 1
    """With a spread: the expected charge over this many equally likely scenarios, the
    forecast shifted by normal quantiles of the spread in every step at once (a cloudy
    day lifts every block, not one)."""

    extra: Sequence[tuple[float, Sequence[float]]] = ()
    """Further scenarios, each (probability, what it adds to ``other_load_w`` per step, W):
    an overcast day the PV forecast cannot see. The scenarios above share the rest of the
    probability."""
    branches: Sequence[tuple[int, int] | None] = ()
    """Per ``extra`` scenario (empty = None for all): the steps [start, end) in which the
    zones' cooling is the scenario's own -- the controller re-plans each step, so once a
    cloud is there the zones answer it -- and before which the scenario shares the plan.
    None: the scenario shares the whole plan."""

    def shifts(self) -> list[float]:
        """The normal quantiles (z) of the scenarios: 0 alone without a spread."""
        if self.spread_w is None or self.scenarios <= 1:
            return [0.0]
        normal = NormalDist()
        return [normal.inv_cdf((j + 0.5) / self.scenarios) for j in range(self.scenarios)]

    def levels(self) -> list[tuple[float, npt.NDArray[np.float64]]]:
        """Every scenario as (probability, other load per step W)."""
        other = np.asarray(self.other_load_w, dtype=np.float64)
        spread = (
            np.asarray(self.spread_w, dtype=np.float64)
            if self.spread_w is not None
            else np.zeros(len(other))
        )
        shifts = self.shifts()
        rest = max(0.0, 1.0 - sum(weight for weight, _ in self.extra))
        out = [(rest / len(shifts), other + z * spread) for z in shifts]
        out += [(weight, other + np.asarray(add, dtype=np.float64)) for weight, add in self.extra]
        return out

    def spans(self) -> list[tuple[int, int] | None]:
        """Per scenario of :meth:`levels`, its own steps (:attr:`branches`), or None."""
        own: list[tuple[int, int] | None] = (
            list(self.branches) if self.branches else [None] * len(self.extra)
        )
        return [None] * len(self.shifts()) + own


def plan_cooling(
    model: RcModel,
    t0_degc: float,
    *,
    outdoor_degc: Sequence[float],
    irradiance_wm2: Sequence[float],
    occupied: Sequence[bool],
    prices_per_kwh: Sequence[float],
    params: HvacParams,
    demand: DemandTerm | None = None,
) -> Plan:
    """Cheapest cooling over the horizon the inputs span, comfort priced per K·h.

    Per-step inputs (all the same length n, step ``params.step``): outdoor temperature °C,
    irradiance W/m², occupancy (selects the comfort band the temperature at the *end* of the
    step is held to), import price per kWh. From ``params``: ``step``, the comfort bands,
    ``comfort_penalty_per_kh``, ``comfort_margin_k``, ``chiller_capacity_w``,
    ``chiller_ramp_w_per_s``, ``cop``, ``temperature_ceiling_degc`` and
    ``solver_time_limit_s`` (the horizon is the inputs' length, not ``params.horizon``).
    ``demand``, when given (its series of the same length), adds the demand charge.

    Returns a :class:`Plan`; a non-finite input or a solver without an optimum gives a plan
    with ``status`` ≠ ``"optimal"`` and the reason in ``message`` (never raises for data;
    raises ``ValueError`` for mismatched lengths). One zone of :func:`plan_zones`.
    """
    return plan_zones(
        [ZoneProblem(model, t0_degc, params, occupied)],
        outdoor_degc=outdoor_degc,
        irradiance_wm2=irradiance_wm2,
        prices_per_kwh=prices_per_kwh,
        demand=demand,
    )[0]


@dataclass(frozen=True, slots=True)
class ZoneProblem:
    """One zone of a joint plan (:func:`plan_zones`)."""

    model: RcModel
    t0_degc: float
    """The measured zone temperature at the plan's start."""
    params: HvacParams
    occupied: Sequence[bool]
    """Per step: whether the zone is occupied (selects its comfort band)."""
    first_cooling_min_w: float = 0.0
    """A floor on the first step's mean thermal cooling (W): the cooling a step already
    under way has had (see ``HvacParams.replan_within_block``)."""


@dataclass(frozen=True, slots=True)
class PlanJob:
    """The inputs of one :func:`plan_zones` solve: pure and pickleable, so that a worker
    process can solve it (:func:`solve_plans`)."""

    zones: tuple[ZoneProblem, ...]
    outdoor_degc: tuple[float, ...]
    irradiance_wm2: tuple[float, ...]
    prices_per_kwh: tuple[float, ...]
    demand: DemandTerm | None = None


def solve_plans(job: PlanJob) -> tuple[Plan, ...]:
    """:func:`plan_zones` of ``job`` (a module-level function: what a worker runs)."""
    return plan_zones(
        job.zones,
        outdoor_degc=job.outdoor_degc,
        irradiance_wm2=job.irradiance_wm2,
        prices_per_kwh=job.prices_per_kwh,
        demand=job.demand,
    )


def plan_zones(  # noqa: PLR0915 - one LP, its blocks built in order
    zones: Sequence[ZoneProblem],
    *,
    outdoor_degc: Sequence[float],
    irradiance_wm2: Sequence[float],
    prices_per_kwh: Sequence[float],
    demand: DemandTerm | None = None,
) -> tuple[Plan, ...]:
    """The cheapest cooling of several zones in one LP, one :class:`Plan` per zone.

    Each zone has its own model, band, chiller and occupancy (its variables and rows are
    those of :func:`plan_cooling`); they share the weather, the prices and the demand
    charge: a block's demand is the other load plus every zone's chiller, so the zones
    take turns in a busy block instead of each believing it has the room. Every plan
    carries the joint ``peak_w`` and ``demand_charge``. The zones must share one step;
    the solver's time limit is the largest of theirs.
    """
    n = len(outdoor_degc)
    if not zones:
        raise ValueError("plan_zones needs at least one zone")
    lengths = [len(irradiance_wm2), len(prices_per_kwh), *(len(z.occupied) for z in zones)]
    if any(length != n for length in lengths) or n == 0:
        raise ValueError(
            "outdoor, irradiance, occupied and prices must have one equal, non-zero length; "
            f"got {n}, {len(irradiance_wm2)}, {[len(z.occupied) for z in zones]}, "
            f"{len(prices_per_kwh)}"
        )
    if len({z.params.step for z in zones}) != 1:
        raise ValueError("the zones of a joint plan must share one step")
    dt_s = zones[0].params.step_s
    outdoor = np.asarray(outdoor_degc, dtype=np.float64)
    irradiance = np.asarray(irradiance_wm2, dtype=np.float64)
    prices = np.asarray(prices_per_kwh, dtype=np.float64)
    starts = [z.t0_degc for z in zones]
    if not _all_finite(starts, (outdoor, irradiance, prices), demand, n):
        failed = Plan("failed", "non-finite start temperature, forecast or price", dt_s)
        return (failed,) * len(zones)

    hours = dt_s / 3600.0
    # Variables, n each per zone z (at z·4n): cooling Φ_k in kW (kW keeps the matrix well
    # scaled next to kelvin), T_{k+1}, slack above the band s⁺_k, slack below s⁻_k; then
    # one demand excess E_j (kW) per demand scenario; then, per scenario with a branch
    # [k₀, k₁), the same four per zone over its own steps (the zones' answer to it) and
    # the kelvin by which the zone is handed back to the plan warmer than the plan has it.
    levels = demand.levels() if demand is not None else []
    spans = demand.spans() if demand is not None else []
    e_at = 4 * n * len(zones)
    branch_at: list[int | None] = []
    size = e_at + len(levels)
    for span in spans:
        branch_at.append(size if span is not None else None)
        size += _branch_width(span) * len(zones) if span is not None else 0
    # A step's own cost is borne by the scenarios that share it: the plan's where no
    # branch has taken over, each branch's (weighted by its probability) inside it.
    shared = np.ones(n)
    for (weight, _), span in zip(levels, spans, strict=True):
        if span is not None:
            shared[span[0] : span[1]] -= weight
    shared = np.maximum(shared, 0.0)
    cost = np.zeros(size)
    eq = _Rows()
    ub = _Rows()
    lower_bounds = np.zeros(size)
    upper_bounds = np.full(size, np.inf)
    zone_data: list[_ZoneLp] = []
    for z, zone in enumerate(zones):
        params, model = zone.params, zone.model
        occ = np.asarray(zone.occupied, dtype=bool)
        gains = np.array(
            [model.gains_w(bool(o), float(i)) for o, i in zip(occ, irradiance, strict=True)]
        )
        lower = np.array([params.band(bool(o)).lower_degc for o in occ])
        upper = np.array([params.band(bool(o)).upper_degc for o in occ])
        # The plan's band: inside the comfort band by the margin, half its width at most.
        margin = np.minimum(params.comfort_margin_k, (upper - lower) / 2.0)
        a, r = model.coefficient(dt_s), model.resistance_k_per_w
        lp = _ZoneLp(
            q_at=4 * z * n,
            t_at=4 * z * n + n,
            cop=np.array([params.cop.cop(float(t)) for t in outdoor]),
            lower=lower,
            upper=upper,
            a=a,
            drive=(1.0 - a) * (outdoor + r * gains),
            q_gain=(1.0 - a) * r * 1000.0,
            floor=lower + margin,
            top=upper - margin,
            energy_cost=prices * hours,
            penalty=params.comfort_penalty_per_kh * hours,
            penalty_per_kh=params.comfort_penalty_per_kh,
            ramp_kw=_ramp_step_w(params) / 1000.0,
            capacity_kw=params.chiller_capacity_w / 1000.0,
            ceiling=params.temperature_ceiling_degc,
            first_floor_kw=max(0.0, zone.first_cooling_min_w) / 1000.0,
        )
        zone_data.append(lp)
        lp.add_rows(
            eq,
            ub,
            cost,
            (lower_bounds, upper_bounds),
            at=lp.q_at,
            span=(0, n),
            start=zone.t0_degc,
            weight=shared,
        )
        for (weight, _), span, at in zip(levels, spans, branch_at, strict=True):
            if span is None or at is None:
                continue
            k0, k1 = span
            own_at = _branch_zone_at(at, span, z)
            lp.add_rows(
                eq,
                ub,
                cost,
                (lower_bounds, upper_bounds),
                at=own_at,
                span=span,
                start=zone.t0_degc,
                start_column=None if k0 == 0 else lp.t_at + k0 - 1,
                weight=np.full(k1 - k0, weight),
                plan_columns=(lp.q_at, lp.t_at, n),
            )
    if demand is not None:
        cost[e_at : e_at + len(levels)] = [weight * demand.charge_per_kw for weight, _ in levels]
        columns = [
            [_chiller_columns(lp, n, span, at, z) for z, lp in enumerate(zone_data)]
            for span, at in zip(spans, branch_at, strict=True)
        ]
        _demand_rows(ub, demand, levels, columns, [lp.cop for lp in zone_data], e_at=e_at)
    result: Any = linprog(
        cost,
        A_ub=ub.matrix(size),
        b_ub=ub.rhs(),
        A_eq=eq.matrix(size),
        b_eq=eq.rhs(),
        bounds=np.column_stack([lower_bounds, upper_bounds]),
        method="highs",
        options={"time_limit": max(z.params.solver_time_limit_s for z in zones)},
    )
    if result.status != 0 or result.x is None:
        status: PlanStatus = "infeasible" if result.status == 2 else "failed"
        failed = Plan(status, f"HiGHS status {result.status}: {result.message}", dt_s)
        return (failed,) * len(zones)
    x = np.asarray(result.x, dtype=np.float64)
    electric = [np.maximum(x[lp.q_at : lp.q_at + n], 0.0) * 1000.0 / lp.cop for lp in zone_data]
    peak_w, demand_charge = _demand_figures(demand, np.sum(electric, axis=0))
    plans: list[Plan] = []
    for zone, lp, electric_w in zip(zones, zone_data, electric, strict=True):
        cooling_w = electric_w * lp.cop
        temperatures = np.concatenate([[zone.t0_degc], x[lp.t_at : lp.t_at + n]])
        violation = np.maximum(
            0.0, np.maximum(lp.lower - temperatures[1:], temperatures[1:] - lp.upper)
        )
        plans.append(
            Plan(
                status="optimal",
                message=str(result.message),
                step_s=dt_s,
                temperatures_degc=tuple(float(v) for v in temperatures),
                cooling_w=tuple(float(v) for v in cooling_w),
                chiller_power_w=tuple(float(v) for v in electric_w),
                cost=float(np.sum(prices * electric_w / 1000.0 * hours)),
                energy_wh=float(np.sum(electric_w) * hours),
                comfort_violation_kh=float(np.sum(violation) * hours),
                peak_w=peak_w,
                demand_charge=demand_charge,
            )
        )
    return tuple(plans)


@dataclass(frozen=True, slots=True)
class _ZoneLp:
    """Where a zone's variables sit in the joint LP, and its per-step figures."""

    q_at: int
    t_at: int
    cop: npt.NDArray[np.float64]
    lower: npt.NDArray[np.float64]
    upper: npt.NDArray[np.float64]
    a: float
    """The model's decay over one step."""
    drive: npt.NDArray[np.float64]
    """(1 − a)·(T_o,k + R·G_k): what weather and gains push the zone towards."""
    q_gain: float
    """(1 − a)·R·1000: a kW of cooling's effect on the next temperature."""
    floor: npt.NDArray[np.float64]
    top: npt.NDArray[np.float64]
    energy_cost: npt.NDArray[np.float64]
    """Price × step hours: a kW of electric power's cost in a step."""
    penalty: float
    """A kelvin outside the band for one step."""
    penalty_per_kh: float
    ramp_kw: float
    capacity_kw: float
    ceiling: float | None
    first_floor_kw: float = 0.0
    """The first step's cooling floor (ZoneProblem.first_cooling_min_w), kW."""

    def add_rows(
        self,
        eq: _Rows,
        ub: _Rows,
        cost: npt.NDArray[np.float64],
        bounds: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
        *,
        at: int,
        span: tuple[int, int],
        start: float,
        start_column: int | None = None,
        weight: npt.NDArray[np.float64],
        plan_columns: tuple[int, int, int] | None = None,
    ) -> None:
        """One trajectory of the zone over steps ``span`` with its four variable blocks
        (Φ, T, s⁺, s⁻) from column ``at``, one per step each; the temperature before the
        span: the column ``start_column`` (a shared plan's), or the value ``start``;
        ``weight``: the probability its costs carry, per step. A branch of the plan gives
        ``plan_columns`` (where the plan's Φ and T start, its steps): its cooling ramps
        from the plan's, and it hands the zone back to the plan at its end (column
        ``at + 4·len``: the kelvin it is warmer than the plan there, priced as an hour
        outside the band) -- else a branch could warm the zone up for free in its last
        steps, leaving the debt to a plan that does not know it."""
        k0, k1 = span
        m = np.arange(k1 - k0)
        steps = k0 + m
        length = len(m)
        q_at, t_at, hi_at, lo_at = (at + i * length for i in range(4))
        cop = self.cop[steps]
        cost[q_at : q_at + length] = weight * self.energy_cost[steps] / cop
        cost[hi_at : hi_at + length] = weight * self.penalty
        cost[lo_at : lo_at + length] = weight * self.penalty
        # Dynamics: T_{k+1} − a·T_k + (1 − a)·R·1000·Φ_k = (1 − a)·(T_o,k + R·G_k)
        rhs = self.drive[steps].copy()
        if start_column is None:
            rhs[0] += self.a * start
        else:
            eq.add(np.array([eq.count]), np.array([start_column]), -self.a)
        eq.add(eq.count + m, t_at + m, 1.0, rhs)
        eq.add(eq.count + m, q_at + m, self.q_gain)
        eq.add(eq.count + m[1:], t_at + m[1:] - 1, -self.a)
        eq.count += length
        # Band: T_{k+1} − s⁺_k ≤ hi_k − margin and −T_{k+1} − s⁻_k ≤ −(lo_k + margin)
        for sign, slack_at, bound in ((1.0, hi_at, self.top), (-1.0, lo_at, -self.floor)):
            ub.add(ub.count + m, t_at + m, sign, bound[steps])
            ub.add(ub.count + m, slack_at + m, -1.0)
            ub.count += length
        _ramp_rows(ub, self.ramp_kw, length, q_at=q_at)
        low, high = bounds
        if plan_columns is not None:
            plan_q, plan_t, n = plan_columns
            if k0 > 0 and math.isfinite(self.ramp_kw):
                for sign in (1.0, -1.0):
                    ub.add(np.array([ub.count]), np.array([q_at]), sign, np.array([self.ramp_kw]))
                    ub.add(np.array([ub.count]), np.array([plan_q + k0 - 1]), -sign)
                    ub.count += 1
            handback_at = at + 4 * length
            if k1 < n:
                # T'_{k₁} − T_{k₁} − d ≤ 0
                row = np.array([ub.count])
                ub.add(row, np.array([t_at + length - 1]), 1.0, np.zeros(1))
                ub.add(row, np.array([plan_t + k1 - 1]), -1.0)
                ub.add(row, np.array([handback_at]), -1.0)
                ub.count += 1
                cost[handback_at] = weight[-1] * self.penalty_per_kh  # × 1 h
            else:
                high[handback_at] = 0.0
        high[q_at : q_at + length] = self.capacity_kw
        if k0 == 0:
            low[q_at] = min(self.first_floor_kw, self.capacity_kw)
        low[t_at : t_at + length] = -np.inf
        high[t_at : t_at + length] = np.inf if self.ceiling is None else self.ceiling


def _branch_width(span: tuple[int, int]) -> int:
    """Columns of one zone in a branch over ``span``: Φ, T, s⁺, s⁻ per step and the
    hand-back kelvin."""
    return 4 * (span[1] - span[0]) + 1


def _branch_zone_at(at: int, span: tuple[int, int], z: int) -> int:
    """Where zone ``z``'s columns start in a branch over ``span`` whose columns start at
    ``at``."""
    return at + _branch_width(span) * z


def _chiller_columns(
    lp: _ZoneLp, n: int, span: tuple[int, int] | None, at: int | None, z: int
) -> npt.NDArray[np.int64]:
    """The column of zone ``lp``'s cooling at each step in a scenario: the plan's, or its
    own inside the scenario's branch ``span`` (whose variables start at ``at``; ``z``: the
    zone's index)."""
    columns = lp.q_at + np.arange(n)
    if span is not None and at is not None:
        k0, k1 = span
        columns[k0:k1] = _branch_zone_at(at, span, z) + np.arange(k1 - k0)
    return columns


def _all_finite(
    starts: Sequence[float],
    series: Sequence[npt.NDArray[np.float64]],
    demand: DemandTerm | None,
    n: int,
) -> bool:
    """Whether every input is finite; raises ``ValueError`` for a demand term of another
    length than the inputs (a programming error)."""
    finite = [bool(np.all(np.isfinite(starts))), *(bool(np.all(np.isfinite(v))) for v in series)]
    if demand is not None:
        lengths = {len(demand.other_load_w), len(demand.blocks), len(demand.counts)}
        if demand.spread_w is not None:
            lengths.add(len(demand.spread_w))
        lengths.update(len(add) for _, add in demand.extra)
        if lengths != {n}:
            raise ValueError("the demand term's series must have the inputs' length")
        if demand.branches and (
            len(demand.branches) != len(demand.extra)
            or any(b is not None and not 0 <= b[0] < b[1] <= n for b in demand.branches)
        ):
            raise ValueError(
                "the demand term's branches must be one per extra scenario, each None or "
                f"steps [start, end) with 0 <= start < end <= {n}; got {demand.branches}"
            )
        finite.append(bool(np.all(np.isfinite(np.asarray(demand.other_load_w, dtype=float)))))
        if demand.spread_w is not None:
            finite.append(bool(np.all(np.isfinite(np.asarray(demand.spread_w, dtype=float)))))
        finite.append(math.isfinite(demand.threshold_w))
        finite += [
            bool(np.all(np.isfinite(np.asarray(add, dtype=float)))) for _, add in demand.extra
        ]
    return all(finite)


def _demand_figures(
    demand: DemandTerm | None, chiller_w: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """(the plan's highest counted block W, what it adds to the demand charge); NaN
    without a demand term."""
    if demand is None:
        return math.nan, math.nan
    peak_w = _peak_block_w(demand, chiller_w)
    return peak_w, demand.charge_per_kw * max(0.0, peak_w - demand.threshold_w) / 1000.0


class _Rows:
    """A sparse constraint matrix built block by block (COO triplets, right-hand sides)."""

    def __init__(self) -> None:
        self.rows: list[npt.NDArray[np.int64]] = []
        self.cols: list[npt.NDArray[np.int64]] = []
        self.data: list[npt.NDArray[np.float64]] = []
        self.rhs_parts: list[npt.NDArray[np.float64]] = []
        self.count = 0
        """Rows so far (the caller advances it after adding a block)."""

    def add(
        self,
        rows: npt.NDArray[np.int64],
        cols: npt.NDArray[np.int64],
        values: float | npt.NDArray[np.float64],
        rhs: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """Entries at (rows, cols); ``rhs`` once per block of rows, in row order."""
        self.rows.append(np.asarray(rows, dtype=np.int64))
        self.cols.append(np.asarray(cols, dtype=np.int64))
        self.data.append(np.broadcast_to(np.asarray(values, dtype=np.float64), rows.shape))
        if rhs is not None:
            self.rhs_parts.append(np.asarray(rhs, dtype=np.float64))

    def matrix(self, columns: int) -> sparse.csr_array:
        triplets = (
            np.concatenate(self.data),
            (np.concatenate(self.rows), np.concatenate(self.cols)),
        )
        return sparse.csr_array(sparse.coo_array(triplets, shape=(self.count, columns)))

    def rhs(self) -> npt.NDArray[np.float64]:
        return np.concatenate(self.rhs_parts)


def _groups(demand: DemandTerm) -> list[npt.NDArray[np.int64]]:
    """The steps of each counted demand block, in order of first appearance."""
    block_of = np.asarray(demand.blocks)
    counted = np.asarray(demand.counts, dtype=bool)
    k = np.arange(len(block_of))
    return [k[(block_of == b) & counted] for b in dict.fromkeys(block_of[counted].tolist())]


def _ramp_rows(ub: _Rows, ramp_kw: float, n: int, *, q_at: int) -> None:
    """±(Φ_k − Φ_{k−1}) ≤ what a ramp from standstill delivers in a step's mean (kW)."""
    if not math.isfinite(ramp_kw) or n < 2:
        return
    k = np.arange(1, n)
    for sign in (1.0, -1.0):
        at = ub.count + k - 1
        ub.add(at, q_at + k, sign, np.full(n - 1, ramp_kw))
        ub.add(at, q_at + k - 1, -sign)
        ub.count += n - 1


def _demand_rows(
    ub: _Rows,
    demand: DemandTerm,
    levels: Sequence[tuple[float, npt.NDArray[np.float64]]],
    columns: Sequence[Sequence[npt.NDArray[np.int64]]],
    cops: Sequence[npt.NDArray[np.float64]],
    *,
    e_at: int,
) -> None:
    """Per scenario j (its other load O_j) and counted block b: mean over b of
    (O_j,k + Σ_zones Φ_k/COP_k) − E_j ≤ threshold, in kW. ``columns[j][z]``: where zone z's
    Φ of each step sits in scenario j; ``cops[z]``: its COP per step."""
    groups = _groups(demand)
    for j, (_, other_w) in enumerate(levels):
        other_kw = other_w / 1000.0
        for members in groups:
            weight = 1.0 / len(members)
            load = weight * float(np.sum(other_kw[members]))
            for zone_columns, cop in zip(columns[j], cops, strict=True):
                ub.add(
                    np.full(len(members), ub.count), zone_columns[members], weight / cop[members]
                )
            ub.add(
                np.array([ub.count]),
                np.array([e_at + j]),
                -1.0,
                np.array([demand.threshold_w / 1000.0 - load]),
            )
            ub.count += 1


def _ramp_step_w(params: HvacParams) -> float:
    """The largest change of the mean cooling from one step to the next (W): a chiller from
    standstill ramping at ``chiller_ramp_w_per_s`` to capacity (``inf`` without a ramp)."""
    rate = params.chiller_ramp_w_per_s
    if rate is None:
        return math.inf
    capacity, dt_s = params.chiller_capacity_w, params.step_s
    ramp_s = capacity / rate
    if ramp_s <= dt_s:
        return capacity * (1.0 - ramp_s / (2.0 * dt_s))
    return rate * dt_s / 2.0


def _peak_block_w(demand: DemandTerm, chiller_w: npt.NDArray[np.float64]) -> float:
    """The highest counted block mean of other load + chiller (−inf when none counts)."""
    total = np.asarray(demand.other_load_w, dtype=np.float64) + chiller_w
    means: dict[int, list[float]] = {}
    for value, block, counts in zip(total, demand.blocks, demand.counts, strict=True):
        if counts:
            means.setdefault(int(block), []).append(float(value))
    return max((sum(v) / len(v) for v in means.values()), default=-math.inf)


# --------------------------------------------------------------------------------------------
# The controller


FallbackKind = Literal[
    "stale_temperature",
    "no_model",
    "model_refused",
    "model_bad",
    "no_outdoor",
    "planner",
    "solving",
]
"""Why a zone runs its thermostat; ``solving``: its first plan (or the one replacing a
plan it had to drop) is being solved in a worker process."""


@dataclass(frozen=True, slots=True)
class DemandLedger:
    """The month's billed demand so far, followed from the site meter's import.

    Fixed blocks of the tariff's ``demand_interval`` on the local wall clock; the import
    (negative readings count as zero) is integrated by trapezoid between samples no further
    apart than ``max_input_age_s``. A completed block covered for at least 90 % of its length
    sets the billed peak when it counts for demand; a new local month resets it.
    """

    month: tuple[int, int]
    """Local (year, month) of ``billed_peak_w``."""
    billed_peak_w: float
    block_start: datetime
    energy_wh: float
    """Imported in the current block up to ``sample``, over ``covered_s`` seconds."""
    covered_s: float
    sample: tuple[float, datetime]
    """The last integrated import sample: (W, ts)."""


def track_demand(
    ledger: DemandLedger | None,
    import_w: float,
    ts: datetime,
    tariff: Tariff,
    max_gap_s: float,
) -> DemandLedger:
    """``ledger`` with the meter sample (``import_w`` at ``ts``) added (see
    :class:`DemandLedger`); a sample not newer than the last one changes nothing."""
    interval, zone = tariff.demand_interval, tariff.zone
    value = max(0.0, import_w)
    if ledger is None:
        return DemandLedger(
            local_month(ts, zone), 0.0, slot_start(ts, interval, zone), 0.0, 0.0, (value, ts)
        )
    v0, t0 = ledger.sample
    if ts <= t0:
        return ledger
    month, billed = ledger.month, ledger.billed_peak_w
    start, energy, covered = ledger.block_start, ledger.energy_wh, ledger.covered_s
    fresh = (ts - t0).total_seconds() <= max_gap_s
    span_s = (ts - t0).total_seconds()

    def power(at: datetime) -> float:
        return v0 + (value - v0) * ((at - t0).total_seconds() / span_s)

    cursor = t0
    while True:
        end = start + interval
        segment_end = min(ts, end)
        if fresh:
            seconds = (segment_end - cursor).total_seconds()
            energy += (power(cursor) + power(segment_end)) / 2.0 * seconds / 3600.0
            covered += seconds
        if ts < end:
            break
        block_month = local_month(start, zone)
        if block_month > month:
            month, billed = block_month, 0.0
        if (
            block_month == month
            and covered >= 0.9 * interval.total_seconds()
            and tariff.counts_for_demand(start)
        ):
            billed = max(billed, energy / (covered / 3600.0))
        if not fresh:  # a gap: restart at the sample's block, its past uncovered
            start, energy, covered = slot_start(ts, interval, zone), 0.0, 0.0
            break
        start, energy, covered, cursor = end, 0.0, 0.0, end
        if ts == end:
            break
    now_month = local_month(ts, zone)
    if now_month > month:
        month, billed = now_month, 0.0
    return DemandLedger(month, billed, start, energy, covered, (value, ts))


@dataclass(frozen=True, slots=True)
class HvacState:
    """What the controller carries between cycles."""

    fit: ThermalFit | IdentificationRefused | None = None
    """The zone model, or why identification refused the history. The engine may replace
    it (``dataclasses.replace``) after re-identifying on fresh history."""
    history: ZoneHistory | None = None
    """When ``fit`` is None, identified once on the next cycle, then dropped."""
    plan: Plan | None = None
    plan_start: datetime | None = None
    mode: str = "plan"
    """``plan`` or the :data:`FallbackKind` in force; events are sent when it changes."""
    persisted: tuple[str, ...] = ()
    """Forecasts replaced by persistence at the last announcement."""
    demand: DemandLedger | None = None
    """The month's billed demand, followed from ``grid_point``."""
    identifying: datetime | None = None
    """Offloaded: when the identification from ``history`` was handed out (None: none is)."""
    solving: datetime | None = None
    """Offloaded: when the plan being solved in a worker was requested (its start)."""
    failure: tuple[FallbackKind, str] | None = None
    """Offloaded: why the last solve gave no plan; the next cycle falls back with it."""


class HvacController:
    """The cooling planner of one zone (see the module docstring)."""

    def __init__(
        self,
        params: HvacParams,
        *,
        fit: ThermalFit | None = None,
        history: ZoneHistory | None = None,
        offload: bool = False,
    ) -> None:
        self._params = params
        self._fit = fit
        self._history = history
        self._offload = offload

    @property
    def name(self) -> str:
        return self._params.name or f"{self._params.zone}_planner"

    @property
    def priority(self) -> Priority:
        return Priority.ECONOMICS

    @property
    def params(self) -> HvacParams:
        return self._params

    @property
    def offload(self) -> bool:
        """Whether solves and identifications are handed out as jobs (see :meth:`offloaded`)."""
        return self._offload

    def offloaded(self) -> HvacController:
        """This planner handing its LP solves and model identifications out as
        :class:`~gridpilot.control.base.Job` s (the service runs them in worker processes):
        while a new plan is being solved the zone follows the plan it has, or without one
        its thermostat fallback (``solving``); a failed or timed-out solve falls back as a
        failed inline one does. Built inline (the default), ``decide`` solves there."""
        return HvacController(self._params, fit=self._fit, history=self._history, offload=True)

    def initial_state(self) -> HvacState:
        return HvacState(fit=self._fit, history=self._history)

    def decide(
        self, snapshot: Snapshot, state: HvacState, now: datetime, forecasts: Forecasts
    ) -> Decision[HvacState]:
        """One cycle: re-plan when due, then request the setpoint of the current step."""
        jobs: list[Job] = []
        decision = self._decide(snapshot, state, now, forecasts, jobs)
        return replace(decision, jobs=tuple(jobs)) if jobs else decision

    def finish(
        self, state: HvacState, job: Job, outcome: JobOutcome
    ) -> tuple[HvacState, tuple[str, ...]]:
        """Take in a handed-out job's outcome (a plan, an identified model)."""
        if job.key == "plan":
            return self._finish_plan(state, job, outcome), ()
        if job.key == self._identify_key:
            return self._finish_identify(state, job, outcome)
        return state, ()

    def _decide(
        self,
        snapshot: Snapshot,
        state: HvacState,
        now: datetime,
        forecasts: Forecasts,
        jobs: list[Job],
    ) -> Decision[HvacState]:
        p = self._params
        events: list[str] = []
        state = self._identified(state, events, now=now, jobs=jobs)
        fit = state.fit
        metrics: dict[str, float] = {}
        if p.grid_point is not None:
            ledger = _tracked(state.demand, snapshot, p)
            if ledger is not None:
                state = replace(state, demand=ledger)
                metrics["billed_peak_w"] = ledger.billed_peak_w
        temperature, problem = self._readiness(snapshot, state, now, metrics)
        if problem is not None or temperature is None or not isinstance(fit, ThermalFit):
            assert problem is not None  # noqa: S101 - _readiness names one when not ready
            return self._fallback(state, now=now, problem=problem, metrics=metrics, events=events)
        return self._follow_plan(
            snapshot,
            state,
            now=now,
            forecasts=forecasts,
            model=fit.rc,
            temperature=temperature,
            metrics=metrics,
            events=events,
            jobs=jobs,
        )

    @property
    def _identify_key(self) -> str:
        return f"identify:{self._params.zone}"

    def _identified(
        self, state: HvacState, events: list[str], *, now: datetime, jobs: list[Job]
    ) -> HvacState:
        """``state`` with its model identified from the history it carries, when it carries
        one (the model it had, if any, is replaced). Offloaded: the identification is
        handed out as a job and the current model, if any, serves until it is done."""
        history = state.history
        if history is None:
            return state
        if self._offload:
            if state.identifying is None:
                jobs.append(
                    Job(
                        self._identify_key,
                        identify_zone,
                        (history, self._params.identification),
                        tag=now,
                    )
                )
                state = replace(state, identifying=now)
            return state
        fit = identify_zone(history, self._params.identification)
        events.extend(self._identified_events(fit))
        return replace(state, fit=fit, history=None)

    def _identified_events(self, fit: ThermalFit | IdentificationRefused) -> list[str]:
        if not isinstance(fit, ThermalFit):
            return []
        return [
            f"{self.name}: identified {fit.chosen} zone model from history, "
            f"R·C {fit.rc.time_constant_s / 3600.0:.1f} h, {fit.verdict}"
        ]

    def _finish_identify(
        self, state: HvacState, job: Job, outcome: JobOutcome
    ) -> tuple[HvacState, tuple[str, ...]]:
        if state.identifying is None or state.identifying != job.tag:
            return state, ()
        # A history handed in after this job was made stays for the next identification.
        history = None if job.args and state.history is job.args[0] else state.history
        fit = outcome.value
        if outcome.error is not None or not isinstance(fit, ThermalFit | IdentificationRefused):
            keeping = "the current model" if state.fit is not None else "no model"
            return replace(state, identifying=None, history=history), (
                f"{self.name}: identifying the zone model in a worker failed "
                f"({outcome.error or 'no model returned'}); keeping {keeping}",
            )
        state = replace(state, fit=fit, history=history, identifying=None)
        return state, tuple(self._identified_events(fit))

    def _finish_plan(self, state: HvacState, job: Job, outcome: JobOutcome) -> HvacState:
        if state.solving is None or state.solving != job.tag:
            return state  # a request this state no longer waits for
        plan = _first_plan(outcome, 1)
        if isinstance(plan, str):
            return replace(state, solving=None, failure=("planner", plan))
        return replace(state, solving=None, plan=plan, plan_start=state.solving)

    def _readiness(
        self, snapshot: Snapshot, state: HvacState, now: datetime, metrics: dict[str, float]
    ) -> tuple[float | None, tuple[FallbackKind, str] | None]:
        """(the zone temperature, why the zone cannot be planned or None); adds the zone's
        comfort and model metrics."""
        p = self._params
        fit = state.fit
        temperature = snapshot.value(p.ref(p.temperature_point), p.max_input_age_s)
        if temperature is not None:
            band = p.band(p.occupied_at(now))
            metrics["comfort_deviation_degc"] = band.deviation_degc(temperature)
        if isinstance(fit, ThermalFit):
            metrics["model_rmse_degc"] = fit.multi_step_rmse_k
            metrics["model_one_step_rmse_degc"] = fit.one_step_rmse_k
            metrics["model_time_constant_s"] = fit.rc.time_constant_s
        if temperature is None:
            return None, (
                "stale_temperature",
                f"zone temperature {p.ref(p.temperature_point)} missing or older than "
                f"{p.max_input_age_s:.0f} s",
            )
        if fit is None and state.identifying is not None:
            return temperature, (
                "no_model",
                "thermal model being identified from the zone's history in a worker process",
            )
        if not isinstance(fit, ThermalFit) or not fit.good_enough:
            return temperature, _model_problem(fit)
        return temperature, None

    # ---------------------------------------------------------------------------------

    def _follow_plan(
        self,
        snapshot: Snapshot,
        state: HvacState,
        *,
        now: datetime,
        forecasts: Forecasts,
        model: RcModel,
        temperature: float,
        metrics: dict[str, float],
        events: list[str],
        jobs: list[Job],
    ) -> Decision[HvacState]:
        plan, start, persisted = state.plan, state.plan_start, state.persisted
        due = plan is None or start is None or self._replan_due(plan, start, now, temperature)
        if due and self._offload:
            return self._request_plan(
                snapshot,
                state,
                now=now,
                forecasts=forecasts,
                model=model,
                temperature=temperature,
                metrics=metrics,
                events=events,
                jobs=jobs,
            )
        if plan is None or start is None or due:
            request = self._request(
                snapshot, state, now=now, forecasts=forecasts, model=model, temperature=temperature
            )
            if isinstance(request, str):
                return self._fallback(
                    state, now=now, problem=("no_outdoor", request), metrics=metrics, events=events
                )
            job, persisted = request
            if persisted != state.persisted:
                events.append(self._persistence_event(persisted))
            (plan,) = solve_plans(job)
            start = now
            if not plan.ok:
                return self._fallback(
                    replace(state, persisted=persisted),
                    now=now,
                    problem=("planner", f"planner {plan.status}: {plan.message}"),
                    metrics=metrics,
                    events=events,
                )
        return self._follow(
            replace(state, persisted=persisted),
            plan,
            start,
            now=now,
            metrics=metrics,
            events=events,
        )

    def _request_plan(
        self,
        snapshot: Snapshot,
        state: HvacState,
        *,
        now: datetime,
        forecasts: Forecasts,
        model: RcModel,
        temperature: float,
        metrics: dict[str, float],
        events: list[str],
        jobs: list[Job],
    ) -> Decision[HvacState]:
        """Offloaded, a plan is due: fall back on a failed solve, hand out a new one unless
        one is being solved, and meanwhile follow the plan there is (or the thermostat)."""
        if state.failure is not None:
            return self._fallback(
                replace(state, failure=None),
                now=now,
                problem=state.failure,
                metrics=metrics,
                events=events,
            )
        if state.solving is None:
            request = self._request(
                snapshot, state, now=now, forecasts=forecasts, model=model, temperature=temperature
            )
            if isinstance(request, str):
                return self._fallback(
                    state, now=now, problem=("no_outdoor", request), metrics=metrics, events=events
                )
            job, persisted = request
            if persisted != state.persisted:
                events.append(self._persistence_event(persisted))
            jobs.append(Job("plan", solve_plans, (job,), tag=now))
            state = replace(state, solving=now, persisted=persisted)
        return self._while_solving(state, now=now, metrics=metrics, events=events)

    def _request(
        self,
        snapshot: Snapshot,
        state: HvacState,
        *,
        now: datetime,
        forecasts: Forecasts,
        model: RcModel,
        temperature: float,
    ) -> tuple[PlanJob, tuple[str, ...]] | str:
        """The zone's solve (inline or in a worker) and the forecasts persisted for it, or
        why there is none (no outdoor temperature)."""
        p = self._params
        inputs = self._inputs(snapshot, now, forecasts)
        if isinstance(inputs, str):
            return inputs
        outdoor, irradiance, persisted = inputs
        occupied = [p.occupied_at(now + i * p.step) for i in range(p.steps)]
        demand = self._demand_term(
            snapshot,
            state,
            now=now,
            forecasts=forecasts,
            model=model,
            outdoor=outdoor,
            irradiance=irradiance,
            occupied=occupied,
        )
        job = PlanJob(
            zones=(ZoneProblem(model, temperature, p, occupied),),
            outdoor_degc=tuple(outdoor),
            irradiance_wm2=tuple(irradiance),
            prices_per_kwh=p.tariff.prices_per_kwh(now, p.step, p.steps),
            demand=demand,
        )
        return job, persisted

    def _while_solving(
        self, state: HvacState, *, now: datetime, metrics: dict[str, float], events: list[str]
    ) -> Decision[HvacState]:
        """The plan the zone has while it covers ``now``; else the thermostat: ``solving``,
        or ``planner`` still when the last solve failed (no event again)."""
        plan, start = state.plan, state.plan_start
        if plan is not None and start is not None and _covers(plan, start, now, self._params):
            return self._follow(state, plan, start, now=now, metrics=metrics, events=events)
        # A solver failing every time would otherwise flap between "planner" and "solving",
        # an event each cycle; any other fallback's cause is gone once a plan is requested.
        kind: FallbackKind = "planner" if state.mode == "planner" else "solving"
        return self._fallback(
            state,
            now=now,
            problem=(kind, "waiting for a new plan from a worker process"),
            metrics=metrics,
            events=events,
        )

    def _follow(
        self,
        state: HvacState,
        plan: Plan,
        start: datetime,
        *,
        now: datetime,
        metrics: dict[str, float],
        events: list[str],
    ) -> Decision[HvacState]:
        """Request the planned temperature at the end of the current step of ``plan``."""
        p = self._params
        persisted = state.persisted
        index = min(math.floor((now - start) / p.step), len(plan.cooling_w) - 1)
        planned = plan.temperatures_degc[index + 1]
        setpoint = p.clip_setpoint(planned)
        if state.mode != "plan":
            events.append(f"{self.name}: optimised plan resumed (was {state.mode})")
        metrics.update(
            {
                "setpoint_degc": setpoint,
                "planned_temperature_degc": planned,
                "planned_cooling_w": plan.cooling_w[index],
                "planned_chiller_power_w": plan.chiller_power_w[index],
                "plan_energy_wh": float(sum(plan.chiller_power_w[index:])) * p.step_s / 3600.0,
                "plan_age_s": (now - start).total_seconds(),
                "fallback_state": 0.0,
                "persisted_forecasts_count": float(len(persisted)),
            }
        )
        if math.isfinite(plan.peak_w):
            metrics["plan_peak_w"] = plan.peak_w
        request = SetpointRequest(
            target=p.ref(p.setpoint_point),
            value=setpoint,
            priority=self.priority,
            source=self.name,
            reason=f"planned zone temperature at the end of this {p.step_s / 60:.0f}-min step",
        )
        return Decision(
            state=replace(state, plan=plan, plan_start=start, mode="plan", persisted=persisted),
            requests=(request,),
            metrics=metrics,
            events=tuple(events),
        )

    def _replan_due(self, plan: Plan, start: datetime, now: datetime, temperature: float) -> bool:
        p = self._params
        if not plan.ok:
            return True
        age = now - start
        if age < timedelta(0) or age >= p.replan_interval:
            return True
        index = math.floor(age / p.step)
        if index >= len(plan.cooling_w):
            return True
        # Off the plan = outside what the plan spans over this step, by the deviation. Not
        # compared with a straight line between the step ends: the thermostat reaches a
        # new setpoint well before the step ends, and that is the plan being followed.
        ends = plan.temperatures_degc[index], plan.temperatures_degc[index + 1]
        off = max(min(ends) - temperature, temperature - max(ends))
        return off > p.replan_deviation_k

    def _demand_term(
        self,
        snapshot: Snapshot,
        state: HvacState,
        *,
        now: datetime,
        forecasts: Forecasts,
        model: RcModel,
        outdoor: Sequence[float],
        irradiance: Sequence[float],
        occupied: Sequence[bool],
    ) -> DemandTerm | None:
        """The demand charge for the plan, or None (no charge, no consumption forecast).

        Other load = the consumption forecast − this zone's chiller as the forecast holds
        it − the PV forecast. The zone's share of the forecast is taken to be what its last
        plan expected at each instant (the forecast is made from days it ran under the same
        planner), or without a plan what a thermostat holding the fallback setpoint draws.
        Another zone's chiller stays in the other load, as forecast: each planner takes the
        others' consumption as given (one pass of a coordinate descent, not a joint plan).
        """
        p = self._params
        tariff = p.tariff
        if tariff.demand_charge_per_kw <= 0.0 or p.load_forecast_key is None:
            return None
        load = _forecast_series(forecasts.get(p.load_forecast_key), now, p.step, p.steps)
        if load is None:
            return None
        pv: list[float] | None = None
        if p.pv_forecast_key is not None:
            pv = _forecast_series(forecasts.get(p.pv_forecast_key), now, p.step, p.steps)
        own = self._own_chiller_w(
            state, now=now, model=model, outdoor=outdoor, irradiance=irradiance, occupied=occupied
        )
        other = [load[k] - own[k] - (pv[k] if pv is not None else 0.0) for k in range(p.steps)]
        return _demand_over(
            p, snapshot, state.demand, now=now, forecasts=forecasts, other=other, load=load, pv=pv
        )

    def _own_chiller_w(
        self,
        state: HvacState,
        *,
        now: datetime,
        model: RcModel,
        outdoor: Sequence[float],
        irradiance: Sequence[float],
        occupied: Sequence[bool],
    ) -> list[float]:
        """This zone's expected chiller power per step (W): the last plan where it covers
        the step, else the thermostat holding the fallback setpoint."""
        p = self._params
        plan, start = state.plan, state.plan_start
        out: list[float] = []
        for k in range(p.steps):
            when = now + k * p.step
            if plan is not None and start is not None and plan.ok:
                i = math.floor((when - start) / p.step)
                if 0 <= i < len(plan.chiller_power_w):
                    out.append(plan.chiller_power_w[i])
                    continue
            occ = bool(occupied[k])
            setpoint = p.fallback_setpoint_degc(occ)
            holding = (
                model.gains_w(occ, irradiance[k])
                + (outdoor[k] - setpoint) / model.resistance_k_per_w
            )
            cooling = min(max(holding, 0.0), p.chiller_capacity_w)
            out.append(cooling / p.cop.cop(outdoor[k]))
        return out

    def _inputs(
        self, snapshot: Snapshot, now: datetime, forecasts: Forecasts
    ) -> tuple[list[float], list[float], tuple[str, ...]] | str:
        """(outdoor °C, irradiance W/m², names persisted) per step, or why there are none."""
        p = self._params
        persisted: list[str] = []
        series: list[list[float]] = []
        for name, ref in (
            ("outdoor_degc", p.outdoor_temperature),
            ("irradiance_wm2", p.irradiance),
        ):
            values = _forecast_series(forecasts.get(name), now, p.step, p.steps)
            if values is None:
                current = snapshot.value(ref, p.max_input_age_s) if ref is not None else None
                if current is None:
                    return f"no {name} forecast and no fresh reading of {ref} to persist"
                # Persistence: the current value held over the horizon. Crude for the sun
                # (a noon reading held through the night over-cools), but it keeps the
                # plan going until a forecast returns, and says so in an event.
                values = [current] * p.steps
                persisted.append(name)
            series.append(values)
        return series[0], series[1], tuple(persisted)

    def _persistence_event(self, persisted: tuple[str, ...]) -> str:
        if persisted:
            return (
                f"{self.name}: forecast {', '.join(persisted)} missing, planning on "
                "persistence of the current reading"
            )
        return f"{self.name}: forecasts available again, persistence ended"

    def _fallback(
        self,
        state: HvacState,
        *,
        now: datetime,
        problem: tuple[FallbackKind, str],
        metrics: dict[str, float],
        events: list[str],
    ) -> Decision[HvacState]:
        p = self._params
        kind, detail = problem
        setpoint = p.fallback_setpoint_degc(p.occupied_at(now))
        if state.mode != kind:
            events.append(f"{self.name}: thermostat fallback at {setpoint:.1f} °C: {detail}")
        metrics.update({"setpoint_degc": setpoint, "fallback_state": 1.0})
        request = SetpointRequest(
            target=p.ref(p.setpoint_point),
            value=setpoint,
            priority=self.priority,
            source=self.name,
            reason=f"thermostat fallback: {detail}",
        )
        return Decision(
            state=replace(state, mode=kind, plan=None, plan_start=None),
            requests=(request,),
            metrics=metrics,
            events=tuple(events),
        )


def _demand_over(
    p: HvacParams,
    snapshot: Snapshot,
    ledger: DemandLedger | None,
    *,
    now: datetime,
    forecasts: Forecasts,
    other: Sequence[float],
    load: Sequence[float],
    pv: Sequence[float] | None,
    measured_other_w: float = math.nan,
) -> DemandTerm:
    """The demand term over ``p``'s horizon for the other load ``other`` (W per step): the
    blocks of the current local day that count, the threshold (the billed peak tracked in
    ``ledger``, raised to a fresh published billed peak or import limit) and the spread of
    the other load from ``load`` and ``pv``'s relative errors (widened to the net-import
    quantile forecast, when there is one); ``measured_other_w``: the other load the meter
    shows now, for the level-hold scenario (NaN: the next step's forecast alone)."""
    tariff = p.tariff
    starts = [
        slot_start(now + k * p.step, tariff.demand_interval, tariff.zone) for k in range(p.steps)
    ]
    index = {start: i for i, start in enumerate(dict.fromkeys(starts))}
    today = now.astimezone(tariff.zone).date()
    threshold = ledger.billed_peak_w if ledger is not None else 0.0
    for ref in (p.billed_peak_point, p.import_limit_point):
        value = snapshot.value(ref, p.max_input_age_s) if ref is not None else None
        if value is not None and math.isfinite(value):
            threshold = max(threshold, value)
    spread = [
        math.hypot(
            p.load_forecast_error * load[k],
            p.pv_forecast_error * (pv[k] if pv is not None else 0.0),
        )
        for k in range(p.steps)
    ]
    high = None
    if p.net_load_high_key is not None:
        high = _forecast_series(forecasts.get(p.net_load_high_key), now, p.step, p.steps)
    if high is not None:
        z90 = NormalDist().inv_cdf(0.9)
        for k in range(p.steps):
            expected = load[k] - (pv[k] if pv is not None else 0.0)
            spread[k] = max(spread[k], (high[k] - expected) / z90)
    scenarios = _pv_scenarios(p, pv, starts, today) if pv is not None else []
    scenarios += _level_hold(p, other, measured_other_w, starts, today)
    return DemandTerm(
        spread_w=spread,
        scenarios=p.demand_scenarios,
        extra=[(weight, lost) for weight, lost, _ in scenarios],
        branches=[branch for _, _, branch in scenarios],
        other_load_w=list(other),
        blocks=[index[start] for start in starts],
        counts=[
            tariff.counts_for_demand(start) and start.astimezone(tariff.zone).date() == today
            for start in starts
        ],
        threshold_w=threshold,
        charge_per_kw=tariff.demand_charge_per_kw,
    )


@dataclass(frozen=True, slots=True)
class BlockUnderWay:
    """A demand block a re-plan inside it plans from its start."""

    start: datetime
    elapsed_s: float
    start_degc: tuple[float, ...]
    """Per ready zone, its temperature at the block's start (its plan's)."""
    energy_wh: float
    """The site's import in the block so far (the meter)."""


def _block_under_way(
    p: HvacParams,
    zone_states: Sequence[HvacState],
    ready: Sequence[tuple[int, float, RcModel]],
    ledger: DemandLedger | None,
    now: datetime,
) -> BlockUnderWay | None:
    """The block a re-plan at ``now`` plans from its start (``replan_within_block``): the
    one under way, when every ready zone follows a plan made at its start and the meter
    has covered at least 90 % of it so far; None: plan from ``now``."""
    if p.replan_within_block is None or ledger is None:
        return None
    start = slot_start(now, p.tariff.demand_interval, p.tariff.zone)
    elapsed_s = (now - start).total_seconds()
    if elapsed_s <= 0.0 or ledger.block_start != start or ledger.covered_s < 0.9 * elapsed_s:
        return None
    temperatures: list[float] = []
    for i, _, _ in ready:
        plan, plan_start = zone_states[i].plan, zone_states[i].plan_start
        if plan is None or not plan.ok or plan_start != start:
            return None
        temperatures.append(plan.temperatures_degc[0])
    # The ledger's energy runs to its last sample: held at that sample's power to now.
    energy_wh = (
        ledger.energy_wh
        + ledger.sample[0] * max(0.0, (now - ledger.sample[1]).total_seconds()) / 3600.0
    )
    return BlockUnderWay(start, elapsed_s, tuple(temperatures), energy_wh)


def _cooling_had_w(
    model: RcModel,
    start_degc: float,
    now_degc: float,
    *,
    elapsed_s: float,
    step_s: float,
    outdoor_degc: float,
    irradiance_wm2: float,
    occupied: bool,
    capacity_w: float,
) -> float:
    """The cooling a zone has had since its step began, as a share of the step's mean
    (W): the constant cooling that took it from ``start_degc`` to ``now_degc`` in
    ``elapsed_s`` by its model, within [0, capacity], times elapsed/step."""
    a = model.coefficient(elapsed_s)
    # now = a·start + (1 − a)·(T_o + R·(G − Φ)), solved for Φ
    drive = (now_degc - a * start_degc) / (1.0 - a)
    gains = model.gains_w(float(occupied), irradiance_wm2)
    cooling = gains + (outdoor_degc - drive) / model.resistance_k_per_w
    return min(max(cooling, 0.0), capacity_w) * elapsed_s / step_s


def _block_so_far(
    demand: DemandTerm,
    block: BlockUnderWay,
    chillers_j: float,
    measured_other_w: float,
    p: HvacParams,
) -> DemandTerm:
    """``demand`` with its first step the block under way as billed: the other load's mean
    over the block is the meter's energy so far less the planned chillers' (``chillers_j``,
    J) plus, for the rest, ``measured_other_w`` (the forecast's when not finite); what
    the spread and the scenarios add to the step counts for the rest only."""
    block_s = p.step_s
    rest = max(0.0, block_s - block.elapsed_s) / block_s
    now_w = measured_other_w if math.isfinite(measured_other_w) else demand.other_load_w[0]
    first = (block.energy_wh * 3600.0 - chillers_j) / block_s + now_w * rest
    spread = demand.spread_w
    return replace(
        demand,
        other_load_w=[first, *demand.other_load_w[1:]],
        spread_w=[spread[0] * rest, *spread[1:]] if spread is not None else None,
        extra=[(weight, [add[0] * rest, *add[1:]]) for weight, add in demand.extra],
    )


Scenario = tuple[float, list[float], tuple[int, int] | None]
"""(probability, what it adds to the other load per step W -- the PV it takes away, or the
level it holds --, the steps the zones answer it in: see :attr:`DemandTerm.branches`)."""


def _pv_scenarios(
    p: HvacParams, pv: Sequence[float], starts: Sequence[datetime], today: date
) -> list[Scenario]:
    """The PV-shortfall scenarios of ``p`` for the PV forecast ``pv`` (W per step from
    now; ``starts``: each step's demand block start) -- the all-day overcast scenario, the
    plateau, the cloud windows -- for :attr:`DemandTerm.extra` and its branches. Those with
    a zero probability are left out."""
    out: list[Scenario] = []
    # The PV the scenarios can take away: none in a first step nowcast from the meter.
    doubted = list(pv)
    if p.nowcast_first_step and doubted:
        doubted[0] = 0.0
    if p.overcast_weight > 0.0:
        lost = [(1.0 - p.overcast_pv_fraction) * v for v in doubted]
        out.append((p.overcast_weight, lost, None))
    if p.pv_plateau_weight > 0.0 and pv:
        cap = p.pv_plateau_fraction * pv[0]
        out.append((p.pv_plateau_weight, [max(0.0, v - cap) for v in doubted], None))
    if p.cloud_window_weight > 0.0:
        out += _cloud_windows(p, doubted, starts, today)
    return out


def _level_hold(
    p: HvacParams,
    other: Sequence[float],
    measured_w: float,
    starts: Sequence[datetime],
    today: date,
) -> list[Scenario]:
    """The level-hold scenario of ``p`` (see ``level_hold_weight``) for the other load
    ``other`` (W per step from now), or none: the level is the larger of step 0's forecast
    and ``measured_w`` (when finite), held from step 1 while the hold lasts and the step is
    ``today``, answered by the zones from step 1 to the hold's end."""
    if p.level_hold_weight <= 0.0 or len(other) < 2:
        return []
    level = max(other[0], measured_w) if math.isfinite(measured_w) else other[0]
    end = min(len(other), 1 + round(p.level_hold / p.step))
    add = [0.0] * len(other)
    for k in range(1, end):
        if starts[k].astimezone(p.tariff.zone).date() != today:
            end = k
            break
        add[k] = max(0.0, level - other[k])
    if not any(add):
        return []
    return [(p.level_hold_weight, add, (1, end))]


def _cloud_windows(
    p: HvacParams, pv: Sequence[float], starts: Sequence[datetime], today: date
) -> list[Scenario]:
    """The cloud-window scenarios of ``p`` (see ``cloud_window_weight``): one per hourly
    start (every window's length when shorter) from now (step 0) while the start is
    ``today`` (local) and its window has PV to lose, sharing the probability equally;
    with ``cloud_window_recourse``, each answered by the zones from its first step with PV
    lost."""
    tariff = p.tariff
    lost = [(1.0 - p.overcast_pv_fraction) * v for v in pv]
    windows: list[tuple[list[float], tuple[int, int] | None]] = []
    k0 = 0
    # Windows start every hour, or tile the day when shorter: every block is in one.
    length = max(1, round(p.cloud_window / p.step))
    per_hour = min(length, max(1, round(timedelta(hours=1) / p.step)))
    recourse = p.cloud_window_recourse
    after = None if recourse is None else round(recourse / p.step)
    while k0 < len(pv) and starts[k0].astimezone(tariff.zone).date() == today:
        add = [lost[k] if k0 <= k < k0 + length else 0.0 for k in range(len(pv))]
        first = next((k for k, v in enumerate(add) if v > 0.0), None)
        if first is not None:
            # The zones can answer a cloud from when it shows: its first step with PV lost.
            branch = None if after is None else (first, min(len(pv), k0 + length + after))
            windows.append((add, branch))
        k0 += per_hour
    if not windows:
        return []
    weight = p.cloud_window_weight / len(windows)
    return [(weight, add, branch) for add, branch in windows]


def _tracked(ledger: DemandLedger | None, snapshot: Snapshot, p: HvacParams) -> DemandLedger | None:
    """``ledger`` with the site meter's reading in ``snapshot`` added; None without one."""
    if p.grid_point is None:
        return None
    reading = snapshot.reading(p.grid_point)
    if reading is None or not math.isfinite(reading.value):
        return None
    return track_demand(ledger, reading.value, reading.ts, p.tariff, p.max_input_age_s)


def _covers(plan: Plan, start: datetime, now: datetime, p: HvacParams) -> bool:
    """Whether ``plan`` (solved for ``start``) has a step for ``now``."""
    if not plan.ok or now < start:
        return False
    return math.floor((now - start) / p.step) < len(plan.cooling_w)


def _first_plan(outcome: JobOutcome, zones: int) -> Plan | str:
    """The first plan of a solve job's outcome, or why there is no usable one."""
    plans = outcome.value
    if outcome.error is not None:
        return f"plan solve in a worker failed: {outcome.error}"
    if (
        not isinstance(plans, tuple)
        or len(plans) != zones
        or not all(isinstance(plan, Plan) for plan in plans)
    ):
        return f"plan solve in a worker returned {type(plans).__name__}, not {zones} plan(s)"
    first: Plan = plans[0]
    if not first.ok:
        return f"planner {first.status}: {first.message}"
    return first


def _model_problem(fit: ThermalFit | IdentificationRefused | None) -> tuple[FallbackKind, str]:
    """Why ``fit`` cannot be planned with (called only when it cannot)."""
    if fit is None:
        return "no_model", "no thermal model (none given, no history to identify one from)"
    if isinstance(fit, IdentificationRefused):
        return "model_refused", f"thermal model identification refused: {fit.reason}"
    return "model_bad", f"thermal model fits badly: {fit.verdict}"


def _forecast_series(
    forecast: Forecast | None, start: datetime, step: timedelta, count: int
) -> list[float] | None:
    """``count`` values from ``start``; past the forecast's end its last value is held.
    None when the forecast is absent, does not cover ``start`` or holds a non-finite value."""
    if forecast is None:
        return None
    values: list[float] = []
    for k in range(count):
        value = forecast.at(start + k * step)
        if value is None:
            if not values:
                return None
            value = values[-1]
        if not math.isfinite(value):
            return None
        values.append(value)
    return values


# --------------------------------------------------------------------------------------------
# Several zones planned together


@dataclass(frozen=True, slots=True)
class HvacGroupState:
    """What the group planner carries between cycles."""

    zones: tuple[HvacState, ...]
    """Each zone's model, plan (its part of the joint plan) and mode, in the group's order."""
    demand: DemandLedger | None = None
    """The month's billed demand, followed from the first zone's ``grid_point``."""
    planned: tuple[int, ...] = ()
    """The zones in the current joint plan (the others run their thermostat fallback)."""
    solving: datetime | None = None
    """Offloaded: when the joint plan being solved in a worker was requested."""
    solving_zones: tuple[int, ...] = ()
    """Offloaded: the zones of that request, in its order."""
    failure: tuple[FallbackKind, str] | None = None
    """Offloaded: why the last joint solve gave no plan; the next cycle falls back with it."""
    requested: datetime | None = None
    """When the last joint plan was asked for (``replan_within_block`` counts from it)."""


class HvacGroupController:
    """The zones of one site planned in one LP (:func:`plan_zones`), each zone's setpoint
    requested from its part of the plan.

    Zones planned apart each take the others' chillers as forecast, so two of them pre-cool
    into the same block, each believing it has the room: planned together the demand rows
    hold the sum of the chillers. The other load is the forecast of the site's consumption
    without the planned chillers (``uncontrolled_load_key``) less PV, plus what zones on
    their thermostat fallback draw; the weather, tariff, meter, demand-charge settings and
    forecast keys are those of the first zone. Each zone falls back to its thermostat alone
    (stale temperature, no or a bad model) and the others go on planning together; the
    weather missing or the solver failing sends every planned zone to its fallback.
    """

    def __init__(
        self,
        zones: Sequence[HvacController],
        *,
        name: str = "hvac_group_planner",
        offload: bool = False,
    ):
        if not zones:
            raise ValueError("a zone group needs at least one zone")
        steps = {z.params.step for z in zones}
        horizons = {z.params.horizon for z in zones}
        if len(steps) != 1 or len(horizons) != 1:
            raise ValueError("the zones of a group must share one plan step and horizon")
        if len({z.params.zone for z in zones}) != len(zones):
            raise ValueError("a zone appears twice in the group")
        self._offload = offload
        self._zones = tuple(z.offloaded() if offload and not z.offload else z for z in zones)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def priority(self) -> Priority:
        return Priority.ECONOMICS

    @property
    def zones(self) -> tuple[HvacController, ...]:
        return self._zones

    @property
    def offload(self) -> bool:
        return self._offload

    def offloaded(self) -> HvacGroupController:
        """This group handing its joint solves and its zones' identifications out as jobs
        (as :meth:`HvacController.offloaded`)."""
        return HvacGroupController(self._zones, name=self._name, offload=True)

    def initial_state(self) -> HvacGroupState:
        return HvacGroupState(zones=tuple(z.initial_state() for z in self._zones))

    def finish(
        self, state: HvacGroupState, job: Job, outcome: JobOutcome
    ) -> tuple[HvacGroupState, tuple[str, ...]]:
        """Take in a handed-out job's outcome: the joint plan, or one zone's model."""
        if job.key == "plan":
            return self._finish_plan(state, job, outcome), ()
        for i, zone in enumerate(self._zones):
            if job.key == zone._identify_key:
                zone_state, events = zone._finish_identify(state.zones[i], job, outcome)
                zones = list(state.zones)
                zones[i] = zone_state
                return replace(state, zones=tuple(zones)), events
        return state, ()

    def _finish_plan(self, state: HvacGroupState, job: Job, outcome: JobOutcome) -> HvacGroupState:
        if state.solving is None or state.solving != job.tag:
            return state
        done = replace(state, solving=None, solving_zones=())
        first = _first_plan(outcome, len(state.solving_zones))
        if isinstance(first, str):
            return replace(done, failure=("planner", f"joint {first}"))
        plans = cast(tuple[Plan, ...], outcome.value)
        zones = list(state.zones)
        for i, plan in zip(state.solving_zones, plans, strict=True):
            zones[i] = replace(zones[i], plan=plan, plan_start=state.solving)
        return replace(done, zones=tuple(zones), planned=state.solving_zones)

    def decide(
        self, snapshot: Snapshot, state: HvacGroupState, now: datetime, forecasts: Forecasts
    ) -> Decision[HvacGroupState]:
        """One cycle: re-plan the ready zones together when due, request every setpoint."""
        lead = self._zones[0].params
        events: list[str] = []
        jobs: list[Job] = []
        metrics: dict[str, float] = {}
        ledger = _tracked(state.demand, snapshot, lead) or state.demand
        if ledger is not None:
            metrics["billed_peak_w"] = ledger.billed_peak_w
        zone_states = [
            z._identified(s, events, now=now, jobs=jobs)
            for z, s in zip(self._zones, state.zones, strict=True)
        ]
        zone_metrics: list[dict[str, float]] = [{} for _ in self._zones]
        decisions: dict[int, Decision[HvacState]] = {}
        ready: list[tuple[int, float, RcModel]] = []
        for i, zone in enumerate(self._zones):
            temperature, problem = zone._readiness(snapshot, zone_states[i], now, zone_metrics[i])
            fit = zone_states[i].fit
            if problem is None and temperature is not None and isinstance(fit, ThermalFit):
                ready.append((i, temperature, fit.rc))
            else:
                assert problem is not None  # noqa: S101 - _readiness names one when not ready
                decisions[i] = zone._fallback(
                    zone_states[i], now=now, problem=problem, metrics=zone_metrics[i], events=[]
                )
        planned = tuple(i for i, _, _ in ready)
        offloaded = replace(state, zones=tuple(zone_states))
        if (
            ready
            and self._offload
            and self._replan_due(
                zone_states, ready, planned, state.planned, now, requested=state.requested
            )
        ):
            offloaded, planned = self._request_plan(
                snapshot,
                offloaded,
                ready=ready,
                decisions=decisions,
                zone_metrics=zone_metrics,
                ledger=ledger,
                now=now,
                forecasts=forecasts,
                jobs=jobs,
            )
            zone_states = list(offloaded.zones)
        elif ready and self._replan_due(
            zone_states, ready, planned, state.planned, now, requested=state.requested
        ):
            offloaded = replace(offloaded, requested=now)
            outcome = self._plan(
                snapshot, zone_states, ready, decisions, ledger, now=now, forecasts=forecasts
            )
            if isinstance(outcome, tuple):
                kind, detail = outcome
                for i, _, _ in ready:
                    decisions[i] = self._zones[i]._fallback(
                        zone_states[i],
                        now=now,
                        problem=(kind, detail),
                        metrics=zone_metrics[i],
                        events=[],
                    )
                planned = ()
            else:
                for i, _, _ in ready:
                    zone_states[i] = outcome[i]
        following = [i for i, _, _ in ready if i not in decisions]
        for i in following:
            zs = zone_states[i]
            assert zs.plan is not None  # noqa: S101 - planned above
            assert zs.plan_start is not None  # noqa: S101
            decisions[i] = self._zones[i]._follow(
                zs, zs.plan, zs.plan_start, now=now, metrics=zone_metrics[i], events=[]
            )
        requests: list[SetpointRequest] = []
        new_states: list[HvacState] = []
        for i, zone in enumerate(self._zones):
            decision = decisions[i]
            new_states.append(decision.state)
            events.extend(decision.events)
            requests.extend(replace(r, source=self._name) for r in decision.requests)
            for key, value in decision.metrics.items():
                if key == "plan_peak_w":
                    metrics[key] = value
                else:
                    metrics[f"{zone.params.zone}_{key}"] = value
        return Decision(
            state=replace(offloaded, zones=tuple(new_states), demand=ledger, planned=planned),
            requests=tuple(requests),
            metrics=metrics,
            events=tuple(events),
            jobs=tuple(jobs),
        )

    def _request_plan(
        self,
        snapshot: Snapshot,
        state: HvacGroupState,
        *,
        ready: Sequence[tuple[int, float, RcModel]],
        decisions: dict[int, Decision[HvacState]],
        zone_metrics: Sequence[dict[str, float]],
        ledger: DemandLedger | None,
        now: datetime,
        forecasts: Forecasts,
        jobs: list[Job],
    ) -> tuple[HvacGroupState, tuple[int, ...]]:
        """Offloaded, a joint plan is due: fall back on a failed solve, hand out a new one
        unless one is being solved, and meanwhile let each ready zone follow the plan it has
        (or its thermostat). Fills ``decisions`` for the zones that fall back; returns the
        state and the zones now in the joint plan."""
        zone_states = list(state.zones)
        problem: tuple[FallbackKind, str] | None = state.failure
        state = replace(state, failure=None)
        if problem is None and state.solving is None:
            request = self._request(
                snapshot, zone_states, ready, decisions, ledger, now=now, forecasts=forecasts
            )
            if isinstance(request, str):
                problem = ("no_outdoor", request)
            else:
                job, persisted, start = request
                jobs.append(Job("plan", solve_plans, (job,), tag=start))
                for i, _, _ in ready:
                    zone_states[i] = replace(zone_states[i], persisted=persisted)
                state = replace(
                    state,
                    solving=start,
                    solving_zones=tuple(i for i, _, _ in ready),
                    requested=now,
                )
        for i, _, _ in ready:
            zone, zs = self._zones[i], zone_states[i]
            if problem is None:
                if (
                    zs.plan is not None
                    and zs.plan_start is not None
                    and _covers(zs.plan, zs.plan_start, now, zone.params)
                ):
                    continue  # followed below
                kind: FallbackKind = "planner" if zs.mode == "planner" else "solving"
                waiting = (kind, "waiting for a joint plan from a worker process")
            decisions[i] = zone._fallback(
                zs,
                now=now,
                problem=problem or waiting,
                metrics=zone_metrics[i],
                events=[],
            )
        following = tuple(i for i, _, _ in ready if i not in decisions)
        return replace(state, zones=tuple(zone_states)), following if problem is None else ()

    def _replan_due(
        self,
        zone_states: Sequence[HvacState],
        ready: Sequence[tuple[int, float, RcModel]],
        planned: tuple[int, ...],
        was_planned: tuple[int, ...],
        now: datetime,
        *,
        requested: datetime | None,
    ) -> bool:
        if planned != was_planned:
            return True
        within = self._zones[0].params.replan_within_block
        if within is not None and requested is not None and now - requested >= within:
            return True
        for i, temperature, _ in ready:
            zs = zone_states[i]
            # Offloaded, a zone waits for its plan in a fallback mode with the plan it had;
            # inline a zone with a plan is always in mode "plan".
            if (
                zs.plan is None
                or zs.plan_start is None
                or (zs.mode != "plan" and not self._offload)
            ):
                return True
            if self._zones[i]._replan_due(zs.plan, zs.plan_start, now, temperature):
                return True
        return False

    def _plan(
        self,
        snapshot: Snapshot,
        zone_states: Sequence[HvacState],
        ready: Sequence[tuple[int, float, RcModel]],
        fallbacks: Mapping[int, Decision[HvacState]],
        ledger: DemandLedger | None,
        *,
        now: datetime,
        forecasts: Forecasts,
    ) -> dict[int, HvacState] | tuple[FallbackKind, str]:
        """Each ready zone's state with its part of a new joint plan, or why there is none."""
        request = self._request(
            snapshot, zone_states, ready, fallbacks, ledger, now=now, forecasts=forecasts
        )
        if isinstance(request, str):
            return "no_outdoor", request
        job, persisted, start = request
        plans = solve_plans(job)
        if not plans[0].ok:
            return "planner", f"joint planner {plans[0].status}: {plans[0].message}"
        return {
            i: replace(zone_states[i], plan=plan, plan_start=start, persisted=persisted)
            for (i, _, _), plan in zip(ready, plans, strict=True)
        }

    def _request(
        self,
        snapshot: Snapshot,
        zone_states: Sequence[HvacState],
        ready: Sequence[tuple[int, float, RcModel]],
        fallbacks: Mapping[int, Decision[HvacState]],
        ledger: DemandLedger | None,
        *,
        now: datetime,
        forecasts: Forecasts,
    ) -> tuple[PlanJob, tuple[str, ...], datetime] | str:
        """The joint solve of the ready zones, the forecasts persisted for it and the plan's
        start (``now``, or inside a block with ``replan_within_block`` the block's start),
        or why there is none (no outdoor temperature)."""
        p = self._zones[0].params
        first = self._zones[ready[0][0]]
        block = _block_under_way(p, zone_states, ready, ledger, now)
        start = block.start if block is not None else now
        inputs = first._inputs(snapshot, start, forecasts)
        if isinstance(inputs, str):
            return inputs
        outdoor, irradiance, persisted = inputs
        times = [start + k * p.step for k in range(p.steps)]
        floors = [0.0] * len(ready)
        starts = [temperature for _, temperature, _ in ready]
        if block is not None:
            starts = list(block.start_degc)
            floors = [
                _cooling_had_w(
                    model,
                    block.start_degc[n],
                    temperature,
                    elapsed_s=block.elapsed_s,
                    step_s=p.step_s,
                    outdoor_degc=outdoor[0],
                    irradiance_wm2=irradiance[0],
                    occupied=self._zones[i].params.occupied_at(start),
                    capacity_w=self._zones[i].params.chiller_capacity_w,
                )
                for n, (i, temperature, model) in enumerate(ready)
            ]
        problems = [
            ZoneProblem(
                model,
                t0,
                self._zones[i].params,
                [self._zones[i].params.occupied_at(t) for t in times],
                first_cooling_min_w=floor,
            )
            for (i, _, model), t0, floor in zip(ready, starts, floors, strict=True)
        ]
        demand = self._demand_term(
            snapshot,
            zone_states,
            ready,
            fallbacks,
            ledger,
            now=start,
            forecasts=forecasts,
            outdoor=outdoor,
            irradiance=irradiance,
        )
        if demand is not None and block is not None:
            chillers_j = sum(
                floor * p.step_s / self._zones[i].params.cop.cop(outdoor[0])
                for (i, _, _), floor in zip(ready, floors, strict=True)
            )
            demand = _block_so_far(
                demand, block, chillers_j, self._measured_other_w(snapshot, ready), p
            )
        job = PlanJob(
            zones=tuple(problems),
            outdoor_degc=tuple(outdoor),
            irradiance_wm2=tuple(irradiance),
            prices_per_kwh=p.tariff.prices_per_kwh(start, p.step, p.steps),
            demand=demand,
        )
        return job, persisted, start

    def _measured_other_w(
        self, snapshot: Snapshot, ready: Sequence[tuple[int, float, RcModel]]
    ) -> float:
        """The site meter's import now less the planned zones' chillers (W), NaN when the
        meter or a chiller has no fresh reading."""
        p = self._zones[0].params
        grid = snapshot.value(p.grid_point, p.max_input_age_s) if p.grid_point else None
        if grid is None:
            return math.nan
        for i, _, _ in ready:
            zone = self._zones[i].params
            drawn = snapshot.value(zone.ref(zone.chiller_power_point), zone.max_input_age_s)
            if drawn is None:
                return math.nan
            grid -= drawn
        return grid

    def _demand_term(
        self,
        snapshot: Snapshot,
        zone_states: Sequence[HvacState],
        ready: Sequence[tuple[int, float, RcModel]],
        fallbacks: Mapping[int, Decision[HvacState]],
        ledger: DemandLedger | None,
        *,
        now: datetime,
        forecasts: Forecasts,
        outdoor: Sequence[float],
        irradiance: Sequence[float],
    ) -> DemandTerm | None:
        """The demand charge of the joint plan: the uncontrolled load (forecast, or the
        consumption less thermostats holding the planned zones) less PV, plus the zones on
        their fallback at what their chillers draw now. Today's departure from the usual
        (a busier morning, a cloud deck) is the forecasters' to persist: they are rebuilt
        from the latest quarter hours."""
        p = self._zones[0].params
        if p.tariff.demand_charge_per_kw <= 0.0:
            return None
        n = p.steps
        load = None
        if p.uncontrolled_load_key is not None:
            load = _forecast_series(forecasts.get(p.uncontrolled_load_key), now, p.step, n)
        uncontrolled = load is not None
        if load is None and p.load_forecast_key is not None:
            load = _forecast_series(forecasts.get(p.load_forecast_key), now, p.step, n)
        if load is None:
            return None
        pv = None
        if p.pv_forecast_key is not None:
            pv = _forecast_series(forecasts.get(p.pv_forecast_key), now, p.step, n)
        other = np.asarray(load, dtype=np.float64)
        if pv is not None:
            other = other - np.asarray(pv)
        times = [now + k * p.step for k in range(n)]
        if uncontrolled:
            for i in fallbacks:
                fallback = self._zones[i].params
                drawn = snapshot.value(
                    fallback.ref(fallback.chiller_power_point), fallback.max_input_age_s
                )
                other = other + (drawn if drawn is not None else 0.0)
        else:
            for i, _, model in ready:
                zone = self._zones[i]
                occupied = [zone.params.occupied_at(t) for t in times]
                other = other - np.asarray(
                    zone._own_chiller_w(
                        replace(zone_states[i], plan=None),
                        now=now,
                        model=model,
                        outdoor=outdoor,
                        irradiance=irradiance,
                        occupied=occupied,
                    )
                )
        measured = self._measured_other_w(snapshot, ready)
        if p.nowcast_first_step and other.size:
            if math.isfinite(measured):
                other[0] = max(other[0], measured)
            other[0] += abs(other[0]) * p.nowcast_margin_pct / 100.0
        # The spread is of the consumption (chillers included), as the net-import quantile
        # forecast that can widen it is.
        consumption = None
        if p.load_forecast_key is not None:
            consumption = _forecast_series(forecasts.get(p.load_forecast_key), now, p.step, n)
        return _demand_over(
            p,
            snapshot,
            ledger,
            now=now,
            forecasts=forecasts,
            other=[float(v) for v in other],
            load=consumption if consumption is not None else load,
            pv=pv,
            measured_other_w=measured,
        )
