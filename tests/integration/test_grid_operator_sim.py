"""A utility export limit in closed loop: grid/controls -> controller -> Mosquitto -> gateway ->
Modbus -> the simulated building, with peak shaving and self-consumption running as well.

The building runs 30x faster than the wall clock (as in ``test_control_sim``) on a sunny
Saturday morning with a light load, so it exports tens of kW. Peak shaving and the PV
export controller (self-consumption, a 60 kW connection limit) run throughout. What is
shown (issue 6, "Done when"): a retained ``grid/controls`` message with an ``opModExpLimW``
event holds the site's measured export under the limit while it is active (after a
settling allowance), overriding self-consumption: its request for the battery is raised
by the grid operator's bound (``limited_by: grid_operator``) and the PV limit is the grid
operator's; a malformed message meanwhile is refused and the limit kept, and once the
message is replaced by one without the mode, control returns to normal.
"""

from __future__ import annotations

import asyncio
import bisect
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig
from gridpilot.control.factory import build_controllers
from gridpilot.control.grid_controls import ControlMode, GridControls, encode_grid_controls
from gridpilot.control.service import ControllerService
from gridpilot.gateway.service import GatewayService
from gridpilot.model import Topic
from gridpilot.sim.control import control_section
from gridpilot.sim.physics import BatteryParams
from gridpilot.sim.site import SimulatedSite

pytestmark = pytest.mark.integration

SPEED = 30.0
TICK_S = 0.05  # 1.5 simulated seconds per tick
POLL_S = 0.1  # wall seconds: 3 simulated seconds, a reading per control cycle
START = datetime(2026, 7, 4, 10, 27, tzinfo=UTC)  # a Saturday morning, sunny
EVENT_START = datetime(2026, 7, 4, 10, 30, tzinfo=UTC)
SETTLE = timedelta(seconds=30)
HARD_LIMIT_WINDOW = timedelta(seconds=15)
EVENT_END = datetime(2026, 7, 4, 10, 36, tzinfo=UTC)
EXPORT_LIMIT_W = 5_000.0
CONNECTION_LIMIT_W = 60_000.0
LIGHT_LOAD_W = -35_000.0
"""Taken off the base load: the weekend's ~45 kW drops to ~15 kW against ~80 kW of PV, so
that the battery alone cannot hold a 5 kW export limit and PV must be curtailed too."""


@dataclass
class Trace:
    """What the building did, tick by tick, in simulated time."""

    times: list[datetime] = field(default_factory=list)
    grid_w: list[float] = field(default_factory=list)
    export_wh: list[float] = field(default_factory=list)
    pv_limit_pct: list[float] = field(default_factory=list)
    battery_w: list[float] = field(default_factory=list)
    targets: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    """The controller's targets and who set them, as its status gives them, each tick."""

    def at(self, series: list[float], when: datetime) -> float:
        i = bisect.bisect_left(self.times, when)
        assert 0 < i < len(self.times), f"{when} is outside the trace"
        t0, t1 = self.times[i - 1], self.times[i]
        frac = (when - t0) / (t1 - t0)
        return series[i - 1] + (series[i] - series[i - 1]) * frac

    def mean_export_w(self, start: datetime, end: datetime) -> float:
        """Average export over [start, end] from the meter's export energy counter."""
        hours = (end - start) / timedelta(hours=1)
        return (self.at(self.export_wh, end) - self.at(self.export_wh, start)) / hours

    def between(self, series: list[float], start: datetime, end: datetime) -> list[float]:
        return [v for t, v in zip(self.times, series, strict=True) if start <= t <= end]


async def trace_building(
    site: SimulatedSite, trace: Trace, service: Callable[[], ControllerService | None]
) -> None:
    while True:
        running = service()
        if running is not None:
            trace.targets.append((site.now, running.status()["targets"]))
        state = site.building.state
        trace.times.append(site.now)
        trace.grid_w.append(state.meter.reading.active_power_w)
        trace.export_wh.append(state.meter.energy_export_wh)
        trace.pv_limit_pct.append(state.pv.power_limit_pct)
        trace.battery_w.append(state.battery.active_power_w)
        await site.wait_ticks(1)


async def until_sim(
    site: SimulatedSite, trace: Trace, when: datetime, timeout_s: float = 120.0
) -> None:
    """Until the site's clock and the trace have both reached ``when``: the trace records on
    the same tick as this wakes, in either order, and ``Trace.at`` needs a sample at or
    after the time it reads."""
    async with asyncio.timeout(timeout_s):
        while site.now < when or not trace.times or trace.times[-1] < when:
            await site.wait_ticks(1)


def config_for(site: SimulatedSite, broker: BrokerAddress) -> GridPilotConfig:
    site_id = f"utility-{uuid.uuid4().hex[:10]}"
    devices = site.site_config(site_id)
    for device in devices:
        device["poll_interval"] = POLL_S
        device["timeout"] = 0.1
        device["retries"] = 0
    battery = BatteryParams()
    control = control_section(
        limit_w=150_000.0,
        cycle_s=0.1,  # 3 simulated seconds
        meter_max_age_s=30.0,
        min_on_s=60.0,
        min_off_s=60.0,
        shed_settle_s=15.0,
        timezone="UTC",
        hvac=False,
    )
    control["journal"] = None
    control["command_ttl"] = 5.0  # wall seconds
    # Peak shaving recharges only up to its reserve (50 %; the battery holds 60 %): otherwise
    # it would take the battery from self-consumption and charge it at its most.
    control["peak_shaving"]["recharge_target"] = "reserve"
    control["limits"].append({"point": "pv_inverter.power_limit_pct", "min": 0, "max": 100})
    battery_points = {
        "battery_soc": "battery.soc_pct",
        "battery_power": "battery.active_power_w",
        "battery_setpoint": "battery.active_power_setpoint_w",
        "battery_available_charge": "battery.available_charge_power_w",
    }
    # Ages in simulated seconds: the loop reads every 6 s and acts every 3 s.
    control["pv_export"] = {
        "pv_rated_power_w": site.building.params.pv.ac_rating_w,
        "export_limit_w": CONNECTION_LIMIT_W,
        "self_consumption": True,
        "battery_max_charge_w": 20_000.0,
        "max_age_s": 20.0,
        **battery_points,
    }
    control["grid_operator"] = {
        "pv_rated_power_w": site.building.params.pv.ac_rating_w,
        "battery_max_charge_w": battery.max_charge_w,
        "battery_max_discharge_w": battery.max_discharge_w,
        "max_age_s": 20.0,
        # the building's load moves at random by ~1.5 % of ~40 kW every 5 s step and its
        # chillers stage on and off, and a reading is up to 6 s old when it is acted on:
        # aim 2.5 kW inside the limit
        "margin_w": 2_500.0,
        "hysteresis_w": 1_000.0,
        "release_rate_pct_per_s": 0.25,
        **battery_points,
    }
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site_id},
            "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
            "gateway": {"id": "gw"},
            "control": control,
            "devices": devices,
        }
    )


def controls_message(now: datetime, modes: dict[str, ControlMode]) -> bytes:
    return encode_grid_controls(GridControls(now, "ieee2030_5", now + timedelta(minutes=30), modes))


@dataclass
class Loop:
    site: SimulatedSite
    config: GridPilotConfig
    service: ControllerService
    trace: Trace
    bus: BusClient
    events: list[dict[str, Any]]


@pytest.fixture
async def loop(mosquitto: BrokerAddress, tmp_path: Path) -> AsyncIterator[Loop]:
    async with SimulatedSite(speed=SPEED, start=START, tick_s=TICK_S) as site:
        site.building.set_extra_load(LIGHT_LOAD_W)
        config = config_for(site, mosquitto)

        def sim_ms() -> int:
            return int(site.now.timestamp() * 1000)

        trace = Trace()
        events: list[dict[str, Any]] = []
        running: list[ControllerService] = []
        tracer = asyncio.create_task(
            trace_building(site, trace, lambda: running[0] if running else None)
        )
        try:
            async with (
                BusClient(mosquitto, f"utility-test-{uuid.uuid4().hex[:8]}") as bus,
                GatewayService(config, mosquitto, clock=sim_ms),
                ControllerService(
                    config,
                    mosquitto,
                    build_controllers(config),
                    base_dir=tmp_path,
                    clock=lambda: site.now,
                ) as service,
            ):
                running.append(service)
                await bus.subscribe(str(Topic.events(config.site.id)), qos=1)

                async def collect() -> None:
                    async for message in bus.messages():
                        events.append(orjson.loads(message.payload))

                collector = asyncio.create_task(collect())
                try:
                    yield Loop(site, config, service, trace, bus, events)
                finally:
                    collector.cancel()
                    await bus.publish(
                        str(Topic.grid_controls(config.site.id)), b"", retain=True
                    )  # clear the retained message: the broker is shared
        finally:
            tracer.cancel()


async def test_an_export_limit_event_holds_the_export_and_overrides_lower_priorities(
    loop: Loop,
) -> None:
    site, trace, service = loop.site, loop.trace, loop.service
    topic = str(Topic.grid_controls(loop.config.site.id))

    # --- before the event: self-consumption and peak shaving alone let the site export
    await until_sim(site, trace, EVENT_START)
    before_w = trace.mean_export_w(EVENT_START - timedelta(minutes=1), EVENT_START)
    assert before_w > EXPORT_LIMIT_W + 5_000.0, before_w
    assert max(trace.between(trace.pv_limit_pct, START, EVENT_START)) == 100.0

    # --- the utility's export limit, published like the 2030.5 client does (retained)
    limit = ControlMode("opModExpLimW", EXPORT_LIMIT_W, "event", "W", "5A7E0C1D2B3F", 1)
    await loop.bus.publish(topic, controls_message(site.now, {"opModExpLimW": limit}), retain=True)
    settled = EVENT_START + SETTLE
    await until_sim(site, trace, settled + timedelta(minutes=1))

    status = service.status()
    assert status["grid_controls"]["modes"] == [limit.describe()]

    # a malformed message (not retained) is refused and the limit holds on
    await loop.bus.publish(topic, b'{"ts": "yesterday"}')
    await until_sim(site, trace, EVENT_END)

    # --- while the event is active: the export stays under the limit. The building's load
    # steps at random every few seconds (noise, chillers staging) and the meter is read every
    # 6 s, so no controller holds every instant: the limit is held the way export limits are
    # specified (AS/NZS 4777.1's hard limit: within 15 s) -- every 15-second and every
    # 1-minute average under it, and no instant above it for 15 s or longer.
    window = settled
    while window + HARD_LIMIT_WINDOW <= EVENT_END:
        mean_w = trace.mean_export_w(window, window + HARD_LIMIT_WINDOW)
        assert mean_w <= EXPORT_LIMIT_W, (window, mean_w)
        window += timedelta(seconds=5)
    minute = settled
    while minute + timedelta(minutes=1) <= EVENT_END:
        mean_w = trace.mean_export_w(minute, minute + timedelta(minutes=1))
        assert mean_w <= EXPORT_LIMIT_W - 1_000.0, (minute, mean_w)
        minute += timedelta(minutes=1)
    over_since: datetime | None = None
    for when, grid_w in zip(trace.times, trace.grid_w, strict=True):
        if not settled <= when <= EVENT_END:
            continue
        if -grid_w <= EXPORT_LIMIT_W:
            over_since = None
            continue
        over_since = over_since or when
        assert when - over_since < HARD_LIMIT_WINDOW, (over_since, when, -grid_w)
    # Who set the battery and the PV limit, cycle by cycle: self-consumption asks the battery
    # for its 20 kW; the utility's limit needs more, and its bound (a grid-operator
    # constraint) raises the charge -- never lowers it; the PV limit is the grid operator's.
    during = [targets for when, targets in trace.targets if settled <= when <= EVENT_END]
    batteries = [t["battery.active_power_setpoint_w"] for t in during]
    assert {b["source"] for b in batteries} == {"pv_export"}, batteries
    assert all(b["value"] <= -20_000.0 for b in batteries), batteries
    raised = [b for b in batteries if b["limited_by"] == ["grid_operator"]]
    assert len(raised) > len(batteries) / 2, batteries
    assert min(b["value"] for b in raised) < -40_000.0
    pv_limits = [t["pv_inverter.power_limit_pct"] for t in during]
    assert {p["source"] for p in pv_limits} == {"grid_operator"}, pv_limits
    assert min(trace.between(trace.pv_limit_pct, settled, EVENT_END)) < 95.0
    assert min(trace.between(trace.battery_w, settled, EVENT_END)) < -40_000.0
    assert service.status()["grid_controls"]["refused"] == 1
    refused = [e for e in loop.events if "refused" in e["message"]]
    assert refused, loop.events
    assert "keeping the last good one" in refused[0]["message"]
    assert any("utility controls in force: opModExpLimW" in e["message"] for e in loop.events)

    # --- the event ends: the message is replaced by one without the mode. Control returns
    # to the lower priorities: self-consumption charges its 20 kW, the PV limit is released
    # to 100 % and the export goes back up, under the connection limit.
    await loop.bus.publish(topic, controls_message(site.now, {}), retain=True)
    # The release ramps at 0.25 %/s: from ~65 % it takes some 140 s (longer if a reading is
    # late, when the ramp holds).
    async with asyncio.timeout(60):
        while site.building.state.pv.power_limit_pct < 100.0:
            await site.wait_ticks(1)
    released = site.now
    assert released - EVENT_END < timedelta(minutes=5), released
    await until_sim(site, trace, released + timedelta(minutes=1, seconds=5))
    after_w = trace.mean_export_w(released, released + timedelta(minutes=1))
    assert after_w > EXPORT_LIMIT_W + 5_000.0, after_w
    assert after_w <= CONNECTION_LIMIT_W, after_w
    assert trace.between(trace.pv_limit_pct, released, site.now)[-1] == 100.0
    status = service.status()
    battery = status["targets"]["battery.active_power_setpoint_w"]
    assert battery["source"] == "pv_export", battery
    assert battery["limited_by"] == [], battery
    assert battery["value"] == -20_000.0, battery
    pv_limit = status["targets"].get("pv_inverter.power_limit_pct")
    assert pv_limit is None or pv_limit["source"] != "grid_operator", pv_limit
    assert pv_limit is None or "grid_operator" not in pv_limit["limited_by"], pv_limit
    assert status["grid_controls"]["modes"] == []
    assert any("no utility control in force any more" in e["message"] for e in loop.events)
