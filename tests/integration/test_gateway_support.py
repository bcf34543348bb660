"""Support of the gateway integration tests (no tests here): a bus observer that records
every message. Named test_gateway_* only to live with the tests it serves."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gridpilot.bus.client import BrokerAddress, BusClient

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass(frozen=True)
class Record:
    index: int
    at: float
    """Loop time of arrival."""
    topic: str
    payload: bytes
    retain: bool

    @property
    def json(self) -> Any:
        return orjson.loads(self.payload)

    @property
    def device(self) -> str:
        return self.topic.split("/")[3]

    @property
    def kind(self) -> str:
        return "/".join(self.topic.split("/")[4:])


class Observer:
    """Records everything under ``gridpilot/v1/{site}/#``, in arrival order."""

    def __init__(self, client: BusClient) -> None:
        self.client = client
        self.records: list[Record] = []
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async for message in self.client.messages():
            async with self._changed:
                self.records.append(
                    Record(
                        len(self.records),
                        loop.time(),
                        message.topic,
                        message.payload,
                        message.retain,
                    )
                )
                self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[Record], bool], within: float = 5.0, after: int = -1
    ) -> Record:
        """The first record (with index > ``after``) matching ``predicate``."""
        checked = after + 1
        async with asyncio.timeout(within), self._changed:
            while True:
                for record in self.records[checked:]:
                    if predicate(record):
                        return record
                checked = max(checked, len(self.records))
                await self._changed.wait()

    def of(self, device: str, kind: str, since: float = -1.0) -> list[Record]:
        return [r for r in self.records if r.device == device and r.kind == kind and r.at >= since]

    async def command(self, site: str, device: str, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        await self.client.publish(f"gridpilot/v1/{site}/{device}/command", payload, qos=1)


@contextlib.asynccontextmanager
async def observing(broker: BrokerAddress, site: str, name: str) -> AsyncIterator[Observer]:
    async with BusClient(broker, name) as client:
        await client.wait_connected(10)
        await client.subscribe(f"gridpilot/v1/{site}/#", qos=1)
        observer = Observer(client)
        task = asyncio.create_task(observer.run())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
