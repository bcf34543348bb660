"""Contract: events of a site are stored once each, read newest first in pages, filtered by
level, kept apart per site, and dropped by retention."""

from __future__ import annotations

from datetime import timedelta

from gridpilot.config.models import RetentionConfig
from gridpilot.storage import ManagedStorage
from gridpilot.storage.base import Event
from tests.contract.backends import Backend
from tests.contract.storage_reference import DAY, MINUTE, T0


def event(ts_ms: int, message: str, level: str = "info", site: str = "site-a") -> Event:
    return Event(site, ts_ms, level, "gateway/meter", message)


async def test_each_event_is_stored_once(storage: ManagedStorage) -> None:
    first = [event(T0, "meter offline", "alarm"), event(T0 + MINUTE, "meter is online again")]
    assert await storage.write_events(first) == 2
    # a redelivery, and an event that differs only in its message
    again = [*first, event(T0, "meter offline: timeout", "alarm")]
    assert await storage.write_events(again) == 1
    assert await storage.write_events([]) == 0
    stored = await storage.events("site-a", limit=10)
    assert [e.message for e in stored] == [
        "meter is online again",
        "meter offline",
        "meter offline: timeout",
    ]


async def test_pages_newest_first_and_levels(storage: ManagedStorage) -> None:
    written = [
        event(T0 + i * MINUTE, f"e{i}", "alarm" if i % 3 == 0 else "info") for i in range(10)
    ]
    await storage.write_events(written)
    await storage.write_events([event(T0, "elsewhere", site="site-b")])
    page = await storage.events("site-a", limit=4)
    assert [e.message for e in page] == ["e9", "e8", "e7", "e6"]
    rest = await storage.events("site-a", limit=100, before_ms=page[-1].ts_ms)
    assert [e.message for e in rest] == ["e5", "e4", "e3", "e2", "e1", "e0"]
    alarms = await storage.events("site-a", limit=100, level="alarm")
    assert [e.message for e in alarms] == ["e9", "e6", "e3", "e0"]
    assert all(e.site == "site-a" for e in rest)
    assert [e.message for e in await storage.events("site-b", limit=10)] == ["elsewhere"]
    assert await storage.events("nowhere", limit=10) == []


async def test_retention_drops_old_events_only(backend: Backend) -> None:
    retention = RetentionConfig(events=timedelta(days=30))
    now = T0 + 100 * DAY
    async with backend.open(retention) as storage:
        await storage.write_events(
            [event(now - 31 * DAY, "old"), event(now - 29 * DAY, "recent"), event(now, "now")]
        )
        assert await storage.apply_retention(now) >= 1
        kept = await storage.events("site-a", limit=10)
    assert [e.message for e in kept] == ["now", "recent"]


async def test_events_survive_reopening(backend: Backend) -> None:
    async with backend.open(RetentionConfig()) as storage:
        await storage.write_events([event(T0, "before the restart", "warning")])
    async with backend.open(RetentionConfig()) as storage:
        (kept,) = await storage.events("site-a", limit=10)
    assert kept == event(T0, "before the restart", "warning")
