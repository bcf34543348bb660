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
    is created on open with mode 0600.
    """
    path = site_path(base_dir, config.path.expanduser())
    path.parent.mkdir(parents=True, exist_ok=True)
    # StorageConfig.backend only admits "sqlite" today; other backends branch here.
    return SqliteStorage(path, config.retention)
