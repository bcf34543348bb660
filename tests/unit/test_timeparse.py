from __future__ import annotations

import pytest

from gridpilot.cli.timeparse import parse_duration_ms, parse_instant_ms

NOW = 1_764_158_400_000  # 2025-11-26T12:00:00Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("15m", 900_000),
        ("1h", 3_600_000),
        ("1.5h", 5_400_000),
        ("7d", 604_800_000),
        ("1w", 604_800_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "15", "m", "-5m", "0s", "1y", "15 minutes"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("now", NOW),
        ("-1h", NOW - 3_600_000),
        ("1764158400000", NOW),
        ("2025-11-26T12:00:00Z", NOW),
        ("2025-11-26T13:00:00+01:00", NOW),
    ],
)
def test_instants(text: str, ms: int) -> None:
    assert parse_instant_ms(text, NOW) == ms


def test_bad_instant() -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_instant_ms("yesterday", NOW)
