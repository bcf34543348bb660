"""From configured points to register specs, and from register words to telemetry values.

Pure: the poll loop reads blocks and hands the words here; what comes back is what gets
published and what gets counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gridpilot.config.models import DeviceConfig, PointConfig, PollClass
from gridpilot.fieldbus.analog import LoopFault, describe_fault, scale_signal
from gridpilot.fieldbus.codec import RegisterSpec, decode
from gridpilot.fieldbus.errors import DecodeError
from gridpilot.fieldbus.planner import ReadBlock, plan_reads
from gridpilot.model import DataType


def register_spec(point: PointConfig) -> RegisterSpec:
    """The fieldbus description of a Modbus point. Raises ValueError without an address."""
    if point.address is None:
        raise ValueError(f"point {point.point!r} has no register address")
    return RegisterSpec(
        point=point.point,
        table=point.table,
        address=point.address,
        dtype=point.type,
        length=point.length,
        bit=point.bit,
        word_order=point.word_order,
        byte_order=point.byte_order,
        scale=point.scale,
        offset=point.offset,
    )


def polled_specs(device: DeviceConfig) -> tuple[RegisterSpec, ...]:
    """The specs the gateway polls: every numeric point with an address.

    Text points (``string``) are left out: telemetry values are numbers.
    """
    return tuple(
        register_spec(p)
        for p in device.points
        if p.address is not None and p.type is not DataType.STRING
    )


class ReadPlan:
    """The merged reads of one device for each set of poll classes that fall due together.

    Points due at the same tick are planned as one set, so a fast point next to normal ones
    shares their block at the ticks where both are due and is read alone in between. Each
    set is planned once (there are at most seven) and kept.
    """

    def __init__(self, device: DeviceConfig) -> None:
        self.max_gap = device.max_gap
        self.points: dict[str, PointConfig] = {p.point: p for p in device.points}
        self.specs = polled_specs(device)
        classes = {p.point: p.poll_class for p in device.points}
        self.class_of: dict[RegisterSpec, PollClass] = {s: classes[s.point] for s in self.specs}
        self.classes = frozenset(self.class_of.values())
        """The classes that have polled points."""
        self._plans: dict[frozenset[PollClass], list[ReadBlock]] = {}
        self._slices: dict[int, list[tuple[RegisterSpec, int, int]]] = {}
        self.all_blocks = self.blocks(self.classes)
        """Every polled point's reads: the most one poll makes."""

    def blocks(self, due: frozenset[PollClass]) -> list[ReadBlock]:
        plan = self._plans.get(due)
        if plan is None:
            plan = plan_reads(
                (s for s in self.specs if self.class_of[s] in due), max_gap=self.max_gap
            )
            self._plans[due] = plan
            for block in plan:  # kept alive by the plan: its id stays its own
                self._slices[id(block)] = [
                    (s, s.address - block.address, s.end - block.address) for s in block.specs
                ]
        return plan

    def split(
        self, block: ReadBlock, words: Sequence[int]
    ) -> list[tuple[RegisterSpec, Sequence[int]]]:
        """Each spec's words out of the words read for ``block`` (one of this plan's).

        ``planner.extract`` without its per-spec checks: the planner put every spec inside
        its block, so only the reply's length needs checking. Raises ``ValueError`` when
        it is wrong."""
        if len(words) != block.count:
            raise ValueError(
                f"a read of {block.table} {block.address}+{block.count} returned {len(words)} words"
            )
        return [(spec, words[a:b]) for spec, a, b in self._slices[id(block)]]


@dataclass(frozen=True, slots=True)
class PointFault:
    """A point whose reading is not a value: the signal shows a fault (an analog loop's
    wire break, out of range or sensor fault). Published in the device's state, never as a
    number."""

    point: str
    kind: LoopFault
    message: str
    signal: float
    """The signal as read (mA or V)."""


@dataclass(frozen=True, slots=True)
class Readings:
    """The outcome of decoding one poll."""

    values: dict[str, float]
    """Valid values by point, in the point's unit."""
    out_of_range: tuple[str, ...] = ()
    """Points whose value was outside their valid_range (dropped)."""
    invalid: tuple[tuple[str, str], ...] = ()
    """(point, reason) of values that could not be decoded (dropped)."""
    faults: tuple[PointFault, ...] = ()
    """Points whose signal shows a fault (no value)."""


def evaluate(
    device: DeviceConfig,
    words_by_spec: Iterable[tuple[RegisterSpec, Sequence[int]]],
    points: Mapping[str, PointConfig] | None = None,
) -> Readings:
    """Decode the words of each spec, scale analog signals (a faulted signal gives a
    ``PointFault``, not a value), and keep the values inside their valid range.

    ``points``: the device's points by name (``ReadPlan.points``), if the caller has them.
    """
    by_name = points if points is not None else {p.point: p for p in device.points}
    values: dict[str, float] = {}
    out_of_range: list[str] = []
    invalid: list[tuple[str, str]] = []
    faults: list[PointFault] = []
    for spec, words in words_by_spec:
        try:
            value = decode(spec, words)
        except DecodeError as exc:
            invalid.append((spec.point, str(exc)))
            continue
        if isinstance(value, str):
            continue  # text points are not polled; a stray one is not telemetry
        if not math.isfinite(value):
            invalid.append((spec.point, f"point {spec.point!r}: value {value} is not finite"))
            continue
        point = by_name.get(spec.point)
        if point is not None and point.analog is not None:
            analog = point.analog.range()
            scaled = scale_signal(analog, value)
            if isinstance(scaled, LoopFault):
                message = describe_fault(spec.point, analog, value, scaled)
                faults.append(PointFault(spec.point, scaled, message, value))
                continue
            value = scaled
        if point is not None and point.valid_range is not None:
            low, high = point.valid_range
            if not low <= value <= high:
                out_of_range.append(spec.point)
                continue
        values[spec.point] = value
    return Readings(values, tuple(out_of_range), tuple(invalid), tuple(faults))
