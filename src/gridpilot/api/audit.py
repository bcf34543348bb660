"""The API's audit log: who did what, when, and with what result.

Every command and every change made through the API (setpoints, controller enable/disable,
dry-run, overrides, tokens) is one JSON line: ``ts``, ``who`` (token id, name, role),
``action``, ``target``, ``params`` and ``result`` (``ok`` plus the answer or the error).
A refused attempt (role too low) is recorded too: it is what an investigator looks for.
The file is 0600 and rotated like the control journal (the same ``Journal``); writes happen
in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gridpilot.api.auth import Principal
from gridpilot.control.journal import Journal

__all__ = ["AuditLog"]

_ALL = 10**9


class AuditLog:
    def __init__(
        self,
        path: Path,
        max_bytes: int = 10_000_000,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._journal = Journal(path, max_bytes)
        self._clock = clock
        self._lock = asyncio.Lock()  # appends stay in order
        self._last_seq = 0

    def _next_seq(self) -> int:
        """Microseconds since the epoch, made strictly increasing: a page cursor that two
        entries of the same millisecond cannot share."""
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    @property
    def path(self) -> Path:
        return self._journal.path

    async def record(
        self,
        principal: Principal,
        action: str,
        target: str,
        params: Mapping[str, Any],
        *,
        ok: bool,
        result: Any = None,
    ) -> None:
        entry = {
            "seq": self._next_seq(),
            "ts": self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "who": {"token": principal.token_id, "name": principal.name, "role": principal.role},
            "action": action,
            "target": target,
            "params": dict(params),
            "ok": ok,
            "result": result,
        }
        async with self._lock:
            await asyncio.to_thread(self._journal.append, [entry])

    async def read(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` entries, newest first; with ``before`` (an entry's ``seq``) only
        older ones -- the next page. Both files (current and rotated) are read in a worker
        thread; together they are at most twice ``max_bytes``."""
        if before is None:
            entries = await asyncio.to_thread(self._journal.read, limit)
            return entries[::-1]
        entries = await asyncio.to_thread(self._journal.read, _ALL)
        older = [e for e in entries if isinstance(e.get("seq"), int) and e["seq"] < before]
        return older[::-1][:limit]
