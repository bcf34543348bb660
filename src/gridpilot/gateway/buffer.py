"""The gateway's on-disk buffer: telemetry is committed here before it is sent, deleted after
the broker's PUBACK, and replayed in order after a broker outage or a gateway crash.

Two layers:

* :class:`DiskBuffer` -- synchronous SQLite (WAL): an append-only table whose
  ``AUTOINCREMENT`` id is the order of the messages. Bounded by messages and bytes; when a
  bound is reached the oldest messages not yet handed to the bus are deleted and counted
  (the count survives restarts, in the ``meta`` table). A file SQLite cannot read is moved
  aside (``*.corrupt-<time>``) and a fresh buffer started, with an error in the log, rather
  than the gateway failing to start.
* :class:`Outbox` -- the asyncio side. ``put`` returns once the message is committed (the
  moment the gateway has *taken* a poll's readings: a crash after it loses nothing); a
  sender task reads the buffer in id order and hands at most ``window`` messages at a time
  to the bus client (QoS 1), deleting each when its PUBACK comes. All SQLite calls run on
  one dedicated thread, never on the event loop.

Why write through the buffer even while the broker is up: a message is deleted only after
its PUBACK, so a ``kill -9`` of the gateway at any moment leaves every message it had
committed either acknowledged by the broker or still in the file; the restarted gateway
sends the rest. A message whose PUBACK the crash prevented is sent again (at-least-once);
it carries its original ``ts`` and ``seq``, and ingest's storage is idempotent on
(series, ts). Order is one FIFO for the whole gateway, so a device's live readings always
follow its buffered ones ("replay first").

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash of the process (what is
committed is in the operating system's cache); a power cut may lose the last commits since
the last checkpoint -- set the data partition's write cache accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "topic TEXT NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
_BUSY_TIMEOUT_MS = 2_000


class GatewayBufferError(Exception):
    """The buffer cannot be used here: the gateway cannot start (reported in one line)."""


class BufferInUseError(GatewayBufferError):
    """Another process holds the buffer file (a second gateway with the same buffer path)."""


class BufferOpenError(GatewayBufferError):
    """The buffer file cannot be created or opened (a missing or read-only directory)."""


class BufferWriteError(RuntimeError):
    """A message could not be committed to the buffer (disk full, I/O error): not taken."""


@dataclass(frozen=True, slots=True)
class Buffered:
    """One message in the buffer."""

    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_id: int
    last_id: int
    dropped: int
    """Messages deleted unsent by this append to keep within the bounds."""


class DiskBuffer:
    """An ordered, bounded queue of MQTT messages in one SQLite file (or in memory when
    ``path`` is None: the same code, for tests and services run without a data directory).

    Not thread-safe: one thread uses it (the :class:`Outbox`'s)."""

    def __init__(self, path: Path | None, *, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be at least 1")
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        self.dropped = 0
        """Messages dropped unsent since the buffer file was created (kept in the file)."""
        self.corrupt_moved_to: Path | None = None
        """Where an unreadable buffer file was moved at open (None: it was readable)."""
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open (creating the file). An unreadable file is moved aside and replaced by a
        fresh one. Raises ``BufferInUseError`` when another process holds it and
        ``BufferOpenError`` when it cannot be created or opened."""
        try:
            self._open_once()
        except sqlite3.OperationalError as exc:
            # Not the file's content: the lock, or the place (permissions, missing directory).
            self._close_quietly()
            if "locked" in str(exc):
                raise BufferInUseError(
                    f"gateway buffer {self.path} is locked by another process: is a second "
                    "gateway running with the same gateway.buffer.path? Stop it, or give each "
                    "gateway its own buffer file"
                ) from exc
            raise BufferOpenError(
                f"gateway buffer {self.path} cannot be opened ({exc}): the directory must "
                "exist and be writable by this user; set gateway.buffer.path to a place in "
                "the data directory (e.g. /var/lib/gridpilot/gateway.buffer.db)"
            ) from exc
        except sqlite3.DatabaseError as exc:  # not a database, malformed, quick_check failed
            if self.path is None:
                raise
            self._close_quietly()
            self.corrupt_moved_to = self._move_aside(exc)
            self._open_once()

    def _open_once(self) -> None:
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise sqlite3.OperationalError(f"cannot create {self.path.parent}: {exc}") from exc
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._conn = conn
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # EXCLUSIVE: one gateway per file; a second one fails at open with a clear error.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        if self.path is not None:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode WAL refused (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, not at first write
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
        row = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        self.messages, self.bytes = int(row[0]), int(row[1])
        dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        self.dropped = int(dropped[0]) if dropped else 0

    def _move_aside(self, exc: BaseException) -> Path:
        if self.path is None:
            raise RuntimeError("an in-memory buffer cannot be moved aside")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.replace(Path(f"{moved}{suffix}"))
        log.error(
            "gateway buffer %s is unreadable (%s): moved to %s and started a fresh buffer; "
            "telemetry it held was not sent (inspect or delete the moved file)",
            self.path,
            exc,
            moved,
        )
        return moved

    def reopen_fresh(self, exc: BaseException) -> int:
        """The file went bad at run time: move it aside, start a fresh one; its last id."""
        self._close_quietly()
        self.corrupt_moved_to = self._move_aside(exc)
        self._open_once()
        return self.last_id

    @property
    def where(self) -> str:
        """The file, for messages (``:memory:`` for an in-memory buffer)."""
        return ":memory:" if self.path is None else str(self.path)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _close_quietly(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.close()
        self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("DiskBuffer is not open")
        return self._conn

    # ------------------------------------------------------------------ queue

    @property
    def last_id(self) -> int:
        """The highest id ever given (ids are never reused): messages ever appended."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def first_id(self) -> int | None:
        """The oldest message's id (None when empty)."""
        row = self._db.execute("SELECT min(id) FROM outbox").fetchone()
        return None if row[0] is None else int(row[0])

    def append(
        self,
        items: Sequence[tuple[str, bytes]],
        *,
        delete: Iterable[int] = (),
        protect_through: int = 0,
    ) -> AppendResult:
        """Commit ``items`` in order and delete the ids in ``delete`` (delivered), in one
        transaction; then drop the oldest messages with id > ``protect_through`` (those are
        not yet handed to the bus) until both bounds hold."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._delete(delete)
            first = last = 0
            for topic, payload in items:
                size = len(topic) + len(payload)
                cursor = db.execute(
                    "INSERT INTO outbox (topic, payload, size) VALUES (?, ?, ?)",
                    (topic, payload, size),
                )
                last = int(cursor.lastrowid or 0)
                first = first or last
                self.messages += 1
                self.bytes += size
            dropped = self._enforce_bounds(protect_through)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._recount()
            raise
        return AppendResult(first, last, dropped)

    def delete(self, ids: Iterable[int]) -> None:
        """Forget delivered messages (ids already gone are ignored)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._delete(ids)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._recount()
            raise

    def read(self, after_id: int, limit: int) -> list[Buffered]:
        """Up to ``limit`` messages with id > ``after_id``, oldest first."""
        rows = self._db.execute(
            "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [Buffered(int(i), str(t), bytes(p)) for i, t, p in rows]

    def _delete(self, ids: Iterable[int]) -> None:
        db = self._db
        batch = list(ids)
        for start in range(0, len(batch), 500):
            chunk = batch[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = db.execute(
                f"SELECT count(*), coalesce(sum(size), 0) FROM outbox WHERE id IN ({marks})",  # noqa: S608 -- placeholders only
                chunk,
            ).fetchone()
            db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
            self.messages -= int(row[0])
            self.bytes -= int(row[1])

    def _enforce_bounds(self, protect_through: int) -> int:
        if self.messages <= self.max_messages and self.bytes <= self.max_bytes:
            return 0
        db = self._db
        excess_messages = self.messages - self.max_messages
        excess_bytes = self.bytes - self.max_bytes
        cutoff = None
        count = freed = 0
        rows = db.execute(
            "SELECT id, size FROM outbox WHERE id > ? ORDER BY id", (protect_through,)
        )
        for ident, size in rows:
            if count >= excess_messages and freed >= excess_bytes:
                break
            cutoff = int(ident)
            count += 1
            freed += int(size)
        rows.close()
        if cutoff is None:
            return 0
        db.execute("DELETE FROM outbox WHERE id > ? AND id <= ?", (protect_through, cutoff))
        self.messages -= count
        self.bytes -= freed
        self.dropped += count
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self.dropped,),
        )
        return count

    def _recount(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
            self.messages, self.bytes = int(row[0]), int(row[1])


# ---------------------------------------------------------------------------- asyncio side


class _Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: Callable[[bool], None] | None = None,
    ) -> None: ...


@dataclass(slots=True)
class OutboxStats:
    """What the gateway state and ``/metrics`` show of the buffer."""

    messages: int = 0
    """Messages in the buffer now (sent and awaiting PUBACK included)."""
    bytes: int = 0
    dropped: int = 0
    """Dropped unsent because a bound was reached, since the buffer file was created."""
    committed: int = 0
    """Messages committed by this process."""
    delivered: int = 0
    """Messages the broker acknowledged (this process)."""
    undeliverable: int = 0
    """Refused by the broker or too large for it: deleted unsent (this process)."""
    recovered: int = 0
    """Messages found in the buffer at start (left by the previous run)."""
    write_failed: int = 0
    """Messages that could not be committed (disk full, I/O error): not taken, lost."""
    peak_backlog: int = 0
    """Most messages waiting on disk for the bus at once (this process)."""

    def as_dict(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "committed": self.committed,
            "delivered": self.delivered,
            "undeliverable": self.undeliverable,
            "recovered": self.recovered,
            "write_failed": self.write_failed,
            "peak_backlog": self.peak_backlog,
        }


class Outbox:
    """Telemetry through the :class:`DiskBuffer` to the bus. ``async with Outbox(...)``.

    ``window``: messages handed to the bus client and not yet acknowledged, at most (what
    sits in memory; the rest waits on disk). ``on_drop(total_dropped, newly)`` is called
    when a bound made messages drop (the gateway publishes an alarm)."""

    def __init__(
        self,
        buffer: DiskBuffer,
        bus: _Bus,
        *,
        window: int = 500,
        on_drop: Callable[[int, int], None] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.buffer = buffer
        self.stats = OutboxStats()
        self._bus = bus
        self._window = window
        self._on_drop = on_drop
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-buffer")
        self._pending: deque[tuple[str, bytes, asyncio.Future[int]]] = deque()
        self._uncommitted: set[asyncio.Future[int]] = set()
        self._acked: list[int] = []
        self._next_id = 1  # the first id not yet taken by the sender
        self._published_through = 0  # the last id the sender gave the bus client
        self._handed = 0  # taken by the sender, fate not known yet
        self._last_committed = 0
        self._wake_writer = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self._handed_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._backlog_logged = False
        self._drops_logged_at = 1
        self._episode_peak = 0

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, *args)

    async def __aenter__(self) -> Outbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            await self._call(self.buffer.open)
            first = await self._call(self.buffer.first_id)
            self._last_committed = await self._call(lambda: self.buffer.last_id)
        except BaseException:
            self._thread.shutdown(wait=False)
            raise
        self._next_id = first if first is not None else self._last_committed + 1
        self._sync_stats()
        self.stats.recovered = self.buffer.messages
        if self.buffer.messages:
            log.info(
                "gateway buffer %s: %d message(s) left by the previous run; sending them first",
                self.buffer.where,
                self.buffer.messages,
            )
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="gateway-buffer:write"),
            asyncio.create_task(self._send_loop(), name="gateway-buffer:send"),
        ]

    async def stop_sending(self) -> None:
        """Hand nothing more to the bus (before the bus client closes; what it holds
        may still be acknowledged, and ``close`` then deletes it)."""
        if self._tasks:
            sender = self._tasks[-1]
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def close(self) -> None:
        """Commit what is pending and the deletions of what was acknowledged, then stop.
        Messages still unacknowledged stay in the file for the next run."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._handed_changed.set()
        try:
            await self._flush_once()
        except sqlite3.Error:
            log.exception("gateway buffer %s: final commit failed", self.buffer.where)
        for _, _, fut in self._pending:
            if not fut.done():
                fut.set_exception(RuntimeError("gateway buffer closed"))
        self._pending.clear()
        await self._call(self.buffer.close)
        self._thread.shutdown(wait=True)

    # ------------------------------------------------------------------ producers

    async def put(self, topic: str, payload: bytes) -> int:
        """Commit one message (QoS 1, not retained) for sending; returns its id once it is
        on disk. Concurrent puts share one transaction."""
        if self._closed:
            raise RuntimeError("gateway buffer closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, payload, fut))
        self._uncommitted.add(fut)
        fut.add_done_callback(self._uncommitted.discard)
        self._wake_writer.set()
        # shield: a poll cancelled while waiting (the gateway stopping) leaves its message
        # to be committed all the same; it was read, and is sent now or on the next start.
        return await asyncio.shield(fut)

    async def settle(self, timeout_s: float) -> None:
        """Until every message put so far is committed (or failed), at most ``timeout_s``."""
        waiting = set(self._uncommitted)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)

    async def wait_handed(self, message_id: int, timeout_s: float) -> bool:
        """Until message ``message_id`` was handed to the bus client (so what is published
        directly on the bus afterwards follows it); False after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._published_through < message_id and not self._closed:
                    self._handed_changed.clear()
                    await self._handed_changed.wait()
        except TimeoutError:
            return False
        return True

    @property
    def last_committed(self) -> int:
        """Id of the last message committed."""
        return self._last_committed

    @property
    def backlog(self) -> int:
        """Messages committed and not yet handed to the bus."""
        return max(0, self._last_committed - self._next_id + 1)

    # ------------------------------------------------------------------ tasks

    async def _write_loop(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            try:
                await self._flush_once()
            except sqlite3.Error as exc:
                await self._on_write_error(exc)
            except Exception:  # a bug must not stop the buffer for good: log, go on
                log.exception("gateway buffer %s: commit failed", self.buffer.where)
                await asyncio.sleep(1.0)

    async def _send_loop(self) -> None:
        while True:
            try:
                await self._send()
            except Exception:  # as in _write_loop; the messages stay on disk meanwhile
                log.exception("gateway buffer %s: sending failed", self.buffer.where)
                await asyncio.sleep(1.0)

    async def _flush_once(self) -> None:
        batch = list(self._pending)
        self._pending.clear()
        acked, self._acked = self._acked, []
        if not batch and not acked:
            return
        items = [(topic, payload) for topic, payload, _ in batch]
        protect = self._next_id - 1
        try:
            result = await self._call(
                lambda: self.buffer.append(items, delete=acked, protect_through=protect)
            )
        except BaseException as exc:
            self._acked.extend(acked)  # deletions retried with the next commit
            self.stats.write_failed += len(batch)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(
                        BufferWriteError(f"gateway buffer {self.buffer.where}: {exc}")
                    )
            raise
        if batch:
            self._last_committed = result.last_id
            self.stats.committed += len(batch)
            for offset, (_, _, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(result.first_id + offset)
        self._sync_stats()
        self._note_backlog()
        if result.dropped and self.buffer.dropped >= self._drops_logged_at:
            # Logged at the 1st, 10th, 100th... drop: a long outage drops at every commit.
            while self._drops_logged_at <= self.buffer.dropped:
                self._drops_logged_at *= 10
            log.warning(
                "gateway buffer %s full (%d messages, %d bytes; bounds %d / %d): dropped the "
                "%d oldest unsent message(s), %d in all",
                self.buffer.where,
                self.buffer.messages,
                self.buffer.bytes,
                self.buffer.max_messages,
                self.buffer.max_bytes,
                result.dropped,
                self.buffer.dropped,
            )
        if result.dropped and self._on_drop is not None:
            self._on_drop(self.buffer.dropped, result.dropped)
        if self._next_id <= self._last_committed:
            self._wake_sender.set()

    async def _on_write_error(self, exc: sqlite3.Error) -> None:
        # A full disk, an I/O error: the messages of this batch were not taken (their put
        # raised). A file gone bad at run time is replaced like at open.
        log.error("gateway buffer %s: write failed: %s", self.buffer.where, exc)
        if not isinstance(exc, sqlite3.OperationalError) and self.buffer.path is not None:
            last = await self._call(self.buffer.reopen_fresh, exc)
            self._next_id = last + 1
            self._last_committed = last
            self._sync_stats()
        await asyncio.sleep(0.5)

    def _sync_stats(self) -> None:
        self.stats.messages = self.buffer.messages
        self.stats.bytes = self.buffer.bytes
        self.stats.dropped = self.buffer.dropped

    async def _send(self) -> None:
        while True:
            room = self._window - self._handed
            if room <= 0 or self._next_id > self._last_committed:
                self._wake_sender.clear()
                await self._wake_sender.wait()
                continue
            rows = await self._call(self.buffer.read, self._next_id - 1, room)
            if not rows:
                # Dropped by a bound meanwhile: everything up to the last commit is gone.
                self._next_id = self._last_committed + 1
                self._published_through = self._last_committed
                self._handed_changed.set()
                continue
            # Taken at once, before the publishes (which may wait for room on the bus):
            # the bound never drops a message the sender already holds.
            self._next_id = rows[-1].id + 1
            self._handed += len(rows)
            self._note_backlog()
            for index, row in enumerate(rows):
                try:
                    await self._bus.publish(
                        row.topic, row.payload, qos=1, on_done=self._done_callback(row.id)
                    )
                except BaseException:
                    # Not given to the bus: taken back, sent again by the next attempt.
                    self._handed -= len(rows) - index
                    self._next_id = row.id
                    raise
                self._published_through = row.id
                self._handed_changed.set()

    def _note_backlog(self) -> None:
        backlog = self.backlog + self._handed
        if backlog > self.stats.peak_backlog:
            self.stats.peak_backlog = backlog
            self._episode_peak = max(self._episode_peak, backlog)
        if backlog > self._window and not self._backlog_logged:
            self._backlog_logged = True
            log.info(
                "gateway buffer %s: %d message(s) wait on disk (broker unreachable or slow); "
                "they are sent in order",
                self.buffer.where,
                backlog,
            )
        elif self.backlog == 0 and self._backlog_logged:
            self._backlog_logged = False
            log.info(
                "gateway buffer %s: backlog sent (%d message(s) had waited at most)",
                self.buffer.where,
                self._episode_peak,
            )
            self._episode_peak = 0

    def _done_callback(self, message_id: int) -> Callable[[bool], None]:
        def done(delivered: bool) -> None:
            self._handed -= 1
            if delivered:
                self.stats.delivered += 1
            else:
                self.stats.undeliverable += 1
            self._acked.append(message_id)
            self._wake_writer.set()
            self._wake_sender.set()

        return done


__all__ = [
    "AppendResult",
    "BufferInUseError",
    "BufferOpenError",
    "BufferWriteError",
    "Buffered",
    "DiskBuffer",
    "GatewayBufferError",
    "Outbox",
    "OutboxStats",
]
