"""Fixed-rate poll schedule without drift.

Deadlines are ``start + n * interval`` for whole ``n``, computed from the tick index (not
by adding floats, which would accumulate rounding). A poll that overruns does not shift
the grid and does not cause a burst of catch-up polls: the missed ticks are skipped and
counted. Pure: callers pass the current (monotonic) time in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
