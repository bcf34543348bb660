"""sd_notify and the watchdog heartbeat, against a real unix datagram socket of the test's
own (standing in for systemd's)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridpilot.ops.systemd import (
    SystemdNotifier,
    Watchdog,
    failed_tasks_probe,
    supervision,
    watchdog_period_s,
)


class FakeSystemd:
    """Receives notifications on a unix datagram socket, each with its arrival time (a
    thread of its own, so it keeps receiving while the event loop under test is blocked)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def beats(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [t for t, m in self.received if "WATCHDOG=1" in m.split("\n") and since <= t < until]

    def messages(self) -> list[str]:
        return [m for _, m in self.received]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.close()


async def eventually(condition: object, limit_s: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 -- the socket thread has no event to await
            await asyncio.sleep(0.01)


async def test_ready_then_heartbeats_then_stopping(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier(systemd.sock.getsockname())
    async with Watchdog(notifier, 0.05, status="ingest running") as watchdog:
        await eventually(lambda: len(systemd.beats()) >= 5)
    await eventually(lambda: any("STOPPING=1" in m for m in systemd.messages()))
    first = systemd.messages()[0].split("\n")
    assert "READY=1" in first
    assert f"MAINPID={os.getpid()}" in first
    assert "STATUS=ingest running" in first
    assert watchdog.beats >= 5
    last = systemd.messages()[-1]
    assert "STOPPING=1" in last


async def test_a_blocked_event_loop_sends_no_heartbeat(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier(systemd.sock.getsockname())
    async with Watchdog(notifier, 0.05):
        await eventually(lambda: len(systemd.beats()) >= 3)
        blocked_from = time.monotonic()
        time.sleep(0.6)  # noqa: ASYNC251 -- the stall under test: a call that blocks the loop
        blocked_until = time.monotonic()
        await eventually(lambda: len(systemd.beats(since=blocked_until)) >= 3)
    # One beat may have been on its way as the block began; none was sent during it.
    during = systemd.beats(since=blocked_from + 0.05, until=blocked_until)
    assert during == []


async def test_heartbeats_stop_while_a_probe_fails_and_resume_after(
    systemd: FakeSystemd,
) -> None:
    healthy = [True]
    notifier = SystemdNotifier(systemd.sock.getsockname())
    probe = lambda: None if healthy[0] else "the writer is stuck"  # noqa: E731
    async with Watchdog(notifier, 0.05, [probe], status="running") as watchdog:
        await eventually(lambda: len(systemd.beats()) >= 3)
        healthy[0] = False
        await eventually(
            lambda: any("STATUS=unhealthy: the writer is stuck" in m for m in systemd.messages())
        )
        sick_from = time.monotonic()
        await asyncio.sleep(0.5)
        assert systemd.beats(since=sick_from) == []
        assert watchdog.failing == "the writer is stuck"
        healthy[0] = True
        await eventually(lambda: len(systemd.beats(since=sick_from)) >= 2)
        assert watchdog.failing is None


async def test_a_crashed_service_task_fails_the_probe() -> None:
    async def crash() -> None:
        raise RuntimeError("disk on fire")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def one_off() -> None:
        return None

    tasks = [asyncio.create_task(forever(), name="reader"), asyncio.create_task(one_off())]
    probe = failed_tasks_probe(tasks)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert probe() is None  # running and finished-normally tasks are healthy
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert probe() is None  # a stopped (cancelled) task is not a crash
    crashed = asyncio.create_task(crash(), name="ingest-writer")
    await asyncio.gather(crashed, return_exceptions=True)
    assert failed_tasks_probe([*tasks, crashed])() == (
        "task ingest-writer failed: RuntimeError('disk on fire')"
    )


def test_watchdog_period_from_the_environment() -> None:
    assert watchdog_period_s({}) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_period_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 30.0
    assert watchdog_period_s({"WATCHDOG_USEC": "x"}) is None
    assert SystemdNotifier.from_environment({}) is None
    assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": "relative"}) is None


def test_an_abstract_notify_socket_is_reached() -> None:
    name = f"gridpilot-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    try:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        assert notifier.notify("READY=1", "STATUS=up")
        assert receiver.recv(100) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        receiver.close()


async def test_outside_systemd_supervision_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    async with supervision("x", []) as watchdog:
        assert watchdog is None


def test_a_vanished_supervisor_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert notifier.notify("WATCHDOG=1") is False
    notifier.close()
