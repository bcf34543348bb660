"""Which storage level answers a history query, and how its range splits over the levels.

Pure functions of their arguments: no I/O, no clock. Every backend that keeps rollups can
use them; the SQLite backend does.

Vocabulary:
- a *level* is raw samples or one of the rollups (1 min, 15 min, 1 h); rollup buckets are
  aligned to the epoch, so 15-min buckets start at :00/:15/:30/:45 UTC;
- a level's *horizon* is the oldest instant from which its data is still complete: retention
  deleted everything before it and nothing after it. No horizon (not in the mapping) means
  retention never removed anything from that level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gridpilot.storage.base import Level

# Coarse to fine, raw last. Every rollup size divides the next coarser one
# (60 s | 15 min | 1 h), which is what lets a query range be tiled by them.
LEVEL_CHAIN: tuple[Level, ...] = (Level.H1, Level.M15, Level.M1, Level.RAW)
ROLLUP_LEVELS: tuple[Level, ...] = LEVEL_CHAIN[:-1]


def floor_to(ts_ms: int, size_ms: int) -> int:
    """Start of the ``size_ms`` bucket (aligned to the epoch) that holds ``ts_ms``.

    Python's ``%`` floors, so instants before 1970 land in the right bucket too.
    """
    return ts_ms - ts_ms % size_ms


def ceil_to(ts_ms: int, size_ms: int) -> int:
    """First bucket boundary at or after ``ts_ms``."""
    return -floor_to(-ts_ms, size_ms)


def horizon_after(level: Level, cutoff_ms: int) -> int:
    """The horizon a level has once retention removed what ended before ``cutoff_ms``.

    Raw samples older than the cutoff go, so raw data is complete from the cutoff on. A
    rollup bucket goes only when all of it is older than the cutoff (its end <= cutoff): the
    bucket holding the cutoff stays whole, so the rollup is complete from that bucket's start.
    """
    if level is Level.RAW:
        return cutoff_ms
    return floor_to(cutoff_ms, level.bucket_ms)


def choose_level(every_ms: int, start_ms: int, horizons: Mapping[Level, int]) -> Level:
    """The level that answers an aggregate query of ``every_ms`` buckets from ``start_ms``.

    The coarsest rollup whose bucket divides ``every_ms`` and whose data reaches back to
    ``start_ms``; else raw, if raw reaches back that far. If nothing reaches back that far
    (the query starts before every candidate's horizon), the candidate that reaches back
    furthest, so the answer holds as much of the range as is still stored; on a tie the
    coarser, which is cheaper to read.
    """
    if every_ms <= 0:
        raise ValueError(f"every_ms must be positive, got {every_ms}")
    candidates = [lv for lv in ROLLUP_LEVELS if every_ms % lv.bucket_ms == 0]
    candidates.append(Level.RAW)
    for level in candidates:
        if level not in horizons or start_ms >= horizons[level]:
            return level
    # min() keeps the first of equal keys, and candidates run coarse to fine.
    return min(candidates, key=lambda lv: horizons[lv])


@dataclass(frozen=True, slots=True)
class Piece:
    """Read ``level`` over [start_ms, end_ms). For a rollup both ends are bucket-aligned."""

    level: Level
    start_ms: int
    end_ms: int


def plan_pieces(level: Level, start_ms: int, end_ms: int) -> list[Piece]:
    """Tile [start_ms, end_ms) with reads of ``level`` and, at unaligned edges, finer levels.

    The middle of the range is read from ``level`` (whole buckets only); the partial buckets
    at either edge are read from the next finer rollup, and so on down to raw samples. The
    result therefore counts exactly the samples in [start_ms, end_ms), as a raw scan would,
    while reading at most a few fine buckets at the edges. Pieces come out oldest first,
    contiguous, none empty.
    """
    pieces: list[Piece] = []
    _split(LEVEL_CHAIN[LEVEL_CHAIN.index(level) :], start_ms, end_ms, pieces)
    return pieces


def _split(chain: tuple[Level, ...], lo: int, hi: int, out: list[Piece]) -> None:
    if lo >= hi:
        return
    level, finer = chain[0], chain[1:]
    if level is Level.RAW:
        out.append(Piece(level, lo, hi))
        return
    first, last = ceil_to(lo, level.bucket_ms), floor_to(hi, level.bucket_ms)
    if first >= last:  # no whole bucket of this level inside the range
        _split(finer, lo, hi, out)
        return
    _split(finer, lo, first, out)
    out.append(Piece(level, first, last))
    _split(finer, last, hi, out)
