"""The gateway polling several RTU units on one serial bus (a pseudo-terminal line) with a
private Mosquitto: faults on some units show in their state and counters while the
healthy units on the same line keep their poll rate."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.config import GridPilotConfig
from gridpilot.gateway.service import GatewayService
from gridpilot.model import now_ms, to_rfc3339
from gridpilot.sim.site import SimulatedSite
from tests.integration.test_gateway_support import Observer, Record, observing
from tests.integration.test_modbus_rtu_support import Line, rtu_line, unit_image, unit_map

pytestmark = pytest.mark.integration

GATEWAY = "gw-rtu"
INTERVAL_S = 0.4
TIMEOUT_S = 0.2  # generous for a loaded 2-core machine: the whole chain runs in one loop
HEALTHY = {"meter_a": 1, "meter_b": 2}
NOISY = {"meter_noisy": 6}  # every 2nd reply garbled: each poll's retry cures it
FAULTY = {"meter_crc": 3, "meter_busy": 4, "meter_silent": 5}
WEDNESDAY_NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def device_entry(device_id: str, unit: int, **extra: object) -> dict[str, object]:
    points = [p.config() for p in unit_map(device_id, unit).points]
    entry: dict[str, object] = {
        "id": device_id,
        "protocol": "modbus_rtu",
        "bus": "rs485",
        "unit_id": unit,
        "poll_interval": INTERVAL_S,
        "timeout": TIMEOUT_S,
        "retries": 1,
        "points": points,
    }
    entry.update(extra)
    return entry


def site_config(site_id: str, port: str) -> GridPilotConfig:
    devices = [device_entry(d, u) for d, u in {**HEALTHY, **FAULTY, **NOISY}.items()]
    # meter_a also maps a register the unit lacks: that block is refused (exception 2)
    # while the rest of the unit reads.
    points = devices[0]["points"]
    assert isinstance(points, list)
    points.append({"point": "frequency_hz", "address": 100, "scale": 0.01, "valid_range": [40, 70]})
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site_id},
            "gateway": {"id": GATEWAY},
            "serial_buses": [{"id": "rs485", "port": port, "baudrate": 19200, "parity": "N"}],
            "devices": devices,
        }
    )


@pytest.fixture
def site_id() -> str:
    return f"site-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


def is_state(record: Record, device: str, status: str) -> bool:
    return record.device == device and record.kind == "state" and record.json["status"] == status


async def test_faulty_units_are_named_and_counted_while_healthy_ones_keep_their_rate(
    mosquitto: BrokerAddress,
    site_id: str,
    observer: Observer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridpilot.gateway")
    images = [
        unit_image(d, u) for d, u in {**HEALTHY, **FAULTY, **NOISY}.items() if d != "meter_silent"
    ]
    loop = asyncio.get_running_loop()
    line: Line
    async with rtu_line(images) as (line, units):
        line.corrupt_units = {FAULTY["meter_crc"]}
        line.corrupt_every = {NOISY["meter_noisy"]: 2}
        units.busy_units = {FAULTY["meter_busy"]}
        config = site_config(site_id, line.gateway_port)
        async with GatewayService(
            config, mosquitto, state_interval=timedelta(seconds=1)
        ) as gateway:
            started = loop.time()
            offline: dict[str, Record] = {}
            alarms: dict[str, Record] = {}
            for device in FAULTY:
                # Declared dead (after offline_after_failures = 2 failed polls): an alarm...
                alarms[device] = await observer.wait_for(
                    lambda r, d=device: (
                        r.topic.endswith("/events") and r.json["source"] == f"gateway/{d}"
                    ),
                    within=5,
                )
                # ... and a state that counts the failures (re-published every second).
                offline[device] = await observer.wait_for(
                    lambda r, d=device: (
                        is_state(r, d, "offline") and r.json["consecutive_failures"] >= 2
                    ),
                    within=5,
                )
            for device in HEALTHY:
                await observer.wait_for(lambda r, d=device: is_state(r, d, "online"))
            # Let the dead units' backoff run a while next to the healthy polls.
            await asyncio.sleep(10 * INTERVAL_S)
            window_end = loop.time()
            health = {d: gateway.health(d) for d in {**HEALTHY, **FAULTY, **NOISY}}
            noisy_state = await observer.wait_for(
                lambda r: (
                    r.device == "meter_noisy"
                    and r.kind == "state"
                    and r.json["counters"]["attempt_errors"].get("crc", 0) >= 3
                ),
                within=3,
            )

    expected = {
        "meter_crc": ("crc", "CRC mismatch", "serial interference"),
        "meter_busy": ("exception_6", "server device busy", "server busy"),
        "meter_silent": ("timeout", "no answer", "unit_id, wiring"),
    }
    logged = [r.getMessage() for r in caplog.records]
    for device, (kind, message, hint) in expected.items():
        state = offline[device].json
        assert state["last_error"]["kind"] == kind, (device, state)
        assert message in state["last_error"]["message"]
        assert hint in state["last_error"]["hint"]
        assert alarms[device].json["level"] == "alarm"
        assert message in alarms[device].json["message"]
        assert state["counters"]["errors"][kind] >= 2, (device, state["counters"])
        assert health[device].counters.errors[kind] >= 2, (device, health[device].counters)
        assert health[device].counters.polls_failed >= 2
        # Named in the log with the cause.
        assert any(f"{device}: offline after" in m and message in m for m in logged), logged
    assert line.corrupted >= 2

    # The unit with a missing register stays online; the refused block is counted.
    assert health["meter_a"].counters.errors["exception_2"] >= 1
    # Healthy units kept their rate on the shared line: every interval, no long gap.
    window = window_end - started
    for device, unit in HEALTHY.items():
        times = [r.at for r in observer.of(device, "telemetry", since=started)]
        times = [t for t in times if t <= window_end]
        assert len(times) >= window / INTERVAL_S - 3, (device, len(times), window)
        mean_interval = (times[-1] - times[0]) / (len(times) - 1)
        assert mean_interval == pytest.approx(INTERVAL_S, rel=0.1), (device, mean_interval)
        # A poll may wait for one attempt of a dead unit (TIMEOUT_S) per block it reads
        # (meter_a reads two); the schedule is fixed-rate, so the next one is on time.
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < INTERVAL_S + 2 * TIMEOUT_S + 0.15, (device, max(gaps))
        assert health[device].counters.polls_failed == 0, health[device].last_error
        assert health[device].counters.ticks_skipped == 0
        values = observer.of(device, "telemetry")[-1].json["values"]
        assert values["active_power_w"] == -1000.0 * unit
    # The intermittently garbled unit stays online: each poll's retry cures its CRC error,
    # which its state counts as failed attempts, and the log names.
    noisy = health["meter_noisy"]
    assert noisy.counters.polls_failed == 0
    assert noisy.counters.attempt_errors["crc"] >= 3
    assert noisy_state.json["status"] == "online"
    assert any(m.startswith("meter_noisy: 1 request attempt(s) failed with crc") for m in logged), (
        logged
    )
    # The silent unit was probed with backoff (1, 2, 4 intervals apart), not every interval.
    silent_polls = health["meter_silent"].counters.polls
    healthy_polls = health["meter_b"].counters.polls
    assert silent_polls <= healthy_polls / 2 + 2, (silent_polls, healthy_polls)


async def test_the_simulated_building_over_one_rtu_line(
    mosquitto: BrokerAddress, site_id: str, observer: Observer
) -> None:
    """Every simulated device answers as an RTU unit behind one port; the gateway reads them
    all through the other end of the line and a command is written and read back."""
    line = Line()
    line.start()
    try:
        async with SimulatedSite(
            speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05, rtu_port=line.device_port
        ) as site:
            data = site.rtu_site_config(line.gateway_port, site_id)
            devices = data["devices"]
            assert isinstance(devices, list)
            for device in devices:
                device["poll_interval"] = 0.5
                device["timeout"] = 0.2
            units = {d["unit_id"] for d in devices}
            assert units == set(range(1, len(site.devices) + 1))
            config = GridPilotConfig.model_validate(
                {"site": {"id": site_id}, "gateway": {"id": GATEWAY}, **data}
            )
            async with GatewayService(config, mosquitto) as gateway:
                for device_id in site.devices:
                    record = await observer.wait_for(
                        lambda r, d=device_id: r.device == d and r.kind == "telemetry",
                        within=5,
                    )
                    assert record.json["values"], device_id
                meter = observer.of("grid_meter", "telemetry")[-1].json["values"]
                assert meter["voltage_l1_v"] == pytest.approx(230, abs=15)
                command = {
                    "id": uuid.uuid4().hex,
                    "point": "active_power_setpoint_w",
                    "value": -15000.0,
                    "expires": to_rfc3339(now_ms() + 10_000),
                    "source": "test",
                }
                await observer.command(site_id, "battery", command)
                result = await observer.wait_for(
                    lambda r: (
                        r.device == "battery"
                        and r.kind == "command/result"
                        and r.json["id"] == command["id"]
                    ),
                    within=5,
                )
                assert result.json["status"] == "applied", result.json
                assert result.json["readback"] == -15000.0
                assert site.building.device_values("battery")["active_power_setpoint_w"] == (
                    -15000.0
                )
                assert all(h.counters.polls_failed == 0 for h in gateway.device_health.values())
                assert site.rtu.bad_frames == 0
    finally:
        line.close()


async def test_a_bus_held_by_another_process_is_named_in_every_units_state(
    mosquitto: BrokerAddress, site_id: str, observer: Observer
) -> None:
    holder_code = (
        "import sys, time, serial\n"
        "port = serial.Serial(sys.argv[1], exclusive=True)\n"
        "print('holding', flush=True)\n"
        "time.sleep(60)\n"
    )
    images = [unit_image(d, u) for d, u in HEALTHY.items()]
    async with rtu_line(images) as (line, _):
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", holder_code, line.gateway_port, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            async with asyncio.timeout(10):
                assert (await holder.stdout.readline()).strip() == b"holding"
            data = site_config(site_id, line.gateway_port).model_dump(mode="json")
            data["devices"] = [d for d in data["devices"] if d["id"] in HEALTHY]
            config = GridPilotConfig.model_validate(data)
            async with GatewayService(config, mosquitto):
                for device in HEALTHY:
                    alarm = await observer.wait_for(
                        lambda r, d=device: (
                            r.topic.endswith("/events") and r.json["source"] == f"gateway/{d}"
                        ),
                        within=5,
                    )
                    message = alarm.json["message"]
                    # Every process with the port open is named, as fuser -v names them
                    # (this test's relay holds the other end's descriptor too).
                    assert f"{line.gateway_port} is held by process " in message
                    assert f"process {holder.pid} ({sys.executable} -c" in message
                    assert "another process holds the serial port" in message  # the hint
                    state = await observer.wait_for(
                        lambda r, d=device: is_state(r, d, "offline") and r.json["last_error"]
                    )
                    assert state.json["last_error"]["kind"] == "busy"
                holder.kill()
                await holder.wait()
                # Once the holder is gone, the next probe opens the port.
                for device in HEALTHY:
                    await observer.wait_for(lambda r, d=device: is_state(r, d, "online"), within=5)
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()
