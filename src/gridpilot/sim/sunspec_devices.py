"""Simulated SunSpec devices: register images built from the official model definitions.

Each device is a ``SunSpecPlan``: the models it implements (ids of pysunspec2's
definitions), the scale factors it uses, the values that never change, and two functions
that tie it to the building's physics -- the values now, and what a client write does.
``SunSpecImage`` lays the models out after the ``SunS`` marker exactly as the definitions
say (``sunspec.layout``), so a gateway that discovers them needs no register map.

Every point starts "not implemented" (its type's sentinel, e.g. 0x8000, 0xFFFF, NaN); a
point holds a value only once the plan gives it one, so each device leaves some points
unimplemented on purpose, as real ones do (``PPVphAB`` of the inverter, the meter's
per-phase reactive energies ...). A point whose scale factor the plan leaves out stays
unimplemented as well: a number without its scale means nothing.

=====================  =================================  =================================
device                 models                             tied to
=====================  =================================  =================================
``sunspec_inverter``   1, 103, 120, 121, 122, 123, 160    the building's PV inverter: 704
                       (2 MPPT modules), 701, 704         WMaxLimPct (when WMaxLimPctEna)
                                                          and 123 WMaxLimPct (when
                                                          WMaxLim_Ena) limit its output
``sunspec_meter``      1, 203                             the grid connection meter
``sunspec_storage``    1, 802, 713, 704                   the battery: 704 WSet (when
                                                          WSetEna) is its power setpoint
=====================  =================================  =================================

They are views of the same physics as the plain simulated devices (``devices.py``): the
SunSpec inverter *is* the PV inverter, speaking SunSpec on its own port.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.fieldbus.codec import decode as decode_words
from gridpilot.fieldbus.errors import DecodeError
from gridpilot.fieldbus.sunspec import (
    END_MODEL_ID,
    MARKER,
    DecodedPoint,
    PointDef,
    layout,
    model_def,
    unimplemented_words,
    write_range,
)
from gridpilot.model import DataType, Table
from gridpilot.sim.building import BATTERY, PV_INVERTER, Building
from gridpilot.sim.devices import DeviceMap, SimPoint
from gridpilot.sim.image import RegisterImage, saturating_encode
from gridpilot.sim.physics import InverterState

__all__ = [
    "INVERTER_PLAN",
    "METER_PLAN",
    "STORAGE_PLAN",
    "SUNSPEC_PLANS",
    "SunSpecImage",
    "SunSpecModelPlan",
    "SunSpecPlan",
]

Values = Mapping[str, float | str]


@dataclass(frozen=True, slots=True)
class SunSpecModelPlan:
    """One model of a simulated device."""

    model_id: int
    scale_factors: Mapping[str, int] = field(default_factory=dict)
    """Exponent of each ``sunssf`` point the device implements, by name."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Instances of each repeating group, by group name."""


@dataclass(frozen=True, slots=True)
class SunSpecPlan:
    """A simulated SunSpec device. Point keys are ``"<model id>.<path>"`` (``"103.W"``)."""

    id: str
    name: str
    unit_id: int
    base: int
    models: tuple[SunSpecModelPlan, ...]
    static: Values
    """Values set once: identity, ratings, the initial state of the controls."""
    values: Callable[[Building, SunSpecImage], dict[str, float]]
    """The measured values now (the image gives the device's control registers)."""
    on_write: Callable[[SunSpecImage, Building], None]
    """Applies the device's control registers to the physics after a client write."""
    poll_interval_s: float = 1.0

    def config(self, host: str, port: int) -> dict[str, object]:
        """The device as a site-file ``devices:`` entry: discovered, no register map."""
        return {
            "id": self.id,
            "name": self.name,
            "protocol": "modbus_tcp",
            "host": host,
            "port": port,
            "unit_id": self.unit_id,
            "poll_interval": self.poll_interval_s,
            "timeout": min(1.0, self.poll_interval_s / 2),
            "sunspec": {"base": self.base},
        }


class SunSpecImage(RegisterImage):
    """The holding registers of a SunSpec device, from its marker to its end marker."""

    def __init__(self, plan: SunSpecPlan) -> None:
        self.plan = plan
        self._sentinels: dict[str, list[int]] = {}
        self._unscaled: set[str] = set()
        points: list[SimPoint] = []
        initial: list[tuple[int, list[int]]] = []
        address = plan.base
        points.append(_fixed("SunS", address, DataType.STRING, 2))
        initial.append((address, list(MARKER)))
        address += 2
        for model in plan.models:
            definition = model_def(model.model_id)
            if definition is None:
                raise ValueError(f"{plan.id}: pysunspec2 has no model {model.model_id}")
            items = layout(definition, model.counts)
            length = sum(p.size for _, p, _ in items) - 2
            for path, point, offset in items:
                key = f"{model.model_id}.{path}"
                at = address + offset
                if path == "ID":
                    points.append(_fixed(key, at, DataType.UINT16))
                    initial.append((at, [model.model_id]))
                elif path == "L":
                    points.append(_fixed(key, at, DataType.UINT16))
                    initial.append((at, [length]))
                else:
                    sim_point, words = _sim_point(key, path, point, at, model.scale_factors)
                    points.append(sim_point)
                    initial.append((at, words))
                    self._sentinels[key] = unimplemented_words(point)
                    if isinstance(point.sf, str) and point.sf not in model.scale_factors:
                        self._unscaled.add(key)
            address += length + 2
        points.append(_fixed("end", address, DataType.UINT32))
        initial.append((address, [END_MODEL_ID, 0]))
        device = DeviceMap(plan.id, plan.name, plan.unit_id, plan.poll_interval_s, tuple(points))
        super().__init__(device)
        for at, words in initial:
            self._store(Table.HOLDING, at, words)
        self._keys = {p.name: p for p in points}
        self.update_static(plan.static)

    def update_static(self, values: Values) -> None:
        """Set points once (text included), e.g. the common model's identity."""
        for key, value in values.items():
            point = self._keys[key]  # a KeyError here is a typo in a plan
            if isinstance(value, str):
                self._store(Table.HOLDING, point.spec.address, _text(point.spec, value))
            else:
                self._store(Table.HOLDING, point.spec.address, saturating_encode(point.spec, value))

    def update(self, values: Mapping[str, float]) -> None:
        """Encode each point's value; points whose scale factor is not implemented stay
        unimplemented (see the module docstring)."""
        super().update(
            {k: v for k, v in values.items() if k in self._keys and k not in self._unscaled}
        )

    def value(self, key: str) -> float | None:
        """The engineering value a point holds now (None when not implemented)."""
        point = self._keys[key]
        words = self.point_words(point)
        if words == self._sentinels.get(key):
            return None
        try:
            decoded = decode_words(point.spec, words)
        except DecodeError:
            return None
        return decoded if isinstance(decoded, float) else None


def _fixed(key: str, address: int, dtype: DataType, length: int = 1) -> SimPoint:
    spec = RegisterSpec(key, Table.HOLDING, address, dtype, length=length)
    return SimPoint(spec, (-math.inf, math.inf), writable=False)


def _sim_point(
    key: str, path: str, point: PointDef, address: int, scale_factors: Mapping[str, int]
) -> tuple[SimPoint, list[int]]:
    exponent = 0
    if isinstance(point.sf, int):
        exponent = point.sf
    elif isinstance(point.sf, str):
        exponent = scale_factors.get(point.sf, 0)
    dtype = point.dtype
    spec = RegisterSpec(
        key,
        Table.HOLDING,
        address,
        dtype,
        length=point.size if dtype is DataType.STRING else 1,
        scale=10.0**exponent,
    )
    words = unimplemented_words(point)
    if point.type == "sunssf" and point.name in scale_factors:
        words = saturating_encode(spec, float(scale_factors[point.name]))
    probe = DecodedPoint(path, point, address, (), 0, 0.0, exponent)
    limits = write_range(probe) or (-math.inf, math.inf)
    return SimPoint(spec, limits, writable=point.writable), words


def _text(spec: RegisterSpec, text: str) -> list[int]:
    data = text.encode("utf-8")[: spec.length * 2].ljust(spec.length * 2, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# ---------------------------------------------------------------------------- inverter

_COMMON_INVERTER: Values = {
    "1.Mn": "GridPilot",
    "1.Md": "SimInverter 100k",
    "1.Opt": "3-phase",
    "1.Vr": "1.4.2",
    "1.SN": "GP-INV-0001",
    "1.DA": 1,
}


def _inverter_values(building: Building, image: SunSpecImage) -> dict[str, float]:
    pv, params = building.state.pv, building.params.pv
    r = building.state.meter.reading
    ac_w = pv.ac_power_w
    volts = r.voltage_v
    phase_a = [ac_w / 3.0 / v if v > 0 else 0.0 for v in volts]
    dc_v = 0.0 if pv.dc_power_w <= 0.0 else 720.0 - 0.8 * (pv.heatsink_temperature_degc - 25.0)
    dc_a = pv.dc_power_w / dc_v if dc_v > 0.0 else 0.0
    pf = _inverter_pf(image)
    var = ac_w * math.tan(math.acos(pf)) if pf < 1.0 else 0.0
    va = math.hypot(ac_w, var)
    limit = pv.power_limit_pct
    values = {
        "103.A": sum(phase_a),
        "103.AphA": phase_a[0],
        "103.AphB": phase_a[1],
        "103.AphC": phase_a[2],
        "103.PhVphA": volts[0],
        "103.PhVphB": volts[1],
        "103.PhVphC": volts[2],
        "103.W": ac_w,
        "103.Hz": r.frequency_hz,
        "103.VA": va,
        "103.VAr": var,
        "103.PF": pf * 100.0,
        "103.WH": pv.energy_wh,
        "103.DCA": dc_a,
        "103.DCV": dc_v,
        "103.DCW": pv.dc_power_w,
        "103.TmpCab": building.state.outdoor_degc + 5.0,
        "103.TmpSnk": pv.heatsink_temperature_degc,
        "103.St": float(pv.operating_state),
        "103.Evt1": 0.0,
        "122.PVConn": 1.0 if pv.operating_state != InverterState.OFF else 0.0,
        "122.WAval": min(params.ac_rating_w, pv.dc_power_w * params.inverter_efficiency),
        "122.StActCtl": 1.0 if limit < 100.0 else 0.0,
        "701.ACType": 3.0,  # WYE
        "701.St": 1.0 if pv.ac_power_w > 0 else 0.0,
        "701.InvSt": float(pv.operating_state),
        "701.ConnSt": 1.0,
        "701.W": ac_w,
        "701.VA": va,
        "701.Var": var,
        "701.PF": pf,
        "701.A": sum(phase_a),
        "701.LNV": sum(volts) / 3.0,
        "701.LLV": sum(volts) / 3.0 * math.sqrt(3.0),
        "701.Hz": r.frequency_hz,
        "701.TotWhInj": pv.energy_wh,
        "701.TmpSnk": pv.heatsink_temperature_degc,
        "701.ThrotPct": limit,
    }
    for index, share in enumerate((0.55, 0.45), start=1):
        values[f"160.module[{index}].DCW"] = pv.dc_power_w * share
        values[f"160.module[{index}].DCV"] = dc_v
        values[f"160.module[{index}].DCA"] = dc_a * share
        values[f"160.module[{index}].DCWH"] = pv.energy_wh * share / params.inverter_efficiency
        values[f"160.module[{index}].DCSt"] = 4.0 if pv.dc_power_w > 0 else 2.0
    return values


def _inverter_pf(image: SunSpecImage) -> float:
    """The power factor the inverter runs at: 704's PFWInj.PF while PFWInjEna."""
    if image.value("704.PFWInjEna") != 1.0:
        return 1.0
    pf = image.value("704.PFWInj.PF")
    return 1.0 if pf is None or not 0.0 < pf <= 1.0 else pf


def _inverter_write(image: SunSpecImage, building: Building) -> None:
    """The effective active-power limit: the lower of the enabled limits of 704 and 123."""
    limits = [100.0]
    if image.value("704.WMaxLimPctEna") == 1.0:
        limits.append(image.value("704.WMaxLimPct") or 0.0)
    if image.value("123.WMaxLim_Ena") == 1.0:
        limits.append(image.value("123.WMaxLimPct") or 0.0)
    building.write_point(PV_INVERTER, "power_limit_pct", max(0.0, min(limits)))


def _inverter_static() -> Values:
    rating = 100_000.0
    return {
        **_COMMON_INVERTER,
        "120.DERTyp": 4.0,  # PV
        "120.WRtg": rating,
        "120.VARtg": rating,
        "120.ARtg": 150.0,
        "120.PFRtgQ1": -0.8,
        "120.PFRtgQ4": 0.8,
        "121.WMax": rating,
        "121.VRef": 230.0,
        "121.VMax": 253.0,
        "121.VMin": 195.0,
        "121.VAMax": rating,
        "121.ECPNomHz": 50.0,
        "121.ConnPh": 1.0,
        "123.Conn": 1.0,
        "123.WMaxLimPct": 100.0,
        "123.WMaxLim_Ena": 0.0,
        "123.OutPFSet": 1.0,
        "123.OutPFSet_Ena": 0.0,
        "160.N": 2.0,
        "160.module[1].ID": 1.0,
        "160.module[1].IDStr": "string A",
        "160.module[2].ID": 2.0,
        "160.module[2].IDStr": "string B",
        "704.PFWInjEna": 0.0,
        "704.PFWInj.PF": 1.0,
        "704.PFWInj.Ext": 0.0,
        "704.WMaxLimPctEna": 0.0,
        "704.WMaxLimPct": 100.0,
        "704.WMaxLimPctRvrt": 100.0,
        "704.WMaxLimPctEnaRvrt": 0.0,
        "704.WMaxLimPctRvrtTms": 0.0,
        "704.AntiIslEna": 1.0,
    }


INVERTER_PLAN = SunSpecPlan(
    id="sunspec_inverter",
    name="PV inverter 100 kW (SunSpec models 1/103/120-123/160/701/704)",
    unit_id=1,
    base=40000,
    models=(
        SunSpecModelPlan(1),
        SunSpecModelPlan(
            103,
            {
                "A_SF": -2,
                "V_SF": -1,
                "W_SF": 1,
                "Hz_SF": -2,
                "VA_SF": 1,
                "VAr_SF": 1,
                "PF_SF": -1,
                "WH_SF": 0,
                "DCA_SF": -2,
                "DCV_SF": -1,
                "DCW_SF": 1,
                "Tmp_SF": -1,
            },
        ),
        SunSpecModelPlan(
            120,
            {"WRtg_SF": 1, "VARtg_SF": 1, "VArRtg_SF": 1, "ARtg_SF": -1, "PFRtg_SF": -2},
        ),
        SunSpecModelPlan(
            121, {"WMax_SF": 1, "VRef_SF": -1, "VMinMax_SF": -1, "VAMax_SF": 1, "ECPNomHz_SF": -2}
        ),
        SunSpecModelPlan(122, {"WAval_SF": 1}),
        SunSpecModelPlan(123, {"WMaxLimPct_SF": -1, "OutPFSet_SF": -3}),
        SunSpecModelPlan(
            160, {"DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 1, "DCWH_SF": 0}, counts={"module": 2}
        ),
        SunSpecModelPlan(
            701,
            {
                "A_SF": -2,
                "V_SF": -1,
                "Hz_SF": -3,
                "W_SF": 1,
                "PF_SF": -3,
                "VA_SF": 1,
                "Var_SF": 1,
                "TotWh_SF": 0,
                "Tmp_SF": -1,
            },
        ),
        SunSpecModelPlan(704, {"PF_SF": -3, "WMaxLimPct_SF": -1}),
    ),
    static=_inverter_static(),
    values=_inverter_values,
    on_write=_inverter_write,
    poll_interval_s=1.0,
)

# ---------------------------------------------------------------------------- meter


def _meter_values(building: Building, image: SunSpecImage) -> dict[str, float]:
    m = building.state.meter
    r = m.reading
    volts = r.voltage_v
    line = [v * math.sqrt(3.0) for v in volts]
    return {
        "203.A": sum(r.current_a),
        "203.AphA": r.current_a[0],
        "203.AphB": r.current_a[1],
        "203.AphC": r.current_a[2],
        "203.PhV": sum(volts) / 3.0,
        "203.PhVphA": volts[0],
        "203.PhVphB": volts[1],
        "203.PhVphC": volts[2],
        "203.PPV": sum(line) / 3.0,
        "203.Hz": r.frequency_hz,
        "203.W": r.active_power_w,
        "203.WphA": r.active_power_phase_w[0],
        "203.WphB": r.active_power_phase_w[1],
        "203.WphC": r.active_power_phase_w[2],
        "203.VA": r.apparent_power_va,
        "203.VAR": r.reactive_power_var,
        "203.PF": r.power_factor * 100.0,  # model 203 gives the power factor in percent
        "203.TotWhImp": m.energy_import_wh,
        "203.TotWhExp": m.energy_export_wh,
        "203.Evt": 0.0,
    }


METER_PLAN = SunSpecPlan(
    id="sunspec_meter",
    name="Grid meter (SunSpec models 1/203)",
    unit_id=1,
    base=40000,
    models=(
        SunSpecModelPlan(1),
        SunSpecModelPlan(
            203,
            # No TotVAh_SF / TotVArh_SF: the apparent and reactive energies are not
            # implemented, as on many revenue meters.
            {
                "A_SF": -1,
                "V_SF": -1,
                "Hz_SF": -2,
                "W_SF": 1,
                "VA_SF": 1,
                "VAR_SF": 1,
                "PF_SF": -1,
                "TotWh_SF": 0,
            },
        ),
    ),
    static={
        "1.Mn": "GridPilot",
        "1.Md": "SimMeter 3P4W",
        "1.Vr": "2.0",
        "1.SN": "GP-MTR-0042",
        "1.DA": 1,
    },
    values=_meter_values,
    on_write=lambda _image, _building: None,
)

# ---------------------------------------------------------------------------- storage


def _storage_values(building: Building, image: SunSpecImage) -> dict[str, float]:
    b, params = building.state.battery, building.params.battery
    volts = params.nominal_voltage_v
    if b.active_power_w > 0.0:
        charge_state = 3.0  # DISCHARGING
    elif b.active_power_w < 0.0:
        charge_state = 4.0  # CHARGING
    else:
        charge_state = 6.0  # HOLDING
    return {
        "802.SoC": b.soc_pct,
        "802.W": b.active_power_w,
        "802.A": b.active_power_w / volts,
        "802.V": volts,
        "802.ChaSt": charge_state,
        "802.State": 3.0 if b.active_power_w else 4.0,  # CONNECTED / STANDBY
        "802.Evt1": 0.0,
        "802.Evt2": 0.0,
        "802.EvtVnd1": 0.0,
        "802.EvtVnd2": 0.0,
        "713.SoC": b.soc_pct,
        "713.WHAvail": params.capacity_wh * max(0.0, b.soc_pct - params.soc_min_pct) / 100.0,
    }


def _storage_write(image: SunSpecImage, building: Building) -> None:
    """704 WSet (injecting = discharging, positive) is the battery's setpoint while WSetEna."""
    setpoint = image.value("704.WSet") if image.value("704.WSetEna") == 1.0 else 0.0
    building.write_point(BATTERY, "active_power_setpoint_w", setpoint or 0.0)


STORAGE_PLAN = SunSpecPlan(
    id="sunspec_storage",
    name="Battery 200 kWh / 50 kW (SunSpec models 1/802/713/704)",
    unit_id=1,
    base=40000,
    models=(
        SunSpecModelPlan(1),
        SunSpecModelPlan(
            802,
            {
                "AHRtg_SF": 0,
                "WHRtg_SF": 2,
                "WChaDisChaMax_SF": 1,
                "SoC_SF": -1,
                "V_SF": -1,
                "CellV_SF": -3,
                "A_SF": -1,
                "AMax_SF": 0,
                "W_SF": 1,
            },
        ),
        SunSpecModelPlan(713, {"WH_SF": 1, "Pct_SF": -1}),
        SunSpecModelPlan(704, {"WSet_SF": 1, "WSetPct_SF": -1}),
    ),
    static={
        "1.Mn": "GridPilot",
        "1.Md": "SimStorage 200k",
        "1.SN": "GP-BAT-0007",
        "1.DA": 1,
        "802.AHRtg": 285.0,
        "802.WHRtg": 200_000.0,
        "802.WChaRteMax": 50_000.0,
        "802.WDisChaRteMax": 50_000.0,
        "802.SoCMax": 95.0,
        "802.SoCMin": 5.0,
        "802.LocRemCtl": 0.0,  # REMOTE
        "802.Typ": 4.0,  # LITHIUM_ION
        "802.SetOp": 1.0,
        "802.SetInvState": 2.0,
        "802.AlmRst": 0.0,
        "713.WHRtg": 200_000.0,
        "704.WSetEna": 0.0,
        "704.WSetMod": 0.0,
        "704.WSet": 0.0,
    },
    values=_storage_values,
    on_write=_storage_write,
)

SUNSPEC_PLANS: tuple[SunSpecPlan, ...] = (INVERTER_PLAN, METER_PLAN, STORAGE_PLAN)
"""The simulated SunSpec devices (served with ``SimulatedSite(sunspec=True)``)."""
