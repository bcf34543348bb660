"""Fault injection: the disk under ingest's database fills up for a while (issue 7, item 2).

The database lives on a small tmpfs of the test's own; when 40 % of the stream is published
a filler file takes every free byte, for the profile's outage (at least 8 s, so that writes
really fail and are retried), then it is deleted. Ingest's writes fail with "disk full",
are retried with backoff, what it has not committed stays unacknowledged at the broker,
and everything is stored once there is room again. Mounting needs root (CI runs as root);
elsewhere the test is skipped and says so.
"""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import Rig
from tests.faults.rig import FaultProfile
from tests.faults.test_faults import _MID_STREAM, assert_complete

pytestmark = pytest.mark.integration


@pytest.fixture
def db_dir(tmp_path: Path, fault_profile: FaultProfile) -> Iterator[Path]:
    """A tmpfs roomy enough for the whole stream (the short profile's 30,000 samples take a
    few MB, the full profile's million some 200 MB), the database's directory."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size_mb = 64 if fault_profile.samples <= 100_000 else 1024
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk fault ({done.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem has no byte left; the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    n = out.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
    return written


def test_a_full_disk_backs_up_and_everything_is_stored_after(rig: Rig, db_dir: Path) -> None:
    rig.publisher.start()
    rig.publisher.wait_published(_MID_STREAM)
    filler = db_dir / "filler"
    assert fill(filler) > 0
    outage_s = max(rig.profile.outage_s, 8.0)
    time.sleep(outage_s)
    filler.unlink()
    assert_complete(rig, f"disk full {outage_s:g} s")
    log = rig.ingest.log()
    assert "is full" in log, log[-4000:]  # the writes failed and were retried
