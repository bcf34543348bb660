from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.model import (
    Topic,
    TopicKind,
    is_valid_identifier,
    parse_timestamp_ms,
    parse_topic,
    to_rfc3339,
    unit_of,
)


@pytest.mark.parametrize(
    ("point", "unit"),
    [
        ("active_power_w", "W"),
        ("energy_import_wh", "Wh"),
        ("reactive_power_var", "var"),
        ("reactive_energy_varh", "varh"),
        ("zone_temp_degc", "degC"),
        ("soc_pct", "%"),
        ("frequency_hz", "Hz"),
        ("flow_m3h", "m3/h"),
        ("status_state", "1"),
        ("frequency", None),
        ("_w", None),
    ],
)
def test_unit_suffix(point: str, unit: str | None) -> None:
    assert unit_of(point) == unit


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("meter1", True),
        ("grid-meter_2", True),
        ("Meter", False),
        ("a/b", False),
        ("a+b", False),
        ("#", False),
        ("", False),
        ("$sys", False),
        ("x" * 63, True),
        ("x" * 64, False),
    ],
)
def test_identifiers(name: str, ok: bool) -> None:
    assert is_valid_identifier(name) is ok


@pytest.mark.parametrize("kind", list(TopicKind))
def test_topics_round_trip(kind: TopicKind) -> None:
    site_level = (
        TopicKind.EVENTS,
        TopicKind.DEADLETTER,
        TopicKind.GRID_CONTROLS,
        TopicKind.IEEE2030_5_STATUS,
    )
    device = None if kind in site_level else "meter"
    topic = Topic(kind, "hq", device)
    assert parse_topic(str(topic)) == topic


def test_topic_strings_follow_the_contract() -> None:
    assert str(Topic.telemetry("hq", "m")) == "gridpilot/v1/hq/m/telemetry"
    assert str(Topic.command_result("hq", "m")) == "gridpilot/v1/hq/m/command/result"
    assert str(Topic.deadletter("hq")) == "gridpilot/v1/hq/deadletter"
    assert str(Topic.grid_controls("hq")) == "gridpilot/v1/hq/grid/controls"
    assert str(Topic.ieee2030_5_status("hq")) == "gridpilot/v1/hq/ieee2030_5/status"
    # a device named "grid" still has its telemetry
    assert parse_topic("gridpilot/v1/hq/grid/telemetry") == Topic.telemetry("hq", "grid")
    assert Topic.filter(TopicKind.TELEMETRY, "hq") == "gridpilot/v1/hq/+/telemetry"
    assert parse_topic("other/v1/hq/m/telemetry") is None
    assert parse_topic("gridpilot/v1/hq/m/bogus") is None


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_rfc3339_round_trip(ts_ms: int) -> None:
    assert parse_timestamp_ms(to_rfc3339(ts_ms)) == ts_ms


@pytest.mark.parametrize("bad", ["2026-11-26T12:00:00", "yesterday", True, 1.5, None, -1])
def test_bad_timestamps(bad: object) -> None:
    with pytest.raises(ValueError, match="ts"):
        parse_timestamp_ms(bad)


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_rfc3339_formatting_matches_datetime(ts_ms: int) -> None:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts_ms)
    # isoformat pads the year to four digits, as RFC 3339 wants (strftime's %Y does not)
    assert to_rfc3339(ts_ms) == dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
