"""The register image of one simulated device: engineering values <-> 16-bit words.

Pure: no sockets, no clock. The server shell (``server.py``) copies words out of the image
for every request and hands client writes to :meth:`RegisterImage.write`, which checks them
the way a careful device does before anything changes:

* every register written must belong to a writable point, and a write must cover whole
  points (no half of a 32-bit setpoint) -> Modbus exception 2, illegal data address;
* the decoded value must lie in the point's valid range -> exception 3, illegal data value.

A rejected write changes nothing (all points of one request are checked first).

Each table is one contiguous block from its lowest to its highest point; registers in the gaps
between points read as 0, so a gateway may bridge small gaps in one request as with most real
devices. Registers outside the block do not exist (exception 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gridpilot.fieldbus.codec import INTEGER_RANGE, RegisterSpec, encode, encode_raw
from gridpilot.fieldbus.codec import decode as decode_words
from gridpilot.fieldbus.errors import DecodeError, EncodeError
from gridpilot.model import Table
from gridpilot.sim.devices import DeviceMap, SimPoint

ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3


class WriteRejectedError(Exception):
    """A client write the device refuses; ``exception_code`` is the Modbus exception to send."""

    def __init__(self, exception_code: int, message: str) -> None:
        super().__init__(message)
        self.exception_code = exception_code


@dataclass(frozen=True, slots=True)
class AppliedWrite:
    """A point a client write changed, with its decoded engineering value."""

    point: SimPoint
    value: float


def saturating_encode(
    spec: RegisterSpec, value: float, current: Sequence[int] | None = None
) -> list[int]:
    """``codec.encode``, but an integer register that cannot hold ``value`` holds its limit.

    A real device's register saturates rather than wrapping; the simulator should never get
    there, but a ticker must not die on a rare extreme either.
    """
    try:
        return encode(spec, value, current=current)
    except EncodeError:
        limits = INTEGER_RANGE.get(spec.dtype)
        if limits is None or spec.is_flag or not math.isfinite(value):
            raise
        raw = round((value - spec.offset) / spec.scale)
        return encode_raw(spec, min(max(raw, limits[0]), limits[1]))


class RegisterImage:
    """The words a device serves, per table, rebuilt from engineering values on ``update``."""

    def __init__(self, device: DeviceMap) -> None:
        self.device = device
        self._blocks: dict[Table, tuple[int, int]] = {}
        for p in device.points:
            start, end = p.spec.address, p.spec.end
            if p.spec.table in self._blocks:
                lo, hi = self._blocks[p.spec.table]
                start, end = min(lo, start), max(hi, end)
            self._blocks[p.spec.table] = (start, end)
        self._words: dict[Table, list[int]] = {
            table: [0] * (end - start) for table, (start, end) in self._blocks.items()
        }

    @property
    def blocks(self) -> Mapping[Table, tuple[int, int]]:
        """Per table present on the device: (first address, first address after the block)."""
        return self._blocks

    def words(self, table: Table) -> list[int]:
        """All words of a table's block (bits as 0/1), from its first address; a copy."""
        return list(self._words[table])

    def read(self, table: Table, address: int, count: int) -> list[int]:
        """``count`` words from ``address``; ``KeyError``/``IndexError`` outside the block."""
        start, end = self._blocks[table]
        if address < start or address + count > end or count < 1:
            raise IndexError(
                f"{self.device.id}: {table} {address}..{address + count - 1} is outside"
            )
        return self._words[table][address - start : address - start + count]

    def point_words(self, point: SimPoint) -> list[int]:
        return self.read(point.spec.table, point.spec.address, point.spec.register_count)

    def update(self, values: Mapping[str, float]) -> None:
        """Encode each point's value (by point name) into its registers.

        Points missing from ``values`` keep their words. One-bit bitfields are merged into
        their status word, which starts from 0 on every update.
        """
        cleared: set[tuple[Table, int]] = set()
        for p in self.device.points:
            if p.name not in values:
                continue
            spec = p.spec
            current: list[int] | None = None
            if spec.bit is not None:
                key = (spec.table, spec.address)
                if key not in cleared:
                    self._store(spec.table, spec.address, [0])
                    cleared.add(key)
                current = self.point_words(p)
            self._store(spec.table, spec.address, saturating_encode(spec, values[p.name], current))

    def write(self, table: Table, address: int, words: Sequence[int]) -> list[AppliedWrite]:
        """Apply a client write of ``words`` at ``address`` after checking it (see module doc).

        Returns the points changed with their new values; raises ``WriteRejectedError``.
        """
        if not words:
            raise WriteRejectedError(ILLEGAL_DATA_VALUE, "empty write")
        end = address + len(words)
        touched = [
            p
            for p in self.device.points
            if p.spec.table is table and p.spec.address < end and address < p.spec.end
        ]
        covered: set[int] = set()
        for p in touched:
            if not p.writable:
                raise WriteRejectedError(
                    ILLEGAL_DATA_ADDRESS, f"{self.device.id}.{p.name} is read-only"
                )
            if p.spec.address < address or p.spec.end > end:
                raise WriteRejectedError(
                    ILLEGAL_DATA_ADDRESS,
                    f"{self.device.id}.{p.name} spans {table} {p.spec.address}..{p.spec.end - 1}; "
                    "write all of its registers in one request",
                )
            covered.update(range(p.spec.address, p.spec.end))
        if covered != set(range(address, end)):
            missing = sorted(set(range(address, end)) - covered)
            raise WriteRejectedError(
                ILLEGAL_DATA_ADDRESS,
                f"{self.device.id}: {table} {missing} hold no writable point",
            )
        applied: list[AppliedWrite] = []
        for p in touched:
            offset = p.spec.address - address
            chunk = list(words[offset : offset + p.spec.register_count])
            try:
                value = decode_words(p.spec, chunk)
            except DecodeError as exc:
                raise WriteRejectedError(ILLEGAL_DATA_VALUE, str(exc)) from exc
            if not isinstance(value, float):
                raise WriteRejectedError(ILLEGAL_DATA_VALUE, f"{p.name}: text is not writable")
            lo, hi = p.valid_range
            if not lo <= value <= hi:
                raise WriteRejectedError(
                    ILLEGAL_DATA_VALUE,
                    f"{self.device.id}.{p.name} = {value:g} is outside [{lo:g}, {hi:g}]",
                )
            applied.append(AppliedWrite(p, value))
        for item in applied:
            offset = item.point.spec.address - address
            chunk = list(words[offset : offset + item.point.spec.register_count])
            self._store(table, item.point.spec.address, chunk)
        return applied

    def _store(self, table: Table, address: int, words: Sequence[int]) -> None:
        start, _ = self._blocks[table]
        self._words[table][address - start : address - start + len(words)] = words
