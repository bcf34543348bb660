"""Time-series storage: the ``Storage`` protocol and its backends.

The composition root opens one storage per process and hands it to the services::

    async with open_storage(config.storage, config_dir) as storage:
        ...
"""

from __future__ import annotations

from pathlib import Path

from gridpilot.config.models import StorageConfig, site_path
from gridpilot.storage.base import (
    Agg,
    HistoryPoint,
    LatestValue,
    Level,
    ManagedStorage,
    Storage,
    StorageError,
    StorageUnavailable,
    WriteResult,
)
from gridpilot.storage.sqlite import SqliteStorage

__all__ = [
    "Agg",
    "HistoryPoint",
    "LatestValue",
    "Level",
    "ManagedStorage",
    "SqliteStorage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "WriteResult",
    "open_storage",
]


def open_storage(config: StorageConfig, base_dir: Path) -> ManagedStorage:
    """The configured backend, not yet opened: use it with ``async with``.

    A relative ``config.path`` is taken relative to ``base_dir`` (the directory of the
    configuration file); missing parent directories are created. The database file itself
    is created on open with mode 0600. For a server (InfluxDB, PostgreSQL) the password or
    token is read here (StorageError when its variable or file is missing or readable by
    others); nothing connects before the storage is opened.
    """
    if config.backend == "postgresql":
        return _open_postgres(config, base_dir)
    if config.backend == "influxdb":
        return _open_influxdb(config, base_dir)
    path = site_path(base_dir, config.path.expanduser())
    path.parent.mkdir(parents=True, exist_ok=True)
    # Other backends branch above.
    return SqliteStorage(path, config.retention)


def _open_postgres(config: StorageConfig, base_dir: Path) -> ManagedStorage:
    """The PostgreSQL backend; its password is read here (StorageError when its variable or
    file is missing or readable by others). Nothing connects until it is opened."""
    try:
        # Imported here: psycopg is needed only by sites that store in PostgreSQL.
        from gridpilot.storage.postgres import PostgresStorage  # noqa: PLC0415
    except ImportError as exc:
        raise StorageError(
            "storage.backend is postgresql but psycopg is not installed; install it with: "
            "pip install 'gridpilot[postgresql]'"
        ) from exc
    return PostgresStorage.from_config(config.postgresql, config.retention, base_dir)


def _open_influxdb(config: StorageConfig, base_dir: Path) -> ManagedStorage:
    """The InfluxDB backend; its password or token is read here. Nothing connects until it
    is opened."""
    try:
        # Imported here: httpx is needed only by sites that store in InfluxDB.
        from gridpilot.storage.influx import InfluxStorage  # noqa: PLC0415
    except ImportError as exc:
        raise StorageError(
            "storage.backend is influxdb but httpx is not installed; install it with: "
            "pip install 'gridpilot[influxdb]'"
        ) from exc
    return InfluxStorage.from_config(config.influxdb, config.retention, base_dir)
