"""The soak harness's probe, loaded into the soaked demo only: ``soak.py`` puts this directory
on the demo's ``PYTHONPATH`` and names a file in ``GRIDPILOT_SOAK_PROBE``; Python imports
``sitecustomize`` at start-up, and a daemon thread rewrites that file every
``GRIDPILOT_SOAK_PROBE_PERIOD`` (simulated) seconds with what /proc cannot tell apart:

* ``sqlite_bytes`` -- ``sqlite3_memory_used()`` of the process's libsqlite3 (the library
  Python's ``sqlite3`` module links): every connection's page cache, statements, schema.
  Its page caches are bounded by configuration (``storage/sqlite.py``) but fill only as the
  database grows past them, so they look like growth for hours;
* ``py_blocks`` -- ``sys.getallocatedblocks()``: live objects in Python's small-object
  allocator, where a leak of objects shows first;
* ``malloc_in_use_bytes`` / ``malloc_free_bytes`` -- glibc's ``mallinfo2()`` over all
  arenas: what C code holds (SQLite, OpenSSL, libxml2, pydantic-core, Python's large
  objects) against what malloc keeps free without returning it to the system. RSS that
  grows while the bytes in use do not is the allocator's fragmentation, not a leak.

No other effect on the process: nothing is imported from GridPilot, nothing is patched.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _start() -> None:
    # Taken out of the environment: the demo's child processes (its worker pool's
    # forkserver and workers, which /proc counts apart) must not write the same file.
    path = os.environ.pop("GRIDPILOT_SOAK_PROBE", None)
    period = float(os.environ.pop("GRIDPILOT_SOAK_PROBE_PERIOD", "60"))
    if not path:
        return
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")
        memory_used = sqlite.sqlite3_memory_used
        memory_used.restype = ctypes.c_int64
    except (OSError, AttributeError):
        memory_used = None

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        mallinfo2 = None

    def run() -> None:
        while True:
            figures = {
                "sqlite_bytes": None if memory_used is None else int(memory_used()),
                "py_blocks": sys.getallocatedblocks(),
                "time": time.time(),
            }
            if mallinfo2 is not None:
                info = mallinfo2()
                # uordblks: in use from the arenas' heaps; hblkhd: in use in mmap'd blocks.
                figures["malloc_in_use_bytes"] = int(info.uordblks + info.hblkhd)
                figures["malloc_free_bytes"] = int(info.fordblks)
            partial = f"{path}.tmp"
            with open(partial, "w", encoding="utf-8") as f:
                json.dump(figures, f)
            os.replace(partial, path)
            time.sleep(period)

    threading.Thread(target=run, name="soak-probe", daemon=True).start()


_start()
