"""The PostgreSQL the tests use: the machine's own server, one fresh schema per test.

Tests reuse the server the machine runs (CI's machines start PostgreSQL on 127.0.0.1:5432
with trust authentication before the tests); they never start one. Each test gets a
schema of its own (``gp_test_<pid>_<n>``), so runs and tests never see each other's data.
Schemas of finished tests are dropped when the next one is made and at exit; schemas left
by a process that died are dropped by the next run.

``GRIDPILOT_TEST_PG_DSN`` names another server (libpq syntax, no password: use
``PGPASSWORD`` or ``~/.pgpass``).
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
from pathlib import Path

import psycopg
from psycopg import sql

from gridpilot.config.models import PostgresConfig, RetentionConfig
from gridpilot.storage.postgres import PostgresStorage, Target

DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test connect_timeout=5"
_PREFIX = "gp_test_"
_counter = itertools.count()
_made: list[str] = []
_checked = False


def dsn() -> str:
    return os.environ.get("GRIDPILOT_TEST_PG_DSN", DEFAULT_DSN)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(dsn(), autocommit=True)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"the PostgreSQL tests need a server at {dsn()!r} that the current user may log "
            f"in to without a password ({str(exc).strip()}). CI's machines run one; on "
            "another machine start it (Debian: pg_ctlcluster 15 main start) or set "
            "GRIDPILOT_TEST_PG_DSN"
        ) from exc


def _drop(names: list[str]) -> None:
    if not names:
        return
    with _admin() as conn:
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _drop_orphans() -> None:
    """Schemas of earlier test processes that are no longer running (they died before
    their exit hook ran)."""
    with _admin() as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (_PREFIX + "%",)
        ).fetchall()
    orphans = []
    for (name,) in rows:
        match = re.fullmatch(_PREFIX + r"(\d+)_\d+", str(name))
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            orphans.append(str(name))
    _drop(orphans)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fresh_schema() -> str:
    """A new schema name for one test; the schemas of earlier tests of this process go."""
    global _checked  # noqa: PLW0603 - once per process
    if not _checked:
        _drop_orphans()
        atexit.register(lambda: _drop(list(_made)))
        _checked = True
    done, _made[:] = list(_made), []
    _drop(done)
    name = f"{_PREFIX}{os.getpid()}_{next(_counter)}"
    _made.append(name)
    return name


def target(schema: str, **overrides: object) -> Target:
    config = PostgresConfig(dsn=dsn(), schema_name=schema, **overrides)  # type: ignore[arg-type]
    return Target.from_config(config, Path.cwd())


def storage(schema: str, retention: RetentionConfig | None = None) -> PostgresStorage:
    return PostgresStorage(target(schema), retention)
