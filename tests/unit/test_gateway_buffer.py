"""The gateway's on-disk buffer (gateway/buffer.py): order, bounds with drop-oldest
accounting, persistence across restarts, unreadable files, and the Outbox's sending rules
(PUBACK before delete, a bounded window in memory, the previous run's messages first)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gridpilot.gateway.buffer import BufferInUseError, BufferOpenError, DiskBuffer, Outbox


def _items(start: int, n: int, size: int = 10) -> list[tuple[str, bytes]]:
    return [(f"t/{i}", bytes([i % 256]) * size) for i in range(start, start + n)]


def _open(path: Path | None, *, max_messages: int = 1000, max_bytes: int = 10**9) -> DiskBuffer:
    buffer = DiskBuffer(path, max_messages=max_messages, max_bytes=max_bytes)
    buffer.open()
    return buffer


def test_messages_come_back_in_the_order_appended(tmp_path: Path) -> None:
    buffer = _open(tmp_path / "b.db")
    first = buffer.append(_items(0, 3))
    second = buffer.append(_items(3, 4))
    assert (first.first_id, first.last_id, second.first_id, second.last_id) == (1, 3, 4, 7)
    rows = buffer.read(0, 100)
    assert [r.topic for r in rows] == [f"t/{i}" for i in range(7)]
    assert [r.id for r in rows] == list(range(1, 8))
    assert [r.topic for r in buffer.read(4, 2)] == ["t/4", "t/5"]
    assert buffer.messages == 7
    assert buffer.bytes == sum(len(t) + len(p) for t, p in _items(0, 7))
    buffer.close()


def test_delete_forgets_delivered_messages_and_ids_are_never_reused(tmp_path: Path) -> None:
    buffer = _open(tmp_path / "b.db")
    buffer.append(_items(0, 5))
    buffer.delete([1, 2, 99])  # 99: not there, ignored
    assert [r.id for r in buffer.read(0, 10)] == [3, 4, 5]
    buffer.append(_items(5, 1), delete=[3])
    assert [r.id for r in buffer.read(0, 10)] == [4, 5, 6]
    buffer.delete([4, 5, 6])
    assert buffer.messages == 0
    assert buffer.bytes == 0
    assert buffer.append(_items(6, 1)).first_id == 7
    assert buffer.last_id == 7
    buffer.close()


def test_message_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    buffer = _open(tmp_path / "b.db", max_messages=5)
    assert buffer.append(_items(0, 4)).dropped == 0
    result = buffer.append(_items(4, 4))
    assert result.dropped == 3
    assert [r.topic for r in buffer.read(0, 10)] == [f"t/{i}" for i in range(3, 8)]
    assert (buffer.messages, buffer.dropped) == (5, 3)
    assert buffer.append(_items(8, 2)).dropped == 2
    assert buffer.dropped == 5
    buffer.close()


def test_byte_bound_drops_the_oldest_until_the_new_messages_fit(tmp_path: Path) -> None:
    # Each item is len("t/N") + 100 bytes: 103 for N < 10.
    buffer = _open(tmp_path / "b.db", max_bytes=350)
    buffer.append(_items(0, 3, size=100))
    result = buffer.append(_items(3, 2, size=100))
    assert result.dropped == 2
    assert [r.topic for r in buffer.read(0, 10)] == ["t/2", "t/3", "t/4"]
    assert buffer.bytes == 309
    buffer.close()


def test_messages_handed_to_the_bus_are_not_dropped(tmp_path: Path) -> None:
    """Drops skip what the sender already holds (ids <= protect_through): those may still
    be delivered, and counting them as dropped would count them twice."""
    buffer = _open(tmp_path / "b.db", max_messages=4)
    buffer.append(_items(0, 4))
    result = buffer.append(_items(4, 2), protect_through=2)
    assert result.dropped == 2
    assert [r.topic for r in buffer.read(0, 10)] == ["t/0", "t/1", "t/4", "t/5"]
    buffer.close()


def test_the_buffer_and_its_drop_count_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = _open(path, max_messages=3)
    buffer.append(_items(0, 5))
    buffer.delete([4])
    buffer.close()
    again = _open(path, max_messages=3)
    assert [(r.id, r.topic, r.payload) for r in again.read(0, 10)] == [
        (3, "t/2", bytes([2]) * 10),
        (5, "t/4", bytes([4]) * 10),
    ]
    assert (again.messages, again.dropped, again.last_id) == (2, 2, 5)
    assert again.append(_items(5, 1)).first_id == 6
    again.close()


def test_what_a_killed_process_committed_is_there_after(tmp_path: Path) -> None:
    """A process commits, then dies by SIGKILL (no close, no checkpoint of the WAL)."""
    path = tmp_path / "b.db"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from gridpilot.gateway.buffer import DiskBuffer\n"
        "b = DiskBuffer(Path(sys.argv[1]), max_messages=100, max_bytes=10**6)\n"
        "b.open()\n"
        "b.append([(f't/{i}', bytes([i]) * 10) for i in range(3)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # the commit is in the WAL, not yet in the file
    again = _open(path)
    assert [r.topic for r in again.read(0, 10)] == ["t/0", "t/1", "t/2"]
    again.close()


def test_an_unreadable_file_is_moved_aside_and_a_fresh_buffer_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    buffer = _open(path)
    moved = buffer.corrupt_moved_to
    assert moved is not None
    assert moved.name.startswith("b.db.corrupt-")
    assert moved.read_bytes().startswith(b"this is not")
    assert buffer.messages == 0
    buffer.append(_items(0, 2))
    assert [r.topic for r in buffer.read(0, 10)] == ["t/0", "t/1"]
    assert "unreadable" in caplog.text
    assert str(moved) in caplog.text
    buffer.close()


def test_a_damaged_database_page_is_detected_at_open(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buffer = _open(path)
    buffer.append(_items(0, 200, size=200))
    buffer.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")  # fold the WAL into the file
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 + 8 : 4096 + 600] = b"\xff" * 592  # the second page: the table's b-tree
    path.write_bytes(bytes(data))
    again = _open(path)
    assert again.corrupt_moved_to is not None
    assert again.messages == 0
    again.append(_items(0, 1))
    assert again.read(0, 5)[0].topic == "t/0"
    again.close()


def test_a_second_process_cannot_open_a_buffer_in_use(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    first = _open(path)
    other = DiskBuffer(path, max_messages=10, max_bytes=10_000)
    with pytest.raises(BufferInUseError, match="second gateway"):
        other.open()
    first.close()
    other.open()  # free again
    other.close()


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DiskBuffer(None, max_messages=0, max_bytes=10)


# ---------------------------------------------------------------------------- Outbox


class FakeBus:
    """Records what the outbox publishes; acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[str, bytes, Callable[[bool], None]]] = []
        self.history: list[str] = []  # every topic published, in order

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: Callable[[bool], None] | None = None,
    ) -> None:
        assert qos == 1
        assert not retain
        assert on_done is not None
        self.sent.append((topic, payload, on_done))
        self.history.append(topic)

    def ack(self, n: int | None = None) -> None:
        for _, _, done in list(self.sent[:n]):
            done(True)
        del self.sent[:n]


async def _until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 -- polls state the outbox's tasks change
            await asyncio.sleep(0.01)


async def test_outbox_sends_in_order_and_deletes_only_after_the_puback(tmp_path: Path) -> None:
    bus = FakeBus()
    disk = DiskBuffer(tmp_path / "b.db", max_messages=1000, max_bytes=10**9)
    async with Outbox(disk, bus, window=100) as outbox:
        ids = [await outbox.put(f"t/{i}", b"x") for i in range(10)]
        assert ids == list(range(1, 11))
        await _until(lambda: len(bus.sent) == 10)
        assert [t for t, _, _ in bus.sent] == [f"t/{i}" for i in range(10)]
        assert outbox.stats.messages == 10  # sent, not acknowledged: still on disk
        bus.ack(4)
        await _until(lambda: outbox.stats.messages == 6)
        assert outbox.stats.delivered == 4
    again = DiskBuffer(tmp_path / "b.db", max_messages=1000, max_bytes=10**9)
    again.open()
    assert [r.topic for r in again.read(0, 100)] == [f"t/{i}" for i in range(4, 10)]
    again.close()


async def test_outbox_holds_at_most_its_window_in_memory(tmp_path: Path) -> None:
    """Broker away (nothing acknowledged): the bus gets ``window`` messages, the rest waits
    on disk; each PUBACK lets one more out, still in order."""
    bus = FakeBus()
    async with Outbox(DiskBuffer(None, max_messages=10_000, max_bytes=10**9), bus, window=8) as ob:
        for i in range(50):
            await ob.put(f"t/{i}", b"x")
        await _until(lambda: len(bus.sent) == 8)
        await asyncio.sleep(0.1)
        assert len(bus.sent) == 8
        assert ob.backlog == 42
        while len(bus.history) < 50:
            target = min(50, len(bus.history) + 3)
            bus.ack(3)
            await _until(lambda t=target: len(bus.history) == t)
            assert len(bus.sent) <= 8
        assert bus.history == [f"t/{i}" for i in range(50)]


async def test_outbox_replays_the_previous_run_first(tmp_path: Path) -> None:
    """A run stopped with messages unacknowledged; the next run sends them before its own."""
    path = tmp_path / "b.db"
    first_bus = FakeBus()
    async with Outbox(DiskBuffer(path, max_messages=100, max_bytes=10**9), first_bus) as ob:
        for i in range(5):
            await ob.put(f"old/{i}", b"x")
        await _until(lambda: len(first_bus.sent) == 5)
        first_bus.ack(2)
        await _until(lambda: ob.stats.messages == 3)
    bus = FakeBus()
    async with Outbox(DiskBuffer(path, max_messages=100, max_bytes=10**9), bus) as ob:
        assert ob.stats.recovered == 3
        await ob.put("new/0", b"x")
        await _until(lambda: len(bus.sent) == 4)
        assert [t for t, _, _ in bus.sent] == ["old/2", "old/3", "old/4", "new/0"]


async def test_outbox_counts_drops_and_reports_them(tmp_path: Path) -> None:
    drops: list[tuple[int, int]] = []
    bus = FakeBus()
    disk = DiskBuffer(None, max_messages=20, max_bytes=10**9)
    async with Outbox(disk, bus, window=5, on_drop=lambda t, n: drops.append((t, n))) as ob:
        for i in range(40):
            await ob.put(f"t/{i}", b"x")
        await _until(lambda: len(bus.sent) == 5)
        # 40 taken, the 5 oldest handed to the bus; 20 held at most: 20 dropped, exactly.
        assert ob.stats.dropped == 20
        assert sum(n for _, n in drops) == 20
        assert drops[-1][0] == 20
        while len(bus.history) < 20:
            bus.ack()
            await asyncio.sleep(0.05)
        bus.ack()
        await _until(lambda: ob.stats.messages == 0)
        # 0-4 were on the bus before the drops (and count against the bound: 20 held);
        # 5-24 were dropped; 25-39 follow, in order.
        assert bus.history == [f"t/{i}" for i in (*range(5), *range(25, 40))]
        assert ob.stats.committed == 40
        assert ob.stats.dropped + ob.stats.delivered == 40


async def test_a_command_result_can_wait_for_telemetry_to_reach_the_bus() -> None:
    bus = FakeBus()
    async with Outbox(DiskBuffer(None, max_messages=100, max_bytes=10**9), bus, window=2) as ob:
        ids = [await ob.put(f"t/{i}", b"x") for i in range(4)]
        assert await ob.wait_handed(ids[1], 2.0)
        assert not await ob.wait_handed(ids[3], 0.2)  # window full: not yet on the bus
        bus.ack()
        assert await ob.wait_handed(ids[3], 2.0)


async def test_a_failed_hand_over_is_retried_in_order(caplog: pytest.LogCaptureFixture) -> None:
    """The bus client raising (a bug, a closing client) loses nothing: the message is taken
    back and handed over again, still in order."""

    class FlakyBus(FakeBus):
        failures = 1

        async def publish(
            self,
            topic: str,
            payload: bytes,
            *,
            qos: int = 1,
            retain: bool = False,
            on_done: Callable[[bool], None] | None = None,
        ) -> None:
            if topic == "t/2" and self.failures:
                self.failures -= 1
                raise RuntimeError("publish broke")
            await super().publish(topic, payload, qos=qos, retain=retain, on_done=on_done)

    bus = FlakyBus()
    async with Outbox(DiskBuffer(None, max_messages=100, max_bytes=10**9), bus, window=10) as ob:
        for i in range(5):
            await ob.put(f"t/{i}", b"x")
        await _until(lambda: len(bus.history) == 5)
        assert bus.history == [f"t/{i}" for i in range(5)]
        bus.ack()
        await _until(lambda: ob.stats.messages == 0)
    assert "sending failed" in caplog.text


def test_a_place_that_cannot_hold_the_file_is_a_clear_error(tmp_path: Path) -> None:
    """A read-only or missing place is not 'corrupt': nothing is moved, the error says
    what to do."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    buffer = DiskBuffer(blocker / "b.db", max_messages=10, max_bytes=10_000)
    with pytest.raises(BufferOpenError, match=r"gateway\.buffer\.path"):
        buffer.open()
    assert blocker.read_text() == "a file where the directory should be"
