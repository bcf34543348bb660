"""SunSpec: model discovery, decoding and write encoding, from the official definitions.

Pure: functions of register words. The I/O that reads them is ``sunspec_io``'s.

A SunSpec device announces itself with the marker ``SunS`` (0x5375 0x6E53) at one of the
base addresses 40000, 50000 or 0 (zero-based wire addresses; 40001 / 50001 / 00001 in
Modicon notation -- some devices count from one, so 40001, 50001 and 1 are tried after
them). After the marker comes a chain of models, each a header (model id, length L in
registers) followed by L registers, ending with the id 0xFFFF::

    base     base+2        base+4            base+4+L1    ...   end
    S u n S  ID=1  L1=66   [common model]    ID=103 L=50  ...   0xFFFF 0

The layout of each model comes from the SunSpec Alliance's own JSON definitions shipped by
PyPI ``pysunspec2`` (``sunspec2/models/json/model_<id>.json``), read as data here; nothing
of them is retyped. Groups may repeat: a fixed count, a count held by a point of the model
(``NCrv``), or -- in older models such as 160 -- as many as fit the model length.

Values. A point's engineering value is ``raw × 10^sf`` where ``sf`` is a constant or the
value of a ``sunssf`` point of the same (or an enclosing) group. Each type has a "not
implemented" value (int16 0x8000, uint16 0xFFFF, acc32 0, enum16 0xFFFF, float32 NaN, a
string of NULs ...): such a point is *missing* (``None``), never the number 32768 or 65535;
a point whose scale factor is not implemented is missing too.

Point names on the bus. GridPilot point names are lower-case identifiers that end in a unit
suffix (``gridpilot.model.units``); a SunSpec point becomes
``m<model id>_<group path>_<point>_<unit>`` -- ``m103_w`` (model 103, ``W`` in watts),
``m103_phvpha_v``, ``m704_wmaxlimpct_pct``, ``m704_pfwinj_pf``, ``m160_module_1_dca_a``.
The unit part is left out when the point's own name already is the unit (``W`` -> ``m103_w``).
Enumerations and bitfields end in ``_state``, unitless counters in ``_count``. Text,
scale factors, pads and points whose unit has no suffix (rates in %/s, ohms) are decoded but
not published.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

from gridpilot.fieldbus.codec import RegisterSpec, decode_raw, encode_raw
from gridpilot.fieldbus.errors import DecodeError, EncodeError, ProtocolError
from gridpilot.model import DataType, Table, is_valid_identifier
from gridpilot.model.units import unit_of

__all__ = [
    "BASE_ADDRESSES",
    "END_MODEL_ID",
    "MARKER",
    "DecodedModel",
    "DecodedPoint",
    "GroupDef",
    "ModelDef",
    "ModelHeader",
    "PointDef",
    "SunSpecError",
    "SunSpecWriteError",
    "decode_model",
    "encode_write",
    "is_marker",
    "known_model_ids",
    "layout",
    "model_def",
    "parse_header",
    "point_name",
    "published_values",
    "unimplemented_words",
    "write_range",
]

MARKER: Final = (0x5375, 0x6E53)
"""``SunS`` in two registers."""
END_MODEL_ID: Final = 0xFFFF
BASE_ADDRESSES: Final = (40000, 50000, 0)
"""Where the SunSpec standard puts the marker (zero-based wire addresses)."""
OFF_BY_ONE_BASES: Final = (40001, 50001, 1)
"""The same, for devices that count registers from one; tried after ``BASE_ADDRESSES``."""
HEADER_LENGTH: Final = 2
MAX_MODELS: Final = 256
"""A chain longer than this is taken for garbage (a device that answers any address)."""

# Types as the definitions name them: (GridPilot register type, "not implemented" raw value).
# The raw values follow pysunspec2's ``mb.unimpl_value`` (the SunSpec information model
# specification, table "Point types"). None: the type has no such value.
_TYPES: Final[dict[str, tuple[DataType, int | None]]] = {
    "int16": (DataType.INT16, -0x8000),
    "uint16": (DataType.UINT16, 0xFFFF),
    "count": (DataType.UINT16, 0xFFFF),
    "acc16": (DataType.UINT16, 0),
    "enum16": (DataType.UINT16, 0xFFFF),
    "bitfield16": (DataType.BITFIELD, 0xFFFF),
    "pad": (DataType.UINT16, None),
    "int32": (DataType.INT32, -0x80000000),
    "uint32": (DataType.UINT32, 0xFFFFFFFF),
    "acc32": (DataType.UINT32, 0),
    "enum32": (DataType.UINT32, 0xFFFFFFFF),
    "bitfield32": (DataType.UINT32, 0xFFFFFFFF),
    "ipaddr": (DataType.UINT32, 0),
    "int64": (DataType.INT64, -0x8000000000000000),
    "uint64": (DataType.UINT64, 0xFFFFFFFFFFFFFFFF),
    "acc64": (DataType.UINT64, 0),
    "float32": (DataType.FLOAT32, None),  # NaN
    "float64": (DataType.FLOAT64, None),  # NaN
    "sunssf": (DataType.INT16, -0x8000),
    "string": (DataType.STRING, None),  # all NUL
    "ipv6addr": (DataType.STRING, None),  # 16 bytes, all zero
    "eui48": (DataType.UINT64, 0xFFFFFFFFFFFFFFFF),
}
_TYPE_LENGTH: Final = {"ipv6addr": 8, "eui48": 4}
_ENUMS: Final = frozenset({"enum16", "enum32"})
_BITFIELDS: Final = frozenset({"bitfield16", "bitfield32"})
_TEXT: Final = frozenset({"string", "ipv6addr", "eui48", "ipaddr"})
_NOT_VALUES: Final = frozenset({"pad", "sunssf"})
"""Decoded, but not values of the device (layout and scaling)."""
_COUNTERS: Final = frozenset({"count", "acc16", "acc32", "acc64", "uint16", "uint32", "uint64"})


class SunSpecError(ProtocolError):
    """The registers do not hold what the SunSpec definitions describe (no marker, a model
    chain that runs off, a model shorter than its definition)."""

    kind = "sunspec"


class SunSpecWriteError(EncodeError):
    """A write the point cannot take: read-only, not implemented, out of range."""


# ---------------------------------------------------------------------------- definitions


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point as the SunSpec definition describes it."""

    name: str
    type: str
    size: int
    """Registers."""
    sf: str | int | None
    """Scale factor: the name of a ``sunssf`` point, a constant exponent, or none."""
    units: str | None
    writable: bool
    mandatory: bool
    static: bool
    symbols: tuple[tuple[int, str], ...]
    """(value, name) of an enumeration, (bit, name) of a bitfield."""
    label: str = ""

    @property
    def dtype(self) -> DataType:
        return _TYPES[self.type][0]


@dataclass(frozen=True, slots=True)
class GroupDef:
    """A group of points, and the groups nested in it (repeated ``count`` times)."""

    name: str
    points: tuple[PointDef, ...]
    groups: tuple[GroupDef, ...]
    count: int | str
    """Instances: a number, or the name of the point that holds it; 0 = as many as the
    model length leaves room for (older repeating models such as 160)."""

    @property
    def points_length(self) -> int:
        """Registers of the group's own points (without nested groups)."""
        return sum(p.size for p in self.points)

    def fixed_length(self) -> int:
        """Registers of one instance when every nested group has a fixed count."""
        total = self.points_length
        for group in self.groups:
            if not isinstance(group.count, int) or group.count == 0:
                raise SunSpecError(f"group {group.name} has a variable count")
            total += group.count * group.fixed_length()
        return total


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A SunSpec model definition (``model_<id>.json`` of pysunspec2)."""

    id: int
    name: str
    label: str
    group: GroupDef


def _point_def(raw: Mapping[str, Any]) -> PointDef:
    ptype = str(raw["type"])
    if ptype not in _TYPES:
        raise SunSpecError(f"point {raw.get('name')!r}: unknown SunSpec type {ptype!r}")
    size = int(raw.get("size") or _TYPE_LENGTH.get(ptype) or _TYPES[ptype][0].register_count)
    sf = raw.get("sf")
    if isinstance(sf, str) and re.fullmatch(r"-?\d+", sf):
        sf = int(sf)  # a constant exponent written as text
    symbols = tuple(
        (int(s["value"]), str(s["name"]))
        for s in raw.get("symbols", ())
        if isinstance(s.get("value"), int | str) and str(s["value"]).lstrip("-").isdigit()
    )
    return PointDef(
        name=str(raw["name"]),
        type=ptype,
        size=size,
        sf=sf if isinstance(sf, int | str) else None,
        units=str(raw["units"]).strip() if raw.get("units") else None,
        writable=raw.get("access", "R") == "RW",
        mandatory=raw.get("mandatory", "O") == "M",
        static=raw.get("static", "D") == "S",
        symbols=symbols,
        label=str(raw.get("label", "")),
    )


def _group_def(raw: Mapping[str, Any]) -> GroupDef:
    count = raw.get("count", 1)
    if isinstance(count, str) and count.isdigit():
        count = int(count)
    return GroupDef(
        name=str(raw["name"]),
        points=tuple(_point_def(p) for p in raw.get("points", ())),
        groups=tuple(_group_def(g) for g in raw.get("groups", ())),
        count=count if isinstance(count, int | str) else 1,
    )


def _definitions_dir() -> Any:
    return resources.files("sunspec2") / "models" / "json"


@cache
def model_def(model_id: int) -> ModelDef | None:
    """The official definition of ``model_id``, or None when pysunspec2 has none.

    Read from the package's files, not through ``sunspec2.device.get_model_def``, which
    looks in the current directory first.
    """
    path = _definitions_dir() / f"model_{model_id}.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    group = _group_def(raw["group"])
    return ModelDef(int(raw["id"]), group.name, str(raw["group"].get("label", "")), group)


@cache
def known_model_ids() -> frozenset[int]:
    """Every model id pysunspec2 has a definition of."""
    ids: set[int] = set()
    for entry in _definitions_dir().iterdir():
        match = re.fullmatch(r"model_(\d+)\.json", entry.name)
        if match:
            ids.add(int(match.group(1)))
    return frozenset(ids)


def layout(
    definition: ModelDef, counts: Mapping[str, int] | None = None
) -> list[tuple[str, PointDef, int]]:
    """Every point of a model as (path, definition, offset from the ID register), with the
    repeating groups repeated ``counts[group name]`` times (default: a fixed count as
    defined, none of a variable one). For building register images (the simulator)."""
    given = counts or {}
    out: list[tuple[str, PointDef, int]] = []

    def walk(group: GroupDef, offset: int, prefix: str) -> int:
        for point in group.points:
            out.append((prefix + point.name, point, offset))
            offset += point.size
        for nested in group.groups:
            fixed = nested.count if isinstance(nested.count, int) and nested.count > 0 else 0
            count = given.get(nested.name, fixed)
            for index in range(count):
                name = f"{nested.name}[{index + 1}]" if nested.count != 1 else nested.name
                offset = walk(nested, offset, f"{prefix}{name}.")
        return offset

    walk(definition.group, 0, "")
    return out


# ---------------------------------------------------------------------------- discovery


@dataclass(frozen=True, slots=True)
class ModelHeader:
    """Where one model of a device's chain lives: ``address`` is its ID register."""

    id: int
    address: int
    length: int
    """L: registers after the two header registers."""

    @property
    def end(self) -> int:
        """First address after the model."""
        return self.address + HEADER_LENGTH + self.length


def is_marker(words: Sequence[int]) -> bool:
    """True when ``words`` are the ``SunS`` marker."""
    return tuple(words[:2]) == MARKER


def parse_header(address: int, words: Sequence[int]) -> ModelHeader | None:
    """The header at ``address`` (its two words), or None at the end marker.

    Raises ``SunSpecError`` for a length that runs past the address space.
    """
    if len(words) < HEADER_LENGTH:
        raise SunSpecError(f"model header at {address}: needs 2 registers, got {len(words)}")
    model_id, length = int(words[0]), int(words[1])
    if model_id == END_MODEL_ID:
        return None
    header = ModelHeader(model_id, address, length)
    if header.end > 0x10000:
        raise SunSpecError(
            f"model {model_id} at {address} claims {length} registers, past address 65535"
        )
    return header


# ---------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class DecodedPoint:
    """One point of a model as read: raw and engineering value, or missing."""

    path: str
    """Point name within the model: ``W``, ``PFWInj.PF``, ``module[1].DCA``."""
    definition: PointDef
    address: int
    words: tuple[int, ...]
    raw: int | float | str | None
    """As the registers hold it; None when the point is not implemented."""
    value: float | str | None
    """``raw × 10^sf`` (text for strings); None when missing (not implemented, or its
    scale factor is not)."""
    sf: int | None = None
    """The exponent applied, when the point has a scale factor."""
    sf_address: int | None = None
    """Where that scale factor lives (None for a constant or no scale factor)."""

    @property
    def implemented(self) -> bool:
        return self.raw is not None

    @property
    def symbol(self) -> str | None:
        """The name of an enumeration's value, or the set bits of a bitfield."""
        d = self.definition
        if not isinstance(self.raw, int) or not d.symbols:
            return None
        if d.type in _ENUMS:
            return dict(d.symbols).get(self.raw)
        if d.type in _BITFIELDS:
            names = [name for bit, name in d.symbols if self.raw >> bit & 1]
            return "|".join(names) if names else None
        return None

    def register_spec(self, scale_exponent: int | None = None) -> RegisterSpec:
        """The codec's description of the point, scaled by ``10^sf`` (the one read, unless
        ``scale_exponent`` is given)."""
        exponent = self.sf if scale_exponent is None else scale_exponent
        return _spec(self.definition, self.address, self.path, exponent or 0)


@dataclass(frozen=True, slots=True)
class DecodedModel:
    """A model of a device, decoded."""

    id: int
    name: str
    label: str
    address: int
    """Address of the model's ID register."""
    length: int
    points: tuple[DecodedPoint, ...]
    known: bool = True
    """False when pysunspec2 has no definition of the id (then there are no points)."""
    _index: dict[str, DecodedPoint] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update((p.path, p) for p in self.points)

    def point(self, path: str) -> DecodedPoint | None:
        return self._index.get(path)

    def value(self, path: str) -> float | str | None:
        point = self._index.get(path)
        return None if point is None else point.value


def _scale(raw: int, exponent: int) -> float:
    # 10^-n is not exact in binary: divide by the exact 10^n instead (2305 / 10 = 230.5).
    if exponent < 0:
        divisor: int = 10 ** (-exponent)
        return raw / divisor
    factor: int = 10**exponent
    return float(raw * factor)  # an int: exact


def _spec(point: PointDef, address: int, path: str, exponent: int = 0) -> RegisterSpec:
    dtype = point.dtype
    return RegisterSpec(
        point=path,
        table=Table.HOLDING,
        address=address,
        dtype=dtype,
        length=point.size if dtype is DataType.STRING else 1,
        scale=10.0**exponent,
    )


def _raw_value(
    point: PointDef, address: int, path: str, words: Sequence[int]
) -> int | float | str | None:
    """The raw value of a point, or None when it holds its type's "not implemented" value."""
    if point.type == "pad":
        return None
    if point.type == "ipv6addr":
        return None if not any(words) else ":".join(f"{w:04x}" for w in words)
    if point.type == "string":
        if not any(words):
            return None
        try:
            text = decode_raw(_spec(point, address, path), words)
        except DecodeError:
            # Not UTF-8: show the bytes rather than lose the point.
            text = b"".join(struct.pack(">H", w) for w in words).rstrip(b"\0").decode("latin-1")
        return str(text) if text != "" else None
    try:
        raw = decode_raw(_spec(point, address, path), words)
    except DecodeError:
        return None  # NaN (the float types' "not implemented") or another non-number
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else None
    if isinstance(raw, str):  # not reached: text types are handled above
        return raw
    if raw == _TYPES[point.type][1]:
        return None
    if point.type == "eui48":
        return ":".join(f"{b:02x}" for b in raw.to_bytes(8, "big")[2:])
    if point.type == "ipaddr":
        return ".".join(str(b) for b in raw.to_bytes(4, "big"))
    return raw


@dataclass
class _Scope:
    """The decoded points of one group instance, with its enclosing instances (for scale
    factors and counts, which the definitions look up outward)."""

    points: dict[str, tuple[DecodedPoint, int | float | str | None]]
    parent: _Scope | None

    def find(self, name: str) -> tuple[DecodedPoint, int | float | str | None] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.points:
                return scope.points[name]
            scope = scope.parent
        return None


def decode_model(header: ModelHeader, words: Sequence[int]) -> DecodedModel:
    """Decode a model from its words (``header.length + 2`` of them, from the ID register).

    Raises ``SunSpecError`` when the words do not fit the definition (wrong id, a repeating
    group that does not divide the remaining length, a count past the model's end).
    """
    expected = header.length + HEADER_LENGTH
    if len(words) != expected:
        raise SunSpecError(f"model {header.id} at {header.address}: needs {expected} words")
    if words[0] != header.id:
        raise SunSpecError(
            f"model at {header.address}: ID register holds {words[0]}, not {header.id}"
        )
    definition = model_def(header.id)
    if definition is None:
        return DecodedModel(
            header.id, f"model_{header.id}", "", header.address, header.length, (), known=False
        )
    out: list[DecodedPoint] = []
    end = _decode_group(
        definition.group, header, words, 0, prefix="", parent=None, out=out, top=True
    )
    if end > len(words):
        raise SunSpecError(
            f"model {header.id} at {header.address}: the definition needs {end - 2} registers, "
            f"the device gives L={header.length}"
        )
    return DecodedModel(
        header.id, definition.name, definition.label, header.address, header.length, tuple(out)
    )


def _decode_group(
    group: GroupDef,
    header: ModelHeader,
    words: Sequence[int],
    offset: int,
    *,
    prefix: str,
    parent: _Scope | None,
    out: list[DecodedPoint],
    top: bool = False,
) -> int:
    """Decode one instance of ``group`` at ``offset``; the offset after it."""
    scope = _Scope({}, parent)
    pending: list[tuple[PointDef, int, str, tuple[int, ...], int | float | str | None]] = []
    for point in group.points:
        chunk = tuple(words[offset : offset + point.size])
        path = prefix + point.name
        if len(chunk) < point.size:
            # Older devices end models early (a shorter L than today's definition): the
            # points they leave out are missing.
            raw = None
            chunk = ()
        else:
            raw = _raw_value(point, header.address + offset, path, chunk)
        pending.append((point, header.address + offset, path, chunk, raw))
        scope.points[point.name] = (
            DecodedPoint(path, point, header.address + offset, chunk, raw, None),
            raw,
        )
        offset += point.size
    # Scale factors can come after the points they scale: resolve once all are read.
    for point, address, path, chunk, raw in pending:
        decoded = _scaled(point, address, path, chunk=chunk, raw=raw, scope=scope)
        scope.points[point.name] = (decoded, raw)
        out.append(decoded)
    for nested in group.groups:
        count = _count(nested, header, words, offset, scope)
        for index in range(count):
            name = f"{nested.name}[{index + 1}]" if nested.count != 1 else nested.name
            offset = _decode_group(
                nested, header, words, offset, prefix=f"{prefix}{name}.", parent=scope, out=out
            )
            if offset > len(words):
                # Stop at the first instance past the end: counts are device registers,
                # and NCrv x NPt of 65534 each would take hours to walk before the same
                # verdict (found by benchmarks/fuzz/fuzz.py).
                raise SunSpecError(
                    f"model {header.id} at {header.address}: {count} instances of group "
                    f"{nested.name} run past the model's L={header.length} registers"
                )
    if top and offset < len(words):
        # A device may implement a longer model than the definition (vendor extension).
        pass
    return offset


def _count(
    group: GroupDef, header: ModelHeader, words: Sequence[int], offset: int, scope: _Scope
) -> int:
    count = group.count
    if isinstance(count, str):
        found = scope.find(count)
        raw = None if found is None else found[1]
        if not isinstance(raw, int):
            return 0  # the count point is not implemented: no instances to read
        count = raw
    if count == 0:
        # Legacy repeating group: as many instances as the rest of the model holds.
        size = group.fixed_length()
        remaining = len(words) - offset
        if size == 0 or remaining % size:
            raise SunSpecError(
                f"model {header.id} at {header.address}: {remaining} registers left for "
                f"repeating group {group.name} of {size} registers each"
            )
        return remaining // size
    return count


def _scaled(
    point: PointDef,
    address: int,
    path: str,
    *,
    chunk: tuple[int, ...],
    raw: int | float | str | None,
    scope: _Scope,
) -> DecodedPoint:
    sf = point.sf
    if raw is None or isinstance(raw, str) or point.type == "pad":
        return DecodedPoint(path, point, address, chunk, raw, raw)
    if point.type == "sunssf":
        return DecodedPoint(path, point, address, chunk, raw, float(raw))
    if sf is None:
        return DecodedPoint(path, point, address, chunk, raw, float(raw))
    if isinstance(sf, int):
        return DecodedPoint(path, point, address, chunk, raw, _scaled_number(raw, sf), sf)
    found = scope.find(sf)
    sf_raw = None if found is None else found[1]
    if not isinstance(sf_raw, int) or not -10 <= sf_raw <= 10:
        # Without its scale factor the number means nothing: missing, not a guess.
        return DecodedPoint(path, point, address, chunk, raw, None)
    sf_address = None if found is None else found[0].address
    return DecodedPoint(
        path, point, address, chunk, raw, _scaled_number(raw, sf_raw), sf_raw, sf_address
    )


def _scaled_number(raw: int | float, exponent: int) -> float:
    if isinstance(raw, int):
        return _scale(raw, exponent)
    return raw * 10.0**exponent


def unimplemented_words(point: PointDef) -> list[int]:
    """The words of a point that a device does not implement (for simulators and tests)."""
    if point.type in ("string", "ipv6addr", "pad", "acc16", "acc32", "acc64", "ipaddr"):
        return [0] * point.size
    if point.type == "float32":
        return [0x7FC0, 0x0000]
    if point.type == "float64":
        return [0x7FF8, 0, 0, 0]
    sentinel = _TYPES[point.type][1]
    assert sentinel is not None  # noqa: S101  # every other type has one (table above)
    return encode_raw(_spec(point, 0, point.name), sentinel)


# ---------------------------------------------------------------------------- writes


def write_range(point: DecodedPoint) -> tuple[float, float] | None:
    """The values a write of ``point`` may carry, in its unit: the register type's range
    (without its "not implemented" value) times the scale, narrowed to the physical bounds
    of a percentage (0..100, or -100..100 when signed; percentages of nominal voltage
    only by their register) or a power factor (0..1 or -1..1);
    the symbols' span for an enumeration. None for points that are not numbers."""
    d = point.definition
    bound = _physical_bound(d)
    if d.dtype in (DataType.FLOAT32, DataType.FLOAT64):
        limit = 3.4e38 if bound is None else bound
        return (-limit, limit)
    if d.type in _TEXT or d.type in _NOT_VALUES:
        return None
    if d.type in _ENUMS and d.symbols:
        values = [v for v, _ in d.symbols]
        return (float(min(values)), float(max(values)))
    low, high = _raw_limits(d)
    exponent = point.sf or 0
    low_v, high_v = _scale(low, exponent), _scale(high, exponent)
    if bound is not None:
        signed = low < 0
        low_v, high_v = max(low_v, -bound if signed else 0.0), min(high_v, bound)
    return (low_v, high_v)


def _raw_limits(d: PointDef) -> tuple[int, int]:
    bits = 16 * d.size if d.size <= 4 else 64
    sentinel = _TYPES[d.type][1]
    if d.dtype in (DataType.INT16, DataType.INT32, DataType.INT64):
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if sentinel == low:
            low += 1
        return low, high
    low, high = 0, 2**bits - 1
    if sentinel == high:
        high -= 1
    elif sentinel == low:
        low += 1
    return low, high


def _physical_bound(d: PointDef) -> float | None:
    suffix = _unit_suffix(d)
    if suffix == "_pct" and d.units not in _UNBOUNDED_PERCENT_UNITS:
        return 100.0
    if suffix == "_pf":
        return 1.0
    return None


def encode_write(point: DecodedPoint, value: float) -> list[int]:
    """The words that set ``point`` to ``value`` (in its unit), after checking that the
    point can take it: writable, implemented, its scale factor known, the value within
    ``write_range`` and, for an enumeration, one of its symbols.

    Raises ``SunSpecWriteError`` saying which check failed.
    """
    d = point.definition
    where = f"SunSpec point {point.path} at {point.address}"
    if not d.writable:
        raise SunSpecWriteError(f"{where} is read-only (access R in the SunSpec definition)")
    if not point.implemented:
        raise SunSpecWriteError(
            f"{where} is not implemented by this device (it reads as its 'not implemented' value)"
        )
    if isinstance(d.sf, str) and point.sf is None:
        raise SunSpecWriteError(
            f"{where}: its scale factor {d.sf} is not implemented, so no value can be encoded"
        )
    if d.type in _TEXT or d.type in _NOT_VALUES:
        raise SunSpecWriteError(f"{where} is a {d.type}; commands set numbers")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SunSpecWriteError(f"{where}: {value!r} is not a finite number")
    limits = write_range(point)
    if limits is not None and not limits[0] <= value <= limits[1]:
        unit = f" {d.units}" if d.units else ""
        raise SunSpecWriteError(
            f"{where}: {value:g}{unit} is outside [{limits[0]:g}, {limits[1]:g}]"
        )
    if d.type in _ENUMS and d.symbols:
        names = dict(d.symbols)
        if value not in names:
            choices = ", ".join(f"{v} ({n})" for v, n in d.symbols)
            raise SunSpecWriteError(f"{where}: {value:g} is not one of {choices}")
    spec = point.register_spec()
    if d.dtype in (DataType.FLOAT32, DataType.FLOAT64):
        return encode_raw(spec, float(value))
    exponent = point.sf or 0
    raw = round(value * 10 ** (-exponent)) if exponent < 0 else round(value / 10**exponent)
    low, high = _raw_limits(d)
    if not low <= raw <= high:
        raise SunSpecWriteError(f"{where}: {value:g} does not fit the register ({d.type})")
    return encode_raw(spec, raw)


# ---------------------------------------------------------------------------- point names

_PERCENT_UNITS: Final = frozenset({"Pct", "%", "VNomPct", "WMaxPct", "VarPct", "%WHRtg", "DeptRef"})
"""Units that are percentages. ``DeptRef``: a curve's dependent axis in 705/706/711/712, a
percentage of the reference the curve's own ``DeptRef`` point names (WMax, VarMax, VAMax)."""
_UNBOUNDED_PERCENT_UNITS: Final = frozenset({"VNomPct"})
"""Percentages that may pass 100 (a volt-var point at 108 % of nominal voltage)."""
_UNIT_SUFFIX: Final = {
    "V": "_v",
    "A": "_a",
    "W": "_w",
    "VA": "_va",
    "var": "_var",
    "Var": "_var",
    "VAr": "_var",
    "Wh": "_wh",
    "WH": "_wh",
    "VAh": "_vah",
    "varh": "_varh",
    "Varh": "_varh",
    "Hz": "_hz",
    "C": "_degc",
    "Secs": "_s",
    "S": "_s",
    "s": "_s",
    "PF": "_pf",
    "cos()": "_pf",
    "Ah": "_ah",
    "AH": "_ah",
}


def _unit_suffix(d: PointDef) -> str | None:
    units = d.units
    if units is None:
        if d.name == "PF":
            return "_pf"  # 704's PFWInj.PF etc.: a power factor without a units entry
        if d.type in _ENUMS or d.type in _BITFIELDS:
            return "_state"
        if d.type in _COUNTERS:
            return "_count"
        return None
    if units in _UNIT_SUFFIX:
        return _UNIT_SUFFIX[units]
    if "/" in units:
        return None  # rates (% per second): no suffix says that
    if units in _PERCENT_UNITS or units.startswith("%") or units.endswith("Pct"):
        return "_pct"
    return None


def _slug(text: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "_", text.lower())
    return text.strip("_")


def point_name(model_id: int, path: str, point: PointDef, instance: int = 1) -> str | None:
    """The GridPilot point name of a SunSpec point (see the module docstring), or None for
    what is not published: text, scale factors, pads, the header, and units without a
    point-name suffix."""
    if point.type in _TEXT or point.type in _NOT_VALUES or path in ("ID", "L"):
        return None
    suffix = _unit_suffix(point)
    if suffix is None:
        return None
    prefix = f"m{model_id}" if instance == 1 else f"m{model_id}_{instance}"
    slug = _slug(path.replace("[", "_").replace("]", ""))
    token = suffix[1:]
    name = (
        f"{prefix}_{slug}" if slug == token or slug.endswith(suffix) else f"{prefix}_{slug}{suffix}"
    )
    if not is_valid_identifier(name) or unit_of(name) is None:
        return None
    return name


def published_values(
    models: Iterable[DecodedModel],
    *,
    model_ids: Iterable[int] | None = None,
    points: Iterable[str] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """The values to publish, by point name, and the names of points that are missing
    (not implemented, or unscalable) -- those are absent from the values, never numbers.

    ``model_ids`` keeps only those models, ``points`` only those point names.
    """
    wanted_models = None if model_ids is None else frozenset(model_ids)
    wanted_points = None if points is None else frozenset(points)
    values: dict[str, float] = {}
    missing: list[str] = []
    seen: dict[int, int] = {}
    for model in models:
        seen[model.id] = instance = seen.get(model.id, 0) + 1
        if wanted_models is not None and model.id not in wanted_models:
            continue
        for point in model.points:
            name = point_name(model.id, point.path, point.definition, instance)
            if name is None or (wanted_points is not None and name not in wanted_points):
                continue
            if isinstance(point.value, float):
                values[name] = point.value
            else:
                missing.append(name)
    return values, missing
