"""IEEE 1547 functions beyond volt-var and volt-watt driving the simulated SunSpec inverter,
end to end: frequency droop (by 704 limits and by the inverter's own 711), constant power
factor (by 704 PFWInj and by var setpoints), watt-var, enter service after a trip.

Real processes and sockets, as in ``test_volt_var_sim``: the simulator's SunSpec inverter
over Modbus TCP, the gateway and the controller service on a real Mosquitto. The grid is
quiet (no source impedance, tap or noise) so that what the inverter measures is what the
test sets. Every assertion waits for the values to settle; none says how fast they came.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.codec import Command, decode_telemetry, encode_command
from gridpilot.control.ieee1547 import WattVar, frequency_droop_w, watt_var_q_pu
from gridpilot.sim.building import BuildingParams
from gridpilot.sim.physics import MeterParams
from gridpilot.sim.site import SimulatedSite
from gridpilot.sim.sunspec_devices import BASIC_INVERTER_PLAN, INVERTER_PLAN, SunSpecPlan
from tests.integration.der_sim_support import (
    INVERTER,
    inverter_telemetry,
    scan_of_gridpilot_sim,
    settled,
    sunspec_loop,
)
from tests.integration.test_gateway_support import Observer, Record, observing

pytestmark = pytest.mark.integration

RATED_W = 100_000.0
LIMIT = f"{INVERTER}.m704_wmaxlimpct_pct"
LIMIT_ENABLE = {f"{INVERTER}.m704_wmaxlimpctena_state": 1}


def quiet_60_hz_grid() -> BuildingParams:
    """A 60 Hz grid without source impedance, tap, voltage or frequency noise or swing."""
    return BuildingParams(
        meter=MeterParams(
            tap_offset_v=0.0,
            droop_v_per_kw=0.0,
            voltage_noise_v=0.0,
            nominal_frequency_hz=60.0,
            frequency_noise_hz=0.0,
            frequency_swing_hz=0.0,
        )
    )


@pytest.fixture
def site_id() -> str:
    return f"der-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


def running_loop(
    plan: SunSpecPlan,
    broker: BrokerAddress,
    site_id: str,
    tmp_path: Path,
    control: dict[str, Any],
) -> contextlib.AbstractAsyncContextManager[SimulatedSite]:
    return sunspec_loop(plan, broker, site_id, tmp_path, control=control, grid=quiet_60_hz_grid())


def controller_metrics(name: str) -> Callable[[Record], dict[str, float] | None]:
    """The metrics of controller ``name`` in the controller service's telemetry, without the
    ``{name}_`` prefix."""

    def metrics(record: Record) -> dict[str, float] | None:
        if record.device == INVERTER or record.kind != "telemetry":
            return None
        prefix = f"{name}_"
        values: dict[str, float] = record.json["values"]
        out = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
        return out or None

    return metrics


# ---------------------------------------------------------------------------- frequency droop


async def test_frequency_droop_by_704_limits_curtails_on_over_frequency_and_releases(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """60.0 -> 60.5 -> 60.0 Hz: at 60.5 Hz the inverter's output settles at the Category B
    droop from its output before the excursion (5 % droop, 0.036 Hz dead band: 15.5 kW
    less), held by 704 ``WMaxLimPct``; back at 60.0 Hz the limit is released to 100 % and
    the output returns to what the sun gives."""
    control = {
        "freq_droop": {
            "frequency": f"{INVERTER}.m701_hz",
            "active_power": f"{INVERTER}.m701_w",
            "available_power": f"{INVERTER}.m122_waval_w",
            "rated_w": RATED_W,
            "pv_limit": LIMIT,
            "enable": LIMIT_ENABLE,
        }
    }
    async with running_loop(BASIC_INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        site.building.set_grid_frequency(60.0)
        before = await settled(observer, lambda v: v["m701_hz"] == 60.0)
        assert before["m701_w"] > 60_000.0  # noon in July, nothing limits it
        droop = controller_metrics("freq_droop")
        await observer.wait_for(
            lambda r: (v := droop(r)) is not None and "p_pre_w" in v, within=30.0
        )

        site.building.set_grid_frequency(60.5)
        record = await observer.wait_for(
            lambda r: (v := droop(r)) is not None and v.get("target_w", 0.0) > 0.0, within=30.0
        )
        metrics = droop(record)
        assert metrics is not None
        p_pre = metrics["p_pre_w"]
        # P_pre is the output just before the step (the sun hardly moves in a few seconds).
        assert p_pre == pytest.approx(before["m701_w"], abs=1_000.0)
        expected = frequency_droop_w(60.5, p_pre_w=p_pre, p_rated_w=RATED_W, p_avail_w=RATED_W)
        assert p_pre - expected == pytest.approx(RATED_W * 0.464 / 3.0)  # 15.47 kW less
        values = await settled(
            observer,
            lambda v: (
                v["m701_hz"] == 60.5
                and v["m704_wmaxlimpctena_state"] == 1.0
                and abs(v["m701_w"] - expected) <= 300.0
            ),
        )
        assert values["m704_wmaxlimpct_pct"] == pytest.approx(expected / 1000.0, abs=0.2)
        assert site.building.state.pv.ac_power_w == pytest.approx(expected, abs=300.0)

        site.building.set_grid_frequency(60.0)
        released = await settled(
            observer,
            lambda v: v["m704_wmaxlimpct_pct"] == 100.0 and v["m701_w"] > expected + 10_000.0,
        )
        assert released["m701_hz"] == 60.0
        events = [r.json for r in observer.records if r.topic.endswith("/events")]
        texts = " ".join(str(e) for e in events)
        assert "over-frequency 60.500 Hz" in texts
        assert "back in the dead band: released" in texts


async def command(
    observer: Observer, site: SimulatedSite, site_id: str, point: str, value: float
) -> None:
    """An operator's write to the inverter through the gateway's command path, applied."""
    ts = int(site.now.timestamp() * 1000)
    sent = Command(uuid.uuid4().hex, point, value, ts + 60_000, "test")
    await observer.command(site_id, INVERTER, encode_command(sent))
    result = await observer.wait_for(
        lambda r: r.kind == "command/result" and r.json["id"] == sent.id, within=10.0
    )
    assert result.json["status"] == "applied", result.json


async def test_under_frequency_raises_a_held_back_inverter_as_far_as_its_headroom(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """An operator holds the inverter at 40 % with ~80 kW available. At 59.5 Hz the droop
    raises its 704 limit by 0.464 Hz / 3 Hz of the rating (15.5 kW) and the output follows;
    back at 60 Hz the operator's 40 % is restored."""
    control = {
        "freq_droop": {
            "frequency": f"{INVERTER}.m701_hz",
            "active_power": f"{INVERTER}.m701_w",
            "available_power": f"{INVERTER}.m122_waval_w",
            "rated_w": RATED_W,
            "pv_limit": LIMIT,
            "enable": LIMIT_ENABLE,
        }
    }
    async with running_loop(BASIC_INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        site.building.set_grid_frequency(60.0)
        await settled(observer, lambda v: v["m701_w"] > 60_000.0)
        await command(observer, site, site_id, "m704_wmaxlimpctena_state", 1.0)
        await command(observer, site, site_id, "m704_wmaxlimpct_pct", 40.0)
        held = await settled(observer, lambda v: abs(v["m701_w"] - 40_000.0) <= 100.0)
        assert held["m122_waval_w"] > 60_000.0  # the headroom
        droop = controller_metrics("freq_droop")
        await observer.wait_for(
            lambda r: (v := droop(r)) is not None and abs(v.get("p_pre_w", 0.0) - 40_000.0) <= 100,
            within=30.0,
        )
        site.building.set_grid_frequency(59.5)
        expected = frequency_droop_w(
            59.5, p_pre_w=40_000.0, p_rated_w=RATED_W, p_avail_w=held["m122_waval_w"]
        )
        assert expected == pytest.approx(40_000.0 + RATED_W * 0.464 / 3.0)
        raised = await settled(
            observer, lambda v: v["m701_hz"] == 59.5 and abs(v["m701_w"] - expected) <= 300.0
        )
        assert raised["m704_wmaxlimpct_pct"] == pytest.approx(expected / 1000.0, abs=0.2)
        site.building.set_grid_frequency(60.0)
        await settled(
            observer,
            lambda v: v["m704_wmaxlimpct_pct"] == 40.0 and abs(v["m701_w"] - 40_000.0) <= 100.0,
        )


async def test_frequency_droop_written_into_sunspec_711_runs_in_the_inverter(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """Category B droop written into the inverter's 711 control 2, adopted and enabled: at
    60.5 Hz the inverter itself lowers its output by 15.5 kW (its factory control, 0.017 Hz
    and 3 %, would take 26.8 kW), with no 704 command from GridPilot; back at 60.0 Hz it
    returns to what the sun gives."""
    control = {
        "freq_droop": {
            "mode": "sunspec_ctl",
            "device": INVERTER,
            "frequency": f"{INVERTER}.m701_hz",
            "rated_w": RATED_W,
        }
    }
    async with running_loop(INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        site.building.set_grid_frequency(60.0)
        enabled = await settled(
            observer,
            lambda v: v.get("m711_ena_state") == 1.0 and v.get("m711_ctl_1_kof_count") == 0.05,
        )
        assert enabled["m711_ctl_1_dbof_hz"] == 0.036
        assert enabled["m711_adptctlrslt_state"] == 1.0  # COMPLETED
        assert enabled["m121_ecpnomhz_hz"] == 60.0
        mode = site.building.state.pv.freq_droop_mode
        assert (mode.enabled, mode.db_of_hz, mode.k_of) == (True, 0.036, 0.05)
        before = await settled(observer, lambda v: v["m701_hz"] == 60.0)
        site.building.set_grid_frequency(60.5)
        p_pre = before["m701_w"]
        expected = frequency_droop_w(60.5, p_pre_w=p_pre, p_rated_w=RATED_W, p_avail_w=RATED_W)
        await settled(observer, lambda v: v["m701_hz"] == 60.5 and v["m701_w"] < p_pre - 10_000.0)
        drooped = await settled(observer, lambda v: abs(v["m701_w"] - expected) <= 500.0)
        assert drooped["m704_wmaxlimpct_pct"] == 100.0  # not GridPilot's limit: the inverter's
        assert site.building.state.pv.droop_pct == pytest.approx(expected / 1000.0, abs=0.5)
        site.building.set_grid_frequency(60.0)
        # The droop returns the output to where it was and lets go.
        await settled(
            observer,
            lambda v: (
                abs(v["m701_w"] - p_pre) <= 1_000.0
                and site.building.state.pv.droop_p_pre_pct is None
            ),
        )
        assert not any(
            r.kind == "command" and b"m704_wmaxlimpct" in r.payload for r in observer.records
        )


# ---------------------------------------------------------------------------- constant PF

TOLERANCE_VAR = 300.0
"""The 10 var register resolution, a poll's worth of the sun's drift and what is left of
the inverter's lag."""


async def test_constant_power_factor_by_704_pfwinj_the_inverter_holds_q_on_p(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """PF 0.90 absorbing written into 704 ``PFWInj``: the inverter itself absorbs
    P · tan(acos 0.9) = 0.484 P (38.7 kvar at 80 kW); no var setpoint is sent."""
    control = {"constant_pf": {"device": INVERTER, "pf": 0.9, "excitation": "absorbing"}}
    async with running_loop(BASIC_INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        ratio = math.tan(math.acos(0.9))
        values = await settled(
            observer,
            lambda v: (
                v.get("m704_pfwinjena_state") == 1.0
                and abs(v["m701_var"] + ratio * v["m701_w"]) <= TOLERANCE_VAR
            ),
        )
        assert values["m704_pfwinj_pf"] == 0.9
        assert values["m704_pfwinj_ext_state"] == 1.0  # UNDER_EXCITED
        assert values["m701_w"] > 60_000.0
        assert abs(values["m701_pf"]) == pytest.approx(0.9, abs=0.005)
        mode = site.building.state.pv.reactive_mode
        assert (mode.kind, mode.pf, mode.injecting) == ("power_factor", 0.9, False)
        assert not any(
            r.kind == "command" and b"m704_varset" in r.payload for r in observer.records
        )


async def test_constant_power_factor_by_var_setpoints_from_the_measured_power(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """PF 0.95 injecting for an inverter driven by var setpoints: the controller computes
    Q = 0.329 P from the inverter's measured P and the inverter injects it."""
    control = {
        "constant_pf": {
            "mode": "setpoint",
            "pf": 0.95,
            "active_power": f"{INVERTER}.m701_w",
            "var_setpoint": f"{INVERTER}.m704_varset_var",
            "enable": {
                f"{INVERTER}.m704_varsetena_state": 1,
                f"{INVERTER}.m704_varsetmod_state": 4,
            },
        }
    }
    async with running_loop(BASIC_INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        ratio = math.tan(math.acos(0.95))
        values = await settled(
            observer,
            lambda v: (
                v.get("m704_varsetena_state") == 1.0
                and v["m701_var"] > 10_000.0
                and abs(v["m701_var"] - ratio * v["m701_w"]) <= TOLERANCE_VAR
            ),
        )
        assert values["m701_pf"] == pytest.approx(0.95, abs=0.005)
        assert site.building.state.pv.reactive_mode.kind == "var"


# ---------------------------------------------------------------------------- watt-var


async def test_watt_var_by_704_setpoints_follows_the_inverters_active_power(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """Category B watt-var by var setpoints: at noon's ~80 kW the inverter absorbs
    0.44 · (0.8 - 0.5) / 0.5 of its rating (~26 kvar); an operator's 40 % power limit
    brings P under 0.5 pu and Q back to 0; lifted, Q follows P down the curve again."""
    control = {
        "watt_var": {
            "active_power": f"{INVERTER}.m701_w",
            "rated_w": RATED_W,
            "rated_va": RATED_W,
            "var_setpoint": f"{INVERTER}.m704_varset_var",
            "reactive_power": f"{INVERTER}.m701_var",
            "response_time_s": 5.0,
            "enable": {
                f"{INVERTER}.m704_varsetena_state": 1,
                f"{INVERTER}.m704_varsetmod_state": 4,
            },
        }
    }
    curve = WattVar.category_b()

    def on_curve(v: dict[str, float]) -> bool:
        expected = watt_var_q_pu(v["m701_w"] / RATED_W, curve) * RATED_W
        return abs(v["m701_var"] - expected) <= TOLERANCE_VAR

    async with running_loop(BASIC_INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        full = await settled(observer, lambda v: v["m701_w"] > 60_000.0 and on_curve(v))
        assert full["m701_var"] < -15_000.0  # absorbing, the curve's upper half
        # An operator limits the inverter to 40 % (through the gateway's command path).
        for point, value in (("m704_wmaxlimpctena_state", 1.0), ("m704_wmaxlimpct_pct", 40.0)):
            ts = int(site.now.timestamp() * 1000)
            sent = Command(uuid.uuid4().hex, point, value, ts + 60_000, "test")
            await observer.command(site_id, INVERTER, encode_command(sent))
            result = await observer.wait_for(
                lambda r, i=sent.id: r.kind == "command/result" and r.json["id"] == i,
                within=10.0,
            )
            assert result.json["status"] == "applied", result.json
        limited = await settled(
            observer, lambda v: v["m701_w"] <= 40_100.0 and abs(v["m701_var"]) <= TOLERANCE_VAR
        )
        assert limited["m701_w"] > 30_000.0
        ts = int(site.now.timestamp() * 1000)
        sent = Command(uuid.uuid4().hex, "m704_wmaxlimpct_pct", 100.0, ts + 60_000, "test")
        await observer.command(site_id, INVERTER, encode_command(sent))
        await settled(observer, lambda v: v["m701_w"] > 60_000.0 and on_curve(v))


async def test_watt_var_curve_written_into_sunspec_712_runs_in_the_inverter(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """Category B watt-var written into the inverter's 712 and enabled: the inverter itself
    absorbs on the curve at its present power (its factory Category A curve would absorb
    little more than half as much), with no var setpoint from GridPilot."""
    control = {
        "watt_var": {
            "mode": "sunspec_curve",
            "device": INVERTER,
            "active_power": f"{INVERTER}.m701_w",
            "rated_w": RATED_W,
            "rated_va": RATED_W,
        }
    }
    curve = WattVar.category_b()

    def on_curve(v: dict[str, float]) -> bool:
        expected = watt_var_q_pu(v["m701_w"] / RATED_W, curve) * RATED_W
        return abs(v["m701_var"] - expected) <= TOLERANCE_VAR

    async with running_loop(INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        enabled = await settled(
            observer,
            lambda v: v.get("m712_ena_state") == 1.0 and v.get("m712_crv_1_pt_3_var_pct") == -44.0,
        )
        assert [enabled[f"m712_crv_1_pt_{k}_w_pct"] for k in (1, 2, 3)] == [20.0, 50.0, 100.0]
        values = await settled(observer, lambda v: v["m701_w"] > 60_000.0 and on_curve(v))
        category_a = -0.25 * RATED_W * (values["m701_w"] / RATED_W - 0.5) / 0.5
        assert values["m701_var"] < category_a - 5_000.0
        assert site.building.state.pv.reactive_mode.kind == "watt_var"
        assert not any(
            r.kind == "command" and b"m704_varset" in r.payload for r in observer.records
        )


# ---------------------------------------------------------------------------- enter service

DELAY_S = 60.0
RAMP_S = 60.0
"""Shorter than the 300 s defaults, in simulated time (6 s of wall time each)."""


async def test_enter_service_after_a_trip_holds_the_inverter_for_the_delay_then_ramps(
    mosquitto: BrokerAddress, site_id: str, observer: Observer, tmp_path: Path
) -> None:
    """1.12 pu trips the simulated inverter, which reconnects by itself as soon as the
    voltage is back (no enter-service delay of its own). The controller holds its 704
    limit at 0 % until the voltage and frequency have been in the window for the delay
    (no output before then, in the telemetry's simulated time), then ramps the limit from 0
    to 100 % -- the output following it up -- and releases it."""
    control = {
        "enter_service": {
            "voltage": f"{INVERTER}.m701_lnv_v",
            "nominal_voltage_v": 230.0,
            "frequency": f"{INVERTER}.m701_hz",
            "connected": f"{INVERTER}.m701_connst_state",
            "pv_limit": LIMIT,
            "enable": LIMIT_ENABLE,
            "delay_s": DELAY_S,
            "ramp_s": RAMP_S,
        }
    }
    async with running_loop(BASIC_INVERTER_PLAN, mosquitto, site_id, tmp_path, control) as site:
        site.building.set_grid_frequency(60.0)
        await settled(observer, lambda v: v["m701_w"] > 60_000.0 and v["m701_connst_state"] == 1)
        site.building.set_grid_voltage(1.12)
        await settled(
            observer,
            lambda v: (
                v["m701_connst_state"] == 0.0
                and v["m701_w"] == 0.0
                and v["m704_wmaxlimpct_pct"] == 0.0
                and v["m704_wmaxlimpctena_state"] == 1.0
            ),
        )
        restored_ms = int(site.now.timestamp() * 1000)
        site.building.set_grid_voltage(1.0)
        # The inverter is back at once, but held at 0 %.
        reconnected = await settled(observer, lambda v: v["m701_connst_state"] == 1.0)
        assert reconnected["m701_w"] == 0.0
        assert reconnected["m704_wmaxlimpct_pct"] == 0.0
        released = await settled(
            observer,
            lambda v: v["m704_wmaxlimpct_pct"] == 100.0 and v["m701_w"] > 60_000.0,
            within=90.0,
        )
        assert released["m701_connst_state"] == 1.0
        after = [
            (decode_telemetry(r.payload).ts_ms, values)
            for r in observer.records
            if (values := inverter_telemetry(r)) is not None
            and decode_telemetry(r.payload).ts_ms > restored_ms
        ]
        first_output_ms = min(ts for ts, v in after if v["m701_w"] > 500.0)
        # No output until the window had held for the delay (simulated time).
        assert first_output_ms >= restored_ms + DELAY_S * 1000
        # The ramp: limits between 0 and 100 %, the output never above the limit.
        ramp = [v for _, v in after if 5.0 < v["m704_wmaxlimpct_pct"] < 95.0]
        assert len(ramp) >= 3
        # Slack: 701 and 704 may be read a poll (2 s simulated, 3.3 % of the ramp) apart.
        assert all(v["m701_w"] <= v["m704_wmaxlimpct_pct"] * 1000.0 + 4_000.0 for v in ramp)
        limits = [v["m704_wmaxlimpct_pct"] for v in ramp]
        assert limits == sorted(limits)
        texts = " ".join(
            r.payload.decode() for r in observer.records if r.topic.endswith("/events")
        )
        assert "says tripped" in texts
        assert "enter service: in service" in texts


async def test_gridpilot_sim_holds_the_grid_frequency_it_is_given(tmp_path: Path) -> None:
    """``gridpilot sim --nominal-frequency 60 --grid-frequency 60.5``: the SunSpec inverter,
    scanned over Modbus TCP, measures 60.5 Hz on a 60 Hz grid."""
    models = await scan_of_gridpilot_sim(
        tmp_path,
        ["--nominal-frequency", "60", "--grid-frequency", "60.5"],
        "grid frequency held at 60.5 Hz",
    )
    assert models[701]["points"]["Hz"]["value"] == pytest.approx(60.5, abs=0.02)
    assert models[121]["points"]["ECPNomHz"]["value"] == 60.0
