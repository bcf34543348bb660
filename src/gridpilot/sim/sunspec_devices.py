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
                       (2 MPPT modules), 701, 704, 705,   WMaxLimPct (when WMaxLimPctEna),
                       706, 711, 712                      123 WMaxLimPct (when WMaxLim_Ena),
                                                          706's active volt-watt curve and
                                                          711's active frequency droop
                                                          (when Ena) limit its output;
                                                          its reactive power follows 705's
                                                          active volt-var curve (when Ena),
                                                          else 712's watt-var curve (when
                                                          Ena), else 704 VarSet (VarSetEna), else
                                                          704 PFWInj (PFWInjEna), else 0
``sunspec_meter``      1, 203                             the grid connection meter
``sunspec_storage``    1, 802, 713, 704                   the battery: 704 WSet (when
                                                          WSetEna) is its power setpoint
=====================  =================================  =================================

They are views of the same physics as the plain simulated devices (``devices.py``): the
SunSpec inverter *is* the PV inverter, speaking SunSpec on its own port.
``BASIC_INVERTER_PLAN`` is the same inverter without models 705 and 706 (no autonomous
volt-var or volt-watt: a controller must send it setpoints through 704).

Volt-var (705) and volt-watt (706) as the SunSpec DER information model has them: two
stored curves of four points each; curve 1 is the active one and read-only, curve 2 is
writable. A client writes its curve into curve 2, then ``AdptCrvReq`` = 2: the inverter
checks the curve (2..NPt active points, voltages not decreasing; for 706 a ``DeptRef`` of
W_MAX_PCT), copies it into curve 1 and says ``AdptCrvRslt`` COMPLETED (FAILED, curve 1
unchanged, when it is not a curve). ``Ena`` switches the function on. The factory curves are
IEEE 1547 Category A volt-var ((90 %, +25 %), (100 %, 0), (100 %, 0), (110 %, -25 %) of
VAMax) and volt-watt (106 %, 100 %), (110 %, 20 %) of WMax, so a client that wants Category B
must write it. The inverter evaluates curve 1 itself at its terminal voltage (``physics``),
with its open-loop response time ``RspTms`` (and, for volt-var, its ``VRef``).

Watt-var (712) as volt-var, with x in % of WMax (factory curve: Category A, (20 %, 0),
(50 %, 0), (100 %, -25 %) of VAMax; the inverter answers in 10 s). Frequency droop (711)
likewise, with controls instead of curves: control 1 active and
read-only, control 2 writable, ``AdptCtlReq`` = 2 adopts it (a droop outside 1..100 % or a
dead band outside 0..1 Hz is refused: FAILED). The factory control is a tighter
utility-specific one (0.017 Hz dead band, 3 % droop); the inverter runs the over-frequency
side of control 1 itself on the frequency it measures, against 121 ``ECPNomHz`` (the
simulated grid's nominal frequency).
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
from gridpilot.sim.physics import FreqDroopMode, InverterState, ReactiveMode, VoltWattMode

__all__ = [
    "BASIC_INVERTER_PLAN",
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
    read_only: tuple[str, ...] = ()
    """Key prefixes of points the definition makes writable but this device does not
    (``"705.Crv[1]."``: the active curve); a write to them is refused."""
    on_point: Callable[[SunSpecImage, str], None] | None = None
    """Called with the key of each point a client wrote, before ``on_write`` (for writes
    that are commands rather than settings, such as 705's ``AdptCrvReq``)."""

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
                    if key.startswith(plan.read_only):
                        sim_point = SimPoint(sim_point.spec, sim_point.valid_range, writable=False)
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

    def has(self, key: str) -> bool:
        """Whether the device has the point (its model is in the plan)."""
        return key in self._keys

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

_INVERTER_RATING = 100_000.0
"""W, VA: the same as ``physics.PvParams`` (the nameplate tells clients what the physics is)."""
_INVERTER_VAR_RATING = 60_000.0
_NOMINAL_V = 230.0

_CURVES = 2
"""Stored curves of 705 and 706: 1 (active, read-only) and 2 (writable)."""
_POINTS = 4
_CATEGORY_A_VOLT_VAR = ((90.0, 25.0), (100.0, 0.0), (100.0, 0.0), (110.0, -25.0))
"""The factory volt-var curve, % of nominal voltage / % of VAMax (IEEE 1547 Category A)."""
_FACTORY_VOLT_WATT = ((106.0, 100.0), (110.0, 20.0))
"""The factory volt-watt curve, % of nominal voltage / % of WMax (Category B, Pmin 20 %)."""
_CATEGORY_A_WATT_VAR = ((20.0, 0.0), (50.0, 0.0), (100.0, -25.0))
"""The factory watt-var curve, % of WMax / % of VAMax (IEEE 1547 Category A)."""
_CURVE_SETTINGS = {
    705: ("ActPt", "DeptRef", "Pri", "VRef", "RspTms"),
    706: ("ActPt", "DeptRef", "RspTms"),
    712: ("ActPt", "DeptRef", "Pri"),
}
_CURVE_X = {705: "V", 706: "V", 712: "W"}
_CURVE_Y = {705: "Var", 706: "W", 712: "Var"}
_WATT_VAR_RESPONSE_S = 10.0
"""712 has no response time of its own: the inverter answers in 10 s (90 %)."""
_CONTROLS = 2
"""Stored controls of 711: 1 (active, read-only) and 2 (writable)."""
_DROOP_SETTINGS = ("DbOf", "DbUf", "KOf", "KUf", "RspTms", "PMin")
_FACTORY_DROOP = {"DbOf": 0.017, "DbUf": 0.017, "KOf": 0.03, "KUf": 0.03, "RspTms": 5.0,
                  "PMin": 0.0}  # fmt: skip
"""The factory frequency droop (a utility-specific tighter setting, 0.017 Hz and 3 %):
a client that wants the Category B 0.036 Hz and 5 % must write them."""
_W_MAX_PCT = 0.0  # 706 DeptRef
_ENABLED = 1.0
_COMPLETED, _FAILED = 1.0, 2.0  # 705 AdptCrvRslt
_VARS = 4.0  # 704 VarSetMod
_OVER_EXCITED = 0.0  # 704 PFWInj.Ext


def _inverter_values(building: Building, image: SunSpecImage) -> dict[str, float]:
    pv, params = building.state.pv, building.params.pv
    r = building.state.meter.reading
    ac_w = pv.ac_power_w
    volts = r.voltage_v
    var = pv.reactive_power_var
    va = math.hypot(ac_w, var)
    pf = ac_w / va if va > 0.0 else 1.0
    phase_a = [va / 3.0 / v if v > 0 else 0.0 for v in volts]
    dc_v = 0.0 if pv.dc_power_w <= 0.0 else 720.0 - 0.8 * (pv.heatsink_temperature_degc - 25.0)
    dc_a = pv.dc_power_w / dc_v if dc_v > 0.0 else 0.0
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
        # What the sun gives, not what the limits let out (a throttled inverter's headroom).
        "122.WAval": pv.available_w,
        "122.StActCtl": 1.0 if limit < 100.0 else 0.0,
        "701.ACType": 3.0,  # WYE
        "701.St": 1.0 if pv.ac_power_w > 0 else 0.0,
        "701.InvSt": float(pv.operating_state),
        "701.ConnSt": 0.0 if pv.tripped else 1.0,  # DISCONNECTED / CONNECTED
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
        "121.ECPNomHz": building.params.meter.nominal_frequency_hz,
    }
    for index, share in enumerate((0.55, 0.45), start=1):
        values[f"160.module[{index}].DCW"] = pv.dc_power_w * share
        values[f"160.module[{index}].DCV"] = dc_v
        values[f"160.module[{index}].DCA"] = dc_a * share
        values[f"160.module[{index}].DCWH"] = pv.energy_wh * share / params.inverter_efficiency
        values[f"160.module[{index}].DCSt"] = 4.0 if pv.dc_power_w > 0 else 2.0
    return values


def _reference(image: SunSpecImage, dept_ref: float | None) -> float:
    """What 100 % of a var percentage is: 704/705's DeptRef/VarSetMod reference."""
    match dept_ref:
        case 0.0:  # W_MAX_PCT
            return image.value("121.WMax") or _INVERTER_RATING
        case 1.0 | 2.0:  # VAR_MAX_PCT, VAR_AVAL_PCT
            return image.value("120.VArRtgQ1") or _INVERTER_VAR_RATING
        case _:  # VA_MAX_PCT
            return image.value("121.VAMax") or _INVERTER_RATING


def _volt_var_mode(image: SunSpecImage) -> ReactiveMode | None:
    """The active volt-var curve (705 curve 1) as the physics runs it, or None."""
    if not image.has("705.Ena") or image.value("705.Ena") != _ENABLED:
        return None
    curve = _curve(image, 705, 1)
    if curve is None:
        return None
    scale = _reference(image, image.value("705.Crv[1].DeptRef")) / 100.0
    return ReactiveMode(
        kind="volt_var",
        curve=tuple((v / 100.0, q * scale) for v, q in curve),
        v_ref_pu=(image.value("705.Crv[1].VRef") or 100.0) / 100.0,
        response_s=image.value("705.Crv[1].RspTms") or 0.0,
    )


def _volt_watt_mode(image: SunSpecImage) -> VoltWattMode:
    """The active volt-watt curve (706 curve 1) as the physics runs it; off when disabled."""
    if not image.has("706.Ena") or image.value("706.Ena") != _ENABLED:
        return VoltWattMode()
    curve = _curve(image, 706, 1)
    if curve is None:
        return VoltWattMode()
    return VoltWattMode(
        curve=tuple((v / 100.0, w) for v, w in curve),
        response_s=image.value("706.Crv[1].RspTms") or 0.0,
    )


def _freq_droop_mode(image: SunSpecImage) -> FreqDroopMode:
    """The active frequency-droop control (711 control 1) as the physics runs it; off when
    disabled."""
    if not image.has("711.Ena") or image.value("711.Ena") != _ENABLED:
        return FreqDroopMode()
    ctl = _droop_ctl(image, 1)
    return FreqDroopMode() if ctl is None else ctl


def _droop_ctl(image: SunSpecImage, index: int) -> FreqDroopMode | None:
    """711 control ``index`` as the physics runs it, or None when it is not one (a value
    missing, a droop outside 1..100 %, a dead band outside 0..1 Hz)."""
    names = ("DbOf", "KOf", "PMin", "RspTms")
    values = [image.value(f"711.Ctl[{index}].{name}") for name in names]
    db_of, k_of, p_min, response = values
    if db_of is None or k_of is None or p_min is None or response is None:
        return None
    if not (0.01 <= k_of <= 1.0 and 0.0 <= db_of <= 1.0):
        return None
    return FreqDroopMode(True, db_of, k_of, p_min, response)


def _curve(image: SunSpecImage, model: int, index: int) -> tuple[tuple[float, float], ...] | None:
    """Curve ``index`` of ``model`` (705, 706, 712): its active points (% V or, for 712,
    % of WMax; % of its reference), None when it is no curve: fewer than 2 or more than NPt
    points, a point missing, x going down; for 706 a reference other than W_MAX_PCT (this
    inverter limits its output in % of WMax only)."""
    active = image.value(f"{model}.Crv[{index}].ActPt")
    if active is None or not 2 <= active <= _POINTS:
        return None
    if model == 706 and image.value(f"706.Crv[{index}].DeptRef") != _W_MAX_PCT:
        return None
    x, y = _CURVE_X[model], _CURVE_Y[model]
    points: list[tuple[float, float]] = []
    for k in range(1, int(active) + 1):
        v = image.value(f"{model}.Crv[{index}].Pt[{k}].{x}")
        q = image.value(f"{model}.Crv[{index}].Pt[{k}].{y}")
        if v is None or q is None or (points and v < points[-1][0]):
            return None
        points.append((v, q))
    return tuple(points)


def _inverter_point(image: SunSpecImage, key: str) -> None:
    """705/706 ``AdptCrvReq``: copy the requested curve into the active curve 1, if it is
    one (``AdptCrvRslt`` COMPLETED), else leave curve 1 as it is (FAILED)."""
    if key == "711.AdptCtlReq":
        _adopt_droop_ctl(image)
        return
    if key not in ("705.AdptCrvReq", "706.AdptCrvReq", "712.AdptCrvReq"):
        return
    model = int(key[:3])
    index = image.value(f"{model}.AdptCrvReq")
    if index is None or index == 0.0:
        return  # 0: no request
    n = int(index)
    if not 2 <= n <= _CURVES or _curve(image, model, n) is None:
        image.update_static({f"{model}.AdptCrvRslt": _FAILED})
        return
    copied: dict[str, float | str] = {}
    for name in _CURVE_SETTINGS[model]:
        copied[f"{model}.Crv[1].{name}"] = image.value(f"{model}.Crv[{n}].{name}") or 0.0
    for k in range(1, _POINTS + 1):
        for name in (_CURVE_X[model], _CURVE_Y[model]):
            copied[f"{model}.Crv[1].Pt[{k}].{name}"] = (
                image.value(f"{model}.Crv[{n}].Pt[{k}].{name}") or 0.0
            )
    copied[f"{model}.AdptCrvRslt"] = _COMPLETED
    image.update_static(copied)


def _adopt_droop_ctl(image: SunSpecImage) -> None:
    """711 ``AdptCtlReq``: copy the requested control into the active control 1, if it is
    one (``AdptCtlRslt`` COMPLETED), else leave control 1 as it is (FAILED)."""
    index = image.value("711.AdptCtlReq")
    if index is None or index == 0.0:
        return  # 0: no request
    n = int(index)
    if not 2 <= n <= _CONTROLS or _droop_ctl(image, n) is None:
        image.update_static({"711.AdptCtlRslt": _FAILED})
        return
    copied: dict[str, float | str] = {
        f"711.Ctl[1].{name}": image.value(f"711.Ctl[{n}].{name}") or 0.0 for name in _DROOP_SETTINGS
    }
    image.update_static(copied | {"711.AdptCtlRslt": _COMPLETED})


def _inverter_write(image: SunSpecImage, building: Building) -> None:
    """The effective active-power limit (the lower of the enabled limits of 704 and 123)
    the reactive-power mode (705 volt-var, else 704 VarSet, else 704 PFWInj) and the
    inverter's own volt-watt (706)."""
    limits = [100.0]
    if image.value("704.WMaxLimPctEna") == _ENABLED:
        limits.append(image.value("704.WMaxLimPct") or 0.0)
    if image.value("123.WMaxLim_Ena") == _ENABLED:
        limits.append(image.value("123.WMaxLimPct") or 0.0)
    building.write_point(PV_INVERTER, "power_limit_pct", max(0.0, min(limits)))
    building.set_pv_reactive_mode(_reactive_mode(image))
    building.set_pv_volt_watt(_volt_watt_mode(image))
    building.set_pv_freq_droop(_freq_droop_mode(image))


def _watt_var_mode(image: SunSpecImage) -> ReactiveMode | None:
    """The active watt-var curve (712 curve 1) as the physics runs it, or None."""
    if not image.has("712.Ena") or image.value("712.Ena") != _ENABLED:
        return None
    curve = _curve(image, 712, 1)
    if curve is None:
        return None
    scale = _reference(image, image.value("712.Crv[1].DeptRef")) / 100.0
    w_max = (image.value("121.WMax") or _INVERTER_RATING) / 100.0
    return ReactiveMode(
        kind="watt_var",
        curve=tuple((w * w_max, q * scale) for w, q in curve),
        response_s=_WATT_VAR_RESPONSE_S,
    )


def _reactive_mode(image: SunSpecImage) -> ReactiveMode:
    volt_var = _volt_var_mode(image)
    if volt_var is not None:
        return volt_var
    watt_var = _watt_var_mode(image)
    if watt_var is not None:
        return watt_var
    if image.value("704.VarSetEna") == _ENABLED:
        mode = image.value("704.VarSetMod")
        if mode == _VARS:
            var = image.value("704.VarSet") or 0.0
        else:
            var = (image.value("704.VarSetPct") or 0.0) / 100.0 * _reference(image, mode)
        return ReactiveMode(kind="var", var=var)
    if image.value("704.PFWInjEna") == _ENABLED:
        pf = image.value("704.PFWInj.PF")
        if pf is not None and 0.0 < pf < 1.0:
            injecting = image.value("704.PFWInj.Ext") in (None, _OVER_EXCITED)
            return ReactiveMode(kind="power_factor", pf=pf, injecting=injecting)
    return ReactiveMode()


def _inverter_static(*, autonomous: bool) -> Values:
    rating = _INVERTER_RATING
    values: dict[str, float | str] = {
        **_COMMON_INVERTER,
        "120.DERTyp": 4.0,  # PV
        "120.WRtg": rating,
        "120.VARtg": rating,
        "120.VArRtgQ1": _INVERTER_VAR_RATING,
        "120.VArRtgQ4": -_INVERTER_VAR_RATING,
        "120.ARtg": 150.0,
        "120.PFRtgQ1": -0.8,
        "120.PFRtgQ4": 0.8,
        "121.WMax": rating,
        "121.VRef": _NOMINAL_V,
        "121.VMax": 253.0,
        "121.VMin": 195.0,
        "121.VAMax": rating,
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
        "704.VarSetEna": 0.0,
        "704.VarSetMod": _VARS,
        "704.VarSetPri": 1.0,  # REACTIVE
        "704.VarSet": 0.0,
        "704.VarSetPct": 0.0,
        "704.AntiIslEna": 1.0,
    }
    if autonomous:
        factory = {705: _CATEGORY_A_VOLT_VAR, 706: _FACTORY_VOLT_WATT, 712: _CATEGORY_A_WATT_VAR}
        for model in (705, 706, 712):
            values |= {
                f"{model}.Ena": 0.0,
                f"{model}.AdptCrvReq": 0.0,
                f"{model}.AdptCrvRslt": _COMPLETED,
                f"{model}.NPt": float(_POINTS),
                f"{model}.NCrv": float(_CURVES),
                f"{model}.RvrtTms": 0.0,
                f"{model}.RvrtRem": 0.0,
                f"{model}.RvrtCrv": 0.0,
            }
            points = factory[model]
            # Points past ActPt hold the last point: implemented, so a client may write them.
            padded = points + (points[-1],) * (_POINTS - len(points))
            for n in range(1, _CURVES + 1):
                values |= {
                    f"{model}.Crv[{n}].ActPt": float(len(points)),
                    f"{model}.Crv[{n}].ReadOnly": 1.0 if n == 1 else 0.0,  # R / RW
                }
                if model != 712:  # 712 has no response time of its own
                    values[f"{model}.Crv[{n}].RspTms"] = 10.0
                for k, (v, y) in enumerate(padded, start=1):
                    values[f"{model}.Crv[{n}].Pt[{k}].{_CURVE_X[model]}"] = v
                    values[f"{model}.Crv[{n}].Pt[{k}].{_CURVE_Y[model]}"] = y
                if model == 705:
                    values |= {
                        f"705.Crv[{n}].DeptRef": 3.0,  # VA_MAX_PCT
                        f"705.Crv[{n}].Pri": 1.0,  # REACTIVE
                        f"705.Crv[{n}].VRef": 100.0,
                        f"705.Crv[{n}].VRefAuto": 100.0,
                        f"705.Crv[{n}].VRefAutoEna": 0.0,
                        f"705.Crv[{n}].VRefAutoTms": 0.0,
                    }
                elif model == 712:
                    values |= {
                        f"712.Crv[{n}].DeptRef": 3.0,  # VA_MAX_PCT
                        f"712.Crv[{n}].Pri": 1.0,  # REACTIVE
                    }
                else:
                    values[f"706.Crv[{n}].DeptRef"] = _W_MAX_PCT
        values |= {
            "711.Ena": 0.0,
            "711.AdptCtlReq": 0.0,
            "711.AdptCtlRslt": _COMPLETED,
            "711.NCtl": float(_CONTROLS),
            "711.RvrtTms": 0.0,
            "711.RvrtRem": 0.0,
            "711.RvrtCtl": 0.0,
        }
        for n in range(1, _CONTROLS + 1):
            values |= {f"711.Ctl[{n}].{name}": v for name, v in _FACTORY_DROOP.items()}
            values[f"711.Ctl[{n}].ReadOnly"] = 1.0 if n == 1 else 0.0
    return values


def _inverter_plan(*, autonomous: bool) -> SunSpecPlan:
    models = [
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
        SunSpecModelPlan(
            704, {"PF_SF": -3, "WMaxLimPct_SF": -1, "VarSet_SF": 0, "VarSetPct_SF": -1}
        ),
    ]
    if autonomous:
        models += [
            SunSpecModelPlan(
                model,
                {"V_SF": -1, "DeptRef_SF": -1, "RspTms_SF": 0},
                counts={"Crv": _CURVES, "Pt": _POINTS},
            )
            for model in (705, 706)
        ]
        models.append(
            SunSpecModelPlan(
                711, {"Db_SF": -3, "K_SF": -3, "RspTms_SF": 0}, counts={"Ctl": _CONTROLS}
            )
        )
        models.append(
            SunSpecModelPlan(
                712, {"W_SF": -1, "DeptRef_SF": -1}, counts={"Crv": _CURVES, "Pt": _POINTS}
            )
        )
    names = "1/103/120-123/160/701/704" + ("/705/706/711/712" if autonomous else "")
    return SunSpecPlan(
        id="sunspec_inverter",
        name=f"PV inverter 100 kW (SunSpec models {names})",
        unit_id=1,
        base=40000,
        models=tuple(models),
        static=_inverter_static(autonomous=autonomous),
        values=_inverter_values,
        on_write=_inverter_write,
        poll_interval_s=1.0,
        read_only=("705.Crv[1].", "706.Crv[1].", "711.Ctl[1].", "712.Crv[1]."),
        on_point=_inverter_point,
    )


INVERTER_PLAN = _inverter_plan(autonomous=True)
BASIC_INVERTER_PLAN = _inverter_plan(autonomous=False)
"""The same inverter without 705/706/711/712: volt-var, volt-watt, frequency droop and
watt-var only through a controller's 704 setpoints."""

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
