"""Register codec: byte fixtures per type and order, error cases, and round-trip properties."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.fieldbus.codec import (
    RegisterSpec,
    decode,
    decode_raw,
    encode,
    encode_raw,
)
from gridpilot.fieldbus.errors import CodecError, DecodeError, EncodeError, FieldbusError
from gridpilot.model.registers import ByteOrder, DataType, Table, WordOrder

BIG, LITTLE = WordOrder.BIG, WordOrder.LITTLE
ABCD = (WordOrder.BIG, ByteOrder.BIG)
CDAB = (WordOrder.LITTLE, ByteOrder.BIG)
BADC = (WordOrder.BIG, ByteOrder.LITTLE)
DCBA = (WordOrder.LITTLE, ByteOrder.LITTLE)


def spec(
    dtype: DataType,
    order: tuple[WordOrder, ByteOrder] = ABCD,
    *,
    table: Table = Table.HOLDING,
    address: int = 0,
    length: int = 1,
    bit: int | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
    point: str = "value_w",
) -> RegisterSpec:
    return RegisterSpec(
        point=point,
        table=table,
        address=address,
        dtype=dtype,
        length=length,
        bit=bit,
        word_order=order[0],
        byte_order=order[1],
        scale=scale,
        offset=offset,
    )


# --- fixtures: (type, order, words on the wire, raw value) ---------------------------------

FIXTURES: list[tuple[DataType, tuple[WordOrder, ByteOrder], list[int], float]] = [
    # float32 230.5 = 0x43668000, the classic meter voltage.
    (DataType.FLOAT32, ABCD, [0x4366, 0x8000], 230.5),
    (DataType.FLOAT32, CDAB, [0x8000, 0x4366], 230.5),
    (DataType.FLOAT32, BADC, [0x6643, 0x0080], 230.5),
    (DataType.FLOAT32, DCBA, [0x0080, 0x6643], 230.5),
    (DataType.FLOAT32, ABCD, [0xC366, 0x8000], -230.5),
    (DataType.FLOAT32, ABCD, [0x8000, 0x0000], -0.0),
    # float64 230.5 = 0x406CD00000000000
    (DataType.FLOAT64, ABCD, [0x406C, 0xD000, 0x0000, 0x0000], 230.5),
    (DataType.FLOAT64, CDAB, [0x0000, 0x0000, 0xD000, 0x406C], 230.5),
    (DataType.FLOAT64, BADC, [0x6C40, 0x00D0, 0x0000, 0x0000], 230.5),
    (DataType.FLOAT64, DCBA, [0x0000, 0x0000, 0x00D0, 0x6C40], 230.5),
    (DataType.INT16, ABCD, [0xFFFF], -1),
    (DataType.INT16, ABCD, [0x8000], -32768),
    (DataType.INT16, ABCD, [0x7FFF], 32767),
    (DataType.INT16, BADC, [0xFFFE], -257),  # bytes FE FF -> 0xFFFE swapped is 0xFEFF
    (DataType.UINT16, ABCD, [0xFFFF], 65535),
    (DataType.UINT16, BADC, [0x3412], 0x1234),
    (DataType.INT32, ABCD, [0xFFFF, 0xFFFE], -2),
    (DataType.INT32, CDAB, [0xFFFE, 0xFFFF], -2),
    (DataType.INT32, ABCD, [0x8000, 0x0000], -(2**31)),
    (DataType.UINT32, ABCD, [0x1234, 0x5678], 0x12345678),
    (DataType.UINT32, CDAB, [0x5678, 0x1234], 0x12345678),
    (DataType.UINT32, BADC, [0x3412, 0x7856], 0x12345678),
    (DataType.UINT32, DCBA, [0x7856, 0x3412], 0x12345678),
    (DataType.INT64, ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD], -3),
    (DataType.UINT64, ABCD, [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    (DataType.UINT64, CDAB, [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    (DataType.UINT64, BADC, [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    (DataType.UINT64, DCBA, [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    (DataType.UINT64, ABCD, [0xFFFF] * 4, 2**64 - 1),
    (DataType.BITFIELD, ABCD, [0x8001], 0x8001),
]


@pytest.mark.parametrize(("dtype", "order", "words", "raw"), FIXTURES)
def test_decode_raw_fixture(
    dtype: DataType, order: tuple[WordOrder, ByteOrder], words: list[int], raw: float
) -> None:
    value = decode_raw(spec(dtype, order), words)
    assert value == raw
    assert type(value) is type(raw)
    if isinstance(raw, float):
        assert math.copysign(1, value) == math.copysign(1, raw)


@pytest.mark.parametrize(("dtype", "order", "words", "raw"), FIXTURES)
def test_encode_raw_fixture(
    dtype: DataType, order: tuple[WordOrder, ByteOrder], words: list[int], raw: float
) -> None:
    assert encode_raw(spec(dtype, order), raw) == words


@pytest.mark.parametrize(("dtype", "order", "words", "raw"), FIXTURES)
def test_decode_gives_float_of_the_raw_value(
    dtype: DataType, order: tuple[WordOrder, ByteOrder], words: list[int], raw: float
) -> None:
    value = decode(spec(dtype, order), words)
    assert isinstance(value, float)
    assert value == float(raw)


@pytest.mark.parametrize(
    ("scale", "offset", "words", "value"),
    [
        (0.1, 0.0, [2307], 230.7),  # exactly 230.7, not 230.70000000000002
        (0.1, 0.0, [3], 0.3),
        (0.01, 0.0, [4999], 49.99),
        (0.001, 0.0, [1], 0.001),
        (10.0, 0.0, [123], 1230.0),
        (0.1, -40.0, [500], 10.0),  # a temperature sensor with an offset
        (0.5, 0.0, [3], 1.5),
        (-1.0, 0.0, [100], -100.0),  # a meter that counts export positive
    ],
)
def test_decode_applies_scale_then_offset(
    scale: float, offset: float, words: list[int], value: float
) -> None:
    assert decode(spec(DataType.UINT16, scale=scale, offset=offset), words) == value


@given(st.sampled_from([(0.1, 10), (0.01, 100), (0.001, 1000)]), st.integers(-(2**31), 2**31 - 1))
def test_decimal_scales_give_the_nearest_float_to_the_decimal_value(
    scale_and_divisor: tuple[float, int], raw: int
) -> None:
    scale, divisor = scale_and_divisor
    value = decode(spec(DataType.INT32, scale=scale), encode_raw(spec(DataType.INT32), raw))
    assert value == float(Fraction(raw, divisor))


def test_decode_scales_signed_values() -> None:
    assert decode(spec(DataType.INT32, scale=0.1), [0xFFFF, 0xFF9C]) == -10.0


@pytest.mark.parametrize(
    ("scale", "offset", "value", "words"),
    [
        (0.1, 0.0, 230.5, [2305]),
        (0.1, 0.0, 230.46, [2305]),  # rounds to the nearest step
        (0.1, 0.0, 230.44, [2304]),
        (0.1, -40.0, 10.0, [500]),
        (10.0, 0.0, 1230.0, [123]),
        (-1.0, 0.0, -100.0, [100]),
    ],
)
def test_encode_removes_offset_then_scale_and_rounds(
    scale: float, offset: float, value: float, words: list[int]
) -> None:
    assert encode(spec(DataType.UINT16, scale=scale, offset=offset), value) == words


def test_float_registers_scale_too() -> None:
    energy = spec(DataType.FLOAT32, scale=1000.0)  # a meter reporting kWh into a _wh point
    assert decode(energy, [0x4366, 0x8000]) == 230_500.0
    assert encode(energy, 230_500.0) == [0x4366, 0x8000]


def test_int64_stays_exact_above_two_to_the_53() -> None:
    counter = spec(DataType.UINT64)
    assert encode(counter, 2**60 + 1) == [0x1000, 0x0000, 0x0000, 0x0001]
    assert decode_raw(counter, [0x1000, 0x0000, 0x0000, 0x0001]) == 2**60 + 1


# --- strings ----------------------------------------------------------------------------------


def test_string_decodes_sunspec_marker() -> None:
    assert decode(spec(DataType.STRING, length=2), [0x5375, 0x6E53]) == "SunS"


def test_string_with_swapped_bytes() -> None:
    swapped = spec(DataType.STRING, BADC, length=2)
    assert decode(swapped, [0x7553, 0x536E]) == "SunS"
    assert encode(swapped, "SunS") == [0x7553, 0x536E]


def test_string_word_order_does_not_reorder_text() -> None:
    assert decode(spec(DataType.STRING, CDAB, length=2), [0x5375, 0x6E53]) == "SunS"


def test_string_stops_at_nul_and_drops_padding() -> None:
    words = [0x4142, 0x0043, 0xFFFF]  # "AB", NUL, then leftovers from an older value
    assert decode(spec(DataType.STRING, length=3), words) == "AB"
    assert decode(spec(DataType.STRING, length=2), [0x4142, 0x2020]) == "AB"
    assert decode(spec(DataType.STRING, length=2), [0, 0]) == ""


def test_string_encodes_padded_with_nul() -> None:
    assert encode(spec(DataType.STRING, length=3), "ABC") == [0x4142, 0x4300, 0x0000]


def test_string_utf8() -> None:
    text = spec(DataType.STRING, length=2)
    assert encode(text, "Ü1") == [0xC39C, 0x3100]
    assert decode(text, [0xC39C, 0x3100]) == "Ü1"


# --- one-bit values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bit", "word", "value"),
    [(0, 0x8001, 1.0), (1, 0x8001, 0.0), (15, 0x8001, 1.0), (14, 0x8001, 0.0)],
)
def test_bitfield_bit(bit: int, word: int, value: float) -> None:
    assert decode(spec(DataType.BITFIELD, bit=bit), [word]) == value


def test_bitfield_bit_numbers_count_in_the_value_not_on_the_wire() -> None:
    # With swapped bytes the value 0x0001 arrives as 0x0100; bit 0 is still bit 0.
    swapped = spec(DataType.BITFIELD, BADC, bit=0)
    assert decode(swapped, [0x0100]) == 1.0
    assert encode(swapped, 1, current=[0x0000]) == [0x0100]


def test_bitfield_bit_is_not_scaled() -> None:
    assert decode(spec(DataType.BITFIELD, bit=0, scale=10.0, offset=5.0), [1]) == 1.0


def test_bitfield_bit_encode_changes_only_that_bit() -> None:
    alarm = spec(DataType.BITFIELD, bit=3)
    assert encode(alarm, 1, current=[0x0100]) == [0x0108]
    assert encode(alarm, 0, current=[0xFFFF]) == [0xFFF7]
    assert encode(alarm, True, current=[0x0008]) == [0x0008]


def test_bitfield_bit_encode_needs_current_word() -> None:
    with pytest.raises(EncodeError, match="current="):
        encode(spec(DataType.BITFIELD, bit=3), 1)


@pytest.mark.parametrize("table", [Table.COIL, Table.DISCRETE])
@pytest.mark.parametrize("dtype", [DataType.BOOL, DataType.UINT16])
def test_bit_tables(table: Table, dtype: DataType) -> None:
    flag = spec(dtype, table=table, scale=10.0)
    assert decode(flag, [1]) == 1.0
    assert decode(flag, [0]) == 0.0
    assert encode(flag, 1.0) == [1]
    assert encode(flag, False) == [0]
    with pytest.raises(DecodeError, match="received 2"):
        decode(flag, [2])
    with pytest.raises(EncodeError, match="0 or 1"):
        encode(flag, 0.5)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "words"),
    [
        (DataType.FLOAT32, [0x7FC0, 0x0000]),  # quiet NaN, SunSpec "not implemented"
        (DataType.FLOAT32, [0xFFC0, 0x0000]),
        (DataType.FLOAT32, [0x7F80, 0x0000]),  # +inf
        (DataType.FLOAT32, [0xFF80, 0x0000]),  # -inf
        (DataType.FLOAT64, [0x7FF8, 0, 0, 0]),
        (DataType.FLOAT64, [0xFFF0, 0, 0, 0]),
    ],
)
def test_non_finite_float_is_a_decode_error(dtype: DataType, words: list[int]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(spec(dtype, point="grid_voltage_v"), words)
    message = str(caught.value)
    assert "grid_voltage_v" in message
    assert str(dtype) in message
    assert f"0x{words[0]:04X}" in message


@pytest.mark.parametrize(
    ("dtype", "words", "expected"),
    [
        (DataType.FLOAT32, [0x4366], "needs 2 words, received 1"),
        (DataType.UINT16, [], "needs 1 words, received 0"),
        (DataType.INT64, [1, 2, 3], "needs 4 words, received 3"),
        (DataType.UINT16, [0x10000], "65536 is not a 16-bit"),
        (DataType.UINT16, [-1], "-1 is not a 16-bit"),
    ],
)
def test_bad_words_are_a_decode_error(dtype: DataType, words: list[int], expected: str) -> None:
    with pytest.raises(DecodeError, match=expected):
        decode(spec(dtype), words)


def test_invalid_utf8_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode(spec(DataType.STRING, length=1), [0xFF41])


@pytest.mark.parametrize(
    ("register", "value", "expected"),
    [
        (spec(DataType.UINT16), -1, "outside uint16 range 0..65535"),
        (spec(DataType.UINT16, scale=0.1), 6553.6, "raw value 65536 is outside"),
        (spec(DataType.INT16), 32768, "outside int16"),
        (spec(DataType.INT32), 2**31, "outside int32"),
        (spec(DataType.UINT64), 2**64, "outside uint64"),
        (spec(DataType.INT16), math.nan, "not a finite number"),
        (spec(DataType.INT16, scale=0.1), math.inf, "not a finite number"),
        (spec(DataType.FLOAT32), math.nan, "not a finite number"),
        (spec(DataType.FLOAT32), 1e39, "too large for float32"),
        (spec(DataType.STRING, length=1), "ABC", "takes 3 bytes; 1 registers hold 2"),
        (spec(DataType.STRING, length=2), "A\x00B", "NUL"),
        (spec(DataType.STRING, length=2), 5.0, "expected text"),
        (spec(DataType.UINT16), "5", "expected a number"),
    ],
)
def test_encode_errors(register: RegisterSpec, value: float | str, expected: str) -> None:
    with pytest.raises(EncodeError, match=expected) as caught:
        encode(register, value)
    assert register.point in str(caught.value)


def test_encode_raw_refuses_fractions_for_integers() -> None:
    with pytest.raises(EncodeError, match="not an integer"):
        encode_raw(spec(DataType.INT16), 1.5)


def test_codec_errors_belong_to_the_fieldbus_tree() -> None:
    assert issubclass(DecodeError, CodecError)
    assert issubclass(EncodeError, CodecError)
    assert issubclass(CodecError, FieldbusError)
    assert DecodeError("x").kind == "decode"
    assert EncodeError("x").kind == "encode"
    assert not DecodeError("x").transient


# --- RegisterSpec -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("register", "count"),
    [
        (spec(DataType.UINT16), 1),
        (spec(DataType.INT32), 2),
        (spec(DataType.FLOAT32), 2),
        (spec(DataType.FLOAT64), 4),
        (spec(DataType.UINT64), 4),
        (spec(DataType.STRING, length=8), 8),
        (spec(DataType.UINT16, length=8), 1),  # length is only for strings
        (spec(DataType.BOOL, table=Table.COIL), 1),
    ],
)
def test_register_count(register: RegisterSpec, count: int) -> None:
    assert register.register_count == count
    assert register.end == register.address + count


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"address": 65535, "dtype": DataType.FLOAT32}, "past address 65535"),
        ({"address": -1}, "outside 0..65535"),
        ({"dtype": DataType.BOOL}, "bool is for coils"),
        ({"dtype": DataType.FLOAT32, "table": Table.COIL}, "holds one bit"),
        ({"dtype": DataType.UINT16, "bit": 2}, "only meaningful with bitfield"),
        ({"dtype": DataType.BITFIELD, "bit": 16}, "outside 0..15"),
        ({"scale": 0.0}, "non-zero"),
        ({"scale": math.nan}, "finite"),
        ({"offset": math.inf}, "finite"),
        ({"dtype": DataType.STRING, "length": 0}, "string length 0"),
        ({"dtype": DataType.STRING, "length": 124}, "string length 124"),
    ],
)
def test_register_spec_rejects_impossible_layouts(kwargs: dict[str, object], expected: str) -> None:
    arguments: dict[str, object] = {
        "point": "value_w",
        "table": Table.HOLDING,
        "address": 0,
        "dtype": DataType.UINT16,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=expected):
        RegisterSpec(**arguments)  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

ORDERS = st.sampled_from([ABCD, CDAB, BADC, DCBA])
INTEGER_TYPES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.BITFIELD: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
NUMERIC_TYPES = [*INTEGER_TYPES, DataType.FLOAT32, DataType.FLOAT64]
WORD = st.integers(0, 0xFFFF)


@st.composite
def integer_raw(draw: st.DrawFn) -> tuple[RegisterSpec, int]:
    dtype = draw(st.sampled_from(list(INTEGER_TYPES)))
    low, high = INTEGER_TYPES[dtype]
    return spec(dtype, draw(ORDERS)), draw(st.integers(low, high))


@given(integer_raw())
def test_integer_raw_round_trip(case: tuple[RegisterSpec, int]) -> None:
    register, raw = case
    words = encode_raw(register, raw)
    assert len(words) == register.register_count
    assert all(0 <= word <= 0xFFFF for word in words)
    assert decode_raw(register, words) == raw


@given(st.sampled_from(NUMERIC_TYPES), ORDERS, st.data())
def test_every_word_pattern_that_decodes_encodes_back(
    dtype: DataType, order: tuple[WordOrder, ByteOrder], data: st.DataObject
) -> None:
    register = spec(dtype, order)
    words = data.draw(
        st.lists(WORD, min_size=register.register_count, max_size=register.register_count)
    )
    try:
        raw = decode_raw(register, words)
    except DecodeError:
        assert dtype in (DataType.FLOAT32, DataType.FLOAT64)
        return
    assert encode_raw(register, raw) == words


@given(
    st.sampled_from([DataType.FLOAT32, DataType.FLOAT64]),
    ORDERS,
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_float_round_trip(
    dtype: DataType, order: tuple[WordOrder, ByteOrder], value: float
) -> None:
    register = spec(dtype, order)
    decoded = decode(register, encode(register, value))
    assert decoded == value  # width=32 values are exact in both float types


@given(
    st.sampled_from(
        [
            DataType.INT16,
            DataType.UINT16,
            DataType.INT32,
            DataType.UINT32,
            DataType.INT64,
            DataType.UINT64,
        ]
    ),
    ORDERS,
    st.sampled_from([0.1, 0.01, 0.001, 0.5, 1.0, 10.0, -0.1]),
    st.sampled_from([0.0, -40.0, 273.15, 1000.0]),
    st.data(),
)
def test_scaled_integer_round_trip(
    dtype: DataType,
    order: tuple[WordOrder, ByteOrder],
    scale: float,
    offset: float,
    data: st.DataObject,
) -> None:
    low, high = INTEGER_TYPES[dtype]
    # Engineering values are floats: beyond 2**40 raw steps a float cannot hold every step.
    raw = data.draw(st.integers(max(low, -(2**40)), min(high, 2**40)))
    register = spec(dtype, order, scale=scale, offset=offset)
    words = encode_raw(register, raw)
    value = decode(register, words)
    assert isinstance(value, float)
    assert encode(register, value) == words


@st.composite
def text_fitting(draw: st.DrawFn) -> tuple[RegisterSpec, str]:
    length = draw(st.integers(1, 123))
    text = draw(
        st.text(
            st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
            max_size=length * 2,
        )
    )
    text = text.rstrip(" ")
    while len(text.encode()) > length * 2:
        text = text[:-1].rstrip(" ")
    return spec(DataType.STRING, draw(ORDERS), length=length), text


@given(text_fitting())
def test_string_round_trip(case: tuple[RegisterSpec, str]) -> None:
    register, text = case
    words = encode(register, text)
    assert len(words) == register.register_count
    assert decode(register, words) == text


@given(st.sampled_from([ABCD, BADC]), st.integers(0, 15), WORD, st.booleans())
def test_bitfield_bit_round_trip(
    order: tuple[WordOrder, ByteOrder], bit: int, current: int, flag: bool
) -> None:
    register = spec(DataType.BITFIELD, order, bit=bit)
    whole = spec(DataType.BITFIELD, order)
    (word,) = encode(register, flag, current=[current])
    assert decode(register, [word]) == float(flag)
    before = int(decode_raw(whole, [current]))
    after = int(decode_raw(whole, [word]))
    assert before & ~(1 << bit) == after & ~(1 << bit)  # the other 15 bits are untouched


@given(st.sampled_from([Table.COIL, Table.DISCRETE]), st.booleans())
def test_bool_round_trip(table: Table, flag: bool) -> None:
    register = spec(DataType.BOOL, table=table)
    assert decode(register, encode(register, flag)) == float(flag)


def test_fixture_floats_match_struct() -> None:
    # Guards the fixture table itself against typos.
    assert struct.pack(">f", 230.5) == bytes.fromhex("43668000")
    assert struct.pack(">d", 230.5) == bytes.fromhex("406CD00000000000")


@pytest.mark.parametrize(
    ("dtype", "words", "scale"),
    [
        # Found by benchmarks/fuzz/fuzz.py: the largest float64 x 10 overflowed to inf and
        # decode returned it, though it promises DecodeError for non-finite values.
        (DataType.FLOAT64, [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF], 10.0),
        (DataType.FLOAT64, [0xFFEF, 0xFFFF, 0xFFFF, 0xFFFF], 10.0),
        (DataType.INT32, [0x7FFF, 0xFFFF], 1e300),
        (DataType.FLOAT32, [0x7F7F, 0xFFFF], 1e300),
    ],
)
def test_a_value_that_overflows_when_scaled_is_a_decode_error(
    dtype: DataType, words: list[int], scale: float
) -> None:
    with pytest.raises(DecodeError, match="is not a finite number"):
        decode(spec(dtype, scale=scale), words)
