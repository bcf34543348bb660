"""The controller service hands CPU-heavy work to worker processes (``control.workers``).

Shown here over a real Mosquitto: a zone planner's LP solve runs in a worker process and
its plan comes back to the zone; the engine completes cycle after cycle while a job is
pending (a job held until the test lets it finish, so nothing depends on timing); a worker
killed mid-job is replaced and the controller hears of it; leaving the service terminates
the workers. Performance (the event loop's lag during solves) is in
``benchmarks/control/bench_loop_lag.py``, not here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.config import GridPilotConfig, validate_config_text
from gridpilot.control.base import (
    Decision,
    Forecasts,
    Job,
    JobOutcome,
    Priority,
    Snapshot,
)
from gridpilot.control.hvac import HvacController
from gridpilot.control.journal import Journal
from gridpilot.control.service import ControllerService
from gridpilot.model import Topic
from tests.unit.test_control_hvac import CLIMATE, GOOD_FIT, SITE, params

pytestmark = pytest.mark.integration


def held_until(gate: str) -> int:
    """A job that runs until ``gate`` exists, then says which process ran it."""
    while not os.path.exists(gate):
        time.sleep(0.01)
    return os.getpid()


@dataclass(frozen=True)
class GatedState:
    asked: bool = False
    pid: int | None = None
    error: str | None = None
    cycles_while_pending: int = 0


@dataclass(frozen=True)
class Gated:
    """Hands out one job that runs until the test opens its gate, and counts the cycles it
    decides in while waiting: the engine's cycles go on without the job."""

    gate: str
    name: str = "gated"
    priority: Priority = Priority.ECONOMICS

    def initial_state(self) -> GatedState:
        return GatedState()

    def decide(
        self, snapshot: Snapshot, state: GatedState, now: datetime, forecasts: Forecasts
    ) -> Decision[GatedState]:
        if not state.asked:
            job = Job("plan", held_until, (self.gate,), tag="first")
            return Decision(replace(state, asked=True), jobs=(job,))
        pending = state.pid is None and state.error is None
        return Decision(replace(state, cycles_while_pending=state.cycles_while_pending + pending))

    def finish(
        self, state: GatedState, job: Job, outcome: JobOutcome
    ) -> tuple[GatedState, tuple[str, ...]]:
        pid = outcome.value if isinstance(outcome.value, int) else None
        return replace(state, pid=pid, error=outcome.error), (f"job done: {outcome.error}",)


def site_config(broker: BrokerAddress, site_id: str, **control: Any) -> GridPilotConfig:
    lines = "".join(f"  {key}: {value}\n" for key, value in control.items())
    return validate_config_text(
        f"site: {{id: {site_id}}}\n"
        f"broker: {{url: 'mqtt://{broker.host}:{broker.port}'}}\n"
        "control:\n"
        "  cycle: 0.05\n"
        "  journal: journal.jsonl\n" + lines
    )


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate()`` (bounded by the test's timeout, not asserted on)."""
    while not predicate():  # noqa: ASYNC110 - the service's state has no event to wait on
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def site_id() -> str:
    return f"off-{uuid.uuid4().hex[:10]}"


async def publish_zone(broker: BrokerAddress, site_id: str) -> None:
    """A zone at 23 °C and the weather now (the planner persists the weather readings)."""
    now = datetime.now(UTC)
    ts_ms = int(now.timestamp() * 1000)
    async with BusClient(broker, f"test-{uuid.uuid4().hex[:8]}") as bus:
        await bus.publish(
            str(Topic.telemetry(site_id, "hvac_zone_1")),
            encode_telemetry(ts_ms, {"temperature_degc": 23.0}),
        )
        await bus.publish(
            str(Topic.telemetry(site_id, "weather_io")),
            encode_telemetry(
                ts_ms,
                {
                    "outdoor_temperature_degc": CLIMATE.temperature_degc(now),
                    "irradiance_wm2": SITE.irradiance_wm2(now),
                },
            ),
        )


@pytest.fixture
async def gated(
    mosquitto: BrokerAddress, tmp_path: Path, site_id: str
) -> AsyncIterator[tuple[ControllerService, Path]]:
    gate = tmp_path / "gate"
    config = site_config(mosquitto, site_id, workers=1)
    async with ControllerService(
        config, mosquitto, [Gated(str(gate))], base_dir=tmp_path
    ) as service:
        yield service, gate


async def test_the_zone_plan_is_solved_in_a_worker_and_followed(
    mosquitto: BrokerAddress, tmp_path: Path, site_id: str
) -> None:
    config = site_config(mosquitto, site_id, workers=1)
    zone = HvacController(params(), fit=GOOD_FIT)
    async with ControllerService(config, mosquitto, [zone], base_dir=tmp_path) as service:
        planner = service.engine.controllers()[0]
        assert isinstance(planner, HvacController)
        assert planner.offload  # the service switched it: it has workers
        await publish_zone(mosquitto, site_id)
        await until(lambda: service.engine.controller_state(zone.name).mode == "plan")
        state = service.engine.controller_state(zone.name)
        assert state.plan is not None
        assert state.plan.ok
        workers = service.pool.worker_pids()
        assert workers
        assert os.getpid() not in workers
        assert service.pool.stats.completed >= 1
        assert service.stats.jobs_finished >= 1
        # The request was made in one cycle and the plan followed in a later one.
        assert state.plan_start is not None
        assert service.stats.cycles >= 2
        await until(
            lambda: service.status()["targets"].get("hvac_zone_1.setpoint_degc") is not None
        )
        target = service.status()["targets"]["hvac_zone_1.setpoint_degc"]
        assert target["source"] == zone.name
    journal = Journal(tmp_path / "journal.jsonl").read(500)
    messages = [e["message"] for e in journal]
    # Until the first plan came back the zone ran its thermostat, and said why.
    assert any("waiting for a new plan from a worker process" in m for m in messages)
    assert any("optimised plan resumed (was solving)" in m for m in messages)
    await until(lambda: not any(alive(pid) for pid in workers))  # terminated on leaving


async def test_the_engine_cycles_on_while_a_job_is_pending_in_a_worker(
    gated: tuple[ControllerService, Path], tmp_path: Path
) -> None:
    service, gate = gated
    await until(lambda: service.pool.stats.running == 1)
    # The controller decides cycle after cycle while its job is held in the worker.
    await until(lambda: service.engine.controller_state("gated").cycles_while_pending >= 10)
    state = service.engine.controller_state("gated")
    assert state.pid is None  # still pending: the gate is shut
    assert service.pool.stats.running == 1
    assert service.stats.jobs_finished == 0
    assert service.stats.cycles >= 10
    gate.touch()
    await until(lambda: service.engine.controller_state("gated").pid is not None)
    state = service.engine.controller_state("gated")
    assert state.pid != os.getpid()
    assert state.pid in service.pool.worker_pids()
    assert state.error is None
    assert service.stats.jobs_finished == 1
    await until(
        lambda: any(
            e["message"] == "job done: None" for e in Journal(tmp_path / "journal.jsonl").read(100)
        )
    )


async def test_a_worker_killed_mid_job_is_replaced_and_the_controller_hears_of_it(
    gated: tuple[ControllerService, Path], tmp_path: Path
) -> None:
    service, _gate = gated
    await until(lambda: service.pool.stats.running == 1 and bool(service.pool.worker_pids()))
    (worker,) = service.pool.worker_pids()
    os.kill(worker, signal.SIGKILL)
    await until(lambda: service.engine.controller_state("gated").error is not None)
    state = service.engine.controller_state("gated")
    assert state.error is not None
    assert "WorkerLostError" in state.error
    assert service.pool.stats.restarts == 1
    counters = service.status()["counters"]  # what /metrics and `control status` show
    assert (counters["jobs_started"], counters["jobs_failed"]) == (1, 1)
    assert counters["worker_restarts"] == 1
    cycles = service.stats.cycles
    await until(lambda: service.stats.cycles > cycles + 2)  # and the engine goes on
    await until(
        lambda: any(
            e["source"] == "workers" and "died" in e["message"]
            for e in Journal(tmp_path / "journal.jsonl").read(100)
        )
    )


async def test_leaving_the_service_terminates_a_worker_still_running_a_job(
    mosquitto: BrokerAddress, tmp_path: Path, site_id: str
) -> None:
    config = site_config(mosquitto, site_id, workers=1)
    async with ControllerService(
        config, mosquitto, [Gated(str(tmp_path / "never"))], base_dir=tmp_path
    ) as service:
        await until(lambda: service.pool.stats.running == 1 and bool(service.pool.worker_pids()))
        (worker,) = service.pool.worker_pids()
    await until(lambda: not alive(worker))
    assert service.engine.controller_state("gated").pid is None


async def test_without_workers_the_planner_solves_in_the_cycle(
    mosquitto: BrokerAddress, tmp_path: Path, site_id: str
) -> None:
    config = site_config(mosquitto, site_id, workers=0)
    zone = HvacController(params(), fit=GOOD_FIT)
    async with ControllerService(config, mosquitto, [zone], base_dir=tmp_path) as service:
        planner = service.engine.controllers()[0]
        assert isinstance(planner, HvacController)
        assert not planner.offload
        await publish_zone(mosquitto, site_id)
        await until(lambda: service.engine.controller_state(zone.name).plan is not None)
        assert service.stats.jobs_started == 0
        assert service.pool.worker_pids() == ()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (the forkserver's workers are its grandchildren)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[1]
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def grandchildren(pid: int) -> list[int]:
    return [
        child for child in descendants(pid) if (stat := _stat(child)) is not None and stat[1] != pid
    ]


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


async def test_sigterm_stops_the_controller_and_terminates_its_workers(
    mosquitto: BrokerAddress, tmp_path: Path, site_id: str
) -> None:
    """``gridpilot run controller`` as systemd runs it: its workers (a forkserver and the
    processes it forked) start with it and are gone when SIGTERM has stopped it."""
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        f"site: {{id: {site_id}}}\n"
        f"broker: {{url: 'mqtt://{mosquitto.host}:{mosquitto.port}'}}\n"
        "storage: {path: control.db}\n"
        "control:\n"
        "  journal: null\n"
        "  workers: 2\n"
        "  hvac:\n"
        "    - zone: hvac_zone_1\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "run", "controller", str(site_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The zone planner is offloaded: the service warms a worker up at start, forked by
        # the forkserver (a grandchild of the service's process).
        await until(lambda: bool(grandchildren(process.pid)))
        workers = descendants(process.pid)
        assert set(grandchildren(process.pid)) <= set(workers)
    finally:
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    await until(lambda: not any(running(pid) for pid in workers))
