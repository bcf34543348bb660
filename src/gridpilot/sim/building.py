"""The simulated building: every device's physical state, advanced together in simulated time.

``Building`` is pure in the sense of STYLE.md: it never reads a clock or touches a socket.
It is told how far to advance (``advance(dt_s)``), holds the simulated ``now``, and draws
noise from its own seeded ``random.Random``. The I/O shell (``site.py``) decides when.

Each device has a *view*: ``device_values(device_id)`` gives the device's points as floats in
the unit of the point name, and ``write_point(device_id, point, value)`` applies a setpoint.
The register maps in ``devices.py`` name exactly these points.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gridpilot.sim.physics import (
    BatteryParams,
    BatteryState,
    FanParams,
    FanState,
    FreqDroopMode,
    LoadPanelParams,
    LoopRange,
    MeterParams,
    MeterState,
    OfficeLoadProfile,
    OutdoorClimate,
    PowerFlows,
    PvParams,
    PvState,
    ReactiveMode,
    SiteLocation,
    VoltWattMode,
    ZoneParams,
    ZoneState,
    battery_available_power_w,
    battery_dc_current_a,
    battery_dc_voltage_v,
    circuit_powers_w,
    fan_current_a,
    fan_frequency_hz,
    fan_power_w,
    fan_speed_rpm,
    is_occupied,
    loop_fault,
    step_battery,
    step_fan,
    step_meter,
    step_pv,
    step_zone,
)

# Device ids of the simulated site (also the ids in the generated site configuration).
GRID_METER = "grid_meter"
PV_INVERTER = "pv_inverter"
BATTERY = "battery"
HVAC_ZONE_1 = "hvac_zone_1"
HVAC_ZONE_2 = "hvac_zone_2"
AHU_FAN = "ahu_fan"
WEATHER_IO = "weather_io"
LOAD_PANEL = "load_panel"
ANALOG_IO = "analog_io"

DEVICE_IDS = (
    GRID_METER, PV_INVERTER, BATTERY, HVAC_ZONE_1, HVAC_ZONE_2, AHU_FAN, WEATHER_IO, LOAD_PANEL,
    ANALOG_IO,
)  # fmt: skip

# Transmitters wired to the analog input module, channel by channel.
OUTDOOR_TEMPERATURE_LOOP = LoopRange(lo=-30.0, hi=70.0)
OUTDOOR_HUMIDITY_LOOP = LoopRange(lo=0.0, hi=100.0)
IRRADIANCE_LOOP = LoopRange(lo=0.0, hi=1600.0)


class UnknownPointError(KeyError):
    """The device has no writable point of that name (a register-map / building mismatch)."""


@dataclass(frozen=True, slots=True)
class BuildingParams:
    """Everything fixed during a run. Defaults: a two-zone London office on a summer day."""

    location: SiteLocation = field(default_factory=SiteLocation)
    climate: OutdoorClimate = field(default_factory=OutdoorClimate)
    base_load: OfficeLoadProfile = field(default_factory=OfficeLoadProfile)
    base_load_noise: float = 0.015
    """Relative standard deviation of the base load around its profile, per step."""
    occupied_from_hour: float = 7.0
    occupied_until_hour: float = 19.0
    pv: PvParams = field(default_factory=PvParams)
    battery: BatteryParams = field(default_factory=BatteryParams)
    zones: tuple[ZoneParams, ZoneParams] = (
        ZoneParams(solar_aperture_m2=30.0),  # south façade
        ZoneParams(solar_aperture_m2=8.0, internal_gain_occupied_w=12_000.0),  # north core
    )
    fan: FanParams = field(default_factory=FanParams)
    load_panel: LoadPanelParams = field(default_factory=LoadPanelParams)
    meter: MeterParams = field(default_factory=MeterParams)
    max_step_s: float = 5.0
    """Longest physics step; a longer advance is split into steps of at most this."""
    warmup_s: float = 3600.0
    """Simulated time run before ``start`` so that temperatures and ramps have settled."""


@dataclass(slots=True)
class BuildingState:
    """Mutable holder of the frozen per-device states (replaced, never mutated, per step)."""

    pv: PvState = field(default_factory=lambda: PvState(energy_wh=58_431_000.0))
    battery: BatteryState = field(
        default_factory=lambda: BatteryState(
            soc_pct=60.0, energy_charged_wh=21_400_000.0, energy_discharged_wh=19_650_000.0
        )
    )
    zones: list[ZoneState] = field(
        default_factory=lambda: [ZoneState(temperature_degc=24.0), ZoneState(temperature_degc=23.5)]
    )
    fan: FanState = field(default_factory=lambda: FanState(energy_wh=8_250_000.0))
    meter: MeterState = field(
        default_factory=lambda: MeterState(
            energy_import_wh=48_213_600.0, energy_export_wh=3_527_400.0
        )
    )
    flows: PowerFlows = field(default_factory=lambda: PowerFlows(0.0, 0.0, 0.0, 0.0, 0.0))
    outdoor_degc: float = 20.0
    outdoor_humidity_pct: float = 55.0
    irradiance_wm2: float = 0.0
    broken_loops: set[int] = field(default_factory=set)
    """Analog input channels whose wire is cut (0 mA), for fault tests."""
    forced_loops_ma: dict[int, float] = field(default_factory=dict)
    """Analog input channels held at a fixed loop current (mA), for fault tests: a broken
    wire's leakage (2 mA), a transmitter's failure signal (3.6 or 21 mA)."""
    circuits_on: list[bool] = field(default_factory=lambda: [True, True, True])
    """Contactor of each load-panel circuit (True = closed, the load runs)."""
    extra_load_w: float = 0.0
    """A load step on top of the profile (a test's or a demo's "someone started a big
    machine"), added to the base load."""
    grid_voltage_pu: float | None = None
    """The grid's no-load voltage in per unit of nominal (a test's or a demo's voltage
    excursion); None = nominal plus the transformer tap."""
    grid_frequency_hz: float | None = None
    """The grid frequency held (a test's or a demo's frequency excursion); None = nominal
    with its slow swing."""


class Building:
    """The simulated site's physics, advanced by ``advance(dt_s)`` in simulated seconds."""

    def __init__(
        self,
        start: datetime,
        params: BuildingParams | None = None,
        *,
        seed: int = 0,
        state: BuildingState | None = None,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
        self.params = params or BuildingParams()
        self.state = state or BuildingState()
        self._rng = random.Random(seed)  # noqa: S311 - simulation noise, not security
        self._now = start - timedelta(seconds=self.params.warmup_s)
        self.advance(self.params.warmup_s)
        self._now = start  # exact, whatever float steps the warm-up took
        self._readers: dict[str, Callable[[], dict[str, float]]] = {
            GRID_METER: self._meter_values,
            PV_INVERTER: self._pv_values,
            BATTERY: self._battery_values,
            HVAC_ZONE_1: lambda: self._zone_values(0),
            HVAC_ZONE_2: lambda: self._zone_values(1),
            AHU_FAN: self._fan_values,
            WEATHER_IO: self._weather_values,
            LOAD_PANEL: self._load_panel_values,
            ANALOG_IO: self._analog_io_values,
        }
        if len(self.state.circuits_on) != len(self.params.load_panel.circuits):
            raise ValueError("circuits_on needs one entry per load-panel circuit")

    @property
    def now(self) -> datetime:
        """Simulated time."""
        return self._now

    # ----------------------------------------------------------------------------- stepping

    def advance(self, dt_s: float) -> None:
        """Advance simulated time by ``dt_s`` seconds in steps of at most ``max_step_s``."""
        if dt_s <= 0.0:
            return
        steps = max(1, math.ceil(dt_s / self.params.max_step_s))
        h = dt_s / steps
        for _ in range(steps):
            self._step(h)

    def _step(self, h: float) -> None:
        p, s = self.params, self.state
        now = self._now + timedelta(seconds=h)
        s.outdoor_degc = p.climate.temperature_degc(now)
        s.outdoor_humidity_pct = p.climate.relative_humidity_pct(now)
        s.irradiance_wm2 = p.location.irradiance_wm2(now)
        occupied = is_occupied(now, p.occupied_from_hour, p.occupied_until_hour)

        # The inverter regulates on the voltage it measured last step (the bus voltage
        # depends on the flows this step produces).
        volts = s.meter.reading.voltage_v
        voltage_pu = sum(volts) / len(volts) / p.meter.nominal_voltage_v
        s.pv = step_pv(
            p.pv, s.pv, s.irradiance_wm2, s.outdoor_degc, h, voltage_pu=voltage_pu,
            frequency_hz=s.meter.reading.frequency_hz, nominal_hz=p.meter.nominal_frequency_hz,
        )  # fmt: skip
        s.battery = step_battery(p.battery, s.battery, h)
        s.zones = [
            step_zone(
                zp,
                zs,
                outdoor_degc=s.outdoor_degc,
                irradiance_wm2=s.irradiance_wm2,
                occupied=occupied,
                dt_s=h,
            )
            for zp, zs in zip(p.zones, s.zones, strict=True)
        ]
        s.fan = step_fan(p.fan, s.fan, h)
        base = p.base_load.power_w(now) * (1.0 + self._rng.gauss(0.0, p.base_load_noise))
        s.flows = PowerFlows(
            base_w=max(0.0, base) + s.extra_load_w,
            chillers_w=sum(z.chiller_power_w for z in s.zones),
            fan_w=fan_power_w(p.fan, s.fan.speed_pct),
            pv_w=s.pv.ac_power_w,
            battery_w=s.battery.active_power_w,
            switched_w=sum(circuit_powers_w(p.load_panel, tuple(s.circuits_on), now)),
            pv_var=s.pv.reactive_power_var,
        )
        source_v = (
            None if s.grid_voltage_pu is None else s.grid_voltage_pu * p.meter.nominal_voltage_v
        )
        s.meter = step_meter(
            p.meter, s.meter, s.flows, now=now, dt_s=h, rng=self._rng, source_voltage_v=source_v,
            frequency_hz=s.grid_frequency_hz,
        )  # fmt: skip
        self._now = now

    # ------------------------------------------------------------------------------ writes

    def write_point(self, device_id: str, point: str, value: float) -> None:
        """Apply a written setpoint. Range checks belong to the register map (``devices.py``).

        Raises ``UnknownPointError`` for a point that is not writable on that device.
        """
        s = self.state
        match device_id, point:
            case "battery", "active_power_setpoint_w":
                s.battery = replace(s.battery, setpoint_w=value)
            case "pv_inverter", "power_limit_pct":
                s.pv = replace(s.pv, power_limit_pct=value)
            case (("hvac_zone_1" | "hvac_zone_2"), "setpoint_degc"):
                index = 0 if device_id == HVAC_ZONE_1 else 1
                s.zones[index] = replace(s.zones[index], setpoint_degc=value)
            case "ahu_fan", "speed_setpoint_pct":
                s.fan = replace(s.fan, speed_setpoint_pct=value)
            case "ahu_fan", "run_command_state":
                s.fan = replace(s.fan, run_command=value >= 0.5)
            case "load_panel", _ if point in self._circuit_points():
                s.circuits_on[self._circuit_points().index(point)] = value >= 0.5
            case _:
                raise UnknownPointError(f"{device_id}.{point} is not a writable point")

    def _circuit_points(self) -> list[str]:
        return [f"{c.name}_on_state" for c in self.params.load_panel.circuits]

    def set_extra_load(self, power_w: float) -> None:
        """Add a load step of ``power_w`` on top of the base load (0 removes it)."""
        self.state.extra_load_w = power_w

    def set_battery_soc(self, soc_pct: float) -> None:
        """Put the battery at ``soc_pct`` state of charge (a demo's or a test's starting
        point, e.g. a battery already full so that the PV surplus is exported)."""
        battery = self.params.battery
        if not battery.soc_min_pct <= soc_pct <= battery.soc_max_pct:
            raise ValueError(
                f"battery SoC {soc_pct} % is outside {battery.soc_min_pct}..{battery.soc_max_pct}"
            )
        self.state.battery = replace(self.state.battery, soc_pct=soc_pct)

    def set_grid_voltage(self, voltage_pu: float | None) -> None:
        """Hold the grid's no-load voltage at ``voltage_pu`` of nominal (the site's own
        flows still move it by the source impedance, and the noise stays); ``None`` returns
        to nominal plus the tap. Takes effect from the next step."""
        if voltage_pu is not None and not 0.5 <= voltage_pu <= 1.5:
            raise ValueError(f"grid voltage {voltage_pu} pu is outside 0.5..1.5")
        self.state.grid_voltage_pu = voltage_pu

    def set_grid_frequency(self, frequency_hz: float | None) -> None:
        """Hold the grid frequency at ``frequency_hz`` (the meter's noise stays, the slow
        swing stops); ``None`` returns to nominal with its swing. Takes effect from the next
        step; every device that measures the frequency (meter, inverter) sees it."""
        if frequency_hz is not None and not 40.0 <= frequency_hz <= 70.0:
            raise ValueError(f"grid frequency {frequency_hz} Hz is outside 40..70")
        self.state.grid_frequency_hz = frequency_hz

    def set_pv_reactive_mode(self, mode: ReactiveMode) -> None:
        """What sets the PV inverter's reactive power from now on (its SunSpec 704/705
        controls decide it; see ``sunspec_devices``)."""
        self.state.pv = replace(self.state.pv, reactive_mode=mode)

    def set_pv_freq_droop(self, mode: FreqDroopMode) -> None:
        """The PV inverter's own frequency droop from now on (SunSpec 711)."""
        self.state.pv = replace(self.state.pv, freq_droop_mode=mode)

    def set_pv_volt_watt(self, mode: VoltWattMode) -> None:
        """The PV inverter's own volt-watt function from now on (SunSpec 706)."""
        self.state.pv = replace(self.state.pv, volt_watt_mode=mode)

    def break_loop(self, channel: int, broken: bool = True) -> None:
        """Cut (or repair) the wire of analog input ``channel``: the module then reads 0 mA."""
        if broken:
            self.state.broken_loops.add(channel)
        else:
            self.state.broken_loops.discard(channel)

    def force_loop(self, channel: int, current_ma: float | None) -> None:
        """Hold analog input ``channel`` at ``current_ma`` whatever its transmitter says
        (``None`` releases it)."""
        if current_ma is None:
            self.state.forced_loops_ma.pop(channel, None)
        else:
            self.state.forced_loops_ma[channel] = current_ma

    # ------------------------------------------------------------------------------- reads

    def device_values(self, device_id: str) -> dict[str, float]:
        """The device's points now, as floats in the unit of each point name."""
        try:
            reader = self._readers[device_id]
        except KeyError:
            raise KeyError(f"no simulated device {device_id!r}") from None
        return reader()

    def _meter_values(self) -> dict[str, float]:
        m = self.state.meter
        r = m.reading
        return {
            "voltage_l1_v": r.voltage_v[0],
            "voltage_l2_v": r.voltage_v[1],
            "voltage_l3_v": r.voltage_v[2],
            "current_l1_a": r.current_a[0],
            "current_l2_a": r.current_a[1],
            "current_l3_a": r.current_a[2],
            "active_power_l1_w": r.active_power_phase_w[0],
            "active_power_l2_w": r.active_power_phase_w[1],
            "active_power_l3_w": r.active_power_phase_w[2],
            "active_power_w": r.active_power_w,
            "apparent_power_va": r.apparent_power_va,
            "reactive_power_var": r.reactive_power_var,
            "power_factor_pf": r.power_factor,
            "frequency_hz": r.frequency_hz,
            "energy_import_wh": m.energy_import_wh,
            "energy_export_wh": m.energy_export_wh,
        }

    def _pv_values(self) -> dict[str, float]:
        pv, params = self.state.pv, self.params.pv
        r = self.state.meter.reading
        voltage = r.voltage_v[0]
        # MPP voltage of the strings: a little lower when hot, 0 at night.
        dc_voltage = (
            0.0 if pv.dc_power_w <= 0.0 else 720.0 - 0.8 * (pv.heatsink_temperature_degc - 25.0)
        )
        return {
            "ac_current_a": pv.ac_power_w / (3.0 * voltage),
            "ac_voltage_v": voltage,
            "ac_power_w": pv.ac_power_w,
            "ac_frequency_hz": r.frequency_hz,
            "energy_total_wh": pv.energy_wh,
            "dc_voltage_v": dc_voltage,
            "dc_current_a": pv.dc_power_w / dc_voltage if dc_voltage > 0.0 else 0.0,
            "dc_power_w": pv.dc_power_w,
            "heatsink_temperature_degc": pv.heatsink_temperature_degc,
            "operating_state": float(pv.operating_state),
            "event_flags_state": 0.0,
            "irradiance_wm2": pv.irradiance_wm2,
            "power_limit_pct": pv.power_limit_pct,
            "rated_power_w": params.ac_rating_w,
        }

    def _battery_values(self) -> dict[str, float]:
        b, params = self.state.battery, self.params.battery
        charge_w, discharge_w = battery_available_power_w(params, b.soc_pct)
        if b.active_power_w > 0.0:
            mode = 2.0  # discharging
        elif b.active_power_w < 0.0:
            mode = 1.0  # charging
        else:
            mode = 0.0  # idle
        return {
            "soc_pct": b.soc_pct,
            "soc_low_limit_state": float(b.at_low_limit(params)),
            "soc_high_limit_state": float(b.at_high_limit(params)),
            "power_limited_state": float(b.power_limited),
            "operating_state": mode,
            "active_power_w": b.active_power_w,
            "dc_voltage_v": battery_dc_voltage_v(params, b.soc_pct),
            "dc_current_a": battery_dc_current_a(params, b),
            "cell_temperature_degc": b.cell_temperature_degc,
            "energy_charged_wh": b.energy_charged_wh,
            "energy_discharged_wh": b.energy_discharged_wh,
            "available_charge_power_w": charge_w,
            "available_discharge_power_w": discharge_w,
            "capacity_wh": params.capacity_wh,
            "active_power_setpoint_w": b.setpoint_w,
        }

    def _zone_values(self, index: int) -> dict[str, float]:
        z = self.state.zones[index]
        return {
            "temperature_degc": z.temperature_degc,
            "effective_setpoint_degc": z.effective_setpoint_degc,
            "cooling_power_w": z.cooling_w,
            "chiller_power_w": z.chiller_power_w,
            "occupied_state": float(z.occupied),
            "setpoint_degc": z.setpoint_degc,
        }

    def _fan_values(self) -> dict[str, float]:
        f, params = self.state.fan, self.params.fan
        return {
            "run_command_state": float(f.run_command),
            "running_state": float(f.running),
            "at_speed_state": float(f.at_speed(params)),
            "fault_state": 0.0,
            "speed_setpoint_pct": f.speed_setpoint_pct,
            "speed_pct": f.speed_pct,
            "output_frequency_hz": fan_frequency_hz(params, f.speed_pct),
            "motor_speed_rpm": fan_speed_rpm(params, f.speed_pct),
            "motor_current_a": fan_current_a(params, f.speed_pct),
            "power_w": fan_power_w(params, f.speed_pct),
            "energy_wh": f.energy_wh,
        }

    def _load_panel_values(self) -> dict[str, float]:
        s, params = self.state, self.params.load_panel
        powers = circuit_powers_w(params, tuple(s.circuits_on), self._now)
        values: dict[str, float] = {}
        for circuit, on, power in zip(params.circuits, s.circuits_on, powers, strict=True):
            values[f"{circuit.name}_on_state"] = float(on)
            values[f"{circuit.name}_power_w"] = power
        values["total_power_w"] = sum(powers)
        return values

    def loop_currents_ma(self) -> tuple[float, float, float]:
        """Loop currents of the three transmitters as the module measures them."""
        s = self.state
        currents = (
            OUTDOOR_TEMPERATURE_LOOP.current_ma(s.outdoor_degc),
            OUTDOOR_HUMIDITY_LOOP.current_ma(s.outdoor_humidity_pct),
            IRRADIANCE_LOOP.current_ma(s.irradiance_wm2),
        )
        measured = tuple(
            s.forced_loops_ma.get(i, 0.0 if i in s.broken_loops else current)
            for i, current in enumerate(currents)
        )
        return measured[0], measured[1], measured[2]

    def _analog_io_values(self) -> dict[str, float]:
        """An Advantech ADAM-6017 (the device library's profile) on the same three outdoor
        transmitters, its channels set to the 0~20 mA range (type code 0x0182) so that it
        reports the loop current itself; channels 3-7 are unwired (0 mA)."""
        # The 0~20 mA range ends at 20 mA: the module reads no more than that.
        currents = [min(current, 20.0) for current in self.loop_currents_ma()]
        currents += [0.0] * (8 - len(currents))
        values = {f"ai{channel}_current_ma": i for channel, i in enumerate(currents)}
        values.update({f"ai{channel}_range_state": float(0x0182) for channel in range(8)})
        return values

    def _weather_values(self) -> dict[str, float]:
        i0, i1, i2 = self.loop_currents_ma()
        # The engineering values are what the module's µA registers say once the configured
        # 4-20 mA scaling is applied: the register, not the truth, is the measurement.
        return {
            "outdoor_temperature_degc": OUTDOOR_TEMPERATURE_LOOP.value(i0),
            "outdoor_humidity_pct": OUTDOOR_HUMIDITY_LOOP.value(i1),
            "irradiance_wm2": IRRADIANCE_LOOP.value(i2),
            "ai0_fault_state": float(loop_fault(i0)),
            "ai1_fault_state": float(loop_fault(i1)),
            "ai2_fault_state": float(loop_fault(i2)),
            "ai0_current_ma": i0,
            "ai1_current_ma": i1,
            "ai2_current_ma": i2,
        }
