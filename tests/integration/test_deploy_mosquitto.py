"""deploy/mosquitto/gridpilot.conf, the shipped production broker configuration, run as is
(only paths and the port moved into the test's directory): it loads, refuses anonymous
clients, admits users of its password file, and queues far more than Mosquitto's default
1000 QoS 1 messages for a persistent subscriber that is away."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MOSQUITTO, find_free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "mosquitto" / "gridpilot.conf"
USER, PASSWORD = "ingest", "correct horse battery staple"
BACKLOG = 5_000  # five times Mosquitto's default max_queued_messages


def localise(conf: str, workdir: Path, port: int, password_file: Path) -> str:
    """Point the production file's paths at the test directory; keep every other line."""
    out = []
    for line in conf.splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {port} 127.0.0.1"  # noqa: PLW2901
        elif key == "password_file":
            line = f"password_file {password_file}"  # noqa: PLW2901
        elif key == "persistence_location":
            line = f"persistence_location {workdir}/"  # noqa: PLW2901
        elif key == "pid_file":
            line = f"pid_file {workdir}/mosquitto.pid"  # noqa: PLW2901
        elif key == "log_dest":
            line = f"log_dest file {workdir}/mosquitto.log"  # noqa: PLW2901
        out.append(line)
    if os.geteuid() == 0:
        out.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(out) + "\n"


@pytest.fixture
def production_broker(tmp_path: Path) -> Iterator[int]:
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd missing: apt-get install mosquitto"
    password_file = tmp_path / "gridpilot.passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), USER, PASSWORD], check=True)
    password_file.chmod(0o600)
    port = find_free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(localise(CONF.read_text(), tmp_path, port, password_file))
    process = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (
                    (tmp_path / "mosquitto.log").read_text()
                    if (tmp_path / "mosquitto.log").exists()
                    else ""
                )
                pytest.fail(f"gridpilot.conf did not start mosquitto; its log:\n{log}")
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)


def sub(port: int, *args: str, user: bool = True) -> subprocess.CompletedProcess[bytes]:
    auth = ["-u", USER, "-P", PASSWORD] if user else []
    return subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), *auth, *args],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip


def test_anonymous_clients_are_refused(production_broker: int) -> None:
    result = sub(production_broker, "-t", "gridpilot/#", "-C", "1", "-W", "2", user=False)
    assert result.returncode != 0
    assert b"not authorised" in result.stderr.lower() or b"refused" in result.stderr.lower()


def test_persistent_subscriber_gets_a_backlog_beyond_the_default_limit(
    production_broker: int,
) -> None:
    port = production_broker
    topic = "gridpilot/v1/hq/meter/telemetry"
    # Create the persistent session, then leave.
    sub(port, "-q", "1", "-c", "-i", "slow-ingest", "-t", topic, "-W", "1")
    lines = "\n".join(
        f'{{"ts": {1_764_158_400_000 + i}, "values": {{"p_w": {i}}}}}' for i in range(BACKLOG)
    )
    for chunk in range(0, BACKLOG, 1000):  # mosquitto_pub -l stops at 65,535 lines; stay far below
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", USER, "-P", PASSWORD,
             "-q", "1", "-t", topic, "-l"],
            input="\n".join(lines.splitlines()[chunk : chunk + 1000]).encode(),
            check=True, timeout=60,
        )  # fmt: skip
    received = sub(
        port, "-q", "1", "-c", "-i", "slow-ingest", "-t", topic, "-C", str(BACKLOG), "-W", "20"
    )
    assert received.returncode == 0, received.stderr
    assert len(received.stdout.splitlines()) == BACKLOG
