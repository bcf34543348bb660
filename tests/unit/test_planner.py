"""Read planner: merging, the 125/2000 limits, gaps, bit tables, determinism, extract."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.fieldbus.codec import RegisterSpec, decode, encode
from gridpilot.fieldbus.planner import ReadBlock, extract, plan_reads
from gridpilot.model.registers import DataType, Table


def reg(
    address: int,
    dtype: DataType = DataType.UINT16,
    *,
    table: Table = Table.HOLDING,
    length: int = 1,
    bit: int | None = None,
    point: str | None = None,
) -> RegisterSpec:
    return RegisterSpec(
        point=point or f"p{table}{address}_{dtype}_{bit}_w",
        table=table,
        address=address,
        dtype=dtype,
        length=length,
        bit=bit,
    )


def coil(address: int, table: Table = Table.COIL) -> RegisterSpec:
    return reg(address, DataType.BOOL, table=table)


def ranges(blocks: list[ReadBlock]) -> list[tuple[Table, int, int]]:
    return [(b.table, b.address, b.count) for b in blocks]


def test_adjacent_points_merge_into_one_read() -> None:
    specs = [reg(0), reg(1, DataType.FLOAT32), reg(3, DataType.INT64)]
    (block,) = plan_reads(specs)
    assert (block.table, block.address, block.count) == (Table.HOLDING, 0, 7)
    assert block.specs == tuple(specs)


def test_gap_up_to_max_gap_is_bridged() -> None:
    # 0 ends at 1; 9 leaves addresses 1..8 unused: 8 unused registers.
    assert ranges(plan_reads([reg(0), reg(9)], max_gap=8)) == [(Table.HOLDING, 0, 10)]


def test_gap_beyond_max_gap_splits() -> None:
    assert ranges(plan_reads([reg(0), reg(10)], max_gap=8)) == [
        (Table.HOLDING, 0, 1),
        (Table.HOLDING, 10, 1),
    ]


def test_max_gap_zero_merges_only_contiguous_points() -> None:
    assert ranges(plan_reads([reg(0), reg(1), reg(3)], max_gap=0)) == [
        (Table.HOLDING, 0, 2),
        (Table.HOLDING, 3, 1),
    ]


def test_read_never_exceeds_125_registers() -> None:
    specs = [reg(address) for address in range(300)]
    blocks = plan_reads(specs)
    assert ranges(blocks) == [
        (Table.HOLDING, 0, 125),
        (Table.HOLDING, 125, 125),
        (Table.HOLDING, 250, 50),
    ]
    assert sum(len(b.specs) for b in blocks) == 300


def test_value_straddling_the_limit_starts_the_next_read() -> None:
    specs = [reg(0, DataType.STRING, length=123), reg(123, DataType.FLOAT32)]
    # 123 + 2 = 125 registers still fit; one more register would not.
    assert ranges(plan_reads(specs)) == [(Table.HOLDING, 0, 125)]
    specs = [reg(0, DataType.STRING, length=123), reg(124, DataType.FLOAT32)]
    assert ranges(plan_reads(specs)) == [(Table.HOLDING, 0, 123), (Table.HOLDING, 124, 2)]


def test_smaller_max_registers_for_devices_that_read_less() -> None:
    blocks = plan_reads([reg(a) for a in range(10)], max_registers=4)
    assert [b.count for b in blocks] == [4, 4, 2]


def test_tables_never_merge_and_come_in_table_order() -> None:
    specs = [
        coil(0, Table.DISCRETE),
        reg(0, table=Table.INPUT),
        coil(0),
        reg(0),
    ]
    assert ranges(plan_reads(specs)) == [
        (Table.HOLDING, 0, 1),
        (Table.INPUT, 0, 1),
        (Table.COIL, 0, 1),
        (Table.DISCRETE, 0, 1),
    ]


def test_bit_tables_read_up_to_2000_bits() -> None:
    specs = [coil(address) for address in range(4500)]
    assert ranges(plan_reads(specs)) == [
        (Table.COIL, 0, 2000),
        (Table.COIL, 2000, 2000),
        (Table.COIL, 4000, 500),
    ]


def test_bit_tables_bridge_gaps_of_max_gap_addresses() -> None:
    assert ranges(plan_reads([coil(0), coil(9), coil(30)], max_gap=8)) == [
        (Table.COIL, 0, 10),
        (Table.COIL, 30, 1),
    ]


def test_bits_of_one_status_word_share_one_register() -> None:
    specs = [reg(5, DataType.BITFIELD, bit=b) for b in (7, 0, 3)]
    (block,) = plan_reads(specs)
    assert (block.address, block.count) == (5, 1)
    assert [s.bit for s in block.specs] == [0, 3, 7]  # sorted by point name


def test_overlapping_views_of_the_same_registers_merge() -> None:
    whole = reg(10, DataType.UINT32)
    high = reg(10, DataType.UINT16)
    low = reg(11, DataType.UINT16)
    (block,) = plan_reads([low, whole, high])
    assert (block.address, block.count) == (10, 2)


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    specs = [reg(a, DataType.INT32) for a in range(0, 400, 7)] + [coil(a) for a in range(50)]
    expected = plan_reads(specs)
    shuffled = list(specs)
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert plan_reads(shuffled) == expected


def test_no_specs_no_reads() -> None:
    assert plan_reads([]) == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_registers": 126}, "max_registers 126"),
        ({"max_registers": 0}, "max_registers 0"),
        ({"max_bits": 2001}, "max_bits 2001"),
        ({"max_gap": -1}, "max_gap -1"),
    ],
)
def test_limits_outside_the_protocol_are_refused(kwargs: dict[str, int], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        plan_reads([reg(0)], **kwargs)


def test_spec_longer_than_one_read_is_refused() -> None:
    with pytest.raises(ValueError, match="spans 8 registers; one read carries at most 4"):
        plan_reads([reg(0, DataType.STRING, length=8)], max_registers=4)


# --- extract ----------------------------------------------------------------------------------


def test_extract_slices_each_point_out_of_a_block_read() -> None:
    voltage = reg(100, DataType.FLOAT32, point="voltage_v")
    power = reg(104, DataType.INT16, point="power_w")
    status = reg(105, DataType.BITFIELD, bit=2, point="fault_state")
    (block,) = plan_reads([voltage, power, status])
    words = [0x4366, 0x8000, 0xAAAA, 0xBBBB, 0xFFF6, 0x0004]
    assert extract(block, words, voltage) == [0x4366, 0x8000]
    assert extract(block, words, power) == [0xFFF6]
    assert extract(block, words, status) == [0x0004]
    assert decode(voltage, extract(block, words, voltage)) == 230.5
    assert decode(power, extract(block, words, power)) == -10.0
    assert decode(status, extract(block, words, status)) == 1.0


def test_extract_from_a_bit_block() -> None:
    specs = [coil(3), coil(5)]
    (block,) = plan_reads(specs)
    assert extract(block, [1, 0, 0], specs[0]) == [1]
    assert extract(block, [1, 0, 0], specs[1]) == [0]


def test_extract_refuses_a_read_of_the_wrong_length() -> None:
    (block,) = plan_reads([reg(0), reg(1)])
    with pytest.raises(ValueError, match="returned 1 words"):
        extract(block, [1], reg(0))


@pytest.mark.parametrize(
    "outside",
    [reg(9), reg(12), reg(11, DataType.UINT32), reg(10, table=Table.INPUT)],
)
def test_extract_refuses_a_spec_outside_the_block(outside: RegisterSpec) -> None:
    (block,) = plan_reads([reg(10), reg(11)])
    with pytest.raises(ValueError, match="is not inside"):
        extract(block, [0, 0], outside)


# --- properties -------------------------------------------------------------------------------

SPEC = st.builds(
    reg,
    st.integers(0, 600),
    st.sampled_from(
        [DataType.UINT16, DataType.INT32, DataType.FLOAT32, DataType.FLOAT64, DataType.INT64]
    ),
) | st.builds(coil, st.integers(0, 6000), st.sampled_from([Table.COIL, Table.DISCRETE]))


def _run_fits(run: list[RegisterSpec], limit: int, max_gap: int) -> bool:
    """Whether these consecutive points may share one read (checked from scratch)."""
    start = min(s.address for s in run)
    end = max(s.end for s in run)
    if end - start > limit:
        return False
    covered = sorted((s.address, s.end) for s in run)
    reach = covered[0][1]
    for address, spec_end in covered[1:]:
        if address - reach > max_gap:
            return False
        reach = max(reach, spec_end)
    return True


def _fewest_reads(specs: list[RegisterSpec], max_gap: int) -> int:
    """Dynamic programme over runs of consecutive points, table by table."""
    total = 0
    for table in Table:
        points = sorted((s for s in specs if s.table is table), key=lambda s: (s.address, s.end))
        limit = 2000 if table.is_bit else 125
        best = [0] + [len(points) + 1] * len(points)
        for i in range(1, len(points) + 1):
            for j in range(i):
                if best[j] + 1 < best[i] and _run_fits(points[j:i], limit, max_gap):
                    best[i] = best[j] + 1
        total += best[len(points)]
    return total


@given(st.lists(SPEC, max_size=25), st.integers(0, 20))
def test_plan_covers_every_spec_within_limits(specs: list[RegisterSpec], max_gap: int) -> None:
    blocks = plan_reads(specs, max_gap=max_gap)
    planned = [s for b in blocks for s in b.specs]
    assert sorted(planned, key=repr) == sorted(specs, key=repr)
    for block in blocks:
        limit = 2000 if block.table.is_bit else 125
        assert 1 <= block.count <= limit
        assert all(s.table is block.table for s in block.specs)
        assert block.address == min(s.address for s in block.specs)
        assert block.end == max(s.end for s in block.specs)
        assert _run_fits(list(block.specs), limit, max_gap)


@given(st.lists(SPEC, max_size=12), st.integers(0, 20))
def test_plan_uses_the_fewest_reads(specs: list[RegisterSpec], max_gap: int) -> None:
    assert len(plan_reads(specs, max_gap=max_gap)) == _fewest_reads(specs, max_gap)


@given(st.lists(st.integers(0, 0xFFFF), min_size=60, max_size=60), st.data())
def test_extract_gives_what_a_single_read_of_the_spec_would(
    image: list[int], data: st.DataObject
) -> None:
    specs = data.draw(
        st.lists(
            st.builds(
                reg,
                st.integers(0, 56),
                st.sampled_from([DataType.UINT16, DataType.INT32, DataType.UINT64]),
            ),
            min_size=1,
            max_size=8,
        )
    )
    for block in plan_reads(specs, max_gap=data.draw(st.integers(0, 10))):
        words = image[block.address : block.end]
        for spec in block.specs:
            assert extract(block, words, spec) == image[spec.address : spec.end]


def test_extract_round_trips_an_encoded_image() -> None:
    specs = [
        reg(0, DataType.FLOAT32, point="a_w"),
        reg(2, DataType.INT16, point="b_w"),
        reg(7, DataType.UINT32, point="c_w"),
    ]
    image = [0] * 9
    values = {"a_w": 230.5, "b_w": -3.0, "c_w": 70_000.0}
    for spec in specs:
        image[spec.address : spec.end] = encode(spec, values[spec.point])
    (block,) = plan_reads(specs)
    for spec in specs:
        assert (
            decode(spec, extract(block, image[block.address : block.end], spec))
            == values[spec.point]
        )
