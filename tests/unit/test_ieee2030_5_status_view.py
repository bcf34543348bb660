"""The 2030.5 status view (CLI and API): lenient on what the client sent, strict on JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gridpilot.ieee2030_5.status_view import (
    MAX_STATUS_BYTES,
    StatusMessageError,
    not_published_view,
    parse_status,
    render_text,
    status_view,
)

NOW = datetime(2026, 11, 27, 10, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}" + b" " * MAX_STATUS_BYTES, "is over"),
    ],
)
def test_a_status_must_be_a_json_object(payload: bytes, reason: str) -> None:
    with pytest.raises(StatusMessageError, match=reason):
        parse_status(payload)


def test_a_bare_status_shows_what_is_missing_as_such() -> None:
    view = status_view({"ts": "2026-11-27T10:00:00Z", "events": "junk"}, site="s", now=NOW)
    assert view["age_s"] == 300.0
    assert view["active_events"] == view["scheduled_events"] == view["ended_events"] == []
    assert view["programs"] == view["responses"] == view["mirrors"] == []
    lines = render_text(view)
    assert lines[0] == "IEEE 2030.5 client of site s: status of 2026-11-27T10:00:00Z (5 min ago)"
    assert "  LFDI:            ?" in lines
    assert "  registered:      no, PIN not checked" in lines
    assert "  server clock:    unknown" in lines
    assert "  poll / post:     every ? / ?" in lines
    assert "  active events:   none" in lines
    assert "  last error:      none" in lines


def test_events_are_split_by_phase_and_modes_described() -> None:
    events = [
        {"mrid": "A", "status": "active",
         "modes": {"opModExpLimW": {"value": 0.0, "unit": "W"}, "opModConnect": {"value": True},
                   "opModFixedPFInjectW": {"value": {"pf": 0.95, "excitation": "over"}},
                   "opModVoltVar": {"value": {"points": [[0.9, 1], [1.1, -1]], "x": "V_pu",
                                              "y": "var_pct_of_VA"}}}},
        {"mrid": "B", "status": "scheduled", "modes": {}},
        {"mrid": "C", "status": "superseded"},
        "not an event",
    ]  # fmt: skip
    view = status_view({"events": events, "pin_ok": False}, site="s", now=NOW)
    assert [e["mrid"] for e in view["active_events"]] == ["A"]
    assert [e["mrid"] for e in view["scheduled_events"]] == ["B"]
    assert [e["mrid"] for e in view["ended_events"]] == ["C"]
    text = "\n".join(render_text(view))
    assert (
        "opModExpLimW 0 W, opModConnect true, opModFixedPFInjectW pf 0.95 over-excited, "
        "opModVoltVar curve of 2 points" in text
    )
    assert "B (None, primacy None) None .. None: no modes" in text
    assert "PIN MISMATCH" in text
    assert view["age_s"] is None  # no ts


@pytest.mark.parametrize(
    ("configured", "fragment"),
    [(True, "the client is not running"), (False, "has no 'ieee2030_5' section")],
)
def test_no_status_says_why(configured: bool, fragment: str) -> None:
    view = not_published_view("s", "gridpilot/v1/s/ieee2030_5/status", configured=configured)
    assert view["published"] is False
    assert fragment in view["message"]
    assert render_text(view) == [view["message"]]
