"""The pure 2030.5 event scheduler, table by table: windows and randomization, primacy and
creationTime, per-mode supersession, server EventStatus, DefaultDERControl fallback and the
Responses each situation sends (exactly once)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.ieee2030_5.controls import ControlValue
from gridpilot.ieee2030_5.schedule import (
    DefaultDoc,
    Documents,
    EventDoc,
    Phase,
    ResponseStatus,
    ScheduleState,
    StepResult,
    step,
)

T0 = 1_800_000_000  # server time, seconds
R = ResponseStatus
EXP = "opModExpLimW"
CONN = "opModConnect"


def ev(
    mrid: str,
    start: int,
    duration: int,
    *,
    program: str = "/derp/1",
    primacy: int = 1,
    created: int = T0 - 1000,
    modes: Mapping[str, ControlValue] | None = None,
    status: int = 0,
    status_time: int = 0,
    rs: int = 0,
    rd: int = 0,
    required: int = 0x03,
    reply_to: str | None = "/rsp",
    invalid: str | None = None,
) -> EventDoc:
    return EventDoc(
        mrid=mrid,
        program=program,
        primacy=primacy,
        creation_time=created,
        start=T0 + start,
        duration=duration,
        modes={EXP: ControlValue(5000.0, "W")} if modes is None else modes,
        randomize_start=rs,
        randomize_duration=rd,
        server_status=status,
        status_time=T0 + status_time,
        reply_to=reply_to,
        response_required=required,
        invalid=invalid,
    )


DEFAULT = DefaultDoc(
    program="/derp/1",
    primacy=1,
    mrid="D1",
    modes={EXP: ControlValue(10000.0, "W"), CONN: ControlValue(True)},
)


def run(
    timeline: Iterable[tuple[int, Documents]],
    *,
    seed: str = "LFDI",
    supported: frozenset[str] | None = None,
) -> list[tuple[int, StepResult]]:
    """Steps at the given offsets from T0, each with the documents served then."""
    state = ScheduleState(seed=seed)
    out = []
    for t, docs in timeline:
        result = step(state, docs, T0 + t, supported_modes=supported)
        state = result.state
        out.append((t, result))
    return out


def responses(results: list[tuple[int, StepResult]]) -> list[tuple[int, str, int]]:
    return [(r.at - T0, r.mrid, int(r.status)) for _, res in results for r in res.responses]


def phase(result: StepResult, mrid: str) -> Phase:
    return next(e.phase for e in result.events if e.mrid == mrid)


def in_force(result: StepResult) -> dict[str, tuple[object, str, str]]:
    return {m: (e.value.value, e.source, e.mrid) for m, e in result.controls.items()}


def test_single_event_lifecycle_and_default_fallback() -> None:
    docs = Documents(events=[ev("A", 100, 60)], defaults=[DEFAULT])
    results = run([(0, docs), (99, docs), (100, docs), (130, docs), (160, docs), (200, docs)])
    assert responses(results) == [(0, "A", 1), (100, "A", 2), (160, "A", 3)]
    by_t = dict(results)
    assert in_force(by_t[0])[EXP] == (10000.0, "default", "D1")
    assert in_force(by_t[99])[EXP] == (10000.0, "default", "D1")
    assert in_force(by_t[100])[EXP] == (5000.0, "event", "A")
    assert in_force(by_t[130])[CONN] == (True, "default", "D1")  # the mode no event holds
    assert in_force(by_t[160])[EXP] == (10000.0, "default", "D1")
    assert [phase(by_t[t], "A") for t in (0, 100, 160)] == [
        Phase.SCHEDULED,
        Phase.ACTIVE,
        Phase.COMPLETED,
    ]
    assert [by_t[t].next_change for t in (0, 100, 160)] == [T0 + 100, T0 + 160, None]


def test_no_default_and_no_event_means_no_controls() -> None:
    ((_, result),) = run([(0, Documents(events=[ev("A", 100, 60)]))])
    assert result.controls == {}


@pytest.mark.parametrize(
    ("required", "expected"),
    [
        (0x00, []),
        (0x01, [(0, "A", 1)]),
        (0x02, [(10, "A", 2), (70, "A", 3)]),
        (0x03, [(0, "A", 1), (10, "A", 2), (70, "A", 3)]),
    ],
)
def test_response_required_bits(required: int, expected: list[tuple[int, str, int]]) -> None:
    docs = Documents(events=[ev("A", 10, 60, required=required)])
    assert responses(run([(0, docs), (10, docs), (70, docs)])) == expected


def test_no_reply_to_posts_nothing_but_still_schedules() -> None:
    docs = Documents(events=[ev("A", 0, 60, reply_to=None)])
    results = run([(0, docs), (60, docs)])
    assert responses(results) == []
    assert in_force(results[0][1])[EXP][1] == "event"


def test_each_response_is_sent_once() -> None:
    docs = Documents(events=[ev("A", 0, 60)])
    results = run([(0, docs), (0, docs), (5, docs), (60, docs), (61, docs), (90, docs)])
    assert responses(results) == [(0, "A", 1), (0, "A", 2), (60, "A", 3)]


def test_randomized_start_and_duration_are_drawn_once_per_mrid() -> None:
    docs = Documents(events=[ev("A", 100, 60, rs=30, rd=20), ev("B", 100, 60, rs=-30)])
    first = run([(0, docs), (50, docs), (90, docs)])
    views = [{e.mrid: (e.effective_start, e.effective_end) for e in r.events} for _, r in first]
    assert views[0] == views[1] == views[2]  # the draw is kept for the event's life
    a_start, a_end = views[0]["A"]
    b_start, _ = views[0]["B"]
    assert T0 + 100 <= a_start <= T0 + 130
    assert a_start + 60 <= a_end <= a_start + 80
    assert T0 + 70 <= b_start <= T0 + 100  # a negative randomizeStart draws from [-30, 0]
    # A restarted client with the same seed draws the same; another device differs.
    again = run([(0, docs)])[0][1]
    assert {e.mrid: (e.effective_start, e.effective_end) for e in again.events} == views[0]
    other = run([(0, docs)], seed="ANOTHER-LFDI")[0][1]
    assert next(e for e in other.events if e.mrid == "A").effective_start != a_start


def test_randomized_start_moves_started_response_and_controls() -> None:
    docs = Documents(events=[ev("A", 100, 60, rs=40)], defaults=[DEFAULT])
    ((_, probe),) = run([(0, docs)])
    eff = next(e for e in probe.events if e.mrid == "A").effective_start
    assert T0 + 100 <= eff <= T0 + 140
    assert probe.next_change == eff
    before = int(eff - T0) - (1 if eff == int(eff) else 0)
    results = run([(0, docs), (before, docs), (eff - T0, docs)])  # type: ignore[list-item]
    assert in_force(results[1][1])[EXP][1] == "default"
    assert in_force(results[2][1])[EXP] == (5000.0, "event", "A")
    assert [s for _, m, s in responses(results)] == [1, 2]


def test_lower_primacy_wins_and_the_loser_is_aborted() -> None:
    # P2 (primacy 2) runs first; P1's event (primacy 1) overlaps it and takes its only mode.
    low = ev("LOW", 0, 100, program="/derp/2", primacy=2, modes={EXP: ControlValue(3000.0, "W")})
    high = ev("HIGH", 50, 100, program="/derp/1", primacy=1, created=T0 - 5000)
    docs = Documents(events=[low, high], defaults=[DEFAULT])
    results = run([(0, docs), (50, docs), (100, docs), (150, docs)])
    by_t = dict(results)
    assert in_force(by_t[0])[EXP] == (3000.0, "event", "LOW")
    assert in_force(by_t[50])[EXP] == (5000.0, "event", "HIGH")
    assert phase(by_t[50], "LOW") is Phase.ABORTED
    # LOW does not come back, and is not "completed" at its end.
    assert in_force(by_t[100])[EXP] == (5000.0, "event", "HIGH")
    assert in_force(by_t[150])[EXP] == (10000.0, "default", "D1")
    assert responses(results) == [
        (0, "LOW", 1),
        (0, "HIGH", 1),
        (0, "LOW", 2),
        (50, "HIGH", 2),
        (50, "LOW", 14),
        (150, "HIGH", 3),
    ]


def test_higher_primacy_event_running_blocks_a_lower_one_from_starting() -> None:
    high = ev("HIGH", 0, 100, primacy=1, program="/derp/1")
    low = ev("LOW", 20, 30, primacy=2, program="/derp/2")
    results = run([(0, Documents(events=[high, low])), (20, Documents(events=[high, low]))])
    assert responses(results)[-1] == (20, "LOW", 14)
    assert phase(results[-1][1], "LOW") is Phase.ABORTED


def test_same_primacy_later_creation_time_supersedes() -> None:
    old = ev("OLD", 0, 100, created=T0 - 2000)
    new = ev("NEW", 30, 100, created=T0 - 1000, modes={EXP: ControlValue(2000.0, "W")})
    docs = Documents(events=[old, new])
    results = run([(0, docs), (30, docs), (130, docs)])
    by_t = dict(results)
    assert in_force(by_t[30])[EXP] == (2000.0, "event", "NEW")
    assert phase(by_t[30], "OLD") is Phase.SUPERSEDED
    assert (30, "OLD", 7) in responses(results)
    assert (130, "OLD", 3) not in responses(results)
    # The superseded event's effective end shows when it stopped.
    assert next(e for e in by_t[30].events if e.mrid == "OLD").effective_end == T0 + 30


def test_earlier_creation_time_loses_even_if_listed_first() -> None:
    a = ev("A", 0, 100, created=T0 - 10)
    b = ev("B", 0, 100, created=T0 - 20)
    ((_, result),) = run([(0, Documents(events=[b, a]))])
    assert in_force(result)[EXP][2] == "A"
    assert phase(result, "B") is Phase.SUPERSEDED


def test_supersession_is_per_mode() -> None:
    both = {EXP: ControlValue(5000.0, "W"), CONN: ControlValue(False)}
    a = ev("A", 0, 200, created=T0 - 2000, modes=both)
    b = ev("B", 50, 50, created=T0 - 1000, modes={EXP: ControlValue(1000.0, "W")})
    c = ev("C", 120, 50, created=T0 - 500, modes=both)
    docs = Documents(events=[a, b, c])
    results = run([(0, docs), (50, docs), (100, docs), (120, docs)])
    by_t = dict(results)
    # B takes only the export limit: A keeps running with opModConnect, not superseded.
    assert in_force(by_t[50]) == {EXP: (1000.0, "event", "B"), CONN: (False, "event", "A")}
    assert phase(by_t[50], "A") is Phase.ACTIVE
    # After B, A holds both again; C takes both: now A is superseded.
    assert in_force(by_t[100])[EXP] == (5000.0, "event", "A")
    assert phase(by_t[120], "A") is Phase.SUPERSEDED
    assert in_force(by_t[120]) == {EXP: (5000.0, "event", "C"), CONN: (False, "event", "C")}
    codes = responses(results)
    assert (100, "B", 3) in codes
    assert (120, "A", 7) in codes
    assert not [c for c in codes if c[1] == "A" and c[2] == 7 and c[0] != 120]


def test_server_cancellation_while_active_and_before_start() -> None:
    running = ev("RUN", 0, 100)
    later = ev("LATER", 200, 100)
    served = Documents(events=[running, later], defaults=[DEFAULT])
    cancelled = Documents(
        events=[
            ev("RUN", 0, 100, status=2, status_time=40),
            ev("LATER", 200, 100, status=2, status_time=40),
        ],
        defaults=[DEFAULT],
    )
    results = run([(0, served), (40, cancelled), (100, cancelled), (200, cancelled)])
    by_t = dict(results)
    assert in_force(by_t[40])[EXP] == (10000.0, "default", "D1")
    assert phase(by_t[40], "RUN") is Phase.CANCELLED
    assert phase(by_t[200], "LATER") is Phase.CANCELLED
    assert responses(results) == [
        (0, "RUN", 1),
        (0, "LATER", 1),
        (0, "RUN", 2),
        (40, "RUN", 6),
        (40, "LATER", 6),
    ]


def test_cancelled_with_randomization_stops_within_the_randomization_window() -> None:
    docs = Documents(events=[ev("A", 0, 1000, rs=0, rd=100)], defaults=[DEFAULT])
    cancel = Documents(
        events=[ev("A", 0, 1000, rd=100, status=3, status_time=50)], defaults=[DEFAULT]
    )
    ((_, probe),) = run([(0, docs), (50, cancel)])[1:]
    stop = probe.next_change
    assert stop is not None
    assert T0 + 50 <= stop <= T0 + 150  # cancellation time + U * max(|rs|, |rd|)
    if stop > T0 + 50:
        assert phase(probe, "A") is Phase.ACTIVE
        assert in_force(probe)[EXP][1] == "event"
    results = run([(0, docs), (50, cancel), (int(stop - T0) + 1, cancel)])
    assert phase(results[-1][1], "A") is Phase.CANCELLED
    assert in_force(results[-1][1])[EXP][1] == "default"
    assert [s for _, _, s in responses(results)] == [1, 2, 6]


def test_cancelled_with_randomization_before_start_cancels_at_once() -> None:
    docs = Documents(events=[ev("A", 100, 100, rs=60, status=3, status_time=0)])
    ((_, result),) = run([(0, docs)])
    assert phase(result, "A") is Phase.CANCELLED
    assert responses([(0, result)]) == [(0, "A", 1), (0, "A", 6)]


def test_server_superseded_status() -> None:
    served = Documents(events=[ev("A", 0, 100)])
    superseded = Documents(events=[ev("A", 0, 100, status=4, status_time=30)])
    results = run([(0, served), (30, superseded)])
    assert phase(results[-1][1], "A") is Phase.SUPERSEDED
    assert responses(results)[-1] == (30, "A", 7)


@pytest.mark.parametrize(
    ("event", "code", "reason"),
    [
        (ev("X", -200, 100), 254, "over"),  # ended before first sight: expired
        (ev("X", 0, 100, invalid="opModMaxLimW: 12000 hundredths"), 253, "opModMaxLimW"),
        (ev("X", 0, 100, modes={}), 253, "no mode"),
        (ev("X", 0, 0), 253, "duration"),
        (ev("X", 0, 100, rs=4000), 253, "randomizeStart"),
        (ev("X", 0, 100, modes={"opModVoltVar": ControlValue({})}), 252, "opModVoltVar"),
    ],
)
def test_refusals_on_first_sight(event: EventDoc, code: int, reason: str) -> None:
    docs = Documents(events=[event], defaults=[DEFAULT])
    results = run([(0, docs), (50, docs)], supported=frozenset({EXP, CONN}))
    assert responses(results) == [(0, "X", code)]  # no Received, no Started
    view = next(e for e in results[0][1].events if e.mrid == "X")
    assert view.phase is Phase.REJECTED
    assert view.reason is not None
    assert reason in view.reason
    assert all(e.source == "default" for e in results[1][1].controls.values())


def test_event_already_running_when_first_seen_starts_late() -> None:
    docs = Documents(events=[ev("A", -50, 100)])
    assert responses(run([(0, docs)])) == [(0, "A", 1), (0, "A", 2)]


def test_late_step_reports_started_and_completed() -> None:
    docs = Documents(events=[ev("A", 10, 20)])
    assert responses(run([(0, docs), (100, docs)])) == [(0, "A", 1), (100, "A", 2), (100, "A", 3)]


def test_unlisted_event_is_forgotten() -> None:
    docs = Documents(events=[ev("A", 0, 100)])
    results = run([(0, docs), (10, Documents())])
    assert results[-1][1].events == []
    assert results[-1][1].state.tracks == {}
    assert results[-1][1].state.sent == frozenset()


def test_defaults_of_lower_primacy_program_win_per_mode() -> None:
    other = DefaultDoc(
        program="/derp/0",
        primacy=0,
        mrid="D0",
        modes={EXP: ControlValue(1500.0, "W")},
    )
    ((_, result),) = run([(0, Documents(defaults=[DEFAULT, other]))])
    assert in_force(result) == {
        EXP: (1500.0, "default", "D0"),
        CONN: (True, "default", "D1"),
    }


def test_a_scripted_day_table() -> None:
    """Hour-scale day: morning export limit (program 2), midday primacy-1 curtailment over
    it, an afternoon event superseded by a newer one, an evening event cancelled."""
    h = 3600
    p2 = {"program": "/derp/2", "primacy": 2}
    morning = ev("M", 6 * h, 6 * h, **p2, modes={EXP: ControlValue(4000.0, "W")})  # type: ignore[arg-type]
    midday = ev("N", 11 * h, 2 * h, modes={EXP: ControlValue(0.0, "W")})
    aft_old = ev("O", 14 * h, 3 * h, created=T0, modes={EXP: ControlValue(3000.0, "W")})
    aft_new = ev("P", 15 * h, 1 * h, created=T0 + 10, modes={EXP: ControlValue(2500.0, "W")})
    evening = ev("Q", 18 * h, 2 * h)
    served = [morning, midday, aft_old, aft_new, evening]
    day = Documents(events=served, defaults=[DEFAULT])
    evening_cancelled = Documents(
        events=[*served[:4], ev("Q", 18 * h, 2 * h, status=2, status_time=17 * h)],
        defaults=[DEFAULT],
    )
    table = [
        (0, day, (10000.0, "default")),
        (6 * h, day, (4000.0, "event")),
        (11 * h, day, (0.0, "event")),
        (13 * h, day, (10000.0, "default")),  # M was aborted at 11 h: the default
        (14 * h, day, (3000.0, "event")),
        (15 * h, day, (2500.0, "event")),
        (16 * h, day, (10000.0, "default")),  # O was superseded by P, P completed
        (17 * h, evening_cancelled, (10000.0, "default")),
        (18 * h, evening_cancelled, (10000.0, "default")),
    ]
    results = run((t, docs) for t, docs, _ in table)
    for (t, _, want), (_, result) in zip(table, results, strict=True):
        value, source, _mrid = in_force(result)[EXP]
        assert (value, source) == want, f"at {t / h:g} h"
    codes = [(t // h, m, s) for t, m, s in responses(results)]
    assert codes == [
        (0, "M", 1),
        (0, "N", 1),
        (0, "O", 1),
        (0, "P", 1),
        (0, "Q", 1),
        (6, "M", 2),
        (11, "N", 2),
        (11, "M", 14),
        (13, "N", 3),
        (14, "O", 2),
        (15, "P", 2),
        (15, "O", 7),
        (16, "P", 3),
        (17, "Q", 6),
    ]


TERMINAL = {3, 6, 7, 13, 14, 252, 253, 254}
MODES = (EXP, CONN, "opModMaxLimW")


@st.composite
def days(draw: st.DrawFn) -> tuple[list[EventDoc], list[int]]:
    count = draw(st.integers(1, 6))
    events = []
    for i in range(count):
        modes = draw(st.sets(st.sampled_from(MODES), min_size=1, max_size=3))
        events.append(
            ev(
                f"E{i}",
                draw(st.integers(-50, 200)),
                draw(st.integers(1, 100)),
                program=f"/derp/{draw(st.integers(1, 3))}",
                primacy=draw(st.integers(0, 3)),
                created=T0 - draw(st.integers(0, 1000)),
                modes={m: ControlValue(float(i)) for m in sorted(modes)},
                rs=draw(st.integers(-30, 30)),
                rd=draw(st.integers(0, 30)),
            )
        )
    times = sorted(draw(st.lists(st.integers(0, 400), min_size=1, max_size=25)))
    return events, times


@settings(max_examples=300, deadline=None)
@given(days())
def test_schedule_invariants(day: tuple[list[EventDoc], list[int]]) -> None:
    events, times = day
    docs = Documents(events=events, defaults=[DEFAULT])
    results = run([(t, docs) for t in times])
    codes = responses(results)
    # Each (mRID, status) once; at most one ending; Started before its ending.
    assert len({(m, s) for _, m, s in codes}) == len(codes)
    for doc in events:
        mine = [s for _, m, s in codes if m == doc.mrid]
        assert len([s for s in mine if s in TERMINAL]) <= 1, mine
        if 2 in mine and any(s in TERMINAL for s in mine):
            assert mine.index(2) < next(i for i, s in enumerate(mine) if s in TERMINAL)
    by_mrid = {e.mrid: e for e in events}
    for t, result in results:
        now = T0 + t
        views = {v.mrid: v for v in result.events}
        for mode, effective in result.controls.items():
            if effective.source == "default":
                continue
            view = views[effective.mrid]
            # The event in force is active, inside its window and holds the mode...
            assert view.phase is Phase.ACTIVE
            assert view.effective_start <= now < view.effective_end
            assert mode in view.modes
            # ...and no other active event with that mode outranks it.
            winner = by_mrid[effective.mrid]
            for other in result.events:
                if (
                    other.phase is Phase.ACTIVE
                    and mode in other.modes
                    and other.mrid != winner.mrid
                ):
                    rival = by_mrid[other.mrid]
                    assert (winner.primacy, -winner.creation_time, winner.mrid) < (
                        rival.primacy,
                        -rival.creation_time,
                        rival.mrid,
                    )
        # Randomized windows stay within their bounds.
        for view in result.events:
            doc = by_mrid[view.mrid]
            low, high = sorted((doc.start, doc.start + doc.randomize_start))
            assert low <= view.effective_start <= high
