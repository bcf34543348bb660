"""Validation of incoming telemetry: a pure function of (site, device, payload, now, rules).

The contract (ARCHITECTURE.md, "Telemetry payload"):

    {"ts": "2026-11-26T12:00:00.000Z" | 1795694400000, "seq": 1842,
     "values": {"active_power_w": 41250.0}}

Invariants:
- Every value either becomes a ``Sample`` or a ``Rejection`` with a reason; nothing is
  dropped silently. A rejection with ``point=None`` concerns the whole message.
- Valid siblings of a rejected value are kept.
- Whole-message checks run first and cheapest first: size (before parsing), device, JSON,
  shape, ``ts``. Then per value: point known (or acceptable), number, finite, in range.
- ``ts`` is required. A receiver-side timestamp would make a redelivered message a new
  sample, breaking "written twice, stored once".
- ``NaN``/``Infinity`` literals are not JSON, but common senders emit them (Python's
  ``json.dumps``, many C libraries). A message containing them is parsed leniently, so that
  exactly those values are rejected as ``not_finite`` and their siblings kept.
- Booleans are not numbers (``true`` is not 1.0 W). Integers become floats.

This is the hot path of ingest (~200k values/s target): one dict lookup per value, type
checks with ``type(v) is float`` and chained comparisons; error strings are built only for
rejections.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from gridpilot.config.models import GridPilotConfig
from gridpilot.model import Sample, is_valid_identifier, parse_timestamp_ms
from gridpilot.model.units import UNIT_SUFFIXES

__all__ = [
    "Outcome",
    "RejectReason",
    "Rejection",
    "ValidationRules",
    "validate",
]

_INF: Final = math.inf
_NO_RANGE: Final = (-math.inf, math.inf)
_UNIT_SUFFIXES: Final = tuple(UNIT_SUFFIXES)
# 2000-01-01T00:00:00Z. Earlier epoch-ms values are almost always epoch *seconds*.
_MIN_PLAUSIBLE_TS_MS: Final = 946_684_800_000
_DETAIL_CHARS: Final = 120
# Sample(...) runs the NamedTuple's Python-level __new__ (a frame per value, a fifth of the
# ingest loop's time at 200k values/s); tuple.__new__ builds the same Sample in C.
_new_tuple: Final = tuple.__new__


class RejectReason(StrEnum):
    """Why a message or a value was not stored; counted per reason in ``IngestStats``."""

    OVERSIZED = "oversized"  # payload over ingest.max_payload_bytes (checked before parsing)
    UNKNOWN_DEVICE = "unknown_device"  # device (or site) not in the configuration
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"  # the payload is JSON but not an object
    MISSING_VALUES = "missing_values"  # no "values" object
    BAD_TS = "bad_ts"  # ts missing, malformed, negative or implausibly old
    FUTURE_TS = "future_ts"  # ts beyond now + ingest.max_future_skew
    BAD_POINT_NAME = "bad_point_name"  # not a lower-case identifier with a unit suffix
    UNKNOWN_POINT = "unknown_point"  # not configured for the device
    WRONG_TYPE = "wrong_type"  # not a number (booleans, text, null, lists...); bad seq
    NOT_FINITE = "not_finite"  # NaN, Infinity, or too large for a float
    OUT_OF_RANGE = "out_of_range"  # outside the point's valid_range
    UNAUTHENTICATED = "unauthenticated"  # unsigned, or not signed by the device's publisher


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected value (``point`` set) or a rejected message (``point`` None)."""

    point: str | None
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What validation made of one message. Do not mutate the lists."""

    samples: list[Sample]
    rejections: list[Rejection]
    ts_ms: int | None = None
    seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.rejections

    @property
    def reasons(self) -> list[RejectReason]:
        """Distinct reasons in order of first appearance."""
        return list(dict.fromkeys(r.reason for r in self.rejections))


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """What validation checks against, built once from the configuration.

    ``devices`` maps device id -> point name -> inclusive (min, max); a point without a
    configured ``valid_range`` has (-inf, inf).
    """

    site: str
    devices: Mapping[str, Mapping[str, tuple[float, float]]]
    max_payload_bytes: int
    max_future_skew_ms: int
    accept_unknown_points: bool = False
    open_devices: frozenset[str] = frozenset()
    """GridPilot's own publishers (the controller): any well-named point is accepted."""

    @classmethod
    def from_config(cls, config: GridPilotConfig) -> ValidationRules:
        devices = {
            device.id: {
                point.point: point.valid_range if point.valid_range is not None else _NO_RANGE
                for point in device.points
            }
            for device in config.devices
        }
        ingest = config.ingest
        return cls(
            site=config.site.id,
            devices=devices,
            max_payload_bytes=ingest.max_payload_bytes,
            max_future_skew_ms=int(ingest.max_future_skew.total_seconds() * 1000),
            accept_unknown_points=ingest.accept_unknown_points,
            # The controller and SunSpec-discovered devices: their points are not listed in
            # the site file (any well-named point is accepted).
            open_devices=frozenset(
                ([config.control.id] if config.control is not None else [])
                + [d.id for d in config.devices if d.sunspec is not None]
            ),
        )


def validate(
    site: str, device: str, payload: bytes, now_ms: int, rules: ValidationRules
) -> Outcome:
    """Split one telemetry message into accepted samples and rejections."""
    checked = _check_message(site, device, payload, now_ms, rules)
    if isinstance(checked, Outcome):
        return checked
    points, values, ts, seq, rejections = checked

    samples: list[Sample] = []
    append = samples.append
    for name, value in values.items():
        bounds = points.get(name)
        if bounds is None:
            rejection = _unknown_point(device, name, rules)
            if rejection is not None:
                rejections.append(rejection)
                continue
            bounds = _NO_RANGE
        kind = type(value)
        if kind is float:
            number: float = value
        elif kind is int:
            try:
                number = float(value)
            except OverflowError:  # only from the lenient parser: ints beyond 64 bits
                rejections.append(Rejection(name, RejectReason.NOT_FINITE, "too large"))
                continue
        else:
            rejections.append(_not_a_number(name, value))
            continue
        if not -_INF < number < _INF:
            rejections.append(Rejection(name, RejectReason.NOT_FINITE, f"{number} is not finite"))
            continue
        low, high = bounds
        if not low <= number <= high:
            rejections.append(
                Rejection(
                    name,
                    RejectReason.OUT_OF_RANGE,
                    f"{number:g} is outside the valid range [{low:g}, {high:g}]",
                )
            )
            continue
        append(_new_tuple(Sample, (site, device, name, ts, number)))
    return Outcome(samples, rejections, ts, seq)


_Checked = tuple[
    Mapping[str, tuple[float, float]], dict[str, Any], int, int | None, list[Rejection]
]


def _check_message(
    site: str, device: str, payload: bytes, now_ms: int, rules: ValidationRules
) -> Outcome | _Checked:
    """The whole-message checks: a rejected ``Outcome``, or what the value loop needs."""
    size = len(payload)
    if size > rules.max_payload_bytes:
        return _whole(
            RejectReason.OVERSIZED,
            f"payload is {size} bytes; the limit is {rules.max_payload_bytes} "
            "(ingest.max_payload_bytes): send fewer values per message",
        )
    if site != rules.site:
        return _whole(
            RejectReason.UNKNOWN_DEVICE, f"site {_clip(site)!r} is not this site ({rules.site!r})"
        )
    points = rules.devices.get(device)
    if points is None and device in rules.open_devices:
        points = {}
    if points is None:
        return _whole(
            RejectReason.UNKNOWN_DEVICE,
            f"device {_clip(device)!r} is not in the configuration of site {site!r}",
        )

    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        doc = _lenient_loads(payload)
        if doc is None:
            return _whole(RejectReason.NOT_JSON, f"not JSON: {exc}")
    if type(doc) is not dict:
        return _whole(
            RejectReason.NOT_OBJECT, f"payload is a JSON {_json_type(doc)}, expected an object"
        )
    values = doc.get("values")
    if type(values) is not dict:
        detail = (
            "no 'values' object"
            if values is None
            else f"'values' is a JSON {_json_type(values)}, expected an object"
        )
        return _whole(RejectReason.MISSING_VALUES, detail)

    raw_ts = doc.get("ts")
    if type(raw_ts) is int and raw_ts >= _MIN_PLAUSIBLE_TS_MS:
        ts: int = raw_ts
    else:
        ts_or_error = _parse_ts(raw_ts)
        if isinstance(ts_or_error, str):
            return _whole(RejectReason.BAD_TS, ts_or_error)
        ts = ts_or_error
    if ts - now_ms > rules.max_future_skew_ms:
        ahead = ts - now_ms
        # Integer arithmetic: the lenient parser gives ints of hundreds of digits, and
        # dividing one by 1000 into a float raised OverflowError (found by fuzzing).
        return _whole(
            RejectReason.FUTURE_TS,
            f"ts is {_clip(str(ahead // 1000))}.{ahead % 1000:03d} s in the future; the limit is "
            f"{rules.max_future_skew_ms / 1000:g} s (ingest.max_future_skew): check the "
            "sender's clock",
        )

    rejections: list[Rejection] = []
    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or seq < 0):
        rejections.append(
            Rejection(None, RejectReason.WRONG_TYPE, f"seq {_clip(repr(seq))} is not a counter")
        )
        seq = None
    return points, values, ts, seq, rejections


def _not_a_number(name: str, value: object) -> Rejection:
    try:
        shown = _clip(json.dumps(value))
    except RecursionError:
        # orjson parses arrays up to 1024 deep; json.dumps gives up near 1000. One such
        # value must be rejected like any other, not crash ingest (benchmarks/fuzz/fuzz.py).
        shown = "a deeply nested value"
    return Rejection(
        name,
        RejectReason.WRONG_TYPE,
        f"{shown} is a JSON {_json_type(value)}, not a number",
    )


def _whole(reason: RejectReason, detail: str) -> Outcome:
    return Outcome([], [Rejection(None, reason, detail)])


def _unknown_point(device: str, name: str, rules: ValidationRules) -> Rejection | None:
    if not (is_valid_identifier(name) and name.endswith(_UNIT_SUFFIXES)):
        return Rejection(
            _clip(name),
            RejectReason.BAD_POINT_NAME,
            "point names are lower-case identifiers ending in a unit suffix, e.g. 'active_power_w'",
        )
    if rules.accept_unknown_points or device in rules.open_devices:
        return None
    return Rejection(
        name,
        RejectReason.UNKNOWN_POINT,
        f"device {device!r} has no point {name!r} configured (or set ingest.accept_unknown_points)",
    )


def _parse_ts(raw: object) -> int | str:
    """Epoch ms from a ``ts`` value, or the reason it is not one."""
    if raw is None:
        return "ts is missing; stamp each message at the source"
    try:
        ts = parse_timestamp_ms(raw)
    except ValueError as exc:
        return _clip(str(exc))
    if ts < _MIN_PLAUSIBLE_TS_MS:
        return (
            f"ts {ts} is before the year 2000; is it in seconds? send epoch milliseconds "
            "or RFC 3339"
        )
    return ts


def _lenient_loads(payload: bytes) -> Any:
    """Parse JSON that also contains NaN/Infinity literals; None if it is not even that."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


_JSON_TYPES: Final[dict[type, str]] = {
    bool: "boolean",
    str: "string",
    type(None): "null",
    list: "array",
    dict: "object",
    int: "number",
    float: "number",
}


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."
