"""Stream integrity: gaps in a device's telemetry.

Two views of one question, "what did we not get?":

- **Live, in ingest** (``StreamTracker``): each telemetry message's ``seq`` against the
  device's previous one (a hole in the counter is a lost message, whatever the clocks say)
  and its timestamp against the previous one (no message for more than
  ``GAP_MISSED_POLLS + 0.5`` expected intervals). Counted per device for ``/metrics``.
- **From storage** (``device_gaps``): the stored samples' timestamps against the expected
  interval, for any window -- what ``gridpilot gaps``, the API and ``gridpilot doctor`` show.
  Storage keeps no ``seq``, so this view sees time holes only; a lost message shows as one
  when it is more than the tolerance.

The expected interval of a device is how often the gateway publishes it: its fastest poll
class among its points (one telemetry message per tick), ``poll_interval`` for SunSpec
devices, and for MQTT-native devices the ``poll_interval`` the site file gives them (their
publishing interval) or, without one, their usual spacing in the data.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from gridpilot.config.models import (
    DeviceConfig,
    DeviceProtocol,
    GridPilotConfig,
    PollClass,
    PollClassesConfig,
)
from gridpilot.model import SeriesKey
from gridpilot.storage.base import Storage

__all__ = [
    "GAP_MISSED_POLLS",
    "SEQ_MODULUS",
    "DeviceGaps",
    "Gap",
    "GapKind",
    "GapSummary",
    "StreamCounts",
    "StreamTracker",
    "WindowTooLargeError",
    "class_interval_ms",
    "device_gaps",
    "find_gaps",
    "gap_series",
    "missing_samples",
]

GAP_MISSED_POLLS: Final = 2
"""A gap is a stretch in which at least this many polls in a row stored nothing."""

SEQ_MODULUS: Final = 2**32
"""Where a publisher's ``seq`` wraps to 0 (an unsigned 32-bit counter, the widest a device's
firmware commonly keeps). The gateway's own counter never gets there."""
SEQ_WRAP_WINDOW: Final = 2**16
"""A step from within this far below ``SEQ_MODULUS`` to within this far above 0 is a wrap
(the messages in between are missing); any other step back is a restart or a redelivery."""
SEQ_RESTART_MAX: Final = 1
"""A publisher's first ``seq`` after a (re)start: the gateway starts at 1, others at 0."""
SEQ_JUMP_MAX: Final = 1_000_000
"""A step forward larger than this is a publisher that reset its counter to another base,
not a million lost messages (a million messages at 1 s are 11 days of silence)."""


# ------------------------------------------------------------------ intervals


def class_interval_ms(device: DeviceConfig, classes: PollClassesConfig, poll: PollClass) -> float:
    """How often a point of class ``poll`` of ``device`` is read, in milliseconds."""
    base = device.poll_interval.total_seconds() * 1000
    own = device.poll_classes or classes
    if poll is PollClass.FAST:
        return base / own.fast_divisor
    if poll is PollClass.SLOW:
        return base * own.slow_multiple
    return base


def message_interval_ms(config: GridPilotConfig, device: DeviceConfig) -> float | None:
    """How often ``device``'s telemetry messages are due, or None when the site file does not
    say (an MQTT-native device without ``poll_interval``)."""
    if device.protocol is DeviceProtocol.MQTT:
        if "poll_interval" not in device.model_fields_set:
            return None
        return device.poll_interval.total_seconds() * 1000
    if device.points:
        classes = config.gateway.poll_classes
        return min(class_interval_ms(device, classes, p.poll_class) for p in device.points)
    return device.poll_interval.total_seconds() * 1000  # SunSpec: everything at poll_interval


def gap_series(
    config: GridPilotConfig, device: DeviceConfig, stored: Iterable[str]
) -> tuple[str, float | None] | None:
    """The stored point of ``device`` whose timestamps show the device's gaps, and its
    expected interval (None: unknown, judge by the data's own spacing), or None when nothing
    of the device is stored. The points of a message share its timestamp, so one series
    polled at the fastest class shows every message."""
    names = sorted(stored)
    if not names:
        return None
    if device.protocol is DeviceProtocol.MQTT or not device.points:
        return names[0], message_interval_ms(config, device)
    by_name = {p.point: (i, p) for i, p in enumerate(device.points)}
    classes = config.gateway.poll_classes
    candidates = [
        (class_interval_ms(device, classes, by_name[name][1].poll_class), by_name[name][0], name)
        for name in names
        if name in by_name
    ]
    if not candidates:
        return names[0], device.poll_interval.total_seconds() * 1000
    interval, _, point = min(candidates)
    return point, interval


# ------------------------------------------------------------------ gaps in timestamps


@dataclass(frozen=True, slots=True)
class GapSummary:
    """Gaps of one series in a window."""

    window_start_ms: int
    window_end_ms: int
    interval_ms: float
    samples: int
    expected: int
    gaps: tuple[tuple[int, int], ...]
    """(start, end) in epoch ms of each stretch without samples, oldest first."""
    data_before_window: bool

    @property
    def missing_ms(self) -> int:
        return sum(end - start for start, end in self.gaps)

    @property
    def ongoing(self) -> bool:
        """The last gap reaches the end of the window: no data now."""
        return bool(self.gaps) and self.gaps[-1][1] >= self.window_end_ms


def find_gaps(
    timestamps_ms: Sequence[int],
    *,
    interval_ms: float,
    window_start_ms: int,
    now_ms: int,
    latency_ms: int,
    data_before_window: bool,
) -> GapSummary:
    """Gaps in sorted ``timestamps_ms`` of a series polled every ``interval_ms``.

    The window is ``[window_start_ms, now_ms]`` when the series has data from before it,
    else it starts at the first sample (a new device or site has no gap before its first
    sample). A gap is more than ``GAP_MISSED_POLLS`` intervals (plus half an interval of
    jitter) between neighbouring samples, or from the last sample to ``now_ms`` beyond
    that plus ``latency_ms`` (the time a sample takes to reach storage).
    """
    threshold = interval_ms * (GAP_MISSED_POLLS + 0.5)
    stamps = [t for t in timestamps_ms if window_start_ms <= t <= now_ms]
    start = window_start_ms if data_before_window or not stamps else stamps[0]
    gaps: list[tuple[int, int]] = []
    previous = start
    for ts in stamps:
        if ts - previous > threshold:
            gaps.append((previous, ts))
        previous = ts
    if now_ms - previous > threshold + latency_ms:
        gaps.append((previous, now_ms))
    expected = max(0, math.floor((now_ms - start) / interval_ms)) if stamps or gaps else 0
    return GapSummary(
        start, now_ms, interval_ms, len(stamps), expected, tuple(gaps), data_before_window
    )


def missing_samples(start_ms: int, end_ms: int, interval_ms: float, *, open_end: bool) -> int:
    """Samples due in a gap: strictly between two samples ``interval_ms`` apart (a 5 s gap at
    1 s misses 4), or after ``start_ms`` up to and including ``end_ms`` when the gap is still
    open at the window's end (no sample there)."""
    span = (end_ms - start_ms) / interval_ms
    if open_end:
        return max(0, math.floor(span))
    return max(0, round(span) - 1)


# ------------------------------------------------------------------ gaps of a device, from storage


class WindowTooLargeError(ValueError):
    """The window holds more samples than may be read at once."""

    def __init__(self, expected: int, max_samples: int, longest_ms: int) -> None:
        super().__init__(
            f"the window holds ~{expected:,} samples of this device, more than the "
            f"{max_samples:,} read at once; ask for at most {longest_ms / 3_600_000:.4g} h "
            "at a time (move since/until)"
        )
        self.expected = expected
        self.max_samples = max_samples
        self.longest_ms = longest_ms


@dataclass(frozen=True, slots=True)
class Gap:
    start_ms: int
    """The last sample before the gap (or the window's start)."""
    end_ms: int
    """The first sample after it (or the window's end while it is still open)."""
    missing: int
    """Samples that were due in between."""
    ongoing: bool


@dataclass(frozen=True, slots=True)
class DeviceGaps:
    """The gaps of one device in a window, from stored timestamps."""

    device: str
    point: str | None
    """The series judged (None: nothing of the device is stored)."""
    interval_ms: float | None
    """Expected interval (None: nothing to judge by)."""
    interval_source: str
    """``config`` or ``data`` (the median spacing of the stored samples)."""
    summary: GapSummary | None
    gaps: tuple[Gap, ...]
    """Oldest first, at most the ``limit`` asked for."""
    total_gaps: int
    truncated: bool

    @property
    def missing(self) -> int:
        return sum(g.missing for g in self.gaps)


async def device_gaps(
    storage: Storage,
    config: GridPilotConfig,
    device: DeviceConfig,
    *,
    since_ms: int,
    until_ms: int,
    latency_ms: int,
    limit: int = 1000,
    max_samples: int = 1_000_000,
) -> DeviceGaps:
    """Gaps of ``device`` in ``[since_ms, until_ms]`` from its stored samples. Reads at most
    ``max_samples`` timestamps (``WindowTooLargeError`` before reading when the window holds more
    at the expected interval); returns the first ``limit`` gaps and how many there are."""
    site = config.site.id
    stored = [k.point for k in await storage.series(site) if k.device == device.id]
    chosen = gap_series(config, device, stored)
    if chosen is None:
        return DeviceGaps(device.id, None, message_interval_ms(config, device), "config", None,
                          (), 0, False)  # fmt: skip
    point, interval = chosen
    if interval is not None and (until_ms - since_ms) / interval > max_samples:
        raise WindowTooLargeError(
            math.ceil((until_ms - since_ms) / interval), max_samples, int(max_samples * interval)
        )
    # Look back a few intervals: a sample just before the window says the device was
    # already publishing, so the window's start is not "the device's first sample".
    lookback = int(3 * (interval or 60_000))
    columns = await storage.history_columns(
        SeriesKey(site, device.id, point), since_ms - lookback, until_ms + 1
    )
    stamps = list(columns.ts_ms)
    source = "config"
    if interval is None:
        spacings = [b - a for a, b in itertools.pairwise(stamps) if b > a]
        if not spacings:
            return DeviceGaps(device.id, point, None, "data", None, (), 0, False)
        interval, source = float(statistics.median(spacings)), "data"
    summary = find_gaps(
        stamps,
        interval_ms=interval,
        window_start_ms=since_ms,
        now_ms=until_ms,
        latency_ms=latency_ms,
        data_before_window=any(t < since_ms for t in stamps),
    )
    last = len(summary.gaps) - 1
    gaps = tuple(
        Gap(a, b, missing_samples(a, b, interval, open_end=open_), open_)
        for i, (a, b) in enumerate(summary.gaps[:limit])
        for open_ in (i == last and summary.ongoing,)
    )
    return DeviceGaps(
        device.id, point, interval, source, summary, gaps, len(summary.gaps),
        len(summary.gaps) > limit,
    )  # fmt: skip


# ------------------------------------------------------------------ live, from seq and ts


class GapKind(StrEnum):
    SEQ = "seq"
    """``seq`` skipped values: messages the publisher sent that never arrived."""
    INTERVAL = "interval"
    """No message for more than ``GAP_MISSED_POLLS + 0.5`` expected intervals."""


@dataclass(slots=True)
class StreamCounts:
    """What one device's stream lost since ingest started."""

    gaps: dict[GapKind, int] = field(default_factory=lambda: dict.fromkeys(GapKind, 0))
    missing: dict[GapKind, int] = field(default_factory=lambda: dict.fromkeys(GapKind, 0))
    """Messages missing in those gaps (by ``seq``; by time: intervals without a message)."""
    restarts: int = 0
    """Publisher restarts seen (``seq`` back to its start) and counter resets (a jump)."""
    out_of_order: int = 0
    """Messages older than one already seen (redeliveries, replays): not gaps."""


@dataclass(slots=True)
class _Last:
    seq: int | None = None
    ts_ms: int | None = None


class StreamTracker:
    """Per-device ``seq`` and interval gap detection over the telemetry ingest receives.

    Memory is bounded by the site's device registry: only configured devices are tracked
    (ingest refuses the others), two integers and a few counters each.
    """

    def __init__(self, config: GridPilotConfig) -> None:
        self._intervals = {d.id: message_interval_ms(config, d) for d in config.devices}
        self._last: dict[str, _Last] = {}
        self.counts: dict[str, StreamCounts] = {}

    def observe(self, device: str, seq: int | None, ts_ms: int | None) -> list[tuple[GapKind, int]]:
        """Note a message of ``device``; returns the gaps it closes, as (kind, missing)."""
        if device not in self._intervals:
            return []
        last = self._last.get(device)
        counts = self.counts.get(device)
        if last is None or counts is None:
            self._last[device] = _Last(seq, ts_ms)
            self.counts[device] = StreamCounts()
            return []
        found: list[tuple[GapKind, int]] = []
        older = False
        if seq is not None:
            if last.seq is not None:
                missing, older = self._seq_step(counts, last.seq, seq)
                if missing:
                    found.append((GapKind.SEQ, missing))
            if not older:
                last.seq = seq
        interval = self._intervals[device]
        if ts_ms is not None:
            if last.ts_ms is not None and ts_ms > last.ts_ms:
                if interval is not None and ts_ms - last.ts_ms > interval * (
                    GAP_MISSED_POLLS + 0.5
                ):
                    found.append(
                        (
                            GapKind.INTERVAL,
                            missing_samples(last.ts_ms, ts_ms, interval, open_end=False),
                        )
                    )
            elif last.ts_ms is not None and ts_ms < last.ts_ms:
                older = True
            if last.ts_ms is None or ts_ms > last.ts_ms:
                last.ts_ms = ts_ms
        if older:
            counts.out_of_order += 1
        for kind, missing in found:
            counts.gaps[kind] += 1
            counts.missing[kind] += missing
        return found

    @staticmethod
    def _seq_step(counts: StreamCounts, previous: int, seq: int) -> tuple[int, bool]:
        """(messages missing, whether ``seq`` is older than ``previous``)."""
        step = seq - previous
        if step == 1:
            return 0, False
        if 1 < step <= SEQ_JUMP_MAX:
            return step - 1, False
        if step > SEQ_JUMP_MAX:
            counts.restarts += 1
            return 0, False
        if previous >= SEQ_MODULUS - SEQ_WRAP_WINDOW and seq < SEQ_WRAP_WINDOW:
            return SEQ_MODULUS - previous - 1 + seq, False  # wrapped: 2^32-1 -> 0 loses none
        if seq <= SEQ_RESTART_MAX and previous > SEQ_RESTART_MAX:
            counts.restarts += 1  # a new publisher session: not 2^32 lost messages
            return 0, False
        return 0, True  # a redelivery or a replay: already counted when it first came
