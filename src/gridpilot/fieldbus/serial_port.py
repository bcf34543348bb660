"""Who holds a serial port, and why a port could not be opened.

``port_holders`` does what ``fuser -v /dev/ttyUSB0`` does: it scans ``/proc/*/fd`` for
descriptors that point at the device and names each process with its command line.
``open_failure`` turns the ``OSError`` of a failed open into our error tree: a port held
by another process (``EBUSY``, or the exclusive ``flock`` pyserial takes failing with
``EWOULDBLOCK``) becomes ``PortBusy`` naming the holders.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from gridpilot.fieldbus.errors import PortBusy, PortUnavailable

__all__ = ["PortHolder", "describe_holders", "open_failure", "port_holders"]

_BUSY_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK})


@dataclass(frozen=True, slots=True)
class PortHolder:
    pid: int
    command: str
    """The process' command line, arguments joined by spaces (its name if unreadable)."""

    def __str__(self) -> str:
        return f"process {self.pid} ({self.command})"


def port_holders(port: str, proc: Path = Path("/proc")) -> list[PortHolder]:
    """Processes with an open descriptor on ``port`` (symlinks resolved), by pid.

    Processes whose descriptors we may not read (other users, without root) are skipped,
    as ``fuser`` skips them.
    """
    target = os.path.realpath(port)
    holders: list[PortHolder] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        if target in _fd_targets(entry / "fd"):
            holders.append(PortHolder(int(entry.name), _command_of(entry)))
    return sorted(holders, key=lambda h: h.pid)


def _fd_targets(fd_dir: Path) -> set[str]:
    """What the descriptors in ``fd_dir`` point at; empty if the process is gone or not
    ours to read. A descriptor closed while we look (the listing's own, in our process) is
    skipped alone."""
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return set()
    targets: set[str] = set()
    for fd in fds:
        try:
            targets.add(os.readlink(fd))
        except OSError:
            continue
    return targets


def _command_of(entry: Path) -> str:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        raw = b""
    command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    if command:
        return command
    try:
        return (entry / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def describe_holders(port: str, holders: list[PortHolder]) -> str:
    """``/dev/ttyUSB0 is held by process 1234 (python3 ...)`` (or by an unknown process)."""
    if not holders:
        return f"{port} is held by another process (not visible in /proc to this user)"
    return f"{port} is held by " + ", ".join(str(h) for h in holders)


def open_failure(
    port: str, error: OSError, proc: Path = Path("/proc")
) -> PortBusy | PortUnavailable:
    """Our error for a port that failed to open with ``error``."""
    code = error.errno
    if code in _BUSY_ERRNOS:
        holders = port_holders(port, proc)
        return PortBusy(f"cannot open {port}: {describe_holders(port, holders)}")
    if code == errno.ENOENT:
        return PortUnavailable(f"cannot open {port}: no such serial port")
    if code == errno.EACCES:
        return PortUnavailable(
            f"cannot open {port}: permission denied (add the gateway's user to the port's "
            "group, usually dialout)"
        )
    return PortUnavailable(f"cannot open {port}: {error.strerror or error}")
