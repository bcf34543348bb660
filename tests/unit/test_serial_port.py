"""Naming the process that holds a serial port, from a /proc tree built in a temp dir."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gridpilot.fieldbus.errors import PortBusy, PortUnavailable
from gridpilot.fieldbus.serial_port import describe_holders, open_failure, port_holders


def fake_proc(root: Path, processes: dict[int, tuple[bytes, list[Path]]]) -> Path:
    """A /proc with, per pid, a cmdline and fd symlinks to the given paths."""
    proc = root / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a pid: skipped
    for pid, (cmdline, targets) in processes.items():
        fd_dir = proc / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmdline)
        (proc / str(pid) / "comm").write_text("fallback\n")
        for number, target in enumerate(targets):
            (fd_dir / str(number)).symlink_to(target)
    return proc


@pytest.fixture
def port(tmp_path: Path) -> Path:
    device = tmp_path / "ttyUSB0"
    device.write_text("")
    return device


def test_holders_are_found_by_their_descriptors_through_symlinks(
    tmp_path: Path, port: Path
) -> None:
    by_id = tmp_path / "usb-FTDI-if00"
    by_id.symlink_to(port)
    other = tmp_path / "other"
    other.write_text("")
    proc = fake_proc(
        tmp_path,
        {
            1234: (b"python3\0-m\0gridpilot\0run\0gateway\0", [other, port]),
            77: (b"", [port]),  # a kernel thread or a zombie: its comm names it
            999: (b"vim\0notes\0", [other]),
        },
    )
    holders = port_holders(str(by_id), proc)
    assert [(h.pid, h.command) for h in holders] == [
        (77, "fallback"),
        (1234, "python3 -m gridpilot run gateway"),
    ]
    assert describe_holders("/dev/ttyUSB0", holders) == (
        "/dev/ttyUSB0 is held by process 77 (fallback), "
        "process 1234 (python3 -m gridpilot run gateway)"
    )


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EAGAIN])
def test_a_busy_port_names_its_holder(tmp_path: Path, port: Path, code: int) -> None:
    proc = fake_proc(tmp_path, {4321: (b"socat\0-d\0pty\0", [port])})
    error = open_failure(str(port), OSError(code, os.strerror(code)), proc)
    assert isinstance(error, PortBusy)
    assert error.kind == "busy"
    assert str(error) == f"cannot open {port}: {port} is held by process 4321 (socat -d pty)"


def test_a_busy_port_without_a_visible_holder(tmp_path: Path, port: Path) -> None:
    proc = fake_proc(tmp_path, {})
    error = open_failure(str(port), OSError(errno.EBUSY, "busy"), proc)
    assert "held by another process (not visible in /proc" in str(error)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOENT, "no such serial port"),
        (errno.EACCES, "permission denied (add the gateway's user to the port's group"),
        (errno.EIO, "Input/output error"),
    ],
)
def test_other_open_failures(tmp_path: Path, port: Path, code: int, text: str) -> None:
    error = open_failure(str(port), OSError(code, os.strerror(code)), tmp_path)
    assert type(error) is PortUnavailable
    assert error.kind == "port"
    assert text in str(error)


def test_this_process_is_found_too(tmp_path: Path, port: Path) -> None:
    # The real /proc: listing our own fds opens (and closes) a descriptor meanwhile.
    with port.open("rb"):
        holders = port_holders(str(port))
    assert [h.pid for h in holders] == [os.getpid()]
