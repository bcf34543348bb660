"""Commands: parsing and validating setpoint requests, judging read-backs, result messages.

Pure: no I/O, the current time is a parameter. The service does the write and the read
between :func:`parse_command` and :func:`judge_readback`.

A command arrives on ``gridpilot/v1/{site}/{device}/command`` as JSON::

    {"id": "6f1c...", "point": "active_power_setpoint_w", "value": -25000.0,
     "expires": "2026-11-26T12:00:10Z", "source": "peak_shaving"}

``id``, ``point``, ``value`` and ``expires`` are required (an absolute target with an
expiry is what makes a late or repeated delivery harmless); ``source`` is optional.
``expires`` is RFC 3339 with an offset or integer epoch milliseconds.

Every command ends in exactly one outcome (STYLE.md #8), published on ``.../command/result``:

* :class:`Applied` — written, and the read-back matches the target within the register's
  resolution.
* :class:`Rejected` — not attempted: malformed, unknown device or point, not writable,
  not a number, outside ``valid_range``, expired, not representable in the register type,
  or the gateway is busy/stopping.
* :class:`Failed` — attempted, but the write or the read-back failed, or the read-back
  differs from the target.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import orjson

from gridpilot.config.models import DeviceConfig, DeviceProtocol, PointConfig
from gridpilot.model import DataType, parse_timestamp_ms, to_rfc3339

MAX_COMMAND_BYTES = 16 * 1024
"""Larger command payloads are rejected unread."""
MAX_ID_LENGTH = 128


class RejectCode(StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_POINT = "unknown_point"
    NOT_WRITABLE = "not_writable"
    NOT_A_NUMBER = "not_a_number"
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

    Checks, in order: size and JSON shape (malformed), device, point, writability, value
    (a finite number; 0/1 for coils), expiry, ``valid_range``. The first failing check
    decides the reason.
    """

    if len(payload) > MAX_COMMAND_BYTES:
        return Rejected(
            device_id,
            RejectCode.MALFORMED,
            f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}",
        )
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Rejected(device_id, RejectCode.MALFORMED, f"payload is not JSON: {exc}")
    if not isinstance(data, dict):
        return Rejected(
            device_id,
            RejectCode.MALFORMED,
            f"payload is {_json_type(data)}, expected a JSON object",
        )

    raw_id, raw_point, raw_value = data.get("id"), data.get("point"), data.get("value")
    cmd_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_ID_LENGTH else None
    point_name = raw_point if isinstance(raw_point, str) else None

    def reject(code: RejectCode, reason: str) -> Rejected:
        return Rejected(device_id, code, reason, cmd_id, point_name, _echo(raw_value))

    if cmd_id is None:
        return reject(
            RejectCode.MALFORMED,
            f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters",
        )
    if point_name is None:
        return reject(RejectCode.MALFORMED, "'point' must be a string")
    if "value" not in data:
        return reject(RejectCode.MALFORMED, "'value' is missing")
    source = data.get("source", "")
    if not isinstance(source, str):
        return reject(RejectCode.MALFORMED, "'source' must be a string")
    if "expires" not in data:
        return reject(
            RejectCode.MALFORMED,
            "'expires' is missing: commands need an expiry (RFC 3339 or epoch ms)",
        )
    try:
        expires_ms = parse_timestamp_ms(data["expires"])
    except ValueError as exc:
        return reject(RejectCode.MALFORMED, f"'expires': {exc}")

    device = devices.get(device_id)
    if device is None:
        return reject(RejectCode.UNKNOWN_DEVICE, f"device {device_id!r} is not configured")
    point = device.point(point_name)
    if point is None:
        return reject(RejectCode.UNKNOWN_POINT, f"device {device_id!r} has no point {point_name!r}")
    not_writable = _why_not_writable(device, point)
    if not_writable is not None:
        return reject(RejectCode.NOT_WRITABLE, not_writable)

    if isinstance(raw_value, bool) or not isinstance(raw_value, int | float):
        return reject(
            RejectCode.NOT_A_NUMBER, f"'value' must be a number, got {_json_type(raw_value)}"
        )
    value = float(raw_value)
    if not math.isfinite(value):
        return reject(RejectCode.NOT_A_NUMBER, f"'value' {value} is not finite")
    if point.table.is_bit and value not in (0.0, 1.0):
        return reject(RejectCode.OUT_OF_RANGE, f"{point_name} is a coil: value must be 0 or 1")

    if expires_ms <= now_ms:
        return reject(
            RejectCode.EXPIRED,
            f"expired at {to_rfc3339(expires_ms)}, received at {to_rfc3339(now_ms)}",
        )
    if point.valid_range is not None:
        low, high = point.valid_range
        if not low <= value <= high:
            return reject(
                RejectCode.OUT_OF_RANGE,
                f"{value:g} is outside the valid range [{low:g}, {high:g}] of {point_name}",
            )
    return Command(cmd_id, device_id, point_name, value, expires_ms, source)


def _why_not_writable(device: DeviceConfig, point: PointConfig) -> str | None:
    if device.protocol is not DeviceProtocol.MODBUS_TCP or point.address is None:
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


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case str():
            return f"the string {value[:32]!r}"
        case list():
            return "an array"
        case dict():
            return "an object"
        case _:
            return type(value).__name__


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
    truncate instead of rounding pass too). Float registers differ only by their
    precision. A tiny absolute slack absorbs binary rounding of the scale arithmetic.
    """
    slack = 1e-9 * max(1.0, abs(target))
    magnitude = abs(target - point.offset)
    if point.table.is_bit or point.type is DataType.BOOL:
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


def result_message(outcome: Outcome, ts_ms: int) -> dict[str, object]:
    """The ``command/result`` payload.

    ``{"id", "status": "applied|rejected|failed", "code", "reason", "point", "value",
    "readback", "ts"}``; ``code`` is the machine-readable reason (``RejectCode`` or
    ``FailCode``, null when applied), ``reason`` the sentence for people. ``read_back`` and
    ``detail`` repeat ``readback`` and ``reason`` under the names ``gridpilot.bus.codec``
    decodes (``CommandResult``), until one spelling is agreed.
    """
    match outcome:
        case Applied(command, readback):
            return _message(command.id, "applied", None, None, command, readback, ts_ms)
        case Failed(command, code, reason, readback):
            return _message(command.id, "failed", code, reason, command, readback, ts_ms)
        case Rejected(_, code, reason, cmd_id, point, value):
            return _message(cmd_id, "rejected", code, reason, (point, value), None, ts_ms)


def _message(  # noqa: PLR0917 -- private, one call per outcome kind right above
    cmd_id: str | None,
    status: OutcomeStatus,
    code: RejectCode | FailCode | None,
    reason: str | None,
    target: Command | tuple[str | None, float | None],
    readback: float | None,
    ts_ms: int,
) -> dict[str, object]:
    point, value = (target.point, target.value) if isinstance(target, Command) else target
    return {
        "id": cmd_id,
        "status": status,
        "code": None if code is None else str(code),
        "reason": reason,
        "point": point,
        "value": value,
        "readback": readback,
        "ts": to_rfc3339(ts_ms),
        "read_back": readback,
        "detail": reason or "",
    }


def encode_result(outcome: Outcome, ts_ms: int) -> bytes:
    return orjson.dumps(result_message(outcome, ts_ms))


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
