"""Physics of the simulated commercial building: pure functions of (params, state, inputs, dt).

Nothing here reads a clock, sleeps or touches a socket. Time comes in as ``now`` (a
timezone-aware ``datetime`` of *simulated* time) and ``dt_s`` (seconds); randomness only from a
``random.Random`` the caller owns, so a run is reproducible from its seed.

Sign conventions, stated once:

* grid meter active power: positive = import from the grid, negative = export;
* battery active power and its setpoint: positive = discharge (the battery feeds the
  building), negative = charge;
* PV AC power: positive = generation; loads (base load, chillers, fan): positive = consumption.
* PV reactive power: positive = injecting (over-excited, IEEE 1547 and SunSpec); the meter's
  reactive power, like its active power, counts what the site draws (the loads' lagging
  vars less what the inverter injects).

So the meter balance is ``P_grid = P_base + P_chillers + P_fan - P_pv - P_battery``
(:func:`grid_power_w`).

Models, with the source of each figure:

* base load: an hourly office profile (weekday 8-18 plateau, weekend standby), interpolated;
* clear-sky irradiance: Haurwitz (1945) GHI = 1098·cos Z·exp(-0.057 / cos Z), solar position
  from Cooper's declination and the hour angle (no equation of time);
* PV: DC = rating·G/1000·derate·(1 + gamma·(T_cell - 25)), AC = min(DC·η_inv, AC rating, limit);
  reactive power follows its mode (unity, a fixed power factor, a fixed var setpoint or a
  volt-var curve at the terminal voltage) through a first-order lag (90 % in the mode's
  response time), within the var rating and what the VA rating leaves beside P (active
  power has priority); the inverter's vars do not move the simulated voltage; an optional
  volt-watt curve of its own lowers the active power limit with the voltage (same lag), an
  optional frequency droop of its own with an over-frequency (from the output when it
  began); outside its trip limits of voltage or frequency it ceases to energize and
  reconnects once they are back (after its own delay, none by default);
* battery: SoC integrates the AC power through one-way efficiencies, clipped to the power
  limits and to the SoC window (5-95 % by default);
* zones: 1R1C, exact discretisation T_{k+1} = a·T_k + (1 - a)(T_o + R·Q_k),
  a = exp(-Δt/(R·C)); chiller COP = η·T_cold/(T_hot - T_cold) (Carnot fraction, kelvin);
* fan: affinity law P = P_rated·(n/n_rated)³, speed ramps at a fixed rate;
* 4-20 mA loop: value = lo + (I - 4)/16·(hi - lo), transmitters saturate at 3.8/20.5 mA
  (NAMUR NE 43).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime

SECONDS_PER_HOUR = 3600.0
KELVIN = 273.15
SQRT3 = math.sqrt(3.0)


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def hour_of_day(now: datetime) -> float:
    """Hours since local midnight of ``now`` (its own time zone), e.g. 13.5 at 13:30."""
    return now.hour + now.minute / 60.0 + (now.second + now.microsecond / 1e6) / 3600.0


# --------------------------------------------------------------------------------------------
# Outdoor climate


@dataclass(frozen=True, slots=True)
class OutdoorClimate:
    """A fair summer day: outdoor temperature as a daily sinusoid, humidity following it."""

    mean_degc: float = 23.0
    amplitude_k: float = 6.0
    """Half the daily swing: the day peaks at mean + amplitude, the night at mean - amplitude."""
    warmest_hour: float = 15.0
    mean_humidity_pct: float = 55.0
    humidity_per_k: float = 3.0
    """Relative humidity falls this many percent per kelvin above the mean (and rises below)."""

    def temperature_degc(self, now: datetime) -> float:
        phase = 2.0 * math.pi * (hour_of_day(now) - self.warmest_hour) / 24.0
        return self.mean_degc + self.amplitude_k * math.cos(phase)

    def relative_humidity_pct(self, now: datetime) -> float:
        deviation = self.temperature_degc(now) - self.mean_degc
        return _clamp(self.mean_humidity_pct - self.humidity_per_k * deviation, 5.0, 100.0)


# --------------------------------------------------------------------------------------------
# Building base load


# kW at each full hour 00:00 .. 23:00; values between hours are interpolated linearly.
_WEEKDAY_KW = (
    30, 29, 28, 28, 28, 30, 42, 62, 85, 95, 98, 100,
    92, 96, 98, 96, 90, 75, 55, 42, 36, 33, 32, 31,
)  # fmt: skip
_SATURDAY_KW = (
    30, 29, 28, 28, 28, 29, 30, 32, 36, 38, 38, 38,
    37, 36, 34, 32, 31, 30, 30, 30, 30, 30, 30, 30,
)  # fmt: skip
_SUNDAY_KW = (
    29, 28, 28, 28, 28, 28, 28, 28, 29, 29, 29, 29,
    29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OfficeLoadProfile:
    """Electric base load of an office building (lighting, plug loads, IT, lifts) without HVAC.

    Hourly kW values per day type; a weekday has the 08:00-18:00 plateau with a lunch dip,
    Saturday a little activity, Sunday standby (servers, emergency lighting).
    """

    weekday_kw: tuple[float, ...] = _WEEKDAY_KW
    saturday_kw: tuple[float, ...] = _SATURDAY_KW
    sunday_kw: tuple[float, ...] = _SUNDAY_KW

    def power_w(self, now: datetime) -> float:
        """Base load in W at ``now`` (local time of the datetime)."""
        profile = self._profile(now.weekday())
        hour = hour_of_day(now)
        index = int(hour) % 24
        frac = hour - int(hour)
        # Across midnight the next value comes from the next day's profile.
        next_value = profile[index + 1] if index < 23 else self._profile((now.weekday() + 1) % 7)[0]
        return 1000.0 * (profile[index] + (next_value - profile[index]) * frac)

    def _profile(self, weekday: int) -> tuple[float, ...]:
        if weekday == 5:
            return self.saturday_kw
        if weekday == 6:
            return self.sunday_kw
        return self.weekday_kw


def is_occupied(now: datetime, start_hour: float = 7.0, end_hour: float = 19.0) -> bool:
    """Office hours: Monday to Friday, ``start_hour`` to ``end_hour`` local time."""
    return now.weekday() < 5 and start_hour <= hour_of_day(now) < end_hour


# --------------------------------------------------------------------------------------------
# Sun and PV


def solar_cos_zenith(now: datetime, latitude_deg: float, longitude_deg: float) -> float:
    """Cosine of the solar zenith angle (negative when the sun is below the horizon).

    Declination after Cooper (1969); solar time = UTC + longitude/15 h (equation of time
    neglected, it moves solar noon by at most ±16 min).
    """
    utc = now.astimezone(UTC)
    day = utc.timetuple().tm_yday
    declination = math.radians(23.45) * math.sin(2.0 * math.pi * (284 + day) / 365.0)
    solar_hour = hour_of_day(utc) + longitude_deg / 15.0
    hour_angle = math.radians(15.0 * (solar_hour - 12.0))
    lat = math.radians(latitude_deg)
    return math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(declination) * math.cos(
        hour_angle
    )


def clear_sky_ghi_wm2(now: datetime, latitude_deg: float, longitude_deg: float) -> float:
    """Global horizontal irradiance of a cloudless sky (Haurwitz model), W/m²."""
    cos_z = solar_cos_zenith(now, latitude_deg, longitude_deg)
    if cos_z <= 0.0:
        return 0.0
    return 1098.0 * cos_z * math.exp(-0.057 / cos_z)


@dataclass(frozen=True, slots=True)
class SiteLocation:
    """Where the building stands; the default is London (longitude 0, so clock ≈ solar time)."""

    latitude_deg: float = 51.5
    longitude_deg: float = 0.0

    def irradiance_wm2(self, now: datetime) -> float:
        return clear_sky_ghi_wm2(now, self.latitude_deg, self.longitude_deg)


class InverterState:
    """SunSpec operating states (model 101 ``St``) the simulated inverter uses."""

    OFF = 1
    SLEEPING = 2
    MPPT = 4
    THROTTLED = 5


@dataclass(frozen=True, slots=True)
class ReactiveMode:
    """What sets the inverter's reactive power (one mode at a time, as on real inverters).

    ``kind``: ``unity`` (0 var), ``power_factor`` (``pf`` at the present active power,
    ``injecting`` or absorbing), ``var`` (a fixed ``var``), ``volt_var`` (``curve`` of
    (V in pu of nominal, Q in var) points, saturating outside them, moved by ``v_ref_pu - 1``
    as an IEEE 1547 V_ref adjustment) or ``watt_var`` (``curve`` of (P in W, Q in var)).
    ``response_s``: 90 % of a step in this long.
    """

    kind: str = "unity"
    pf: float = 1.0
    injecting: bool = True
    var: float = 0.0
    curve: tuple[tuple[float, float], ...] = ()
    v_ref_pu: float = 1.0
    response_s: float = 1.0


def reactive_target_var(mode: ReactiveMode, ac_w: float, voltage_pu: float) -> float:
    """The reactive power ``mode`` asks for now (before the lag and the ratings).

    The inverter's own firmware, so to speak: it interpolates the curve it holds, nothing
    else (deliberately not GridPilot's ``control.ieee1547``, which it is tested against).
    """
    if mode.kind == "power_factor" and 0.0 < mode.pf < 1.0:
        q = abs(ac_w) * math.tan(math.acos(mode.pf))
        return q if mode.injecting else -q
    if mode.kind == "var":
        return mode.var
    if mode.kind == "volt_var" and mode.curve:
        return _interpolate(mode.curve, voltage_pu - (mode.v_ref_pu - 1.0))
    if mode.kind == "watt_var" and mode.curve:
        return _interpolate(mode.curve, ac_w)
    return 0.0


def _interpolate(points: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise linear through ``points`` (x not decreasing), the end values outside."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


@dataclass(frozen=True, slots=True)
class VoltWattMode:
    """The inverter's own volt-watt function (SunSpec 706): ``curve`` of (V in pu of
    nominal, limit in % of the AC rating) points; empty = off. ``response_s``: 90 % of a
    step in this long."""

    curve: tuple[tuple[float, float], ...] = ()
    response_s: float = 10.0


@dataclass(frozen=True, slots=True)
class FreqDroopMode:
    """The inverter's own frequency droop (SunSpec 711): over-frequency above
    ``nominal + db_of_hz`` lowers the output from what it was when the excursion began by
    ``1/k_of`` of the rating per unit of frequency, not below ``p_min_pct``; back in the dead
    band it returns to that output (same lag) and the droop lets go. ``response_s``: 90 % of
    a step in this long. Under-frequency: nothing (a PV inverter at its maximum power point
    has no headroom to give). Off unless ``enabled``."""

    enabled: bool = False
    db_of_hz: float = 0.036
    k_of: float = 0.05
    p_min_pct: float = 0.0
    response_s: float = 5.0


_DROOP_RELEASED_PCT = 0.5
"""Within this of the pre-excursion output the droop lets go."""


def droop_step(
    mode: FreqDroopMode,
    droop_pct: float,
    p_pre_pct: float | None,
    *,
    frequency_hz: float,
    nominal_hz: float,
    output_pct: float,
    dt_s: float,
) -> tuple[float, float | None]:
    """(the droop's limit, % of the AC rating; the output before the excursion or None when
    the droop is idle) after ``dt_s`` at ``frequency_hz``. ``output_pct``: the output now,
    taken as the pre-excursion output when an excursion begins. The inverter's firmware,
    so to speak: deliberately not GridPilot's ``control.ieee1547``."""
    if not mode.enabled or mode.k_of <= 0.0:
        return 100.0, None
    over = frequency_hz > nominal_hz + mode.db_of_hz
    if p_pre_pct is None:
        if not over:
            return 100.0, None
        p_pre_pct, droop_pct = output_pct, output_pct
    if over:
        drop = 100.0 * (frequency_hz - nominal_hz - mode.db_of_hz) / (nominal_hz * mode.k_of)
        target = max(p_pre_pct - drop, mode.p_min_pct)
    else:
        target = p_pre_pct
    pct = _lag(droop_pct, target, dt_s, mode.response_s)
    if not over and abs(pct - p_pre_pct) <= _DROOP_RELEASED_PCT:
        return 100.0, None
    return pct, p_pre_pct


def _lag(previous: float, target: float, dt_s: float, response_s: float) -> float:
    """First order, 90 % of a step in ``response_s`` (time constant response_s / ln 10)."""
    if response_s <= 0.0 or dt_s <= 0.0:
        return target if response_s <= 0.0 else previous
    return target + (previous - target) * math.exp(-dt_s * math.log(10.0) / response_s)


@dataclass(frozen=True, slots=True)
class PvParams:
    """A rooftop PV system behind one three-phase string inverter."""

    dc_rating_w: float = 120_000.0
    """Array power at STC (1000 W/m², 25 °C cell)."""
    ac_rating_w: float = 100_000.0
    """Inverter AC limit (the array is oversized, DC/AC = 1.2: it clips on clear noons)."""
    ac_rating_va: float = 100_000.0
    """Apparent power rating: P and Q share it (P first)."""
    var_rating: float = 60_000.0
    """Most reactive power, injecting or absorbing."""
    inverter_efficiency: float = 0.975
    derate: float = 0.88
    """Soiling, wiring, mismatch and the tilt we do not model (GHI stands in for POA)."""
    temperature_coefficient_per_k: float = -0.0037
    cell_rise_k_per_wm2: float = 0.03
    """Cell temperature rise over ambient per W/m² (≈ 24 K at 800 W/m², the NOCT rule)."""
    heatsink_rise_k: float = 25.0
    """Heatsink rise over ambient at rated AC power."""
    thermal_time_constant_s: float = 600.0
    trip_v_min_pu: float = 0.88
    trip_v_max_pu: float = 1.10
    """Outside these terminal voltages the inverter trips at once (ceases to energize)."""
    trip_f_min_pu: float = 0.975
    trip_f_max_pu: float = 1.02
    """... and outside these frequencies, per unit of nominal (58.5 / 61.2 Hz at 60 Hz)."""
    reconnect_delay_s: float = 0.0
    """How long voltage and frequency must be back inside the trip limits before the
    inverter reconnects by itself: none by default, as on a device without an enter-service
    delay of its own (a controller must hold it back)."""


@dataclass(frozen=True, slots=True)
class PvState:
    power_limit_pct: float = 100.0
    """Writable active power limit, % of the AC rating (SunSpec WMaxLimPct)."""
    irradiance_wm2: float = 0.0
    dc_power_w: float = 0.0
    ac_power_w: float = 0.0
    energy_wh: float = 0.0
    """Lifetime AC yield; only grows."""
    heatsink_temperature_degc: float = 20.0
    operating_state: int = InverterState.SLEEPING
    reactive_mode: ReactiveMode = ReactiveMode()
    """What sets the reactive power (written through SunSpec 704/705)."""
    reactive_power_var: float = 0.0
    """Reactive power now, positive = injecting."""
    volt_watt_mode: VoltWattMode = VoltWattMode()
    """The inverter's own volt-watt function (written through SunSpec 706)."""
    volt_watt_pct: float = 100.0
    """The limit volt-watt sets now (lagging its curve), % of the AC rating; the output is
    held under the lowest of it, ``droop_pct`` and ``power_limit_pct``."""
    freq_droop_mode: FreqDroopMode = FreqDroopMode()
    """The inverter's own frequency droop (written through SunSpec 711)."""
    droop_pct: float = 100.0
    """The limit frequency droop sets now, % of the AC rating (100 while idle)."""
    droop_p_pre_pct: float | None = None
    """The output when the present frequency excursion began, % of the AC rating."""
    available_w: float = 0.0
    """What the inverter could deliver now without its limits (SunSpec 122 WAval): the
    sun's power through the inverter, up to its rating; 0 while tripped."""
    tripped: bool = False
    """Ceased to energize on a voltage or frequency outside the trip limits."""
    trip_clear_s: float = 0.0
    """While tripped: how long voltage and frequency have been back inside the limits."""


def pv_output_w(
    params: PvParams, irradiance_wm2: float, ambient_degc: float, limit_pct: float
) -> tuple[float, float, bool]:
    """(DC power available, AC power delivered, throttled) for the given conditions.

    ``throttled`` is True when the power limit, not the sun or the inverter rating, caps the
    output.
    """
    cell_degc = ambient_degc + params.cell_rise_k_per_wm2 * irradiance_wm2
    temperature_factor = 1.0 + params.temperature_coefficient_per_k * (cell_degc - 25.0)
    dc_w = max(
        0.0, params.dc_rating_w * irradiance_wm2 / 1000.0 * params.derate * temperature_factor
    )
    available_ac = min(dc_w * params.inverter_efficiency, params.ac_rating_w)
    limit_w = _clamp(limit_pct, 0.0, 100.0) / 100.0 * params.ac_rating_w
    ac_w = min(available_ac, limit_w)
    return dc_w, ac_w, limit_w < available_ac


def trip_step(
    params: PvParams,
    tripped: bool,
    clear_s: float,
    *,
    voltage_pu: float,
    frequency_pu: float,
    dt_s: float,
) -> tuple[bool, float]:
    """(tripped, seconds back inside the limits) after ``dt_s``: a voltage or frequency
    outside the trip limits trips at once; the inverter reconnects once both have been back
    inside for ``reconnect_delay_s``."""
    inside = (
        params.trip_v_min_pu <= voltage_pu <= params.trip_v_max_pu
        and params.trip_f_min_pu <= frequency_pu <= params.trip_f_max_pu
    )
    if not inside:
        return True, 0.0
    if not tripped:
        return False, 0.0
    clear_s += dt_s
    return (False, 0.0) if clear_s >= params.reconnect_delay_s else (True, clear_s)


def step_pv(
    params: PvParams,
    state: PvState,
    irradiance_wm2: float,
    ambient_degc: float,
    dt_s: float,
    *,
    voltage_pu: float = 1.0,
    frequency_hz: float = 50.0,
    nominal_hz: float = 50.0,
) -> PvState:
    """Advance the inverter by ``dt_s``: output follows the sun at once, heatsink, reactive
    power, the volt-watt and the frequency-droop limits lag. ``voltage_pu``: terminal
    voltage, per unit of nominal; ``frequency_hz``: the grid frequency it measures."""
    volt_watt = state.volt_watt_mode
    volt_watt_target = _interpolate(volt_watt.curve, voltage_pu) if volt_watt.curve else 100.0
    volt_watt_pct = _lag(state.volt_watt_pct, volt_watt_target, dt_s, volt_watt.response_s)
    droop_pct, p_pre_pct = droop_step(
        state.freq_droop_mode, state.droop_pct, state.droop_p_pre_pct,
        frequency_hz=frequency_hz, nominal_hz=nominal_hz,
        output_pct=100.0 * state.ac_power_w / params.ac_rating_w, dt_s=dt_s,
    )  # fmt: skip
    tripped, trip_clear_s = trip_step(
        params, state.tripped, state.trip_clear_s, voltage_pu=voltage_pu,
        frequency_pu=frequency_hz / nominal_hz, dt_s=dt_s,
    )  # fmt: skip
    dc_available, ac_w, throttled = pv_output_w(
        params, irradiance_wm2, ambient_degc, min(state.power_limit_pct, volt_watt_pct, droop_pct)
    )
    if tripped:  # ceased to energize: nothing out, whatever the sun and the limits
        ac_w, throttled = 0.0, False
        operating = InverterState.OFF
    elif ac_w <= 0.0 and irradiance_wm2 <= 0.0:
        operating = InverterState.SLEEPING
    elif throttled:
        operating = InverterState.THROTTLED
    else:
        operating = InverterState.MPPT
    available_w = (
        0.0 if tripped else min(dc_available * params.inverter_efficiency, params.ac_rating_w)
    )
    # When throttled the MPP tracker moves off the maximum: DC drawn is what AC needs.
    dc_w = ac_w / params.inverter_efficiency if throttled else dc_available
    if tripped:
        dc_w = 0.0  # the strings sit at open circuit
    heatsink_target = ambient_degc + params.heatsink_rise_k * ac_w / params.ac_rating_w
    decay = math.exp(-dt_s / params.thermal_time_constant_s)
    mode = state.reactive_mode
    target_var = reactive_target_var(mode, ac_w, voltage_pu)
    var = 0.0 if tripped else _lag(state.reactive_power_var, target_var, dt_s, mode.response_s)
    headroom_var = math.sqrt(max(params.ac_rating_va**2 - ac_w**2, 0.0))
    limit_var = min(params.var_rating, headroom_var)
    return replace(
        state,
        reactive_power_var=_clamp(var, -limit_var, limit_var),
        volt_watt_pct=volt_watt_pct,
        droop_pct=droop_pct,
        droop_p_pre_pct=p_pre_pct,
        tripped=tripped,
        trip_clear_s=trip_clear_s,
        available_w=available_w,
        irradiance_wm2=irradiance_wm2,
        dc_power_w=dc_w,
        ac_power_w=ac_w,
        energy_wh=state.energy_wh + ac_w * dt_s / SECONDS_PER_HOUR,
        heatsink_temperature_degc=heatsink_target
        + (state.heatsink_temperature_degc - heatsink_target) * decay,
        operating_state=operating,
    )


# --------------------------------------------------------------------------------------------
# Battery


@dataclass(frozen=True, slots=True)
class BatteryParams:
    """A commercial battery system (rack + bidirectional inverter)."""

    capacity_wh: float = 200_000.0
    max_charge_w: float = 50_000.0
    max_discharge_w: float = 50_000.0
    charge_efficiency: float = 0.96
    """Stored energy per AC energy taken while charging."""
    discharge_efficiency: float = 0.96
    """AC energy delivered per stored energy while discharging (round trip ≈ 92 %)."""
    soc_min_pct: float = 5.0
    soc_max_pct: float = 95.0
    nominal_voltage_v: float = 700.0
    idle_temperature_degc: float = 23.0
    temperature_rise_k: float = 10.0
    """Cell temperature rise at full power (grows with the square of the current)."""
    thermal_time_constant_s: float = 1800.0


@dataclass(frozen=True, slots=True)
class BatteryState:
    soc_pct: float = 50.0
    setpoint_w: float = 0.0
    """Writable active power setpoint (positive = discharge)."""
    active_power_w: float = 0.0
    """Actual AC power after the limits (positive = discharge)."""
    energy_charged_wh: float = 0.0
    """AC energy taken in; only grows."""
    energy_discharged_wh: float = 0.0
    """AC energy delivered; only grows."""
    cell_temperature_degc: float = 23.0
    power_limited: bool = False
    """The last step delivered less than the setpoint asked for."""

    def at_low_limit(self, params: BatteryParams) -> bool:
        return self.soc_pct <= params.soc_min_pct + 1e-9

    def at_high_limit(self, params: BatteryParams) -> bool:
        return self.soc_pct >= params.soc_max_pct - 1e-9


def battery_available_power_w(params: BatteryParams, soc_pct: float) -> tuple[float, float]:
    """(charge, discharge) power on offer: rated inside the SoC window, 0 at its ends."""
    charge = params.max_charge_w if soc_pct < params.soc_max_pct - 1e-9 else 0.0
    discharge = params.max_discharge_w if soc_pct > params.soc_min_pct + 1e-9 else 0.0
    return charge, discharge


def step_battery(params: BatteryParams, state: BatteryState, dt_s: float) -> BatteryState:
    """Follow the setpoint within the power limits and without leaving the SoC window.

    Within one step the power is constant; near an end of the window it is reduced so that
    the SoC lands exactly on the limit (the energy left over ``dt_s``), never past it.
    """
    if dt_s <= 0.0:
        return state
    target = _clamp(state.setpoint_w, -params.max_charge_w, params.max_discharge_w)
    soc = state.soc_pct
    if target > 0.0:
        stored_above_min_wh = max(0.0, (soc - params.soc_min_pct) / 100.0 * params.capacity_wh)
        energy_limited_w = (
            stored_above_min_wh * params.discharge_efficiency * SECONDS_PER_HOUR / dt_s
        )
        power = min(target, energy_limited_w)
        soc -= (
            power * dt_s / SECONDS_PER_HOUR / params.discharge_efficiency / params.capacity_wh * 100
        )
    elif target < 0.0:
        room_below_max_wh = max(0.0, (params.soc_max_pct - soc) / 100.0 * params.capacity_wh)
        energy_limited_w = room_below_max_wh / params.charge_efficiency * SECONDS_PER_HOUR / dt_s
        power = -min(-target, energy_limited_w)
        soc -= power * dt_s / SECONDS_PER_HOUR * params.charge_efficiency / params.capacity_wh * 100
    else:
        power = 0.0
    # Rounding must not push the SoC a hair outside the window.
    soc = _clamp(
        soc, min(params.soc_min_pct, state.soc_pct), max(params.soc_max_pct, state.soc_pct)
    )
    load = abs(power) / max(params.max_charge_w, params.max_discharge_w)
    target_temp = params.idle_temperature_degc + params.temperature_rise_k * load * load
    decay = math.exp(-dt_s / params.thermal_time_constant_s)
    energy_wh = abs(power) * dt_s / SECONDS_PER_HOUR
    return replace(
        state,
        soc_pct=soc,
        active_power_w=power,
        energy_charged_wh=state.energy_charged_wh + (energy_wh if power < 0 else 0.0),
        energy_discharged_wh=state.energy_discharged_wh + (energy_wh if power > 0 else 0.0),
        cell_temperature_degc=target_temp + (state.cell_temperature_degc - target_temp) * decay,
        power_limited=abs(power - state.setpoint_w) > 1e-6,
    )


def battery_dc_voltage_v(params: BatteryParams, soc_pct: float) -> float:
    """Rack voltage: a straight open-circuit-voltage line, 92 % of nominal empty to 108 % full."""
    return params.nominal_voltage_v * (0.92 + 0.16 * _clamp(soc_pct, 0.0, 100.0) / 100.0)


def battery_dc_current_a(params: BatteryParams, state: BatteryState) -> float:
    """DC current (positive = discharge): the inverter's losses come out of the DC side."""
    power = state.active_power_w
    dc_w = power / params.discharge_efficiency if power > 0 else power * params.charge_efficiency
    return dc_w / battery_dc_voltage_v(params, state.soc_pct)


# --------------------------------------------------------------------------------------------
# HVAC zones (1R1C) and their chillers


def rc_coefficient(dt_s: float, resistance_k_per_w: float, capacitance_j_per_k: float) -> float:
    """a = exp(-Δt/(R·C)) of the exact 1R1C discretisation."""
    return math.exp(-dt_s / (resistance_k_per_w * capacitance_j_per_k))


def rc_step(
    temperature_degc: float,
    outdoor_degc: float,
    heat_w: float,
    dt_s: float,
    *,
    resistance_k_per_w: float,
    capacitance_j_per_k: float,
) -> float:
    """One exact 1R1C step: T_{k+1} = a·T_k + (1 - a)(T_o + R·Q_k).

    ``heat_w`` is the net heat into the zone (gains minus cooling), held constant over the step.
    """
    a = rc_coefficient(dt_s, resistance_k_per_w, capacitance_j_per_k)
    return a * temperature_degc + (1.0 - a) * (outdoor_degc + resistance_k_per_w * heat_w)


@dataclass(frozen=True, slots=True)
class ZoneParams:
    """One thermal zone of the office and the chiller that serves it."""

    resistance_k_per_w: float = 0.002
    """Envelope + ventilation: UA = 500 W/K."""
    capacitance_j_per_k: float = 18e6
    """Air and furnishings: R·C = 10 h."""
    internal_gain_occupied_w: float = 15_000.0
    internal_gain_unoccupied_w: float = 3_000.0
    solar_aperture_m2: float = 25.0
    """Window area times solar heat gain coefficient: solar gain = aperture · irradiance."""
    chiller_capacity_w: float = 60_000.0
    """Thermal cooling capacity."""
    chiller_ramp_w_per_s: float = 200.0
    """Capacity change rate (a full ramp takes 5 minutes)."""
    carnot_fraction: float = 0.45
    chilled_water_degc: float = 7.0
    condenser_approach_k: float = 8.0
    """Condensing temperature above outdoor air."""
    cop_min: float = 1.5
    cop_max: float = 7.0
    unoccupied_setpoint_degc: float = 28.0
    """Setback outside office hours: the chiller only runs if the zone gets warmer than this."""


@dataclass(frozen=True, slots=True)
class ZoneState:
    temperature_degc: float = 23.0
    setpoint_degc: float = 22.0
    """Writable occupied cooling setpoint."""
    effective_setpoint_degc: float = 22.0
    """What the thermostat controls to now: the setpoint, or the setback when unoccupied."""
    occupied: bool = False
    cooling_w: float = 0.0
    """Thermal power removed by the chiller."""
    chiller_power_w: float = 0.0
    """Electric power of the chiller."""


def chiller_cop(params: ZoneParams, outdoor_degc: float) -> float:
    """Carnot fraction: COP = η·T_cold/(T_hot - T_cold), kelvin; falls as it gets hotter outside."""
    t_cold = params.chilled_water_degc + KELVIN
    t_hot = outdoor_degc + params.condenser_approach_k + KELVIN
    lift = t_hot - t_cold
    if lift <= 0.0:
        return params.cop_max
    return _clamp(params.carnot_fraction * t_cold / lift, params.cop_min, params.cop_max)


def cooling_to_reach_w(
    target_degc: float,
    temperature_degc: float,
    *,
    outdoor_degc: float,
    gains_w: float,
    dt_s: float,
    resistance_k_per_w: float,
    capacitance_j_per_k: float,
) -> float:
    """Cooling that lands the zone exactly on ``target_degc`` after ``dt_s`` (may be negative).

    Solves T_target = a·T + (1 - a)(T_o + R·(gains - Q_cool)) for Q_cool.
    """
    a = rc_coefficient(dt_s, resistance_k_per_w, capacitance_j_per_k)
    equilibrium = (target_degc - a * temperature_degc) / (1.0 - a)
    return gains_w + (outdoor_degc - equilibrium) / resistance_k_per_w


def zone_gains_w(params: ZoneParams, occupied: bool, irradiance_wm2: float) -> float:
    internal = params.internal_gain_occupied_w if occupied else params.internal_gain_unoccupied_w
    return internal + params.solar_aperture_m2 * irradiance_wm2


def step_zone(
    params: ZoneParams,
    state: ZoneState,
    *,
    outdoor_degc: float,
    irradiance_wm2: float,
    occupied: bool,
    dt_s: float,
) -> ZoneState:
    """Thermostat + chiller + 1R1C zone over ``dt_s``.

    The thermostat asks for the cooling that reaches the effective setpoint by the end of
    the step (an ideal controller); the chiller delivers it within its capacity and ramp
    rate, cooling only. Unoccupied, the setpoint is raised to the setback.
    """
    if dt_s <= 0.0:
        return state
    effective = (
        state.setpoint_degc
        if occupied
        else max(state.setpoint_degc, params.unoccupied_setpoint_degc)
    )
    gains = zone_gains_w(params, occupied, irradiance_wm2)
    wanted = cooling_to_reach_w(
        effective,
        state.temperature_degc,
        outdoor_degc=outdoor_degc,
        gains_w=gains,
        dt_s=dt_s,
        resistance_k_per_w=params.resistance_k_per_w,
        capacitance_j_per_k=params.capacitance_j_per_k,
    )
    ramp = params.chiller_ramp_w_per_s * dt_s
    cooling = _clamp(wanted, state.cooling_w - ramp, state.cooling_w + ramp)
    cooling = _clamp(cooling, 0.0, params.chiller_capacity_w)
    temperature = rc_step(
        state.temperature_degc,
        outdoor_degc,
        gains - cooling,
        dt_s,
        resistance_k_per_w=params.resistance_k_per_w,
        capacitance_j_per_k=params.capacitance_j_per_k,
    )
    return replace(
        state,
        temperature_degc=temperature,
        effective_setpoint_degc=effective,
        occupied=occupied,
        cooling_w=cooling,
        chiller_power_w=cooling / chiller_cop(params, outdoor_degc),
    )


# --------------------------------------------------------------------------------------------
# VFD fan


@dataclass(frozen=True, slots=True)
class FanParams:
    """An air-handling unit's supply fan on a variable frequency drive."""

    rated_power_w: float = 15_000.0
    rated_speed_rpm: float = 1480.0
    rated_frequency_hz: float = 50.0
    ramp_pct_per_s: float = 10.0
    """Acceleration and deceleration: 0 → 100 % in 10 s."""
    rated_voltage_v: float = 400.0
    power_factor: float = 0.86
    at_speed_band_pct: float = 0.5


@dataclass(frozen=True, slots=True)
class FanState:
    run_command: bool = True
    """Writable run/stop command (a coil)."""
    speed_setpoint_pct: float = 80.0
    """Writable speed reference, % of rated speed."""
    speed_pct: float = 0.0
    energy_wh: float = 0.0
    """Electric energy taken; only grows."""

    def target_pct(self) -> float:
        return self.speed_setpoint_pct if self.run_command else 0.0

    @property
    def running(self) -> bool:
        return self.speed_pct > 0.0

    def at_speed(self, params: FanParams) -> bool:
        return (
            self.run_command and abs(self.speed_pct - self.target_pct()) <= params.at_speed_band_pct
        )


def fan_power_w(params: FanParams, speed_pct: float) -> float:
    """Affinity law: P = P_rated·(n/n_rated)³ (at 80 % speed: 51.2 %)."""
    ratio = max(0.0, speed_pct) / 100.0
    return params.rated_power_w * ratio**3


def fan_frequency_hz(params: FanParams, speed_pct: float) -> float:
    return params.rated_frequency_hz * speed_pct / 100.0


def fan_speed_rpm(params: FanParams, speed_pct: float) -> float:
    return params.rated_speed_rpm * speed_pct / 100.0


def fan_current_a(params: FanParams, speed_pct: float) -> float:
    """Line current drawn by the drive (it keeps the input power factor near constant)."""
    return fan_power_w(params, speed_pct) / (SQRT3 * params.rated_voltage_v * params.power_factor)


def step_fan(params: FanParams, state: FanState, dt_s: float) -> FanState:
    """Ramp the speed towards the reference; energy integrates the power over the step.

    The power of a step is the mean of the start and end powers of the ramp, exact enough
    for a ramp that takes seconds.
    """
    if dt_s <= 0.0:
        return state
    target = _clamp(state.target_pct(), 0.0, 100.0)
    step = params.ramp_pct_per_s * dt_s
    speed = _clamp(target, state.speed_pct - step, state.speed_pct + step)
    mean_power = 0.5 * (fan_power_w(params, state.speed_pct) + fan_power_w(params, speed))
    return replace(
        state,
        speed_pct=speed,
        energy_wh=state.energy_wh + mean_power * dt_s / SECONDS_PER_HOUR,
    )


# --------------------------------------------------------------------------------------------
# 4-20 mA loops


NAMUR_LOW_MA = 3.8
NAMUR_HIGH_MA = 20.5


@dataclass(frozen=True, slots=True)
class LoopRange:
    """Measuring range of a 4-20 mA transmitter: ``lo`` at 4 mA, ``hi`` at 20 mA."""

    lo: float
    hi: float

    def current_ma(self, value: float) -> float:
        """The loop current a transmitter drives for ``value`` (saturates at 3.8 / 20.5 mA)."""
        current = 4.0 + 16.0 * (value - self.lo) / (self.hi - self.lo)
        return _clamp(current, NAMUR_LOW_MA, NAMUR_HIGH_MA)

    def value(self, current_ma: float) -> float:
        """value = lo + (I - 4)/16·(hi - lo)."""
        return self.lo + (current_ma - 4.0) / 16.0 * (self.hi - self.lo)

    def register_scale(self, raw_per_ma: float = 1000.0) -> tuple[float, float]:
        """(scale, offset) so that value = raw · scale + offset for a register in mA · raw_per_ma.

        With raw in µA (raw_per_ma = 1000): 4000 → lo, 20000 → hi.
        """
        scale = (self.hi - self.lo) / (16.0 * raw_per_ma)
        offset = self.lo - 4.0 * (self.hi - self.lo) / 16.0
        return scale, offset

    def valid_range(self) -> tuple[float, float]:
        """Values the NE 43 measuring window 3.8-20.5 mA can carry; outside is a loop fault."""
        return self.value(NAMUR_LOW_MA), self.value(NAMUR_HIGH_MA)


def loop_fault(current_ma: float) -> bool:
    """NAMUR NE 43: ≤ 3.6 mA or ≥ 21 mA signals a failed transmitter or a broken wire."""
    return current_ma <= 3.6 or current_ma >= 21.0


# --------------------------------------------------------------------------------------------
# Load panel: switchable (sheddable) circuits


@dataclass(frozen=True, slots=True)
class CircuitParams:
    """A switchable circuit of the load panel: a contactor the EMS may open to shed load.

    The circuit draws ``demand_w`` on weekdays between ``from_hour`` and ``until_hour``
    (local time of ``now``) while its contactor is closed, nothing otherwise.
    """

    name: str
    demand_w: float
    from_hour: float = 8.0
    until_hour: float = 18.0


@dataclass(frozen=True, slots=True)
class LoadPanelParams:
    circuits: tuple[CircuitParams, ...] = (
        CircuitParams("ev_chargers", 22_000.0, 8.0, 18.0),
        CircuitParams("water_heaters", 12_000.0, 6.0, 20.0),
        CircuitParams("kitchen_extract", 6_000.0, 11.0, 14.0),
    )


def circuit_powers_w(
    params: LoadPanelParams, on: tuple[bool, ...], now: datetime
) -> tuple[float, ...]:
    """Power of each circuit at ``now``: its demand while on and in its hours, else 0."""
    hour = hour_of_day(now)
    weekday = now.weekday() < 5
    return tuple(
        c.demand_w if is_on and weekday and c.from_hour <= hour < c.until_hour else 0.0
        for c, is_on in zip(params.circuits, on, strict=True)
    )


# --------------------------------------------------------------------------------------------
# Grid meter


def grid_power_w(
    base_w: float, chillers_w: float, fan_w: float, pv_w: float, battery_w: float
) -> float:
    """Power at the grid connection, import positive: loads - PV - battery discharge."""
    return base_w + chillers_w + fan_w - pv_w - battery_w


@dataclass(frozen=True, slots=True)
class PowerFlows:
    """Active powers at the building bus during one step, W (signs as in the module doc)."""

    base_w: float
    chillers_w: float
    fan_w: float
    pv_w: float
    battery_w: float
    switched_w: float = 0.0
    """Loads on the switchable circuits of the load panel (sheddable), three-phase."""
    pv_var: float = 0.0
    """Reactive power the PV inverter injects (positive) or absorbs, three-phase."""

    @property
    def grid_w(self) -> float:
        return grid_power_w(
            self.base_w + self.switched_w, self.chillers_w, self.fan_w, self.pv_w, self.battery_w
        )


@dataclass(frozen=True, slots=True)
class MeterParams:
    nominal_voltage_v: float = 230.0
    tap_offset_v: float = 1.5
    """Transformer tap: the no-load voltage sits a little above nominal."""
    droop_v_per_kw: float = 0.04
    """Voltage drop per kW imported on a phase (source impedance); export raises it."""
    voltage_noise_v: float = 0.3
    nominal_frequency_hz: float = 50.0
    frequency_noise_hz: float = 0.004
    frequency_swing_hz: float = 0.02
    frequency_period_s: float = 900.0
    load_power_factor: float = 0.95
    """Lagging power factor of the building's loads; PV and battery run at unity."""
    base_load_phase_share: tuple[float, float, float] = (0.36, 0.33, 0.31)
    """Single-phase loads are never spread evenly."""


@dataclass(frozen=True, slots=True)
class MeterReading:
    """Instantaneous quantities of a three-phase meter (import positive)."""

    voltage_v: tuple[float, float, float] = (230.0, 230.0, 230.0)
    current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    active_power_phase_w: tuple[float, float, float] = (0.0, 0.0, 0.0)
    active_power_w: float = 0.0
    reactive_power_var: float = 0.0
    apparent_power_va: float = 0.0
    power_factor: float = 1.0
    frequency_hz: float = 50.0


@dataclass(frozen=True, slots=True)
class MeterState:
    energy_import_wh: float = 0.0
    """Only grows."""
    energy_export_wh: float = 0.0
    """Only grows."""
    reading: MeterReading = MeterReading()


def meter_reading(
    params: MeterParams,
    flows: PowerFlows,
    now: datetime,
    rng: random.Random,
    source_voltage_v: float | None = None,
    *,
    frequency_hz: float | None = None,
) -> MeterReading:
    """Per-phase voltage (with noise), current, power, frequency for the flows at ``now``.

    ``source_voltage_v``: the grid's no-load phase voltage; default nominal plus the tap.
    ``frequency_hz``: the grid frequency held (a test's excursion): no slow swing, the
    noise stays; default nominal with the swing.
    """
    three_phase_loads_w = flows.chillers_w + flows.fan_w + flows.switched_w
    loads_w = flows.base_w + three_phase_loads_w
    tan_phi = math.tan(math.acos(params.load_power_factor))
    balanced_w = three_phase_loads_w - flows.pv_w - flows.battery_w
    phase_p = tuple(
        flows.base_w * share + balanced_w / 3.0 for share in params.base_load_phase_share
    )
    phase_q = tuple(
        (flows.base_w * share + three_phase_loads_w / 3.0) * tan_phi - flows.pv_var / 3.0
        for share in params.base_load_phase_share
    )
    source_v = (
        params.nominal_voltage_v + params.tap_offset_v
        if source_voltage_v is None
        else source_voltage_v
    )
    voltages = tuple(
        source_v - params.droop_v_per_kw * p / 1000.0 + rng.gauss(0.0, params.voltage_noise_v)
        for p in phase_p
    )
    currents = tuple(
        math.hypot(p, q) / v for p, q, v in zip(phase_p, phase_q, voltages, strict=True)
    )
    total_p = sum(phase_p)
    total_q = loads_w * tan_phi - flows.pv_var
    apparent = math.hypot(total_p, total_q)
    seconds = now.timestamp()
    phase = 2.0 * math.pi * seconds / params.frequency_period_s
    swing = params.frequency_swing_hz * math.sin(phase)
    centre = params.nominal_frequency_hz + swing if frequency_hz is None else frequency_hz
    frequency = centre + rng.gauss(0.0, params.frequency_noise_hz)
    return MeterReading(
        voltage_v=(voltages[0], voltages[1], voltages[2]),
        current_a=(currents[0], currents[1], currents[2]),
        active_power_phase_w=(phase_p[0], phase_p[1], phase_p[2]),
        active_power_w=total_p,
        reactive_power_var=total_q,
        apparent_power_va=apparent,
        power_factor=total_p / apparent if apparent > 0.0 else 1.0,
        frequency_hz=frequency,
    )


def step_meter(
    params: MeterParams,
    state: MeterState,
    flows: PowerFlows,
    *,
    now: datetime,
    dt_s: float,
    rng: random.Random,
    source_voltage_v: float | None = None,
    frequency_hz: float | None = None,
) -> MeterState:
    """Integrate import and export energy over ``dt_s`` and take a new reading at ``now``."""
    grid = flows.grid_w
    energy = abs(grid) * max(dt_s, 0.0) / SECONDS_PER_HOUR
    return MeterState(
        energy_import_wh=state.energy_import_wh + (energy if grid > 0 else 0.0),
        energy_export_wh=state.energy_export_wh + (energy if grid < 0 else 0.0),
        reading=meter_reading(params, flows, now, rng, source_voltage_v, frequency_hz=frequency_hz),
    )
