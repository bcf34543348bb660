"""The IEEE 2030.5 event scheduler: which DERControl is in force for each mode, and which
Responses to send, as a pure function of the served documents and the server time.

No I/O and no clock: ``step(state, documents, now)`` returns the new state, the effective
controls, the Responses to post and the next time anything changes. The client calls it
after every poll and at each ``next_change``; tests call it with a table of times.

Rules (IEEE 2030.5-2018 §12.1.3, DOMAIN.md "IEEE 2030.5 / CSIP"):

- Effective start = start + U·randomizeStart and effective end = effective start +
  duration + U'·randomizeDuration, with U, U' uniform in [0, 1] drawn ONCE per event mRID
  (a hash of the client's seed and the mRID, so a restart draws the same) and kept for the
  event's life. A negative randomization draws from [randomize, 0].
- Per control mode, among events inside their effective window, the lower primacy number
  wins, then the later creationTime (then the mRID, so the choice is total).
- An event that wins none of its modes while inside its window is terminated: Superseded
  (Response 7) when the events that beat it are of its own program, Aborted by another
  program's event (14) otherwise. An event that keeps one mode keeps running with it.
- Server EventStatus: 0 scheduled / 1 active follow the clock; 2 cancelled stops the event
  at once (Response 6); 3 cancelled with randomization stops it at the cancellation time +
  U''·max(|randomizeStart|, |randomizeDuration|); 4 superseded stops it (Response 7).
- A mode no event holds takes the DefaultDERControl of the lowest-primacy program that
  sets it.
- Responses, each at most once per (mRID, status), only when the event has a replyTo:
  responseRequired bit 0 → Received (1) on first sight; bit 1 → Started (2), Completed (3),
  Cancelled (6), Superseded (7), Aborted (14). On first sight an event is refused instead
  of received when it cannot be followed: 252 a mode this site does not support, 253
  invalid (unreadable control, no mode, duration ≤ 0, randomization beyond ±1 h), 254
  already over; refusals are sent when either bit is set.

Invariants: a track's draws never change; an event leaves SCHEDULED/ACTIVE at most once
(final phases are final); ``sent`` only grows while the event is listed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum

from gridpilot.ieee2030_5.controls import ControlValue

__all__ = [
    "DefaultDoc",
    "Documents",
    "Effective",
    "EventDoc",
    "EventView",
    "Phase",
    "ResponseStatus",
    "ResponseToPost",
    "ScheduleState",
    "StepResult",
    "step",
]

MAX_RANDOMIZE_S = 3600  # OneHourRangeType
_BIT_RECEIVED = 0x01
_BIT_EVENT = 0x02


class ResponseStatus(IntEnum):
    """Response.status values the client sends for DERControls (2030.5 Table 27)."""

    RECEIVED = 1
    STARTED = 2
    COMPLETED = 3
    CANCELLED = 6
    SUPERSEDED = 7
    ABORTED_SERVER = 13
    ABORTED_PROGRAM = 14
    REJECTED_NOT_APPLICABLE = 252
    REJECTED_INVALID = 253
    REJECTED_EXPIRED = 254


class ServerStatus(IntEnum):
    """EventStatus.currentStatus as the server serves it."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_WITH_RANDOMIZATION = 3
    SUPERSEDED = 4


class Phase(StrEnum):
    """Where an event is in the client's view; the last five are final."""

    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    ABORTED = "aborted"
    REJECTED = "rejected"


_LIVE = (Phase.SCHEDULED, Phase.ACTIVE)


@dataclass(frozen=True, slots=True)
class EventDoc:
    """One DERControl as served, with its control already converted (see controls.py).

    Times are server time in seconds since the epoch; ``invalid`` says why the control
    could not be read (the event is then refused with 253).
    """

    mrid: str
    program: str
    primacy: int
    creation_time: int
    start: int
    duration: int
    modes: Mapping[str, ControlValue]
    randomize_start: int = 0
    randomize_duration: int = 0
    server_status: int = ServerStatus.SCHEDULED
    status_time: int = 0
    reply_to: str | None = None
    response_required: int = 0
    description: str | None = None
    invalid: str | None = None


@dataclass(frozen=True, slots=True)
class DefaultDoc:
    """A program's DefaultDERControl."""

    program: str
    primacy: int
    mrid: str
    modes: Mapping[str, ControlValue]


@dataclass(frozen=True, slots=True)
class Documents:
    """Everything served that scheduling depends on (the last good copy of each list)."""

    events: Sequence[EventDoc] = ()
    defaults: Sequence[DefaultDoc] = ()


@dataclass(frozen=True, slots=True)
class _Track:
    u_start: float
    u_duration: float
    u_cancel: float
    phase: Phase = Phase.SCHEDULED
    reason: str | None = None
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the scheduler remembers between steps. ``seed`` makes the randomization draws
    differ between devices (use the LFDI) yet repeat across restarts of one device."""

    seed: str
    tracks: Mapping[str, _Track] = field(default_factory=dict)
    sent: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True, slots=True)
class Effective:
    """The value in force for one mode and where it came from."""

    value: ControlValue
    source: str  # "event" | "default"
    mrid: str
    primacy: int
    program: str


@dataclass(frozen=True, slots=True)
class ResponseToPost:
    """A Response the client must POST to ``reply_to`` (createdDateTime = ``at``)."""

    reply_to: str
    mrid: str
    status: ResponseStatus
    at: int


@dataclass(frozen=True, slots=True)
class EventView:
    """An event as the status topic shows it."""

    mrid: str
    program: str
    primacy: int
    description: str | None
    creation_time: int
    start: int
    duration: int
    effective_start: float
    effective_end: float
    phase: Phase
    reason: str | None
    modes: Mapping[str, ControlValue]


@dataclass(frozen=True, slots=True)
class StepResult:
    state: ScheduleState
    controls: Mapping[str, Effective]
    responses: Sequence[ResponseToPost]
    events: Sequence[EventView]
    next_change: float | None
    """The next server time at which a step could decide differently (None: nothing
    scheduled); the client steps again then even if no poll is due."""


def _draws(seed: str, mrid: str) -> tuple[float, float, float]:
    digest = hashlib.sha256(f"{seed}\x00{mrid.upper()}".encode()).digest()
    scale = float(2**64 - 1)

    def uniform(offset: int) -> float:
        return int.from_bytes(digest[offset : offset + 8], "big") / scale

    return uniform(0), uniform(8), uniform(16)


def _window(doc: EventDoc, track: _Track) -> tuple[float, float]:
    start = doc.start + track.u_start * doc.randomize_start
    end = start + doc.duration + track.u_duration * doc.randomize_duration
    return start, end


def _cancel_end(doc: EventDoc, track: _Track) -> float:
    spread = max(abs(doc.randomize_start), abs(doc.randomize_duration))
    return doc.status_time + track.u_cancel * spread


def _refusal(
    doc: EventDoc, track: _Track, now: float, supported: frozenset[str] | None
) -> tuple[ResponseStatus, str] | None:
    invalid = ResponseStatus.REJECTED_INVALID
    if doc.invalid is not None:
        return invalid, doc.invalid
    if not doc.modes:
        return invalid, "the control sets no mode"
    if doc.duration <= 0:
        return invalid, f"duration {doc.duration} s is not positive"
    for name, value in (
        ("randomizeStart", doc.randomize_start),
        ("randomizeDuration", doc.randomize_duration),
    ):
        if abs(value) > MAX_RANDOMIZE_S:
            return invalid, f"{name} {value} s is beyond ±{MAX_RANDOMIZE_S} s"
    if supported is not None:
        unsupported = sorted(set(doc.modes) - supported)
        if unsupported:
            return (
                ResponseStatus.REJECTED_NOT_APPLICABLE,
                f"this site does not support {', '.join(unsupported)}",
            )
    if doc.server_status in (ServerStatus.SCHEDULED, ServerStatus.ACTIVE):
        _, end = _window(doc, track)
        if end <= now:
            return ResponseStatus.REJECTED_EXPIRED, "the event was already over when first seen"
    return None


def _rank(doc: EventDoc) -> tuple[int, int, str]:
    # min() picks the winner: lower primacy, then LATER creationTime, then mRID.
    return (doc.primacy, -doc.creation_time, doc.mrid)


def _required(doc: EventDoc, status: ResponseStatus) -> bool:
    if status is ResponseStatus.RECEIVED:
        return bool(doc.response_required & _BIT_RECEIVED)
    if status >= ResponseStatus.REJECTED_NOT_APPLICABLE:
        return bool(doc.response_required & (_BIT_RECEIVED | _BIT_EVENT))
    return bool(doc.response_required & _BIT_EVENT)


def step(
    state: ScheduleState,
    documents: Documents,
    now: float,
    *,
    supported_modes: frozenset[str] | None = None,
) -> StepResult:
    """Advance the schedule to server time ``now`` given the served ``documents``.

    ``supported_modes`` (None: every mode) lists the modes this site can follow; an event
    asking for another is refused with 252.
    """
    run = _Step(state, documents, now)
    run.first_sight(supported_modes)
    run.server_word()
    run.ends()
    winners = run.winners()
    return StepResult(
        state=ScheduleState(seed=state.seed, tracks=run.tracks, sent=frozenset(run.sent)),
        controls=run.controls(winners, documents.defaults),
        responses=run.responses(),
        events=run.views(),
        next_change=run.next_change(),
    )


class _Step:
    """One step's working set; each method is one numbered rule of the module docstring."""

    def __init__(self, state: ScheduleState, documents: Documents, now: float) -> None:
        self.state = state
        self.now = now
        self.docs: dict[str, EventDoc] = {}
        for doc in documents.events:
            self.docs.setdefault(doc.mrid, doc)  # an mRID listed twice: the first counts
        # Tracks of events no longer listed are forgotten with their sent responses.
        self.tracks: dict[str, _Track] = {}
        self.sent = {key for key in state.sent if key[0] in self.docs}
        self.emitted: list[tuple[EventDoc, ResponseStatus]] = []
        self.windows: dict[str, tuple[float, float]] = {}

    def finish(
        self, mrid: str, phase: Phase, status: ResponseStatus, reason: str | None = None
    ) -> None:
        self.tracks[mrid] = replace(
            self.tracks[mrid], phase=phase, ended_at=self.now, reason=reason
        )
        self.windows.pop(mrid, None)
        self.emitted.append((self.docs[mrid], status))

    def first_sight(self, supported: frozenset[str] | None) -> None:
        """Draw the randomization of a new event, then receive or refuse it."""
        for mrid, doc in self.docs.items():
            known = self.state.tracks.get(mrid)
            if known is not None:
                self.tracks[mrid] = known
                continue
            self.tracks[mrid] = _Track(*_draws(self.state.seed, mrid))
            refusal = _refusal(doc, self.tracks[mrid], self.now, supported)
            if refusal is not None:
                self.finish(mrid, Phase.REJECTED, *refusal)
            else:
                self.emitted.append((doc, ResponseStatus.RECEIVED))

    def server_word(self) -> None:
        """Cancellations and supersession the server announces; windows of the rest."""
        for mrid, doc in self.docs.items():
            track = self.tracks[mrid]
            if track.phase not in _LIVE:
                continue
            start, end = _window(doc, track)
            status = doc.server_status
            if status == ServerStatus.SUPERSEDED:
                self.finish(
                    mrid, Phase.SUPERSEDED, ResponseStatus.SUPERSEDED, "superseded by the server"
                )
                continue
            randomized = status == ServerStatus.CANCELLED_WITH_RANDOMIZATION
            if status == ServerStatus.CANCELLED or (randomized and track.phase is Phase.SCHEDULED):
                self.finish(
                    mrid, Phase.CANCELLED, ResponseStatus.CANCELLED, "cancelled by the server"
                )
                continue
            if randomized:
                # Running: stop at the randomized cancellation time, not at once.
                end = min(end, _cancel_end(doc, track))
            self.windows[mrid] = (start, end)

    def ends(self) -> None:
        """An event whose window is over completes (or ends its randomized cancellation)."""
        for mrid, (_, end) in list(self.windows.items()):
            if self.now < end:
                continue
            doc = self.docs[mrid]
            if self.tracks[mrid].phase is Phase.SCHEDULED:
                # Stepped too late to see it run (the loop was held up): report both edges.
                self.emitted.append((doc, ResponseStatus.STARTED))
            if doc.server_status == ServerStatus.CANCELLED_WITH_RANDOMIZATION:
                self.finish(
                    mrid, Phase.CANCELLED, ResponseStatus.CANCELLED, "cancelled by the server"
                )
            else:
                self.finish(mrid, Phase.COMPLETED, ResponseStatus.COMPLETED)

    def winners(self) -> dict[str, str]:
        """Per mode, the winning event inside its window; losers of every mode stop."""
        inside = [m for m, (start, end) in self.windows.items() if start <= self.now < end]
        winners: dict[str, str] = {}
        for mrid in sorted(inside, key=lambda m: _rank(self.docs[m])):
            for mode in self.docs[mrid].modes:
                winners.setdefault(mode, mrid)
        losers = []
        for mrid in inside:  # starts first, so a Started precedes what it supersedes
            doc = self.docs[mrid]
            if not any(winners[mode] == mrid for mode in doc.modes):
                losers.append(mrid)
            elif self.tracks[mrid].phase is Phase.SCHEDULED:
                self.tracks[mrid] = replace(self.tracks[mrid], phase=Phase.ACTIVE)
                self.emitted.append((doc, ResponseStatus.STARTED))
        for mrid in losers:
            doc = self.docs[mrid]
            by = sorted({winners[mode] for mode in doc.modes})
            if {self.docs[m].program for m in by} == {doc.program}:
                self.finish(
                    mrid,
                    Phase.SUPERSEDED,
                    ResponseStatus.SUPERSEDED,
                    f"superseded by {', '.join(by)}",
                )
            else:
                self.finish(
                    mrid,
                    Phase.ABORTED,
                    ResponseStatus.ABORTED_PROGRAM,
                    f"aborted: another program's event ({', '.join(by)}) holds its modes",
                )
        return winners

    def controls(
        self, winners: Mapping[str, str], defaults: Sequence[DefaultDoc]
    ) -> dict[str, Effective]:
        """The winning events' values, then each remaining mode's default."""
        controls: dict[str, Effective] = {}
        for mode, mrid in winners.items():
            doc = self.docs[mrid]
            if self.tracks[mrid].phase is Phase.ACTIVE:
                controls[mode] = Effective(doc.modes[mode], "event", mrid, doc.primacy, doc.program)
        for default in sorted(defaults, key=lambda d: (d.primacy, d.program)):
            for mode, value in default.modes.items():
                if mode not in controls:
                    controls[mode] = Effective(
                        value, "default", default.mrid, default.primacy, default.program
                    )
        return controls

    def responses(self) -> list[ResponseToPost]:
        """Responses once per (mRID, status), where asked for and possible."""
        out: list[ResponseToPost] = []
        for doc, status in self.emitted:
            key = (doc.mrid, int(status))
            if key in self.sent:
                continue
            self.sent.add(key)
            if doc.reply_to is not None and _required(doc, status):
                out.append(ResponseToPost(doc.reply_to, doc.mrid, status, int(self.now)))
        return out

    def next_change(self) -> float | None:
        edges = [t for start, end in self.windows.values() for t in (start, end) if t > self.now]
        return min(edges) if edges else None

    def views(self) -> list[EventView]:
        views = []
        stopped = (Phase.CANCELLED, Phase.SUPERSEDED, Phase.ABORTED)
        for mrid, doc in self.docs.items():
            track = self.tracks[mrid]
            start, end = self.windows.get(mrid, _window(doc, track))
            if track.phase in stopped and track.ended_at is not None:
                end = min(end, track.ended_at)
            views.append(
                EventView(
                    mrid=mrid,
                    program=doc.program,
                    primacy=doc.primacy,
                    description=doc.description,
                    creation_time=doc.creation_time,
                    start=doc.start,
                    duration=doc.duration,
                    effective_start=start,
                    effective_end=end,
                    phase=track.phase,
                    reason=track.reason,
                    modes=doc.modes,
                )
            )
        return views
