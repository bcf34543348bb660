"""Register words <-> engineering values: pure functions of a frozen ``RegisterSpec``.

Words are the 16-bit register values as Modbus carries them (ints 0..65535); bit tables
(coils, discrete inputs) give one word per bit, 0 or 1.

Byte layout. Every word is first turned into two bytes (high byte first, or swapped with
``ByteOrder.LITTLE``); the words of a multi-register value are then joined most significant
first (``WordOrder.BIG``) or reversed (``WordOrder.LITTLE``), and the bytes read big-endian.
For float32 230.5 (0x43668000):

    ========  ==========  ============  ==============
    name      word order  byte order    words on wire
    ========  ==========  ============  ==============
    ABCD      big         big           0x4366 0x8000
    CDAB      little      big           0x8000 0x4366
    BADC      big         little        0x6643 0x0080
    DCBA      little      little        0x0080 0x6643
    ========  ==========  ============  ==============

64-bit values with ``WordOrder.LITTLE`` reverse all four words. Strings are text, not
numbers: word order does not apply to them, byte order does.

Engineering value = raw * scale + offset, for every numeric type except one-bit values
(``BOOL``, a bit-table point, a ``BITFIELD`` with ``bit`` set), which are 0.0 or 1.0.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from gridpilot.fieldbus.errors import DecodeError, EncodeError
from gridpilot.model.registers import ByteOrder, DataType, Table, WordOrder

__all__ = [
    "DecodeError",
    "EncodeError",
    "RegisterSpec",
    "decode",
    "decode_raw",
    "encode",
    "encode_raw",
]

_MAX_ADDRESS = 0xFFFF
_INF = math.inf
_MAX_STRING_REGISTERS = 123  # the most one write-multiple can carry

# struct format (big-endian) of each fixed-size numeric type.
_STRUCT_FORMAT: dict[DataType, str] = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.BITFIELD: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}

INTEGER_RANGE: dict[DataType, tuple[int, int]] = {
    # Raw (unscaled) range of each integer type; writes outside it cannot be encoded.
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.BITFIELD: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}

_FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where one point lives in a Modbus device and how its registers encode it.

    ``address`` is zero-based as on the wire (not 4xxxx notation). ``length`` is the
    register count of a ``STRING`` and ignored for other types. ``bit`` (0 = least
    significant) selects one bit of a ``BITFIELD`` word. Engineering value =
    raw * ``scale`` + ``offset``.
    """

    point: str
    table: Table
    address: int
    dtype: DataType
    length: int = 1
    bit: int | None = None
    word_order: WordOrder = WordOrder.BIG
    byte_order: ByteOrder = ByteOrder.BIG
    scale: float = 1.0
    offset: float = 0.0
    _fast: _FastDecode | None = field(default=None, init=False, repr=False, compare=False)
    """How ``decode`` takes the common case in one step (see ``_fast_decode``)."""

    def __post_init__(self) -> None:
        where = f"point {self.point!r}"
        if not 0 <= self.address <= _MAX_ADDRESS:
            raise ValueError(f"{where}: address {self.address} is outside 0..65535")
        if self.dtype is DataType.STRING and not 1 <= self.length <= _MAX_STRING_REGISTERS:
            raise ValueError(f"{where}: string length {self.length} is outside 1..123 registers")
        if self.address + self.register_count - 1 > _MAX_ADDRESS:
            raise ValueError(f"{where}: registers run past address 65535")
        if self.table.is_bit and self.dtype not in (DataType.BOOL, DataType.UINT16):
            raise ValueError(f"{where}: a {self.table} holds one bit; {self.dtype} cannot")
        if self.dtype is DataType.BOOL and not self.table.is_bit:
            raise ValueError(f"{where}: bool is for coils and discrete inputs; use bitfield+bit")
        if self.bit is not None:
            if self.dtype is not DataType.BITFIELD:
                raise ValueError(f"{where}: bit is only meaningful with bitfield")
            if not 0 <= self.bit <= 15:
                raise ValueError(f"{where}: bit {self.bit} is outside 0..15")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"{where}: scale must be finite and non-zero, not {self.scale}")
        if not math.isfinite(self.offset):
            raise ValueError(f"{where}: offset must be finite, not {self.offset}")
        object.__setattr__(self, "_fast", _fast_decode(self))

    @property
    def register_count(self) -> int:
        """Registers (or bits, in a bit table) the value occupies."""
        if self.table.is_bit:
            return 1
        if self.dtype is DataType.STRING:
            return self.length
        return self.dtype.register_count

    @property
    def is_flag(self) -> bool:
        """True when the value is a single bit, decoded as 0.0/1.0 without scaling."""
        return self.table.is_bit or self.bit is not None

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.register_count


@dataclass(frozen=True, slots=True)
class _FastDecode:
    """A numeric register value decoded with two ``struct`` calls: the words packed in
    their byte order (``words_format``), reversed first for little-endian word order, then
    unpacked as the big-endian type (``value_format``) and scaled."""

    count: int
    words_format: str
    reverse: bool
    value_format: str
    is_float: bool
    divisor: int | None
    """Scale as an exact division (see ``_to_engineering``); None: multiply by scale."""
    scale: float
    offset: float


def _fast_decode(spec: RegisterSpec) -> _FastDecode | None:
    """The one-step decoding of a numeric register value (not text, not a bit)."""
    if spec.table.is_bit or spec.bit is not None or spec.dtype is DataType.STRING:
        return None
    count = spec.dtype.register_count
    reciprocal = 1.0 / spec.scale
    divisor = round(reciprocal)
    exact = (
        abs(spec.scale) < 1 and divisor != 0 and math.isclose(reciprocal, divisor, rel_tol=1e-12)
    )
    return _FastDecode(
        count=count,
        words_format=f"{'>' if spec.byte_order is ByteOrder.BIG else '<'}{count}H",
        reverse=spec.word_order is WordOrder.LITTLE and count > 1,
        value_format=_STRUCT_FORMAT[spec.dtype],
        is_float=spec.dtype in _FLOAT_TYPES,
        divisor=divisor if exact else None,
        scale=spec.scale,
        offset=spec.offset,
    )


def decode(spec: RegisterSpec, words: Sequence[int]) -> float | str:
    """The engineering value of ``words`` (raw * scale + offset; strings as text).

    Raises ``DecodeError`` on the wrong word count, words outside 0..65535, a float that
    is NaN or infinite, or a string that is not UTF-8.
    """
    fast = spec._fast
    # The gateway decodes every polled value: numbers take the short way; anything odd
    # (a wrong count, a bad word, NaN) goes the long way, which says what is wrong.
    if fast is not None and len(words) == fast.count and all(type(w) is int for w in words):
        try:
            data = struct.pack(fast.words_format, *(reversed(words) if fast.reverse else words))
        except struct.error:
            pass
        else:
            value: float = struct.unpack(fast.value_format, data)[0]  # an int for integers
            if not fast.is_float or math.isfinite(value):
                if fast.divisor is not None:
                    result = value / fast.divisor + fast.offset
                else:
                    result = value * fast.scale + fast.offset
                if -_INF < result < _INF:
                    return result
    raw = decode_raw(spec, words)
    if isinstance(raw, str):
        return raw
    if spec.is_flag:
        return float(raw)
    value = _to_engineering(raw, spec.scale, spec.offset)
    if not math.isfinite(value):
        # A float64 near its maximum times a scale of 10, or a huge configured scale: the
        # product overflows to infinity, which is not a reading (found by fuzzing).
        raise DecodeError(
            f"{_describe(spec)}: raw {raw!r} x scale {spec.scale:g} + offset {spec.offset:g} "
            f"is not a finite number ({_hex(words)})"
        )
    return value


def encode(
    spec: RegisterSpec, value: float | str, *, current: Sequence[int] | None = None
) -> list[int]:
    """The register words that make ``decode`` return ``value`` (inverse of ``decode``).

    Removes scale and offset and rounds to the nearest integer for integer types. A
    one-bit ``BITFIELD`` shares its word with other bits, so it needs the word as read now
    in ``current``; the result is that word with the one bit changed.

    Raises ``EncodeError`` when the value does not fit the type (range, NaN, text length,
    a flag other than 0/1) or ``current`` is missing for a one-bit bitfield.
    """
    if spec.dtype is DataType.STRING:
        return encode_raw(spec, value)
    number = _number(spec, value)
    if spec.is_flag:
        return encode_raw(spec, number, current=current)
    if spec.scale == 1 and spec.offset == 0:
        # Skip float arithmetic so that 64-bit integers above 2**53 stay exact.
        raw: float = number
    else:
        try:
            raw = (number - spec.offset) / spec.scale
        except OverflowError as exc:
            raise EncodeError(f"{_describe(spec)}: {value!r} is too large") from exc
    if spec.dtype in _FLOAT_TYPES:
        return encode_raw(spec, raw)
    if not math.isfinite(raw):
        raise EncodeError(f"{_describe(spec)}: {value!r} is not a finite number")
    return encode_raw(spec, round(raw))


def decode_raw(spec: RegisterSpec, words: Sequence[int]) -> int | float | str:
    """The value as the registers hold it, before scale and offset.

    Integer types give ``int``, floats ``float``, strings ``str``, flags 0 or 1.
    """
    _check_words(spec, words)
    if spec.table.is_bit:
        if words[0] not in (0, 1):
            raise DecodeError(f"{_describe(spec)}: a bit must be 0 or 1, received {words[0]}")
        return int(words[0])
    data = _words_to_bytes(spec, words)
    if spec.dtype is DataType.STRING:
        return _decode_text(spec, data)
    (unpacked,) = struct.unpack(_STRUCT_FORMAT[spec.dtype], data)
    raw: int | float = unpacked
    if spec.bit is not None:
        return (int(raw) >> spec.bit) & 1
    if isinstance(raw, float) and not math.isfinite(raw):
        # Devices put NaN in a float register when they have no reading; it is not a value.
        raise DecodeError(f"{_describe(spec)}: register holds {raw} ({_hex(words)})")
    return raw


def encode_raw(
    spec: RegisterSpec, raw: float | str, *, current: Sequence[int] | None = None
) -> list[int]:
    """The register words holding ``raw`` as is (no scale or offset; see ``encode``)."""
    if spec.dtype is DataType.STRING:
        if not isinstance(raw, str):
            raise EncodeError(f"{_describe(spec)}: expected text, received {raw!r}")
        return _bytes_to_words(spec, _encode_text(spec, raw))
    number = _number(spec, raw)
    if spec.is_flag:
        flag = _flag(spec, number)
        if spec.bit is None:
            return [flag]
        return [_with_bit(spec, spec.bit, current, flag)]
    if spec.dtype in _FLOAT_TYPES:
        return _bytes_to_words(spec, _pack_float(spec, number))
    if isinstance(number, float) and not number.is_integer():
        raise EncodeError(f"{_describe(spec)}: raw value {raw!r} is not an integer")
    integer = int(number)
    low, high = INTEGER_RANGE[spec.dtype]
    if not low <= integer <= high:
        raise EncodeError(
            f"{_describe(spec)}: raw value {integer} is outside {spec.dtype} range {low}..{high}"
        )
    return _bytes_to_words(spec, struct.pack(_STRUCT_FORMAT[spec.dtype], integer))


def _to_engineering(raw: float, scale: float, offset: float) -> float:
    # Decimal scales (0.1, 0.01) are not exact in binary: 2305 * 0.1 gives 230.50000000000003
    # but 2305 / 10 gives 230.5. Dividing by the exact reciprocal keeps readings clean.
    reciprocal = 1.0 / scale
    divisor = round(reciprocal)
    if abs(scale) < 1 and divisor != 0 and math.isclose(reciprocal, divisor, rel_tol=1e-12):
        return raw / divisor + offset
    return raw * scale + offset


def _check_words(spec: RegisterSpec, words: Sequence[int]) -> None:
    if len(words) != spec.register_count:
        raise DecodeError(
            f"{_describe(spec)}: needs {spec.register_count} words, received {len(words)}"
        )
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise DecodeError(f"{_describe(spec)}: {word!r} is not a 16-bit register value")


def _words_to_bytes(spec: RegisterSpec, words: Sequence[int]) -> bytes:
    ordered = words
    if spec.word_order is WordOrder.LITTLE and spec.dtype is not DataType.STRING:
        ordered = list(reversed(words))
    word_format = ">H" if spec.byte_order is ByteOrder.BIG else "<H"
    return b"".join(struct.pack(word_format, word) for word in ordered)


def _bytes_to_words(spec: RegisterSpec, data: bytes) -> list[int]:
    word_format = ">H" if spec.byte_order is ByteOrder.BIG else "<H"
    words = [struct.unpack_from(word_format, data, i)[0] for i in range(0, len(data), 2)]
    if spec.word_order is WordOrder.LITTLE and spec.dtype is not DataType.STRING:
        words.reverse()
    return words


def _decode_text(spec: RegisterSpec, data: bytes) -> str:
    # C-string semantics: devices leave garbage after the terminating NUL.
    text, _, _ = data.partition(b"\x00")
    try:
        return text.decode("utf-8").rstrip(" ")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{_describe(spec)}: text is not UTF-8: {data!r}") from exc


def _encode_text(spec: RegisterSpec, text: str) -> bytes:
    if "\x00" in text:
        raise EncodeError(f"{_describe(spec)}: text may not contain NUL: {text!r}")
    data = text.encode("utf-8")
    capacity = spec.register_count * 2
    if len(data) > capacity:
        raise EncodeError(
            f"{_describe(spec)}: {text!r} takes {len(data)} bytes; "
            f"{spec.register_count} registers hold {capacity}"
        )
    return data.ljust(capacity, b"\x00")


def _pack_float(spec: RegisterSpec, number: float) -> bytes:
    if not math.isfinite(number):
        raise EncodeError(f"{_describe(spec)}: {number} is not a finite number")
    try:
        return struct.pack(_STRUCT_FORMAT[spec.dtype], number)
    except OverflowError as exc:
        raise EncodeError(f"{_describe(spec)}: {number} is too large for {spec.dtype}") from exc


def _number(spec: RegisterSpec, value: object) -> float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    raise EncodeError(f"{_describe(spec)}: expected a number, received {value!r}")


def _flag(spec: RegisterSpec, number: float) -> int:
    if number not in (0, 1):
        raise EncodeError(f"{_describe(spec)}: a flag is 0 or 1, received {number!r}")
    return int(number)


def _with_bit(spec: RegisterSpec, bit: int, current: Sequence[int] | None, flag: int) -> int:
    if current is None:
        raise EncodeError(
            f"{_describe(spec)}: bit {bit} shares its register with other bits; "
            "pass the register as read now in current="
        )
    if len(current) != 1 or not 0 <= current[0] <= 0xFFFF:
        raise EncodeError(f"{_describe(spec)}: current must be one register, not {current!r}")
    # Bit numbers count in the value, so swap to value order, set, and swap back.
    (word,) = struct.unpack(">H", _words_to_bytes(spec, current))
    word = word | (1 << bit) if flag else word & ~(1 << bit)
    return _bytes_to_words(spec, struct.pack(">H", word))[0]


def _describe(spec: RegisterSpec) -> str:
    return f"point {spec.point!r} ({spec.dtype} at {spec.table} {spec.address})"


def _hex(words: Sequence[int]) -> str:
    return " ".join(f"0x{word:04X}" for word in words)
