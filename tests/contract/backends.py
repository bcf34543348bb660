"""The backends the storage contract suite runs against: add one line to ``BACKENDS``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gridpilot.config.models import RetentionConfig
from gridpilot.storage import ManagedStorage, SqliteStorage
from gridpilot.storage.influx import InfluxStorage
from tests import postgres_server
from tests.influxdb_server import shared_influxdb


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
class InfluxBackend:
    """A database of its own on the session's InfluxDB (started on first use)."""

    url: str
    database: str

    @classmethod
    def create(cls, directory: Path) -> InfluxBackend:
        server = shared_influxdb()
        return cls(server.url, server.new_database_name(directory.name))

    def open(self, retention: RetentionConfig | None = None) -> ManagedStorage:
        return InfluxStorage(self.url, self.database, retention)


@dataclass(frozen=True)
class PostgresBackend:
    """A schema of its own in the machine's PostgreSQL (see ``tests.postgres_server``)."""

    schema: str

    @classmethod
    def create(cls, directory: Path) -> PostgresBackend:
        return cls(postgres_server.fresh_schema())

    def open(self, retention: RetentionConfig | None = None) -> ManagedStorage:
        return postgres_server.storage(self.schema, retention)


# name -> factory taking a fresh temporary directory; one line per backend. The server
# backends give each test a database (InfluxDB) or schema (PostgreSQL) of its own.
BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": SqliteBackend,
    "influxdb": InfluxBackend.create,
    "postgresql": PostgresBackend.create,
}
