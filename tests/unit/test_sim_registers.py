"""The simulated building composed, its register maps as data, and the register image."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from gridpilot.config import GridPilotConfig, semantic, validate_config_text
from gridpilot.fieldbus.codec import decode, encode
from gridpilot.model import ByteOrder, DataType, Table, WordOrder, unit_of
from gridpilot.sim.building import (
    AHU_FAN,
    BATTERY,
    DEVICE_IDS,
    GRID_METER,
    WEATHER_IO,
    Building,
    BuildingParams,
    UnknownPointError,
)
from gridpilot.sim.devices import BATTERY_MAP, DEVICE_MAPS, FAN, METER, PV, WEATHER, DeviceMap
from gridpilot.sim.image import (
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    RegisterImage,
    WriteRejectedError,
    saturating_encode,
)

WEDNESDAY_NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
SUNDAY_NOON = datetime(2026, 7, 5, 12, 0, tzinfo=UTC)
COARSE = BuildingParams(max_step_s=60.0)  # days of simulated time in a fraction of a second


@pytest.fixture
def building() -> Building:
    return Building(WEDNESDAY_NOON, seed=7)


def _config(maps: tuple[DeviceMap, ...] = DEVICE_MAPS) -> list[dict[str, object]]:
    return [m.config("127.0.0.1", 15020 + i) for i, m in enumerate(maps)]


# ------------------------------------------------------------------------------ building


def test_every_mapped_point_has_a_value_and_every_value_a_point(building: Building) -> None:
    assert {m.id for m in DEVICE_MAPS} == set(DEVICE_IDS)
    for device in DEVICE_MAPS:
        values = building.device_values(device.id)
        assert set(values) == {p.name for p in device.points}, device.id


def test_values_are_inside_their_valid_ranges_around_the_clock() -> None:
    building = Building(WEDNESDAY_NOON.replace(hour=0), COARSE)
    for _ in range(4 * 24 * 4):  # four days (Wednesday to Saturday) in 15-minute steps
        building.advance(900.0)
        for device in DEVICE_MAPS:
            values = building.device_values(device.id)
            for p in device.points:
                lo, hi = p.valid_range
                assert lo <= values[p.name] <= hi, (building.now, device.id, p.name)


def test_the_meter_balances_the_building(building: Building) -> None:
    building.write_point(BATTERY, "active_power_setpoint_w", 25_000.0)
    building.advance(60.0)
    s = building.state
    meter = building.device_values(GRID_METER)
    expected = (
        s.flows.base_w
        + sum(z.chiller_power_w for z in s.zones)
        + building.device_values(AHU_FAN)["power_w"]
        + building.device_values("load_panel")["total_power_w"]
        - building.device_values("pv_inverter")["ac_power_w"]
        - building.device_values(BATTERY)["active_power_w"]
    )
    assert meter["active_power_w"] == pytest.approx(expected)
    assert building.device_values(BATTERY)["active_power_w"] == pytest.approx(25_000.0)
    assert s.flows.base_w == pytest.approx(92_000.0, rel=0.1)  # weekday noon, ±noise


def test_load_panel_circuits_shed_and_restore(building: Building) -> None:
    building.advance(5.0)
    before = building.device_values(GRID_METER)["active_power_w"]
    panel = building.device_values("load_panel")
    assert panel["ev_chargers_power_w"] == 22_000.0
    building.write_point("load_panel", "ev_chargers_on_state", 0.0)
    building.advance(5.0)
    panel = building.device_values("load_panel")
    assert panel["ev_chargers_on_state"] == 0.0
    assert panel["ev_chargers_power_w"] == 0.0
    assert panel["total_power_w"] == 18_000.0
    # the meter sees the shed load go (the base load's noise is ~1.5 %)
    drop = before - building.device_values(GRID_METER)["active_power_w"]
    assert drop == pytest.approx(22_000.0, abs=5_000.0)
    building.set_extra_load(30_000.0)
    building.advance(5.0)
    assert building.state.flows.base_w > 30_000.0


def test_energy_counters_only_grow_and_export_happens_on_a_sunny_sunday() -> None:
    building = Building(SUNDAY_NOON.replace(hour=0), COARSE)
    counters = ("energy_import_wh", "energy_export_wh")
    last = {c: building.device_values(GRID_METER)[c] for c in counters}
    exported_at_noon = False
    for _ in range(24 * 4):
        building.advance(900.0)
        meter = building.device_values(GRID_METER)
        for c in counters:
            assert meter[c] >= last[c]
        if building.now.hour == 12:
            exported_at_noon = meter["active_power_w"] < 0.0
        last = {c: meter[c] for c in counters}
    assert exported_at_noon
    assert last["energy_export_wh"] > 3_527_400.0


def test_the_same_seed_gives_the_same_site() -> None:
    a, b = Building(WEDNESDAY_NOON, seed=3), Building(WEDNESDAY_NOON, seed=3)
    a.advance(600.0)
    b.advance(600.0)
    assert a.device_values(GRID_METER) == b.device_values(GRID_METER)
    assert a.now == b.now == WEDNESDAY_NOON + timedelta(seconds=600)


def test_every_writable_point_is_accepted_by_the_building(building: Building) -> None:
    for device in DEVICE_MAPS:
        for p in device.points:
            if p.writable:
                value = p.valid_range[1] if p.spec.table.is_bit else sum(p.valid_range) / 2
                building.write_point(device.id, p.name, value)
                assert building.device_values(device.id)[p.name] == pytest.approx(value)
            else:
                with pytest.raises(UnknownPointError):
                    building.write_point(device.id, p.name, 0.0)


def test_a_cut_loop_reads_zero_ma_and_out_of_range(building: Building) -> None:
    building.break_loop(0)
    values = building.device_values(WEATHER_IO)
    assert values["ai0_current_ma"] == 0.0
    assert values["ai0_fault_state"] == 1.0
    assert (
        values["outdoor_temperature_degc"]
        < WEATHER.point("outdoor_temperature_degc").valid_range[0]
    )
    building.break_loop(0, broken=False)
    assert building.device_values(WEATHER_IO)["ai0_fault_state"] == 0.0


# ------------------------------------------------------------------------------ register maps


def test_every_point_name_carries_a_unit_and_every_range_is_ordered() -> None:
    for device in DEVICE_MAPS:
        for p in device.points:
            assert unit_of(p.name) is not None, p.name
            assert p.valid_range[0] < p.valid_range[1], p.name
            if p.writable:
                assert p.spec.table.is_writable, p.name


def test_maps_exercise_many_encodings() -> None:
    specs = [p.spec for d in DEVICE_MAPS for p in d.points]
    dtypes = {s.dtype for s in specs}
    assert {
        DataType.FLOAT32,
        DataType.INT16,
        DataType.UINT16,
        DataType.INT32,
        DataType.UINT32,
        DataType.UINT64,
        DataType.BITFIELD,
        DataType.BOOL,
    } <= dtypes
    assert {s.table for s in specs} == set(Table)
    assert any(s.word_order is WordOrder.LITTLE and s.dtype is DataType.INT32 for s in specs)
    assert any(s.byte_order is ByteOrder.LITTLE for s in specs)
    assert any(s.bit is not None for s in specs)
    assert any(s.offset != 0 for s in specs)


def test_the_writable_points_and_their_ranges() -> None:
    writable = {(d.id, p.name): p for d in DEVICE_MAPS for p in d.points if p.writable}
    assert set(writable) == {
        ("battery", "active_power_setpoint_w"),
        ("pv_inverter", "power_limit_pct"),
        ("hvac_zone_1", "setpoint_degc"),
        ("hvac_zone_2", "setpoint_degc"),
        ("ahu_fan", "speed_setpoint_pct"),
        ("ahu_fan", "run_command_state"),
        ("load_panel", "ev_chargers_on_state"),
        ("load_panel", "water_heaters_on_state"),
        ("load_panel", "kitchen_extract_on_state"),
    }
    setpoint = writable[("battery", "active_power_setpoint_w")]
    assert setpoint.valid_range == (-50_000.0, 50_000.0)
    assert setpoint.spec.dtype is DataType.INT32
    assert setpoint.spec.word_order is WordOrder.LITTLE


def test_meter_energy_is_kwh_on_the_wire_and_wh_as_a_point() -> None:
    spec = METER.point("energy_import_wh").spec
    assert spec.dtype is DataType.FLOAT32
    assert spec.scale == 1000.0
    assert decode(spec, encode(spec, 48_213_600.0)) == pytest.approx(48_213_600.0, abs=4.0)
    # The registers hold 48213.6 (kWh) as an IEEE 754 float.
    words = encode(spec, 48_213_600.0)
    assert decode(METER.point("active_power_w").spec, words) == pytest.approx(48_213.6, abs=0.01)


def test_site_config_validates_including_cross_entry_checks() -> None:
    devices = _config()
    config = GridPilotConfig.model_validate({"site": {"id": "sim"}, "devices": devices})
    assert [d.id for d in config.devices] == [m.id for m in DEVICE_MAPS]
    assert config.devices[0].port == 15020
    assert config.device("battery") is not None
    assert list(semantic.check({"devices": devices})) == []
    text = yaml.safe_dump({"site": {"id": "sim"}, "devices": devices}, sort_keys=False)
    assert validate_config_text(text, "sim.yaml") == config
    battery = config.device("battery")
    assert battery is not None
    setpoint = battery.point("active_power_setpoint_w")
    assert setpoint is not None
    assert setpoint.writable
    assert setpoint.valid_range == (-50_000.0, 50_000.0)


# ------------------------------------------------------------------------------ image


@pytest.mark.parametrize("device", DEVICE_MAPS, ids=lambda d: d.id)
def test_image_round_trips_every_point(building: Building, device: DeviceMap) -> None:
    image = RegisterImage(device)
    values = building.device_values(device.id)
    image.update(values)
    for p in device.points:
        decoded = decode(p.spec, image.point_words(p))
        assert isinstance(decoded, float)
        resolution = abs(p.spec.scale) / 2 + 1e-9
        if p.spec.dtype is DataType.FLOAT32:
            resolution = abs(values[p.name]) * 1e-6 * abs(p.spec.scale) + 1e-6
        assert decoded == pytest.approx(values[p.name], abs=resolution), p.name


def test_weather_module_registers_hold_micro_amps(building: Building) -> None:
    image = RegisterImage(WEATHER)
    image.update(building.device_values(WEATHER_IO))
    currents = building.loop_currents_ma()
    spec = WEATHER.point("outdoor_temperature_degc").spec
    (raw,) = image.point_words(WEATHER.point("outdoor_temperature_degc"))
    assert raw == round(currents[0] * 1000.0)
    # value = lo + (I - 4)/16·(hi - lo) with lo = -30, hi = 70
    assert decode(spec, [raw]) == pytest.approx(-30.0 + (raw / 1000.0 - 4.0) / 16.0 * 100.0)
    assert decode(spec, [12_000]) == pytest.approx(20.0)


def test_status_bits_share_one_word() -> None:
    image = RegisterImage(BATTERY_MAP)
    image.update(
        {"soc_low_limit_state": 1.0, "soc_high_limit_state": 0.0, "power_limited_state": 1.0}
    )
    assert image.read(Table.INPUT, 1, 1) == [0b10100]
    image.update(
        {"soc_low_limit_state": 0.0, "soc_high_limit_state": 1.0, "power_limited_state": 0.0}
    )
    assert image.read(Table.INPUT, 1, 1) == [0b01000]


def test_gaps_between_points_read_as_zero_and_the_block_ends_at_the_last_point() -> None:
    image = RegisterImage(METER)
    assert image.blocks[Table.INPUT] == (0, 0x4C)
    assert Table.HOLDING not in image.blocks
    assert image.read(Table.INPUT, 0x12, 4) == [0, 0, 0, 0]
    with pytest.raises(IndexError):
        image.read(Table.INPUT, 0x4B, 2)


def test_a_whole_setpoint_write_is_applied() -> None:
    image = RegisterImage(BATTERY_MAP)
    spec = BATTERY_MAP.point("active_power_setpoint_w").spec
    applied = image.write(Table.HOLDING, 100, encode(spec, -30_000.0))
    assert [(a.point.name, a.value) for a in applied] == [("active_power_setpoint_w", -30_000.0)]
    assert decode(spec, image.read(Table.HOLDING, 100, 2)) == -30_000.0
    # Little word order: the low word comes first on the wire.
    assert image.read(Table.HOLDING, 100, 2) == [(-30_000) & 0xFFFF, 0xFFFF]


@pytest.mark.parametrize(
    ("table", "address", "words", "code"),
    [
        (Table.HOLDING, 100, [0x8AD0], ILLEGAL_DATA_ADDRESS),  # half of the int32
        (Table.HOLDING, 101, [0xFFFF], ILLEGAL_DATA_ADDRESS),  # the other half
        (Table.HOLDING, 100, [0x0000, 0x0001], ILLEGAL_DATA_VALUE),  # 65536 W > 50 kW
        (Table.HOLDING, 100, [0x3CB0, 0xFFFF, 0], ILLEGAL_DATA_ADDRESS),  # spills past the point
    ],
)
def test_bad_battery_writes_are_refused_and_change_nothing(
    table: Table, address: int, words: list[int], code: int
) -> None:
    image = RegisterImage(BATTERY_MAP)
    image.update({"active_power_setpoint_w": 1_000.0})
    before = image.words(table)
    with pytest.raises(WriteRejectedError) as caught:
        image.write(table, address, words)
    assert caught.value.exception_code == code
    assert image.words(table) == before


def test_read_only_points_refuse_writes() -> None:
    image = RegisterImage(PV)
    with pytest.raises(WriteRejectedError) as caught:
        image.write(Table.HOLDING, 40083, [100])
    assert caught.value.exception_code == ILLEGAL_DATA_ADDRESS
    limit = PV.point("power_limit_pct").spec
    (applied,) = image.write(Table.HOLDING, limit.address, encode(limit, 42.5))
    assert applied.value == pytest.approx(42.5)
    with pytest.raises(WriteRejectedError):
        image.write(Table.HOLDING, limit.address, [1001])  # 100.1 %


def test_coils_write_as_bits() -> None:
    image = RegisterImage(FAN)
    image.update({"run_command_state": 1.0})
    (applied,) = image.write(Table.COIL, 0, [0])
    assert applied.value == 0.0
    assert image.read(Table.COIL, 0, 1) == [0]
    with pytest.raises(WriteRejectedError):
        image.write(Table.COIL, 0, [0, 1])  # coil 1 does not exist


def test_saturating_encode_clips_at_the_register_limit() -> None:
    spec = PV.point("ac_power_w").spec  # int16 x10 W
    assert decode(spec, saturating_encode(spec, 400_000.0)) == 327_670.0
    assert decode(spec, saturating_encode(spec, -400_000.0)) == -327_680.0
    assert decode(spec, saturating_encode(spec, 1234.0)) == 1230.0
