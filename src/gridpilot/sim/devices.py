"""Register maps of the simulated devices, as data.

Each device is modelled on a real kind of product so that a gateway polling the simulator
meets the register layouts it will meet in the field:

=================  ===========================================  ==============================
device             modelled on                                  encodings exercised
=================  ===========================================  ==============================
``grid_meter``     Eastron SDM630 (input registers, IEEE 754)   float32 ABCD; energy in kWh
                                                                 scaled x1000 to Wh
``pv_inverter``    SunSpec model 101 style integer + fixed SF   int16/uint16 x10^n, uint32
                   (holding registers around 40070)             acc32, bitfield word, writable
                                                                 WMaxLimPct
``battery``        battery inverter with a 32-bit setpoint      int32 CDAB setpoint, int32,
                                                                 uint64, status bits
``hvac_zone_1/2``  room controller / thermostat                 int16 x0.01 °C, writable
                                                                 setpoint
``ahu_fan``        VFD (ABB/Danfoss-like profile)               coils, discrete inputs, uint16
                                                                 x0.01 %, float32 BADC, uint32
                                                                 CDAB energy
``weather_io``     4-channel 4-20 mA analog input module        uint16 µA scaled linearly to
                                                                 °C / % / W/m² by the config
``load_panel``     I/O coupler with relay outputs driving the   coils (contactors), uint16
                   contactors of sheddable circuits, plus a     x10 W, uint32 CDAB
                   power module per circuit
``analog_io``      Advantech ADAM-6017 on the outdoor loops     uint16 0-65535 = 0-20 mA; the
                   (the device library's profile)               site scales 4-20 mA (NE 43)
=================  ===========================================  ==============================

``grid_meter`` and ``analog_io`` are built from the device library's profiles
(``gridpilot.config.profiles``), so a site file can poll them with ``profile: NAME``.

Every point name ends with a unit suffix (``gridpilot.model.units``); every point has a
valid range; writable points are holding registers or coils. ``DeviceMap.config`` renders a
device as the YAML-ready dict of a site file's ``devices:`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from gridpilot.config.profiles import profile
from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.model import ByteOrder, DataType, Table, WordOrder
from gridpilot.sim.building import (
    AHU_FAN,
    ANALOG_IO,
    BATTERY,
    GRID_METER,
    HVAC_ZONE_1,
    HVAC_ZONE_2,
    IRRADIANCE_LOOP,
    LOAD_PANEL,
    OUTDOOR_HUMIDITY_LOOP,
    OUTDOOR_TEMPERATURE_LOOP,
    PV_INVERTER,
    WEATHER_IO,
)
from gridpilot.sim.physics import LoadPanelParams, LoopRange

BIG = WordOrder.BIG
LITTLE = WordOrder.LITTLE


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One point of a simulated device: where it lives, its valid range, whether writable."""

    spec: RegisterSpec
    valid_range: tuple[float, float]
    """[min, max] in the point's unit; writes outside are refused with exception 3."""
    writable: bool = False

    @property
    def name(self) -> str:
        return self.spec.point

    def config(self) -> dict[str, object]:
        """The point as a site-file ``points:`` entry (plain, YAML-ready values)."""
        s = self.spec
        entry: dict[str, object] = {
            "point": s.point,
            "table": s.table.value,
            "address": s.address,
            "type": s.dtype.value,
        }
        if s.dtype is DataType.STRING:
            entry["length"] = s.length
        if s.bit is not None:
            entry["bit"] = s.bit
        entry["word_order"] = s.word_order.value
        entry["byte_order"] = s.byte_order.value
        entry["scale"] = s.scale
        entry["offset"] = s.offset
        entry["valid_range"] = [self.valid_range[0], self.valid_range[1]]
        entry["writable"] = self.writable
        return entry


@dataclass(frozen=True, slots=True)
class DeviceMap:
    """A simulated device's identity and register map."""

    id: str
    name: str
    unit_id: int
    poll_interval_s: float
    points: tuple[SimPoint, ...]

    def point(self, name: str) -> SimPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"{self.id} has no point {name!r}")

    def config(self, host: str, port: int) -> dict[str, object]:
        """The device as a site-file ``devices:`` entry pointing at ``host:port``."""
        return {
            "id": self.id,
            "name": self.name,
            "protocol": "modbus_tcp",
            "host": host,
            "port": port,
            "unit_id": self.unit_id,
            "poll_interval": self.poll_interval_s,
            "timeout": min(1.0, self.poll_interval_s / 2),
            "points": [p.config() for p in self.points],
        }


def _point(
    name: str,
    table: Table,
    address: int,
    dtype: DataType,
    valid: tuple[float, float],
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    word_order: WordOrder = BIG,
    byte_order: ByteOrder = ByteOrder.BIG,
    bit: int | None = None,
    writable: bool = False,
) -> SimPoint:
    spec = RegisterSpec(
        point=name,
        table=table,
        address=address,
        dtype=dtype,
        bit=bit,
        word_order=word_order,
        byte_order=byte_order,
        scale=scale,
        offset=offset,
    )
    return SimPoint(spec, valid, writable)


def _loop_point(name: str, address: int, loop: LoopRange) -> SimPoint:
    """A 4-20 mA channel in µA, scaled to engineering units by the config's scale/offset."""
    scale, offset = loop.register_scale(raw_per_ma=1000.0)
    return _point(
        name, Table.INPUT, address, DataType.UINT16, loop.valid_range(), scale=scale, offset=offset
    )


_IR = Table.INPUT
_HR = Table.HOLDING
F32 = DataType.FLOAT32
POWER_W = (-1_000_000.0, 1_000_000.0)
ENERGY_WH = (0.0, 1e13)


def profile_map(
    name: str,
    device_id: str,
    title: str,
    *,
    unit_id: int,
    poll_interval_s: float,
    points: tuple[str, ...] | None = None,
) -> DeviceMap:
    """A simulated device serving the registers of a library profile (``points``: a subset
    of its points, default all). The profile's valid ranges bound the simulator's writes."""
    source = profile(name)
    chosen = (
        source.points
        if points is None
        else tuple(source.point(p) or _missing(name, p) for p in points)
    )
    sim_points = []
    for p in chosen:
        if p.address is None or p.valid_range is None:
            raise ValueError(f"profile {name}: point {p.point} needs an address and valid_range")
        spec = RegisterSpec(
            point=p.point,
            table=p.table,
            address=p.address,
            dtype=p.type,
            length=p.length,
            bit=p.bit,
            word_order=p.word_order,
            byte_order=p.byte_order,
            scale=p.scale,
            offset=p.offset,
        )
        sim_points.append(SimPoint(spec, p.valid_range, p.writable))
    return DeviceMap(device_id, title, unit_id, poll_interval_s, tuple(sim_points))


def _missing(name: str, point: str) -> NoReturn:
    raise KeyError(f"profile {name} has no point {point!r}")


# The grid meter is an Eastron SDM630 (input registers, float32, 30001 = address 0): the
# library's profile, with the points the building's meter model supplies.
METER = profile_map(
    "eastron_sdm630",
    GRID_METER,
    "Grid connection meter (Eastron SDM630)",
    unit_id=1,
    poll_interval_s=1.0,
    points=(
        "voltage_l1_v",
        "voltage_l2_v",
        "voltage_l3_v",
        "current_l1_a",
        "current_l2_a",
        "current_l3_a",
        "active_power_l1_w",
        "active_power_l2_w",
        "active_power_l3_w",
        "active_power_w",
        "apparent_power_va",
        "reactive_power_var",
        "power_factor_pf",
        "frequency_hz",
        "energy_import_wh",
        "energy_export_wh",
    ),
)

# SunSpec-style inverter: integer registers with fixed scale factors, holding table.
PV = DeviceMap(
    id=PV_INVERTER,
    name="PV inverter 100 kW (SunSpec-style)",
    unit_id=3,
    poll_interval_s=2.0,
    points=(
        _point("ac_current_a", _HR, 40071, DataType.UINT16, (0.0, 500.0), scale=0.1),
        _point("ac_voltage_v", _HR, 40079, DataType.UINT16, (150.0, 300.0), scale=0.1),
        _point("ac_power_w", _HR, 40083, DataType.INT16, (-5_000.0, 110_000.0), scale=10.0),
        _point("ac_frequency_hz", _HR, 40085, DataType.UINT16, (45.0, 55.0), scale=0.01),
        _point("energy_total_wh", _HR, 40093, DataType.UINT32, (0.0, 4_294_967_295.0)),
        _point("dc_voltage_v", _HR, 40096, DataType.UINT16, (0.0, 1100.0), scale=0.1),
        _point("dc_current_a", _HR, 40097, DataType.UINT16, (0.0, 400.0), scale=0.1),
        _point("dc_power_w", _HR, 40100, DataType.INT16, (-5_000.0, 150_000.0), scale=10.0),
        _point("heatsink_temperature_degc", _HR, 40102, DataType.INT16, (-40.0, 120.0), scale=0.1),
        # SunSpec St: 1 off, 2 sleeping, 3 starting, 4 MPPT, 5 throttled, 6 shutting down, 7 fault
        _point("operating_state", _HR, 40107, DataType.UINT16, (1.0, 8.0)),
        _point("event_flags_state", _HR, 40108, DataType.BITFIELD, (0.0, 65535.0)),
        _point("irradiance_wm2", _HR, 40110, DataType.UINT16, (0.0, 1600.0)),
        _point("rated_power_w", _HR, 40125, DataType.UINT16, (0.0, 655_350.0), scale=10.0),
        _point(
            "power_limit_pct",
            _HR,
            40250,
            DataType.UINT16,
            (0.0, 100.0),
            scale=0.1,
            writable=True,
        ),
    ),
)

BATTERY_MAP = DeviceMap(
    id=BATTERY,
    name="Battery storage 200 kWh / 50 kW",
    unit_id=10,
    poll_interval_s=1.0,
    points=(
        _point("soc_pct", _IR, 0, DataType.UINT16, (0.0, 100.0), scale=0.1),
        # Status word at 1: bit 0 discharging, 1 charging, 2 SoC at low limit,
        # 3 SoC at high limit, 4 power limited (the setpoint could not be met).
        _point("soc_low_limit_state", _IR, 1, DataType.BITFIELD, (0.0, 1.0), bit=2),
        _point("soc_high_limit_state", _IR, 1, DataType.BITFIELD, (0.0, 1.0), bit=3),
        _point("power_limited_state", _IR, 1, DataType.BITFIELD, (0.0, 1.0), bit=4),
        _point("operating_state", _IR, 2, DataType.UINT16, (0.0, 2.0)),  # 0 idle 1 chg 2 dis
        _point("active_power_w", _IR, 3, DataType.INT32, (-60_000.0, 60_000.0)),
        _point("dc_voltage_v", _IR, 5, DataType.UINT16, (400.0, 1000.0), scale=0.1),
        _point("dc_current_a", _IR, 6, DataType.INT16, (-200.0, 200.0), scale=0.1),
        _point("cell_temperature_degc", _IR, 7, DataType.INT16, (-20.0, 60.0), scale=0.1),
        _point("energy_charged_wh", _IR, 8, DataType.UINT64, ENERGY_WH),
        _point("energy_discharged_wh", _IR, 12, DataType.UINT64, ENERGY_WH),
        _point("available_charge_power_w", _IR, 16, DataType.UINT16, (0.0, 100_000.0), scale=10.0),
        _point(
            "available_discharge_power_w", _IR, 17, DataType.UINT16, (0.0, 100_000.0), scale=10.0
        ),
        _point("capacity_wh", _IR, 18, DataType.UINT32, (0.0, 10_000_000.0)),
        # The setpoint is a 32-bit signed integer, least significant word first.
        _point(
            "active_power_setpoint_w",
            _HR,
            100,
            DataType.INT32,
            (-50_000.0, 50_000.0),
            word_order=LITTLE,
            writable=True,
        ),
    ),
)


def _zone(device_id: str, name: str, unit_id: int) -> DeviceMap:
    return DeviceMap(
        id=device_id,
        name=name,
        unit_id=unit_id,
        poll_interval_s=5.0,
        points=(
            _point("temperature_degc", _IR, 0, DataType.INT16, (-10.0, 50.0), scale=0.01),
            _point("effective_setpoint_degc", _IR, 1, DataType.INT16, (5.0, 40.0), scale=0.01),
            _point("cooling_power_w", _IR, 2, DataType.UINT16, (0.0, 200_000.0), scale=10.0),
            _point("chiller_power_w", _IR, 3, DataType.UINT16, (0.0, 65_535.0)),
            _point("occupied_state", _IR, 4, DataType.UINT16, (0.0, 1.0)),
            _point(
                "setpoint_degc", _HR, 0, DataType.INT16, (16.0, 30.0), scale=0.01, writable=True
            ),
        ),
    )


ZONE_1 = _zone(HVAC_ZONE_1, "HVAC zone 1 (south offices)", 21)
ZONE_2 = _zone(HVAC_ZONE_2, "HVAC zone 2 (north core)", 22)

FAN = DeviceMap(
    id=AHU_FAN,
    name="AHU supply fan VFD 15 kW",
    unit_id=2,
    poll_interval_s=1.0,
    points=(
        _point("run_command_state", Table.COIL, 0, DataType.BOOL, (0.0, 1.0), writable=True),
        _point("running_state", Table.DISCRETE, 0, DataType.BOOL, (0.0, 1.0)),
        _point("at_speed_state", Table.DISCRETE, 1, DataType.BOOL, (0.0, 1.0)),
        _point("fault_state", Table.DISCRETE, 2, DataType.BOOL, (0.0, 1.0)),
        _point(
            "speed_setpoint_pct", _HR, 0, DataType.UINT16, (0.0, 100.0), scale=0.01, writable=True
        ),
        _point("speed_pct", _IR, 0, DataType.UINT16, (0.0, 100.0), scale=0.01),
        _point("output_frequency_hz", _IR, 1, DataType.UINT16, (0.0, 60.0), scale=0.1),
        _point("motor_speed_rpm", _IR, 2, DataType.UINT16, (0.0, 1800.0)),
        _point("motor_current_a", _IR, 3, DataType.UINT16, (0.0, 60.0), scale=0.1),
        # Byte-swapped float ("BADC"), as some drives deliver it.
        _point("power_w", _IR, 4, F32, (0.0, 20_000.0), byte_order=ByteOrder.LITTLE),
        # 0.1 kWh resolution, least significant word first.
        _point("energy_wh", _IR, 6, DataType.UINT32, ENERGY_WH, scale=100.0, word_order=LITTLE),
    ),
)

WEATHER = DeviceMap(
    id=WEATHER_IO,
    name="Analog input module: outdoor transmitters (4-20 mA)",
    unit_id=1,
    poll_interval_s=2.0,
    points=(
        _loop_point("outdoor_temperature_degc", 0, OUTDOOR_TEMPERATURE_LOOP),
        _loop_point("outdoor_humidity_pct", 1, OUTDOOR_HUMIDITY_LOOP),
        _loop_point("irradiance_wm2", 2, IRRADIANCE_LOOP),
        # Channel status word at 8 (NAMUR NE 43 fault per channel); then the loop currents
        # again as mA*1000 for diagnostics.
        _point("ai0_fault_state", _IR, 8, DataType.BITFIELD, (0.0, 1.0), bit=0),
        _point("ai1_fault_state", _IR, 8, DataType.BITFIELD, (0.0, 1.0), bit=1),
        _point("ai2_fault_state", _IR, 8, DataType.BITFIELD, (0.0, 1.0), bit=2),
        _point("ai0_current_ma", _IR, 16, DataType.UINT16, (0.0, 24.0), scale=0.001),
        _point("ai1_current_ma", _IR, 17, DataType.UINT16, (0.0, 24.0), scale=0.001),
        _point("ai2_current_ma", _IR, 18, DataType.UINT16, (0.0, 24.0), scale=0.001),
    ),
)


def _load_panel() -> DeviceMap:
    circuits = LoadPanelParams().circuits
    points: list[SimPoint] = []
    for index, circuit in enumerate(circuits):
        points.append(
            _point(
                f"{circuit.name}_on_state",
                Table.COIL,
                index,
                DataType.BOOL,
                (0.0, 1.0),
                writable=True,
            )
        )
        points.append(
            _point(
                f"{circuit.name}_power_w", _IR, index, DataType.UINT16, (0.0, 200_000.0), scale=10.0
            )
        )
    points.append(
        _point("total_power_w", _IR, 8, DataType.UINT32, (0.0, 1_000_000.0), word_order=LITTLE)
    )
    return DeviceMap(
        id=LOAD_PANEL,
        name="Load panel: contactors of the sheddable circuits",
        unit_id=3,
        poll_interval_s=1.0,
        points=tuple(points),
    )


LOAD_PANEL_MAP = _load_panel()

# An ADAM-6017 on the outdoor transmitters, as the library's profile describes it (its two
# digital outputs are not simulated).
ANALOG_IO_MAP = profile_map(
    "advantech_adam6017",
    ANALOG_IO,
    "Analog input module Advantech ADAM-6017 (outdoor transmitters, 0~20 mA range)",
    unit_id=1,
    poll_interval_s=2.0,
    points=(
        *(f"ai{channel}_current_ma" for channel in range(8)),
        *(f"ai{channel}_range_state" for channel in range(8)),
    ),
)

DEVICE_MAPS: tuple[DeviceMap, ...] = (
    METER, PV, BATTERY_MAP, ZONE_1, ZONE_2, FAN, WEATHER, LOAD_PANEL_MAP, ANALOG_IO_MAP,
)  # fmt: skip
"""Every simulated device, in the order the servers get their ports."""
