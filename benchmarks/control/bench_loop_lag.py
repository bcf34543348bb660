"""Event-loop lag of the controller service while its zone planners solve (issue 8, item 6).

Runs the real ``ControllerService`` (a private Mosquitto on a loopback port, telemetry
published by a task of the same process) with jointly planned HVAC zones whose thermal
models are identified at start from three simulated days and whose 24 h LP (demand
charge, demand scenarios, an overcast scenario) is re-solved every ``--replan`` seconds
instead of every 15 minutes, so that a minute holds many solves. A ticker task wakes every
10 ms and records how late it woke; a wake-up blocked for L ms also counts the ticks it
swallowed (L − 10, L − 20, ... ms late: no coordinated omission).

Each scenario runs twice: ``control.workers: 0`` (the solve in the cycle, on the loop) and
``control.workers: 2`` (the solve in a worker process). Figures: lag p50/p99/max, solves,
solve time (inline: the LP call itself; pool: handing the job over to its result),
controller cycles and overruns, the load average before and after.

    .venv/bin/python benchmarks/control/bench_loop_lag.py                  # 2 and 8 zones
    .venv/bin/python benchmarks/control/bench_loop_lag.py --seconds 20 --zones 2
    .venv/bin/python benchmarks/control/bench_loop_lag.py --json lag.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.config import GridPilotConfig, validate_config_text
from gridpilot.control import hvac
from gridpilot.control.base import Forecast, Forecasts
from gridpilot.control.factory import build_controllers
from gridpilot.control.hvac import HvacGroupController, HvacParams
from gridpilot.control.service import ControllerService
from gridpilot.control.thermal import ZoneHistory
from gridpilot.model import Topic
from gridpilot.sim.physics import (
    OutdoorClimate,
    SiteLocation,
    ZoneParams,
    ZoneState,
    is_occupied,
    step_zone,
)

MOSQUITTO = os.environ.get("GRIDPILOT_MOSQUITTO", "/usr/sbin/mosquitto")
TICK_S = 0.010
STEP = timedelta(minutes=15)
CLIMATE = OutdoorClimate()
SITE = SiteLocation()
SITE_ID = "lag"


# ------------------------------------------------------------------------------ inputs


def zone_history(seed: int, days: float = 3.0) -> ZoneHistory:
    """The simulator's zone at 15 min, its setpoint moved every 2 h: what identification
    learns the zone model from (as in the thermal tests)."""
    rng = random.Random(seed)
    zone = ZoneParams()
    state = ZoneState()
    rows: list[tuple[float, float, float, float, bool]] = []
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=days
    )
    for k in range(round(days * 96)):
        now = start + k * STEP
        if k % 8 == 0:
            state = replace(state, setpoint_degc=rng.uniform(19.0, 26.0))
        occupied = is_occupied(now)
        outdoor, irradiance = CLIMATE.temperature_degc(now), SITE.irradiance_wm2(now)
        t = state.temperature_degc
        state = step_zone(
            zone,
            state,
            outdoor_degc=outdoor,
            irradiance_wm2=irradiance,
            occupied=occupied,
            dt_s=STEP.total_seconds(),
        )
        rows.append((round(t, 2), outdoor, round(state.cooling_w, -1), irradiance, occupied))
    t_, o_, q_, i_, occ_ = zip(*rows, strict=True)
    return ZoneHistory.of(
        STEP.total_seconds(),
        temperature_degc=t_,
        outdoor_degc=o_,
        cooling_w=q_,
        irradiance_wm2=i_,
        occupied=occ_,
    )


class Forecasts30h:
    """Weather from the simulator's climate, a busy office's consumption without its
    chillers and 120 kWp of PV: what the planner's demand term is built from."""

    async def forecasts(self, now: datetime) -> Forecasts:
        start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        times = [start + k * STEP for k in range(120)]
        pv = tuple(120.0 * SITE.irradiance_wm2(t) * 0.8 for t in times)
        load = tuple(140_000.0 if 8 <= t.hour < 18 else 60_000.0 for t in times)
        return {
            "outdoor_degc": Forecast(
                start, STEP, tuple(CLIMATE.temperature_degc(t) for t in times)
            ),
            "irradiance_wm2": Forecast(start, STEP, tuple(SITE.irradiance_wm2(t) for t in times)),
            "uncontrolled_load_w": Forecast(start, STEP, load),
            "load_w": Forecast(start, STEP, tuple(v + 30_000.0 for v in load)),
            "pv_w": Forecast(start, STEP, pv),
        }

    def metrics(self) -> Mapping[str, float]:
        return {}

    async def zone_history(self, params: HvacParams, now: datetime) -> ZoneHistory | None:
        return None


def site_config(
    broker: BrokerAddress, zones: int, workers: int, replan_s: float
) -> GridPilotConfig:
    doc: dict[str, Any] = {
        "site": {"id": SITE_ID},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "control": {
            "cycle": 1.0,
            "journal": None,
            "workers": workers,
            "hvac_planning": "joint",
            "tariff": {
                "base_price_per_kwh": 0.10,
                "demand_charge_per_kw": 18.0,
                "periods": [
                    {"name": "on-peak", "start_hour": 12, "end_hour": 18, "price_per_kwh": 0.3}
                ],
            },
            "hvac": [
                {
                    "zone": f"hvac_zone_{i + 1}",
                    "replan_interval": replan_s,
                    "demand_scenarios": 5,
                    "overcast_weight": 0.3,
                }
                for i in range(zones)
            ],
        },
    }
    return validate_config_text(yaml.safe_dump(doc))


# ------------------------------------------------------------------------------ broker


@contextlib.contextmanager
def private_mosquitto(workdir: Path) -> Iterator[BrokerAddress]:
    if not Path(MOSQUITTO).exists():
        raise SystemExit("mosquitto not found: apt-get install mosquitto")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield BrokerAddress("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------------------ the run


@dataclass
class RunFigures:
    scenario: str
    mode: str
    zones: int
    workers: int
    seconds: float
    ticks: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    ticks_over_20ms: int
    solving_ticks: int
    """Ticks due while a solve ran (inline: in the LP call; pool: a job in a worker)."""
    solving_lag_p99_ms: float
    solving_lag_max_ms: float
    idle_lag_p99_ms: float
    """The other ticks: what the machine (other processes on its cores) does to the loop."""
    solves: int
    solve_mean_ms: float
    solve_max_ms: float
    identifications: int
    cycles: int
    overruns: int
    cycle_max_ms: float
    worker_restarts: int
    load_before: str
    load_after: str


@dataclass(frozen=True, slots=True)
class Tick:
    due: float
    """Monotonic seconds (the loop's clock)."""
    lag: float
    solving: bool
    """A worker was running a job when the ticker woke (pool runs)."""


async def ticker(ticks: list[Tick], stop: asyncio.Event, solving: Callable[[], bool]) -> None:
    """Every 10 ms: how late this wake-up is; a late one also counts the ticks it swallowed."""
    loop = asyncio.get_running_loop()
    due = loop.time() + TICK_S
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - loop.time()))
        late = loop.time() - due
        busy = solving()
        ticks.append(Tick(due, late, busy))
        swallowed = late - TICK_S
        k = 1
        while swallowed > 0.0:
            ticks.append(Tick(due + k * TICK_S, swallowed, busy))
            swallowed -= TICK_S
            k += 1
        due += TICK_S * (1 + max(0, math.floor(late / TICK_S)))


def during(tick: Tick, intervals: list[tuple[float, float]]) -> bool:
    """Whether the tick fell due while an inline solve held the loop."""
    return tick.solving or any(start - TICK_S <= tick.due <= end for start, end in intervals)


async def publish_zones(broker: BrokerAddress, zones: int, stop: asyncio.Event) -> None:
    """Each zone's temperature and the weather every second, as a gateway would."""
    rng = random.Random(7)
    async with BusClient(broker, "bench-lag-telemetry") as bus:
        while not stop.is_set():
            now = datetime.now(UTC)
            ts_ms = int(now.timestamp() * 1000)
            for i in range(zones):
                await bus.publish(
                    str(Topic.telemetry(SITE_ID, f"hvac_zone_{i + 1}")),
                    encode_telemetry(ts_ms, {"temperature_degc": 23.0 + rng.uniform(-0.2, 0.2)}),
                )
            await bus.publish(
                str(Topic.telemetry(SITE_ID, "weather_io")),
                encode_telemetry(
                    ts_ms,
                    {
                        "outdoor_temperature_degc": CLIMATE.temperature_degc(now),
                        "irradiance_wm2": SITE.irradiance_wm2(now),
                    },
                ),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


async def run_once(
    broker: BrokerAddress, scenario: str, zones: int, workers: int, seconds: float, replan_s: float
) -> RunFigures:
    config = site_config(broker, zones, workers, replan_s)
    assert config.control is not None
    histories = {z.zone: zone_history(i) for i, z in enumerate(config.control.hvac)}
    controllers = build_controllers(config, histories)
    inline_solves: list[float] = []
    inline_intervals: list[tuple[float, float]] = []
    inline_identifications: list[float] = []
    solve, identify = hvac.solve_plans, hvac.identify_zone

    def timed_solve(job: hvac.PlanJob) -> tuple[hvac.Plan, ...]:
        started = time.monotonic()
        try:
            return solve(job)
        finally:
            inline_solves.append(time.monotonic() - started)
            inline_intervals.append((started, time.monotonic()))

    def timed_identify(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return identify(*args)
        finally:
            inline_identifications.append(time.perf_counter() - started)

    # Inline, the planner calls these module functions in the cycle: timed here. Offloaded
    # they are handed to a worker by reference (the pool times the jobs), so they are not
    # replaced then (a worker could not unpickle this script's functions by name).
    if workers == 0:
        hvac.solve_plans, hvac.identify_zone = timed_solve, timed_identify  # type: ignore[assignment]
    load_before = load_average()
    ticks: list[Tick] = []
    stop = asyncio.Event()
    try:
        async with ControllerService(
            config,
            broker,
            controllers,
            base_dir=Path(tempfile.gettempdir()),
            forecasts=Forecasts30h(),
            reidentify_every=timedelta(days=365),
        ) as service:
            publisher = asyncio.create_task(publish_zones(broker, zones, stop))
            # Let the forkserver start and the models be identified before measuring: the
            # start-up is not the steady state a site runs in.
            name = next(c.name for c in controllers if isinstance(c, HvacGroupController))
            deadline = time.monotonic() + 60
            while service.engine.controller_state(name).zones[0].plan is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no plan within 60 s: is the planner falling back?")
                await asyncio.sleep(0.1)
            solves_at_start = len(inline_solves) + service.pool.stats.completed
            pool_total, pool_max = service.pool.stats.job_s_total, 0.0
            service.pool.stats.job_s_max = 0.0
            inline_solves.clear()
            inline_intervals.clear()
            cycles0, overruns0 = service.stats.cycles, service.stats.overruns
            service.stats.max_s = 0.0
            pool = service.pool
            tick = asyncio.create_task(ticker(ticks, stop, lambda: pool.stats.running > 0))
            await asyncio.sleep(seconds)
            stop.set()
            await tick
            await publisher
            completed = service.pool.stats.completed + len(inline_solves)
            if workers:
                solves = completed - solves_at_start
                mean = (service.pool.stats.job_s_total - pool_total) / max(solves, 1)
                pool_max = service.pool.stats.job_s_max
            else:
                solves = len(inline_solves)
                mean = sum(inline_solves) / max(solves, 1)
                pool_max = max(inline_solves, default=0.0)
            lags = [t.lag for t in ticks]
            solving = [t.lag for t in ticks if during(t, inline_intervals)] or [0.0]
            idle = [t.lag for t in ticks if not during(t, inline_intervals)] or [0.0]
            figures = RunFigures(
                scenario=scenario,
                mode="pool" if workers else "inline",
                zones=zones,
                workers=workers,
                seconds=seconds,
                ticks=len(lags),
                lag_p50_ms=float(np.percentile(lags, 50)) * 1000,
                lag_p99_ms=float(np.percentile(lags, 99)) * 1000,
                lag_max_ms=max(lags) * 1000,
                ticks_over_20ms=sum(1 for lag in lags if lag > 0.020),
                solving_ticks=sum(1 for t in ticks if during(t, inline_intervals)),
                solving_lag_p99_ms=float(np.percentile(solving, 99)) * 1000,
                solving_lag_max_ms=max(solving) * 1000,
                idle_lag_p99_ms=float(np.percentile(idle, 99)) * 1000,
                solves=solves,
                solve_mean_ms=mean * 1000,
                solve_max_ms=pool_max * 1000,
                identifications=len(inline_identifications) if workers == 0 else zones,
                cycles=service.stats.cycles - cycles0,
                overruns=service.stats.overruns - overruns0,
                cycle_max_ms=service.stats.max_s * 1000,
                worker_restarts=service.pool.stats.restarts,
                load_before=load_before,
                load_after=load_average(),
            )
    finally:
        hvac.solve_plans, hvac.identify_zone = solve, identify  # type: ignore[assignment]
    return figures


def table(rows: list[RunFigures]) -> str:
    head = (
        "| scenario | mode | solves | solve mean / max ms | lag p50 / p99 / max ms "
        "| during solves: ticks, lag p99 / max ms | between solves: lag p99 ms "
        "| ticks > 20 ms | cycles (overruns), longest ms | load avg before → after |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r.scenario} | {r.mode} | {r.solves} | {r.solve_mean_ms:.0f} / {r.solve_max_ms:.0f} "
        f"| {r.lag_p50_ms:.2f} / {r.lag_p99_ms:.1f} / {r.lag_max_ms:.0f} "
        f"| {r.solving_ticks}, {r.solving_lag_p99_ms:.1f} / {r.solving_lag_max_ms:.0f} "
        f"| {r.idle_lag_p99_ms:.1f} "
        f"| {r.ticks_over_20ms} of {r.ticks} | {r.cycles} ({r.overruns}), {r.cycle_max_ms:.0f} "
        f"| {r.load_before} → {r.load_after} |"
        for r in rows
    )


async def main_async(args: argparse.Namespace) -> list[RunFigures]:
    rows: list[RunFigures] = []
    with tempfile.TemporaryDirectory() as tmp, private_mosquitto(Path(tmp)) as broker:
        for zones in args.zones:
            scenario = f"{zones} zones, joint LP, 5+1 demand scenarios"
            for workers in (0, args.workers):
                figures = await run_once(
                    broker, scenario, zones, workers, args.seconds, args.replan
                )
                print(table([figures]).splitlines()[-1], flush=True)
                rows.append(figures)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured per run")
    parser.add_argument("--zones", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--workers", type=int, default=2, help="the pool runs' workers")
    parser.add_argument("--replan", type=float, default=5.0, help="replan interval, s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = datetime.now(UTC)
    rows = asyncio.run(main_async(args))
    print()
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {args.seconds:g} s per run, replan every "
        f"{args.replan:g} s, ticker {TICK_S * 1000:g} ms"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "machine": platform.node(),
                    "cpus": os.cpu_count(),
                    "python": sys.version.split()[0],
                    "runs": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
