"""The 2030.5 client's timeline: what two consecutive status messages add to the site's
events -- each happening once, in order, with the utility event named."""

from __future__ import annotations

from typing import Any

from gridpilot.ieee2030_5.timeline import TimelineEvent, describe_modes, timeline_events

MRID = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
LIMIT = {"opModExpLimW": {"value": 10000.0, "unit": "W"}}


def status(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": "2026-11-27T10:00:00.000Z",
        "server": "https://127.0.0.1:8443",
        "lfdi": "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5",
        "sfdi": 167261211391,
        "registered": False,
        "pin_ok": None,
        "end_device": None,
        "events": [],
        "responses": [],
        "last_error": None,
    }
    return base | fields


def event(phase: str, **fields: Any) -> dict[str, Any]:
    return {
        "mrid": MRID,
        "program": "/derp/1",
        "primacy": 1,
        "description": "export limit 10 kW",
        "effective_start": "2026-11-27T10:01:30.000Z",
        "effective_end": "2026-11-27T10:06:30.000Z",
        "status": phase,
        "reason": None,
        "modes": LIMIT,
    } | fields


def response(status: int, name: str, at: str, http: int | None = 201) -> dict[str, Any]:
    return {"mrid": MRID, "status": status, "status_name": name, "at": at, "http_status": http}


def test_a_day_of_one_export_limit_event_reads_as_a_timeline() -> None:
    first = status()
    walked = status(
        registered=True,
        pin_ok=True,
        end_device="/edev/1",
        events=[event("scheduled")],
        responses=[response(1, "received", "2026-11-27T10:00:01.000Z")],
    )
    started = walked | {
        "events": [event("active")],
        "responses": [
            *walked["responses"],
            response(2, "started", "2026-11-27T10:01:30.000Z"),
        ],
    }
    completed = started | {
        "events": [event("completed")],
        "responses": [
            *started["responses"],
            response(3, "completed", "2026-11-27T10:06:30.000Z"),
        ],
    }

    assert timeline_events(None, first) == []
    assert timeline_events(first, walked) == [
        TimelineEvent(
            "info",
            "IEEE 2030.5: registered with https://127.0.0.1:8443 as EndDevice /edev/1 "
            "(LFDI 3E4F45AB31EDFE5B67E343E5E4562E31984E23E5, SFDI 167261211391)",
        ),
        TimelineEvent(
            "info",
            "IEEE 2030.5: utility event A1B2C3D4 'export limit 10 kW' received: "
            "opModExpLimW 10000 W from 2026-11-27T10:01:30.000Z to 2026-11-27T10:06:30.000Z",
        ),
        TimelineEvent(
            "info",
            "IEEE 2030.5: Response 'received' (1) for utility event A1B2C3D4 "
            "'export limit 10 kW' posted: HTTP 201",
        ),
    ]
    # the same status again (a republish) adds nothing
    assert timeline_events(walked, walked) == []
    assert [e.message for e in timeline_events(walked, started)] == [
        "IEEE 2030.5: utility event A1B2C3D4 'export limit 10 kW' started: "
        "opModExpLimW 10000 W until 2026-11-27T10:06:30.000Z",
        "IEEE 2030.5: Response 'started' (2) for utility event A1B2C3D4 "
        "'export limit 10 kW' posted: HTTP 201",
    ]
    assert [e.message for e in timeline_events(started, completed)] == [
        "IEEE 2030.5: utility event A1B2C3D4 'export limit 10 kW' completed at "
        "2026-11-27T10:06:30.000Z: opModExpLimW 10000 W no longer in force",
        "IEEE 2030.5: Response 'completed' (3) for utility event A1B2C3D4 "
        "'export limit 10 kW' posted: HTTP 201",
    ]


def test_first_status_after_a_restart_names_an_event_already_running() -> None:
    now = status(registered=True, end_device="/edev/1", events=[event("active")])
    messages = [e.message for e in timeline_events(None, now)]
    assert messages[1] == (
        "IEEE 2030.5: utility event A1B2C3D4 'export limit 10 kW' received, already active: "
        "opModExpLimW 10000 W until 2026-11-27T10:06:30.000Z"
    )


def test_cancelled_refused_and_failed_responses_are_warnings_where_something_is_wrong() -> None:
    before = status(registered=True, events=[event("active")])
    cancelled = before | {
        "events": [event("cancelled", reason="cancelled by the server")],
        "responses": [response(6, "cancelled", "2026-11-27T10:03:00.000Z")],
    }
    assert timeline_events(before, cancelled) == [
        TimelineEvent(
            "info",
            "IEEE 2030.5: utility event A1B2C3D4 'export limit 10 kW' cancelled "
            "(cancelled by the server): opModExpLimW 10000 W no longer in force",
        ),
        TimelineEvent(
            "info",
            "IEEE 2030.5: Response 'cancelled' (6) for utility event A1B2C3D4 "
            "'export limit 10 kW' posted: HTTP 201",
        ),
    ]
    refused = before | {
        "events": [event("rejected", reason="opModVoltWatt is not supported")],
        "responses": [response(252, "rejected_not_applicable", "t1", http=400)],
    }
    got = timeline_events(before, refused)
    assert [e.level for e in got] == ["warning", "warning"]
    assert got[0].message.endswith("refused: opModVoltWatt is not supported")
    assert got[1].message.endswith("posted: HTTP 400")


def test_pin_mismatch_and_errors_appear_once_and_their_end_is_told() -> None:
    ok = status(registered=True, pin_ok=True)
    wrong = ok | {"pin_ok": False}
    got = timeline_events(ok, wrong)
    assert [e.level for e in got] == ["alarm"]
    assert "Registration PIN" in got[0].message
    assert timeline_events(wrong, wrong) == []

    failing = ok | {"last_error": "GET /dcap: connection refused by 127.0.0.1:8443"}
    assert timeline_events(ok, failing) == [
        TimelineEvent("warning", "IEEE 2030.5: GET /dcap: connection refused by 127.0.0.1:8443")
    ]
    assert timeline_events(failing, failing) == []
    assert timeline_events(failing, ok) == [
        TimelineEvent("info", "IEEE 2030.5: https://127.0.0.1:8443 answers normally again")
    ]


def test_responses_beyond_the_last_50_are_not_told_twice() -> None:
    old = [response(1, "received", f"t{i}") | {"mrid": f"E{i}"} for i in range(50)]
    before = status(responses=old)
    after = status(responses=[*old[1:], response(1, "received", "t50") | {"mrid": "E50"}])
    got = timeline_events(before, after)
    assert len(got) == 1
    assert "utility event E50 " in got[0].message


def test_modes_are_described_in_plain_units() -> None:
    assert describe_modes({}) == "no mode"
    assert (
        describe_modes(
            {
                "opModExpLimW": {"value": 5000.0, "unit": "W"},
                "opModConnect": {"value": False},
                "opModMaxLimW": {"value": 60.0, "unit": "%"},
                "opModVoltVar": {"value": {"points": [[0.92, 44.0]], "x": "V_pu"}},
            }
        )
        == "opModExpLimW 5000 W, opModConnect false, opModMaxLimW 60 %, opModVoltVar curve"
    )
