"""What the 2030.5 client did, as site events (``gridpilot/v1/{site}/events``).

The client's retained status (bus contract 2) says where things stand; the site's timeline
(``GET /api/v1/events``, the dashboard's events panel) should also say what *happened*: the
client registered, a utility event was received, started, completed or was cancelled, a
Response was posted (and how the server answered), the PIN did not match, an error
appeared or cleared. :func:`timeline_events` derives exactly those from two consecutive
status messages, so the service publishes them without keeping a second record.

Pure: no clock, no I/O. Each change yields one event at most once, because it compares
``previous`` with ``current`` (``previous`` None: the first status, compared with nothing).
Responses are told apart by (mRID, status, time): the status keeps only the last 50.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TimelineEvent", "describe_modes", "timeline_events"]

_REFUSALS = {252, 253, 254}


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One site event: ``level`` info | warning | alarm and its text."""

    level: str
    message: str


def timeline_events(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[TimelineEvent]:
    """The events that ``current`` (a status message) adds to ``previous``, in order:
    registration, the PIN, utility events (new ones and phase changes), Responses posted,
    the error line."""
    before: Mapping[str, Any] = previous or {}
    out: list[TimelineEvent] = []
    server = current.get("server") or "the utility server"

    if current.get("registered") and not before.get("registered"):
        out.append(
            TimelineEvent(
                "info",
                f"IEEE 2030.5: registered with {server} as EndDevice "
                f"{current.get('end_device') or '?'} (LFDI {current.get('lfdi')}, "
                f"SFDI {current.get('sfdi')})",
            )
        )
    if current.get("pin_ok") is False and before.get("pin_ok") is not False:
        out.append(
            TimelineEvent(
                "alarm",
                f"IEEE 2030.5: the Registration PIN served by {server} is not the configured "
                "one; no utility program is followed until they match (check the site "
                "file's ieee2030_5 pin with the utility)",
            )
        )

    old_events = {e.get("mrid"): e for e in _dicts(before.get("events"))}
    for event in _dicts(current.get("events")):
        old = old_events.get(event.get("mrid"))
        phase = event.get("status")
        if old is not None and old.get("status") == phase:
            continue
        out.append(TimelineEvent(_phase_level(phase), _event_text(event, old is None)))

    seen = {_response_key(r) for r in _dicts(before.get("responses"))}
    names = {e.get("mrid"): e.get("description") for e in _dicts(current.get("events"))}
    for response in _dicts(current.get("responses")):
        if _response_key(response) in seen:
            continue
        out.append(_response_event(response, names.get(response.get("mrid"))))

    error = current.get("last_error")
    if error and error != before.get("last_error"):
        out.append(TimelineEvent("warning", f"IEEE 2030.5: {error}"))
    elif not error and before.get("last_error"):
        out.append(TimelineEvent("info", f"IEEE 2030.5: {server} answers normally again"))
    return out


def describe_modes(modes: Mapping[str, Any]) -> str:
    """``opModExpLimW 10000 W, opModConnect true`` from a status event's ``modes``."""
    parts = []
    for name, spec in modes.items():
        value = spec.get("value") if isinstance(spec, Mapping) else spec
        unit = spec.get("unit") if isinstance(spec, Mapping) else None
        match value:
            case bool():
                text = "true" if value else "false"
            case int() | float():
                text = f"{value:g}" + (f" {unit}" if unit else "")
            case _:
                text = "curve" if isinstance(value, Mapping) and "points" in value else "set"
        parts.append(f"{name} {text}")
    return ", ".join(parts) or "no mode"


def _event_text(event: Mapping[str, Any], new: bool) -> str:
    mrid = str(event.get("mrid") or "?")
    name = f"utility event {mrid[:8]}"
    if event.get("description"):
        name += f" '{event['description']}'"
    modes = describe_modes(event.get("modes") or {})
    start, end = event.get("effective_start"), event.get("effective_end")
    phase = event.get("status")
    match phase:
        case "scheduled":
            return f"IEEE 2030.5: {name} received: {modes} from {start} to {end}"
        case "active":
            verb = "received, already active" if new else "started"
            return f"IEEE 2030.5: {name} {verb}: {modes} until {end}"
        case "completed":
            return f"IEEE 2030.5: {name} completed at {end}: {modes} no longer in force"
        case "rejected":
            reason = event.get("reason") or "it cannot be followed"
            return f"IEEE 2030.5: {name} refused: {reason}"
        case _:
            reason = f" ({event['reason']})" if event.get("reason") else ""
            return f"IEEE 2030.5: {name} {phase}{reason}: {modes} no longer in force"


def _phase_level(phase: object) -> str:
    return "warning" if phase in ("rejected", "aborted") else "info"


def _response_event(response: Mapping[str, Any], description: object) -> TimelineEvent:
    mrid = str(response.get("mrid") or "?")
    status = response.get("status")
    name = str(response.get("status_name") or status).replace("_", " ")
    about = f"utility event {mrid[:8]}" + (f" '{description}'" if description else "")
    http = response.get("http_status")
    accepted = isinstance(http, int) and 200 <= http < 300
    answer = f"HTTP {http}" if http is not None else "no answer"
    level = "info" if accepted and status not in _REFUSALS else "warning"
    return TimelineEvent(
        level, f"IEEE 2030.5: Response '{name}' ({status}) for {about} posted: {answer}"
    )


def _response_key(response: Mapping[str, Any]) -> tuple[object, object, object]:
    return (response.get("mrid"), response.get("status"), response.get("at"))


def _dicts(value: object) -> Sequence[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]
