"""Two ``gridpilot run api`` processes behind Debian's HAProxy (``deploy/haproxy/haproxy.cfg``).

The shipped configuration is rendered with free loopback ports (its chroot and user lines
dropped, its log sent to a file) and started with ``haproxy -db``. Clients send requests
with a token through it without pause; one API process is killed with SIGKILL in the middle,
and every request still succeeds: the ones in flight or sent before the health check noticed
are retried on the other process, and after it the dead one takes no more.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from gridpilot.bus.client import BrokerAddress
from tests.conftest import REPO, find_free_port

pytestmark = pytest.mark.integration

SHIPPED = REPO / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = Path(os.environ.get("GRIDPILOT_HAPROXY", "/usr/sbin/haproxy"))
WORKERS = 4
REDISPATCHED = re.compile(r" \d+/\d+/\d+/\d+/\+\d+ \d+/\d+ \"")
"""An httplog line of a request HAProxy redispatched to another server."""


@pytest.fixture
def haproxy() -> Path:
    if not HAPROXY.exists():
        pytest.fail(f"haproxy not found at {HAPROXY}: apt-get install haproxy (scripts/test does)")
    return HAPROXY


def test_the_shipped_configuration_is_valid(haproxy: Path) -> None:
    result = subprocess.run(
        [str(haproxy), "-c", "-f", str(SHIPPED)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def render(front: int, api1: int, api2: int) -> str:
    """The shipped file with test ports, no chroot or user switch (the test may not be root),
    and the log in a file."""
    out = []
    for line in SHIPPED.read_text().splitlines():
        words = line.split()
        if words[:1] in (["chroot"], ["user"], ["group"]):
            continue
        if words[:2] == ["log", "/dev/log"]:
            line = "    log stderr format raw local0"  # noqa: PLW2901
        elif words[:2] == ["bind", "127.0.0.1:8080"]:
            line = f"    bind 127.0.0.1:{front}"  # noqa: PLW2901
        elif words[:2] == ["server", "api1"]:
            line = f"    server api1 127.0.0.1:{api1}"  # noqa: PLW2901
        elif words[:2] == ["server", "api2"]:
            line = f"    server api2 127.0.0.1:{api2}"  # noqa: PLW2901
        out.append(line)
    text = "\n".join(out) + "\n"
    for expected in (f":{front}", f":{api1}", f":{api2}", "log stderr"):
        assert expected in text, f"the shipped haproxy.cfg no longer has the line for {expected}"
    return text


def write_site(directory: Path, broker: BrokerAddress) -> Path:
    config = {
        "site": {"id": f"lb-{uuid.uuid4().hex[:6]}"},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "storage": {"path": "data/site.db"},
        "api": {
            "tokens_file": "secrets/tokens.json",
            "audit_file": "logs/audit.jsonl",
            # The test's clients send as fast as they can with one token.
            "rate_limit_per_minute": 1_000_000,
            "rate_limit_burst": 100_000,
        },
        "devices": [{"id": "meter", "protocol": "mqtt", "points": [{"point": "active_power_w"}]}],
    }
    (directory / "secrets").mkdir(mode=0o700)
    (directory / "logs").mkdir(mode=0o700)
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(command: list[str], log: Path, ready: bytes, what: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    deadline = time.monotonic() + 30
    while ready not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            pytest.fail(f"{what} did not start; its output:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return process


def wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"haproxy did not start; its output:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Load:
    """Clients sending GET /api/v1/devices through HAProxy without pause, each on its own
    keep-alive connection; every answer (or failure) is recorded with the process that
    served it.

    A response the killed process had begun to send cannot be retried by HAProxy: its
    status line and headers have already gone to the client. Such a GET reaches the client
    cut short, and the client retries it, as any HTTP client should an idempotent request
    whose connection broke (httpx, requests/urllib3 and curl all offer it). Those cut
    responses are recorded apart from failures, with when the request was sent, so the test
    can check that each was in flight at the kill and that its retry succeeded."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.served: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.cut_short: list[tuple[float, str]] = []
        self.stop = asyncio.Event()

    async def worker(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10) as http:
            retrying = False
            while not self.stop.is_set():
                sent_at = time.monotonic()
                try:
                    response = await http.get("/api/v1/devices")
                except httpx.RemoteProtocolError as exc:
                    if retrying:
                        self.failures.append(f"retry failed too: {exc}")
                        retrying = False
                    else:
                        self.cut_short.append((sent_at, str(exc)))
                        retrying = True
                    continue
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                retrying = False
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                assert [d["id"] for d in response.json()["devices"]] == ["meter"]
                backend = response.headers.get("X-GridPilot-Backend", "?")
                self.served.append((time.monotonic(), backend))

    def backends_since(self, since: float) -> set[str]:
        return {backend for at, backend in self.served if at >= since}


async def wait_until(condition: object, limit_s: float, what: str, load: Load) -> None:
    assert callable(condition)
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {limit_s:.0f} s waiting for {what}; answers from "
                f"{load.backends_since(0) or 'no process'}, {len(load.failures)} failures, "
                f"e.g. {load.failures[:3]}"
            )
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
def test_requests_keep_succeeding_when_one_api_process_is_killed(
    tmp_path: Path, mosquitto: BrokerAddress, haproxy: Path
) -> None:
    config = write_site(tmp_path, mosquitto)
    gridpilot = [sys.executable, "-m", "gridpilot"]
    token = subprocess.run(
        [*gridpilot, "token", "create", "-c", str(config), "--role", "viewer"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    ports = [find_free_port(), find_free_port()]
    apis: list[subprocess.Popen[bytes]] = []
    proxy: subprocess.Popen[bytes] | None = None
    proxy_log = tmp_path / "haproxy.log"
    try:
        # One after the other: the first creates the database's schema alone.
        for n, port in enumerate(ports, start=1):
            apis.append(
                start(
                    [*gridpilot, "run", "api", str(config), "--port", str(port)],
                    tmp_path / f"api{n}.log",
                    b"running for site",
                    f"API process {n}",
                )
            )
        front = find_free_port()
        rendered = tmp_path / "haproxy.cfg"
        rendered.write_text(render(front, ports[0], ports[1]))
        with proxy_log.open("wb") as out:
            proxy = subprocess.Popen(
                [str(haproxy), "-db", "-f", str(rendered)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_accepting(front, proxy, proxy_log)
        asyncio.run(failover(f"http://127.0.0.1:{front}", token, apis[0], proxy_log))
    finally:
        if proxy is not None:
            stop(proxy)
        for api in apis:
            stop(api)


async def failover(url: str, token: str, victim: subprocess.Popen[bytes], proxy_log: Path) -> None:
    load = Load(url, token)
    workers = [asyncio.create_task(load.worker()) for _ in range(WORKERS)]
    try:
        # HAProxy starts both servers as up; both take requests.
        await wait_until(
            lambda: load.backends_since(0) == {"api1", "api2"},
            30,
            "both API processes to answer",
            load,
        )
        await asyncio.sleep(1.0)
        before = len(load.served)
        kill_sent_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        # The health check takes it out (fall 2 at 1 s, so about 2 s; more on a busy machine).
        await wait_until(
            lambda: b"api1 is DOWN" in proxy_log.read_bytes(),
            30,
            "haproxy to mark the killed process down",
            load,
        )
        down_at = time.monotonic()
        await asyncio.sleep(1.0)
        load.stop.set()
        await asyncio.gather(*workers)
    finally:
        load.stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert load.failures == [], (
        f"{len(load.failures)} failed requests, e.g. {load.failures[:5]}; haproxy's log:\n"
        + proxy_log.read_text(errors="replace")[-3000:]
    )
    # At most one response per client can have been on its way from the killed process;
    # each was sent before the kill and its retry succeeded (a failed retry is a failure).
    assert len(load.cut_short) <= WORKERS, load.cut_short
    assert all(sent_at < kill_sent_at for sent_at, _ in load.cut_short), load.cut_short
    after = len(load.served) - before
    assert after > 0
    # Once the health check removed it, only the survivor answers.
    assert load.backends_since(down_at + 0.5) == {"api2"}
    # Between the SIGKILL and the health check's verdict HAProxy still sent requests to the
    # dead process; they reached the client as successes because they were redispatched
    # (httplog's retries field reads "+N" for those).
    redispatched = len(REDISPATCHED.findall(proxy_log.read_text(errors="replace")))
    assert redispatched > 0, "no request was redispatched: did the kill happen under load?"
    print(
        f"{len(load.served)} requests, none failed; {after} after the SIGKILL, "
        f"{redispatched} of them redispatched; {len(load.cut_short)} cut short by it and "
        f"retried by the client; api1 marked down {down_at - killed_at:.1f} s after it"
    )
