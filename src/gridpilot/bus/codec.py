"""JSON payloads of the GridPilot topics (ARCHITECTURE.md, "Contracts"), encoded with orjson.

    telemetry       {"ts": "2026-11-26T12:00:00.000Z", "seq": 1842,
                     "values": {"active_power_w": 41250.0}}
    state           {"status": "online", "ts": ..., "last_error": null, "counters": {"polls": 12}}
    command         {"id": "6f1c...", "point": "active_power_setpoint_w", "value": -25000.0,
                     "expires": "2026-11-26T12:00:10.000Z", "source": "peak_shaving"}
    command/result  {"id": "6f1c...", "status": "applied", "point": ..., "value": -25000.0,
                     "read_back": -25000.0, "detail": "", "ts": ...}
    deadletter      {"reasons": ["out_of_range"], "topic": ..., "received_at": ..., "payload": ...,
                     "payload_encoding": "utf-8", "payload_bytes": 97, "payload_truncated": false,
                     "rejections": [{"point": "voltage_l1_v", "reason": "out_of_range",
                                     "detail": "..."}]}

Timestamps are written as RFC 3339 UTC with milliseconds and read as RFC 3339 or integer
epoch milliseconds. Decoders raise ``PayloadError`` saying what is wrong. Incoming telemetry
from devices is checked much more closely by ``gridpilot.ingest.validation``;
``decode_telemetry`` is for consumers of telemetry that ingest or a gateway already vetted.
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

_MAX_ID_CHARS = 128


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


@dataclass(frozen=True, slots=True)
class Command:
    """An absolute setpoint request (never a delta, so repeating it is harmless)."""

    id: str
    point: str
    value: float
    source: str
    expires_ms: int | None = None
    """After this instant the command must not be applied; None: no expiry."""


def encode_command(command: Command) -> bytes:
    doc: dict[str, Any] = {"id": command.id, "point": command.point, "value": command.value}
    if command.expires_ms is not None:
        doc["expires"] = to_rfc3339(command.expires_ms)
    doc["source"] = command.source
    return orjson.dumps(doc)


def decode_command(payload: bytes) -> Command:
    doc = _object(payload, "command")
    command_id = _text(doc.get("id"), "id")
    point = doc.get("point")
    if not isinstance(point, str) or not is_valid_identifier(point):
        raise PayloadError(f"command 'point' {point!r} is not a point name")
    expires = doc.get("expires")
    return Command(
        id=command_id,
        point=point,
        value=_finite(doc.get("value"), "value"),
        source=_text(doc.get("source", ""), "source", allow_empty=True),
        expires_ms=None if expires is None else _ts(expires, "expires"),
    )


class CommandStatus(StrEnum):
    """How a command ended; every command gets exactly one result."""

    APPLIED = "applied"  # written and, where readable, read back
    REJECTED = "rejected"  # refused before writing: unknown point, not writable, bad payload
    OUT_OF_BOUNDS = "out_of_bounds"  # value outside the point's valid range
    EXPIRED = "expired"  # arrived after its ``expires``
    FAILED = "failed"  # the write or the read-back failed (device error, timeout)


@dataclass(frozen=True, slots=True)
class CommandResult:
    id: str
    status: CommandStatus
    ts_ms: int
    point: str | None = None
    value: float | None = None
    """The requested value."""
    read_back: float | None = None
    """The value read from the device after writing, when it can be read."""
    detail: str = ""


def encode_command_result(result: CommandResult) -> bytes:
    return orjson.dumps(
        {
            "id": result.id,
            "status": result.status.value,
            "point": result.point,
            "value": result.value,
            "read_back": result.read_back,
            "detail": result.detail,
            "ts": to_rfc3339(result.ts_ms),
        }
    )


def decode_command_result(payload: bytes) -> CommandResult:
    doc = _object(payload, "command result")
    try:
        status = CommandStatus(str(doc.get("status")))
    except ValueError:
        raise PayloadError(f"command result 'status' {doc.get('status')!r} is unknown") from None
    point = doc.get("point")
    if point is not None and not isinstance(point, str):
        raise PayloadError("command result 'point' must be text or null")
    value = doc.get("value")
    read_back = doc.get("read_back")
    return CommandResult(
        id=_text(doc.get("id"), "id"),
        status=status,
        ts_ms=_ts(doc.get("ts"), "ts"),
        point=point,
        value=None if value is None else _finite(value, "value"),
        read_back=None if read_back is None else _finite(read_back, "read_back"),
        detail=_text(doc.get("detail", ""), "detail", allow_empty=True),
    )


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


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"{what} payload is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"{what} payload must be a JSON object, not {type(doc).__name__}")
    return doc


def _finite(value: object, name: str) -> float:
    if type(value) is float or type(value) is int:
        number = float(value)
        if math.isfinite(number):
            return number
        raise PayloadError(f"'{name}' is not finite")
    raise PayloadError(f"'{name}' must be a number, not {type(value).__name__}")


def _ts(value: object, name: str) -> int:
    if value is None:
        raise PayloadError(f"'{name}' is missing")
    try:
        return parse_timestamp_ms(value)
    except ValueError as exc:
        raise PayloadError(f"'{name}': {exc}") from None


def _text(value: object, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise PayloadError(f"'{name}' must be {'text' if allow_empty else 'non-empty text'}")
    if len(value) > _MAX_ID_CHARS and name == "id":
        raise PayloadError(f"'id' is longer than {_MAX_ID_CHARS} characters")
    return value
