"""API tokens: created once, shown once, stored only as hashes.

A token reads ``gpt_<id>_<secret>``: ``id`` (8 hex digits) names the record, ``secret`` is
256 random bits. The store keeps the id, a name, the role, who made it and when, an optional
expiry, and SHA-256 of the secret -- never the secret itself. A fast hash is enough because
the secret is random and long; a password hash (bcrypt, argon2) is for guessable secrets.
Comparison is constant-time.

The store is one JSON file, mode 0600, in a directory that is not group- or world-writable;
a file readable by others is refused (it would let them see who holds which role and when
tokens expire, and its presence there means the directory is not the private one it should
be). ``gridpilot token create`` writes it while the API runs: writes are atomic (temp file +
rename) under an advisory lock, and the API re-reads the file when its mtime changes, so a
new or revoked token takes effect at the next request without a restart.

Roles are ordered: ``viewer`` reads; ``operator`` also sends commands and changes controller
parameters; ``admin`` also manages tokens.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import orjson

from gridpilot.text import printable

__all__ = [
    "Role",
    "TokenError",
    "TokenRecord",
    "TokenStore",
    "TokenStoreError",
]

_TOKEN_RE: Final = re.compile(r"gpt_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})")
_MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""Thousands of tokens fit in far less; a larger file is not a token store."""
MAX_NAME_CHARS: Final = 100


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return self.rank >= needed.rank


_RANKS: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class TokenStoreError(Exception):
    """The token file cannot be used (unreadable, malformed, or readable by others)."""


class TokenError(ValueError):
    """A token operation with wrong arguments (unknown id, bad name, past expiry)."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    role: Role
    created: datetime
    created_by: str
    secret_sha256: str
    expires: datetime | None = None
    revoked: datetime | None = None

    def active(self, now: datetime) -> bool:
        if self.revoked is not None:
            return False
        return self.expires is None or now < self.expires

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["role"] = self.role.value
        for key in ("created", "expires", "revoked"):
            value = out[key]
            out[key] = None if value is None else value.isoformat()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenRecord:
        def when(key: str) -> datetime | None:
            value = data.get(key)
            return None if value is None else datetime.fromisoformat(value)

        created = when("created")
        if created is None:
            raise ValueError("created is missing")
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            role=Role(data["role"]),
            created=created,
            created_by=str(data.get("created_by", "")),
            secret_sha256=str(data["secret_sha256"]),
            expires=when("expires"),
            revoked=when("revoked"),
        )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """The tokens of one site, in ``path``. Reads are cached until the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, TokenRecord] = {}
        self._cache_key: tuple[int, int, int] | None = None

    # ------------------------------------------------------------------ reading

    def records(self) -> list[TokenRecord]:
        """Every record, revoked and expired ones included, oldest first."""
        return sorted(self._load().values(), key=lambda r: (r.created, r.id))

    def verify(self, token: str, now: datetime | None = None) -> TokenRecord | None:
        """The active record ``token`` belongs to, or None (unknown, wrong, revoked, expired).

        Raises ``TokenStoreError`` when the store itself cannot be read.
        """
        match = _TOKEN_RE.fullmatch(token.strip())
        if match is None:
            return None
        record = self._load().get(match[1])
        if record is None:
            return None
        if not hmac.compare_digest(record.secret_sha256, _digest(match[2])):
            return None
        return record if record.active(now or datetime.now(UTC)) else None

    def refusal(self, token_id: str, now: datetime | None = None) -> str | None:
        """None while the token ``token_id`` is active, else why it is not (for a stream
        opened with it, which outlives the check made when it opened)."""
        try:
            record = self._load().get(token_id)
        except TokenStoreError as exc:
            return f"tokens cannot be checked: {exc}"
        if record is None:
            return f"token {token_id} no longer exists"
        if record.revoked is not None:
            return f"token {token_id} was revoked"
        if not record.active(now or datetime.now(UTC)):
            return f"token {token_id} expired"
        return None

    def _load(self) -> dict[str, TokenRecord]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache, self._cache_key = {}, None
            return self._cache
        except OSError as exc:
            raise TokenStoreError(_unreadable(self.path, exc)) from exc
        _check_private(self.path, st)  # every time: a chmod does not change the mtime
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._cache_key:
            self._cache = self._parse(self._read_bytes(st))
            self._cache_key = key
        return self._cache

    def _read_bytes(self, st: os.stat_result) -> bytes:
        if st.st_size > _MAX_FILE_BYTES:
            raise TokenStoreError(
                f"the token file {self.path} is {st.st_size} bytes, more than a token store "
                "can be: is api.tokens_file pointing at the right file?"
            )
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise TokenStoreError(_unreadable(self.path, exc)) from exc

    def _parse(self, data: bytes) -> dict[str, TokenRecord]:
        if not data.strip():
            return {}
        try:
            doc = orjson.loads(data)
            records = [TokenRecord.from_json(item) for item in doc["tokens"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TokenStoreError(
                f"the token file {self.path} is not a GridPilot token store ({exc}); restore it "
                "from a backup or move it away and create new tokens with "
                "'gridpilot token create'"
            ) from exc
        return {r.id: r for r in records}

    # ------------------------------------------------------------------ writing

    def create(
        self,
        role: Role,
        name: str,
        *,
        created_by: str,
        expires: datetime | None = None,
        now: datetime | None = None,
    ) -> tuple[TokenRecord, str]:
        """Add a token; returns its record and the token (the only time it is known)."""
        # A label, shown in lists and the audit log: unprintable characters (and lone
        # surrogates, which cannot be stored as UTF-8) become '?' rather than an error.
        name = printable(name).strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise TokenError(f"a token name is 1-{MAX_NAME_CHARS} characters, e.g. 'scada-reader'")
        now = now or datetime.now(UTC)
        if expires is not None and expires <= now:
            raise TokenError(f"the expiry {expires.isoformat()} is not in the future")
        with self._locked() as records:
            token_id = secrets.token_hex(4)
            while token_id in records:
                token_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            record = TokenRecord(
                id=token_id,
                name=name,
                role=role,
                created=now,
                created_by=created_by,
                secret_sha256=_digest(secret),
                expires=expires,
            )
            records[token_id] = record
        return record, f"gpt_{token_id}_{secret}"

    def revoke(self, token_id: str, now: datetime | None = None) -> TokenRecord:
        """Mark a token revoked (kept, so the audit log's ids stay explained)."""
        with self._locked() as records:
            record = records.get(token_id)
            if record is None:
                raise TokenError(
                    f"no token with id {token_id!r}; 'gridpilot token list' shows the ids"
                )
            if record.revoked is None:
                record = replace(record, revoked=now or datetime.now(UTC))
                records[token_id] = record
        return record

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenRecord]]:
        """Read-modify-write under an exclusive lock; the new file replaces the old atomically."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_directory(directory)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cache_key = None
            records = dict(self._load())
            yield records
            body = orjson.dumps(
                {"tokens": [r.to_json() for r in sorted(records.values(), key=lambda r: r.id)]},
                option=orjson.OPT_INDENT_2,
            )
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(tmp_fd, body)
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            os.replace(tmp, self.path)
            self._cache_key = None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _check_private(path: Path, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise TokenStoreError(
            f"the token file {path} has mode {mode:04o}: others may read it. Run "
            f"'chmod 600 {path}' (and check who could have read it)"
        )


def _check_directory(directory: Path) -> None:
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o022:
        raise TokenStoreError(
            f"the directory {directory} of the token file is writable by others (mode "
            f"{mode:04o}): anyone could replace the tokens. Run 'chmod go-w {directory}'"
        )


def _unreadable(path: Path, exc: OSError) -> str:
    return f"cannot read the token file {path}: {exc.strerror}"
