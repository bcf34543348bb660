"""2030.5 control encodings to plain numbers: what a DERControlBase asks, mode by mode.

Pure conversion, no I/O. A DERControlBase carries each mode in its own wire encoding
(ActivePower value × 10^multiplier, hundredths of a percent, PowerFactorWithExcitation,
links to DERCurves); GridPilot's bus carries plain SI numbers and percent (see the issue 6
contract: ``{"value": ..., "unit": ...}``). An encoding that cannot be a valid control (a PF
above 1, a percent over 100, a curve link that resolves to nothing or to a curve of another
type) makes the whole control invalid: the scheduler then rejects the event (Response 253)
instead of following half of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from gridpilot.ieee2030_5.models import (
    ActivePower,
    DERControlBase,
    DERCurve,
    DERCurveType,
    DERUnitRefType,
    Link,
    PowerFactorWithExcitation,
    ReactivePower,
)

__all__ = [
    "CURVE_MODES",
    "ControlValue",
    "InvalidControlError",
    "modes_of",
]

JsonValue = float | bool | dict[str, Any]


@dataclass(frozen=True, slots=True)
class ControlValue:
    """One mode's requested value in plain units; ``unit`` None for booleans and structures."""

    value: JsonValue
    unit: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value}
        if self.unit is not None:
            out["unit"] = self.unit
        return out


class InvalidControlError(ValueError):
    """A DERControlBase that is not a valid control; the message names the mode."""


_POWER_MODES_W = (
    "opModExpLimW",
    "opModImpLimW",
    "opModGenLimW",
    "opModLoadLimW",
    "opModTargetW",
    "opModStorageTargetW",
)

CURVE_MODES: Mapping[str, DERCurveType] = {
    "opModFreqWatt": DERCurveType.OP_MOD_FREQ_WATT,
    "opModHFRTMayTrip": DERCurveType.OP_MOD_HFRT_MAY_TRIP,
    "opModHFRTMustTrip": DERCurveType.OP_MOD_HFRT_MUST_TRIP,
    "opModHVRTMayTrip": DERCurveType.OP_MOD_HVRT_MAY_TRIP,
    "opModHVRTMomentaryCessation": DERCurveType.OP_MOD_HVRT_MOMENTARY_CESSATION,
    "opModHVRTMustTrip": DERCurveType.OP_MOD_HVRT_MUST_TRIP,
    "opModLFRTMayTrip": DERCurveType.OP_MOD_LFRT_MAY_TRIP,
    "opModLFRTMustTrip": DERCurveType.OP_MOD_LFRT_MUST_TRIP,
    "opModLVRTMayTrip": DERCurveType.OP_MOD_LVRT_MAY_TRIP,
    "opModLVRTMomentaryCessation": DERCurveType.OP_MOD_LVRT_MOMENTARY_CESSATION,
    "opModLVRTMustTrip": DERCurveType.OP_MOD_LVRT_MUST_TRIP,
    "opModVoltVar": DERCurveType.OP_MOD_VOLT_VAR,
    "opModVoltWatt": DERCurveType.OP_MOD_VOLT_WATT,
    "opModWattPF": DERCurveType.OP_MOD_WATT_PF,
    "opModWattVar": DERCurveType.OP_MOD_WATT_VAR,
}

# What a curve's x axis is, by curve type: volt curves in per unit of the reference voltage
# (2030.5 sends percent of setVRef), watt curves in percent of setMaxW, frequency in Hz,
# ride-through curves in seconds.
_X_AXIS: Mapping[DERCurveType, str] = {
    DERCurveType.OP_MOD_VOLT_VAR: "V_pu",
    DERCurveType.OP_MOD_VOLT_WATT: "V_pu",
    DERCurveType.OP_MOD_FREQ_WATT: "Hz",
    DERCurveType.OP_MOD_WATT_PF: "W_pct_of_setMaxW",
    DERCurveType.OP_MOD_WATT_VAR: "W_pct_of_setMaxW",
}
_Y_AXIS: Mapping[DERUnitRefType, str] = {
    DERUnitRefType.NOT_APPLICABLE: "value",
    DERUnitRefType.PERC_SET_MAX_W: "W_pct_of_setMaxW",
    # The contract's name: IEEE 1547 states volt-var ordinates in percent of rated VA, and
    # setMaxVar is that rating for a Category B inverter (44 % of VA at both ends).
    DERUnitRefType.PERC_SET_MAX_VAR: "var_pct_of_VA",
    DERUnitRefType.PERC_STAT_VAR_AVAIL: "var_pct_of_statVarAvail",
    DERUnitRefType.PERC_SET_EFFECTIVE_V: "V_pct",
    DERUnitRefType.PERC_SET_MAX_CHARGE_RATE_W: "W_pct_of_setMaxChargeRateW",
    DERUnitRefType.PERC_SET_MAX_DISCHARGE_RATE_W: "W_pct_of_setMaxDischargeRateW",
    DERUnitRefType.PERC_STAT_W_AVAIL: "W_pct_of_statWAvail",
}
_RIDE_THROUGH_Y: Mapping[DERCurveType, str] = {
    DERCurveType.OP_MOD_HFRT_MAY_TRIP: "Hz",
    DERCurveType.OP_MOD_HFRT_MUST_TRIP: "Hz",
    DERCurveType.OP_MOD_LFRT_MAY_TRIP: "Hz",
    DERCurveType.OP_MOD_LFRT_MUST_TRIP: "Hz",
}


def _scaled(value: int, multiplier: int) -> float:
    return float(value) * 10.0**multiplier


def _power(mode: str, power: ActivePower | ReactivePower) -> float:
    if not -9 <= power.multiplier <= 9:
        raise InvalidControlError(f"{mode}: multiplier {power.multiplier} is outside -9..9")
    return _scaled(power.value, power.multiplier)


def _percent(mode: str, hundredths: int, *, signed: bool) -> float:
    low = -10000 if signed else 0
    if not low <= hundredths <= 10000:
        raise InvalidControlError(
            f"{mode}: {hundredths} hundredths of a percent is outside {low}..10000"
        )
    return hundredths / 100.0


def _power_factor(mode: str, pf: PowerFactorWithExcitation) -> dict[str, Any]:
    value = _scaled(pf.displacement, pf.multiplier)
    if not 0.0 < value <= 1.0:
        raise InvalidControlError(f"{mode}: displacement power factor {value:g} is not in (0, 1]")
    # 2030.5: excitation true = the DER absorbs reactive power (under-excited).
    return {"pf": round(value, 6), "excitation": "under" if pf.excitation else "over"}


def _curve(mode: str, link: Link, curves: Mapping[str, DERCurve]) -> dict[str, Any]:
    curve = curves.get(link.href)
    if curve is None:
        raise InvalidControlError(
            f"{mode}: links the curve {link.href}, which is not in the program's DERCurveList"
        )
    expected = CURVE_MODES[mode]
    if curve.curveType != expected:
        raise InvalidControlError(
            f"{mode}: curve {link.href} has curveType {int(curve.curveType)}, "
            f"expected {int(expected)} ({expected.name})"
        )
    xs = [_scaled(p.xvalue, curve.xMultiplier) for p in curve.CurveData_]
    ys = [_scaled(p.yvalue, curve.yMultiplier) for p in curve.CurveData_]
    x_axis = _X_AXIS.get(curve.curveType, "s")  # ride-through curves: x is time
    if x_axis == "V_pu":
        xs = [x / 100.0 for x in xs]
    if any(b < a for a, b in pairwise(xs)):
        raise InvalidControlError(f"{mode}: curve {link.href} has decreasing x values {xs}")
    y_axis = _RIDE_THROUGH_Y.get(curve.curveType)
    if y_axis is None:
        y_axis = _Y_AXIS.get(curve.yRefType, "value")
    out: dict[str, Any] = {
        "points": [[round(x, 6), round(y, 6)] for x, y in zip(xs, ys, strict=True)],
        "x": x_axis,
        "y": y_axis,
    }
    if curve.openLoopTms is not None:
        out["open_loop_s"] = curve.openLoopTms / 100.0
    # Only these four keys: the grid-controls consumer (control.grid_controls) refuses others.
    # A watt-PF curve's per-point excitation is therefore not forwarded.
    return out


def modes_of(base: DERControlBase, curves: Mapping[str, DERCurve]) -> dict[str, ControlValue]:
    """The modes a DERControlBase sets, in plain units; ``curves`` maps curve hrefs to the
    DERCurves of the control's program. Raises ``InvalidControlError`` for an encoding that
    is not a valid control."""
    modes: dict[str, ControlValue] = {}
    for mode in _POWER_MODES_W:
        power = getattr(base, mode)
        if power is not None:
            modes[mode] = ControlValue(_power(mode, power), "W")
    if base.opModTargetVar is not None:
        modes["opModTargetVar"] = ControlValue(_power("opModTargetVar", base.opModTargetVar), "var")
    if base.opModFixedW is not None:
        modes["opModFixedW"] = ControlValue(
            _percent("opModFixedW", base.opModFixedW, signed=True), "%"
        )
    if base.opModMaxLimW is not None:
        modes["opModMaxLimW"] = ControlValue(
            _percent("opModMaxLimW", base.opModMaxLimW, signed=False), "%"
        )
    if base.opModConnect is not None:
        modes["opModConnect"] = ControlValue(base.opModConnect)
    if base.opModEnergize is not None:
        modes["opModEnergize"] = ControlValue(base.opModEnergize)
    if base.opModFixedPFInjectW is not None:
        modes["opModFixedPFInjectW"] = ControlValue(
            _power_factor("opModFixedPFInjectW", base.opModFixedPFInjectW)
        )
    if base.opModFixedPFAbsorbW is not None:
        modes["opModFixedPFAbsorbW"] = ControlValue(
            _power_factor("opModFixedPFAbsorbW", base.opModFixedPFAbsorbW)
        )
    if base.opModFixedVar is not None:
        # Percent of the reference refType names (setMaxVar in practice); the bus carries
        # the number alone, as control.grid_controls expects.
        modes["opModFixedVar"] = ControlValue(
            _percent("opModFixedVar", base.opModFixedVar.value, signed=True), "%"
        )
    if base.opModFreqDroop is not None:
        droop = base.opModFreqDroop
        modes["opModFreqDroop"] = ControlValue(
            {
                # Dead bands in hundredths of Hz; droop k in hundredths (5 % -> 5).
                "db_of_hz": droop.dBOF / 100.0,
                "db_uf_hz": droop.dBUF / 100.0,
                "k_of_pct": float(droop.kOF),
                "k_uf_pct": float(droop.kUF),
                "open_loop_s": droop.openLoopTms / 100.0,
            }
        )
    for mode in CURVE_MODES:
        link = getattr(base, mode)
        if link is not None:
            modes[mode] = ControlValue(_curve(mode, link, curves))
    # rampTms (how fast to move to the new values) is not a mode: it takes part in no
    # supersession and is not forwarded; the grid-operator controller ramps by its own rules.
    return modes
