"""Files written whole or not at all, and secret files checked before use."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "fsync_directory", "private_mode_problem"]


@contextlib.contextmanager
def atomic_file(
    path: Path, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> Iterator[BinaryIO]:
    """A binary file object that becomes ``path`` only when the block ends without error.

    It is written under a temporary name in the same directory (so the rename is atomic:
    a reader sees the old file or the new one, never a half-written one), created with
    ``mode`` from the start (never briefly world-readable), flushed to disk, then renamed
    and the directory synced. ``owner`` (uid, gid) is given to it before the rename. On an
    error the temporary file is removed and ``path`` is untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the entry, not only the data, on disk)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_mode_problem(path: Path, what: str) -> str | None:
    """Why ``path`` is not fit to hold a secret (group or others may read or write it),
    with the fix; ``None`` when it is private."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return (
            f"{what} {path} has mode {mode:04o}: others may read it. Run 'chmod 600 {path}' "
            "(and consider the secret seen)"
        )
    return None
