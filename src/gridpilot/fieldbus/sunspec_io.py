"""Reading SunSpec devices: find the marker, walk the model chain, read and decode models.

The async shell around ``sunspec``: every function takes ``read(address, count)``, which
reads ``count`` holding registers (a driver's ``read_block``, see :func:`holding_reader`),
so the same code serves Modbus TCP and RTU, the gateway and ``gridpilot devices scan``.

Discovery costs one 2-register read per base tried and per model header; polling reads the
whole chain (it is contiguous) in requests of at most 125 registers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from gridpilot.fieldbus.errors import DeviceRejected
from gridpilot.fieldbus.planner import MAX_READ_REGISTERS, ReadBlock
from gridpilot.fieldbus.sunspec import (
    BASE_ADDRESSES,
    HEADER_LENGTH,
    MAX_MODELS,
    OFF_BY_ONE_BASES,
    DecodedModel,
    ModelHeader,
    SunSpecError,
    decode_model,
    is_marker,
    parse_header,
)
from gridpilot.model import Table

__all__ = [
    "NotSunSpecError",
    "Read",
    "SunSpecMap",
    "discover",
    "find_base",
    "holding_reader",
    "read_models",
    "walk_chain",
]

Read = Callable[[int, int], Awaitable[list[int]]]
"""``read(address, count)``: ``count`` holding registers from ``address``."""


class NotSunSpecError(SunSpecError):
    """No ``SunS`` marker at any base address tried."""


@dataclass(frozen=True, slots=True)
class SunSpecMap:
    """Where a device's SunSpec registers are: the marker's address and the model chain."""

    base: int
    headers: tuple[ModelHeader, ...]

    @property
    def end(self) -> int:
        """First address after the last model (where the end marker is)."""
        return self.headers[-1].end if self.headers else self.base + HEADER_LENGTH

    def model_ids(self) -> list[int]:
        return [h.id for h in self.headers]

    def blocks(self, model_ids: Iterable[int] | None = None) -> list[ReadBlock]:
        """Reads that cover the models (all, or those of ``model_ids``): contiguous models
        are read together, at most 125 registers a request."""
        wanted = None if model_ids is None else frozenset(model_ids)
        spans: list[tuple[int, int]] = []
        for header in self.headers:
            if wanted is not None and header.id not in wanted:
                continue
            if spans and spans[-1][1] == header.address:
                spans[-1] = (spans[-1][0], header.end)
            else:
                spans.append((header.address, header.end))
        blocks: list[ReadBlock] = []
        for start, end in spans:
            for address in range(start, end, MAX_READ_REGISTERS):
                count = min(MAX_READ_REGISTERS, end - address)
                blocks.append(ReadBlock(Table.HOLDING, address, count, ()))
        return blocks

    def decode(
        self, words_by_block: Sequence[tuple[ReadBlock, Sequence[int]]]
    ) -> list[DecodedModel]:
        """Decode every model whose registers the blocks cover, in chain order."""
        image: dict[int, int] = {}
        for block, words in words_by_block:
            if len(words) != block.count:
                raise SunSpecError(
                    f"read of {block.address}+{block.count} returned {len(words)} registers"
                )
            image.update(zip(range(block.address, block.end), words, strict=True))
        models: list[DecodedModel] = []
        for header in self.headers:
            if header.address not in image or header.end - 1 not in image:
                continue
            words = [image[a] for a in range(header.address, header.end)]
            models.append(decode_model(header, words))
        return models


def holding_reader(read_block: Callable[[ReadBlock], Awaitable[list[int]]]) -> Read:
    """A ``Read`` from a driver's ``read_block`` (``ModbusTcpDevice``, ``ModbusRtuDevice``)."""

    async def read(address: int, count: int) -> list[int]:
        return await read_block(ReadBlock(Table.HOLDING, address, count, ()))

    return read


async def find_base(read: Read, bases: Sequence[int] | None = None) -> int:
    """The address of the ``SunS`` marker. Tries ``bases`` (default: 40000, 50000, 0, then
    their one-based variants 40001, 50001, 1).

    An exception reply (illegal address) means "not here"; transport errors (timeout,
    refused) are raised: the device is not answering at all. Raises ``NotSunSpecError``
    when no base holds the marker.
    """
    candidates = list(bases) if bases is not None else [*BASE_ADDRESSES, *OFF_BY_ONE_BASES]
    tried: list[str] = []
    for base in candidates:
        try:
            words = await read(base, 2)
        except DeviceRejected as exc:
            if exc.exception_code in (10, 11):
                raise  # a Modbus gateway with nothing behind this unit id
            tried.append(f"{base} (exception {exc.exception_code})")
            continue
        if is_marker(words):
            return base
        tried.append(f"{base} ({' '.join(f'0x{w:04X}' for w in words)})")
    raise NotSunSpecError(f"no SunS marker (0x5375 0x6E53) at {', '.join(tried)}")


async def walk_chain(read: Read, base: int, max_models: int = MAX_MODELS) -> SunSpecMap:
    """Follow the model chain from the marker at ``base`` to the end marker."""
    headers: list[ModelHeader] = []
    address = base + HEADER_LENGTH
    for _ in range(max_models):
        if address + HEADER_LENGTH > 0x10000:
            raise SunSpecError(f"model chain from {base} runs past address 65535")
        try:
            words = await read(address, HEADER_LENGTH)
        except DeviceRejected as exc:
            # Some devices end the map without an end marker: the next read is refused.
            if headers:
                break
            raise SunSpecError(f"model chain at {base}: header at {address} refused") from exc
        header = parse_header(address, words)
        if header is None:
            break
        headers.append(header)
        address = header.end
    else:
        raise SunSpecError(f"model chain from {base}: no end marker after {max_models} models")
    return SunSpecMap(base, tuple(headers))


async def discover(read: Read, bases: Sequence[int] | None = None) -> SunSpecMap:
    """Find the marker and walk the model chain (see ``find_base`` and ``walk_chain``)."""
    return await walk_chain(read, await find_base(read, bases))


async def read_models(
    read: Read, sunspec_map: SunSpecMap, model_ids: Iterable[int] | None = None
) -> list[DecodedModel]:
    """Read and decode the models (all, or those of ``model_ids``)."""
    results: list[tuple[ReadBlock, Sequence[int]]] = []
    for block in sunspec_map.blocks(model_ids):
        results.append((block, await read(block.address, block.count)))
    return sunspec_map.decode(results)
