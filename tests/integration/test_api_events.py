"""Events end to end: published on the site's events topic, stored by ingest, read through
the API in pages -- and still there after the API restarts."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from gridpilot.api.service import ApiService
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.ingest.service import IngestService
from gridpilot.model import Topic
from gridpilot.storage import open_storage
from tests.integration.test_api_support import (
    Auth,
    eventually,
    site_config,
    tcp_client,
    unique_site,
)

pytestmark = pytest.mark.integration


def event(i: int, ts: str, level: str = "info") -> bytes:
    return orjson.dumps({"ts": ts, "level": level, "source": "gateway/meter", "message": f"e{i}"})


async def test_events_are_stored_paged_and_survive_an_api_restart(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site = unique_site("events")
    config = site_config(site, tmp_path, port=0)
    # Ten events, three of them in one millisecond: a page boundary must not cut it.
    stamps = [f"2026-11-26T12:00:0{i}.000Z" for i in range(7)] + ["2026-11-26T12:00:08.000Z"] * 3
    async with open_storage(config.storage, tmp_path) as storage:
        async with (
            IngestService(config, mosquitto, storage) as ingest,
            BusClient(mosquitto, f"pub-{uuid.uuid4().hex[:8]}") as pub,
        ):
            await pub.wait_connected(10)
            for i, ts in enumerate(stamps):
                level = "alarm" if i % 4 == 0 else "info"
                await pub.publish(str(Topic.events(site)), event(i, ts, level), qos=1)

            async def stored() -> int:
                return ingest.stats.events_stored

            await eventually(stored, lambda n: n == len(stamps))

        for _ in range(2):  # the second time: a new API process reading the same file
            async with ApiService(config, mosquitto, storage, base_dir=tmp_path) as api:
                token = Auth.of_service(api.tokens, api.audit).viewer
                async with tcp_client(api.url, token) as http:
                    pages: list[list[dict[str, Any]]] = []
                    params: dict[str, Any] = {"limit": 2}
                    while True:
                        body = (await http.get("/api/v1/events", params=params)).json()
                        pages.append(body["events"])
                        if body["next_before"] is None:
                            break
                        params = {"limit": 2, "before": body["next_before"]}
                    alarms = (await http.get("/api/v1/events?level=alarm")).json()["events"]
            messages = [e["message"] for page in pages for e in page]
            assert sorted(messages) == sorted(f"e{i}" for i in range(10))
            assert len(messages) == 10  # nothing twice, nothing lost
            assert len(pages[0]) == 3  # the first page took the whole shared millisecond
            assert [e["message"] for e in alarms] == ["e8", "e4", "e0"]
