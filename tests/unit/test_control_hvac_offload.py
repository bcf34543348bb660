"""Offloaded zone planners: the LP solve and the identification handed out as jobs.

The jobs are run here in the test's own process (their function on their arguments, after
a pickle round trip as a worker process would get them); the worker pool itself is tested
in ``test_workers.py`` and the service running them in worker processes in
``tests/integration/test_control_offload.py``.
"""

from __future__ import annotations

import pickle
from datetime import timedelta

from gridpilot.control.base import Job, JobOutcome
from gridpilot.control.engine import Engine, EngineParams
from gridpilot.control.hvac import HvacController, HvacState
from gridpilot.control.thermal import ThermalFit
from tests.unit.test_control_hvac import (
    GOOD_FIT,
    MONDAY_10,
    SETPOINT,
    forecasts_at,
    params,
    run,
    snapshot,
)
from tests.unit.test_control_hvac import simulated_history as history_of_three_days
from tests.unit.test_control_hvac_group import ZONES, group, site_forecasts, site_snapshot


def done(job: Job) -> JobOutcome:
    """The job's outcome as a worker would compute it: from a pickled copy of its inputs."""
    fn, args = pickle.loads(pickle.dumps((job.fn, job.args)))  # noqa: S301 - our own bytes
    return JobOutcome(value=fn(*args))


def only_job(jobs: tuple[Job, ...], key: str) -> Job:
    assert [job.key for job in jobs] == [key]
    return jobs[0]


def test_an_offloaded_planner_hands_out_its_solve_and_then_follows_the_inline_plan() -> None:
    inline = HvacController(params(), fit=GOOD_FIT)
    expected = run(inline, MONDAY_10, 23.0)
    assert expected.jobs == ()  # inline: solved in decide, as before

    offloaded = inline.offloaded()
    waiting = run(offloaded, MONDAY_10, 23.0)
    job = only_job(waiting.jobs, "plan")
    # Nothing planned yet: the thermostat, and the operator is told why.
    assert waiting.state.mode == "solving"
    assert waiting.metrics["fallback_state"] == 1.0
    assert waiting.requests[0].value == params().fallback_setpoint_degc(True)
    assert any("waiting for a new plan from a worker" in e for e in waiting.events)
    # Asked again before the outcome is in: no second job.
    again = run(offloaded, MONDAY_10 + timedelta(seconds=1), 23.0, waiting.state)
    assert again.jobs == ()
    assert again.events == ()

    state, events = offloaded.finish(again.state, job, done(job))
    assert events == ()
    assert state.plan == expected.state.plan
    following = run(offloaded, MONDAY_10 + timedelta(seconds=2), 23.0, state)
    assert following.jobs == ()
    assert following.state.mode == "plan"
    assert following.requests[0].target == SETPOINT
    assert following.requests[0].value == expected.requests[0].value
    assert any("optimised plan resumed (was solving)" in e for e in following.events)


def test_a_due_replan_keeps_following_the_current_plan_until_the_new_one_is_in() -> None:
    offloaded = HvacController(params(), fit=GOOD_FIT).offloaded()
    first = run(offloaded, MONDAY_10, 23.0)
    job = only_job(first.jobs, "plan")
    solved, _ = offloaded.finish(first.state, job, done(job))
    planned = run(offloaded, MONDAY_10 + timedelta(seconds=1), 23.0, solved).state
    assert planned.mode == "plan"
    later = MONDAY_10 + timedelta(minutes=20)  # past the 15-minute replan interval
    replanning = run(offloaded, later, 23.0, planned)
    second = only_job(replanning.jobs, "plan")
    assert second.tag == later
    assert replanning.state.mode == "plan"
    assert replanning.metrics["fallback_state"] == 0.0
    assert replanning.metrics["plan_age_s"] == 20 * 60.0
    assert replanning.events == ()
    state, _ = offloaded.finish(replanning.state, second, done(second))
    assert state.plan_start == later
    assert state.solving is None


def test_a_failed_solve_falls_back_and_an_outcome_no_one_waits_for_is_dropped() -> None:
    offloaded = HvacController(params(), fit=GOOD_FIT).offloaded()
    waiting = run(offloaded, MONDAY_10, 23.0)
    job = only_job(waiting.jobs, "plan")

    stale = Job("plan", job.fn, job.args, tag=MONDAY_10 - timedelta(hours=1))
    unchanged, _ = offloaded.finish(waiting.state, stale, done(stale))
    assert unchanged is waiting.state

    failed, _ = offloaded.finish(
        waiting.state, job, JobOutcome(error="JobTimeoutError: ran over its 60 s timeout")
    )
    assert failed.solving is None
    fallback = run(offloaded, MONDAY_10 + timedelta(seconds=1), 23.0, failed)
    assert fallback.state.mode == "planner"
    assert fallback.metrics["fallback_state"] == 1.0
    assert any("ran over its 60 s timeout" in e for e in fallback.events)
    # The next cycle asks for a plan again (as an inline planner solves again), quietly.
    retry = run(offloaded, MONDAY_10 + timedelta(seconds=2), 23.0, fallback.state)
    assert only_job(retry.jobs, "plan").tag == MONDAY_10 + timedelta(seconds=2)
    assert retry.state.mode == "planner"
    assert retry.events == ()


def test_identification_is_handed_out_and_a_model_in_hand_serves_meanwhile() -> None:
    history = history_of_three_days()
    offloaded = HvacController(params(), history=history).offloaded()
    first = run(offloaded, MONDAY_10, 23.0)
    job = only_job(first.jobs, "identify:hvac_zone_1")
    assert first.state.mode == "no_model"
    assert any("being identified" in e for e in first.events)
    state, events = offloaded.finish(first.state, job, done(job))
    assert isinstance(state.fit, ThermalFit)
    assert state.history is None
    assert any("identified 1R1C" in e for e in events)
    assert only_job(run(offloaded, MONDAY_10, 23.0, state).jobs, "plan")

    # Re-identification (the service hands in a fresh history, the model kept): the zone
    # goes on planning with the model it has while the new one is identified.
    planning = HvacController(params(), fit=GOOD_FIT).offloaded()
    refresh = HvacState(fit=GOOD_FIT, history=history)
    decision = run(planning, MONDAY_10, 23.0, refresh)
    assert sorted(job.key for job in decision.jobs) == ["identify:hvac_zone_1", "plan"]
    assert decision.state.fit is GOOD_FIT
    assert decision.state.mode == "solving"  # for its first plan, not for want of a model


def test_an_offloaded_group_hands_out_one_joint_solve_with_the_inline_result() -> None:
    inline = group()
    snap, forecasts = site_snapshot(MONDAY_10), site_forecasts(MONDAY_10)
    expected = inline.decide(snap, inline.initial_state(), MONDAY_10, forecasts)
    assert expected.jobs == ()

    offloaded = inline.offloaded()
    assert all(zone.offload for zone in offloaded.zones)
    waiting = offloaded.decide(snap, offloaded.initial_state(), MONDAY_10, forecasts)
    job = only_job(waiting.jobs, "plan")
    assert [zone.mode for zone in waiting.state.zones] == ["solving", "solving"]
    state, _ = offloaded.finish(waiting.state, job, done(job))
    assert state.planned == (0, 1)
    after = MONDAY_10 + timedelta(seconds=1)
    following = offloaded.decide(site_snapshot(after), state, after, forecasts)
    assert following.jobs == ()
    assert [zone.mode for zone in following.state.zones] == ["plan", "plan"]
    assert [r.value for r in following.requests] == [r.value for r in expected.requests]
    assert {r.target.device for r in following.requests} == set(ZONES)

    failed, _ = offloaded.finish(waiting.state, job, JobOutcome(error="WorkerLostError: gone"))
    fallback = offloaded.decide(site_snapshot(after), failed, after, forecasts)
    assert [zone.mode for zone in fallback.state.zones] == ["planner", "planner"]
    assert any("WorkerLostError: gone" in e for e in fallback.events)


def test_the_engine_lists_the_jobs_of_a_cycle_with_their_controller() -> None:
    offloaded = HvacController(params(), fit=GOOD_FIT).offloaded()
    engine = Engine([offloaded], EngineParams())
    result = engine.cycle(snapshot(MONDAY_10, 23.0), forecasts_at(MONDAY_10))
    assert [(name, job.key) for name, job in result.jobs] == [("hvac_zone_1_planner", "plan")]
    later = MONDAY_10 + timedelta(seconds=1)
    assert engine.cycle(snapshot(later, 23.0), forecasts_at(later)).jobs == ()
    assert engine.controller_state(offloaded.name).solving == MONDAY_10


def test_the_engine_routes_an_outcome_to_the_controller_that_asked() -> None:
    offloaded = HvacController(params(), fit=GOOD_FIT).offloaded()
    engine = Engine([offloaded, group().offloaded()], EngineParams())
    result = engine.cycle(site_snapshot(MONDAY_10), site_forecasts(MONDAY_10))
    names = sorted(name for name, _ in result.jobs)
    assert names == ["hvac_group_planner", "hvac_zone_1_planner"]
    for name, job in result.jobs:
        assert engine.finish_job(name, job, done(job)) == ()
    assert engine.controller_state("hvac_zone_1_planner").plan is not None
    assert all(
        zone.plan is not None for zone in engine.controller_state("hvac_group_planner").zones
    )
    assert engine.finish_job("no_such_controller", result.jobs[0][1], JobOutcome()) == ()


def test_an_offloaded_re_plan_inside_a_block_starts_at_the_block() -> None:
    """With ``replan_within_block``, the solve handed out at 10:05 plans the block from
    10:00 (the zones 1 K colder by then), and its plan is followed as one made then."""
    offloaded = group(replan_within_block=timedelta(minutes=5)).offloaded()
    forecasts = site_forecasts(MONDAY_10)
    state = offloaded.initial_state()
    handed: list[tuple[Job, object]] = []
    for k in range(12):
        now = MONDAY_10 + k * timedelta(seconds=30)
        degc = 24.0 - 0.1 * k  # the zones cool: 23.0 °C by 10:05
        snap = site_snapshot(now, (degc, degc), grid_w=105_000.0)
        decision = offloaded.decide(snap, state, now, forecasts)
        state = decision.state
        for job in decision.jobs:
            handed.append((job, now))
            state, _ = offloaded.finish(state, job, done(job))
    assert [when for _, when in handed] == [MONDAY_10, MONDAY_10 + timedelta(minutes=5)]
    assert [job.tag for job, _ in handed] == [MONDAY_10, MONDAY_10]
    (inside,) = handed[1][0].args
    # From the zones' 24 °C at 10:00, with the cooling they have had since as a floor.
    assert [z.t0_degc for z in inside.zones] == [24.0, 24.0]
    assert all(z.first_cooling_min_w > 0.0 for z in inside.zones)
    assert [zone.plan_start for zone in state.zones] == [MONDAY_10, MONDAY_10]
