"""`gridpilot doctor` against real parts: the simulated building polled by the gateway into
SQLite through a real Mosquitto passes; then each deliberately broken setup -- broker down,
a wrong device port, a serial port held by another process, a world-readable secret, a tiny
open-file limit -- is named with its fix."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from gridpilot.app import Service, run_services
from gridpilot.bus.client import BrokerAddress
from gridpilot.config import load_config
from gridpilot.config.models import GridPilotConfig
from gridpilot.model import Sample
from gridpilot.ops.doctor import SCHEMA, DoctorReport, run_doctor
from gridpilot.ops.doctor_rules import CheckResult, Verdict
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage import open_storage
from gridpilot.storage.sqlite import SqliteStorage
from tests.conftest import find_free_port
from tests.integration.test_modbus_rtu_support import Line
from tests.production_broker import ProductionBroker

if TYPE_CHECKING:
    from tests.influxdb_server import InfluxServer

pytestmark = pytest.mark.integration

SITE = "doctor"
POLL_S = 1.0


@dataclass
class RunningSite:
    directory: Path
    data: dict[str, Any]
    """The healthy site file's content; broken variants are edited copies."""

    def write(self, directory: Path, data: dict[str, Any]) -> Path:
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / "site.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def variant(self) -> dict[str, Any]:
        """A deep copy of the healthy site whose storage is the running one's database."""
        data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(self.data))
        data["storage"]["path"] = str(self.directory / "site.db")
        return data


async def _stored_devices(db: Path) -> set[str]:
    return await _stored_devices_of(db, SITE)


async def _stored_devices_of(db: Path, site: str) -> set[str]:
    if not db.exists():
        return set()
    async with SqliteStorage(db) as storage:
        return {v.series.device for v in await storage.latest(site)}


@pytest.fixture
async def site(mosquitto: BrokerAddress, tmp_path: Path) -> AsyncIterator[RunningSite]:
    """The simulated building, its gateway and ingest running in this process against the
    session's Mosquitto, with a few seconds of data stored."""
    async with SimulatedSite(base_port=0, speed=1.0) as sim:
        devices = sim.site_config(SITE)
        for device in devices:
            device["poll_interval"] = POLL_S
        data: dict[str, Any] = {
            "site": {"id": SITE},
            "broker": {"url": f"mqtt://127.0.0.1:{mosquitto.port}"},
            "storage": {"path": "site.db", "flush_interval": 0.1},
            "gateway": {"state_interval": 1.0},
            "devices": devices,
        }
        running = RunningSite(tmp_path / "site", data)
        site_file = running.write(running.directory, data)
        config = load_config(site_file)
        stop = asyncio.Event()
        services = asyncio.create_task(
            run_services(config, running.directory, [Service.GATEWAY, Service.INGEST], stop)
        )
        try:
            expected = {d.id for d in config.devices}
            async with asyncio.timeout(30):
                while await _stored_devices(running.directory / "site.db") != expected:
                    assert not services.done(), services
                    await asyncio.sleep(0.5)
            await asyncio.sleep(2 * POLL_S)
            yield running
        finally:
            stop.set()
            await asyncio.wait_for(services, timeout=20)


def _by(report: DoctorReport, check: str, subject: str | None = None) -> list[CheckResult]:
    found = [
        r for r in report.results if r.check == check and (subject is None or r.subject == subject)
    ]
    assert found, f"no {check} {subject} in {report.render_text()}"
    return found


def _one(report: DoctorReport, check: str, subject: str | None = None) -> CheckResult:
    found = _by(report, check, subject)
    assert len(found) == 1, found
    return found[0]


async def test_a_healthy_site_passes(site: RunningSite) -> None:
    site_file = site.directory / "site.yaml"
    report = await run_doctor(load_config(site_file), site_file, timeout_s=10)
    text = report.render_text()

    assert report.exit_code == 0, text
    assert [r for r in report.results if r.verdict is Verdict.FAIL] == [], text
    assert _one(report, "broker").verdict is Verdict.OK, text
    assert "session in" in _one(report, "broker").finding
    # The session's Mosquitto runs from a file this process can read (found through /proc):
    # its raised queue limits cover the site.
    queues = _one(report, "broker_queues")
    assert queues.verdict is Verdict.OK, text
    assert queues.details["max_queued_messages"] == 1_000_000
    assert _one(report, "storage").verdict in (Verdict.OK, Verdict.WARN), text  # a busy disk
    assert _one(report, "storage").details["median_latency_ms"] >= 0
    device_ids = [d["id"] for d in site.data["devices"]]
    # Reachability is exact; rates and gaps may show the load of a shared test machine (a
    # timed-out poll) as a warning, never as a failure.
    for device in device_ids:
        assert _one(report, "device", device).verdict is Verdict.OK, text
        assert _one(report, "device_errors", device).verdict in (Verdict.OK, Verdict.WARN), text
        assert _one(report, "device_errors", device).details["polls"] >= 2
        gaps = _one(report, "data_gaps", device)
        assert gaps.verdict in (Verdict.OK, Verdict.WARN), text
        assert gaps.details["samples"] >= 2
    assert _one(report, "clock").verdict is Verdict.OK, text
    assert _one(report, "permissions").verdict is Verdict.OK, text
    # A developer's shell may have a low limit; it must never fail this site.
    assert _one(report, "open_files").verdict in (Verdict.OK, Verdict.WARN), text
    # The text report: one line per check, then a summary.
    assert len(text.splitlines()) >= len(report.results) + 2
    assert "0 failed" in text


async def test_broker_down_is_named_with_its_fix(site: RunningSite, tmp_path: Path) -> None:
    data = site.variant()
    dead = find_free_port()
    data["broker"]["url"] = f"mqtt://127.0.0.1:{dead}"
    site_file = site.write(tmp_path / "no-broker", data)
    report = await run_doctor(load_config(site_file), site_file, timeout_s=5)

    assert report.exit_code == 1
    broker = _one(report, "broker")
    assert broker.verdict is Verdict.FAIL
    assert f"nothing listens on 127.0.0.1:{dead}" in broker.finding
    assert broker.fix is not None
    assert "systemctl start mosquitto" in broker.fix
    assert "broker.url" in broker.fix
    # Without the broker the counters cannot be read: said, not failed a second time.
    for result in _by(report, "device_errors"):
        assert result.verdict is Verdict.SKIPPED
    assert "What to do next:" in report.render_text()


async def test_a_wrong_device_port_is_named_with_its_fix(site: RunningSite, tmp_path: Path) -> None:
    data = site.variant()
    wrong = find_free_port()
    meter = next(d for d in data["devices"] if d["id"] == "grid_meter")
    meter["port"] = wrong
    site_file = site.write(tmp_path / "wrong-port", data)
    report = await run_doctor(load_config(site_file), site_file, timeout_s=5)

    assert report.exit_code == 1
    device = _one(report, "device", "grid_meter")
    assert device.verdict is Verdict.FAIL
    assert device.finding.startswith("refused:")
    assert f"127.0.0.1:{wrong}" in device.finding
    assert device.fix is not None
    assert "check the port" in device.fix
    # The other devices are fine, and only this one is named.
    failed = {(r.check, r.subject) for r in report.results if r.verdict is Verdict.FAIL}
    assert failed == {("device", "grid_meter")}, report.render_text()


async def test_a_serial_port_held_by_another_process_names_it(
    site: RunningSite, tmp_path: Path
) -> None:
    master, slave = os.openpty()
    port = os.ttyname(slave)
    os.close(slave)  # only the holder keeps the line open
    holder_code = (
        "import sys, time, serial\n"
        "port = serial.Serial(sys.argv[1], exclusive=True)\n"
        "print('holding', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", holder_code, port, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(20):
            assert (await holder.stdout.readline()).strip() == b"holding"
        data = site.variant()
        data["serial_buses"] = [{"id": "rs485", "port": port, "baudrate": 9600, "parity": "N"}]
        data["devices"].append(
            {
                "id": "sub_meter",
                "protocol": "modbus_rtu",
                "bus": "rs485",
                "unit_id": 3,
                "points": [{"point": "active_power_w", "address": 0, "type": "int32"}],
            }
        )
        site_file = site.write(tmp_path / "serial", data)
        report = await run_doctor(load_config(site_file), site_file, timeout_s=5)
    finally:
        holder.kill()
        await holder.wait()
        os.close(master)

    assert report.exit_code == 1
    bus = _one(report, "serial_bus", f"rs485 ({port})")
    assert bus.verdict is Verdict.FAIL
    assert bus.finding.startswith("busy:")
    assert f"{port} is held by process {holder.pid} ({sys.executable} -c" in bus.finding
    assert bus.fix is not None
    assert f"kill {holder.pid}" in bus.fix
    assert f"fuser -v {port}" in bus.fix
    unit = _one(report, "device", "sub_meter")
    assert unit.verdict is Verdict.SKIPPED
    assert "held by another process" in unit.finding


@pytest.mark.parametrize("exposed_file", ["broker_password", "token_store"])
async def test_a_world_readable_secret_is_named_with_its_fix(
    site: RunningSite, tmp_path: Path, exposed_file: str
) -> None:
    data = site.variant()
    directory = tmp_path / "secret"
    directory.mkdir(mode=0o700)
    if exposed_file == "broker_password":
        exposed = directory / "broker.password"
        exposed.write_text("s3cret\n")
        data["broker"]["username"] = "gateway"
        data["broker"]["password_file"] = str(exposed)
    else:
        exposed = directory / "api-tokens.json"
        exposed.write_text("{}\n")
    exposed.chmod(0o644)
    site_file = site.write(directory, data)
    report = await run_doctor(load_config(site_file), site_file, timeout_s=5)

    assert report.exit_code == 1
    permissions = _one(report, "permissions")
    assert permissions.verdict is Verdict.FAIL
    assert f"{exposed} has mode 0644: others may read it" in permissions.finding
    assert permissions.fix is not None
    assert f"chmod 600 {exposed}" in permissions.fix
    if exposed_file == "broker_password":
        # The services refuse such a password file, and so does the broker check.
        broker = _one(report, "broker")
        assert broker.verdict is Verdict.FAIL
        assert "readable by others" in broker.finding


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


async def _doctor_subprocess(
    site_file: Path, *, tiny_limit: bool
) -> tuple[int, dict[str, Any], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "doctor", str(site_file), "--json", "--timeout", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_limit_open_files if tiny_limit else None,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, json.loads(stdout), stderr.decode()


async def test_the_command_reports_json_and_a_tiny_open_file_limit(site: RunningSite) -> None:
    site_file = site.directory / "site.yaml"
    # One process runs under a limit of 64 descriptors, one under this shell's.
    (code, report, stderr), (healthy_code, healthy, _) = await asyncio.gather(
        _doctor_subprocess(site_file, tiny_limit=True),
        _doctor_subprocess(site_file, tiny_limit=False),
    )

    assert healthy_code == 0, healthy
    assert healthy["schema"] == SCHEMA
    assert healthy["site"] == SITE
    assert healthy["verdict"] in ("ok", "warn")
    assert healthy["counts"]["fail"] == 0
    assert {c["check"] for c in healthy["checks"]} >= {
        "broker", "broker_tls", "broker_queues", "storage", "device", "device_errors",
        "data_gaps", "clock", "permissions", "open_files",
    }  # fmt: skip
    for check in healthy["checks"]:
        assert set(check) == {
            "check", "subject", "verdict", "finding", "fix", "duration_s", "details",
        }  # fmt: skip

    assert code == 1, stderr
    assert report["verdict"] == "fail"
    limits = next(c for c in report["checks"] if c["check"] == "open_files")
    assert limits["verdict"] == "fail"
    assert limits["details"]["soft"] == 64
    assert "open-file limit 64 is below the" in limits["finding"]
    assert "Too many open files" in limits["finding"]
    assert "LimitNOFILE=" in limits["fix"]
    assert "ulimit -n" in limits["fix"]
    # Only the limit is wrong here.
    failed = [c["check"] for c in report["checks"] if c["verdict"] == "fail"]
    assert failed == ["open_files"], report


async def test_a_config_error_exits_with_2(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text("site: {id: x}\nbroker: {url: 'http://nope'}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "doctor", str(site_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 2
    assert b"mqtt://" in stderr


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[ProductionBroker]:
    """The production Mosquitto config: a TLS 1.3 listener that wants client certificates
    from the test's CA."""
    broker = ProductionBroker(
        tmp_path / "broker",
        site=GridPilotConfig.model_validate({"site": {"id": SITE}}),
        clients=["gateway"],
    )
    broker.workdir.mkdir()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize("setup", ["verified", "unknown_ca", "no_client_certificate"])
async def test_the_tls_handshake_is_checked_with_the_sites_tls_settings(
    tls_broker: ProductionBroker, tmp_path: Path, setup: str
) -> None:
    cert, key = tls_broker.cert("gateway")
    tls: dict[str, str] = {"cert_file": str(cert), "key_file": str(key)}
    if setup != "unknown_ca":
        tls["ca_file"] = str(tls_broker.ca)
    if setup == "no_client_certificate":
        tls = {"ca_file": str(tls_broker.ca)}
    directory = tmp_path / "site"
    directory.mkdir(mode=0o700)
    site_file = directory / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": {"id": SITE},
                "broker": {"url": f"mqtts://127.0.0.1:{tls_broker.tls_port}", "tls": tls},
            }
        )
    )
    report = await run_doctor(load_config(site_file), site_file, timeout_s=5)
    result = _one(report, "broker_tls")
    # The broker's own file (found through /proc) lists the TLS listener: its queue
    # settings are the production ones.
    assert _one(report, "broker_queues").verdict is Verdict.OK, report.render_text()
    if setup == "verified":
        assert result.verdict is Verdict.OK, report.render_text()
        assert result.finding.startswith("TLSv1.3 ")
        assert "certificate verified" in result.finding
        assert result.details["days_left"] > 300
        assert _one(report, "broker").verdict is not Verdict.FAIL, report.render_text()
        return
    assert report.exit_code == 1
    assert result.verdict is Verdict.FAIL, report.render_text()
    assert result.fix is not None
    if setup == "unknown_ca":
        assert "not trusted" in result.finding
        assert "broker.tls.ca_file" in result.fix
    else:
        assert "refused this client after the handshake" in result.finding
        assert "broker.tls.cert_file" in result.fix
    assert _one(report, "broker").verdict is Verdict.FAIL


def _samples_with_a_gap(now: int) -> list[Sample]:
    """A meter polled every 5 s for the last ten minutes, silent from -400 s to -280 s (5 s:
    the doctor may start a few seconds after the last sample on a busy machine, and the
    series must not look stopped then)."""
    return [
        Sample(SITE, "meter", "active_power_w", ts, float(ts % 1000))
        for ts in range(now - 600_000, now - 1_000, 5_000)
        if not now - 400_000 < ts < now - 280_000
    ]


def _server_site(directory: Path, storage: dict[str, Any]) -> Path:
    directory.mkdir(mode=0o700)
    site_file = directory / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": {"id": SITE},
                "broker": {"url": f"mqtt://127.0.0.1:{find_free_port()}"},
                "storage": storage,
                "devices": [
                    {
                        "id": "meter",
                        "host": "127.0.0.1",
                        "port": find_free_port(),
                        "poll_interval": 5,
                        "points": [{"point": "active_power_w", "address": 0, "type": "int32"}],
                    }
                ],
            }
        )
    )
    return site_file


def _assert_the_gap_and_the_server_clock(report: DoctorReport, server: str) -> None:
    text = report.render_text()
    storage = _one(report, "storage")
    assert storage.verdict is Verdict.OK, text
    assert len(storage.details["latency_ms"]) == 3
    gaps = _one(report, "data_gaps", "meter")
    # The two minutes of silence are found; the rest of the ten minutes is whole. The data
    # ends a second ago, so the device is not "stopped".
    assert gaps.verdict is Verdict.WARN, text
    assert len(gaps.details["gaps"]) == 1
    assert 118 <= gaps.details["gaps"][0]["seconds"] <= 122
    assert "1 gap(s)" in gaps.finding
    clock = _one(report, "clock")
    assert clock.verdict is Verdict.OK, text
    sources = [c["source"] for c in clock.details["comparisons"]]
    assert any(source.startswith(server) for source in sources), sources


async def test_a_postgresql_site_is_timed_and_its_gaps_found(tmp_path: Path) -> None:
    from tests import postgres_server  # noqa: PLC0415 - needs psycopg, an optional extra

    schema = postgres_server.fresh_schema()
    now = int(time.time() * 1000)
    async with postgres_server.storage(schema) as storage:
        await storage.write(_samples_with_a_gap(now))
    site_file = _server_site(
        tmp_path / "site",
        {
            "backend": "postgresql",
            "postgresql": {"dsn": postgres_server.dsn(), "schema_name": schema},
        },
    )
    report = await run_doctor(load_config(site_file), site_file, timeout_s=10)
    _assert_the_gap_and_the_server_clock(report, "PostgreSQL server")
    assert "PostgreSQL at" in _one(report, "storage").finding


async def test_an_influxdb_site_is_timed_and_its_gaps_found(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = influxdb.new_database_name("doctor")
    storage_config: dict[str, Any] = {
        "backend": "influxdb",
        "influxdb": {"url": influxdb.url, "database": database},
    }
    site_file = _server_site(tmp_path / "site", storage_config)
    config = load_config(site_file)
    now = int(time.time() * 1000)
    async with open_storage(config.storage, site_file.parent) as storage:
        await storage.write(_samples_with_a_gap(now))
    report = await run_doctor(config, site_file, timeout_s=10)
    _assert_the_gap_and_the_server_clock(report, "InfluxDB server")


async def test_a_running_service_with_a_tiny_open_file_limit_is_named(
    site: RunningSite, tmp_path: Path
) -> None:
    """What systemd's LimitNOFILE gave a running service is read from /proc/PID/limits."""
    data = site.variant()
    data["storage"]["path"] = "ingest.db"  # a database of its own: one writer per file
    site_file = site.write(tmp_path / "service", data)
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "run", "ingest", str(site_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_limit_open_files,
    )  # fmt: skip
    try:
        report = await run_doctor(load_config(site_file), site_file, timeout_s=5)
    finally:
        service.terminate()
        await asyncio.wait_for(service.wait(), timeout=30)
    text = report.render_text()
    limits = _by(report, "open_files")
    assert limits[0].subject == "this shell"
    running = [r for r in limits if r.subject.startswith(f"process {service.pid} (")]
    assert len(running) == 1, text
    assert running[0].verdict is Verdict.FAIL
    assert "open-file limit 64 is below the" in running[0].finding
    assert running[0].fix is not None
    assert "LimitNOFILE=" in running[0].fix
    assert report.exit_code == 1


async def test_units_on_a_free_serial_line_are_probed(tmp_path: Path) -> None:
    """The simulated building as RTU units behind one pseudo-terminal line (the relay of
    the RTU tests): the line is free, every unit answers, and a unit id nobody has times
    out, said as such."""
    line = Line()
    line.start()
    try:
        async with SimulatedSite(speed=1.0, tick_s=0.05, rtu_port=line.device_port) as sim:
            data: dict[str, Any] = {
                "site": {"id": SITE},
                "broker": {"url": f"mqtt://127.0.0.1:{find_free_port()}"},
                **sim.rtu_site_config(line.gateway_port, SITE),
            }
            data["devices"].append(
                {
                    "id": "ghost",
                    "protocol": "modbus_rtu",
                    "bus": "sim-rs485",
                    "unit_id": 200,
                    "timeout": 0.2,
                    "retries": 0,
                    "points": [{"point": "active_power_w", "address": 0, "type": "int32"}],
                }
            )
            directory = tmp_path / "rtu"
            directory.mkdir(mode=0o700)
            site_file = directory / "site.yaml"
            site_file.write_text(yaml.safe_dump(data, sort_keys=False))
            report = await run_doctor(load_config(site_file), site_file, timeout_s=10)
    finally:
        line.close()
    text = report.render_text()
    bus = _one(report, "serial_bus", f"sim-rs485 ({line.gateway_port})")
    assert bus.verdict is Verdict.OK, text
    assert "is free" in bus.finding
    for device in sim.devices:
        assert _one(report, "device", device).verdict is Verdict.OK, text
    ghost = _one(report, "device", "ghost")
    assert ghost.verdict is Verdict.FAIL, text
    assert ghost.finding.startswith("timed out:")
    assert ghost.fix is not None
    assert "unit_id" in ghost.fix


async def test_the_demo_passes(tmp_path: Path) -> None:
    """`gridpilot demo` as a user starts it (embedded broker, SQLite), then `gridpilot doctor`
    on the site file it wrote, from another process."""
    data_dir = tmp_path / "demo"
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", "demo", "--duration", "90", "--data-dir",
        str(data_dir), "--mqtt-port", "0", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        banner = ""
        async with asyncio.timeout(60):
            while "Stop" not in banner:
                line = await demo.stdout.readline()
                assert line, f"the demo exited early: {banner}"
                banner += line.decode()
        site_file = data_dir / "site.yaml"
        expected = {d.id for d in load_config(site_file).devices}
        stored: set[str] = set()
        for _attempt in range(120):  # every device's first polls stored
            stored = await _stored_devices_of(data_dir / "gridpilot.db", "demo")
            if stored >= expected:
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"the demo stored nothing from {sorted(expected - stored)} within 60 s")
        code, report, stderr = await _doctor_subprocess(site_file, tiny_limit=False)
    finally:
        demo.terminate()
        await asyncio.wait_for(demo.communicate(), timeout=30)
    assert code == 0, (stderr, json.dumps(report, indent=1))
    verdicts = {(c["check"], c["subject"]): c["verdict"] for c in report["checks"]}
    broker = next(c for c in report["checks"] if c["check"] == "broker")
    assert broker["verdict"] == "ok", broker
    devices = [s for c, s in verdicts if c == "device"]
    assert set(devices) == expected
    assert all(verdicts[("device", d)] == "ok" for d in devices), report
    assert all(verdicts[("data_gaps", d)] in ("ok", "warn") for d in devices), report
    assert verdicts[("permissions", str(data_dir))] == "ok"


async def test_peers_that_accept_and_never_answer_do_not_hang_it(tmp_path: Path) -> None:
    """A broker and a device that take the TCP connection and then say nothing (a hung
    process, a wrong service on the port): each is named within the timeout."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    directory = tmp_path / "silent"
    directory.mkdir(mode=0o700)
    site_file = directory / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": {"id": SITE},
                "broker": {"url": f"mqtt://127.0.0.1:{port}"},
                "devices": [
                    {
                        "id": "meter",
                        "host": "127.0.0.1",
                        "port": port,
                        "timeout": 0.3,
                        "points": [{"point": "active_power_w", "address": 0, "type": "int32"}],
                    }
                ],
            }
        )
    )
    try:
        started = time.monotonic()
        report = await run_doctor(load_config(site_file), site_file, timeout_s=2)
        took = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    text = report.render_text()
    # Not a performance figure: a hang would never end. Each check is bounded by the
    # timeout (2 s) plus the wait for retained states (2 s); the rest is slack for load.
    assert took < 30, text
    broker = _one(report, "broker")
    assert broker.verdict is Verdict.FAIL, text
    assert "no MQTT session" in broker.finding or "did not settle" in broker.finding
    assert broker.fix is not None
    device = _one(report, "device", "meter")
    assert device.verdict is Verdict.FAIL, text
    assert device.finding.startswith("timed out:"), text
