"""A process pool for CPU-heavy work, so that it never runs on the event loop.

An LP solve over a day takes tens to hundreds of milliseconds of pure Python and HiGHS, in
which an event loop answers nothing: MQTT keepalives, commands and the control cycle wait.
:class:`WorkerPool` runs such work in other processes (``concurrent.futures``'
``ProcessPoolExecutor``) and hands the result back to a coroutine:

* **processes from a forkserver** (or ``spawn``), never ``fork``: the services run threads
  (storage writers, the MQTT client's), and a forked child inherits their locks held;
* **bounded**: at most ``workers`` jobs run and ``max_pending`` are admitted (running or
  waiting for a worker); beyond that :meth:`WorkerPool.run` raises :class:`PoolFullError` at once.
  A job with a ``key`` replaces a waiting job of the same key, which raises
  :class:`SupersededError` (a plan request made obsolete by a newer one);
* **a timeout per job**: a job running longer raises :class:`JobTimeoutError`. A process cannot
  be asked to stop a computation, so the pool's workers are terminated and the pool is
  recreated; jobs running beside it end in :class:`WorkerLostError`;
* **a worker that dies** (killed, out of memory, a crash in native code) breaks a
  ``ProcessPoolExecutor`` for good: the pool is recreated, the jobs that ran end in
  :class:`WorkerLostError`, and the next job runs in a fresh worker;
* **shutdown** (:meth:`WorkerPool.close`, from the services' ``__aexit__`` on SIGTERM):
  waiting jobs raise :class:`PoolClosedError`, workers are terminated, not waited for;
* **niced** workers (``nice`` 10 by default): the event loop's process comes first when
  the cores are busy;
* ``workers=0`` runs each job inline, on the caller's thread (tests, tiny sites): no
  timeout, no isolation.

Jobs are a module-level function and pickleable arguments (pure inputs, no handles); what
they raise comes back as raised. Figures in ``stats`` (:class:`PoolStats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

log = logging.getLogger(__name__)

R = TypeVar("R")

StartMethod = Literal["forkserver", "spawn"]


def default_workers() -> int:
    """Two workers, or one on a one-core machine: one solve at a time per site is the usual
    load, and a second lets a slow one not hold up the next."""
    return min(2, os.cpu_count() or 1)


class PoolError(Exception):
    """A job did not run to its end in the pool (the job's own exceptions pass through)."""


class PoolFullError(PoolError):
    """``max_pending`` jobs are already admitted: this one is refused, not queued."""


class SupersededError(PoolError):
    """A newer job of the same key took this one's place before a worker took it."""


class JobTimeoutError(PoolError):
    """The job ran longer than its timeout; the workers were terminated and replaced."""


class WorkerLostError(PoolError):
    """The worker running the job died (or was terminated for another job's timeout)."""


class PoolClosedError(PoolError):
    """The pool is shutting down."""


@dataclass(slots=True)
class PoolStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    """Jobs that raised (their own exception)."""
    rejected: int = 0
    superseded: int = 0
    timed_out: int = 0
    workers_lost: int = 0
    restarts: int = 0
    """Times the workers were replaced (a timeout or a dead worker)."""
    running: int = 0
    waiting: int = 0
    job_s_total: float = 0.0
    """Seconds from handing each finished job to a worker to its result (the run and the
    pickling both ways), summed; with ``completed``, the mean."""
    job_s_max: float = 0.0


def _init_worker(nice: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent shuts the workers
    # down itself, and a KeyboardInterrupt traceback from each worker tells no one anything.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A solve is background work next to an event loop that answers the broker and the
    # devices: on a busy machine the loop's process should get the core first.
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)


@dataclass(slots=True)
class _Waiter:
    key: str | None
    granted: asyncio.Future[None]


class WorkerPool:
    """Runs jobs in worker processes (see the module docstring). An async context manager."""

    def __init__(
        self,
        workers: int,
        *,
        max_pending: int = 8,
        timeout_s: float = 60.0,
        start_method: StartMethod = "forkserver",
        preload: Sequence[str] = (),
        nice: int = 10,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 (inline) or more, not {workers}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self._workers = workers
        self._max_pending = max(max_pending, workers)
        self._timeout_s = timeout_s
        self._nice = nice
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver" and preload:
            # Modules the forkserver imports once; every worker forked from it has them
            # (scipy alone takes about a second to import in each fresh process).
            self._context.set_forkserver_preload(list(preload))
        self._executor: ProcessPoolExecutor | None = None
        self._running = 0
        self._waiters: deque[_Waiter] = deque()
        self._admitted = 0
        self._closed = False
        self.stats = PoolStats()

    @property
    def workers(self) -> int:
        """Worker processes at most; 0 = jobs run inline."""
        return self._workers

    @property
    def max_pending(self) -> int:
        return self._max_pending

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------------ run

    async def run(
        self,
        fn: Callable[..., R],
        *args: Any,
        key: str | None = None,
        timeout_s: float | None = None,
    ) -> R:
        """``fn(*args)`` in a worker; raises what ``fn`` raised or a :class:`PoolError`."""
        if self._closed:
            raise PoolClosedError("the worker pool is shut down")
        self.stats.submitted += 1
        if self._workers == 0:
            return self._inline(fn, args)
        # The job it replaces leaves the count when its caller next runs: not counted here.
        replaced = key is not None and self._supersede(key)
        if self._admitted - replaced >= self._max_pending:
            self.stats.rejected += 1
            raise PoolFullError(
                f"{self._admitted} jobs already running or waiting (max_pending "
                f"{self._max_pending}): this one is refused"
            )
        self._admitted += 1
        try:
            await self._acquire(key)
            try:
                return await self._execute(fn, args, timeout_s or self._timeout_s)
            finally:
                self._release()
        finally:
            self._admitted -= 1

    def _inline(self, fn: Callable[..., R], args: tuple[Any, ...]) -> R:
        started = time.perf_counter()
        try:
            result = fn(*args)
        except Exception:
            self.stats.failed += 1
            raise
        self._completed(time.perf_counter() - started)
        return result

    def _completed(self, seconds: float) -> None:
        self.stats.completed += 1
        self.stats.job_s_total += seconds
        self.stats.job_s_max = max(self.stats.job_s_max, seconds)

    def _supersede(self, key: str) -> bool:
        """Fail the waiting job of ``key``, if there is one; whether there was."""
        for waiter in self._waiters:
            if waiter.key == key and not waiter.granted.done():
                waiter.granted.set_exception(
                    SupersededError(f"job {key!r} replaced by a newer one")
                )
                self._waiters.remove(waiter)
                self.stats.superseded += 1
                self.stats.waiting = len(self._waiters)
                return True
        return False

    async def _acquire(self, key: str | None) -> None:
        if self._running < self._workers and not self._waiters:
            self._running += 1
            self.stats.running = self._running
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(key, granted)
        self._waiters.append(waiter)
        self.stats.waiting = len(self._waiters)
        try:
            await granted
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self.stats.waiting = len(self._waiters)
            elif granted.done() and not granted.cancelled() and granted.exception() is None:
                self._release()  # the slot was handed over as we were cancelled
            raise

    def _release(self) -> None:
        """A worker slot is free: hand it to the first waiter, or count it free."""
        while self._waiters:
            waiter = self._waiters.popleft()
            self.stats.waiting = len(self._waiters)
            if not waiter.granted.done():
                waiter.granted.set_result(None)  # the slot passes on: running stays
                return
        self._running -= 1
        self.stats.running = self._running

    async def _execute(self, fn: Callable[..., R], args: tuple[Any, ...], timeout_s: float) -> R:
        executor = self._executor_now()
        started = time.perf_counter()
        try:
            submitted = await self._submit(executor, fn, args)
        except (BrokenProcessPool, RuntimeError) as exc:
            # Broken since its last job, or shut down by another job's recycling while
            # this one was being handed over (RuntimeError: no new futures after shutdown).
            self._recycle(executor, f"the pool was broken: {exc}")
            executor = self._executor_now()
            submitted = await self._submit(executor, fn, args)
        future = asyncio.wrap_future(submitted)
        # An outcome no one awaits any more (a timeout, a cancelled caller) is still read,
        # so that asyncio does not log it as never retrieved.
        future.add_done_callback(_retrieve)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            self.stats.timed_out += 1
            self._recycle(executor, f"a job ran over its {timeout_s:g} s timeout")
            raise JobTimeoutError(
                f"ran over its {timeout_s:g} s timeout; workers replaced"
            ) from None
        except BrokenProcessPool as exc:
            if self._closed:
                raise PoolClosedError("the worker pool shut down while the job ran") from None
            self.stats.workers_lost += 1
            self._recycle(executor, f"a worker died: {exc}")
            raise WorkerLostError(f"the worker running it died ({exc}); workers replaced") from None
        except asyncio.CancelledError:
            submitted.cancel()  # if it has not started; a running job's result is dropped
            raise
        except Exception:
            self.stats.failed += 1
            raise
        self._completed(time.perf_counter() - started)
        return result

    @staticmethod
    async def _submit(
        executor: ProcessPoolExecutor, fn: Callable[..., R], args: tuple[Any, ...]
    ) -> ConcurrentFuture[R]:
        # Submitting may start a worker process, and the first time the forkserver, which
        # imports the preload modules before it answers: seconds, kept off the loop.
        return await asyncio.to_thread(executor.submit, fn, *args)

    async def warm_up(self) -> None:
        """Start the forkserver and a worker now rather than on the first real job (a
        no-op job; errors are the next job's to meet)."""
        if self._workers == 0 or self._closed:
            return
        with contextlib.suppress(PoolError, OSError):
            await self.run(os.getpid, key="warm-up")

    def _executor_now(self) -> ProcessPoolExecutor:
        if self._closed:
            raise PoolClosedError("the worker pool is shut down")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=self._context,
                initializer=_init_worker,
                initargs=(self._nice,),
            )
        return self._executor

    def _recycle(self, executor: ProcessPoolExecutor, reason: str) -> None:
        """Terminate ``executor``'s workers and start afresh (once, whoever notices first)."""
        if self._executor is not executor:
            return
        self._executor = None
        self.stats.restarts += 1
        log.warning("worker pool: %s; terminating the workers and starting new ones", reason)
        _terminate(executor)

    # ------------------------------------------------------------------------- shutdown

    async def close(self) -> None:
        """Refuse new jobs, fail the waiting ones, terminate the workers (running jobs end
        in :class:`PoolClosedError`)."""
        if self._closed:
            return
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.granted.done():
                waiter.granted.set_exception(PoolClosedError("the worker pool is shut down"))
        self.stats.waiting = 0
        executor, self._executor = self._executor, None
        if executor is not None:
            _terminate(executor)
            # The executor's manager thread reaps the terminated workers; joining it takes a
            # moment, spent off the loop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(executor.shutdown, True), 10.0)

    def worker_pids(self) -> tuple[int, ...]:
        """The pids of the current workers (started lazily: none before the first job)."""
        executor = self._executor
        if executor is None:
            return ()
        processes = cast(dict[int, Any], getattr(executor, "_processes", None) or {})
        return tuple(processes)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _terminate(executor: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop a running job before Python 3.14
    # (terminate_workers): its processes are terminated directly, then the executor is shut
    # down without waiting (its futures then fail as BrokenProcessPool).
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
