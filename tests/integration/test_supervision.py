"""The systemd units in deploy/systemd and the services' sd_notify heartbeats.

``systemd-analyze verify`` checks the units as systemd would load them. The services are
then run as the units run them (``gridpilot run SERVICE CONFIG``) with ``NOTIFY_SOCKET``
pointing at a datagram socket of the test's own, standing in for systemd: READY=1 once
started, WATCHDOG=1 at half of ``WATCHDOG_USEC``, none while the process is stalled,
STOPPING=1 on SIGTERM. Where systemd is PID 1, a unit is also killed with SIGKILL and must
come back.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from gridpilot.bus.client import BrokerAddress
from gridpilot.ieee2030_5.tls import make_test_pki
from tests.conftest import find_free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SERVICES = ["gateway", "ingest", "controller", "api", "ieee2030_5"]
INSTALLED_BINARY = "/opt/gridpilot/bin/gridpilot"


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd (scripts/test does)")
    return tool


def units_for_this_machine(tmp_path: Path) -> list[Path]:
    """The units, with ExecStart pointing at this checkout's gridpilot: verify checks that
    the program exists, and /opt/gridpilot is where a real installation puts it."""
    gridpilot = Path(sys.executable).with_name("gridpilot")
    assert gridpilot.exists(), gridpilot
    out = []
    for unit in [*sorted(UNITS.glob("gridpilot*.service")), UNITS / "gridpilot.target"]:
        text = unit.read_text()
        assert unit.suffix == ".target" or INSTALLED_BINARY in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_BINARY, str(gridpilot)))
        out.append(copy)
    return out


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_units_verify(tmp_path: Path) -> None:
    units = units_for_this_machine(tmp_path)
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on mere warnings ("Unknown key", "Failed to parse"): none is allowed.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert {u.name for u in units} == {f"gridpilot-{s}.service" for s in SERVICES} | {
        "gridpilot.target"
    }


@pytest.mark.parametrize("service", SERVICES)
def test_each_unit_is_supervised_and_confined(service: str, tmp_path: Path) -> None:
    unit = UNITS / f"gridpilot-{service}.service"
    d = directives(unit)
    assert d["Type"] == ["notify"]
    assert d["Restart"] == ["always"]
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} run {service} /etc/gridpilot/site.yaml"]
    assert re.fullmatch(r"\d+s", d["WatchdogSec"][0])
    assert d["User"] == ["gridpilot"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == ["/var/lib/gridpilot"]
    assert d["LimitNOFILE"] == ["65536"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["WantedBy"] == ["gridpilot.target"]
    # systemd's own score of the confinement (0 = fully confined, 10 = not at all).
    copy = units_for_this_machine(tmp_path)
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            "--no-pager",
            str(next(u for u in copy if u.name == unit.name)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_the_user_and_directories_are_declared(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles apply the files into a scratch root."""
    sysusers = shutil.which("systemd-sysusers")
    tmpfiles = shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.fail("systemd-sysusers/systemd-tmpfiles not found: apt-get install systemd")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    (root / "etc" / "group").write_text("dialout:x:20:\n")
    subprocess.run(
        [sysusers, f"--root={root}", str(UNITS / "gridpilot.sysusers.conf")],
        check=True,
        timeout=60,
        capture_output=True,
    )
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^gridpilot:x:\d+:\d+:GridPilot[^:]*:/var/lib/gridpilot:", passwd, re.M)
    assert re.search(r"^dialout:x:20:gridpilot$", (root / "etc" / "group").read_text(), re.M)
    subprocess.run(
        [tmpfiles, "--create", f"--root={root}", str(UNITS / "gridpilot.tmpfiles.conf")],
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert (root / "etc" / "gridpilot").stat().st_mode & 0o777 == 0o700


# --- the heartbeat of a real service ------------------------------------------------------


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket the test owns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, list[str]]] = []

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.received.append((time.monotonic(), data.decode().split("\n")))

    def beats(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, lines in self.received if "WATCHDOG=1" in lines and since <= t < until)

    def saw(self, line: str) -> bool:
        return any(line in lines for _, lines in self.received)


def site_file(tmp_path: Path, service: str, broker: BrokerAddress) -> Path:
    config: dict[str, object] = {
        "site": {"id": f"sup-{uuid.uuid4().hex[:6]}"},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "api": {"port": 0},
        "devices": [
            {"id": "meter1", "protocol": "mqtt", "points": [{"point": "active_power_w"}]},
        ],
    }
    if service == "controller":
        config["control"] = {"journal": None}
    if service == "ieee2030_5":
        # No utility server answers here: the client keeps retrying with backoff, and the
        # heartbeats must go on while it does.
        pki = make_test_pki(tmp_path / "pki")
        config["ieee2030_5"] = {
            "server": f"https://127.0.0.1:{find_free_port()}",
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
            "ca_file": str(pki.ca_cert),
            "pin": 111115,
        }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def until(condition: object, limit_s: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_notifies_ready_and_sends_heartbeats_while_it_runs(
    service: str, tmp_path: Path, mosquitto: BrokerAddress
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    collector = asyncio.create_task(notify.collect())
    env = os.environ | {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "300000",  # WatchdogSec=0.3s: a heartbeat every 0.15 s
    }
    env.pop("WATCHDOG_PID", None)
    config = site_file(tmp_path, service, mosquitto)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "run", service, str(config),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await until(lambda: notify.saw("READY=1"), 30, "READY=1")
        first = notify.received[0][1]
        assert "READY=1" in first
        assert f"MAINPID={process.pid}" in first
        await until(lambda: notify.beats() >= 5, 10, "five heartbeats")

        # A stalled process sends nothing; systemd would kill it after WatchdogSec.
        process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.2)  # a datagram sent just before the stop may still arrive
        stalled_from = time.monotonic()
        await asyncio.sleep(1.0)
        assert notify.beats(since=stalled_from) == 0
        process.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        await until(lambda: notify.beats(since=resumed) >= 3, 10, "heartbeats to resume")

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        await until(lambda: notify.saw("STOPPING=1"), 5, "STOPPING=1")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        notify.sock.close()


def systemd_is_pid1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


@pytest.mark.skipif(
    not systemd_is_pid1(),
    reason="systemd is not PID 1 on this machine (a container): units cannot be started, "
    "so the restart after SIGKILL is tested where systemd runs; the heartbeat is tested above",
)
def test_a_service_killed_with_sigkill_is_restarted_by_systemd(tmp_path: Path) -> None:
    """A transient copy of the ingest unit (its own name, the test's site file) is started,
    killed with SIGKILL, and must be running again under a new PID."""
    systemctl = shutil.which("systemctl")
    assert systemctl is not None
    gridpilot = Path(sys.executable).with_name("gridpilot")
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"site": {"id": "sigkill"}}))
    name = f"gridpilot-test-{uuid.uuid4().hex[:8]}"
    text = (UNITS / "gridpilot-ingest.service").read_text()
    text = text.replace(
        f"{INSTALLED_BINARY} run ingest /etc/gridpilot/site.yaml",
        f"{gridpilot} run ingest {config}",
    )
    # The test's files are not where a real installation keeps them: run as root, unconfined.
    text = re.sub(r"^(User|Group|ProtectHome|ProtectSystem|PrivateTmp)=.*$", "", text, flags=re.M)
    unit = Path("/run/systemd/system") / f"{name}.service"
    unit.write_text(text)
    try:
        subprocess.run([systemctl, "daemon-reload"], check=True, timeout=60)
        subprocess.run([systemctl, "start", name], check=True, timeout=120)

        def main_pid() -> int:
            out = subprocess.run(
                [systemctl, "show", "-p", "MainPID", "--value", name],
                capture_output=True, text=True, check=True, timeout=30,
            )  # fmt: skip
            return int(out.stdout.strip() or 0)

        before = main_pid()
        assert before > 0
        os.kill(before, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = main_pid()
            state = subprocess.run(
                [systemctl, "is-active", name], capture_output=True, text=True, timeout=30,
                check=False,
            ).stdout.strip()  # fmt: skip
            if after not in (0, before) and state == "active":
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{name} did not come back after SIGKILL")
    finally:
        subprocess.run([systemctl, "stop", name], timeout=60, check=False)
        unit.unlink(missing_ok=True)
        subprocess.run([systemctl, "daemon-reload"], timeout=60, check=False)
