"""JSON payloads of the GridPilot topics (ARCHITECTURE.md, "Contracts"), encoded with orjson.

    telemetry       {"ts": "2026-11-26T12:00:00.000Z", "seq": 1842,
                     "values": {"active_power_w": 41250.0}}
    state           {"status": "online", "ts": ..., "last_error": null, "counters": {"polls": 12}}
    command         {"id": "6f1c...", "point": "active_power_setpoint_w", "value": -25000.0,
                     "expires": "2026-11-26T12:00:10.000Z", "source": "peak_shaving"}
    command/result  {"id": "6f1c...", "status": "applied", "code": null, "reason": null,
                     "point": "active_power_setpoint_w", "value": -25000.0,
                     "readback": -25000.0, "ts": "2026-11-26T12:00:00.250Z"}
                    {"id": "6f1d...", "status": "rejected", "code": "out_of_range",
                     "reason": "60000 is outside the valid range [-50000, 50000] of ...",
                     "point": ..., "value": 60000.0, "readback": null, "ts": ...}
    events          {"ts": "2026-11-26T12:00:00.000Z", "level": "alarm",
                     "source": "gateway/battery", "message": "battery offline after 2 ..."}
                    (``kind`` is read where ``level`` is missing: the controller's events)
    deadletter      {"reasons": ["out_of_range"], "topic": ..., "received_at": ..., "payload": ...,
                     "payload_encoding": "utf-8", "payload_bytes": 97, "payload_truncated": false,
                     "rejections": [{"point": "voltage_l1_v", "reason": "out_of_range",
                                     "detail": "..."}]}

In a command ``expires`` is required and ``source`` optional. A result's ``status`` is
``applied``, ``rejected`` or ``failed``; ``code`` (machine-readable) and ``reason`` (for
people) are null exactly when it is ``applied``; ``readback`` is null unless the device was
read back after the write.

Timestamps are written as RFC 3339 UTC with milliseconds and read as RFC 3339 or integer
epoch milliseconds. Decoders raise ``PayloadError`` saying what is wrong (and, in
``.field``, where). Incoming telemetry from devices is checked much more closely by
``gridpilot.ingest.validation``; ``decode_telemetry`` is for consumers of telemetry that
ingest or a gateway already vetted.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from gridpilot.bus.errors import PayloadError
from gridpilot.model import is_valid_identifier, parse_timestamp_ms, to_rfc3339

__all__ = [
    "MAX_ID_CHARS",
    "Command",
    "CommandResult",
    "CommandStatus",
    "DeadLetter",
    "DeadLetterItem",
    "DeviceState",
    "DeviceStatus",
    "Telemetry",
    "decode_command",
    "decode_command_result",
    "decode_dead_letter",
    "decode_state",
    "decode_telemetry",
    "encode_command",
    "encode_command_result",
    "encode_dead_letter",
    "encode_state",
    "encode_telemetry",
]

# ---------------------------------------------------------------------------- telemetry


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One telemetry message of one device: values in the units their names declare."""

    ts_ms: int
    values: Mapping[str, float]
    seq: int | None = None


def encode_telemetry(ts_ms: int, values: Mapping[str, float], seq: int | None = None) -> bytes:
    """Encode a telemetry message. ``values`` must be finite floats (ints are accepted)."""
    doc: dict[str, Any] = {"ts": to_rfc3339(ts_ms)}
    if seq is not None:
        doc["seq"] = seq
    doc["values"] = values
    return orjson.dumps(doc)


def decode_telemetry(payload: bytes) -> Telemetry:
    doc = _object(payload, "telemetry")
    values = doc.get("values")
    if not isinstance(values, dict):
        raise PayloadError("telemetry has no 'values' object")
    checked: dict[str, float] = {}
    for name, value in values.items():
        checked[name] = _finite(value, f"values.{name}")
    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or seq < 0):
        raise PayloadError("telemetry 'seq' must be a non-negative integer")
    return Telemetry(_ts(doc.get("ts"), "ts"), checked, seq)


# ---------------------------------------------------------------------------- state


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Retained on ``.../{device}/state``; the gateway's last will is ``status=offline``."""

    status: DeviceStatus
    ts_ms: int | None = None
    last_error: str | None = None
    counters: Mapping[str, int] = field(default_factory=dict)


def encode_state(state: DeviceState) -> bytes:
    doc: dict[str, Any] = {"status": state.status.value}
    if state.ts_ms is not None:
        doc["ts"] = to_rfc3339(state.ts_ms)
    doc["last_error"] = state.last_error
    doc["counters"] = dict(state.counters)
    return orjson.dumps(doc)


def decode_state(payload: bytes) -> DeviceState:
    doc = _object(payload, "state")
    try:
        status = DeviceStatus(str(doc.get("status")))
    except ValueError:
        raise PayloadError(
            f"state 'status' must be 'online' or 'offline', not {doc.get('status')!r}"
        ) from None
    ts = doc.get("ts")
    last_error = doc.get("last_error")
    if isinstance(last_error, dict):  # the gateway's richer form: {"kind", "message", ...}
        last_error = last_error.get("message")
    if last_error is not None and not isinstance(last_error, str):
        raise PayloadError("state 'last_error' must be text, an object with 'message', or null")
    counters = doc.get("counters", {})
    if not isinstance(counters, dict) or not all(type(v) is int for v in counters.values()):
        raise PayloadError("state 'counters' must be an object of integers")
    return DeviceState(status, None if ts is None else _ts(ts, "ts"), last_error, counters)


# ---------------------------------------------------------------------------- commands

MAX_ID_CHARS = 128
"""Longest command id accepted."""


@dataclass(frozen=True, slots=True)
class Command:
    """An absolute setpoint request (never a delta, so repeating it is harmless).

    Only the shape is the codec's business; whether the device has the point, may write it,
    and whether the value is in range and the command still valid is decided by the gateway
    (``gridpilot.gateway.commands.parse_command``).
    """

    id: str
    """Unique per command (1 to ``MAX_ID_CHARS`` characters); the result carries it back."""
    point: str
    value: float
    """The absolute target, in the unit the point name declares."""
    expires_ms: int
    """Epoch ms at and after which the command must not be applied. Required: from a
    persistent MQTT session a command can be delivered hours after it was sent."""
    source: str | None = None
    """Who asked (a controller's name, ``api``...), for logs; optional."""


def encode_command(command: Command) -> bytes:
    doc: dict[str, Any] = {
        "id": command.id,
        "point": command.point,
        "value": command.value,
        "expires": to_rfc3339(command.expires_ms),
    }
    if command.source is not None:
        doc["source"] = command.source
    return orjson.dumps(doc)


def decode_command(payload: bytes) -> Command:
    """Decode a command; ``PayloadError.field`` names the field at fault.

    Checked in order: ``id``, ``point``, that ``value`` is there, ``expires`` (RFC 3339
    with an offset, or epoch ms), ``source`` (text when present), and last that ``value``
    is a finite number -- so that a consumer can tell a malformed message from a wrong
    value (``field == "value"`` with the key present).
    """
    doc = _object(payload, "command")
    command_id = _id(doc.get("id"))
    point = doc.get("point")
    if not isinstance(point, str) or not is_valid_identifier(point):
        raise PayloadError(
            f"'point' must be a point name (lower-case snake_case), not {_json_type(point)}",
            "point",
        )
    if "value" not in doc:
        raise PayloadError("'value' is missing: a command sets a point to a number", "value")
    if "expires" not in doc:
        raise PayloadError(
            "'expires' is missing: every command needs an expiry (RFC 3339 or epoch ms) "
            "after which it must not be applied",
            "expires",
        )
    expires_ms = _ts(doc["expires"], "expires")
    source = doc.get("source")
    if source is not None:
        source = _text(source, "source", allow_empty=True)
    value = _finite(doc["value"], "value")
    return Command(command_id, point, value, expires_ms, source)


class CommandStatus(StrEnum):
    """How a command ended; every command gets exactly one result."""

    APPLIED = "applied"  # written, and the read-back matches the target
    REJECTED = "rejected"  # not attempted: malformed, unknown point, out of range, expired...
    FAILED = "failed"  # attempted: the write or the read-back failed, or they disagree


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The one result of a command, on ``.../{device}/command/result``.

    ``code`` and ``reason`` are None exactly when the command was applied; otherwise
    ``code`` is machine-readable (the gateway's ``RejectCode``/``FailCode`` values, such as
    ``out_of_range`` or ``readback_mismatch``) and ``reason`` a sentence for people.
    """

    id: str | None
    """The command's id; None when it could not be read from a malformed command."""
    status: CommandStatus
    code: str | None
    reason: str | None
    point: str | None
    """The command's point (as far as it could be read)."""
    value: float | None
    """The requested value (when it was a finite number)."""
    readback: float | None
    """The value read from the device after writing; None unless it was read back."""
    ts_ms: int
    """When the result was decided, epoch ms."""

    def __post_init__(self) -> None:
        applied = self.status is CommandStatus.APPLIED
        if applied and (self.code is not None or self.reason is not None):
            raise ValueError("an applied command result has no 'code' and no 'reason'")
        if not applied and (not self.code or self.reason is None):
            raise ValueError(f"a {self.status} command result needs a 'code' and a 'reason'")


_RESULT_FIELDS = ("id", "status", "code", "reason", "point", "value", "readback", "ts")


def encode_command_result(result: CommandResult) -> bytes:
    return orjson.dumps(
        {
            "id": result.id,
            "status": result.status.value,
            "code": result.code,
            "reason": result.reason,
            "point": result.point,
            "value": result.value,
            "readback": result.readback,
            "ts": to_rfc3339(result.ts_ms),
        }
    )


def decode_command_result(payload: bytes) -> CommandResult:
    """Decode a command result; every field of the contract must be present (null allowed
    where the contract allows it), unknown fields are ignored."""
    doc = _object(payload, "command result")
    missing = [name for name in _RESULT_FIELDS if name not in doc]
    if missing:
        raise PayloadError(
            f"command result lacks {', '.join(repr(m) for m in missing)}", missing[0]
        )
    try:
        status = CommandStatus(doc["status"])
    except ValueError:
        raise PayloadError(
            f"command result 'status' must be applied, rejected or failed, "
            f"not {_json_type(doc['status'])}",
            "status",
        ) from None
    command_id = doc["id"]
    try:
        return CommandResult(
            id=None if command_id is None else _id(command_id),
            status=status,
            code=_optional_text(doc["code"], "code"),
            reason=_optional_text(doc["reason"], "reason"),
            point=_optional_text(doc["point"], "point"),
            value=_optional_finite(doc["value"], "value"),
            readback=_optional_finite(doc["readback"], "readback"),
            ts_ms=_ts(doc["ts"], "ts"),
        )
    except PayloadError:
        raise
    except ValueError as exc:  # the invariants of CommandResult
        raise PayloadError(f"command result: {exc}", "code") from None


# ---------------------------------------------------------------------------- dead letters


@dataclass(frozen=True, slots=True)
class DeadLetterItem:
    """Why (part of) a message was rejected. ``point`` None: the whole message."""

    point: str | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A copy of a rejected (or partly rejected) message, for ``.../{site}/deadletter``."""

    topic: str
    received_at_ms: int
    payload: bytes
    rejections: Sequence[DeadLetterItem]
    payload_truncated: bool = False
    payload_bytes: int | None = None
    """Size of the original payload (when ``payload`` is a truncated copy)."""

    @property
    def reasons(self) -> list[str]:
        """The distinct reasons, sorted."""
        return sorted({item.reason for item in self.rejections})


def encode_dead_letter(letter: DeadLetter, max_payload_bytes: int | None = None) -> bytes:
    """Encode a dead letter; the payload is kept as text when it is UTF-8, else base64.

    ``max_payload_bytes`` truncates the copied payload (an oversized message must not make
    an oversized dead letter the broker would refuse).
    """
    raw = letter.payload
    truncated = letter.payload_truncated
    if max_payload_bytes is not None and len(raw) > max_payload_bytes:
        raw = raw[:max_payload_bytes]
        truncated = True
    text = _utf8(raw, truncated)
    encoding = "utf-8"
    if text is None:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return orjson.dumps(
        {
            "reasons": letter.reasons,
            "topic": letter.topic,
            "received_at": to_rfc3339(letter.received_at_ms),
            "payload": text,
            "payload_encoding": encoding,
            "payload_bytes": letter.payload_bytes
            if letter.payload_bytes is not None
            else len(letter.payload),
            "payload_truncated": truncated,
            "rejections": [
                {"point": item.point, "reason": item.reason, "detail": item.detail}
                for item in letter.rejections
            ],
        }
    )


def _utf8(raw: bytes, truncated: bool) -> str | None:
    """The text of ``raw``, or None; a cut through a multi-byte character is forgiven."""
    for cut in range(4 if truncated else 1):
        try:
            return raw[: len(raw) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def decode_dead_letter(payload: bytes) -> DeadLetter:
    doc = _object(payload, "dead letter")
    encoding = doc.get("payload_encoding")
    text = doc.get("payload")
    if not isinstance(text, str):
        raise PayloadError("dead letter 'payload' must be text")
    if encoding == "utf-8":
        raw = text.encode("utf-8")
    elif encoding == "base64":
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise PayloadError(f"dead letter 'payload' is not base64: {exc}") from None
    else:
        raise PayloadError(f"dead letter 'payload_encoding' {encoding!r} is unknown")
    items = doc.get("rejections")
    if not isinstance(items, list):
        raise PayloadError("dead letter 'rejections' must be a list")
    rejections = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError("dead letter rejection must be an object")
        point = item.get("point")
        if point is not None and not isinstance(point, str):
            raise PayloadError("dead letter rejection 'point' must be text or null")
        rejections.append(
            DeadLetterItem(
                point,
                _text(item.get("reason"), "reason"),
                _text(item.get("detail", ""), "detail", allow_empty=True),
            )
        )
    size = doc.get("payload_bytes")
    return DeadLetter(
        topic=_text(doc.get("topic"), "topic"),
        received_at_ms=_ts(doc.get("received_at"), "received_at"),
        payload=raw,
        rejections=tuple(rejections),
        payload_truncated=bool(doc.get("payload_truncated", False)),
        payload_bytes=size if type(size) is int else None,
    )


# ---------------------------------------------------------------------------- helpers


MAX_EVENT_BYTES = 8 * 1024
EVENT_LEVELS = ("info", "warning", "alarm")
_LEVEL_OF = {"info": "info", "warning": "warning", "alarm": "alarm", "error": "alarm"}


@dataclass(frozen=True, slots=True)
class SiteEvent:
    """A message of ``.../{site}/events``, as stored and shown."""

    ts_ms: int
    level: str
    source: str
    message: str


def decode_event(payload: bytes, received_ms: int) -> SiteEvent:
    """Decode an event; ``received_ms`` stands in for a missing or unreadable ``ts``. An
    unknown level is ``info``; text is cut to what a person reads (source 200, message 2000
    characters). Raises ``PayloadError`` for anything that is not an event."""
    if len(payload) > MAX_EVENT_BYTES:
        raise PayloadError(f"event of {len(payload)} bytes is over {MAX_EVENT_BYTES}")
    doc = _object(payload, "event")
    message = _text(doc.get("message"), "message")
    try:
        ts_ms = parse_timestamp_ms(doc.get("ts"))
    except ValueError:
        ts_ms = received_ms
    level = _LEVEL_OF.get(str(doc.get("level", doc.get("kind", "info"))), "info")
    source = doc.get("source")
    return SiteEvent(
        ts_ms, level, (source if isinstance(source, str) else "")[:200], message[:2000]
    )


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"{what} payload is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"{what} payload is {_json_type(doc)}, expected a JSON object")
    return doc


def _finite(value: object, name: str) -> float:
    if type(value) is float or type(value) is int:
        number = float(value)
        if math.isfinite(number):
            return number
        raise PayloadError(f"'{name}' is not finite", name)
    raise PayloadError(f"'{name}' must be a number, not {_json_type(value)}", name)


def _optional_finite(value: object, name: str) -> float | None:
    return None if value is None else _finite(value, name)


def _ts(value: object, name: str) -> int:
    if value is None:
        raise PayloadError(f"'{name}' is missing", name)
    try:
        return parse_timestamp_ms(value)
    except ValueError as exc:
        raise PayloadError(f"'{name}': {exc}", name) from None


def _text(value: object, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        wanted = "text" if allow_empty else "non-empty text"
        raise PayloadError(f"'{name}' must be {wanted}, not {_json_type(value)}", name)
    return value


def _optional_text(value: object, name: str) -> str | None:
    return None if value is None else _text(value, name, allow_empty=True)


def _id(value: object) -> str:
    text = _text(value, "id")
    if len(text) > MAX_ID_CHARS:
        raise PayloadError(f"'id' is longer than {MAX_ID_CHARS} characters", "id")
    return text


def _json_type(value: object) -> str:
    """What a decoded JSON value is, for messages: ``null``, ``the string 'abc'``..."""
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
        case int() | float():
            return f"the number {value!r}"
        case _:
            return type(value).__name__
