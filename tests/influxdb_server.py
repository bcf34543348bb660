"""A private InfluxDB (Debian's ``influxd``, 1.x) for the tests, on free loopback ports.

Also used by ``benchmarks/storage/bench_influxdb.py``, hence no pytest in here.

The server is started on first use -- by the ``influxdb`` fixture or by the storage
contract's InfluxDB backend -- with a generated configuration whose data lives in a
temporary directory, and stopped at the end of the session (``tests/conftest.py``). Each
test uses a database of its own, so the one server serves the whole session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import find_free_port

INFLUXD = Path(os.environ.get("GRIDPILOT_INFLUXD", "/usr/bin/influxd"))
_START_TIMEOUT_S = 30.0

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{workdir}/meta"
  logging-enabled = false

[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
  # The tests' data is small and thrown away: sync the WAL lazily.
  wal-fsync-delay = "100ms"

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-row-limit = 0
  auth-enabled = {auth}

[continuous_queries]
  enabled = false

[retention]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


class InfluxServer:
    """An ``influxd`` process of our own; ``url`` is its HTTP API on loopback.

    ``auth=True`` turns authentication on: InfluxDB then accepts exactly one request without
    credentials, the ``CREATE USER ... WITH ALL PRIVILEGES`` that makes the first admin.
    """

    def __init__(self, workdir: Path, *, auth: bool = False) -> None:
        if not INFLUXD.exists():
            raise RuntimeError(
                f"influxd not found at {INFLUXD}: apt-get install influxdb (the InfluxDB "
                "storage tests run against a real server; scripts/test installs it)"
            )
        self.workdir = workdir
        self.auth = auth
        self.http_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "influxd.log"
        self._names = itertools.count()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def new_database_name(self, hint: str = "test") -> str:
        """A database name not used before in this session."""
        safe = "".join(c if c.isalnum() else "_" for c in hint)[:40]
        return f"{safe}_{os.getpid()}_{next(self._names)}"

    def start(self) -> None:
        """Start (on the HTTP port of the previous start, if any, so clients reconnect to
        the same URL) and wait until ``/ping`` answers."""
        for attempt in range(3):
            if self.http_port == 0 or attempt > 0:
                self.http_port = find_free_port()
            rpc_port = find_free_port()
            conf = self.workdir / "influxdb.conf"
            conf.write_text(
                _CONFIG.format(
                    workdir=self.workdir,
                    http_port=self.http_port,
                    rpc_port=rpc_port,
                    auth=str(self.auth).lower(),
                )
            )
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(INFLUXD), "-config", str(conf)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return
            self.stop()
            if "address already in use" not in self.log_path.read_text(errors="replace"):
                break
        raise RuntimeError(f"influxd did not start; its log:\n{self.log_path.read_text()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                # Our own server on loopback (http://127.0.0.1:port), never another scheme.
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:  # noqa: S310
                    if answer.status == 204:
                        return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


_shared: InfluxServer | None = None


def shared_influxdb() -> InfluxServer:
    """The session's server, started on first use."""
    global _shared  # noqa: PLW0603 - one server per test process, started lazily
    if _shared is None:
        server = InfluxServer(Path(tempfile.mkdtemp(prefix="gridpilot-influxdb-")))
        server.start()
        _shared = server
    return _shared


def stop_shared_influxdb() -> None:
    """Stop the session's server (if it was started) and remove its data."""
    global _shared
    server, _shared = _shared, None
    if server is not None:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
