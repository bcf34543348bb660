"""The retention timer deletes what the configured retention no longer covers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from gridpilot.config import RetentionConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage.retention import RetentionService
from gridpilot.storage.sqlite import SqliteStorage

NOW = 1_795_694_400_000
DAY = 86_400_000


async def test_old_raw_samples_go_and_recent_ones_stay(tmp_path: Path) -> None:
    retention = RetentionConfig(raw=timedelta(days=7))
    async with SqliteStorage(tmp_path / "r.db", retention) as storage:
        await storage.write(
            [Sample("s", "m", "p_w", NOW - 30 * DAY, 1.0), Sample("s", "m", "p_w", NOW - DAY, 2.0)]
        )
        async with RetentionService(storage, interval_s=0.05, clock=lambda: NOW) as service:
            async with asyncio.timeout(5):
                while service.passes < 2:  # noqa: ASYNC110 -- the service has no event to await
                    await asyncio.sleep(0.01)
        rows = await storage.history(SeriesKey("s", "m", "p_w"), NOW - 60 * DAY, NOW)
    assert [r.value for r in rows] == [2.0]
    assert service.deleted >= 1
