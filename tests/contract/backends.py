"""The backends the storage contract suite runs against: add one line to ``BACKENDS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gridpilot.config.models import RetentionConfig
from gridpilot.storage import ManagedStorage, SqliteStorage
from tests import postgres_server


class Backend(Protocol):
    def open(self, retention: RetentionConfig | None = None) -> ManagedStorage:
        """A not-yet-opened storage over the same underlying store on every call."""
        ...


@dataclass(frozen=True)
class SqliteBackend:
    directory: Path

    def open(self, retention: RetentionConfig | None = None) -> ManagedStorage:
        return SqliteStorage(self.directory / "contract.db", retention)


@dataclass(frozen=True)
class PostgresBackend:
    """A schema of its own in the machine's PostgreSQL (see ``tests.postgres_server``)."""

    schema: str

    @classmethod
    def create(cls, directory: Path) -> PostgresBackend:
        return cls(postgres_server.fresh_schema())

    def open(self, retention: RetentionConfig | None = None) -> ManagedStorage:
        return postgres_server.storage(self.schema, retention)


# name -> factory taking a fresh temporary directory. One line per backend, e.g.
# "influxdb": InfluxBackend.from_environment, once that backend exists.
BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": SqliteBackend,
    "postgresql": PostgresBackend.create,
}
