"""The storage contract every backend fulfils (SQLite now; InfluxDB and PostgreSQL later).

The contract suite in ``tests/contract/`` runs unchanged against every backend.

Semantics:
- ``write`` is idempotent on (site, device, point, ts_ms): a sample written twice is stored
  once and counted as a duplicate. The first value written for an identity wins.
- Rollups at 1 min, 15 min and 1 h (min/max/mean/last/count/sum) are kept current by
  ``write``; buckets are aligned to the epoch (UTC), so 15-min buckets are the billing blocks.
- ``history`` with ``every_ms`` aggregates server-side and reads the coarsest level whose
  bucket size divides ``every_ms`` and whose retention still covers ``start_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import NamedTuple, Protocol, Self, runtime_checkable

import orjson

from gridpilot.model import Sample, SeriesKey


class StorageError(Exception):
    """Root of storage errors."""


# The name is part of the shared interface (docs/dev/INTERFACES.md); kept as published.
class StorageUnavailable(StorageError):  # noqa: N818
    """The backend cannot be reached or written now; retry later."""


class Agg(StrEnum):
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    SUM = "sum"
    COUNT = "count"


class Level(StrEnum):
    RAW = "raw"
    M1 = "1m"
    M15 = "15m"
    H1 = "1h"

    @property
    def bucket_ms(self) -> int:
        return _BUCKET_MS[self]


_BUCKET_MS = {Level.RAW: 0, Level.M1: 60_000, Level.M15: 900_000, Level.H1: 3_600_000}


@dataclass(frozen=True, slots=True)
class WriteResult:
    written: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class LatestValue:
    series: SeriesKey
    ts_ms: int
    value: float


class HistoryPoint(NamedTuple):
    """One value of a history query: a raw sample or the aggregate of a bucket.

    ``ts_ms`` of an aggregate is the start of its bucket. A named tuple, not a dataclass:
    a history answer holds up to 100,000 of them, and a frozen dataclass costs ~1 µs each
    to make -- as much as reading the row (benchmarks/api).
    """

    ts_ms: int
    value: float


class HistoryColumns(NamedTuple):
    """A history answer as two columns of the same length: what a chart takes, and far
    cheaper than one object per value for long answers."""

    ts_ms: Sequence[int]
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class HistoryJson:
    """A history answer as two JSON arrays (``ts_ms`` and ``values``), ready to be spliced
    into an HTTP answer: what the API's ``format=columns`` sends. A backend that can render
    JSON itself (SQLite does, in C) skips a Python object per value; the others render
    their columns with :meth:`of`.

    SQLite renders REAL values with 15 significant digits, so a value whose binary double
    needs 16 or 17 to round-trip (``0.1 + 0.2``) reads back as its 15-digit rounding here;
    every value a meter or a payload gives with 15 digits or fewer reads back exactly."""

    count: int
    ts_ms: bytes
    values: bytes

    @classmethod
    def of(cls, columns: HistoryColumns) -> HistoryJson:
        return cls(len(columns.ts_ms), orjson.dumps(columns.ts_ms), orjson.dumps(columns.values))


@dataclass(frozen=True, slots=True)
class Event:
    """An alarm or notable change of a site (a device dropped out, an operator's override).

    Its identity is (site, ts_ms, source, message): storing it twice stores it once.
    """

    site: str
    ts_ms: int
    level: str
    """``info``, ``warning`` or ``alarm``."""
    source: str
    message: str


@runtime_checkable
class Storage(Protocol):
    """A time-series store. Implementations are async context managers."""

    async def write(self, samples: Sequence[Sample]) -> WriteResult:
        """Store samples idempotently and update rollups; commit before returning."""
        ...

    async def latest(self, site: str, device: str | None = None) -> list[LatestValue]:
        """Most recent value of every series of a site (or of one device)."""
        ...

    async def history(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> list[HistoryPoint]:
        """Values in [start_ms, end_ms): raw when ``every_ms`` is None, else aggregated
        into buckets of ``every_ms`` aligned to the epoch, oldest first."""
        ...

    async def history_columns(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> HistoryColumns:
        """What ``history`` answers, as columns."""
        ...

    async def history_json(
        self,
        series: SeriesKey,
        start_ms: int,
        end_ms: int,
        every_ms: int | None = None,
        agg: Agg = Agg.MEAN,
    ) -> HistoryJson:
        """What ``history_columns`` answers, as two JSON arrays (see :class:`HistoryJson`)."""
        ...

    async def write_events(self, events: Sequence[Event]) -> int:
        """Store events (each once); returns how many were new."""
        ...

    async def events(
        self, site: str, *, limit: int, before_ms: int | None = None, level: str | None = None
    ) -> list[Event]:
        """The site's newest events first, at most ``limit``, older than ``before_ms``."""
        ...

    async def series(self, site: str | None = None) -> list[SeriesKey]:
        """Every series stored (of a site), sorted."""
        ...

    async def apply_retention(self, now_ms: int) -> int:
        """Delete what each level's retention no longer covers; returns rows deleted."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ManagedStorage(Storage, Protocol):
    """A ``Storage`` that opens and closes itself as an async context manager.

    What ``open_storage`` returns. Kept apart from ``Storage`` so that code which only
    uses an open storage (and its test fakes) need not implement the context manager.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
