"""HVAC with thermal inertia: plan a zone's cooling over a day and steer its thermostat.

Each cycle the controller either reuses its plan or solves a new one (the plan is older than
``replan_interval``, the zone has drifted ``replan_deviation_k`` away from it, or there is
none). The plan is a linear programme over the horizon (``plan_cooling``)::

    min  Σ_k price_k · Φ_k/COP(T_o,k) · Δt  +  penalty · Σ_k (s⁺_k + s⁻_k) · Δt
    s.t. T_{k+1} = a·T_k + (1 − a)·(T_o,k + R·(G_k − Φ_k))      (identified 1R1C zone)
         lo_k − s⁻_k ≤ T_{k+1} ≤ hi_k + s⁺_k                     (soft comfort band)
         0 ≤ Φ_k ≤ chiller capacity,  s⁺, s⁻ ≥ 0,  T_{k+1} ≤ ceiling (optional, hard)

with Φ the thermal cooling power, G the modelled gains (occupancy + aperture × irradiance)
and price_k the tariff's energy price. The comfort band is soft, so a zone that starts
outside it gets a plan that brings it back at a price, never an infeasible problem; only
the optional hard ceiling can make it infeasible. No demand-charge term: the peak-shaving
controller owns the billed peak, and pricing it here too would count it twice.

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

Priority ECONOMICS: the plan is a cost optimisation with comfort as a priced constraint.
Peak shaving and the grid operator (demand response raising setpoints) must outrank it, and
it should outrank a plain comfort schedule at COMFORT. One instance per zone, each from its
own ``HvacParams``: zones have their own model, band and chiller, and one failing zone then
falls back alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy import sparse
from scipy.optimize import linprog

from gridpilot.control.base import (
    Decision,
    Forecast,
    Forecasts,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.tariff import HourWindow, Tariff
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


def _point_ref(value: object) -> object:
    return PointRef.parse(value) if isinstance(value, str) else value


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
    outdoor_temperature: PointRef | None = PointRef("weather_io", "outdoor_temperature_degc")
    """Read for persistence when the ``outdoor_degc`` forecast is missing."""
    irradiance: PointRef | None = PointRef("weather_io", "irradiance_wm2")
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
    comfort_penalty_per_kh: float = Field(default=10.0, ge=0.0)
    """Price of one kelvin outside the band for one hour, in the tariff's currency. The
    default outweighs what pre-cooling below the band could save at usual TOU spreads
    (about 1 currency unit per K of an 18 MJ/K zone), so the band holds when it can."""
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
    fallback_band_position: float = Field(default=0.75, ge=0.0, le=1.0)
    """Fallback setpoint: this far up the current comfort band (0 = lower, 1 = upper)."""
    solver_time_limit_s: float = Field(default=5.0, ge=0.0)
    identification: IdentificationParams = IdentificationParams()
    """Used when the controller identifies its model from a history in its state."""

    @field_validator("outdoor_temperature", "irradiance", mode="before")
    @classmethod
    def _parse_ref(cls, value: object) -> object:
        return _point_ref(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.step <= timedelta(0) or self.horizon < self.step:
            raise ValueError("step must be positive and horizon at least one step")
        if self.setpoint_max_degc <= self.setpoint_min_degc:
            raise ValueError("setpoint_max_degc must be above setpoint_min_degc")
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

    @property
    def ok(self) -> bool:
        return self.status == "optimal"


def plan_cooling(
    model: RcModel,
    t0_degc: float,
    *,
    outdoor_degc: Sequence[float],
    irradiance_wm2: Sequence[float],
    occupied: Sequence[bool],
    prices_per_kwh: Sequence[float],
    params: HvacParams,
) -> Plan:
    """Cheapest cooling over the horizon the inputs span, comfort priced per K·h.

    Per-step inputs (all the same length n, step ``params.step``): outdoor temperature °C,
    irradiance W/m², occupancy (selects the comfort band the temperature at the *end* of the
    step is held to), import price per kWh. From ``params``: ``step``, the comfort bands,
    ``comfort_penalty_per_kh``, ``chiller_capacity_w``, ``cop``, ``temperature_ceiling_degc``
    and ``solver_time_limit_s`` (the horizon is the inputs' length, not ``params.horizon``).

    Returns a :class:`Plan`; a non-finite input or a solver without an optimum gives a plan
    with ``status`` ≠ ``"optimal"`` and the reason in ``message`` (never raises for data;
    raises ``ValueError`` for mismatched lengths).
    """
    n = len(outdoor_degc)
    if not (len(irradiance_wm2) == len(occupied) == len(prices_per_kwh) == n) or n == 0:
        raise ValueError(
            "outdoor, irradiance, occupied and prices must have one equal, non-zero length; "
            f"got {len(outdoor_degc)}, {len(irradiance_wm2)}, {len(occupied)}, "
            f"{len(prices_per_kwh)}"
        )
    dt_s = params.step_s
    outdoor = np.asarray(outdoor_degc, dtype=np.float64)
    irradiance = np.asarray(irradiance_wm2, dtype=np.float64)
    prices = np.asarray(prices_per_kwh, dtype=np.float64)
    occ = np.asarray(occupied, dtype=bool)
    finite = [
        np.isfinite(t0_degc),
        *(np.all(np.isfinite(v)) for v in (outdoor, irradiance, prices)),
    ]
    if not all(finite):
        return Plan("failed", "non-finite start temperature, forecast or price", dt_s)

    a = model.coefficient(dt_s)
    r = model.resistance_k_per_w
    hours = dt_s / 3600.0
    gains = np.array(
        [model.gains_w(float(o), float(i)) for o, i in zip(occ, irradiance, strict=True)]
    )
    cop = np.array([params.cop.cop(float(t)) for t in outdoor])
    lower = np.array([params.band(bool(o)).lower_degc for o in occ])
    upper = np.array([params.band(bool(o)).upper_degc for o in occ])

    # Variables, n each: cooling Φ_k in kW (kW keeps the matrix well scaled next to kelvin),
    # T_{k+1}, slack above the band s⁺_k, slack below s⁻_k.
    q_at, t_at, hi_at, lo_at = 0, n, 2 * n, 3 * n  # where each block starts
    k = np.arange(n)
    cost = np.concatenate(
        [
            prices * hours / cop,  # per kW of cooling held for one step
            np.zeros(n),
            np.full(n, params.comfort_penalty_per_kh * hours),
            np.full(n, params.comfort_penalty_per_kh * hours),
        ]
    )
    # Dynamics: T_{k+1} − a·T_k + (1 − a)·R·1000·Φ_k = (1 − a)·(T_o,k + R·G_k)
    rows = np.concatenate([k, k, k[1:]])
    cols = np.concatenate([t_at + k, q_at + k, t_at + k[1:] - 1])
    data = np.concatenate([np.ones(n), np.full(n, (1.0 - a) * r * 1000.0), np.full(n - 1, -a)])
    a_eq = sparse.csr_array(sparse.coo_array((data, (rows, cols)), shape=(n, 4 * n)))
    b_eq = (1.0 - a) * (outdoor + r * gains)
    b_eq[0] += a * t0_degc
    # Band: T_{k+1} − s⁺_k ≤ hi_k and −T_{k+1} − s⁻_k ≤ −lo_k
    rows = np.concatenate([k, k, n + k, n + k])
    cols = np.concatenate([t_at + k, hi_at + k, t_at + k, lo_at + k])
    data = np.concatenate([np.ones(n), -np.ones(n), -np.ones(n), -np.ones(n)])
    a_ub = sparse.csr_array(sparse.coo_array((data, (rows, cols)), shape=(2 * n, 4 * n)))
    b_ub = np.concatenate([upper, -lower])
    ceiling = params.temperature_ceiling_degc
    bounds = (
        [(0.0, params.chiller_capacity_w / 1000.0)] * n
        + [(None, ceiling)] * n
        + [(0.0, None)] * (2 * n)
    )
    result: Any = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=bounds,
        method="highs",
        options={"time_limit": params.solver_time_limit_s},
    )
    if result.status != 0 or result.x is None:
        status: PlanStatus = "infeasible" if result.status == 2 else "failed"
        return Plan(status, f"HiGHS status {result.status}: {result.message}", dt_s)
    x = np.asarray(result.x, dtype=np.float64)
    cooling_w = np.maximum(x[q_at : q_at + n], 0.0) * 1000.0
    temperatures = np.concatenate([[t0_degc], x[t_at : t_at + n]])
    electric_w = cooling_w / cop
    violation = np.maximum(0.0, np.maximum(lower - temperatures[1:], temperatures[1:] - upper))
    return Plan(
        status="optimal",
        message=str(result.message),
        step_s=dt_s,
        temperatures_degc=tuple(float(v) for v in temperatures),
        cooling_w=tuple(float(v) for v in cooling_w),
        chiller_power_w=tuple(float(v) for v in electric_w),
        cost=float(np.sum(prices * electric_w / 1000.0 * hours)),
        energy_wh=float(np.sum(electric_w) * hours),
        comfort_violation_kh=float(np.sum(violation) * hours),
    )


# --------------------------------------------------------------------------------------------
# The controller


FallbackKind = Literal[
    "stale_temperature", "no_model", "model_refused", "model_bad", "no_outdoor", "planner"
]


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


class HvacController:
    """The cooling planner of one zone (see the module docstring)."""

    def __init__(
        self,
        params: HvacParams,
        *,
        fit: ThermalFit | None = None,
        history: ZoneHistory | None = None,
    ) -> None:
        self._params = params
        self._fit = fit
        self._history = history

    @property
    def name(self) -> str:
        return self._params.name or f"{self._params.zone}_planner"

    @property
    def priority(self) -> Priority:
        return Priority.ECONOMICS

    @property
    def params(self) -> HvacParams:
        return self._params

    def initial_state(self) -> HvacState:
        return HvacState(fit=self._fit, history=self._history)

    def decide(
        self, snapshot: Snapshot, state: HvacState, now: datetime, forecasts: Forecasts
    ) -> Decision[HvacState]:
        """One cycle: re-plan when due, then request the setpoint of the current step."""
        p = self._params
        events: list[str] = []
        fit = state.fit
        if fit is None and state.history is not None:
            fit = identify_zone(state.history, p.identification)
            if isinstance(fit, ThermalFit):
                events.append(
                    f"{self.name}: identified {fit.chosen} zone model from history, "
                    f"R·C {fit.rc.time_constant_s / 3600.0:.1f} h, {fit.verdict}"
                )
            state = replace(state, fit=fit, history=None)

        metrics: dict[str, float] = {}
        temperature = snapshot.value(p.ref(p.temperature_point), p.max_input_age_s)
        if temperature is not None:
            band = p.band(p.occupied_at(now))
            metrics["comfort_deviation_degc"] = band.deviation_degc(temperature)
        if isinstance(fit, ThermalFit):
            metrics["model_rmse_degc"] = fit.multi_step_rmse_k
            metrics["model_one_step_rmse_degc"] = fit.one_step_rmse_k
            metrics["model_time_constant_s"] = fit.rc.time_constant_s

        if temperature is None:
            problem: tuple[FallbackKind, str] = (
                "stale_temperature",
                f"zone temperature {p.ref(p.temperature_point)} missing or older than "
                f"{p.max_input_age_s:.0f} s",
            )
            return self._fallback(state, now=now, problem=problem, metrics=metrics, events=events)
        if not isinstance(fit, ThermalFit) or not fit.good_enough:
            problem = _model_problem(fit)
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
        )

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
    ) -> Decision[HvacState]:
        p = self._params
        plan, start, persisted = state.plan, state.plan_start, state.persisted
        if plan is None or start is None or self._replan_due(plan, start, now, temperature):
            inputs = self._inputs(snapshot, now, forecasts)
            if isinstance(inputs, str):
                return self._fallback(
                    state, now=now, problem=("no_outdoor", inputs), metrics=metrics, events=events
                )
            outdoor, irradiance, persisted = inputs
            if persisted != state.persisted:
                events.append(self._persistence_event(persisted))
            times = [now + i * p.step for i in range(p.steps)]
            plan = plan_cooling(
                model,
                temperature,
                outdoor_degc=outdoor,
                irradiance_wm2=irradiance,
                occupied=[p.occupied_at(t) for t in times],
                prices_per_kwh=p.tariff.prices_per_kwh(now, p.step, p.steps),
                params=p,
            )
            start = now
            if not plan.ok:
                return self._fallback(
                    replace(state, persisted=persisted),
                    now=now,
                    problem=("planner", f"planner {plan.status}: {plan.message}"),
                    metrics=metrics,
                    events=events,
                )
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
