"""What ``gridpilot ieee2030-5 status`` and ``GET /api/v1/ieee2030_5`` show (issue 6, item 9).

Both read the 2030.5 client's retained status (bus contract 2,
``gridpilot/v1/{site}/ieee2030_5/status``) and present it the same way: :func:`status_view`
turns the message into a JSON-ready view (the events split into active, scheduled and
ended ones, the age of the message), :func:`not_published_view` says why there is none
(no client configured, or none running), and :func:`render_text` gives the CLI's lines.

Pure functions; the message is read leniently (a field the client did not send shows as
missing), but it must be a JSON object of bounded size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from gridpilot.model.time import parse_timestamp_ms

MAX_STATUS_BYTES = 1_048_576
SHOWN = 10
"""Responses and mirror posts listed as text (the newest); ``--json`` has all (up to 50)."""

_FIELDS = (
    "server",
    "lfdi",
    "sfdi",
    "registered",
    "pin_ok",
    "end_device",
    "clock_offset_s",
    "poll_rate_s",
    "post_rate_s",
    "programs",
    "default_control",
    "responses",
    "mirrors",
    "last_error",
)


class StatusMessageError(ValueError):
    """The retained status is not a status message; the text says what is wrong."""


def parse_status(payload: bytes) -> dict[str, Any]:
    """The status message as a JSON object; raises :class:`StatusMessageError`."""
    if len(payload) > MAX_STATUS_BYTES:
        raise StatusMessageError(f"status of {len(payload)} bytes is over {MAX_STATUS_BYTES}")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise StatusMessageError(f"status is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise StatusMessageError("status is not a JSON object")
    return doc


def status_view(doc: Mapping[str, Any], *, site: str, now: datetime) -> dict[str, Any]:
    """The view of a published status: the client's fields, the events by phase, and the
    age of the message at ``now``."""
    events = [e for e in _list(doc.get("events")) if isinstance(e, dict)]
    age_s: float | None = None
    ts = doc.get("ts")
    try:
        age_s = round(now.timestamp() - parse_timestamp_ms(ts) / 1000.0, 3)
    except ValueError:
        age_s = None
    out: dict[str, Any] = {
        "site": site,
        "published": True,
        "message": None,
        "ts": ts if isinstance(ts, str) else None,
        "age_s": age_s,
    }
    for name in _FIELDS:
        out[name] = doc.get(name)
    out["programs"] = _list(doc.get("programs"))
    out["responses"] = _list(doc.get("responses"))
    out["mirrors"] = _list(doc.get("mirrors"))
    out["active_events"] = [e for e in events if e.get("status") == "active"]
    out["scheduled_events"] = [e for e in events if e.get("status") == "scheduled"]
    out["ended_events"] = [e for e in events if e.get("status") not in ("active", "scheduled")]
    return out


def not_published_view(site: str, topic: str, *, configured: bool) -> dict[str, Any]:
    """The view when no client has published: why, and what to do."""
    if configured:
        message = (
            f"no IEEE 2030.5 client status on {topic}: the client is not running or has not "
            "reached the broker yet (start it with 'gridpilot run ieee2030_5 CONFIG', or "
            "'gridpilot run all CONFIG')"
        )
    else:
        message = (
            f"site {site!r} has no 'ieee2030_5' section, so no IEEE 2030.5 client runs for it "
            f"(and none has published on {topic}); add the section to connect to the "
            "utility's server"
        )
    return {"site": site, "published": False, "message": message}


def render_text(view: Mapping[str, Any]) -> list[str]:
    """The CLI's lines for a view."""
    if not view.get("published"):
        return [str(view.get("message"))]
    age = view.get("age_s")
    lines = [
        f"IEEE 2030.5 client of site {view['site']}: status of {view.get('ts') or '?'}"
        + (f" ({_age(age)} ago)" if isinstance(age, int | float) else "")
    ]

    def row(label: str, text: object) -> None:
        lines.append(f"  {label + ':':<17}{text}")

    row("server", view.get("server") or "?")
    row("LFDI", view.get("lfdi") or "?")
    row("SFDI", view.get("sfdi") if view.get("sfdi") is not None else "?")
    registered = "yes" if view.get("registered") else "no"
    if view.get("end_device"):
        registered += f" (EndDevice {view['end_device']})"
    pin = {True: "PIN ok", False: "PIN MISMATCH", None: "PIN not checked"}.get(
        view.get("pin_ok"), "PIN ?"
    )
    row("registered", f"{registered}, {pin}")
    offset = view.get("clock_offset_s")
    clock = "unknown" if not isinstance(offset, int | float) else f"{offset:+.1f} s from ours"
    row("server clock", clock)
    row("poll / post", f"every {_rate(view.get('poll_rate_s'))} / {_rate(view.get('post_rate_s'))}")
    programs = view.get("programs") or []
    row("programs", len(programs) or "none")
    for program in programs:
        if isinstance(program, dict):
            description = f" {program['description']!r}" if program.get("description") else ""
            lines.append(f"    {program.get('href')}{description} primacy {program.get('primacy')}")
    _events(lines, "active events", view.get("active_events") or [])
    _events(lines, "scheduled events", view.get("scheduled_events") or [])
    default = view.get("default_control")
    row("default control", _modes(default) if isinstance(default, dict) and default else "none")
    responses = view.get("responses") or []
    row("responses", f"{len(responses)} recorded" + (", newest last:" if responses else ""))
    for r in responses[-SHOWN:]:
        if isinstance(r, dict):
            lines.append(
                f"    {r.get('at')} {r.get('mrid')} {r.get('status_name')} ({r.get('status')}) "
                f"HTTP {r.get('http_status')}"
            )
    mirrors = view.get("mirrors") or []
    row("mirror posts", f"{len(mirrors)} recorded" + (", newest last:" if mirrors else ""))
    for m in mirrors[-SHOWN:]:
        if isinstance(m, dict):
            lines.append(
                f"    {m.get('at')} {m.get('mup')} {m.get('readings')} reading(s) "
                f"HTTP {m.get('http_status')}"
            )
    row("last error", view.get("last_error") or "none")
    return lines


def _events(lines: list[str], label: str, events: Sequence[Any]) -> None:
    lines.append(f"  {label + ':':<17}{len(events) or 'none'}")
    for e in events:
        if not isinstance(e, dict):
            continue
        mrid = str(e.get("mrid") or "?")
        description = f" {e['description']!r}" if e.get("description") else ""
        lines.append(
            f"    {mrid}{description} ({e.get('program')}, primacy {e.get('primacy')}) "
            f"{e.get('effective_start')} .. {e.get('effective_end')}: {_modes(e.get('modes'))}"
        )


def _modes(modes: object) -> str:
    if not isinstance(modes, dict) or not modes:
        return "no modes"
    parts = []
    for name, entry in modes.items():
        value = entry.get("value") if isinstance(entry, dict) else entry
        unit = entry.get("unit") if isinstance(entry, dict) else None
        match value:
            case bool():
                text = "true" if value else "false"
            case int() | float():
                text = f"{value:g}" + (f" {unit}" if unit else "")
            case {"pf": pf, "excitation": excitation}:
                text = f"pf {pf} {excitation}-excited"
            case {"points": list() as points}:
                text = f"curve of {len(points)} points"
            case _:
                text = "..."
        parts.append(f"{name} {text}")
    return ", ".join(parts)


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _rate(value: object) -> str:
    return f"{value:g} s" if isinstance(value, int | float) else "?"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
