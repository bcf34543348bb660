"""Supervision by systemd: ``sd_notify`` readiness and watchdog heartbeats.

The units in ``deploy/systemd/`` are ``Type=notify`` with ``WatchdogSec=``: systemd starts a
service, waits for ``READY=1``, and kills and restarts it (``Restart=always``) when no
``WATCHDOG=1`` arrives within ``WatchdogSec``. The protocol (sd_notify(3)) is one datagram
of ``KEY=VALUE`` lines to the unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@``
names an abstract socket); systemd passes the watchdog period as ``$WATCHDOG_USEC`` and,
when it is meant for one process only, that process' id as ``$WATCHDOG_PID``. A few lines
of socket code, so no library is needed for it.

A heartbeat is only sent while the service is healthy:

- it is sent by a task on the service's event loop, so a loop blocked by a stuck call
  (the failure a watchdog exists for) sends none;
- before each one, the probes run; a task the services started that has died with an
  exception (say, the ingest writer) stops the heartbeats, and systemd restarts the
  process instead of leaving a half-working service running.

Heartbeats go out at half the watchdog period, as sd_watchdog_enabled(3) recommends. Outside
systemd (no ``$NOTIFY_SOCKET``) none of this does anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Self

from gridpilot.tasks import cancel_and_wait

__all__ = [
    "Probe",
    "SystemdNotifier",
    "Watchdog",
    "failed_tasks_probe",
    "supervision",
    "watchdog_period_s",
]

log = logging.getLogger(__name__)

Probe = Callable[[], str | None]
"""A health check: ``None`` when healthy, else what is wrong."""


class SystemdNotifier:
    """Sends sd_notify(3) messages to ``socket_path``; failures are logged, never raised
    (a supervisor that went away must not take the service down)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a datagram to a local socket; never waits

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """The notifier systemd asked for, or ``None`` when not started by systemd."""
        path = (os.environ if env is None else env).get("NOTIFY_SOCKET")
        if not path or not (path.startswith(("/", "@"))):
            return None
        return cls(path)

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; ``False`` if it could not be sent."""
        message = "\n".join(assignments).encode()
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            return False
        return True

    def close(self) -> None:
        self._sock.close()


def watchdog_period_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog period systemd set for this process (``$WATCHDOG_USEC``), in seconds;
    ``None`` when there is none, or it is meant for another process (``$WATCHDOG_PID``)."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    target = environ.get("WATCHDOG_PID")
    if target and int(target) != (os.getpid() if pid is None else pid):
        return None
    try:
        period = int(usec) / 1_000_000
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None
    return period if period > 0 else None


def failed_tasks_probe(tasks: Collection[asyncio.Task[object]]) -> Probe:
    """A probe that fails once any of ``tasks`` has ended with an exception.

    The services' long-lived tasks end only when they are stopped (cancelled) or when they
    crash; a task that ended normally (a one-off started during start-up) is fine.
    """
    watched = list(tasks)

    def probe() -> str | None:
        for task in watched:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return f"task {task.get_name()} failed: {task.exception()!r}"
        return None

    return probe


class Watchdog:
    """While entered: ``READY=1`` once, then ``WATCHDOG=1`` every ``interval_s`` while
    every probe passes; ``STOPPING=1`` on exit. Owns its heartbeat task."""

    def __init__(
        self,
        notifier: SystemdNotifier,
        interval_s: float | None,
        probes: Sequence[Probe] = (),
        *,
        status: str = "",
    ) -> None:
        self._notifier = notifier
        self._interval_s = interval_s
        self._probes = list(probes)
        self._status = status
        self._task: asyncio.Task[None] | None = None
        self.beats = 0
        """Heartbeats sent so far."""
        self.failing: str | None = None
        """Why heartbeats are withheld now, if they are."""

    async def __aenter__(self) -> Self:
        ready = ["READY=1", f"MAINPID={os.getpid()}"]
        if self._status:
            ready.append(f"STATUS={self._status}")
        self._notifier.notify(*ready)
        if self._interval_s is not None:
            self._task = asyncio.create_task(self._beat(self._interval_s), name="sd-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # STOPPING=1 first: systemd then knows the exit that follows is a requested one.
        self._notifier.notify("STOPPING=1", "STATUS=stopping")
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        self._notifier.close()

    def check(self) -> str | None:
        """The first failing probe's reason, or ``None``."""
        for probe in self._probes:
            problem = probe()
            if problem is not None:
                return problem
        return None

    async def _beat(self, interval_s: float) -> None:
        while True:
            problem = self.check()
            if problem is None:
                if self.failing is not None:
                    log.warning("healthy again; watchdog heartbeats resume")
                    self._notifier.notify(f"STATUS={self._status or 'running'}")
                    self.failing = None
                self._notifier.notify("WATCHDOG=1")
                self.beats += 1
            elif problem != self.failing:
                log.error(
                    "unhealthy: %s; watchdog heartbeats stop, so systemd restarts the service",
                    problem,
                )
                self._notifier.notify(f"STATUS=unhealthy: {problem}")
                self.failing = problem
            await asyncio.sleep(interval_s)


def supervision(
    status: str, tasks: Collection[asyncio.Task[object]]
) -> contextlib.AbstractAsyncContextManager[Watchdog | None]:
    """The watchdog systemd asked for through the environment (a no-op outside systemd),
    probing ``tasks``: used by the composition root around a running set of services."""
    notifier = SystemdNotifier.from_environment()
    if notifier is None:
        return contextlib.nullcontext(None)
    period = watchdog_period_s()
    return Watchdog(
        notifier,
        period / 2 if period is not None else None,
        [failed_tasks_probe(tasks)],
        status=status,
    )
