"""IEEE 1547-2018 DER functions with the Category B defaults, as pure curve functions.

Everything here is a function of its inputs (and of an explicit ``now`` where time matters):
no clock, no I/O. The controllers that apply them to inverters
(:mod:`gridpilot.control.volt_var`, :mod:`gridpilot.control.volt_watt`,
:mod:`gridpilot.control.freq_droop`, :mod:`gridpilot.control.constant_pf`,
:mod:`gridpilot.control.watt_var`, :mod:`gridpilot.control.enter_service`) are built on
top; the simulator's inverter has its own implementation and is tested against this one.

Units and signs (IEEE 1547-2018 clause 5.3 and the SunSpec DER models agree):

* voltage in per unit of the nominal voltage (``v_pu``), frequency in Hz;
* reactive power in per unit of the rated apparent power (``q_pu``, Category B: ±0.44),
  **positive = injecting** (over-excited, raises the voltage), negative = absorbing;
* active power in per unit of the rated active power (``p_pu``) or in W where named ``_w``,
  positive = generation / discharge.

Functions (defaults from IEEE 1547-2018 tables 7, 8, 9, 10, 11 and clause 4.10, Category B;
``DOMAIN.md`` "IEEE 1547-2018"):

==========================  ========================================================
constant power factor       PF 1.0 by default, 0.90 injecting .. 0.90 absorbing
volt-var                    (0.92, +0.44) (0.98, 0) (1.02, 0) (1.08, -0.44), V_ref 1.0
                            adjustable 0.95-1.05 (shifts the curve), 5 s response
watt-var                    (max(0.2, Pmin/Prated), 0) (0.5, 0) (1.0, -0.44)
volt-watt                   1.06 -> 1.0, 1.10 -> min(0.2, Pmin/Prated) (0 for storage that
                            can absorb), 10 s response
frequency droop             dead band 0.036 Hz both ways, droop 5 %, headroom-limited
limit active power          % of rated, never above what is available
enter service               0.917 <= V <= 1.05 pu and 59.5 <= f <= 60.1 Hz for 300 s,
                            then a 300 s ramp
response filter             first order, 90 % of a step in the open-loop response time
==========================  ========================================================

Curves saturate outside their points: below the first point the first y holds, above the
last the last y. Errors are ``CurveError`` (a ``ValueError``) naming the point that is wrong.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "CATEGORY_B_VOLT_VAR",
    "MAX_CURVE_POINTS",
    "ConstantPowerFactor",
    "Curve",
    "CurveError",
    "EnterService",
    "EnterServicePhase",
    "EnterServiceState",
    "Excitation",
    "FrequencyDroop",
    "ResponseFilter",
    "VoltVar",
    "VoltWatt",
    "WattVar",
    "constant_pf_var",
    "frequency_droop_w",
    "limit_active_power_w",
    "response_step",
    "volt_var_q_pu",
    "volt_watt_p_pu",
    "watt_var_q_pu",
]

MIN_CURVE_POINTS = 2
MAX_CURVE_POINTS = 10
"""IEEE 2030.5 DERCurve and SunSpec 705/706/712 carry at most 10 points."""

LN_10 = math.log(10.0)
"""A first-order lag reaches 90 % of a step after ``tau · ln 10``."""


class CurveError(ValueError):
    """A curve or setting that IEEE 1547 (or common sense) does not allow; says which part."""


# ---------------------------------------------------------------------------- curves


@dataclass(frozen=True, slots=True)
class Curve:
    """A piecewise-linear curve through ``points`` ``(x, y)``, saturating outside them.

    ``x`` must not decrease from one point to the next; two points may share an ``x`` only
    with the same ``y`` (a vertical step would make ``y`` ambiguous there).
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        count = len(self.points)
        if not MIN_CURVE_POINTS <= count <= MAX_CURVE_POINTS:
            raise CurveError(
                f"a curve has {MIN_CURVE_POINTS} to {MAX_CURVE_POINTS} points, this one {count}"
            )
        for index, (x, y) in enumerate(self.points, start=1):
            if not (math.isfinite(x) and math.isfinite(y)):
                raise CurveError(f"point {index} ({x}, {y}) is not a pair of finite numbers")
        for index in range(1, count):
            (x0, y0), (x1, y1) = self.points[index - 1], self.points[index]
            if x1 < x0:
                raise CurveError(
                    f"x must not decrease: point {index + 1} (x={x1:g}) is below "
                    f"point {index} (x={x0:g})"
                )
            if x1 == x0 and y1 != y0:
                raise CurveError(
                    f"points {index} and {index + 1} share x={x0:g} with different y "
                    f"({y0:g}, {y1:g}): a vertical step has no single value"
                )

    @property
    def xs(self) -> tuple[float, ...]:
        return tuple(x for x, _ in self.points)

    def value(self, x: float) -> float:
        """``y`` at ``x``: linear between points, the end values outside them."""
        points = self.points
        if x <= points[0][0]:
            return points[0][1]
        if x >= points[-1][0]:
            return points[-1][1]
        # First point strictly right of x; its left neighbour is at or below x.
        right = bisect.bisect_right(self.xs, x)
        (x0, y0), (x1, y1) = points[right - 1], points[right]
        if x1 == x0:  # pragma: no cover - bisect_right never lands inside a zero-width step
            return y1
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def shifted(self, dx: float) -> Curve:
        """The same curve moved right by ``dx`` (a V_ref adjustment)."""
        return Curve(tuple((x + dx, y) for x, y in self.points))


CATEGORY_B_VOLT_VAR: tuple[tuple[float, float], ...] = (
    (0.92, 0.44),
    (0.98, 0.0),
    (1.02, 0.0),
    (1.08, -0.44),
)
"""Volt-var, Category B defaults: (V pu of nominal, Q pu of rated VA), injecting positive."""

CATEGORY_B_REACTIVE_PU = 0.44
"""Category B reactive capability, injecting and absorbing, pu of rated VA."""


# ---------------------------------------------------------------------------- constant PF


class Excitation(StrEnum):
    """Which way the reactive power flows at a power factor below one."""

    INJECTING = "injecting"
    """Over-excited: reactive power out of the DER (raises the voltage)."""
    ABSORBING = "absorbing"
    """Under-excited: reactive power into the DER (lowers the voltage)."""


@dataclass(frozen=True, slots=True)
class ConstantPowerFactor:
    """Constant power factor mode: default 1.0; 0.90 injecting to 0.90 absorbing."""

    pf: float = 1.0
    excitation: Excitation = Excitation.INJECTING
    min_pf: float = 0.90
    """The lowest power factor the DER must support (Category B, both ways)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_pf <= 1.0:
            raise CurveError(f"min_pf {self.min_pf:g} is not in (0, 1]")
        if not self.min_pf <= self.pf <= 1.0:
            raise CurveError(
                f"power factor {self.pf:g} is outside {self.min_pf:g}..1.0 "
                f"({self.excitation.value})"
            )


def constant_pf_var(p_w: float, setting: ConstantPowerFactor) -> float:
    """Reactive power, var, that holds ``setting.pf`` at active power ``p_w``.

    ``|Q| = |P| · tan(acos(pf))``, positive when injecting. The sign of ``P`` (a battery
    charging) does not turn the excitation around: the setting says which way Q flows.
    """
    if setting.pf >= 1.0:
        return 0.0
    magnitude = abs(p_w) * math.tan(math.acos(setting.pf))
    return magnitude if setting.excitation is Excitation.INJECTING else -magnitude


# ---------------------------------------------------------------------------- volt-var


@dataclass(frozen=True, slots=True)
class VoltVar:
    """Volt-var: Q (pu of rated VA) from V (pu of nominal), Category B by default.

    ``v_ref_pu`` (0.95..1.05) moves the whole curve: with V_ref = 1.02 the dead band is
    1.00..1.04. The curve's own points are written for V_ref = 1.0.
    """

    curve: Curve = field(default_factory=lambda: Curve(CATEGORY_B_VOLT_VAR))
    v_ref_pu: float = 1.0
    response_time_s: float = 5.0
    """Open-loop response time: 90 % of a step in this long."""

    def __post_init__(self) -> None:
        if not 0.95 <= self.v_ref_pu <= 1.05:
            raise CurveError(f"V_ref {self.v_ref_pu:g} pu is outside the adjustable 0.95..1.05")
        if not 0.0 <= self.response_time_s <= 90.0:
            raise CurveError(
                f"open-loop response time {self.response_time_s:g} s is outside 0..90 s"
            )
        for index, (_, q) in enumerate(self.curve.points, start=1):
            if abs(q) > 1.0:
                raise CurveError(f"point {index}: Q {q:g} pu is beyond the rated VA (|Q| <= 1)")

    def effective_curve(self) -> Curve:
        """The curve as it acts, shifted by V_ref."""
        return self.curve.shifted(self.v_ref_pu - 1.0)


def volt_var_q_pu(v_pu: float, setting: VoltVar) -> float:
    """The volt-var curve's reactive power at ``v_pu``, pu of rated VA (injecting +)."""
    return setting.curve.value(v_pu - (setting.v_ref_pu - 1.0))


# ---------------------------------------------------------------------------- watt-var


@dataclass(frozen=True, slots=True)
class WattVar:
    """Watt-var: Q (pu of rated VA) from P (pu of rated W), generating side."""

    curve: Curve

    @classmethod
    def category_b(cls, p_min_pu: float = 0.0) -> WattVar:
        """Category B defaults: (max(0.2, Pmin/Prated), 0), (0.5, 0), (1.0, -0.44)."""
        if not 0.0 <= p_min_pu < 0.5:
            raise CurveError(
                f"Pmin/Prated {p_min_pu:g} must be in 0..0.5 for the default watt-var curve "
                "(its first point would pass the second at P = 0.5)"
            )
        p1 = max(0.2, p_min_pu)
        return cls(Curve(((p1, 0.0), (0.5, 0.0), (1.0, -CATEGORY_B_REACTIVE_PU))))


def watt_var_q_pu(p_pu: float, setting: WattVar) -> float:
    """Watt-var reactive power at ``p_pu``, pu of rated VA (absorbing is negative)."""
    return setting.curve.value(p_pu)


# ---------------------------------------------------------------------------- volt-watt


@dataclass(frozen=True, slots=True)
class VoltWatt:
    """Volt-watt: the most active power (pu of rated W) allowed at V (pu of nominal)."""

    curve: Curve
    response_time_s: float = 10.0

    @classmethod
    def category_b(cls, p_min_pu: float = 0.0, *, storage_can_absorb: bool = False) -> VoltWatt:
        """Category B defaults: 1.06 pu -> 1.0, 1.10 pu -> min(0.2, Pmin/Prated), or 0 for
        storage that can absorb active power."""
        if not 0.0 <= p_min_pu <= 1.0:
            raise CurveError(f"Pmin/Prated {p_min_pu:g} is outside 0..1")
        p2 = 0.0 if storage_can_absorb else min(0.2, p_min_pu)
        return cls(Curve(((1.06, 1.0), (1.10, p2))))


def volt_watt_p_pu(v_pu: float, setting: VoltWatt) -> float:
    """The volt-watt limit at ``v_pu``, pu of rated active power."""
    return setting.curve.value(v_pu)


# ---------------------------------------------------------------------------- frequency


@dataclass(frozen=True, slots=True)
class FrequencyDroop:
    """Frequency droop (frequency-watt): dead band and droop, both directions.

    Over-frequency above ``nominal + db_of`` lowers the output by ``1/k_of`` of the rating
    per unit of frequency deviation; under-frequency below ``nominal - db_uf`` raises it the
    same way, as far as the headroom (the available power) goes.
    """

    nominal_hz: float = 60.0
    db_of_hz: float = 0.036
    db_uf_hz: float = 0.036
    k_of: float = 0.05
    k_uf: float = 0.05
    response_time_s: float = 5.0

    def __post_init__(self) -> None:
        if self.nominal_hz not in (50.0, 60.0):
            raise CurveError(f"nominal frequency {self.nominal_hz:g} Hz is neither 50 nor 60")
        for name in ("db_of_hz", "db_uf_hz"):
            value = getattr(self, name)
            if not 0.017 <= value <= 1.0:
                raise CurveError(f"{name} {value:g} Hz is outside 0.017..1.0")
        for name in ("k_of", "k_uf"):
            value = getattr(self, name)
            if not 0.02 <= value <= 0.05:
                raise CurveError(f"{name} {value:g} is outside 0.02..0.05 (2 % to 5 % droop)")


def frequency_droop_w(
    f_hz: float,
    *,
    p_pre_w: float,
    p_rated_w: float,
    p_avail_w: float,
    p_min_w: float = 0.0,
    setting: FrequencyDroop | None = None,
) -> float:
    """Active power, W, under frequency droop (IEEE 1547-2018 clause 6.5.2.7 equations).

    ``p_pre_w`` is the output before the excursion, ``p_avail_w`` what the source can give
    now (PV: the sun; storage: its discharge limit), ``p_min_w`` the least it may produce
    (storage: its most negative, i.e. full charge). Inside the dead band: ``p_pre_w``.
    """
    s = setting or FrequencyDroop()
    if p_rated_w <= 0.0:
        raise CurveError(f"rated power {p_rated_w:g} W must be positive")
    over = s.nominal_hz + s.db_of_hz
    under = s.nominal_hz - s.db_uf_hz
    if f_hz > over:
        drop = (f_hz - over) / (s.nominal_hz * s.k_of) * p_rated_w
        return max(p_pre_w - drop, p_min_w)
    if f_hz < under:
        rise = (under - f_hz) / (s.nominal_hz * s.k_uf) * p_rated_w
        return min(p_pre_w + rise, p_avail_w)  # the headroom is all there is
    return p_pre_w


# ---------------------------------------------------------------------------- limit P


def limit_active_power_w(p_avail_w: float, limit_pct: float, p_rated_w: float) -> float:
    """Limit active power: the lower of what is available and ``limit_pct`` of the rating."""
    if not 0.0 <= limit_pct <= 100.0:
        raise CurveError(f"active power limit {limit_pct:g} % is outside 0..100")
    return max(0.0, min(p_avail_w, limit_pct / 100.0 * p_rated_w))


# ---------------------------------------------------------------------------- enter service


class EnterServicePhase(StrEnum):
    WAITING = "waiting"
    """Out of service: voltage or frequency outside the window (or never seen)."""
    DELAYING = "delaying"
    """Inside the window, waiting out the delay; any excursion starts it again."""
    RAMPING = "ramping"
    """Entering service: output limited to a linear ramp from 0 to 100 %."""
    IN_SERVICE = "in_service"


@dataclass(frozen=True, slots=True)
class EnterService:
    """Enter-service criteria (IEEE 1547-2018 clause 4.10, table 4 defaults)."""

    v_min_pu: float = 0.917
    v_max_pu: float = 1.05
    f_min_hz: float = 59.5
    f_max_hz: float = 60.1
    delay_s: float = 300.0
    ramp_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.v_min_pu < self.v_max_pu:
            raise CurveError(f"v_min_pu {self.v_min_pu:g} must be below v_max_pu {self.v_max_pu:g}")
        if not self.f_min_hz < self.f_max_hz:
            raise CurveError(f"f_min_hz {self.f_min_hz:g} must be below f_max_hz {self.f_max_hz:g}")
        if not 0.0 <= self.delay_s <= 600.0:
            raise CurveError(f"enter-service delay {self.delay_s:g} s is outside 0..600")
        if not 1.0 <= self.ramp_s <= 1000.0:
            raise CurveError(f"enter-service ramp {self.ramp_s:g} s is outside 1..1000")

    def within(self, v_pu: float, f_hz: float) -> bool:
        """Whether voltage and frequency are inside the enter-service window (inclusive)."""
        return self.v_min_pu <= v_pu <= self.v_max_pu and self.f_min_hz <= f_hz <= self.f_max_hz


@dataclass(frozen=True, slots=True)
class EnterServiceState:
    """Where the DER is in entering service; ``since`` is when the phase began."""

    phase: EnterServicePhase = EnterServicePhase.WAITING
    since: datetime | None = None

    def step(
        self, v_pu: float | None, f_hz: float | None, now: datetime, setting: EnterService
    ) -> EnterServiceState:
        """The state at ``now`` given the latest voltage and frequency (``None``: unknown,
        counts as outside the window while not yet in service).

        Once ramping, the window no longer applies: leaving service is the trip function's
        decision (``tripped``), not this one's.
        """
        ok = v_pu is not None and f_hz is not None and setting.within(v_pu, f_hz)
        match self.phase:
            case EnterServicePhase.WAITING:
                if not ok:
                    return self
                state = EnterServiceState(EnterServicePhase.DELAYING, now)
                return state.step(v_pu, f_hz, now, setting)  # a zero delay enters at once
            case EnterServicePhase.DELAYING:
                if not ok:
                    return EnterServiceState()
                assert self.since is not None  # noqa: S101  # set on entering DELAYING
                if (now - self.since).total_seconds() >= setting.delay_s:
                    ramp_start = self.since + _seconds(setting.delay_s)
                    return EnterServiceState(EnterServicePhase.RAMPING, ramp_start).step(
                        v_pu, f_hz, now, setting
                    )
                return self
            case EnterServicePhase.RAMPING:
                assert self.since is not None  # noqa: S101  # set on entering RAMPING
                if (now - self.since).total_seconds() >= setting.ramp_s:
                    return replace(
                        self,
                        phase=EnterServicePhase.IN_SERVICE,
                        since=self.since + _seconds(setting.ramp_s),
                    )
                return self
            case EnterServicePhase.IN_SERVICE:
                return self

    def tripped(self) -> EnterServiceState:
        """Out of service (a trip, a cease-to-energize): the criteria apply from scratch."""
        return EnterServiceState()

    def limit_pu(self, now: datetime, setting: EnterService) -> float:
        """The share of rated power allowed at ``now``: 0 until the delay is over, then a
        linear ramp to 1 over ``ramp_s``."""
        match self.phase:
            case EnterServicePhase.WAITING | EnterServicePhase.DELAYING:
                return 0.0
            case EnterServicePhase.RAMPING:
                assert self.since is not None  # noqa: S101  # set on entering RAMPING
                elapsed = (now - self.since).total_seconds()
                return min(1.0, max(0.0, elapsed / setting.ramp_s))
            case EnterServicePhase.IN_SERVICE:
                return 1.0


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


# ---------------------------------------------------------------------------- response


def response_step(previous: float, target: float, dt_s: float, response_time_s: float) -> float:
    """One step of a first-order open-loop response: 90 % of a step in ``response_time_s``.

    Exact for any ``dt_s`` (the exponential, not a forward-Euler step), so a late cycle
    cannot overshoot. ``response_time_s`` 0 means no filtering; ``dt_s <= 0`` no change.
    """
    if response_time_s < 0.0:
        raise CurveError(f"response time {response_time_s:g} s must not be negative")
    if response_time_s == 0.0:
        return target
    if dt_s <= 0.0:
        return previous
    tau = response_time_s / LN_10
    return target + (previous - target) * math.exp(-dt_s / tau)


@dataclass(frozen=True, slots=True)
class ResponseFilter:
    """A first-order response filter carried from cycle to cycle: ``value`` at ``at``."""

    response_time_s: float
    value: float | None = None
    at: datetime | None = None

    def update(self, target: float, now: datetime) -> ResponseFilter:
        """The filter moved towards ``target`` by the time since the last update (the first
        update starts at ``target``: there is no earlier output to lag behind)."""
        if self.value is None or self.at is None:
            return replace(self, value=target, at=now)
        dt_s = (now - self.at).total_seconds()
        value = response_step(self.value, target, dt_s, self.response_time_s)
        return replace(self, value=value, at=now if dt_s > 0 else self.at)
