"""JSON payloads the gateway publishes: telemetry, device state, gateway state.

Pure functions of their inputs; timestamps are epoch milliseconds, written as RFC 3339 UTC
with milliseconds (``2026-11-26T12:00:00.000Z``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson

from gridpilot.gateway.health import DeviceStatus, HealthSnapshot
from gridpilot.model import to_rfc3339


def telemetry_payload(ts_ms: int, seq: int, values: Mapping[str, float]) -> bytes:
    """``{"ts": ..., "seq": n, "values": {point: number}}`` (ARCHITECTURE.md, Telemetry)."""
    return orjson.dumps({"ts": to_rfc3339(ts_ms), "seq": seq, "values": dict(values)})


def device_state_payload(snapshot: HealthSnapshot, ts_ms: int, reason: str | None = None) -> bytes:
    """Retained ``.../state`` of a device: status, since, last_error, counters, and
    ``poll_jitter`` (how late its polls started: a histogram with p50/p99, seconds).

    ``reason`` says why the status is what it is when the health alone does not (e.g.
    ``gateway stopped``).
    """
    error = snapshot.last_error
    body: dict[str, object] = {
        "status": str(snapshot.status),
        "since": to_rfc3339(snapshot.since_ms),
        "last_error": None
        if error is None
        else {
            "kind": error.kind,
            "message": error.message,
            "hint": error.hint,
            "ts": to_rfc3339(error.ts_ms),
        },
        "consecutive_failures": snapshot.consecutive_failures,
        "counters": snapshot.counters,
        # Points whose reading is a fault, not a value (an analog wire break...).
        "point_faults": snapshot.point_faults,
        "ts": to_rfc3339(ts_ms),
    }
    if snapshot.poll_jitter is not None:
        body["poll_jitter"] = snapshot.poll_jitter
    if reason is not None:
        body["reason"] = reason
    return orjson.dumps(body)


def gateway_state_payload(
    status: DeviceStatus,
    since_ms: int,
    ts_ms: int,
    devices: Iterable[str],
    *,
    reason: str | None = None,
    buffer: Mapping[str, int] | None = None,
) -> bytes:
    """Retained ``gridpilot/v1/{site}/{gateway}/state`` of the gateway itself; ``buffer``:
    its on-disk buffer's figures (messages, bytes, dropped, ...: ``OutboxStats``)."""
    body: dict[str, object] = {
        "status": str(status),
        "since": to_rfc3339(since_ms),
        "devices": sorted(devices),
        "ts": to_rfc3339(ts_ms),
    }
    if reason is not None:
        body["reason"] = reason
    if buffer is not None:
        body["buffer"] = dict(buffer)
    return orjson.dumps(body)


def gateway_will_payload(devices: Iterable[str]) -> bytes:
    """The last will, published by the broker when the gateway vanishes without a goodbye.

    It is fixed when the connection opens, so it cannot carry the time of the loss. While
    the gateway is ``offline`` the states of its devices are stale: readers must treat
    them as unknown.
    """
    return orjson.dumps(
        {
            "status": str(DeviceStatus.OFFLINE),
            "since": None,
            "devices": sorted(devices),
            "reason": "the gateway lost its broker connection (last will); "
            "the states of its devices are unknown",
        }
    )
