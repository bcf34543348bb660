"""The controller service over a real Mosquitto, with the gateway polling the simulated site.

What is shown here: stale meter -> battery fail-safe within the staleness limit; a controller
that raises does not stop the others; overrides, dry-run and enable/disable from the CLI
(``gridpilot control ...`` as a real subprocess), each recorded in the journal.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig, validate_config_text
from gridpilot.control.base import (
    Decision,
    Forecasts,
    PointRef,
    Priority,
    SetpointRequest,
    Snapshot,
)
from gridpilot.control.factory import build_controllers
from gridpilot.control.inputs import StoredInputs
from gridpilot.control.journal import Journal
from gridpilot.control.service import ControllerService
from gridpilot.gateway.service import GatewayService
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage import open_storage
from tests.integration.test_control_inputs import NOW as INPUTS_NOW
from tests.integration.test_control_inputs import config as inputs_config
from tests.integration.test_control_inputs import history_samples

pytestmark = pytest.mark.integration

WEDNESDAY_NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
SETPOINT = PointRef("battery", "active_power_setpoint_w")
ZONE_SETPOINT = PointRef("hvac_zone_1", "setpoint_degc")
STALE_AFTER_S = 2.0
POLL_S = 0.3


@dataclass(frozen=True)
class ZoneAt:
    """Asks for a fixed zone setpoint: stands in for a real controller in these tests (the
    controllers themselves are tested on their own and in test_control_sim)."""

    name: str = "comfort"
    priority: Priority = Priority.COMFORT
    value: float = 23.5

    def initial_state(self) -> None:
        return None

    def decide(
        self, snapshot: Snapshot, state: None, now: datetime, forecasts: Forecasts
    ) -> Decision[None]:
        return Decision(
            None, (SetpointRequest(ZONE_SETPOINT, self.value, self.priority, self.name),)
        )


@dataclass(frozen=True)
class Broken:
    """A controller with a bug: a fault no real controller produces on demand."""

    name: str = "broken"
    priority: Priority = Priority.ECONOMICS

    def initial_state(self) -> None:
        return None

    def decide(
        self, snapshot: Snapshot, state: None, now: datetime, forecasts: Forecasts
    ) -> Decision[None]:
        raise RuntimeError("model matrix is singular")


def site_file(site: SimulatedSite, site_id: str, broker: BrokerAddress, tmp: Path) -> Path:
    devices = site.site_config(site_id)
    for device in devices:
        device["poll_interval"] = POLL_S
        device["timeout"] = POLL_S / 2
        device["retries"] = 0
    doc: dict[str, Any] = {
        "site": {"id": site_id},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "gateway": {"id": "gw"},
        "control": {
            "cycle": 0.2,
            "journal": "journal.jsonl",
            "limits": [
                {"point": "battery.active_power_setpoint_w", "min": -40000, "max": 40000,
                 "idle": 0},
            ],
            "batteries": [
                {"setpoint": "battery.active_power_setpoint_w", "soc": "battery.soc_pct",
                 "soc_min_pct": 10, "soc_max_pct": 90},
            ],
            "fail_safes": [
                {"name": "battery-without-meter", "inputs": ["grid_meter.active_power_w"],
                 "max_age": STALE_AFTER_S, "set": {"battery.active_power_setpoint_w": 0}},
            ],
        },
        "devices": devices,
    }  # fmt: skip
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Running:
    site: SimulatedSite
    config: GridPilotConfig
    path: Path
    service: ControllerService


@pytest.fixture
async def running(mosquitto: BrokerAddress, tmp_path: Path) -> AsyncIterator[Running]:
    site_id = f"ctl-{uuid.uuid4().hex[:10]}"
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as site:
        path = site_file(site, site_id, mosquitto, tmp_path)
        config = validate_config_text(path.read_text())
        async with (
            GatewayService(config, mosquitto),
            ControllerService(config, mosquitto, [ZoneAt(), Broken()], base_dir=tmp_path) as svc,
        ):
            yield Running(site, config, path, svc)


async def until(predicate: Any, within: float = 10.0, step: float = 0.05) -> float:
    """Wait for ``predicate()``; return the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(step)
    return loop.time() - start


async def cli(path: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "control", *args, "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def battery_setpoint(site: SimulatedSite) -> float:
    return site.building.state.battery.setpoint_w


async def test_override_from_the_cli_reaches_the_battery_and_is_journaled(running: Running) -> None:
    site = running.site
    code, out, err = await cli(
        running.path, "override", "battery.active_power_setpoint_w", "15000", "--for", "10m",
        "--by", "alice", "--reason", "acceptance test",
    )  # fmt: skip
    assert code == 0, err
    assert "held at 15000" in out
    await until(lambda: battery_setpoint(site) == 15_000.0)

    # outside the device's valid range: refused with the range in the message
    code, _, err = await cli(running.path, "override", "battery.active_power_setpoint_w", "90000")
    assert code != 0
    assert "valid range" in err

    code, out, err = await cli(running.path, "release", "battery.active_power_setpoint_w")
    assert code == 0, err
    # nothing else wants the battery: it goes to its idle value
    await until(lambda: battery_setpoint(site) == 0.0)

    code, out, _ = await cli(running.path, "status", "--json")
    status = json.loads(out)
    assert status["controllers"]["broken"]["error"].startswith("RuntimeError")
    assert status["controllers"]["comfort"]["enabled"] is True

    journal = Journal(running.path.parent / "journal.jsonl").read(200)
    overrides = [e for e in journal if e["source"] == "request" and "held at 15000" in e["message"]]
    assert overrides
    assert overrides[0]["by"] == "alice"
    assert overrides[0]["reason"] == "acceptance test"
    assert any("released" in e["message"] for e in journal)
    assert any(e["kind"] == "warning" and "valid range" in e["message"] for e in journal)


async def test_dry_run_decides_and_records_but_sends_nothing(running: Running) -> None:
    site = running.site
    await until(lambda: site.building.state.zones[0].setpoint_degc == 23.5)
    code, _, err = await cli(running.path, "dry-run", "on", "--by", "bob")
    assert code == 0, err
    code, _, err = await cli(
        running.path, "override", "hvac_zone_1.setpoint_degc", "21", "--for", "1m"
    )
    assert code == 0, err
    await asyncio.sleep(1.5)
    assert site.building.state.zones[0].setpoint_degc == 23.5  # nothing sent
    journal = Journal(running.path.parent / "journal.jsonl").read(200)
    would = [e for e in journal if e["message"].startswith("dry-run: would set hvac_zone_1")]
    assert would
    assert would[-1]["value"] == 21.0

    code, _, err = await cli(running.path, "dry-run", "off")
    assert code == 0, err
    await until(lambda: site.building.state.zones[0].setpoint_degc == 21.0)


async def test_disable_and_enable_a_controller_from_the_cli(running: Running) -> None:
    site = running.site
    await until(lambda: site.building.state.zones[0].setpoint_degc == 23.5)
    code, out, err = await cli(running.path, "disable", "comfort")
    assert code == 0, err
    assert "disabled" in out
    code, _, err = await cli(running.path, "disable", "nonexistent")
    assert code != 0
    assert "known: comfort, broken" in err
    status = running.service.status()
    assert status["controllers"]["comfort"]["enabled"] is False


async def test_stale_meter_puts_the_battery_in_its_fail_safe_state(running: Running) -> None:
    site = running.site
    code, _, err = await cli(
        running.path, "override", "battery.active_power_setpoint_w", "-20000", "--for", "10m"
    )  # a negative VALUE is a value, not an option
    assert code == 0, err
    await until(lambda: battery_setpoint(site) == -20_000.0)

    loop = asyncio.get_running_loop()
    stopped = loop.time()
    await site.stop_device("grid_meter")
    # The last reading ages from its poll; the fail-safe trips once it is older than
    # STALE_AFTER_S, then the command goes through the gateway (one cycle + one write).
    await until(lambda: battery_setpoint(site) == 0.0, within=STALE_AFTER_S + 5.0)
    took = loop.time() - stopped
    assert took <= STALE_AFTER_S + POLL_S + 1.0, took
    assert running.service.status()["fail_safes_active"] == ["battery-without-meter"]

    # the meter is back: the override (still valid) takes over again
    await site.start_device("grid_meter")
    await until(lambda: battery_setpoint(site) == -20_000.0, within=10.0)
    journal = Journal(running.path.parent / "journal.jsonl").read(200)
    entered = [e for e in journal if "fail-safe 'battery-without-meter' entered" in e["message"]]
    assert entered
    assert entered[0]["kind"] == "alarm"
    assert any("left" in e["message"] for e in journal if e["source"] == "fail_safe")


async def test_a_raising_controller_is_reported_and_the_others_act(running: Running) -> None:
    site = running.site
    await until(lambda: site.building.state.zones[0].setpoint_degc == 23.5)
    await until(lambda: running.service.stats.cycles > 5)
    journal = Journal(running.path.parent / "journal.jsonl").read(500)
    raised = [e for e in journal if e["source"] == "broken"]
    assert len(raised) == 1  # reported once, not every cycle
    assert "model matrix is singular" in raised[0]["message"]


def planned(planning: str) -> GridPilotConfig:
    """The inputs tests' site with its zones planned ``joint`` or ``per_zone``."""
    base = inputs_config()
    assert base.control is not None
    return base.model_copy(
        update={"control": base.control.model_copy(update={"hvac_planning": planning})}
    )


@pytest.mark.parametrize("planning", ["joint", "per_zone"])
async def test_zone_planners_reidentify_from_stored_history(
    mosquitto: BrokerAddress, tmp_path: Path, planning: str
) -> None:
    """A planner that started without history gets one from storage on the next
    re-identification and plans with the model it identifies: each zone's own planner, or
    the zone inside the group planner that plans both zones together."""
    cfg = planned(planning)
    async with open_storage(cfg.storage, tmp_path) as storage:
        await storage.write(history_samples())
        stored = StoredInputs(storage, cfg)
        controllers = build_controllers(cfg)  # no histories: planners start without a model
        name = "hvac_group_planner" if planning == "joint" else "hvac_zone_1_planner"
        planner = next(c for c in controllers if c.name == name)

        def zone_1_fit(service: ControllerService) -> Any:
            state = service.engine.controller_state(planner.name)
            return state.zones[0].fit if planning == "joint" else state.fit

        async with ControllerService(
            cfg,
            mosquitto,
            controllers,
            base_dir=tmp_path,
            forecasts=stored,
            reidentify_every=timedelta(seconds=0.5),
            clock=lambda: INPUTS_NOW,
        ) as service:
            # Identified in a worker process (control.workers): the first job waits for the
            # forkserver to import numpy and scipy, seconds on a loaded machine.
            await until(lambda: getattr(zone_1_fit(service), "rc", None) is not None, within=60.0)
            fit = zone_1_fit(service)
            assert fit.good_enough, fit.verdict


class SlowHistory(StoredInputs):
    """Storage that takes its time to read a zone's history, as a busy database does: a
    worker's result arrives while the service waits for it."""

    async def zone_history(self, params: Any, now: datetime) -> Any:
        await asyncio.sleep(1.0)  # longer than an identification: it finishes meanwhile
        return await super().zone_history(params, now)


@pytest.mark.parametrize("planning", ["joint", "per_zone"])
async def test_a_model_identified_while_history_is_being_read_is_kept(
    mosquitto: BrokerAddress, tmp_path: Path, planning: str
) -> None:
    """Re-identification reads each zone's history from storage (here slowly, again and
    again); an identification finishing in a worker meanwhile must not be overwritten by
    the state the service copied before the read (it was, and the planner then waited for
    a job that had already finished, for good)."""
    cfg = planned(planning)
    async with open_storage(cfg.storage, tmp_path) as storage:
        await storage.write(history_samples())
        controllers = build_controllers(cfg)
        name = "hvac_group_planner" if planning == "joint" else "hvac_zone_1_planner"
        async with ControllerService(
            cfg,
            mosquitto,
            controllers,
            base_dir=tmp_path,
            forecasts=SlowHistory(storage, cfg),
            reidentify_every=timedelta(seconds=0.05),
            clock=lambda: INPUTS_NOW,
        ) as service:

            def zone_1_fit() -> Any:  # the stored history has zone 1's only
                state = service.engine.controller_state(name)
                return state.zones[0].fit if planning == "joint" else state.fit

            await until(lambda: getattr(zone_1_fit(), "rc", None) is not None, within=90.0)
            # Each re-identification is taken in: the model stays, and the planner is not
            # left waiting for a job that has finished (the next ones start and finish).
            finished = service.stats.jobs_finished
            await until(lambda: service.stats.jobs_finished >= finished + 3, within=90.0)
            assert getattr(zone_1_fit(), "rc", None) is not None


@dataclass(frozen=True)
class Misaddressed:
    """A controller configured for a point the device does not have (a commissioning
    mistake the gateway refuses): the refusal must reach the operator."""

    name: str = "misaddressed"
    priority: Priority = Priority.ECONOMICS

    def initial_state(self) -> None:
        return None

    def decide(
        self, snapshot: Snapshot, state: None, now: datetime, forecasts: Forecasts
    ) -> Decision[None]:
        ref = PointRef("hvac_zone_1", "no_such_setpoint_degc")
        too_warm = SetpointRequest(ZONE_SETPOINT, 45.0, self.priority, self.name)
        return Decision(None, (SetpointRequest(ref, 1.0, self.priority, self.name), too_warm))


async def test_refused_commands_are_counted_and_journaled(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as site:
        path = site_file(site, f"ctl-{uuid.uuid4().hex[:10]}", mosquitto, tmp_path)
        config = validate_config_text(path.read_text())
        async with (
            GatewayService(config, mosquitto),
            ControllerService(config, mosquitto, [Misaddressed()], base_dir=tmp_path) as svc,
        ):
            await until(lambda: svc.stats.commands_failed >= 1)
            # 45 °C is outside the zone setpoint's valid range: clipped to 30, never refused
            await until(lambda: site.building.state.zones[0].setpoint_degc == 30.0)
            assert svc.status()["targets"]["hvac_zone_1.setpoint_degc"]["limited_by"] == ["limits"]
    journal = Journal(tmp_path / "journal.jsonl").read(200)
    refused = [e for e in journal if e["source"] == "gateway"]
    assert refused
    assert "no_such_setpoint_degc" in refused[0]["message"]
    assert "rejected" in refused[0]["message"]


async def test_malformed_messages_are_ignored_and_control_goes_on(
    running: Running, mosquitto: BrokerAddress
) -> None:
    site_id = running.config.site.id
    async with BusClient(mosquitto, f"garbage-{uuid.uuid4().hex[:8]}") as bus:
        await bus.wait_connected(timeout=5)
        telemetry = f"gridpilot/v1/{site_id}/grid_meter/telemetry"
        for payload in (
            b"not json",
            b"[]",
            b'{"ts": "yesterday", "values": {}}',
            b'{"ts": 1, "values": {"active_power_w": "lots"}}',
            b"\xff" * 70_000,
        ):
            await bus.publish(telemetry, payload)
        request = f"gridpilot/v1/{site_id}/controller/request"
        for payload in (b"{", b'{"id": "x", "action": "reboot", "by": "eve"}'):
            await bus.publish(request, payload)
        await bus.flush(timeout=5)
    cycles = running.service.stats.cycles
    await until(lambda: running.service.stats.cycles > cycles + 5)
    # the gateway's valid meter readings kept arriving: no fail-safe tripped
    await asyncio.sleep(STALE_AFTER_S + 0.5)
    assert running.service.status()["fail_safes_active"] == []
    journal = Journal(running.path.parent / "journal.jsonl").read(200)
    assert any("'action' must be one of" in e["message"] for e in journal)


async def test_a_command_lost_on_the_way_is_sent_again_after_a_backoff(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    """The zone is off the network when its setpoint is first sent: the gateway reports the
    write failed. The controller keeps asking for the same value, which the dedup would
    otherwise hold back for ``resend_after`` (here 10 minutes): it goes again after a
    backoff of a cycle that doubles per failure, and reaches the zone once it is back."""
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as site:
        path = site_file(site, f"ctl-{uuid.uuid4().hex[:10]}", mosquitto, tmp_path)
        doc = yaml.safe_load(path.read_text())
        doc["control"]["resend_after"] = 600
        path.write_text(yaml.safe_dump(doc))
        config = validate_config_text(path.read_text())
        assert site.building.state.zones[0].setpoint_degc != 23.5
        await site.stop_device("hvac_zone_1")
        async with (
            GatewayService(config, mosquitto),
            ControllerService(config, mosquitto, [ZoneAt()], base_dir=tmp_path) as svc,
        ):
            await until(lambda: svc.stats.commands_failed >= 3, within=30.0)
            cycles, sent = svc.stats.cycles, svc.stats.commands_sent
            # Backed off: far fewer commands than cycles (one a cycle without the backoff).
            await until(lambda: svc.stats.cycles >= cycles + 40, within=30.0)
            assert svc.stats.commands_sent - sent <= 20
            await site.start_device("hvac_zone_1")
            await until(lambda: site.building.state.zones[0].setpoint_degc == 23.5, within=60.0)
            # The gateway's result crosses the broker after the write lands (CI at 5927f5a
            # asserted in between and read 0).
            await until(lambda: svc.stats.commands_applied >= 1, within=10.0)
    journal = Journal(tmp_path / "journal.jsonl").read(200)
    assert any(
        "hvac_zone_1.setpoint_degc = 23.5 failed" in e["message"]
        for e in journal
        if e["source"] == "gateway"
    ), [e["message"] for e in journal]
