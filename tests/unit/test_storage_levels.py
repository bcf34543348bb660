"""Level choice and range tiling for history queries (pure functions)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.storage.base import Level
from gridpilot.storage.levels import (
    Piece,
    ceil_to,
    choose_level,
    floor_to,
    horizon_after,
    plan_pieces,
)

MIN, QH, H = 60_000, 900_000, 3_600_000
T = 1_772_409_600_000  # 2026-03-02T00:00:00Z


@pytest.mark.parametrize(
    ("ts", "size", "floor", "ceil"),
    [
        (0, QH, 0, 0),
        (QH - 1, QH, 0, QH),
        (QH, QH, QH, QH),
        (-1, QH, -QH, 0),  # before 1970 still floors, unlike SQL's truncating %
        (-QH, QH, -QH, -QH),
    ],
)
def test_floor_and_ceil_align_to_the_epoch(ts: int, size: int, floor: int, ceil: int) -> None:
    assert floor_to(ts, size) == floor
    assert ceil_to(ts, size) == ceil


@pytest.mark.parametrize(
    ("every", "level"),
    [
        (MIN, Level.M1),
        (2 * MIN, Level.M1),
        (5 * MIN, Level.M1),
        (QH, Level.M15),
        (30 * MIN, Level.M15),
        (45 * MIN, Level.M15),
        (H, Level.H1),
        (24 * H, Level.H1),
        (45_000, Level.RAW),
        (90_000, Level.RAW),  # 1.5 min: no rollup divides it
        (1, Level.RAW),
    ],
)
def test_coarsest_dividing_rollup_is_chosen(every: int, level: Level) -> None:
    assert choose_level(every, T, {}) is level


def test_a_level_cut_after_the_start_is_skipped() -> None:
    cut_hour = {Level.H1: T + H}
    assert choose_level(H, T, cut_hour) is Level.M15
    assert choose_level(H, T + H, cut_hour) is Level.H1  # horizon is inclusive
    cut_rollups = {Level.H1: T + H, Level.M15: T + H, Level.M1: T + H}
    assert choose_level(H, T, cut_rollups) is Level.RAW


def test_when_nothing_reaches_back_the_level_reaching_furthest_wins() -> None:
    horizons = {Level.RAW: T + 10 * H, Level.M1: T + 5 * H, Level.M15: T + 2 * H}
    assert choose_level(MIN, T, horizons) is Level.M1
    assert choose_level(QH, T, horizons) is Level.M15
    tie = {Level.RAW: T + H, Level.M1: T + H}
    assert choose_level(MIN, T, tie) is Level.M1  # coarser on a tie


def test_non_positive_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="every_ms"):
        choose_level(0, T, {})


def test_horizon_keeps_the_bucket_holding_the_cutoff() -> None:
    cutoff = T + 7 * MIN + 5
    assert horizon_after(Level.RAW, cutoff) == cutoff
    assert horizon_after(Level.M1, cutoff) == T + 7 * MIN
    assert horizon_after(Level.M15, cutoff) == T
    assert horizon_after(Level.H1, T + H) == T + H  # a bucket ending at the cutoff goes


def test_unaligned_range_reads_finer_levels_only_at_the_edges() -> None:
    start, end = T + 7 * MIN + 30_000, T + 2 * H + 20 * MIN + 5
    assert plan_pieces(Level.H1, start, end) == [
        Piece(Level.RAW, start, T + 8 * MIN),
        Piece(Level.M1, T + 8 * MIN, T + 15 * MIN),
        Piece(Level.M15, T + 15 * MIN, T + H),
        Piece(Level.H1, T + H, T + 2 * H),
        Piece(Level.M15, T + 2 * H, T + 2 * H + 15 * MIN),
        Piece(Level.M1, T + 2 * H + 15 * MIN, T + 2 * H + 20 * MIN),
        Piece(Level.RAW, T + 2 * H + 20 * MIN, end),
    ]


def test_aligned_range_is_one_piece() -> None:
    assert plan_pieces(Level.M15, T, T + 4 * QH) == [Piece(Level.M15, T, T + 4 * QH)]
    assert plan_pieces(Level.RAW, T + 1, T + 2) == [Piece(Level.RAW, T + 1, T + 2)]


LEVELS = st.sampled_from([Level.H1, Level.M15, Level.M1, Level.RAW])


@given(
    level=LEVELS,
    start=st.integers(min_value=-3 * H, max_value=30 * H),
    length=st.integers(min_value=0, max_value=30 * H),
)
def test_pieces_tile_the_range_with_aligned_rollup_reads(
    level: Level, start: int, length: int
) -> None:
    end = start + length
    pieces = plan_pieces(level, start, end)
    if length == 0:
        assert pieces == []
        return
    assert pieces[0].start_ms == start
    assert pieces[-1].end_ms == end
    for before, after in itertools.pairwise(pieces):
        assert before.end_ms == after.start_ms
    order = [Level.H1, Level.M15, Level.M1, Level.RAW]
    for piece in pieces:
        assert piece.start_ms < piece.end_ms
        assert order.index(piece.level) >= order.index(level)  # never coarser than asked
        if piece.level is not Level.RAW:
            size = piece.level.bucket_ms
            assert piece.start_ms % size == 0
            assert piece.end_ms % size == 0
    # Edges only: at most one piece per level on either side of the chosen level's middle.
    assert len(pieces) <= 2 * len(order[order.index(level) :]) - 1
