"""Commands: validating setpoint requests, judging read-backs, building their results.

Pure: no I/O, the current time is a parameter. The service does the write and the read
between :func:`parse_command` and :func:`judge_readback`.

The wire formats are ``gridpilot.bus.codec``'s: a command arrives on
``gridpilot/v1/{site}/{device}/command`` and is decoded by ``decode_command``::

    {"id": "6f1c...", "point": "active_power_setpoint_w", "value": -25000.0,
     "expires": "2026-11-26T12:00:10Z", "source": "peak_shaving"}

``id``, ``point``, ``value`` and ``expires`` are required (an absolute target with an
expiry is what makes a late or repeated delivery harmless); ``source`` is optional.
This module adds what needs the site configuration and the time: device, point,
writability, coil values, expiry, ``valid_range``.

Every command ends in exactly one outcome (STYLE.md #8), published on ``.../command/result``
as a ``bus.codec.CommandResult`` (:func:`result_of`, :func:`encode_result`):

* :class:`Applied` — written, and the read-back matches the target within the register's
  resolution.
* :class:`Rejected` — not attempted: malformed, unknown device or point, not writable,
  not a number, a fraction for a point that holds whole numbers (an enumeration, a mode,
  a count), outside ``valid_range``, expired, not representable in the register type,
  or the gateway is busy/stopping. ``code`` is a :class:`RejectCode`.
* :class:`Failed` — attempted, but the write or the read-back failed, or the read-back
  differs from the target. ``code`` is a :class:`FailCode`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import orjson

from gridpilot.bus.codec import (
    MAX_ID_CHARS,
    CommandResult,
    CommandStatus,
    decode_command,
    encode_command_result,
)
from gridpilot.bus.errors import PayloadError
from gridpilot.config.models import DeviceConfig, PointConfig
from gridpilot.model import DataType, to_rfc3339

MAX_COMMAND_BYTES = 16 * 1024
"""Larger command payloads are rejected unread."""


class RejectCode(StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_POINT = "unknown_point"
    NOT_WRITABLE = "not_writable"
    NOT_A_NUMBER = "not_a_number"
    NOT_AN_INTEGER = "not_an_integer"
    OUT_OF_RANGE = "out_of_range"
    EXPIRED = "expired"
    NOT_REPRESENTABLE = "not_representable"
    BUSY = "busy"
    STOPPING = "stopping"


class FailCode(StrEnum):
    WRITE_FAILED = "write_failed"
    READBACK_FAILED = "readback_failed"
    READBACK_MISMATCH = "readback_mismatch"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Command:
    """A validated setpoint request for one point of one device."""

    id: str
    device: str
    point: str
    value: float
    expires_ms: int
    source: str = ""

    def is_expired(self, now_ms: int) -> bool:
        """Expired when ``expires <= now``: a command is never applied at or after expiry."""
        return self.expires_ms <= now_ms


@dataclass(frozen=True, slots=True)
class Applied:
    command: Command
    readback: float


@dataclass(frozen=True, slots=True)
class Rejected:
    """Not attempted. ``id``, ``point`` and ``value`` echo what could be read."""

    device: str
    code: RejectCode
    reason: str
    id: str | None = None
    point: str | None = None
    value: float | None = None
    """The requested value when it was a finite number."""


@dataclass(frozen=True, slots=True)
class Failed:
    command: Command
    code: FailCode
    reason: str
    readback: float | None = None


Outcome = Applied | Rejected | Failed
OutcomeStatus = Literal["applied", "rejected", "failed"]


def status_of(outcome: Outcome) -> OutcomeStatus:
    match outcome:
        case Applied():
            return "applied"
        case Rejected():
            return "rejected"
        case Failed():
            return "failed"


def parse_command(
    payload: bytes,
    device_id: str,
    devices: Mapping[str, DeviceConfig],
    now_ms: int,
) -> Command | Rejected:
    """Validate a command payload addressed to ``device_id`` (from the topic).

    Checks, in order: size, then the wire shape by ``bus.codec.decode_command`` (malformed;
    ``not_a_number`` when ``value`` is there but not a finite number), device, point,
    writability, 0/1 for coils, a whole number for points that hold whole numbers
    (``not_an_integer``), expiry, ``valid_range``. The first failing check decides the
    reason.
    """

    if len(payload) > MAX_COMMAND_BYTES:
        return Rejected(
            device_id,
            RejectCode.MALFORMED,
            f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}",
        )
    try:
        wire = decode_command(payload)
    except PayloadError as exc:
        return _undecodable(payload, device_id, exc)

    def reject(code: RejectCode, reason: str) -> Rejected:
        return Rejected(device_id, code, reason, wire.id, wire.point, wire.value)

    device = devices.get(device_id)
    if device is None:
        return reject(RejectCode.UNKNOWN_DEVICE, f"device {device_id!r} is not configured")
    point = device.point(wire.point)
    if point is None:
        return reject(RejectCode.UNKNOWN_POINT, f"device {device_id!r} has no point {wire.point!r}")
    not_writable = _why_not_writable(device, point)
    if not_writable is not None:
        return reject(RejectCode.NOT_WRITABLE, not_writable)
    if point.table.is_bit and wire.value not in (0.0, 1.0):
        return reject(RejectCode.OUT_OF_RANGE, f"{wire.point} is a coil: value must be 0 or 1")
    if holds_whole_numbers(point) and not wire.value.is_integer():
        # Rounding 0.5 to 0 or 1 would pick a mode or an enable state the sender did not
        # ask for, and the read-back (within one step) would call it applied.
        return reject(
            RejectCode.NOT_AN_INTEGER,
            f"{wire.value:g} is not an integer: {wire.point} is an enumeration, flag or "
            f"count ({point.type} register) and holds whole numbers; send one of them"
            + (
                f" within [{point.valid_range[0]:g}, {point.valid_range[1]:g}]"
                if point.valid_range is not None
                else ""
            ),
        )
    if wire.expires_ms <= now_ms:
        return reject(
            RejectCode.EXPIRED,
            f"expired at {to_rfc3339(wire.expires_ms)}, received at {to_rfc3339(now_ms)}",
        )
    if point.valid_range is not None:
        low, high = point.valid_range
        if not low <= wire.value <= high:
            return reject(
                RejectCode.OUT_OF_RANGE,
                f"{wire.value:g} is outside the valid range [{low:g}, {high:g}] of {wire.point}",
            )
    return Command(wire.id, device_id, wire.point, wire.value, wire.expires_ms, wire.source or "")


WHOLE_NUMBER_SUFFIXES = ("_state", "_count")
"""Point-name suffixes that declare dimensionless integers (``model.units``): enumerations,
modes, enable flags, status words, counters."""


def holds_whole_numbers(point: PointConfig) -> bool:
    """True when the point's name declares an integer (``_state``, ``_count``; every point
    name ends in its unit): an enumeration, a mode, an enable flag, a status word, a
    counter. A fraction sent to it is a mistake to refuse, not a value to round.
    Quantities in integer registers (``..._w`` in whole watts) are not such points: a
    controller's -12345.6 W is rounded to the register's step as always. Nor are unitless
    points with fractional steps (SunSpec 711 ``KOf``, a droop of 0.050 at scale 0.001,
    named ``_count`` for want of a unit): their register holds fractions."""
    return (
        point.point.endswith(WHOLE_NUMBER_SUFFIXES)
        and not point.table.is_bit
        and float(point.scale).is_integer()
    )


def _undecodable(payload: bytes, device_id: str, error: PayloadError) -> Rejected:
    """The rejection of a payload the codec refused, echoing what of it is readable."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    fields = data if isinstance(data, dict) else {}
    raw_id, raw_point = fields.get("id"), fields.get("point")
    # A value that is there but not a number is the sender's mistake about the point, not
    # about the message format; it has its own code.
    code = (
        RejectCode.NOT_A_NUMBER
        if error.field == "value" and "value" in fields
        else RejectCode.MALFORMED
    )
    return Rejected(
        device_id,
        code,
        str(error),
        raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_ID_CHARS else None,
        raw_point if isinstance(raw_point, str) else None,
        _echo(fields.get("value")),
    )


def _why_not_writable(device: DeviceConfig, point: PointConfig) -> str | None:
    if not device.protocol.is_modbus or point.address is None:
        return f"device {device.id!r} is not polled by the gateway ({device.protocol})"
    if not point.writable:
        return f"point {point.point!r} is not writable (set writable: true in the site file)"
    if point.type is DataType.STRING:
        return f"point {point.point!r} holds text; commands set numbers"
    if point.type is DataType.BITFIELD and point.bit is not None:
        # Setting one bit means read-modify-write of a register the device also changes:
        # not atomic, so not offered.
        return f"point {point.point!r} is one bit of a register; single bits cannot be written"
    return None


def _echo(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def not_representable(command: Command, message: str) -> Rejected:
    """The value passed validation but does not fit the register type (an EncodeError)."""
    return Rejected(
        command.device,
        RejectCode.NOT_REPRESENTABLE,
        message,
        command.id,
        command.point,
        command.value,
    )


def rejected_as(command: Command, code: RejectCode, reason: str) -> Rejected:
    """Reject an already validated command (expired while queued, busy, stopping)."""
    return Rejected(command.device, code, reason, command.id, command.point, command.value)


def readback_tolerance(point: PointConfig, target: float) -> float:
    """Largest accepted |read-back - target|: the register's resolution.

    Integer registers hold ``round((target - offset) / scale)``, so the read-back may
    differ by up to one step, ``|scale|`` (one step, not half, so that devices that
    truncate instead of rounding pass too). An enumeration, flag or count
    (:func:`holds_whole_numbers`) given a whole number is stored without rounding: its
    read-back must be that very value, or a device that ignored "enable = 1" and still
    reads 0 would count as applied. Float registers differ
    only by their precision. A tiny absolute slack absorbs binary rounding of the scale
    arithmetic.
    """
    slack = 1e-9 * max(1.0, abs(target))
    magnitude = abs(target - point.offset)
    if point.table.is_bit or point.type is DataType.BOOL:
        return slack
    if holds_whole_numbers(point) and float(target).is_integer():
        return slack
    if point.type is DataType.FLOAT32:
        return magnitude * 2.0**-22 + slack
    if point.type is DataType.FLOAT64:
        return magnitude * 2.0**-50 + slack
    return abs(point.scale) + slack


def judge_readback(command: Command, point: PointConfig, readback: float | str) -> Applied | Failed:
    """Compare what the device reads back after the write with the command's target."""
    if isinstance(readback, str) or not math.isfinite(readback):
        return Failed(
            command,
            FailCode.READBACK_FAILED,
            f"read-back of {command.point} is not a number: {readback!r}",
        )
    tolerance = readback_tolerance(point, command.value)
    if abs(readback - command.value) > tolerance:
        return Failed(
            command,
            FailCode.READBACK_MISMATCH,
            f"read-back {readback:g} differs from the target {command.value:g} by more than "
            f"the resolution {tolerance:g}; the device may clamp or ignore the setpoint",
            readback,
        )
    return Applied(command, readback)


def result_of(outcome: Outcome, ts_ms: int) -> CommandResult:
    """The ``command/result`` of an outcome, decided at ``ts_ms``.

    ``code`` is the ``RejectCode``/``FailCode`` value (None when applied), ``reason`` the
    sentence for people, ``readback`` what the device held after the write (None when it
    was not read back).
    """
    match outcome:
        case Applied(command, readback):
            return CommandResult(
                id=command.id,
                status=CommandStatus.APPLIED,
                code=None,
                reason=None,
                point=command.point,
                value=command.value,
                readback=readback,
                ts_ms=ts_ms,
            )
        case Failed(command, code, reason, readback):
            return CommandResult(
                id=command.id,
                status=CommandStatus.FAILED,
                code=code.value,
                reason=reason,
                point=command.point,
                value=command.value,
                readback=readback,
                ts_ms=ts_ms,
            )
        case Rejected(_, code, reason, cmd_id, point, value):
            return CommandResult(
                id=cmd_id,
                status=CommandStatus.REJECTED,
                code=code.value,
                reason=reason,
                point=point,
                value=value,
                readback=None,
                ts_ms=ts_ms,
            )


def encode_result(outcome: Outcome, ts_ms: int) -> bytes:
    """The ``command/result`` payload of an outcome (``bus.codec.encode_command_result``)."""
    return encode_command_result(result_of(outcome, ts_ms))


class RecentIds:
    """The last ``capacity`` command ids of a device, to drop redelivered duplicates.

    MQTT QoS 1 is at-least-once: a command may arrive twice. Its target is absolute, so
    applying it twice would be harmless, but every command gets exactly one result: the
    duplicate is dropped (and counted) instead.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, cmd_id: str) -> bool:
        """True when ``cmd_id`` was seen before; otherwise remember it and return False."""
        if cmd_id in self._ids:
            self._ids.move_to_end(cmd_id)
            return True
        self._ids[cmd_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False
