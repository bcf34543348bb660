"""Zone thermal models identified from the zone's own history by linear least squares.

Pure numpy: arrays in, a frozen model out; no clock, no I/O (STYLE.md item 1).

Models (DOMAIN.md, "Building thermal models"):

* **1R1C**, exact discretisation with step Δt and inputs held over the step::

      T_{k+1} = a·T_k + (1 − a)·(T_o,k + R·Q_k),   a = exp(−Δt/(R·C))
      Q_k     = G_k − Φ_cool,k                    (net heat into the zone, W)
      G_k     = g_unocc + (g_occ − g_unocc)·occ_k + A·I_k

  Rewritten as ``T_{k+1} − T_o,k = a·(T_k − T_o,k) + β_Q·Φ_cool,k + β_0 + β_occ·occ_k +
  β_I·I_k`` it is linear in (a, β_Q, β_0, β_occ, β_I) with β_Q = −(1 − a)·R,
  β_0 = (1 − a)·R·g_unocc, β_occ = (1 − a)·R·(g_occ − g_unocc), β_I = (1 − a)·R·A.
  So R = −β_Q/(1 − a), C = −Δt/(R·ln a), gains = β/(−β_Q). R is only separable from the
  gains when the cooling power varies in the data — a zone that never cooled is refused.

* **2R2C** (interior + envelope, Bacher & Madsen 2011)::

      C_i·dT_i/dt = (T_e − T_i)/R_ie + Q
      C_e·dT_e/dt = (T_i − T_e)/R_ie + (T_o − T_e)/R_ea

  T_e is not measured. With zero-order-hold inputs the exact discretisation seen from T_i is
  an ARX(2) model ``T_{k+1} = θ1·T_k + θ2·T_{k−1} + Σ_u (b_u0·u_k + b_u1·u_{k−1})``, also
  linear in its coefficients. It is fitted, and the physical parameters are recovered from
  its poles and the zero of the heat-to-T_i transfer (see :func:`_two_node_from_arx`). It
  is chosen over 1R1C only when the poles are real in (0, 1), every R and C is positive and
  the Bayesian information criterion falls by ``two_node_min_bic_gain``.

Gaps: a row enters a regression only if every value it uses is finite (NaN = missing). No
interpolation: a gap splits the data, and open-loop simulations restart after it.

Quality figures, in kelvin: one-step RMSE (the regression residual), multi-step RMSE (the
model simulated open loop from a measured start over ``multi_step_horizon``, windows
restarted every quarter horizon) and R² of the one-step *temperature change*
(``T_{k+1} − T_k``): R² of ``T_{k+1}`` itself is near 1 for any persistent series and would
say nothing. ``good_enough`` judges the 1R1C model, the one the cooling planner uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

FloatArray = npt.NDArray[np.float64]


class IdentificationParams(BaseModel):
    """Thresholds of :func:`identify_zone`: when to refuse data and when a fit is usable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_samples: int = Field(default=96, ge=8)
    """Usable transitions (both ends and all inputs finite) needed; 96 = one day at 15 min."""
    min_temperature_std_k: float = Field(default=0.05, ge=0.0)
    """Below this standard deviation the zone temperature is a constant: nothing to learn."""
    min_cooling_range_w: float = Field(default=100.0, ge=0.0)
    """Cooling must span at least this much (max − min), or R cannot be told from the gains."""
    max_one_step_rmse_k: float = Field(default=0.3, gt=0.0)
    max_multi_step_rmse_k: float = Field(default=1.0, gt=0.0)
    """Over ``multi_step_horizon`` simulated open loop: what a day-ahead plan relies on."""
    min_r2: float = Field(default=0.5, le=1.0)
    """R² of the one-step temperature change."""
    multi_step_horizon: timedelta = timedelta(hours=24)
    min_time_constant: timedelta = timedelta(minutes=30)
    max_time_constant: timedelta = timedelta(days=30)
    """R·C outside [min, max] is physically implausible for an office zone."""
    try_two_node: bool = True
    two_node_min_bic_gain: float = Field(default=10.0, ge=0.0)
    """2R2C must lower the BIC by this much (≈ very strong evidence, Kass & Raftery)."""


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True, eq=False)
class ZoneHistory:
    """Evenly spaced history of one zone; NaN marks a missing value.

    ``values[k]`` of an input holds over [k·Δt, (k+1)·Δt); ``temperature_degc[k]`` is the
    zone temperature at k·Δt. ``occupied`` is 1.0/0.0 (NaN if unknown).
    """

    step_s: float
    temperature_degc: FloatArray
    outdoor_degc: FloatArray
    cooling_w: FloatArray
    """Thermal power removed by the chiller (≥ 0), W."""
    irradiance_wm2: FloatArray
    occupied: FloatArray

    def __post_init__(self) -> None:
        if not self.step_s > 0.0:
            raise ValueError(f"step_s must be positive, got {self.step_s}")
        lengths = {
            len(a)
            for a in (
                self.temperature_degc,
                self.outdoor_degc,
                self.cooling_w,
                self.irradiance_wm2,
                self.occupied,
            )
        }
        if len(lengths) != 1:
            raise ValueError(f"history arrays differ in length: {sorted(lengths)}")

    @classmethod
    def of(
        cls,
        step_s: float,
        *,
        temperature_degc: npt.ArrayLike,
        outdoor_degc: npt.ArrayLike,
        cooling_w: npt.ArrayLike,
        irradiance_wm2: npt.ArrayLike,
        occupied: npt.ArrayLike,
    ) -> ZoneHistory:
        """Build from any sequences (lists, tuples, arrays); copies into float arrays."""
        return cls(
            step_s=float(step_s),
            temperature_degc=np.array(temperature_degc, dtype=np.float64),
            outdoor_degc=np.array(outdoor_degc, dtype=np.float64),
            cooling_w=np.array(cooling_w, dtype=np.float64),
            irradiance_wm2=np.array(irradiance_wm2, dtype=np.float64),
            occupied=np.array(occupied, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.temperature_degc)

    def inputs_finite(self) -> npt.NDArray[np.bool_]:
        """Rows whose inputs (outdoor, cooling, irradiance, occupancy) are all known."""
        return (
            np.isfinite(self.outdoor_degc)
            & np.isfinite(self.cooling_w)
            & np.isfinite(self.irradiance_wm2)
            & np.isfinite(self.occupied)
        )


# --------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True, slots=True)
class RcModel:
    """A 1R1C zone: envelope resistance R, capacitance C and the heat gains."""

    resistance_k_per_w: float
    capacitance_j_per_k: float
    gain_unoccupied_w: float
    gain_occupied_w: float
    solar_aperture_m2: float
    """Window area × solar heat gain coefficient: solar gain = aperture · irradiance."""

    @property
    def time_constant_s(self) -> float:
        return self.resistance_k_per_w * self.capacitance_j_per_k

    def coefficient(self, dt_s: float) -> float:
        """a = exp(−Δt/(R·C))."""
        return math.exp(-dt_s / self.time_constant_s)

    def gains_w(self, occupied: float, irradiance_wm2: float) -> float:
        """Internal + solar gains, W (``occupied`` 0..1, a fraction is a partial occupancy)."""
        internal = self.gain_unoccupied_w + (self.gain_occupied_w - self.gain_unoccupied_w) * (
            occupied
        )
        return internal + self.solar_aperture_m2 * irradiance_wm2

    def step(
        self,
        temperature_degc: float,
        *,
        outdoor_degc: float,
        cooling_w: float,
        irradiance_wm2: float,
        occupied: float,
        dt_s: float,
    ) -> float:
        """Zone temperature after ``dt_s`` with the inputs held, °C."""
        a = self.coefficient(dt_s)
        heat = self.gains_w(occupied, irradiance_wm2) - cooling_w
        return a * temperature_degc + (1.0 - a) * (outdoor_degc + self.resistance_k_per_w * heat)


@dataclass(frozen=True, slots=True)
class TwoNodeModel:
    """A 2R2C zone (interior air + envelope), parameters as in Bacher & Madsen's TiTe."""

    interior_envelope_k_per_w: float
    """R_ie between the interior air and the envelope mass."""
    envelope_ambient_k_per_w: float
    """R_ea between the envelope mass and the outdoor air."""
    interior_j_per_k: float
    envelope_j_per_k: float
    gain_unoccupied_w: float
    gain_occupied_w: float
    solar_aperture_m2: float

    @property
    def resistance_k_per_w(self) -> float:
        """Total interior-to-outdoor resistance (the steady-state R of a 1R1C equivalent)."""
        return self.interior_envelope_k_per_w + self.envelope_ambient_k_per_w

    def discretise(self, dt_s: float) -> tuple[FloatArray, FloatArray]:
        """(A_d, B_d) of x = [T_i, T_e] with inputs u = [Q into the interior, T_o], ZOH."""
        r_ie, r_ea = self.interior_envelope_k_per_w, self.envelope_ambient_k_per_w
        c_i, c_e = self.interior_j_per_k, self.envelope_j_per_k
        a_c = np.array(
            [
                [-1.0 / (r_ie * c_i), 1.0 / (r_ie * c_i)],
                [1.0 / (r_ie * c_e), -1.0 / (r_ie * c_e) - 1.0 / (r_ea * c_e)],
            ]
        )
        b_c = np.array([[1.0 / c_i, 0.0], [0.0, 1.0 / (r_ea * c_e)]])
        # An RC network's matrix is similar to a symmetric one: real, negative, distinct
        # eigenvalues, so the eigen-decomposition gives the matrix exponential exactly.
        eigenvalues, vectors = np.linalg.eig(a_c)
        eigenvalues = eigenvalues.real
        vectors = vectors.real
        inverse = np.linalg.inv(vectors)
        decay = np.exp(eigenvalues * dt_s)
        a_d = vectors @ np.diag(decay) @ inverse
        b_d = vectors @ np.diag((decay - 1.0) / eigenvalues) @ inverse @ b_c
        return a_d.astype(np.float64), b_d.astype(np.float64)

    def simulate(
        self,
        interior_degc: float,
        envelope_degc: float,
        *,
        outdoor_degc: npt.ArrayLike,
        cooling_w: npt.ArrayLike,
        irradiance_wm2: npt.ArrayLike,
        occupied: npt.ArrayLike,
        dt_s: float,
    ) -> FloatArray:
        """Interior temperatures T_i at 0, Δt, …, n·Δt (n + 1 values) for n input steps."""
        outdoor = np.asarray(outdoor_degc, dtype=np.float64)
        heat = (
            self.gain_unoccupied_w
            + (self.gain_occupied_w - self.gain_unoccupied_w) * np.asarray(occupied, np.float64)
            + self.solar_aperture_m2 * np.asarray(irradiance_wm2, np.float64)
            - np.asarray(cooling_w, np.float64)
        )
        a_d, b_d = self.discretise(dt_s)
        x = np.array([interior_degc, envelope_degc])
        out = np.empty(len(outdoor) + 1)
        out[0] = interior_degc
        for k in range(len(outdoor)):
            x = a_d @ x + b_d @ np.array([heat[k], outdoor[k]])
            out[k + 1] = x[0]
        return out


@dataclass(frozen=True, slots=True)
class FitQuality:
    """How well a model explains the history, in kelvin."""

    one_step_rmse_k: float
    multi_step_rmse_k: float
    """Open-loop simulation over the horizon; NaN when no window could be simulated."""
    r2: float
    """Of the one-step temperature change."""
    bic: float
    parameters: int


@dataclass(frozen=True, slots=True)
class ThermalFit:
    """An identified zone: the 1R1C model (what the planner uses) and, if the data supports
    it, the 2R2C model, with the quality of each and the verdict."""

    rc: RcModel
    rc_quality: FitQuality
    two_node: TwoNodeModel | None
    two_node_quality: FitQuality | None
    chosen: Literal["1R1C", "2R2C"]
    """The order the data supports best (information criterion and physical plausibility)."""
    step_s: float
    samples: int
    """Usable transitions the 1R1C regression used."""
    good_enough: bool
    """The 1R1C model meets every threshold in :class:`IdentificationParams`."""
    verdict: str
    """Why it is (not) good enough, for an operator."""
    notes: tuple[str, ...] = ()
    """Regressors dropped and why 2R2C was (not) chosen."""

    @property
    def one_step_rmse_k(self) -> float:
        return self.rc_quality.one_step_rmse_k

    @property
    def multi_step_rmse_k(self) -> float:
        return self.rc_quality.multi_step_rmse_k

    @property
    def r2(self) -> float:
        return self.rc_quality.r2


@dataclass(frozen=True, slots=True)
class IdentificationRefused:
    """The data cannot identify a model; ``reason`` says what is wrong with it."""

    reason: str


# --------------------------------------------------------------------------------------------
# Identification


def identify_zone(
    history: ZoneHistory, params: IdentificationParams | None = None
) -> ThermalFit | IdentificationRefused:
    """Identify the zone's 1R1C (and, where supported, 2R2C) model from ``history``.

    Returns :class:`IdentificationRefused` with a reason for data that cannot identify a
    model (too few usable samples, a constant temperature, cooling that never varies,
    collinear inputs, an unstable or sign-inverted fit); otherwise a :class:`ThermalFit`
    whose ``good_enough`` says whether a planner may rely on it.
    """
    p = params if params is not None else IdentificationParams()
    dt = history.step_s
    n = len(history)
    temperature = history.temperature_degc
    inputs_ok = history.inputs_finite()
    # Transition k -> k+1 is usable when T_k, T_{k+1} and every input of step k are known.
    rows = np.zeros(n, dtype=bool)
    if n >= 2:
        rows[:-1] = np.isfinite(temperature[:-1]) & np.isfinite(temperature[1:]) & inputs_ok[:-1]
    usable = int(rows.sum())
    if usable < p.min_samples:
        return IdentificationRefused(
            f"only {usable} usable samples after dropping gaps (NaN rows); need at least "
            f"{p.min_samples} ({p.min_samples * dt / 3600.0:.1f} h at a {dt:.0f} s step)"
        )
    index = np.flatnonzero(rows)
    t_now = temperature[index]
    t_next = temperature[index + 1]
    spread = float(np.std(np.concatenate([t_now, t_next])))
    if spread < p.min_temperature_std_k:
        return IdentificationRefused(
            f"zone temperature is constant (std {spread:.3f} K < {p.min_temperature_std_k} K): "
            "its dynamics cannot be learnt from it"
        )
    cooling = history.cooling_w[index]
    cooling_range = float(np.ptp(cooling))
    if cooling_range < p.min_cooling_range_w:
        return IdentificationRefused(
            f"cooling power never varies (range {cooling_range:.0f} W < "
            f"{p.min_cooling_range_w:.0f} W): R cannot be separated from the heat gains"
        )

    design = _Design.first_order(history, index)
    solution = _least_squares(design.matrix, t_next - history.outdoor_degc[index])
    if solution is None:
        return IdentificationRefused(
            f"inputs are collinear ({', '.join(design.names)}): the regression is rank deficient"
        )
    coef, residual = solution
    a = coef[0]
    beta_q = coef[1]
    if not 0.0 < a < 1.0:
        return IdentificationRefused(
            f"identified decay a = {a:.4f} is outside (0, 1): the data is not a stable "
            "first-order zone (wrong point, or a controller loop dominating it)"
        )
    if beta_q >= 0.0:
        return IdentificationRefused(
            "cooling appears to warm the zone (its coefficient is ≥ 0): check the sign and "
            "that the cooling point belongs to this zone"
        )
    rc = design.rc_model(coef, dt)
    notes = list(design.notes)
    change = t_next - t_now
    rc_quality = FitQuality(
        one_step_rmse_k=_rms(residual),
        multi_step_rmse_k=_multi_step_rmse_rc(rc, history, p.multi_step_horizon),
        r2=_r2(residual, change),
        bic=_bic(residual, len(coef)),
        parameters=len(coef),
    )

    two_node: TwoNodeModel | None = None
    two_node_quality: FitQuality | None = None
    chosen: Literal["1R1C", "2R2C"] = "1R1C"
    if p.try_two_node:
        outcome = _try_two_node(history, rows, p)
        if isinstance(outcome, str):
            notes.append(f"2R2C not chosen: {outcome}")
        else:
            two_node, two_node_quality = outcome
            chosen = "2R2C"
            notes.append(
                f"2R2C chosen: BIC {two_node_quality.bic:.1f} against the 1R1C's "
                f"{_bic_on_second_order_rows(history, rows):.1f} on the same rows"
            )

    good_enough, verdict = _verdict(rc, rc_quality, p)
    return ThermalFit(
        rc=rc,
        rc_quality=rc_quality,
        two_node=two_node,
        two_node_quality=two_node_quality,
        chosen=chosen,
        step_s=dt,
        samples=usable,
        good_enough=good_enough,
        verdict=verdict,
        notes=tuple(notes),
    )


def _verdict(rc: RcModel, quality: FitQuality, p: IdentificationParams) -> tuple[bool, str]:
    problems: list[str] = []
    if quality.one_step_rmse_k > p.max_one_step_rmse_k:
        problems.append(
            f"one-step RMSE {quality.one_step_rmse_k:.3f} K > {p.max_one_step_rmse_k} K"
        )
    if not quality.multi_step_rmse_k <= p.max_multi_step_rmse_k:
        # NaN (no window could be simulated) fails too: the model is untested open loop.
        problems.append(
            f"multi-step RMSE {quality.multi_step_rmse_k:.3f} K > {p.max_multi_step_rmse_k} K"
        )
    if quality.r2 < p.min_r2:
        problems.append(f"R² {quality.r2:.3f} < {p.min_r2}")
    tau = rc.time_constant_s
    lo, hi = p.min_time_constant.total_seconds(), p.max_time_constant.total_seconds()
    if not lo <= tau <= hi:
        problems.append(
            f"time constant {tau / 3600.0:.2f} h outside [{lo / 3600:.1f}, {hi / 3600:.0f}] h"
        )
    if problems:
        return False, "; ".join(problems)
    return True, (
        f"one-step RMSE {quality.one_step_rmse_k:.3f} K, multi-step RMSE "
        f"{quality.multi_step_rmse_k:.3f} K, R² {quality.r2:.3f}, R·C {tau / 3600.0:.2f} h"
    )


@dataclass(frozen=True, slots=True)
class _Design:
    """The first-order regression matrix and which optional regressors it carries."""

    matrix: FloatArray
    names: tuple[str, ...]
    has_occupancy: bool
    has_solar: bool
    notes: tuple[str, ...]

    @classmethod
    def first_order(cls, history: ZoneHistory, index: npt.NDArray[np.intp]) -> _Design:
        t = history.temperature_degc[index]
        t_o = history.outdoor_degc[index]
        occ = history.occupied[index]
        irr = history.irradiance_wm2[index]
        columns = [t - t_o, history.cooling_w[index], np.ones(len(index))]
        names = ["temperature − outdoor", "cooling", "constant"]
        notes: list[str] = []
        # A regressor that never varies is the intercept again; dropping it keeps the
        # system full rank and says the data cannot tell that gain apart.
        has_occupancy = bool(np.ptp(occ) > 0.0)
        if has_occupancy:
            columns.append(occ)
            names.append("occupied")
        else:
            notes.append("occupancy never changes: one gain for occupied and unoccupied")
        has_solar = bool(np.ptp(irr) >= 1.0)
        if has_solar:
            columns.append(irr)
            names.append("irradiance")
        else:
            notes.append("irradiance never varies: solar aperture taken as 0")
        return cls(np.column_stack(columns), tuple(names), has_occupancy, has_solar, tuple(notes))

    def rc_model(self, coef: FloatArray, dt_s: float) -> RcModel:
        a, beta_q, beta_0 = float(coef[0]), float(coef[1]), float(coef[2])
        rest = list(coef[3:])
        beta_occ = float(rest.pop(0)) if self.has_occupancy else 0.0
        beta_i = float(rest.pop(0)) if self.has_solar else 0.0
        resistance = -beta_q / (1.0 - a)
        capacitance = -dt_s / (resistance * math.log(a))
        gain_unoccupied = beta_0 / -beta_q
        return RcModel(
            resistance_k_per_w=resistance,
            capacitance_j_per_k=capacitance,
            gain_unoccupied_w=gain_unoccupied,
            gain_occupied_w=gain_unoccupied + beta_occ / -beta_q,
            solar_aperture_m2=beta_i / -beta_q,
        )


def _least_squares(matrix: FloatArray, target: FloatArray) -> tuple[FloatArray, FloatArray] | None:
    """(coefficients, residuals), or None when the columns are (numerically) collinear."""
    # Columns span W, W/m² and K: scale each to unit norm so the rank test is not fooled
    # by units.
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(norms == 0.0):
        return None
    scaled = matrix / norms
    coef, _, rank, singular = np.linalg.lstsq(scaled, target, rcond=None)
    if rank < matrix.shape[1] or singular[-1] < 1e-9 * singular[0]:
        return None
    coef = coef / norms
    residual = target - matrix @ coef
    return coef.astype(np.float64), residual.astype(np.float64)


def _rms(values: FloatArray) -> float:
    return float(np.sqrt(np.mean(values**2))) if len(values) else math.nan


def _r2(residual: FloatArray, observed: FloatArray) -> float:
    total = float(np.sum((observed - observed.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum(residual**2)) / total


def _bic(residual: FloatArray, parameters: int) -> float:
    n = len(residual)
    sse = max(float(np.sum(residual**2)), 1e-300)
    return n * math.log(sse / n) + parameters * math.log(n)


def _multi_step_rmse_rc(rc: RcModel, history: ZoneHistory, horizon: timedelta) -> float:
    """Open-loop RMSE: from each measured start, simulate up to ``horizon``; windows start
    every quarter horizon and stop at an input gap (no value is invented across it)."""
    dt = history.step_s
    steps = max(1, round(horizon.total_seconds() / dt))
    stride = max(1, steps // 4)
    temperature = history.temperature_degc
    inputs_ok = history.inputs_finite()
    a = rc.coefficient(dt)
    gains = (
        rc.gain_unoccupied_w
        + (rc.gain_occupied_w - rc.gain_unoccupied_w) * history.occupied
        + rc.solar_aperture_m2 * history.irradiance_wm2
    )
    drive = history.outdoor_degc + rc.resistance_k_per_w * (gains - history.cooling_w)
    errors: list[float] = []
    n = len(history)
    for start in range(0, n - 1, stride):
        if not math.isfinite(temperature[start]):
            continue
        t = float(temperature[start])
        for k in range(start, min(start + steps, n - 1)):
            if not inputs_ok[k]:
                break
            t = a * t + (1.0 - a) * float(drive[k])
            if math.isfinite(temperature[k + 1]):
                errors.append(t - float(temperature[k + 1]))
    return _rms(np.array(errors)) if errors else math.nan


# --------------------------------------------------------------------------------------------
# 2R2C through its ARX(2) form


def _second_order_rows(history: ZoneHistory, rows: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Transitions k -> k+1 whose previous transition k-1 -> k is usable too."""
    both = np.zeros_like(rows)
    both[1:] = rows[1:] & rows[:-1]
    return np.flatnonzero(both)


def _arx2_design(history: ZoneHistory, index: npt.NDArray[np.intp]) -> FloatArray:
    h = history
    prev = index - 1
    columns = [h.temperature_degc[index], h.temperature_degc[prev]]
    for series in (h.outdoor_degc, h.cooling_w):
        columns += [series[index], series[prev]]
    columns.append(np.ones(len(index)))
    for series in (h.occupied, h.irradiance_wm2):
        if np.ptp(series[index]) > 0.0 or np.ptp(series[prev]) > 0.0:
            columns += [series[index], series[prev]]
        else:
            columns += [np.zeros(len(index)), np.zeros(len(index))]
    return np.column_stack(columns)


def _bic_on_second_order_rows(history: ZoneHistory, rows: npt.NDArray[np.bool_]) -> float:
    index = _second_order_rows(history, rows)
    design = _Design.first_order(history, index)
    solution = _least_squares(
        design.matrix, history.temperature_degc[index + 1] - history.outdoor_degc[index]
    )
    return _bic(solution[1], design.matrix.shape[1]) if solution is not None else math.inf


def _try_two_node(
    history: ZoneHistory, rows: npt.NDArray[np.bool_], p: IdentificationParams
) -> tuple[TwoNodeModel, FitQuality] | str:
    """The 2R2C model and its quality, or why the data does not support it."""
    index = _second_order_rows(history, rows)
    if len(index) < p.min_samples:
        return f"only {len(index)} runs of two consecutive usable transitions"
    full = _arx2_design(history, index)
    # Unused optional regressors are zero columns: fit without them, put zeros back.
    used = np.flatnonzero(np.linalg.norm(full, axis=0) > 0.0)
    target = history.temperature_degc[index + 1]
    solution = _least_squares(full[:, used], target)
    if solution is None:
        return "the second-order regression is rank deficient"
    coef_used, residual = solution
    coef = np.zeros(full.shape[1])
    coef[used] = coef_used
    model = _two_node_from_arx(coef, history.step_s)
    if isinstance(model, str):
        return model
    bic_two = _bic(residual, len(used))
    bic_one = _bic_on_second_order_rows(history, rows)
    if bic_two > bic_one - p.two_node_min_bic_gain:
        return f"BIC {bic_two:.1f} is not {p.two_node_min_bic_gain} below the 1R1C's {bic_one:.1f}"
    change = target - history.temperature_degc[index]
    quality = FitQuality(
        one_step_rmse_k=_rms(residual),
        multi_step_rmse_k=_multi_step_rmse_arx2(coef, history, p.multi_step_horizon),
        r2=_r2(residual, change),
        bic=bic_two,
        parameters=len(used),
    )
    return model, quality


def _two_node_from_arx(coef: FloatArray, dt_s: float) -> TwoNodeModel | str:
    """Physical 2R2C parameters from ARX(2) coefficients, or why there are none.

    Continuous system, x = [T_i, T_e]: A = [[−α, α], [β, −(β+γ)]], α = 1/(R_ie·C_i),
    β = 1/(R_ie·C_e), γ = 1/(R_ea·C_e); heat enters the interior with 1/C_i. The
    characteristic polynomial is s² + (α+β+γ)·s + α·γ and the heat-to-T_i transfer is
    (s + β + γ)/(C_i·(s − λ1)(s − λ2)). The discrete poles z give λ = ln z/Δt; the heat
    coefficients (b0, b1) of the ZOH transfer Σ g_i z⁻¹/(1 − z_i z⁻¹) give the residues
    r_i = g_i·λ_i/(z_i − 1), hence 1/C_i = r1 + r2 and the zero β + γ.
    """
    theta1, theta2 = float(coef[0]), float(coef[1])
    disc = theta1 * theta1 + 4.0 * theta2
    if disc <= 0.0:
        return "the second-order poles are complex or repeated (no RC network behaves so)"
    z1 = (theta1 + math.sqrt(disc)) / 2.0
    z2 = (theta1 - math.sqrt(disc)) / 2.0
    if not (0.0 < z2 < z1 < 1.0):
        return f"second-order poles {z1:.4f}, {z2:.4f} are not both in (0, 1)"
    lam1, lam2 = math.log(z1) / dt_s, math.log(z2) / dt_s
    # Heat into the interior = −cooling: the coefficients of cooling with the sign flipped.
    b0, b1 = -float(coef[4]), -float(coef[5])
    # b0 = g1 + g2, b1 = −(g1·z2 + g2·z1)
    det = z1 - z2
    g1 = (b0 * z1 + b1) / det
    g2 = b0 - g1
    r1 = g1 * lam1 / (z1 - 1.0)
    r2 = g2 * lam2 / (z2 - 1.0)
    inv_ci = r1 + r2
    if inv_ci <= 0.0:
        return "cooling does not lower the interior temperature in the second-order fit"
    c0 = r1 * (lam1 - lam2) - inv_ci * lam1
    beta_plus_gamma = c0 / inv_ci
    p_sum = -(lam1 + lam2)
    q_prod = lam1 * lam2
    alpha = p_sum - beta_plus_gamma
    if alpha <= 0.0 or beta_plus_gamma <= 0.0:
        return "the second-order fit has no positive interior-envelope coupling"
    gamma = q_prod / alpha
    beta = beta_plus_gamma - gamma
    if gamma <= 0.0 or beta <= 0.0:
        return "the second-order fit gives a non-positive resistance or capacitance"
    c_i = 1.0 / inv_ci
    r_ie = 1.0 / (alpha * c_i)
    c_e = 1.0 / (beta * r_ie)
    r_ea = 1.0 / (gamma * c_e)
    # Static gains: u → T_i at steady state is Σb_u/(1 − θ1 − θ2); for a heat input it is
    # R_ie + R_ea times the gain, so each gain is its static gain divided by R_total.
    static = 1.0 - theta1 - theta2
    r_total = r_ie + r_ea
    gain_unoccupied = float(coef[6]) / static / r_total
    gain_occupancy = (float(coef[7]) + float(coef[8])) / static / r_total
    aperture = (float(coef[9]) + float(coef[10])) / static / r_total
    return TwoNodeModel(
        interior_envelope_k_per_w=r_ie,
        envelope_ambient_k_per_w=r_ea,
        interior_j_per_k=c_i,
        envelope_j_per_k=c_e,
        gain_unoccupied_w=gain_unoccupied,
        gain_occupied_w=gain_unoccupied + gain_occupancy,
        solar_aperture_m2=aperture,
    )


def _multi_step_rmse_arx2(coef: FloatArray, history: ZoneHistory, horizon: timedelta) -> float:
    """Open-loop RMSE of the ARX(2) form (which is the 2R2C's exact discretisation): each
    window starts from two measured temperatures, which fixes the unmeasured envelope."""
    h = history
    dt = h.step_s
    steps = max(1, round(horizon.total_seconds() / dt))
    stride = max(1, steps // 4)
    inputs_ok = h.inputs_finite()
    # Input part of each step: Σ_u b_u0·u_k + b_u1·u_{k−1} (k ≥ 1).
    drive = np.full(len(h), np.nan)
    k = np.arange(1, len(h))
    drive[1:] = (
        coef[2] * h.outdoor_degc[k]
        + coef[3] * h.outdoor_degc[k - 1]
        + coef[4] * h.cooling_w[k]
        + coef[5] * h.cooling_w[k - 1]
        + coef[6]
        + coef[7] * h.occupied[k]
        + coef[8] * h.occupied[k - 1]
        + coef[9] * h.irradiance_wm2[k]
        + coef[10] * h.irradiance_wm2[k - 1]
    )
    temperature = h.temperature_degc
    errors: list[float] = []
    for start in range(1, len(h) - 1, stride):
        if not (math.isfinite(temperature[start]) and math.isfinite(temperature[start - 1])):
            continue
        previous, current = float(temperature[start - 1]), float(temperature[start])
        for j in range(start, min(start + steps, len(h) - 1)):
            if not (inputs_ok[j] and inputs_ok[j - 1]):
                break
            previous, current = current, coef[0] * current + coef[1] * previous + drive[j]
            if math.isfinite(temperature[j + 1]):
                errors.append(float(current) - float(temperature[j + 1]))
    return _rms(np.array(errors)) if errors else math.nan
