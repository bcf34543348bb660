"""Device health: the online/offline state machine, error bookkeeping and reconnect backoff.

Pure: every method takes the current time (epoch milliseconds) as ``now_ms``; nothing here
sleeps, reads a clock or touches a socket.

Invariants of :class:`DeviceHealth`:

* ``status`` starts ``offline`` (nothing has answered yet) with ``since`` = creation time.
* A successful poll makes the device ``online`` and resets ``consecutive_failures``.
* A failed poll increments ``consecutive_failures``; when it reaches
  ``offline_after_failures`` the device becomes ``offline``. With the default of 2 and a
  request timeout below the poll interval, a device that stops answering is ``offline``
  at most 2 poll intervals (+ one timeout) after its last answer: inside 3 intervals.
* ``since`` changes only when ``status`` changes.
* Every error (poll, write, read-back) is counted by kind and becomes ``last_error``;
  ``last_error`` survives recovery, so a reader can see what the last problem was.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import accumulate

from gridpilot.gateway.point_faults import PointFaults

_HINTS: dict[str, str] = {
    "timeout": (
        "no answer within the timeout: check that the device is powered and reachable "
        "(network path, host, port, unit_id; on a serial bus the unit_id, wiring, baud "
        "rate and parity), and keep timeout below poll_interval; "
        "`gridpilot doctor` probes reachability"
    ),
    "refused": (
        "connection refused: the host answers but nothing listens on that port; check the "
        "port, that the device's Modbus TCP server is enabled, or whether the device is off"
    ),
    "disconnected": (
        "the device closed the connection: it may have restarted, or it allows fewer "
        "Modbus TCP clients than are connected (many allow only 1-4)"
    ),
    "protocol": (
        "malformed or unexpected response: check unit_id and that the device speaks Modbus "
        "TCP (not RTU over TCP); on serial lines invalid CRC/framing errors point to the "
        "line settings (baud rate, parity) and to cable shielding and termination"
    ),
    "crc": (
        "invalid CRC / framing errors: serial interference or wrong line settings; check "
        "baud rate, parity and stop bits, cable shielding and bus termination"
    ),
    "busy": (
        "device or resource busy: another process holds the serial port (the error names "
        "it; `fuser -v /dev/ttyXXX` shows it too); stop that process or give this bus "
        "another port"
    ),
    "port": (
        "the serial port cannot be opened: check the path (ls -l /dev/serial/by-id/), that "
        "the adapter is plugged in, and that the gateway's user may open it (group dialout)"
    ),
    "short_reply": (
        "the reply stopped short of a whole frame: on serial lines, interference or a "
        "wrong baud rate/parity; raise the bus's frame_gap if the adapter pauses mid-frame"
    ),
    "exception_1": (
        "Modbus exception 1 (illegal function): the device does not support this table or "
        "function code; check the point's table (holding/input/coil/discrete)"
    ),
    "exception_2": (
        "Modbus exception 2 (illegal data address): check the register map (zero-based "
        "addresses, not 4xxxx notation); a merged read may span registers the device lacks: "
        "lower max_gap (0 disables merging)"
    ),
    "exception_3": (
        "Modbus exception 3 (illegal data value): the device refused the value or the "
        "register count; check the point's type/length and valid_range"
    ),
    "exception_4": (
        "Modbus exception 4 (server device failure): the device reports an internal fault; "
        "check its display or logs"
    ),
    "exception_5": "Modbus exception 5 (acknowledge): the device is processing a long command",
    "exception_6": (
        "Modbus exception 6 (server busy): the device is busy; lower the poll rate "
        "(raise poll_interval)"
    ),
    "exception_10": (
        "Modbus exception 10 (gateway path unavailable): the Modbus gateway cannot route to "
        "this unit_id; check the gateway's configuration"
    ),
    "exception_11": (
        "Modbus exception 11 (gateway target failed to respond): the serial device behind "
        "the gateway is silent; check unit_id, wiring, baud rate and parity"
    ),
    "decode": (
        "a register held a value that cannot be decoded (e.g. NaN): check the point's type, "
        "word_order and byte_order against the device manual"
    ),
    "request": (
        "Modbus cannot carry this request (too many registers, a read-only table): fix the "
        "register map"
    ),
    "encode": "the value does not fit the point's register type; check type, scale and offset",
    "readback": (
        "the device accepted the write but reads back a different value: it may clamp "
        "setpoints (limits, state of charge) or need a mode/enable register first"
    ),
}

_DEFAULT_HINT = "unexpected error; `gridpilot doctor` checks reachability and the register map"


def hint_for(kind: str) -> str:
    """What to do about an error of this ``kind`` (the troubleshooting matrix)."""
    hint = _HINTS.get(kind)
    if hint is not None:
        return hint
    if kind.startswith("exception_"):
        return f"Modbus {kind.replace('_', ' ')}: the device refused the request; see its manual"
    return _DEFAULT_HINT


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The last error seen on a device."""

    kind: str
    """Machine-readable kind: timeout, refused, disconnected, protocol, exception_<code>, ..."""
    message: str
    hint: str
    ts_ms: int


@dataclass(slots=True)
class HealthCounters:
    """Monotonic counters of one device, published in its ``state`` message."""

    polls: int = 0
    polls_failed: int = 0
    ticks_skipped: int = 0
    """Poll ticks skipped because a poll (or a command) overran its interval."""
    values_out_of_range: int = 0
    """Decoded values dropped because they were outside the point's valid_range."""
    values_invalid: int = 0
    """Values that could not be decoded (non-finite floats, wrong word counts)."""
    errors: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    """By outcome: applied, rejected, failed (and duplicate, ignored)."""
    attempt_errors: Counter[str] = field(default_factory=Counter)
    """Failed request attempts by kind, retries included, as the driver counts them: a CRC
    error that a retry cured shows here (and not in ``errors``, which counts what failed
    a poll, a write or a read-back)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "polls": self.polls,
            "polls_failed": self.polls_failed,
            "ticks_skipped": self.ticks_skipped,
            "values_out_of_range": self.values_out_of_range,
            "values_invalid": self.values_invalid,
            "errors": dict(sorted(self.errors.items())),
            "commands": dict(sorted(self.commands.items())),
            "attempt_errors": dict(sorted(self.attempt_errors.items())),
        }


JITTER_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds of the poll-jitter histogram's buckets (seconds; +Inf follows): fine around
the 100 ms that a 1 s poll may be late by, coarse beyond."""


class JitterHistogram:
    """How late polls started: actual start minus the scheduled tick, in fixed buckets.

    Bounded (one count per bucket, whatever the number of polls) and cumulative since the
    gateway started, like a Prometheus histogram: a reader who wants a recent window takes
    the difference of two snapshots. Quantiles are interpolated linearly inside the bucket
    that holds them (as PromQL's ``histogram_quantile`` does), so they are as exact as the
    buckets; beyond the last bound the largest jitter seen is given.
    """

    __slots__ = ("count", "counts", "max_s", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(JITTER_BUCKETS_S) + 1)
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def observe(self, jitter_s: float) -> None:
        late = max(jitter_s, 0.0)  # a wake-up a hair early is on time
        self.counts[bisect_left(JITTER_BUCKETS_S, late)] += 1
        self.count += 1
        self.sum_s += late
        self.max_s = max(self.max_s, late)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in seconds; None before the first poll."""
        return bucket_quantile(q, self.counts, self.max_s)

    def as_dict(self) -> dict[str, object]:
        """For the state message: cumulative bucket counts by upper bound, and the figures."""
        cumulative = list(accumulate(self.counts))
        buckets = {f"{le:g}": n for le, n in zip(JITTER_BUCKETS_S, cumulative, strict=False)}
        buckets["+Inf"] = cumulative[-1]
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {
            "count": self.count,
            "sum_s": round(self.sum_s, 6),
            "max_s": round(self.max_s, 6),
            "p50_s": None if p50 is None else round(p50, 6),
            "p99_s": None if p99 is None else round(p99, 6),
            "buckets": buckets,
        }


def bucket_quantile(q: float, counts: Sequence[int], max_s: float) -> float | None:
    """The ``q`` quantile of per-bucket (not cumulative) ``counts`` over
    ``JITTER_BUCKETS_S`` (+Inf last). ``max_s``, the largest value counted, caps the
    interpolation and answers for the +Inf bucket."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is outside 0..1")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i == len(JITTER_BUCKETS_S):
                return max_s
            low = JITTER_BUCKETS_S[i - 1] if i else 0.0
            high = JITTER_BUCKETS_S[i]
            return min(low + (high - low) * (rank - below) / n, max_s)
        below += n
    return max_s


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait before the next attempt to reach a dead device.

    Exponential from one poll interval (1, 2, 4, ... intervals), but capped by
    ``max(grace_intervals * interval, outage_fraction * outage)`` and by ``max_backoff_s``.

    Why this cap: a probe of a dead device costs one connection attempt, while each second
    between probes is a second of extra outage after the device is back. Early in an
    outage (most outages are restarts, cable swaps, a few seconds to minutes) recovery must
    be noticed within a few poll intervals, so the cap stays at ``grace_intervals`` polls.
    In a long outage the probes thin out so that the detection delay stays a bounded
    fraction (10 %) of the outage: a device dead for 10 minutes is probed once a minute
    (with the default ``max_backoff`` of 60 s). The wait is never below one poll interval.
    """

    interval_s: float
    max_backoff_s: float
    grace_intervals: float = 4.0
    outage_fraction: float = 0.1

    def delay_s(self, attempt: int, outage_s: float) -> float:
        """Wait before reconnect ``attempt`` (1 = first one after the device went offline)."""
        exponential = self.interval_s * 2.0 ** min(max(attempt - 1, 0), 30)
        cap = max(self.grace_intervals * self.interval_s, self.outage_fraction * max(outage_s, 0))
        return max(self.interval_s, min(exponential, cap, self.max_backoff_s))


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """What the ``state`` topic publishes about a device."""

    status: DeviceStatus
    since_ms: int
    last_error: ErrorInfo | None
    consecutive_failures: int
    counters: dict[str, object]
    poll_jitter: dict[str, object] | None = None
    """``JitterHistogram.as_dict`` of the device's polls."""
    point_faults: dict[str, dict[str, object]] = field(default_factory=dict)
    """Active faults of single points (``point_faults.PointFaults.snapshot``)."""


class DeviceHealth:
    """The health of one polled device. See the module docstring for the invariants."""

    def __init__(self, offline_after_failures: int, backoff: BackoffPolicy, now_ms: int) -> None:
        if offline_after_failures < 1:
            raise ValueError("offline_after_failures must be at least 1")
        self.offline_after_failures = offline_after_failures
        self.backoff = backoff
        self.status = DeviceStatus.OFFLINE
        self.since_ms = now_ms
        self.last_error: ErrorInfo | None = None
        self.consecutive_failures = 0
        self.counters = HealthCounters()
        self.point_faults = PointFaults()
        """Readings of single points that are not values (analog loop faults)."""
        self.jitter = JitterHistogram()

    def poll_succeeded(self, now_ms: int) -> bool:
        """Record an answered poll; True when the published state changed (went online)."""
        self.counters.polls += 1
        self.consecutive_failures = 0
        return self._set_status(DeviceStatus.ONLINE, now_ms)

    def poll_failed(self, kind: str, message: str, now_ms: int) -> bool:
        """Record a poll that got no usable answer; True when the published state changed.

        The state changes when the device goes offline, or when the error differs from the
        last one (a new kind or message); a repeat of the same error only counts.
        """
        self.counters.polls += 1
        self.counters.polls_failed += 1
        self.consecutive_failures += 1
        changed = self.error(kind, message, now_ms)
        if self.consecutive_failures >= self.offline_after_failures:
            changed = self._set_status(DeviceStatus.OFFLINE, now_ms) or changed
        return changed

    def error(self, kind: str, message: str, now_ms: int) -> bool:
        """Record an error that does not by itself decide the status (a failed write, one
        block of a poll refused); True when it differs from the last error."""
        self.counters.errors[kind] += 1
        previous = self.last_error
        self.last_error = ErrorInfo(kind, message, hint_for(kind), now_ms)
        return previous is None or (previous.kind, previous.message) != (kind, message)

    def command_outcome(self, status: str) -> None:
        self.counters.commands[status] += 1

    def values_dropped(self, out_of_range: int = 0, invalid: int = 0) -> None:
        self.counters.values_out_of_range += out_of_range
        self.counters.values_invalid += invalid

    def attempts_counted(self, by_kind: Mapping[str, int]) -> list[str]:
        """Take the driver's running count of failed attempts; the kinds that grew."""
        grown = [kind for kind, n in by_kind.items() if n > self.counters.attempt_errors[kind]]
        for kind in grown:
            self.counters.attempt_errors[kind] = by_kind[kind]
        return grown

    def ticks_skipped(self, count: int) -> None:
        self.counters.ticks_skipped += count

    @property
    def is_dead(self) -> bool:
        """True while polls fail often enough to wait with backoff between attempts."""
        return self.consecutive_failures >= self.offline_after_failures

    def retry_delay_s(self, now_ms: int) -> float | None:
        """Wait before the next attempt on a dead device; None: poll on the normal schedule."""
        if not self.is_dead:
            return None
        attempt = self.consecutive_failures - self.offline_after_failures + 1
        outage_s = (now_ms - self.since_ms) / 1000 if self.status is DeviceStatus.OFFLINE else 0
        return self.backoff.delay_s(attempt, outage_s)

    def mark_offline(self, now_ms: int) -> bool:
        """Force ``offline`` (the gateway is stopping); True when the status changed."""
        return self._set_status(DeviceStatus.OFFLINE, now_ms)

    def snapshot(self) -> HealthSnapshot:
        return HealthSnapshot(
            status=self.status,
            since_ms=self.since_ms,
            last_error=self.last_error,
            consecutive_failures=self.consecutive_failures,
            counters=self.counters.as_dict(),
            point_faults=self.point_faults.snapshot(),
            poll_jitter=self.jitter.as_dict(),
        )

    def _set_status(self, status: DeviceStatus, now_ms: int) -> bool:
        if status is self.status:
            return False
        self.status = status
        self.since_ms = now_ms
        return True
