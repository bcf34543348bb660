"""Fixed-rate poll schedule without drift.

Deadlines are ``start + n * interval`` for whole ``n``, computed from the tick index (not
by adding floats, which would accumulate rounding). A poll that overruns does not shift
the grid and does not cause a burst of catch-up polls: the missed ticks are skipped and
counted. Pure: callers pass the current (monotonic) time in seconds.

``PollCycle`` says which poll classes (fast, normal, slow) are due at each tick of that grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gridpilot.config.models import PollClass

# Float slack so that a time computed as exactly a deadline counts as reaching it.
_EPSILON_S = 1e-9


@dataclass(frozen=True, slots=True)
class Tick:
    """The next poll: when, and how many ticks were skipped to get there."""

    deadline_s: float
    skipped: int


class FixedRateSchedule:
    """Poll deadlines on a fixed grid ``start_s + n * interval_s``."""

    def __init__(self, interval_s: float, start_s: float) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be greater than zero")
        self.interval_s = interval_s
        self.start_s = start_s
        self.index = 0

    @property
    def deadline_s(self) -> float:
        """The current deadline (the one the caller is waiting for or has just served)."""
        return self.start_s + self.index * self.interval_s

    def advance(self, now_s: float, not_before_s: float | None = None) -> Tick:
        """Move to the next deadline after the current one that is not in the past.

        ``now_s`` is when the current tick's work finished. The next deadline is the first
        grid point after the current one that is at or after ``now_s`` (and at or after
        ``not_before_s``, used to wait out a reconnect backoff while keeping the phase).
        Grid points passed over are reported in ``skipped``; those passed over only because
        of ``not_before_s`` are deliberate and not counted.
        """
        earliest = max(now_s, self.deadline_s + self.interval_s)
        steps = self._steps_to(earliest)
        skipped = steps - 1
        if (
            not_before_s is not None
            and not_before_s > self.start_s + (self.index + steps) * self.interval_s
        ):
            steps = self._steps_to(not_before_s)
        self.index += steps
        return Tick(self.deadline_s, skipped)

    def _steps_to(self, t: float) -> int:
        """Smallest ``k >= 1`` with ``deadline(index + k) >= t``."""
        k = math.ceil((t - self.start_s - _EPSILON_S) / self.interval_s) - self.index
        return max(k, 1)


class PollCycle:
    """Which poll classes are due at each tick of a device's grid.

    The classes' intervals are whole multiples of the fast interval (``poll_interval /
    fast_divisor``): fast every 1, normal every ``fast_divisor``, slow every ``fast_divisor
    x slow_multiple`` of them. The grid's tick is the interval of the fastest class the
    device has (a device without fast points wakes once per ``poll_interval``, not five
    times). Every class is due at tick 0. A class whose tick was skipped (an overrun) is due
    at the next tick that is served rather than one whole period later, so an overrun never
    costs a slow point more than the ticks it actually lost.
    """

    def __init__(
        self,
        interval_s: float,
        classes: Iterable[PollClass],
        *,
        fast_divisor: int,
        slow_multiple: int,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be greater than zero")
        if fast_divisor < 1 or slow_multiple < 1:
            raise ValueError("fast_divisor and slow_multiple must be at least 1")
        in_fast_ticks = {
            PollClass.FAST: 1,
            PollClass.NORMAL: fast_divisor,
            PollClass.SLOW: fast_divisor * slow_multiple,
        }
        present = set(classes)
        if not present:
            raise ValueError("a poll cycle needs at least one class")
        # The smallest period present divides the others (1 | d | d * m).
        base = min(in_fast_ticks[c] for c in present)
        self.tick_s = interval_s / fast_divisor * base
        self.periods: dict[PollClass, int] = {c: in_fast_ticks[c] // base for c in present}
        self._next: dict[PollClass, int] = dict.fromkeys(present, 0)

    def interval_s(self, poll_class: PollClass) -> float:
        """How often points of ``poll_class`` are polled."""
        return self.tick_s * self.periods[poll_class]

    def due(self, tick: int) -> frozenset[PollClass]:
        """The classes to poll at tick index ``tick``; marks them polled.

        Ticks must be asked in increasing order (skipped ones may be left out).
        """
        due = frozenset(c for c, at in self._next.items() if at <= tick)
        for c in due:
            period = self.periods[c]
            self._next[c] = (tick // period + 1) * period
        return due
