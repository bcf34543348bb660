"""The simulated site over real Modbus TCP: pymodbus' own client against the sim's servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException
from pymodbus.pdu import ModbusPDU

from gridpilot.config import GridPilotConfig, validate_config_text
from gridpilot.fieldbus.codec import RegisterSpec, decode, encode
from gridpilot.fieldbus.planner import extract, plan_reads
from gridpilot.model import Table
from gridpilot.sim.devices import DEVICE_MAPS, SimPoint
from gridpilot.sim.site import SimulatedSite, run_sim

pytestmark = pytest.mark.integration

WEDNESDAY_NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    """A site whose ticker runs (every 50 ms)."""
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as running:
        yield running


@pytest.fixture
async def still_site() -> AsyncIterator[SimulatedSite]:
    """A site whose ticker does not fire during a test: time moves only by ``advance``, so
    what a client reads can be compared exactly with the physics."""
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=3600.0) as running:
        yield running


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    # No background reconnects: a test that stops a server must not leave a task behind.
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


async def read_words(
    c: AsyncModbusTcpClient, unit: int, table: Table, address: int, count: int
) -> list[int]:
    reply: ModbusPDU
    match table:
        case Table.INPUT:
            reply = await c.read_input_registers(address, count=count, device_id=unit)
        case Table.HOLDING:
            reply = await c.read_holding_registers(address, count=count, device_id=unit)
        case Table.COIL:
            reply = await c.read_coils(address, count=count, device_id=unit)
        case Table.DISCRETE:
            reply = await c.read_discrete_inputs(address, count=count, device_id=unit)
    assert not reply.isError(), reply
    if table.is_bit:
        return [int(bit) for bit in reply.bits[:count]]
    return list(reply.registers)


async def read_point(c: AsyncModbusTcpClient, unit: int, point: SimPoint) -> float:
    s = point.spec
    value = decode(s, await read_words(c, unit, s.table, s.address, s.register_count))
    assert isinstance(value, float)
    return value


async def test_every_device_reads_plausibly_with_a_gateway_style_read_plan(
    still_site: SimulatedSite,
) -> None:
    site = still_site
    for device in DEVICE_MAPS:
        specs: list[RegisterSpec] = [p.spec for p in device.points]
        readings: dict[str, float] = {}
        async with client(site.port_of(device.id)) as c:
            for block in plan_reads(specs, max_gap=8):
                words = await read_words(c, device.unit_id, block.table, block.address, block.count)
                for spec in block.specs:
                    value = decode(spec, extract(block, words, spec))
                    assert isinstance(value, float)
                    readings[spec.point] = value
        truth = site.building.device_values(device.id)
        assert set(readings) == set(truth)
        for p in device.points:
            lo, hi = p.valid_range
            assert lo <= readings[p.name] <= hi, (device.id, p.name, readings[p.name])
            # The reading is the physics, within the register's resolution.
            near = pytest.approx(truth[p.name], rel=1e-6, abs=abs(p.spec.scale) / 2 + 1e-9)
            assert readings[p.name] == near, p.name

    async with client(site.port_of("grid_meter")) as c:
        meter = {p.name: await read_point(c, 1, p) for p in DEVICE_MAPS[0].points}
    assert 220.0 < meter["voltage_l1_v"] < 240.0
    assert 49.9 < meter["frequency_hz"] < 50.1
    assert 10_000.0 < meter["active_power_w"] < 150_000.0  # weekday noon: importing
    assert meter["energy_import_wh"] > 48_000_000.0


async def test_a_battery_setpoint_write_takes_effect_on_the_next_tick(
    site: SimulatedSite,
) -> None:
    battery = site.device_map("battery")
    setpoint = battery.point("active_power_setpoint_w")
    power = battery.point("active_power_w")
    async with client(site.port_of("battery")) as c:
        assert await read_point(c, battery.unit_id, power) == 0.0
        reply = await c.write_registers(
            setpoint.spec.address, encode(setpoint.spec, -30_000.0), device_id=battery.unit_id
        )
        assert not reply.isError(), reply
        assert await read_point(c, battery.unit_id, setpoint) == -30_000.0  # read-back
        soc_before = site.building.state.battery.soc_pct
        await site.wait_ticks(1)
        assert await read_point(c, battery.unit_id, power) == -30_000.0  # charging
        assert await read_point(c, battery.unit_id, battery.point("operating_state")) == 1.0
        assert site.building.state.battery.soc_pct > soc_before


async def test_the_meter_balances_what_the_other_devices_report(still_site: SimulatedSite) -> None:
    """grid = base load + chillers + fan + load panel - PV - battery, all read over Modbus."""
    site = still_site
    battery = site.device_map("battery")
    setpoint = battery.point("active_power_setpoint_w").spec
    async with client(site.port_of("battery")) as c:
        await c.write_registers(
            setpoint.address, encode(setpoint, 20_000.0), device_id=battery.unit_id
        )
    site.advance(1.0)
    read: dict[str, float] = {}
    for device_id, point in [
        ("grid_meter", "active_power_w"),
        ("hvac_zone_1", "chiller_power_w"),
        ("hvac_zone_2", "chiller_power_w"),
        ("ahu_fan", "power_w"),
        ("pv_inverter", "ac_power_w"),
        ("battery", "active_power_w"),
        ("load_panel", "total_power_w"),
    ]:
        device = site.device_map(device_id)
        async with client(site.port_of(device_id)) as c:
            read[f"{device_id}.{point}"] = await read_point(c, device.unit_id, device.point(point))
    assert read["battery.active_power_w"] == 20_000.0
    base_load = (
        read["grid_meter.active_power_w"]
        - read["hvac_zone_1.chiller_power_w"]
        - read["hvac_zone_2.chiller_power_w"]
        - read["ahu_fan.power_w"]
        - read["load_panel.total_power_w"]
        + read["pv_inverter.ac_power_w"]
        + read["battery.active_power_w"]
    )
    # Weekday 12:00 office base load: 92 kW ± noise; register rounding adds a few watts.
    assert base_load == pytest.approx(site.building.state.flows.base_w, abs=15.0)
    assert 80_000.0 < base_load < 105_000.0


async def test_writes_the_device_refuses_get_modbus_exceptions(site: SimulatedSite) -> None:
    battery = site.device_map("battery")
    setpoint = battery.point("active_power_setpoint_w").spec
    async with client(site.port_of("battery")) as c:
        too_big = encode(setpoint, -60_000.0)  # encodes fine, outside the valid range
        reply = await c.write_registers(setpoint.address, too_big, device_id=battery.unit_id)
        assert reply.isError()
        assert reply.exception_code == 3  # illegal data value
        reply = await c.write_register(setpoint.address, 5, device_id=battery.unit_id)
        assert reply.exception_code == 2  # half a 32-bit value
        reply = await c.read_input_registers(40, count=1, device_id=battery.unit_id)
        assert reply.exception_code == 2  # no such register
        reply = await c.read_holding_registers(100, count=2, device_id=99)
        assert reply.exception_code == 11  # nothing behind that unit id
        assert await read_point(c, battery.unit_id, battery.point("active_power_setpoint_w")) == 0.0
    assert site.building.state.battery.setpoint_w == 0.0


async def test_zone_setpoint_and_fan_commands(still_site: SimulatedSite) -> None:
    site = still_site
    zone = site.device_map("hvac_zone_1")
    setpoint = zone.point("setpoint_degc")
    async with client(site.port_of("hvac_zone_1")) as c:
        reply = await c.write_register(
            setpoint.spec.address, encode(setpoint.spec, 24.5)[0], device_id=zone.unit_id
        )
        assert not reply.isError(), reply
        assert await read_point(c, zone.unit_id, setpoint) == 24.5
        site.advance(1.0)
        assert await read_point(c, zone.unit_id, zone.point("effective_setpoint_degc")) == 24.5
    assert site.building.state.zones[0].setpoint_degc == 24.5

    fan = site.device_map("ahu_fan")
    async with client(site.port_of("ahu_fan")) as c:
        assert await read_point(c, fan.unit_id, fan.point("running_state")) == 1.0
        reply = await c.write_coil(0, False, device_id=fan.unit_id)
        assert not reply.isError(), reply
        site.advance(10.0)  # the drive decelerates 10 %/s: 80 % -> 0 in 8 s
        assert await read_point(c, fan.unit_id, fan.point("running_state")) == 0.0
        assert await read_point(c, fan.unit_id, fan.point("power_w")) == 0.0
        speed = fan.point("speed_setpoint_pct").spec
        await c.write_coil(0, True, device_id=fan.unit_id)
        await c.write_register(speed.address, encode(speed, 50.0)[0], device_id=fan.unit_id)
        site.advance(10.0)
        assert await read_point(c, fan.unit_id, fan.point("speed_pct")) == 50.0
        assert await read_point(c, fan.unit_id, fan.point("power_w")) == pytest.approx(15_000 / 8)


async def test_a_stopped_device_refuses_connections_and_comes_back_on_its_port(
    site: SimulatedSite,
) -> None:
    port = site.port_of("pv_inverter")
    pv = site.device_map("pv_inverter")
    async with client(port) as connected:
        await site.stop_device("pv_inverter")
        assert not site.is_running("pv_inverter")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        # The open connection was closed with the server: the client notices the EOF.
        for _ in range(100):
            if not connected.connected:
                break
            await asyncio.sleep(0.01)
        assert not connected.connected
        with pytest.raises(ConnectionException):
            await connected.read_holding_registers(40083, count=1, device_id=pv.unit_id)
    # The other devices are unaffected.
    async with client(site.port_of("grid_meter")) as c:
        assert await read_point(c, 1, DEVICE_MAPS[0].point("frequency_hz")) > 49.0

    await site.start_device("pv_inverter")
    assert site.port_of("pv_inverter") == port
    async with client(port) as c:
        assert await read_point(c, pv.unit_id, pv.point("ac_power_w")) > 10_000.0


async def test_site_config_points_at_the_running_servers(still_site: SimulatedSite) -> None:
    site = still_site
    devices = site.site_config("demo")
    config = GridPilotConfig.model_validate({"site": {"id": "demo"}, "devices": devices})
    text = yaml.safe_dump({"site": {"id": "demo"}, "devices": devices}, sort_keys=False)
    assert validate_config_text(text, "demo.yaml") == config
    assert len({d.port for d in config.devices}) == len(config.devices)
    for device in config.devices:
        assert device.host == "127.0.0.1"
        assert device.port == site.port_of(device.id)
        assert device.poll_interval > timedelta(0)
        assert all(p.valid_range is not None for p in device.points)
        async with client(device.port) as c:
            first = device.points[0]
            words = await read_words(c, device.unit_id, first.table, first.address or 0, 1)
            assert len(words) == 1
    with pytest.raises(ValueError, match="site id"):
        site.site_config("Not An Id")


async def test_simulated_time_runs_at_the_requested_speed() -> None:
    async with SimulatedSite(speed=3600.0, start=WEDNESDAY_NOON, tick_s=0.05) as fast:
        await fast.wait_ticks(6)
        elapsed = fast.now - WEDNESDAY_NOON
        # 6 ticks of >= 50 ms at 3600x: at least 18 simulated minutes.
        assert elapsed >= timedelta(minutes=18)
        assert elapsed < timedelta(hours=6)


def _free_port_range(count: int) -> int:
    """A base port whose next ``count`` ports are free now (best effort, loopback only)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    pytest.skip("no run of free loopback ports")


async def test_run_sim_serves_consecutive_ports_until_cancelled() -> None:
    base = _free_port_range(len(DEVICE_MAPS))
    task = asyncio.create_task(run_sim(base_port=base, speed=10.0, start=WEDNESDAY_NOON))
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", base + len(DEVICE_MAPS) - 1)
            except ConnectionRefusedError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            break
        else:
            pytest.fail("run_sim did not open its ports")
        async with client(base) as c:  # device 0: the grid meter
            assert await read_point(c, 1, DEVICE_MAPS[0].point("frequency_hz")) > 49.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", base)


async def test_a_taken_port_fails_loudly_and_leaves_nothing_listening() -> None:
    base = _free_port_range(len(DEVICE_MAPS))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", base + 2))  # the battery's port
    blocker.listen()
    try:
        with pytest.raises(OSError, match="battery"):
            async with SimulatedSite(base_port=base, start=WEDNESDAY_NOON):
                pytest.fail("the site started on a taken port")
    finally:
        blocker.close()
    with pytest.raises(ConnectionRefusedError):  # the meter, started first, was closed again
        await asyncio.open_connection("127.0.0.1", base)
