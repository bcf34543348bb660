"""SunSpec decoding and encoding from pysunspec2's official model definitions (pure)."""

from __future__ import annotations

import asyncio
import math
import struct

import pytest

from gridpilot.fieldbus import sunspec
from gridpilot.fieldbus.errors import DeviceRejected
from gridpilot.fieldbus.sunspec import (
    DecodedModel,
    ModelHeader,
    SunSpecError,
    SunSpecWriteError,
    decode_model,
    encode_write,
    layout,
    model_def,
    point_name,
    published_values,
    unimplemented_words,
    write_range,
)
from gridpilot.fieldbus.sunspec_io import NotSunSpecError, discover, read_models
from gridpilot.model import is_valid_identifier, unit_of

COVERED = [
    *(1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 160),
    *(201, 202, 203, 204, 211, 212, 213, 214),
    *range(701, 714),
    802,
]


def text_words(text: str, size: int) -> list[int]:
    data = text.encode().ljust(size * 2, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def model_words(
    model_id: int, values: dict[str, list[int]], counts: dict[str, int] | None = None
) -> list[int]:
    """A model's words with every point "not implemented" except ``values`` (raw words)."""
    definition = model_def(model_id)
    assert definition is not None
    items = layout(definition, counts)
    length = sum(p.size for _, p, _ in items) - 2
    words: list[int] = []
    for path, point, _ in items:
        if path == "ID":
            words.append(model_id)
        elif path == "L":
            words.append(length)
        elif path in values:
            assert len(values[path]) == point.size, path
            words.extend(values[path])
        else:
            words.extend(unimplemented_words(point))
    return words


def decode(
    model_id: int,
    values: dict[str, list[int]],
    counts: dict[str, int] | None = None,
    address: int = 40002,
) -> DecodedModel:
    words = model_words(model_id, values, counts)
    return decode_model(ModelHeader(model_id, address, len(words) - 2), words)


def s16(value: int) -> list[int]:
    return [value & 0xFFFF]


def u32(value: int) -> list[int]:
    return [value >> 16, value & 0xFFFF]


def f32(value: float) -> list[int]:
    raw = struct.unpack(">I", struct.pack(">f", value))[0]
    return [raw >> 16, raw & 0xFFFF]


# ---------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("model_id", COVERED)
def test_every_covered_model_has_an_official_definition(model_id: int) -> None:
    definition = model_def(model_id)
    assert definition is not None
    assert definition.id == model_id
    assert [p.name for p in definition.group.points[:2]] == ["ID", "L"]


@pytest.mark.parametrize("model_id", COVERED)
def test_an_all_unimplemented_model_decodes_to_missing_values_only(model_id: int) -> None:
    """Every point of every covered model at its sentinel: nothing is a number."""
    counts = {g.name: 2 for g in _repeating(model_id)}
    count_points = {g.count: s16(2) for g in _repeating(model_id) if isinstance(g.count, str)}
    model = decode(model_id, count_points, counts)
    values, missing = published_values([model])
    # Only the group counts set above hold numbers; every other point is missing.
    numbers = [
        p.path
        for p in model.points
        if p.value is not None and p.path not in ("ID", "L", *count_points)
    ]
    assert numbers == []
    assert all(name.startswith(f"m{model_id}_n") for name in values)
    assert missing  # and the missing ones are reported by name


@pytest.mark.parametrize("model_id", COVERED)
def test_point_names_of_every_covered_model_follow_the_naming_rules(model_id: int) -> None:
    definition = model_def(model_id)
    assert definition is not None
    counts = {g.name: 3 for g in _repeating(model_id)}
    names = [point_name(model_id, path, point) for path, point, _ in layout(definition, counts)]
    published = [n for n in names if n is not None]
    assert published, "every covered model publishes something"
    assert len(published) == len(set(published)), "names are unique within a model"
    for name in published:
        assert is_valid_identifier(name), name
        assert unit_of(name) is not None, name


def _repeating(model_id: int) -> list[sunspec.GroupDef]:
    definition = model_def(model_id)
    assert definition is not None
    found: list[sunspec.GroupDef] = []

    def walk(group: sunspec.GroupDef) -> None:
        for nested in group.groups:
            if nested.count != 1:
                found.append(nested)
            walk(nested)

    walk(definition.group)
    return found


# ---------------------------------------------------------------------------- decoding


def test_inverter_103_values_are_scaled_by_their_scale_factor_registers() -> None:
    model = decode(
        103,
        {
            "A": [1234], "A_SF": s16(-2),
            "PhVphA": [2305], "V_SF": s16(-1),
            "W": s16(-150), "W_SF": s16(1),
            "Hz": [5001], "Hz_SF": s16(-2),
            "WH": u32(123456), "WH_SF": s16(3),
            "TmpCab": s16(-52), "Tmp_SF": s16(-1),
            "St": [4],
        },
    )  # fmt: skip
    assert model.value("A") == 12.34
    assert model.value("PhVphA") == 230.5
    assert model.value("W") == -1500.0
    assert model.value("Hz") == 50.01
    assert model.value("WH") == 123_456_000.0
    assert model.value("TmpCab") == -5.2
    st = model.point("St")
    assert st is not None
    assert st.value == 4.0
    assert st.symbol == "MPPT"
    values, missing = published_values([model])
    assert values["m103_w"] == -1500.0
    assert values["m103_phvpha_v"] == 230.5
    assert values["m103_wh"] == 123_456_000.0
    assert values["m103_st_state"] == 4.0
    assert "m103_phvphb_v" in missing
    assert "m103_phvphb_v" not in values


@pytest.mark.parametrize(
    ("model_id", "path", "words", "sf"),
    [
        (103, "W", [0x8000], "W_SF"),  # int16
        (103, "A", [0xFFFF], "A_SF"),  # uint16
        (103, "WH", [0, 0], "WH_SF"),  # acc32 0: not accumulated
        (103, "St", [0xFFFF], None),  # enum16
        (103, "Evt1", [0xFFFF, 0xFFFF], None),  # bitfield32
        (122, "PVConn", [0xFFFF], None),  # bitfield16
        (122, "ActWh", [0, 0, 0, 0], None),  # acc64
        (704, "WSet", [0x8000, 0], "WSet_SF"),  # int32
        (704, "WMaxLimPctRvrtTms", [0xFFFF, 0xFFFF], None),  # uint32
        (701, "TotWhInj", [0xFFFF] * 4, "TotWh_SF"),  # uint64
        (113, "W", [0x7FC0, 0], None),  # float32 NaN
        (1, "SN", [0] * 16, None),  # string of NULs
    ],
)
def test_not_implemented_sentinels_are_missing_never_numbers(
    model_id: int, path: str, words: list[int], sf: str | None
) -> None:
    values = {path: words}
    if sf is not None:
        values[sf] = s16(0)
    point = decode(model_id, values).point(path)
    assert point is not None
    assert point.raw is None
    assert point.value is None
    assert not point.implemented


def test_a_value_whose_scale_factor_is_not_implemented_is_missing() -> None:
    model = decode(103, {"W": s16(1000), "W_SF": [0x8000]})
    assert model.point("W") is not None
    assert model.value("W") is None  # 1000 without its scale means nothing


def test_values_one_below_the_sentinel_are_numbers() -> None:
    model = decode(103, {"W": s16(-32767), "A": [0xFFFE], "W_SF": s16(0), "A_SF": s16(0)})
    assert model.value("W") == -32767.0
    assert model.value("A") == 65534.0


def test_float_meter_213_decodes_ieee754_without_scale_factors() -> None:
    model = decode(213, {"W": f32(-4100.5), "Hz": f32(49.98), "TotWhImp": f32(1.5e6)})
    assert model.value("W") == -4100.5
    assert math.isclose(model.value("Hz") or 0.0, 49.98, rel_tol=1e-6)
    assert model.value("TotWhImp") == 1.5e6
    assert model.value("PhVphA") is None


def test_common_model_text_points() -> None:
    model = decode(1, {"Mn": text_words("SunSpecCo", 16), "SN": text_words("ABC-1", 16)})
    assert model.value("Mn") == "SunSpecCo"
    assert model.value("SN") == "ABC-1"
    assert model.value("Md") is None
    assert published_values([model])[0] == {}  # text is not telemetry


def test_legacy_repeating_group_160_fills_the_model_length() -> None:
    model = decode(
        160,
        {
            "DCW_SF": s16(1), "N": [2],
            "module[1].DCW": [1500], "module[2].DCW": [1200],
            "module[1].IDStr": text_words("east", 8),
        },
        counts={"module": 2},
    )  # fmt: skip
    assert model.value("module[1].DCW") == 15000.0
    assert model.value("module[2].DCW") == 12000.0
    assert model.value("module[1].IDStr") == "east"
    values, _ = published_values([model])
    assert values["m160_module_1_dcw_w"] == 15000.0
    assert values["m160_module_2_dcw_w"] == 12000.0


def test_counted_nested_groups_of_705_follow_their_count_points() -> None:
    # 705 volt-var: NCrv curves of NPt points each, counted by top-level points.
    model = decode(
        705,
        {"NCrv": [2], "NPt": [3], "V_SF": s16(-1), "Crv[2].Pt[3].V": [1080]},
        counts={"Crv": 2, "Pt": 3},
    )
    assert model.value("Crv[2].Pt[3].V") == 108.0
    assert model.point("Crv[1].Pt[1].V") is not None
    assert model.value("Crv[1].Pt[1].V") is None


def test_a_model_longer_than_the_device_leaves_is_refused() -> None:
    words = model_words(103, {})
    with pytest.raises(SunSpecError, match="needs"):
        decode_model(ModelHeader(103, 0, 10), words[:12])


def test_an_unknown_model_id_is_kept_without_points() -> None:
    model = decode_model(ModelHeader(64999, 0, 2), [64999, 2, 1, 2])
    assert not model.known
    assert model.points == ()


# ---------------------------------------------------------------------------- writes


def test_704_power_limit_is_encoded_with_its_scale_factor_and_checked() -> None:
    model = decode(704, {"WMaxLimPct": [1000], "WMaxLimPct_SF": s16(-1), "WMaxLimPctEna": [0]})
    point = model.point("WMaxLimPct")
    assert point is not None
    assert point.value == 100.0
    assert encode_write(point, 42.5) == [425]
    assert write_range(point) == (0.0, 100.0)
    with pytest.raises(SunSpecWriteError, match="outside"):
        encode_write(point, 120.0)
    enable = model.point("WMaxLimPctEna")
    assert enable is not None
    assert encode_write(enable, 1) == [1]
    with pytest.raises(SunSpecWriteError, match="not one of"):
        encode_write(enable, 0.5)


def test_704_power_factor_in_its_group() -> None:
    model = decode(704, {"PFWInj.PF": [1000], "PF_SF": s16(-3), "PFWInjEna": [0]})
    pf = model.point("PFWInj.PF")
    assert pf is not None
    assert pf.value == 1.0
    assert encode_write(pf, 0.95) == [950]
    with pytest.raises(SunSpecWriteError, match="outside"):
        encode_write(pf, 1.2)


def test_123_power_limit_and_its_enable() -> None:
    model = decode(123, {"WMaxLimPct": [100], "WMaxLimPct_SF": s16(0), "WMaxLim_Ena": [0]})
    point = model.point("WMaxLimPct")
    assert point is not None
    assert encode_write(point, 60) == [60]
    enable = model.point("WMaxLim_Ena")
    assert enable is not None
    assert enable.symbol == "DISABLED"
    assert encode_write(enable, 1) == [1]


def test_writes_refused_read_only_unimplemented_or_unscalable() -> None:
    model = decode(704, {"WMaxLimPct": [500]})  # no WMaxLimPct_SF
    limit = model.point("WMaxLimPct")
    assert limit is not None
    with pytest.raises(SunSpecWriteError, match="scale factor"):
        encode_write(limit, 10.0)
    remaining = model.point("WMaxLimPctRvrtRem")
    assert remaining is not None
    with pytest.raises(SunSpecWriteError, match="read-only"):
        encode_write(remaining, 1.0)
    wset = model.point("WSet")
    assert wset is not None
    with pytest.raises(SunSpecWriteError, match="not implemented"):
        encode_write(wset, 1000.0)


def test_a_write_never_produces_the_sentinel() -> None:
    model = decode(704, {"WSet": u32(0), "WSet_SF": s16(0)})
    wset = model.point("WSet")
    assert wset is not None
    low, _ = write_range(wset) or (0.0, 0.0)
    assert low == -(2**31) + 1
    with pytest.raises(SunSpecWriteError):
        encode_write(wset, -(2.0**31))


# ---------------------------------------------------------------------------- discovery


class FakeDevice:
    """Holding registers of one SunSpec device from ``base``; other addresses are refused
    like a real device refuses them (exception 2). Counts the reads."""

    def __init__(self, base: int, chain: list[list[int]]) -> None:
        self.base = base
        self.words = [0x5375, 0x6E53, *[w for model in chain for w in model], 0xFFFF, 0]
        self.reads = 0

    async def read(self, address: int, count: int) -> list[int]:
        self.reads += 1
        offset = address - self.base
        if offset < 0 or offset + count > len(self.words):
            raise DeviceRejected(f"illegal address {address}", 2)
        return self.words[offset : offset + count]


@pytest.mark.parametrize("base", [40000, 50000, 0, 40001])
def test_discovery_finds_the_marker_and_walks_the_chain(base: int) -> None:
    common = model_words(1, {"Mn": text_words("Acme", 16)})
    inverter = model_words(103, {"W": s16(5000), "W_SF": s16(0)})
    control = model_words(704, {"WMaxLimPct": [800], "WMaxLimPct_SF": s16(-1)})
    device = FakeDevice(base, [common, inverter, control])

    async def run() -> list[DecodedModel]:
        found = await discover(device.read)
        assert found.base == base
        assert found.model_ids() == [1, 103, 704]
        assert found.headers[1].address == base + 2 + len(common)
        return await read_models(device.read, found)

    models = asyncio.run(run())
    assert [m.id for m in models] == [1, 103, 704]
    assert models[0].value("Mn") == "Acme"
    assert models[1].value("W") == 5000.0
    assert models[2].value("WMaxLimPct") == 80.0


def test_no_marker_is_reported_with_what_each_base_held() -> None:
    device = FakeDevice(40000, [])
    device.words[0] = 0x1234

    with pytest.raises(NotSunSpecError, match=r"40000 \(0x1234 0x6E53\).*50000 \(exception 2\)"):
        asyncio.run(discover(device.read))


def test_huge_curve_counts_are_refused_at_once_not_walked() -> None:
    # Found by benchmarks/fuzz/fuzz.py: NCrv = NPt = 3000 in a 705 of 2 curves x 4 points
    # walked 9 million group instances (minutes) before refusing; 65534 each, hours.
    words = model_words(705, {"NPt": [3000], "NCrv": [3000]}, {"Crv": 2, "Pt": 4})
    with pytest.raises(SunSpecError, match="3000 instances of group Pt run past"):
        decode_model(ModelHeader(705, 40002, len(words) - 2), words)
