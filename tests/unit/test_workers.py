"""The worker pool (``gridpilot.workers``): real worker processes from a forkserver.

Jobs that must stay running while the test acts wait for a file the test creates, so no
assertion depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gridpilot.workers import (
    JobTimeoutError,
    PoolClosedError,
    PoolFullError,
    SupersededError,
    WorkerLostError,
    WorkerPool,
)


def pid_of_worker() -> int:
    return os.getpid()


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hold_until(path: str) -> int:
    """Run until ``path`` exists (the test's go), then return this worker's pid."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return os.getpid()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (the pytest timeout bounds it)."""
    while not condition():  # noqa: ASYNC110 - the pool's counters have no event to wait on
        await asyncio.sleep(0.005)


async def test_inline_mode_runs_in_this_process_and_passes_exceptions() -> None:
    async with WorkerPool(0) as pool:
        assert await pool.run(pid_of_worker) == os.getpid()
        assert await pool.run(square, 7) == 49
        with pytest.raises(ValueError, match="bad input"):
            await pool.run(fail, "bad input")
        assert pool.worker_pids() == ()
        assert (pool.stats.completed, pool.stats.failed) == (2, 1)


async def test_a_job_runs_in_a_worker_process_and_its_exception_comes_back() -> None:
    async with WorkerPool(1) as pool:
        pid = await pool.run(pid_of_worker)
        assert pid != os.getpid()
        assert pid in pool.worker_pids()
        assert await pool.run(square, 12) == 144
        with pytest.raises(ValueError, match="from the worker"):
            await pool.run(fail, "from the worker")
        # The job's exception is the job's: the worker lives on.
        assert await pool.run(pid_of_worker) == pid
        assert pool.stats.restarts == 0


async def test_a_job_over_its_timeout_is_stopped_and_the_pool_recovers(tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    async with WorkerPool(1, timeout_s=30.0) as pool:
        first = await pool.run(pid_of_worker)
        with pytest.raises(JobTimeoutError):
            await pool.run(hold_until, never, timeout_s=0.3)
        await until(lambda: not alive(first))  # the stuck worker was terminated
        second = await pool.run(pid_of_worker)
        assert second not in (first, os.getpid())
        assert (pool.stats.timed_out, pool.stats.restarts) == (1, 1)


async def test_a_killed_worker_fails_its_job_and_a_new_worker_takes_the_next() -> None:
    async with WorkerPool(1) as pool:
        first = await pool.run(pid_of_worker)
        with pytest.raises(WorkerLostError):
            await pool.run(die)
        second = await pool.run(pid_of_worker)
        assert second != first
        assert await pool.run(square, 3) == 9
        assert (pool.stats.workers_lost, pool.stats.restarts) == (1, 1)


async def test_admitted_work_is_bounded_and_a_full_pool_refuses(tmp_path: Path) -> None:
    go = tmp_path / "go"
    async with WorkerPool(1, max_pending=2) as pool:
        running = asyncio.create_task(pool.run(hold_until, str(go)))
        await until(lambda: pool.stats.running == 1)
        waiting = asyncio.create_task(pool.run(square, 5))
        await until(lambda: pool.stats.waiting == 1)
        with pytest.raises(PoolFullError):
            await pool.run(square, 6)
        assert pool.stats.rejected == 1
        go.touch()
        assert await running != os.getpid()
        assert await waiting == 25
        # Room again once they are done.
        assert await pool.run(square, 6) == 36


async def test_a_newer_job_of_the_same_key_supersedes_a_waiting_one(tmp_path: Path) -> None:
    go = tmp_path / "go"
    async with WorkerPool(1, max_pending=4) as pool:
        running = asyncio.create_task(pool.run(hold_until, str(go), key="plan"))
        await until(lambda: pool.stats.running == 1)
        older = asyncio.create_task(pool.run(square, 2, key="plan"))
        other = asyncio.create_task(pool.run(square, 3, key="identify"))
        await until(lambda: pool.stats.waiting == 2)
        newer = asyncio.create_task(pool.run(square, 4, key="plan"))
        with pytest.raises(SupersededError):
            await older
        go.touch()
        await running  # a running job is never superseded
        assert await other == 9
        assert await newer == 16
        assert pool.stats.superseded == 1


async def test_a_full_pool_still_takes_a_job_that_supersedes_a_waiting_one(
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    async with WorkerPool(1, max_pending=2) as pool:
        running = asyncio.create_task(pool.run(hold_until, str(go)))
        await until(lambda: pool.stats.running == 1)
        older = asyncio.create_task(pool.run(square, 2, key="plan"))
        await until(lambda: pool.stats.waiting == 1)
        newer = asyncio.create_task(pool.run(square, 3, key="plan"))  # full, but replaces
        with pytest.raises(SupersededError):
            await older
        with pytest.raises(PoolFullError):
            await pool.run(square, 4)  # no key: full it is
        go.touch()
        await running
        assert await newer == 9
        assert (pool.stats.superseded, pool.stats.rejected) == (1, 1)


async def test_close_fails_waiting_and_running_jobs_and_terminates_workers(
    tmp_path: Path,
) -> None:
    never = str(tmp_path / "never")
    pool = WorkerPool(1, max_pending=4)
    worker = await pool.run(pid_of_worker)
    running = asyncio.create_task(pool.run(hold_until, never))
    await until(lambda: pool.stats.running == 1)
    waiting = asyncio.create_task(pool.run(square, 2))
    await until(lambda: pool.stats.waiting == 1)
    await pool.close()
    with pytest.raises(PoolClosedError):
        await waiting
    with pytest.raises(PoolClosedError):
        await running
    await until(lambda: not alive(worker))  # its parent (the forkserver) reaps it
    with pytest.raises(PoolClosedError):
        await pool.run(square, 2)


async def test_a_cancelled_waiting_job_gives_up_its_place(tmp_path: Path) -> None:
    go = tmp_path / "go"
    async with WorkerPool(1, max_pending=3) as pool:
        running = asyncio.create_task(pool.run(hold_until, str(go)))
        await until(lambda: pool.stats.running == 1)
        cancelled = asyncio.create_task(pool.run(square, 2))
        await until(lambda: pool.stats.waiting == 1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert pool.stats.waiting == 0
        go.touch()
        await running
        assert await pool.run(square, 8) == 64
        assert pool.stats.running == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(-1)
    with pytest.raises(ValueError, match="max_pending"):
        WorkerPool(1, max_pending=0)
