"""``gridpilot backup`` and ``gridpilot restore``: one archive of a site, taken while it runs.

What a backup holds (each a member of one tar file, see ``gridpilot.ops.archive``)::

    manifest.json            format, site, time, and every member's size and SHA-256
    manifest.json.sha256     the manifest's own digest
    site.yaml                the site file
    database.sqlite          the SQLite time series (storage.path), a consistent snapshot
    api-tokens.json          token hashes and roles (api.tokens_file), if any
    api-audit.jsonl[.1]      the API audit log and its rotated part (api.audit_file)
    control-journal.jsonl[.1] the control journal and its rotated part (control.journal)

The database is copied with SQLite's online backup API on a connection of its own that
holds one read transaction for the whole copy: in WAL mode the copy is the database as of
one commit, ingest keeps writing meanwhile (readers never block the writer), and the copy
proceeds in steps so progress can be shown. It runs in a worker thread; the calling thread
reports progress.

The archive is written under a temporary name and renamed (mode 0600), so DEST is either
a whole backup or absent. With a key file it is sealed with AES-256-GCM
(``gridpilot.ops.sealed``).

A restore first reads and checks everything, in a staging directory next to the database:
the key (authentication of every chunk), every member's SHA-256 against the manifest, the
site file's validity and SQLite's ``PRAGMA integrity_check``. Only then does it replace
files, each atomically (a rename in its own directory). It refuses while processes hold
the database (named, like ``fuser``), unless forced: then the database is overwritten in
place through the backup API in one SQLite transaction, so the running services see the
restored data rather than writing on into an unlinked file; they must still be restarted
at once (their caches describe the old data).

InfluxDB and PostgreSQL keep their data themselves; for those backends the archive holds
the files above but the database, and ``external_storage_advice`` names the tool to use.

Errors::

    BackupError                 anything that stops a backup or restore (message says why)
     +-- ArchiveRefusedError    the archive is damaged, altered, or sealed with another key
     +-- RestoreBlockedError    processes hold the database (names them)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final
from urllib.parse import urlsplit

from gridpilot import __version__
from gridpilot.config import ConfigError, GridPilotConfig, load_config, site_path
from gridpilot.config.loader import validate_config_text
from gridpilot.fieldbus.serial_port import PortHolder, port_holders
from gridpilot.ops.archive import ArchiveDamagedError, ArchiveReader, ArchiveWriter
from gridpilot.ops.files import atomic_file, fsync_directory
from gridpilot.ops.sealed import MAGIC, DecryptingReader, EncryptingWriter, SealError

__all__ = [
    "ArchiveRefusedError",
    "BackupError",
    "BackupResult",
    "CopyProgress",
    "RestoreBlockedError",
    "RestoreResult",
    "external_storage_advice",
    "restore_backup",
    "take_backup",
]

FORMAT: Final = "gridpilot-backup"
FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
MANIFEST_DIGEST: Final = "manifest.json.sha256"
CONFIG_MEMBER: Final = "site.yaml"
DATABASE_MEMBER: Final = "database.sqlite"

# Pages per backup step: 4096 pages of 4 KiB = 16 MiB between progress reports. Each step
# runs inside the one read transaction, so steps do not let the copy see later commits.
_PAGES_PER_STEP: Final = 4096
_PROGRESS_EVERY_S: Final = 0.5
_BUSY_TIMEOUT_S: Final = 30.0
_COPY_BYTES: Final = 1024 * 1024


class BackupError(Exception):
    """A backup or restore cannot go on; the message says why and what to do."""


class ArchiveRefusedError(BackupError):
    """The archive is damaged or altered, or the key is wrong: nothing was replaced."""


class RestoreBlockedError(BackupError):
    """Processes hold the database a restore would replace."""

    def __init__(self, message: str, holders: list[PortHolder]) -> None:
        super().__init__(message)
        self.holders = holders


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """How far the database copy is: pages copied of the total."""

    copied_pages: int
    total_pages: int
    page_size: int

    @property
    def fraction(self) -> float:
        return self.copied_pages / self.total_pages if self.total_pages else 1.0

    @property
    def copied_bytes(self) -> int:
        return self.copied_pages * self.page_size

    @property
    def total_bytes(self) -> int:
        return self.total_pages * self.page_size


@dataclass(frozen=True, slots=True)
class Member:
    """A file of the site and its place in the archive."""

    name: str
    role: str
    path: Path


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    name: str
    role: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    site_id: str
    members: tuple[ManifestEntry, ...]
    encrypted: bool
    size: int
    advice: str | None = None
    """For a backend that keeps its data itself: how to back that up."""


@dataclass(slots=True)
class RestoreResult:
    site_id: str
    created: str
    replaced: list[tuple[str, Path]] = field(default_factory=list)
    """(member, target) in the order they were (or, when only checked, would be) replaced."""
    checked_only: bool = False
    forced_over: list[PortHolder] = field(default_factory=list)
    """Processes that held the database when ``force`` overwrote it in place."""
    advice: str | None = None


# --- which files make up a site ----------------------------------------------------------


def site_members(config: GridPilotConfig, config_path: Path) -> list[Member]:
    """The files of a site, wherever its site file puts them (relative paths are relative
    to the site file's directory). The same list gives a backup's sources and a restore's
    targets."""
    base = config_path.parent
    members = [Member(CONFIG_MEMBER, "config", config_path)]
    if config.storage.backend == "sqlite":
        members.append(
            Member(DATABASE_MEMBER, "database", site_path(base, config.storage.path.expanduser()))
        )
    members.append(Member("api-tokens.json", "tokens", site_path(base, config.api.tokens_file)))
    audit = site_path(base, config.api.audit_file)
    members += [
        Member("api-audit.jsonl", "audit", audit),
        Member("api-audit.jsonl.1", "audit", _rotated(audit)),
    ]
    if config.control is not None and config.control.journal is not None:
        journal = site_path(base, config.control.journal)
        members += [
            Member("control-journal.jsonl", "journal", journal),
            Member("control-journal.jsonl.1", "journal", _rotated(journal)),
        ]
    return members


def _rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def external_storage_advice(config: GridPilotConfig) -> str | None:
    """For a backend that keeps its data outside GridPilot's files: the commands that back
    it up and restore it, filled in from the site file. ``None`` for SQLite (the archive
    holds the database)."""
    storage = config.storage
    if storage.backend == "influxdb":
        influx = storage.influxdb
        host = urlsplit(influx.url).hostname or "127.0.0.1"
        return (
            f"the time series live in InfluxDB ({influx.url}), not in this archive: on "
            f"{host}, back them up with 'influxd backup -portable -db {influx.database} DIR' "
            f"(InfluxDB 1.x; 'influx backup DIR' on 2.x) and restore with 'influxd restore "
            f"-portable -db {influx.database} DIR' ('influx restore DIR')"
        )
    if storage.backend == "postgresql":
        pg = storage.postgresql
        target = (
            f"--dbname='{pg.dsn}'"
            if pg.dsn is not None
            else f"--host={pg.host} --port={pg.port} --dbname={pg.dbname}"
            + (f" --username={pg.user}" if pg.user else "")
        )
        return (
            "the time series live in PostgreSQL, not in this archive: back them up with "
            f"'pg_dump -Fc --schema={pg.schema_name} {target} -f gridpilot.pgdump' (a "
            "consistent snapshot while ingest runs) and restore with 'pg_restore --clean "
            f"--if-exists {target} gridpilot.pgdump'"
        )
    return None


# --- backup ------------------------------------------------------------------------------


def take_backup(
    config_path: Path,
    dest: Path,
    *,
    secret: bytes | None = None,
    progress: Callable[[CopyProgress], None] | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Write a backup of the site in ``config_path`` to ``dest`` (a file, or a directory
    to create a dated file in). Raises ``BackupError``."""
    config = _load(config_path)
    created = now or datetime.now(UTC)
    if dest.is_dir():
        suffix = ".tar.sealed" if secret is not None else ".tar"
        stamp = created.strftime("%Y%m%dT%H%M%SZ")
        dest /= f"gridpilot-{config.site.id}-{stamp}{suffix}"
    if dest.exists():
        raise BackupError(f"{dest} exists: give a new file name, or a directory to write into")
    if not dest.parent.is_dir():
        raise BackupError(f"the directory {dest.parent} does not exist: create it first")
    # Staged next to DEST: a multi-gigabyte copy must not fill /tmp, and the staging
    # directory is 0700 (mkdtemp), so the copy is never readable by others.
    staging = Path(tempfile.mkdtemp(prefix=".gridpilot-backup-", dir=dest.parent))
    try:
        staged = _stage(config, config_path, staging, progress)
        entries = tuple(
            ManifestEntry(m.name, m.role, m.path.stat().st_size, _sha256_file(m.path))
            for m in staged
        )
        manifest = _manifest_bytes(config, created, entries)
        with atomic_file(dest, mode=0o600) as raw:
            sealer = EncryptingWriter(raw, secret) if secret is not None else None
            writer = ArchiveWriter(sealer if sealer is not None else raw, int(created.timestamp()))
            writer.add(MANIFEST, len(manifest), io.BytesIO(manifest))
            digest = (hashlib.sha256(manifest).hexdigest() + "\n").encode()
            writer.add(MANIFEST_DIGEST, len(digest), io.BytesIO(digest))
            for member, entry in zip(staged, entries, strict=True):
                with member.path.open("rb") as data:
                    writer.add(member.name, entry.size, data)
            writer.close()
            if sealer is not None:
                sealer.close()
    except OSError as exc:
        raise BackupError(f"cannot write the backup {dest}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(
        dest,
        config.site.id,
        entries,
        encrypted=secret is not None,
        size=dest.stat().st_size,
        advice=external_storage_advice(config),
    )


def _load(config_path: Path) -> GridPilotConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise BackupError(str(exc)) from exc


def _stage(
    config: GridPilotConfig,
    config_path: Path,
    staging: Path,
    progress: Callable[[CopyProgress], None] | None,
) -> list[Member]:
    """Copies of the site's files in ``staging``, each taken once, so the manifest's
    digests describe exactly what goes into the archive."""
    staged: list[Member] = []
    for member in site_members(config, config_path):
        copy = staging / member.name
        if member.role == "database":
            if not member.path.is_file():
                raise BackupError(
                    f"no database at {member.path} (storage.path): has ingest run yet? "
                    "Check the path in the site file"
                )
            copy_database(member.path, copy, progress)
        else:
            try:
                shutil.copyfile(member.path, copy)
            except FileNotFoundError:
                if member.role == "config":
                    raise BackupError(f"the site file {member.path} is gone") from None
                continue  # no tokens created yet, no audit or journal written yet
        staged.append(Member(member.name, member.role, copy))
    return staged


def copy_database(
    source: Path, target: Path, progress: Callable[[CopyProgress], None] | None = None
) -> None:
    """A consistent copy of the SQLite database ``source`` at ``target``, while other
    processes may write to it, made in a worker thread; ``progress`` is called from the
    calling thread about twice a second while the copy runs, and once at the end."""
    state: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            _backup_sqlite(source, target, state)
        except BaseException as exc:  # noqa: BLE001 -- handed to the calling thread, re-raised there
            state["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="gridpilot-backup-copy", daemon=True)
    worker.start()
    while not done.wait(_PROGRESS_EVERY_S):
        if progress is not None and "progress" in state:
            progress(state["progress"])
    worker.join()
    error = state.get("error")
    if error is not None:
        if isinstance(error, sqlite3.Error):
            raise BackupError(f"cannot copy the database {source}: {error}") from error
        raise error
    if progress is not None and "progress" in state:
        progress(state["progress"])


def _backup_sqlite(source: Path, target: Path, state: dict[str, Any]) -> None:
    src = sqlite3.connect(source, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
        # One read transaction across every step: the copy is the database as of this
        # moment. Without it, each step would start its own, and a commit by ingest
        # between two steps would restart the copy from the first page (forever, under
        # load).
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(target, isolation_level=None)
        try:

            def step(_status: int, remaining: int, total: int) -> None:
                state["progress"] = CopyProgress(total - remaining, total, page_size)

            src.backup(dst, pages=_PAGES_PER_STEP, progress=step)
            # The copy is one self-contained file (the source's WAL flag is copied too).
            dst.execute("PRAGMA journal_mode = DELETE").fetchone()
            verdict = dst.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise BackupError(
                    f"the copy of {source} fails SQLite's quick_check ({verdict}): the "
                    "database itself may be damaged; run 'sqlite3 FILE \"PRAGMA "
                    "integrity_check\"' on it"
                )
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()


def _manifest_bytes(
    config: GridPilotConfig, created: datetime, entries: tuple[ManifestEntry, ...]
) -> bytes:
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": created.astimezone(UTC).isoformat(timespec="seconds"),
        "site": config.site.id,
        "gridpilot": __version__,
        "storage_backend": str(config.storage.backend),
        "members": [
            {"name": e.name, "role": e.role, "size": e.size, "sha256": e.sha256} for e in entries
        ],
    }
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- restore -----------------------------------------------------------------------------


def restore_backup(
    config_path: Path,
    source: Path,
    *,
    secret: bytes | None = None,
    force: bool = False,
    check_only: bool = False,
) -> RestoreResult:
    """Check the backup ``source`` whole, then put its files where its site file (written
    to ``config_path``) says they belong. Raises ``ArchiveRefusedError`` (nothing replaced)
    or ``RestoreBlockedError`` / ``BackupError``."""
    try:
        raw = source.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot open the backup {source}: {exc.strerror}") from exc
    with raw, contextlib.ExitStack() as cleanup:
        stream: BinaryIO
        sealed = raw.read(len(MAGIC)) == MAGIC
        raw.seek(0)
        if sealed:
            if secret is None:
                raise BackupError(f"{source} is encrypted: give its key with --key-file")
            try:
                stream = DecryptingReader(raw, secret)  # type: ignore[assignment]
            except SealError as exc:
                raise ArchiveRefusedError(f"{source}: {exc}") from exc
        else:
            stream = raw
        try:
            return _restore(
                config_path, source, stream, cleanup, force=force, check_only=check_only
            )
        except (ArchiveDamagedError, SealError) as exc:
            raise ArchiveRefusedError(f"{source}: {exc}; nothing was replaced") from exc


@dataclass(frozen=True, slots=True)
class _Staged:
    """A backup read whole and checked, its files in ``staging``."""

    config: GridPilotConfig
    created: str
    entries: list[ManifestEntry]
    targets: dict[str, Member]
    staging: Path


def _restore(
    config_path: Path,
    source: Path,
    stream: BinaryIO,
    cleanup: contextlib.ExitStack,
    *,
    force: bool,
    check_only: bool,
) -> RestoreResult:
    staged = _read_and_check(config_path, source, stream, cleanup)
    result = RestoreResult(
        staged.config.site.id,
        staged.created,
        checked_only=check_only,
        advice=external_storage_advice(staged.config),
    )
    # The database first: it is the part most likely to be refused (held by a service).
    order = sorted(staged.entries, key=lambda e: e.name != DATABASE_MEMBER)
    staged_db = staged.staging / DATABASE_MEMBER
    db_target = staged.targets.get(DATABASE_MEMBER)
    holders: list[PortHolder] = []
    if db_target is not None and staged_db.exists():
        holders = _database_holders(db_target.path)
        if holders and not force:
            names = ", ".join(str(h) for h in holders)
            raise RestoreBlockedError(
                f"{db_target.path} is in use by {names}: stop the services first "
                "(systemctl stop gridpilot.target, or stop 'gridpilot run'), then restore "
                "again; --force overwrites it in place while they run",
                holders,
            )
    result.replaced = [(e.name, staged.targets[e.name].path) for e in order]
    if check_only:
        return result
    for name, target in result.replaced:
        copy = staged.staging / name
        if name == DATABASE_MEMBER and holders:
            _overwrite_live_database(copy, target)
            result.forced_over = holders
        elif name == DATABASE_MEMBER:
            _replace_database(copy, target)
        else:
            _make_private_dirs(target.parent)
            with copy.open("rb") as data, atomic_file(target, 0o600, _owner_for(target)) as out:
                shutil.copyfileobj(data, out, _COPY_BYTES)
    return result


def _read_and_check(
    config_path: Path, source: Path, stream: BinaryIO, cleanup: contextlib.ExitStack
) -> _Staged:
    """Read the whole archive into a staging directory, checking every byte of it."""
    reader = ArchiveReader(stream)
    manifest_bytes = _expect(reader, MANIFEST)
    digest = _expect(reader, MANIFEST_DIGEST).decode("ascii", errors="replace").strip()
    if digest != hashlib.sha256(manifest_bytes).hexdigest():
        raise ArchiveDamagedError("the manifest does not match its digest: altered")
    created, entries = _parse_manifest(manifest_bytes)
    if not entries or entries[0].name != CONFIG_MEMBER:
        raise ArchiveDamagedError("the manifest does not start with the site file")
    config_text = _expect(reader, CONFIG_MEMBER, entries[0])
    try:
        config = validate_config_text(config_text.decode("utf-8"), f"{source}:{CONFIG_MEMBER}")
    except (ConfigError, UnicodeDecodeError) as exc:
        raise BackupError(f"the site file in {source} is not valid: {exc}") from exc
    targets = {m.name: m for m in site_members(config, config_path)}
    # Staged next to the database (or the site file): the final rename then stays within
    # one file system, so it is atomic.
    anchor = targets[DATABASE_MEMBER].path if DATABASE_MEMBER in targets else config_path
    _make_private_dirs(anchor.parent)
    staging = Path(tempfile.mkdtemp(prefix=".gridpilot-restore-", dir=anchor.parent))
    cleanup.callback(shutil.rmtree, staging, True)
    (staging / CONFIG_MEMBER).write_bytes(config_text)
    for entry in entries[1:]:
        if entry.name not in targets:
            raise BackupError(
                f"{source} holds {entry.name}, which the site file in it has no place for"
            )
        header = reader.next_member()
        if header is None or header.name != entry.name or header.size != entry.size:
            raise ArchiveDamagedError(f"the archive does not hold {entry.name} as listed")
        with (staging / entry.name).open("wb") as out:
            got, _ = reader.read_member(out)
        if got != entry.sha256:
            raise ArchiveDamagedError(f"{entry.name} does not match its SHA-256: altered")
    if reader.next_member() is not None:
        raise ArchiveDamagedError("the archive holds members its manifest does not list")
    if (staging / DATABASE_MEMBER).exists():
        _check_database(staging / DATABASE_MEMBER)
    return _Staged(config, created, entries, targets, staging)


def _expect(reader: ArchiveReader, name: str, entry: ManifestEntry | None = None) -> bytes:
    header = reader.next_member()
    if header is None or header.name != name:
        raise ArchiveDamagedError(f"expected {name} in the archive: not a GridPilot backup")
    if header.size > 16 * 1024 * 1024:
        raise ArchiveDamagedError(f"{name} is {header.size} bytes: not a GridPilot backup")
    sha, data = reader.read_member()
    if entry is not None and (sha != entry.sha256 or len(data) != entry.size):
        raise ArchiveDamagedError(f"{name} does not match its SHA-256: altered")
    return data


def _parse_manifest(data: bytes) -> tuple[str, list[ManifestEntry]]:
    try:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ArchiveDamagedError("not a GridPilot backup (the manifest's format differs)")
        if document.get("version") != FORMAT_VERSION:
            raise ArchiveDamagedError(
                f"backup format version {document.get('version')} is not one this GridPilot "
                f"({__version__}) reads ({FORMAT_VERSION}): restore with the version that "
                "wrote it"
            )
        entries = [
            ManifestEntry(str(m["name"]), str(m["role"]), int(m["size"]), str(m["sha256"]))
            for m in document["members"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveDamagedError(f"the manifest is malformed ({exc})") from exc
    if len({e.name for e in entries}) != len(entries):
        raise ArchiveDamagedError("the manifest lists a member twice")
    return str(document.get("created", "?")), entries


def _check_database(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        verdict = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise ArchiveRefusedError(f"the database in the backup cannot be read: {exc}") from exc
    finally:
        conn.close()
    if verdict != ["ok"]:
        raise ArchiveRefusedError(
            "the database in the backup fails SQLite's integrity_check: "
            + "; ".join(verdict[:5])
            + ("" if len(verdict) <= 5 else f" (and {len(verdict) - 5} more)")
        )
    if version < 1:
        raise ArchiveRefusedError("the database in the backup is not a GridPilot database")


def _database_holders(db: Path) -> list[PortHolder]:
    """Processes with the database (or its WAL files) open; the current one excluded."""
    own = os.getpid()
    found: dict[int, PortHolder] = {}
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            for holder in port_holders(str(path)):
                if holder.pid != own:
                    found[holder.pid] = holder
    return sorted(found.values(), key=lambda h: h.pid)


def _replace_database(staged: Path, target: Path) -> None:
    """Put the checked copy in place of ``target`` with one rename. The old database's
    ``-wal`` and ``-shm`` go first: left beside the new file, SQLite would replay the old
    WAL into it."""
    for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    os.chmod(staged, 0o600)
    owner = _owner_for(target)
    if owner is not None:
        os.chown(staged, *owner)
    os.replace(staged, target)
    fsync_directory(target.parent)


def _overwrite_live_database(staged: Path, target: Path) -> None:
    """``--force`` with services holding the database: write the checked copy into it
    through SQLite (one transaction under SQLite's locks), so processes that have it open
    see the restored content, not a file replaced underneath them."""
    src = sqlite3.connect(staged, isolation_level=None)
    dst = sqlite3.connect(target, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(
            f"cannot overwrite {target} while it is in use ({exc}): stop the services and "
            "restore again"
        ) from exc
    finally:
        dst.close()
        src.close()


def _owner_for(target: Path) -> tuple[int, int] | None:
    """Who should own a restored file: whoever owned the file it replaces, else its
    directory's owner. Only root can give files away; for anyone else, ``None``."""
    if os.geteuid() != 0:
        return None
    try:
        st = target.stat()
    except FileNotFoundError:
        st = target.parent.stat()
    return st.st_uid, st.st_gid


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` (and parents) with mode 0700 where missing: a restored site
    holds secrets (token hashes, the audit log)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
