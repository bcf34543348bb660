"""The utility's controls in force, as the 2030.5 client publishes them (bus contract 1).

``gridpilot/v1/{site}/grid/controls`` is retained and republished by the client whenever
the effective controls change and at least every 60 s::

    {"ts": "2026-11-27T10:00:00Z", "source": "ieee2030_5",
     "valid_until": "2026-11-27T10:05:00Z",
     "controls": {"opModExpLimW": {"value": 5000.0, "unit": "W", "source": "event",
                                   "mrid": "A1B2...", "primacy": 1}, ...}}

Only the modes in force are listed; ``{}`` means nothing is in force. The values are plain SI
numbers or percent (the client converted the 2030.5 encodings). A consumer treats the
message as stale after ``valid_until``.

:func:`parse_grid_controls` is strict: a message that is not this shape, or a known mode with
a value of the wrong type, unit or range, is refused whole with a :class:`GridControlsError`
naming the field, and the consumer keeps the last good message. A well-formed mode this
module does not know (the standard has more than are applied here) is kept raw in
``GridControls.other`` rather than refused, so that a newer client does not blind an older
controller to the modes it does know.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from gridpilot.model.time import parse_timestamp_ms

MAX_BYTES = 65_536
MAX_MODES = 64
MAX_CURVE_POINTS = 64
"""2030.5 allows 10 points per DERCurve; the bound only stops an absurd message."""

WATT_LIMIT_MODES = frozenset({"opModExpLimW", "opModImpLimW", "opModGenLimW", "opModLoadLimW"})
"""Limits in W, >= 0."""
SIGNED_WATT_MODES = frozenset({"opModTargetW"})
"""A target in W, positive = generation/discharge."""
VAR_MODES = frozenset({"opModTargetVar"})
PERCENT_MODES = frozenset({"opModMaxLimW"})
"""0..100 % of the DER's rated power (setMaxW)."""
SIGNED_PERCENT_MODES = frozenset({"opModFixedW", "opModFixedVar"})
"""-100..100 % of the DER's rating."""
SWITCH_MODES = frozenset({"opModConnect", "opModEnergize"})
POWER_FACTOR_MODES = frozenset({"opModFixedPFInjectW", "opModFixedPFAbsorbW"})
CURVE_MODES = frozenset(
    {
        "opModVoltVar",
        "opModVoltWatt",
        "opModWattPF",
        "opModWattVar",
        "opModFreqWatt",
        "opModHFRTMayTrip",
        "opModHFRTMustTrip",
        "opModHVRTMayTrip",
        "opModHVRTMomentaryCessation",
        "opModHVRTMustTrip",
        "opModLFRTMayTrip",
        "opModLFRTMustTrip",
        "opModLVRTMayTrip",
        "opModLVRTMomentaryCessation",
        "opModLVRTMustTrip",
    }
)

_MODE_NAME = re.compile(r"^opMod[A-Za-z0-9]{1,60}$")
_UNITS: dict[frozenset[str], str] = {
    WATT_LIMIT_MODES: "W",
    SIGNED_WATT_MODES: "W",
    VAR_MODES: "var",
    PERCENT_MODES: "%",
    SIGNED_PERCENT_MODES: "%",
}


class GridControlsError(ValueError):
    """A grid-controls message refused; the message names the field at fault."""


@dataclass(frozen=True, slots=True)
class PowerFactor:
    """A fixed power factor with its excitation (``over`` = injecting reactive power)."""

    pf: float
    excitation: Literal["over", "under"]

    @property
    def signed(self) -> float:
        """``pf`` positive when over-excited, negative when under-excited."""
        return self.pf if self.excitation == "over" else -self.pf


@dataclass(frozen=True, slots=True)
class Curve:
    """A DERCurve in plain units: ``points`` are (x, y) in the units ``x`` and ``y`` name."""

    points: tuple[tuple[float, float], ...]
    x: str
    y: str
    open_loop_s: float | None = None


ModeValue = float | bool | PowerFactor | Curve


@dataclass(frozen=True, slots=True)
class ControlMode:
    """One mode in force and where it came from."""

    name: str
    value: ModeValue
    source: Literal["event", "default"]
    """``event``: a DERControl; ``default``: the DefaultDERControl (nothing else active)."""
    unit: str | None = None
    mrid: str | None = None
    primacy: int | None = None

    def describe(self) -> str:
        """``opModExpLimW 5000 W (event A1B2C3D4, primacy 1)``."""
        match self.value:
            case bool() as on:
                text = "true" if on else "false"
            case float() as number:
                text = f"{number:g}" + (f" {self.unit}" if self.unit else "")
            case PowerFactor() as pf:
                text = f"pf {pf.pf:g} {pf.excitation}-excited"
            case Curve() as curve:
                text = f"curve of {len(curve.points)} points"
        origin = self.source if self.mrid is None else f"{self.source} {self.mrid[:8]}"
        if self.primacy is not None:
            origin += f", primacy {self.primacy}"
        return f"{self.name} {text} ({origin})"


@dataclass(frozen=True, slots=True)
class GridControls:
    """A parsed grid-controls message."""

    ts: datetime
    source: str
    valid_until: datetime
    modes: Mapping[str, ControlMode] = field(default_factory=dict)
    other: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Well-formed modes this module does not know, as received: reported, not applied."""

    def mode(self, name: str) -> ControlMode | None:
        return self.modes.get(name)

    def is_stale(self, now: datetime) -> bool:
        return now > self.valid_until

    def defaults_only(self) -> GridControls:
        """The same message with only the DefaultDERControl's modes."""
        kept = {k: m for k, m in self.modes.items() if m.source == "default"}
        return GridControls(self.ts, self.source, self.valid_until, kept, {})


def parse_grid_controls(payload: bytes) -> GridControls:
    """Parse and check a grid-controls message; raises :class:`GridControlsError`."""
    if len(payload) > MAX_BYTES:
        raise GridControlsError(f"message of {len(payload)} bytes is over {MAX_BYTES}")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise GridControlsError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise GridControlsError("must be a JSON object")
    unknown = sorted(set(doc) - {"ts", "source", "valid_until", "controls"})
    if unknown:
        raise GridControlsError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    ts = _time(doc, "ts")
    valid_until = _time(doc, "valid_until")
    if valid_until < ts:
        raise GridControlsError(
            f"'valid_until' ({valid_until.isoformat()}) is before 'ts' ({ts.isoformat()})"
        )
    source = doc.get("source")
    if not isinstance(source, str) or not 1 <= len(source) <= 64:
        raise GridControlsError("'source' must be text of 1-64 characters")
    controls = doc.get("controls")
    if not isinstance(controls, dict):
        raise GridControlsError("'controls' must be an object of the modes in force ({} = none)")
    if len(controls) > MAX_MODES:
        raise GridControlsError(f"'controls' lists {len(controls)} modes, over {MAX_MODES}")
    modes: dict[str, ControlMode] = {}
    other: dict[str, Any] = {}
    for name, entry in controls.items():
        if not _MODE_NAME.match(name):
            raise GridControlsError(f"controls: {name[:80]!r} is not an opMod... mode name")
        if not isinstance(entry, dict) or "value" not in entry:
            raise GridControlsError(f"controls.{name} must be an object with a 'value'")
        try:
            mode = _mode(name, entry)
        except GridControlsError as exc:
            raise GridControlsError(f"controls.{name}: {exc}") from None
        if mode is None:
            other[name] = dict(entry)
        else:
            modes[name] = mode
    return GridControls(ts, source, valid_until, modes, other)


def _time(doc: Mapping[str, Any], name: str) -> datetime:
    value = doc.get(name)
    if not isinstance(value, str):
        raise GridControlsError(f"'{name}' must be RFC 3339 UTC text")
    try:
        ms = parse_timestamp_ms(value)
    except ValueError as exc:
        raise GridControlsError(f"'{name}': {exc}") from None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _mode(name: str, entry: Mapping[str, Any]) -> ControlMode | None:
    unknown = sorted(set(entry) - {"value", "unit", "source", "mrid", "primacy"})
    if unknown:
        raise GridControlsError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    source = entry.get("source")
    if source not in ("event", "default"):
        raise GridControlsError(f"'source' must be 'event' or 'default', not {source!r}")
    mrid = entry.get("mrid")
    if mrid is not None and (not isinstance(mrid, str) or not 1 <= len(mrid) <= 64):
        raise GridControlsError("'mrid' must be null or text of 1-64 characters")
    primacy = entry.get("primacy")
    if primacy is not None and (
        isinstance(primacy, bool) or not isinstance(primacy, int) or not 0 <= primacy <= 255
    ):
        raise GridControlsError("'primacy' must be null or an integer 0-255")
    unit = entry.get("unit")
    if unit is not None and (not isinstance(unit, str) or len(unit) > 16):
        raise GridControlsError("'unit' must be null or short text")
    raw = entry["value"]
    value: ModeValue
    for group, expected in _UNITS.items():
        if name in group:
            if unit is not None and unit != expected:
                raise GridControlsError(f"'unit' must be {expected!r}, not {unit!r}")
            unit = expected
            value = _number(raw)
            break
    else:
        if name in SWITCH_MODES:
            if not isinstance(raw, bool):
                raise GridControlsError(f"'value' must be true or false, not {raw!r}")
            value = raw
        elif name in POWER_FACTOR_MODES:
            value = _power_factor(raw)
        elif name in CURVE_MODES:
            value = _curve(raw)
        else:
            return None
    if isinstance(value, float):
        if name in WATT_LIMIT_MODES and value < 0.0:
            raise GridControlsError(f"'value' {value:g} W: a limit must be >= 0")
        if name in PERCENT_MODES and not 0.0 <= value <= 100.0:
            raise GridControlsError(f"'value' {value:g} %: must be in 0..100")
        if name in SIGNED_PERCENT_MODES and not -100.0 <= value <= 100.0:
            raise GridControlsError(f"'value' {value:g} %: must be in -100..100")
    return ControlMode(name, value, source, unit, mrid, primacy)


def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise GridControlsError(f"'value' must be a finite number, not {raw!r}")
    return float(raw)


def _power_factor(raw: object) -> PowerFactor:
    if not isinstance(raw, dict) or set(raw) != {"pf", "excitation"}:
        raise GridControlsError('\'value\' must be {"pf": 0..1, "excitation": over|under}')
    pf = _number(raw["pf"])
    if not 0.0 < pf <= 1.0:
        raise GridControlsError(f"'pf' {pf:g} must be in (0, 1]")
    excitation = raw["excitation"]
    if excitation not in ("over", "under"):
        raise GridControlsError(f"'excitation' must be 'over' or 'under', not {excitation!r}")
    return PowerFactor(pf, excitation)


def _curve(raw: object) -> Curve:
    if not isinstance(raw, dict):
        raise GridControlsError("'value' must be a curve object with 'points', 'x' and 'y'")
    unknown = sorted(set(raw) - {"points", "x", "y", "open_loop_s"})
    if unknown:
        raise GridControlsError(f"curve: unknown field(s) {', '.join(map(repr, unknown))}")
    points = raw.get("points")
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_CURVE_POINTS:
        raise GridControlsError(f"curve 'points' must be a list of 1-{MAX_CURVE_POINTS} [x, y]")
    parsed: list[tuple[float, float]] = []
    for point in points:
        if not isinstance(point, list) or len(point) != 2:
            raise GridControlsError("each curve point must be [x, y]")
        parsed.append((_number(point[0]), _number(point[1])))
    if any(b[0] < a[0] for a, b in itertools.pairwise(parsed)):
        raise GridControlsError("curve points must be in increasing x")
    x, y = raw.get("x"), raw.get("y")
    if not isinstance(x, str) or not isinstance(y, str) or not x or not y:
        raise GridControlsError("curve 'x' and 'y' must name their units")
    open_loop = raw.get("open_loop_s")
    open_loop_s = None if open_loop is None else _number(open_loop)
    if open_loop_s is not None and open_loop_s < 0.0:
        raise GridControlsError("curve 'open_loop_s' must be >= 0")
    return Curve(tuple(parsed), x, y, open_loop_s)


def encode_grid_controls(controls: GridControls) -> bytes:
    """The wire form of ``controls`` (tests, the demo; the client builds its own)."""

    def value(v: ModeValue) -> object:
        match v:
            case PowerFactor() as pf:
                return {"pf": pf.pf, "excitation": pf.excitation}
            case Curve() as c:
                doc: dict[str, object] = {"points": [list(p) for p in c.points], "x": c.x,
                                          "y": c.y}  # fmt: skip
                if c.open_loop_s is not None:
                    doc["open_loop_s"] = c.open_loop_s
                return doc
            case _:
                return v

    def stamp(t: datetime) -> str:
        return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return orjson.dumps(
        {
            "ts": stamp(controls.ts),
            "source": controls.source,
            "valid_until": stamp(controls.valid_until),
            "controls": {
                **{
                    name: {
                        "value": value(m.value),
                        "unit": m.unit,
                        "source": m.source,
                        "mrid": m.mrid,
                        "primacy": m.primacy,
                    }
                    for name, m in controls.modes.items()
                },
                **{name: dict(entry) for name, entry in controls.other.items()},
            },
        }
    )
