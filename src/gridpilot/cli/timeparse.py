"""Parsing of the CLI's time arguments: durations (``15m``) and instants (``-2h``, RFC 3339)."""

from __future__ import annotations

import re

from gridpilot.model import parse_timestamp_ms

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")


def parse_duration_ms(text: str) -> int:
    """``15m`` -> 900000. Units: ms s m h d w."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 15m, 1h, 7d")
    value = int(float(match.group(1)) * _UNITS_MS[match.group(2)])
    if value <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return value


def parse_instant_ms(text: str, now_ms: int) -> int:
    """``now``, a relative ``-2h``, epoch milliseconds, or RFC 3339 (``2026-11-26T12:00Z``)."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("-"):
        return now_ms - parse_duration_ms(text[1:])
    if text.isdigit():
        return int(text)
    try:
        return parse_timestamp_ms(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; write now, -2h, epoch ms or 2026-11-26T12:00:00Z"
        ) from None
