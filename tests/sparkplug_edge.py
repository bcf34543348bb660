"""A third-party Sparkplug B edge node (pysparkplug) in a process of its own.

pysparkplug pins paho-mqtt < 2 and GridPilot needs paho-mqtt 2, so the edge node lives in a
virtual environment of its own, ``.venv-sparkplug-edge`` at the repository root, made on
first use (``python -m venv`` + ``pip install pysparkplug==0.6.1`` from PyPI, once; later
runs reuse it). ``tests/fixtures/sparkplug_edge_node.py`` is the node; this module starts
it and talks to it over its stdin/stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-sparkplug-edge"
PYSPARKPLUG = "pysparkplug==0.6.1"
SCRIPT = ROOT / "tests" / "fixtures" / "sparkplug_edge_node.py"
_INSTALL_TIMEOUT_S = 300


def edge_python() -> Path:
    """The side environment's interpreter, made (under a lock, for parallel workers) when
    it is missing or lacks pysparkplug."""
    python = VENV / "bin" / "python"
    marker = VENV / ".gridpilot-ready"
    if marker.exists():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with (ROOT / ".venv-sparkplug-edge.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(VENV)],
                check=True,
                timeout=_INSTALL_TIMEOUT_S,
            )
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    PYSPARKPLUG,
                ],
                check=True,
                timeout=_INSTALL_TIMEOUT_S,
            )
            marker.write_text(PYSPARKPLUG + "\n")
    return python


class EdgeNodeProcess:
    """The running edge node: ``send`` commands, ``expect`` events."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._seen = 0

    async def send(self, command: dict[str, Any]) -> int:
        """Carry out a command; the timestamp (epoch ms) the node gave its metrics."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        done = await self.expect("done", timeout_s=10)
        return int(done["ts"])

    async def expect(self, event: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next event of that kind not yet returned (earlier other events are kept)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                for i in range(self._seen, len(self.events)):
                    if self.events[i]["event"] == event:
                        found = self.events[i]
                        del self.events[i]
                        return found
                self._seen = len(self.events)
                line = await self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"the edge node exited while waiting for {event!r}")
                self.events.append(json.loads(line))

    def kill(self) -> None:
        """SIGKILL: the TCP connection drops without DISCONNECT, so the broker publishes
        the node's will (its NDEATH)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


@contextlib.asynccontextmanager
async def edge_node(
    host: str, port: int, group: str, edge: str, device: str
) -> AsyncIterator[EdgeNodeProcess]:
    python = await asyncio.to_thread(edge_python)
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(SCRIPT),
        host,
        str(port),
        group,
        edge,
        device,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    node = EdgeNodeProcess(process)
    try:
        await node.expect("born", timeout_s=60)
        yield node
    finally:
        node.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await process.wait()
