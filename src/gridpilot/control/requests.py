"""Operator requests to the running controller, and its replies (pure parsing).

The CLI (``gridpilot control ...``) and the API publish a request on
``gridpilot/v1/{site}/{controller}/request``; the controller answers on
``.../request/result`` with the same ``id``:

```json
{"id": "7f3a", "action": "override", "point": "battery.active_power_setpoint_w",
 "value": -20000, "duration_s": 1800, "by": "alice@plantpc", "reason": "load test"}
{"id": "7f3a", "ok": true, "message": "battery.active_power_setpoint_w held at -20000 until ..."}
```

Actions: ``override`` (point, value, duration_s), ``release`` (point), ``dry_run``
(``enabled``: true/false), ``enable`` / ``disable`` (controller), ``set_params``
(controller, ``params``: the fields of its section of the site file to change, e.g.
``{"limit_w": 95000}``), ``status``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import orjson

from gridpilot.control.base import PointRef

MAX_REQUEST_BYTES = 4096
MAX_PARAMS = 50
MAX_OVERRIDE_S = 7 * 86_400.0
"""An override longer than a week is a forgotten one; ask again instead."""


class Action(StrEnum):
    OVERRIDE = "override"
    RELEASE = "release"
    DRY_RUN = "dry_run"
    ENABLE = "enable"
    DISABLE = "disable"
    SET_PARAMS = "set_params"
    STATUS = "status"


class RequestError(ValueError):
    """A request the controller cannot act on; the message says what to fix."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    action: Action
    by: str
    reason: str = ""
    point: PointRef | None = None
    value: float | None = None
    duration_s: float | None = None
    enabled: bool | None = None
    controller: str | None = None
    params: Mapping[str, Any] | None = None


def parse_request(payload: bytes) -> Request:
    """Parse and check a request; raises ``RequestError`` naming the field at fault."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise RequestError(f"request of {len(payload)} bytes is over {MAX_REQUEST_BYTES}")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("request must be a JSON object")
    request_id = doc.get("id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= 128:
        raise RequestError("'id' must be text of 1-128 characters")
    try:
        return _parse(doc, request_id)
    except RequestError as exc:
        raise RequestError(str(exc), request_id) from None


def _parse(doc: dict[str, Any], request_id: str) -> Request:
    raw_action = doc.get("action")
    try:
        action = Action(raw_action if isinstance(raw_action, str) else "")
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        raise RequestError(f"'action' must be one of {choices}, not {raw_action!r}") from None
    by = doc.get("by")
    if not isinstance(by, str) or not by.strip():
        raise RequestError("'by' must name who asks (recorded in the journal)")
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise RequestError("'reason' must be text")
    base = Request(request_id, action, by.strip()[:128], reason[:500])
    match action:
        case Action.OVERRIDE:
            value = _number(doc, "value")
            duration = _number(doc, "duration_s")
            if not 0 < duration <= MAX_OVERRIDE_S:
                raise RequestError(f"'duration_s' must be in (0, {MAX_OVERRIDE_S:g}] seconds")
            return replace(base, point=_point(doc), value=value, duration_s=duration)
        case Action.RELEASE:
            return replace(base, point=_point(doc))
        case Action.DRY_RUN:
            enabled = doc.get("enabled")
            if not isinstance(enabled, bool):
                raise RequestError("'enabled' must be true or false")
            return replace(base, enabled=enabled)
        case Action.ENABLE | Action.DISABLE:
            return replace(base, controller=_controller(doc))
        case Action.SET_PARAMS:
            params = doc.get("params")
            if not isinstance(params, dict) or not params:
                raise RequestError(
                    "'params' must be an object of the fields to change, e.g. {\"limit_w\": 95000}"
                )
            if len(params) > MAX_PARAMS:
                raise RequestError(f"'params' changes at most {MAX_PARAMS} fields at once")
            return replace(base, controller=_controller(doc), params=params)
        case Action.STATUS:
            return base


def _controller(doc: dict[str, Any]) -> str:
    controller = doc.get("controller")
    if not isinstance(controller, str) or not controller:
        raise RequestError("'controller' must name a controller")
    return controller


def _number(doc: dict[str, Any], name: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be a finite number")
    return float(value)


def _point(doc: dict[str, Any]) -> PointRef:
    text = doc.get("point")
    if not isinstance(text, str):
        raise RequestError("'point' must be DEVICE.POINT text")
    try:
        return PointRef.parse(text)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def encode_request(request: Request) -> bytes:
    doc: dict[str, Any] = {"id": request.id, "action": request.action.value, "by": request.by}
    if request.reason:
        doc["reason"] = request.reason
    if request.point is not None:
        doc["point"] = str(request.point)
    if request.value is not None:
        doc["value"] = request.value
    if request.duration_s is not None:
        doc["duration_s"] = request.duration_s
    if request.enabled is not None:
        doc["enabled"] = request.enabled
    if request.controller is not None:
        doc["controller"] = request.controller
    if request.params is not None:
        doc["params"] = dict(request.params)
    return orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class Reply:
    id: str | None
    ok: bool
    message: str


def encode_reply(reply: Reply) -> bytes:
    return orjson.dumps({"id": reply.id, "ok": reply.ok, "message": reply.message})


def decode_reply(payload: bytes) -> Reply:
    doc = orjson.loads(payload)
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise TypeError("not a controller reply")
    request_id = doc.get("id")
    return Reply(
        request_id if isinstance(request_id, str) else None, doc["ok"], str(doc.get("message", ""))
    )
