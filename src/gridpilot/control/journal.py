"""The control journal: an append-only JSON-lines record of what the controller did and why.

Operator actions (overrides, dry-run, enable/disable, with who asked), fail-safes entered and
left, controllers that raised, and in dry-run every decision that would have been sent. One
line per entry, so ``tail -f`` and ``jq`` read it; rotated to ``.1`` beyond a size so it
never fills the disk. Writes are small appends done off the event loop by the service.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson


class Journal:
    """Appends entries to ``path``; keeps at most ``max_bytes`` plus one rotated file."""

    def __init__(self, path: Path, max_bytes: int = 10_000_000) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Append entries (blocking: call from a worker thread)."""
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        # 0600: the journal names operators and what they did.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def read(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` entries, oldest first (blocking). Unreadable lines are skipped."""
        lines: list[bytes] = []
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                lines.extend(path.read_bytes().splitlines())
            except FileNotFoundError:
                continue
        out: list[dict[str, Any]] = []
        for line in lines[-limit:]:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a crash mid-write
            if isinstance(entry, dict):
                out.append(entry)
        return out
