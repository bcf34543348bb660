"""Merge the points of a device into as few Modbus reads as the protocol allows.

A read covers one table and a contiguous address range: at most 125 registers (FC3/FC4)
or 2000 bits (FC1/FC2). Points of the same table are sorted by address and swept once; a
point joins the open block when the unused addresses between them are at most ``max_gap``
and the block stays within the limit, otherwise it opens the next block. This greedy sweep
gives the fewest reads: each block takes the longest run of consecutive points that fits,
and a shorter run would always fit as well, so no other split can get further with as many
blocks.

Bridging a gap reads registers nobody asked for. Some devices answer such a read with
exception 2 (illegal data address); for them configure ``max_gap: 0``.

The plan is deterministic: blocks come in ``Table`` order, then by address; a block's
specs are sorted by (address, register count, point).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.model.registers import Table

__all__ = ["MAX_READ_BITS", "MAX_READ_REGISTERS", "ReadBlock", "extract", "plan_reads"]

MAX_READ_REGISTERS = 125
"""Most registers one FC3/FC4 request may read."""
MAX_READ_BITS = 2000
"""Most coils or discrete inputs one FC1/FC2 request may read."""

_TABLE_ORDER = {table: rank for rank, table in enumerate(Table)}


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``address``."""

    table: Table
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]

    @property
    def end(self) -> int:
        """First address after the block."""
        return self.address + self.count


def plan_reads(
    specs: Iterable[RegisterSpec],
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
    max_gap: int = 8,
) -> list[ReadBlock]:
    """The fewest reads that cover every spec, each within the per-request limits.

    ``max_gap`` is the number of unused addresses a block may span between two points.
    Raises ``ValueError`` for limits outside the protocol's or a spec longer than one read.
    """
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers {max_registers} is outside 1..{MAX_READ_REGISTERS}")
    if not 1 <= max_bits <= MAX_READ_BITS:
        raise ValueError(f"max_bits {max_bits} is outside 1..{MAX_READ_BITS}")
    if max_gap < 0:
        raise ValueError(f"max_gap {max_gap} is negative")

    ordered = sorted(
        specs, key=lambda s: (_TABLE_ORDER[s.table], s.address, s.register_count, s.point)
    )
    blocks: list[ReadBlock] = []
    members: list[RegisterSpec] = []
    start = end = 0
    for spec in ordered:
        limit = max_bits if spec.table.is_bit else max_registers
        if spec.register_count > limit:
            raise ValueError(
                f"point {spec.point!r} spans {spec.register_count} registers; "
                f"one read carries at most {limit}"
            )
        fits = (
            bool(members)
            and spec.table is members[0].table
            and spec.address - end <= max_gap
            and max(end, spec.end) - start <= limit
        )
        if not fits:
            if members:
                blocks.append(_block(members, start, end))
            members, start, end = [], spec.address, spec.end
        members.append(spec)
        end = max(end, spec.end)
    if members:
        blocks.append(_block(members, start, end))
    return blocks


def extract(block: ReadBlock, words: Sequence[int], spec: RegisterSpec) -> list[int]:
    """The words of ``spec`` out of the words a read of ``block`` returned."""
    if len(words) != block.count:
        raise ValueError(
            f"a read of {block.table} {block.address}+{block.count} returned {len(words)} words"
        )
    if spec.table is not block.table or spec.address < block.address or spec.end > block.end:
        raise ValueError(
            f"point {spec.point!r} ({spec.table} {spec.address}+{spec.register_count}) "
            f"is not inside the read of {block.table} {block.address}+{block.count}"
        )
    offset = spec.address - block.address
    return list(words[offset : offset + spec.register_count])


def _block(members: list[RegisterSpec], start: int, end: int) -> ReadBlock:
    return ReadBlock(members[0].table, start, end - start, tuple(members))
