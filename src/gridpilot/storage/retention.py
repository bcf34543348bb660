"""Runs the storage's retention on a timer, so a site's database stops growing by itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Self

from gridpilot.model import now_ms
from gridpilot.storage.base import Storage, StorageError

log = logging.getLogger("gridpilot.storage.retention")


class RetentionService:
    """Call ``storage.apply_retention(now)`` at start and then every ``interval_s``.

    A failed pass is logged and tried again at the next interval: retention is housekeeping,
    never a reason to stop ingesting.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        interval_s: float = 3600.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._storage = storage
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.deleted = 0

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="gridpilot-retention")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                deleted = await self._storage.apply_retention(self._clock())
            except StorageError as exc:
                log.warning("retention pass failed: %s; next try in %g s", exc, self._interval_s)
            else:
                self.passes += 1
                self.deleted += deleted
                if deleted:
                    log.info("retention deleted %d rows", deleted)
            await asyncio.sleep(self._interval_s)
