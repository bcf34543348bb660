"""A thread that owns one database connection and runs jobs for the event loop.

Written for SQLite (the reasons below); the PostgreSQL backend uses it too, with a
``psycopg`` session whose blocking network calls then never run on the event loop.

Why a dedicated thread per connection rather than ``asyncio.to_thread`` plus a lock:

- a ``sqlite3.Connection`` stays on the thread that opened it, so it keeps Python's
  same-thread check and never needs ``check_same_thread=False``;
- ``to_thread`` runs on the loop's default executor, which other code shares (DNS lookups,
  file reads): a slow commit or checkpoint held there would stall unrelated work;
- the writer thread sees every queued write, so it can commit several queued batches in one
  transaction (group commit, see ``GroupHandler``); that is where SQLite throughput comes
  from, because each commit costs a WAL frame per page it touched;
- jobs run strictly in submission order, so a batch submitted first is committed first.

The queue between loop and thread is a ``queue.SimpleQueue``; its bound lives on the loop
side, an ``asyncio.Semaphore`` acquired before a job is queued and released when its result
is back on the loop. A caller that finds the thread saturated therefore *awaits*
(back-pressure) and the event loop itself never blocks on a full queue. sqlite3 releases the
GIL while SQLite works, so the loop keeps running during commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gridpilot.storage.base import StorageError

_log = logging.getLogger(__name__)

T = TypeVar("T")
G = TypeVar("G")
R = TypeVar("R")


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


@dataclass(frozen=True, slots=True)
class GroupHandler(Generic[C, G, R]):
    """How the thread runs grouped jobs (the writer's batches).

    ``run(conn, items)`` handles consecutive queued items at once and returns one outcome
    per item, a result or the exception that item's caller should get. Items are gathered
    while their summed ``weight`` stays within ``max_weight`` (the first one always goes).
    """

    run: Callable[[C, list[G]], list[R | BaseException]]
    weight: Callable[[G], int]
    max_weight: int


@dataclass(eq=False, slots=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    call: Callable[[Any], Any] | None = None
    item: Any = None  # for grouped jobs (call is None)


@dataclass(eq=False, slots=True)
class _Stop:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = field(repr=False)


class ConnectionThread(Generic[C, G, R]):
    """One thread, one connection, jobs run in the order they were submitted.

    ``connect`` opens the thread's connection (of type ``C``) and runs on the thread itself.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], C],
        *,
        max_pending: int,
        group: GroupHandler[C, G, R] | None = None,
    ) -> None:
        self._name = name
        self._connect = connect
        self._group = group
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(max_pending)
        self._in_flight = 0  # jobs queued or running; only touched on the loop
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs queued or running (for picking the least busy reader)."""
        return self._in_flight

    async def start(self) -> None:
        """Start the thread and wait until its connection is open; raise what opening raised."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        # daemon: a process that forgets close() must still be able to exit; SQLite's
        # journal makes an interrupted transaction roll back on the next open.
        self._thread = threading.Thread(
            target=self._main, args=(loop, opened), name=self._name, daemon=True
        )
        self._thread.start()
        try:
            await opened
        except BaseException:
            self._closed = True
            await asyncio.to_thread(self._thread.join)
            raise

    async def call(self, fn: Callable[[C], T]) -> T:
        """Run ``fn(connection)`` on the thread and return its result."""
        result: T = await self._submit(call=fn)
        return result

    async def call_grouped(self, item: G) -> R:
        """Hand ``item`` to the group handler, possibly together with other queued items."""
        if self._group is None:
            raise TypeError(f"{self._name} has no group handler")
        result: R = await self._submit(item=item)
        return result

    async def _submit(self, *, call: Callable[[C], Any] | None = None, item: Any = None) -> Any:
        await self._slots.acquire()
        # Checked after the wait: close() may have run while this caller waited for a slot,
        # and a job queued behind the stop marker would never run.
        if self._closed:
            self._slots.release()
            raise StorageError("storage is closed; open it again before using it")
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), call, item)
        self._in_flight += 1
        self._queue.put(job)
        # If the caller is cancelled, the job still runs (a write may already be committing);
        # the slot is released when the thread reports back, not here, so the bound holds.
        return await job.future

    async def stop(self) -> None:
        """Run what is queued, close the connection, end the thread. Idempotent."""
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Stop(loop, done))
        await asyncio.shield(done)
        # The thread has closed its connection and is returning; the join is immediate.
        await asyncio.to_thread(self._thread.join)

    # --- everything below runs on the thread -------------------------------------------

    def _main(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # noqa: BLE001 - start() re-raises it on the loop
            _settle(loop, opened, None, exc)
            return
        _settle(loop, opened, None, None)
        held: _Job | _Stop | None = None  # drained while grouping but not groupable
        try:
            while True:
                job = held if held is not None else self._queue.get()
                held = None
                if isinstance(job, _Stop):
                    conn.close()
                    _settle(job.loop, job.future, None, None)
                    return
                if job.call is not None:
                    self._run_call(conn, job, job.call)
                else:
                    held = self._run_group(conn, job, self._group)
        except BaseException:  # pragma: no cover - a bug here must not hang every caller
            _log.exception("%s stopped unexpectedly", self._name)
            self._fail_queued(StorageError(f"{self._name} stopped unexpectedly; see the log"))
            conn.close()
            raise

    def _run_call(self, conn: C, job: _Job, call: Callable[[C], Any]) -> None:
        try:
            result = call(conn)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the awaiting caller
            self._finish(job, None, exc)
        else:
            self._finish(job, result, None)

    def _run_group(
        self, conn: C, first: _Job, group: GroupHandler[C, G, R] | None
    ) -> _Job | _Stop | None:
        if group is None:  # call_grouped() refuses this before queueing
            self._finish(first, None, TypeError(f"{self._name} has no group handler"))
            return None
        jobs = [first]
        weight = group.weight(first.item)
        held: _Job | _Stop | None = None
        while weight < group.max_weight:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(nxt, _Stop) or nxt.call is not None:
                held = nxt  # runs right after this group, keeping submission order
                break
            nxt_weight = group.weight(nxt.item)
            if weight + nxt_weight > group.max_weight:
                held = nxt
                break
            jobs.append(nxt)
            weight += nxt_weight
        try:
            outcomes = group.run(conn, [j.item for j in jobs])
        except BaseException as exc:  # noqa: BLE001 - a handler bug fails its callers, not the thread
            outcomes = [exc] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._finish(job, None, outcome)
            else:
                self._finish(job, outcome, None)
        return held

    def _finish(self, job: _Job, result: object, exc: BaseException | None) -> None:
        _settle(job.loop, job.future, result, exc, self._release)

    def _release(self) -> None:
        """On the loop: the job is done, its slot is free."""
        self._in_flight -= 1
        self._slots.release()

    def _fail_queued(self, exc: BaseException) -> None:  # pragma: no cover - see _main
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Stop):
                _settle(job.loop, job.future, None, None)
            else:
                self._finish(job, None, exc)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: object,
    exc: BaseException | None,
    release: Callable[[], None] | None = None,
) -> None:
    """From the thread: complete ``future`` on its loop and free the caller's slot."""

    def settle() -> None:
        if release is not None:
            release()
        if future.done():  # the caller was cancelled; nobody is waiting for the outcome
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    # RuntimeError: the loop is closed, nobody is left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)


_Thread = TypeVar("_Thread", bound=ConnectionThread[Any, Any, Any])


def least_busy(threads: Sequence[_Thread]) -> _Thread:
    """The reader with the fewest jobs queued or running."""
    return min(threads, key=lambda t: t.pending)
