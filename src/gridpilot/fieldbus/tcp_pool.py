"""Several Modbus TCP connections to one device, for a poll's reads to run side by side.

pymodbus keeps one request in flight per client (its transaction lock), so a device that
accepts N clients is read N blocks at a time through N connections: each read takes an idle
connection and gives it back. Each connection keeps its own timeout, retries and reconnect
(``ModbusTcpDevice``); a write goes through whichever connection is idle first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.fieldbus.modbus_tcp import ModbusTcpDevice
from gridpilot.fieldbus.planner import ReadBlock

__all__ = ["ModbusTcpPool"]

T = TypeVar("T")


class ModbusTcpPool:
    """``ModbusTcpDevice``'s interface over ``members``, one request per member at a time."""

    def __init__(self, members: Sequence[ModbusTcpDevice]) -> None:
        if not members:
            raise ValueError("a connection pool needs at least one connection")
        self.members = tuple(members)
        self._idle: asyncio.Queue[ModbusTcpDevice] = asyncio.Queue(maxsize=len(self.members))
        for member in self.members:
            self._idle.put_nowait(member)

    @property
    def size(self) -> int:
        return len(self.members)

    def __str__(self) -> str:
        return f"{self.members[0]} ({self.size} connections)"

    @property
    def error_counts(self) -> Mapping[str, int]:
        """Failed attempts by kind, over every connection."""
        total: dict[str, int] = {}
        for member in self.members:
            for kind, n in member.error_counts.items():
                total[kind] = total.get(kind, 0) + n
        return total

    async def read_block(self, block: ReadBlock) -> list[int]:
        return await self._on_idle(lambda member: member.read_block(block))

    async def write(self, spec: RegisterSpec, words: Sequence[int]) -> None:
        await self._on_idle(lambda member: member.write(spec, words))

    async def close(self) -> None:
        for member in self.members:
            await member.close()

    async def _on_idle(self, call: Callable[[ModbusTcpDevice], Awaitable[T]]) -> T:
        member = await self._idle.get()
        try:
            return await call(member)
        finally:
            self._idle.put_nowait(member)
