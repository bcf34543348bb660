"""Analog transmitter loops: 4-20 mA and 0-10 V signals to engineering values, with faults.

Pure. The register (after the point's ``scale``/``offset``) holds the loop signal in mA or
V, as the input module measured it; ``scale_signal`` turns it into the engineering value the
transmitter's range stands for, or into a ``LoopFault`` when the signal is outside the band
where it means a measurement.

4-20 mA follows NAMUR NE 43 (the bands transmitters and alarm systems agree on):

==============================  ==================  ====================================
loop current I                  outcome             why
==============================  ==================  ====================================
I ≤ 3.6 mA                      ``wire_break``      a broken wire reads ~0 mA; 3.6 mA and
                                                    below is also the transmitter's own
                                                    downscale failure signal
3.6 < I < 3.8 mA                ``under_range``     below the measuring window
3.8 ≤ I ≤ 20.5 mA               value               4 mA = ``low``, 20 mA = ``high``; the
                                                    margins are slightly under/over range
                                                    readings, scaled on the same line
20.5 < I < 21.0 mA              ``over_range``      above the measuring window
I ≥ 21.0 mA                     ``sensor_fault``    upscale failure signal or a short
==============================  ==================  ====================================

0-10 V has no live zero, so a broken wire reads as 0 V, a valid value: only signals beyond
the tolerance (default 0.2 V) below 0 V or above 10 V are faults (``under_range``,
``over_range``). Use 4-20 mA where a broken loop must be noticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

NE43_WIRE_BREAK_MA = 3.6
"""At or below: the loop is broken, or the transmitter signals a failure (NE 43 downscale)."""
NE43_LOW_MA = 3.8
"""Lowest current that is a measurement."""
NE43_HIGH_MA = 20.5
"""Highest current that is a measurement."""
NE43_SENSOR_FAULT_MA = 21.0
"""At or above: the transmitter signals a failure (NE 43 upscale), or the loop is shorted."""

VOLTAGE_TOLERANCE_V = 0.2
"""Default margin beyond 0-10 V that still counts as a (slightly out of span) reading."""


class AnalogSignal(StrEnum):
    """The electrical signal of a transmitter."""

    CURRENT_4_20MA = "4-20mA"
    VOLTAGE_0_10V = "0-10V"

    @property
    def span(self) -> tuple[float, float]:
        """Signal at the range's ``low`` and ``high`` (mA or V)."""
        return (4.0, 20.0) if self is AnalogSignal.CURRENT_4_20MA else (0.0, 10.0)

    @property
    def unit(self) -> str:
        return "mA" if self is AnalogSignal.CURRENT_4_20MA else "V"


class LoopFault(StrEnum):
    """Why a signal is not a measurement (see the module table)."""

    WIRE_BREAK = "wire_break"
    UNDER_RANGE = "under_range"
    OVER_RANGE = "over_range"
    SENSOR_FAULT = "sensor_fault"

    @property
    def hint(self) -> str:
        """What to check on site."""
        return _HINTS[self]


_HINTS: dict[LoopFault, str] = {
    LoopFault.WIRE_BREAK: (
        "loop current at or below 3.6 mA (NAMUR NE 43): check the wiring and terminals for a "
        "break, the loop supply, and the transmitter's own diagnostics (it may signal a fault)"
    ),
    LoopFault.UNDER_RANGE: (
        "signal below the measuring range: the process is below the transmitter's range, or "
        "the transmitter's zero has drifted; check its range settings"
    ),
    LoopFault.OVER_RANGE: (
        "signal above the measuring range: the process exceeds the transmitter's range, or "
        "its span is set wrong; check its range settings"
    ),
    LoopFault.SENSOR_FAULT: (
        "loop current at or above 21 mA (NAMUR NE 43): the transmitter signals a failure, or "
        "the loop is shorted; check the transmitter's diagnostics and the wiring"
    ),
}


@dataclass(frozen=True, slots=True)
class AnalogRange:
    """What a transmitter's signal stands for: ``low`` at 4 mA / 0 V, ``high`` at 20 mA / 10 V
    (in the point's unit; ``low`` may be above ``high`` for a reversed transmitter)."""

    signal: AnalogSignal
    low: float
    high: float
    tolerance_v: float = VOLTAGE_TOLERANCE_V
    """0-10 V only: signals down to ``-tolerance_v`` and up to ``10 + tolerance_v`` count."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low {self.low} and high {self.high} must be finite")
        if self.low == self.high:
            raise ValueError(f"low and high are both {self.low}: the range has no span")
        if not 0 <= self.tolerance_v <= 2:
            raise ValueError(f"tolerance_v {self.tolerance_v} is outside 0..2 V")

    def value(self, signal: float) -> float:
        """The engineering value of ``signal`` on the range's straight line (no fault check)."""
        s_low, s_high = self.signal.span
        return self.low + (signal - s_low) / (s_high - s_low) * (self.high - self.low)


def classify(signal_type: AnalogSignal, signal: float, tolerance_v: float) -> LoopFault | None:
    """The fault a signal level shows, or None when it is a measurement."""
    if math.isnan(signal):
        return LoopFault.SENSOR_FAULT
    if signal_type is AnalogSignal.CURRENT_4_20MA:
        if signal <= NE43_WIRE_BREAK_MA:
            return LoopFault.WIRE_BREAK
        if signal < NE43_LOW_MA:
            return LoopFault.UNDER_RANGE
        if signal >= NE43_SENSOR_FAULT_MA:
            return LoopFault.SENSOR_FAULT
        if signal > NE43_HIGH_MA:
            return LoopFault.OVER_RANGE
        return None
    if signal < -tolerance_v:
        return LoopFault.UNDER_RANGE
    if signal > 10.0 + tolerance_v:
        return LoopFault.OVER_RANGE
    return None


def scale_signal(analog: AnalogRange, signal: float) -> float | LoopFault:
    """The engineering value of a loop ``signal`` (mA or V), or the fault it shows."""
    fault = classify(analog.signal, signal, analog.tolerance_v)
    if fault is not None:
        return fault
    return analog.value(signal)


def describe_fault(point: str, analog: AnalogRange, signal: float, fault: LoopFault) -> str:
    """A log/state message: which point, which signal, what it means."""
    return (
        f"point {point!r}: {analog.signal} input reads {signal:.3g} {analog.signal.unit}: "
        f"{fault} -- {fault.hint}"
    )


__all__ = [
    "NE43_HIGH_MA",
    "NE43_LOW_MA",
    "NE43_SENSOR_FAULT_MA",
    "NE43_WIRE_BREAK_MA",
    "AnalogRange",
    "AnalogSignal",
    "LoopFault",
    "classify",
    "describe_fault",
    "scale_signal",
]
