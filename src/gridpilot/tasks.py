"""Helpers for the asyncio tasks services own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel and wait for ``tasks``, cancelling again those that are still running.

    Python 3.11's ``asyncio.wait_for`` (used inside libraries such as pymodbus) can swallow
    a cancellation that arrives just as the awaited operation completes (gh-86296, fixed in
    3.12); a task cancelled once could then run on, and a service's stop would wait for it
    forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
