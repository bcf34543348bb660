"""The backup archive's tar layout, written plainly and read strictly.

A backup is one POSIX ustar file: ``manifest.json``, ``manifest.json.sha256`` (the
manifest's own digest), then the members the manifest lists with their SHA-256. Writing
uses ``tarfile``'s headers; reading does not use ``tarfile``: ``ArchiveReader`` walks the
512-byte blocks itself and refuses anything this module would not have written, so that any
altered byte is caught before a restore replaces a file:

- member data: by the SHA-256 in the manifest (and the manifest by its digest member);
- headers: the ustar checksum, which must also be spelled exactly as ``tarfile`` writes it;
- padding after each member, the end-of-archive blocks and the record padding: all zero.

Only regular files with plain names (no directories, links, paths or ``..``) are accepted,
so nothing in an archive can point a restore outside the places the restore chooses.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol

__all__ = ["ArchiveDamagedError", "ArchiveReader", "ArchiveWriter", "is_member_name"]

BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(BLOCK)
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,98}")
_COPY_BYTES: Final = 1024 * 1024


class ArchiveDamagedError(Exception):
    """The archive is not one ``gridpilot backup`` wrote, or was altered after."""


def is_member_name(name: str) -> bool:
    """Names a member may have: lower-case, digits, ``._-``, no path."""
    return _NAME.fullmatch(name) is not None and ".." not in name


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ArchiveWriter:
    """Members written one after the other into ``out`` as an uncompressed ustar stream.

    Headers come from ``tarfile.TarInfo`` (so any ``tar`` lists and extracts the archive);
    the stream is written here, never seeking, because the encrypting writer cannot.
    SQLite pages and JSON lines compress well, but compressing a multi-gigabyte database on
    an EMS's small CPU costs more time than the disk it saves; compress afterwards if space
    matters.
    """

    def __init__(self, out: _Writable, mtime: int) -> None:
        self._out = out
        self._mtime = mtime
        self._written = 0

    def add(self, name: str, size: int, data: _Readable) -> None:
        """Add ``size`` bytes read from ``data`` as ``name``."""
        if not is_member_name(name):
            raise ValueError(f"{name!r} is not a member name")
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o600
        info.mtime = self._mtime
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.USTAR_FORMAT, "ascii", "strict"))
        left = size
        while left:
            chunk = data.read(min(left, _COPY_BYTES))
            if not chunk:
                raise ValueError(f"{name} ended {left} bytes early (changed while written?)")
            self._write(chunk)
            left -= len(chunk)
        self._write(bytes(-size % BLOCK))

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks), padded to a whole tar record."""
        self._write(bytes(2 * BLOCK))
        self._write(bytes(-self._written % tarfile.RECORDSIZE))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)


@dataclass(frozen=True, slots=True)
class MemberHeader:
    name: str
    size: int


class ArchiveReader:
    """Members of a backup archive read in order from ``raw``, checked block by block."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._offset = 0
        self._pending: MemberHeader | None = None
        self._finished = False

    def next_member(self) -> MemberHeader | None:
        """The next member's header; ``None`` at the end of the archive (after checking
        that nothing but zeros follows)."""
        if self._pending is not None:
            raise RuntimeError("read or skip the previous member first")
        if self._finished:
            return None
        block = self._read_exact(BLOCK, "a member header")
        if block == _ZERO_BLOCK:
            self._check_end()
            self._finished = True
            return None
        header = _parse_header(block, self._offset - BLOCK)
        self._pending = header
        return header

    def read_member(self, out: _Writable | None = None) -> tuple[str, bytes]:
        """The current member's data copied to ``out`` (or returned when ``out`` is
        None); returns (sha256 hex, data or b"")."""
        header = self._pending
        if header is None:
            raise RuntimeError("call next_member() first")
        digest = hashlib.sha256()
        kept: list[bytes] = []
        left = header.size
        while left:
            chunk = self._read_exact(min(left, _COPY_BYTES), f"the data of {header.name}")
            digest.update(chunk)
            if out is None:
                kept.append(chunk)
            else:
                out.write(chunk)
            left -= len(chunk)
        padding = -header.size % BLOCK
        if padding and self._read_exact(padding, "padding") != bytes(padding):
            raise ArchiveDamagedError(f"the padding after {header.name} is not zero: altered")
        self._pending = None
        return digest.hexdigest(), b"".join(kept)

    def _check_end(self) -> None:
        second = self._read_exact(BLOCK, "the end of the archive")
        if second != _ZERO_BLOCK:
            raise ArchiveDamagedError(
                f"byte {self._offset - BLOCK}: the end-of-archive marker is altered"
            )
        while chunk := self._raw.read(_COPY_BYTES):
            if chunk.count(0) != len(chunk):
                raise ArchiveDamagedError(
                    f"non-zero bytes after the end of the archive (from byte {self._offset})"
                )
            self._offset += len(chunk)

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self._raw.read(size)
        while len(data) < size:
            more = self._raw.read(size - len(data))
            if not more:
                raise ArchiveDamagedError(
                    f"the archive ends at byte {self._offset + len(data)} in {what}: "
                    "cut short (an interrupted copy?)"
                )
            data += more
        self._offset += size
        return data

    def members(self) -> Iterator[MemberHeader]:
        while (header := self.next_member()) is not None:
            yield header


def _parse_header(block: bytes, offset: int) -> MemberHeader:
    where = f"the header at byte {offset}"
    stored = block[148:156]
    computed = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
    if stored != b"%06o\x00 " % computed:
        raise ArchiveDamagedError(f"{where} fails its checksum: altered or damaged")
    if block[257:265] != b"ustar\x0000":
        raise ArchiveDamagedError(f"{where} is not a ustar header")
    if block[156:157] != b"0":
        raise ArchiveDamagedError(f"{where}: only regular files belong in a backup")
    if block[345:500].strip(b"\x00"):
        raise ArchiveDamagedError(f"{where}: a path prefix has no place in a backup")
    name = block[:100].rstrip(b"\x00").decode("ascii", errors="replace")
    if not is_member_name(name):
        raise ArchiveDamagedError(f"{where}: {name!r} is not a name a backup uses")
    size_field = block[124:136]
    if re.fullmatch(rb"[0-7]{11}\x00", size_field) is None:
        raise ArchiveDamagedError(f"{where}: the size field is malformed")
    return MemberHeader(name, int(size_field[:11], 8))
