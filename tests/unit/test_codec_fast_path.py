"""``codec.decode``'s one-step path for numeric registers gives exactly what the general
path gives (``decode_raw`` then scale and offset), for every type, order, scale and word."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.fieldbus.codec import RegisterSpec, _to_engineering, decode, decode_raw
from gridpilot.fieldbus.errors import DecodeError
from gridpilot.model import ByteOrder, DataType, Table, WordOrder

NUMERIC = [
    DataType.INT16,
    DataType.UINT16,
    DataType.BITFIELD,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
    DataType.FLOAT32,
    DataType.FLOAT64,
]


def general(spec: RegisterSpec, words: list[int]) -> float | str:
    """The long way, as ``decode`` took it before the fast path."""
    raw = decode_raw(spec, words)
    if isinstance(raw, str):
        return raw
    if spec.is_flag:
        return float(raw)
    return _to_engineering(raw, spec.scale, spec.offset)


@st.composite
def cases(draw: st.DrawFn) -> tuple[RegisterSpec, list[int]]:
    dtype = draw(st.sampled_from(NUMERIC))
    spec = RegisterSpec(
        "p_w",
        draw(st.sampled_from([Table.HOLDING, Table.INPUT])),
        0,
        dtype,
        word_order=draw(st.sampled_from(list(WordOrder))),
        byte_order=draw(st.sampled_from(list(ByteOrder))),
        scale=draw(
            st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 1000.0, -0.5, 0.25, 1 / 3])
            | st.floats(1e-6, 1e6)
        ),
        offset=draw(st.sampled_from([0.0, -40.0, 273.15]) | st.floats(-1e6, 1e6)),
    )
    words = draw(
        st.lists(st.integers(0, 0xFFFF), min_size=spec.register_count, max_size=spec.register_count)
    )
    return spec, words


@given(cases())
def test_fast_path_equals_the_general_path(case: tuple[RegisterSpec, list[int]]) -> None:
    spec, words = case
    try:
        expected = general(spec, words)
    except DecodeError as exc:
        error = str(exc)
    else:
        error = None
    if error is not None:
        with pytest.raises(DecodeError, match=re.escape(error)):
            decode(spec, words)
        return
    value = decode(spec, words)
    assert type(value) is type(expected)
    assert value == expected or (math.isnan(value) and math.isnan(expected))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "words",
    [[1, 2, 3], [0x10000, 0], [-1, 0], [True, 0], [1.0, 0]],
    ids=["wrong-count", "word-too-large", "negative", "bool", "float"],
)
def test_words_the_fast_path_cannot_take_get_the_general_error(words: list[int]) -> None:
    spec = RegisterSpec("p_w", Table.HOLDING, 0, DataType.UINT32)
    with pytest.raises(DecodeError):
        decode(spec, words)


def test_only_numbers_take_the_fast_path() -> None:
    assert RegisterSpec("p_w", Table.HOLDING, 0, DataType.FLOAT32)._fast is not None
    assert RegisterSpec("p_w", Table.HOLDING, 0, DataType.BITFIELD, bit=3)._fast is None
    assert RegisterSpec("p_w", Table.HOLDING, 0, DataType.STRING, length=4)._fast is None
    assert RegisterSpec("p_w", Table.COIL, 0, DataType.BOOL)._fast is None
    # Not part of equality: two specs alike are equal whatever was precomputed.
    a = RegisterSpec("p_w", Table.HOLDING, 0, DataType.INT16, scale=0.1)
    assert a == RegisterSpec("p_w", Table.HOLDING, 0, DataType.INT16, scale=0.1)
    assert hash(a) == hash(RegisterSpec("p_w", Table.HOLDING, 0, DataType.INT16, scale=0.1))
