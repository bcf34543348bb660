"""Shared fixtures: a private Mosquitto for the test session, free loopback ports.

The broker is the real one (``/usr/sbin/mosquitto``), started from
``deploy/mosquitto/test.conf`` on a free loopback port -- never the system broker on 1883,
so a developer's own Mosquitto and its retained messages cannot leak into tests.
Tests that stop and restart a broker use ``MosquittoServer`` directly (``private_mosquitto``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gridpilot.bus.client import BrokerAddress

if TYPE_CHECKING:
    from tests.influxdb_server import InfluxServer

REPO = Path(__file__).resolve().parent.parent
TEST_CONF = REPO / "deploy" / "mosquitto" / "test.conf"
MOSQUITTO = Path(os.environ.get("GRIDPILOT_MOSQUITTO", "/usr/sbin/mosquitto"))
_START_TIMEOUT_S = 10.0


def find_free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MosquittoServer:
    """A ``mosquitto`` process of our own, configured from ``deploy/mosquitto/test.conf``.

    ``persistent=True`` keeps sessions and queued messages across ``restart()`` (saved to
    ``workdir`` on SIGTERM), as the production config does. ``anonymous=False`` with a
    ``password_file`` makes it ask for credentials; ``acl_file`` limits topics. ``port`` 0
    picks a free one.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = False,
        anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        port: int = 0,
    ) -> None:
        if not MOSQUITTO.exists():
            pytest.fail(
                f"mosquitto not found at {MOSQUITTO}: apt-get install mosquitto "
                "(the bus and ingest tests run against a real broker)"
            )
        self.workdir = workdir
        self.persistent = persistent
        self.anonymous = anonymous
        self.password_file = password_file
        self.acl_file = acl_file
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port)

    def write_config(self) -> Path:
        lines = []
        for line in TEST_CONF.read_text().splitlines():
            if line.startswith("listener "):
                line = f"listener {self.port} 127.0.0.1"  # noqa: PLW2901
            elif line.startswith("persistence ") and self.persistent:
                line = "persistence true"  # noqa: PLW2901
            elif line.startswith("allow_anonymous ") and not self.anonymous:
                line = "allow_anonymous false"  # noqa: PLW2901
            lines.append(line)
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistent:
            lines += [f"persistence_location {self.workdir}/", "autosave_interval 0"]
        if os.geteuid() == 0:
            # As root, mosquitto drops to the "mosquitto" user, which cannot write the
            # test's directory; stay as the user running the tests instead.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        """Start on ``self.port`` (picking a free one the first time) and wait until it
        accepts connections."""
        for _attempt in range(3):
            if self.port == 0:
                self.port = find_free_port()
            conf = self.write_config()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(MOSQUITTO), "-c", str(conf)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_accepting():
                return
            self._reap()
            if "Address already in use" not in self.log_path.read_text(errors="replace"):
                break
            self.port = 0  # someone took the port between probing and binding; pick again
        pytest.fail(f"mosquitto did not start; its log:\n{self.log_path.read_text()}")

    def _wait_accepting(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), wait for the exit."""
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerAddress]:
    """The session's Mosquitto (anonymous, loopback, MQTT 5 and 3.1.1). Give each test its
    own site id and client ids: the broker is shared."""
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto"))
    server.start()
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto of this test alone (persistent), for tests that stop or restart it."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    server = MosquittoServer(workdir, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def free_port() -> int:
    """A free loopback TCP port."""
    return find_free_port()


def mosquitto_passwd(path: Path, username: str, password: str) -> None:
    """Write a Mosquitto password file (hashed) with one user."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd not found: apt-get install mosquitto")
    subprocess.run([tool, "-c", "-b", str(path), username, password], check=True)
    path.chmod(0o644)  # mosquitto (possibly another user) must read it


@pytest.fixture(scope="session", autouse=True)
def _stop_influxdb_at_exit() -> Iterator[None]:
    """Stops the session's InfluxDB if a test started it (``tests/influxdb_server.py``);
    sessions that never touch InfluxDB never start one."""
    yield
    from tests.influxdb_server import stop_shared_influxdb  # noqa: PLC0415 - imports conftest

    stop_shared_influxdb()


@pytest.fixture(scope="session")
def influxdb() -> InfluxServer:
    """The session's InfluxDB (Debian's influxd on a free loopback port). Give each test
    its own database: ``influxdb.new_database_name()``."""
    from tests.influxdb_server import shared_influxdb  # noqa: PLC0415 - imports conftest

    return shared_influxdb()
