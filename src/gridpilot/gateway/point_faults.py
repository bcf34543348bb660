"""Faults of single points of a device: a reading that is not a value (an analog loop's
wire break, out of range, or sensor fault).

Pure bookkeeping, like ``health``: the poll loop reports which points it read and which of
them were faulted; this keeps each active fault with its first time and a count, and says
which faults are new (to announce) and which cleared. A point that a poll did not read (its
poll class was not due) keeps its fault until a poll reads it again.

The device's retained ``state`` carries the active ones::

    "point_faults": {"supply_pressure_pa": {"kind": "wire_break", "message": "...",
                     "since": "2026-...Z", "polls": 12}}
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gridpilot.model import to_rfc3339


@dataclass(frozen=True, slots=True)
class FaultReport:
    """One faulted reading of a poll."""

    point: str
    kind: str
    message: str


@dataclass(slots=True)
class ActiveFault:
    kind: str
    message: str
    since_ms: int
    polls: int = 1
    """Polls that read the point faulted since ``since_ms``."""


@dataclass(frozen=True, slots=True)
class FaultChanges:
    raised: tuple[FaultReport, ...] = ()
    """New faults, and faults whose kind changed."""
    cleared: tuple[str, ...] = ()
    """Points that read a value again."""

    def __bool__(self) -> bool:
        return bool(self.raised or self.cleared)


class PointFaults:
    """The active point faults of one device."""

    def __init__(self) -> None:
        self.active: dict[str, ActiveFault] = {}

    def update(
        self, read: Collection[str], faults: Iterable[FaultReport], now_ms: int
    ) -> FaultChanges:
        """Record a poll that read the points ``read``, of which ``faults`` were faulted."""
        raised: list[FaultReport] = []
        faulted: set[str] = set()
        for fault in faults:
            faulted.add(fault.point)
            current = self.active.get(fault.point)
            if current is not None and current.kind == fault.kind:
                current.polls += 1
                current.message = fault.message
                continue
            self.active[fault.point] = ActiveFault(fault.kind, fault.message, now_ms)
            raised.append(fault)
        cleared = sorted(p for p in self.active if p in read and p not in faulted)
        for point in cleared:
            del self.active[point]
        return FaultChanges(tuple(raised), tuple(cleared))

    def snapshot(self) -> dict[str, dict[str, object]]:
        """The active faults as the state message carries them."""
        return {
            point: {
                "kind": fault.kind,
                "message": fault.message,
                "since": to_rfc3339(fault.since_ms),
                "polls": fault.polls,
            }
            for point, fault in sorted(self.active.items())
        }
