"""MQTT security end to end (issue 7, item 4): the production broker config on a real
Mosquitto, certificates the test issues itself, GridPilot's own client and ingest.

- TLS 1.3 with a client certificate connects; nothing connects to the TLS listener without
  one (not even with a valid user name and password); a TLS 1.2-only client is refused.
- With the ACL, a device with a valid certificate cannot publish another device's
  telemetry: MQTT 5 gets "not authorised", MQTT 3.1.1 is dropped silently, and a service
  subscribed to the site sees only the device's own messages.
- Without the ACL (the broker delivers the forged message), ingest still refuses it: the
  message is not signed with the key the site registers for the other device.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gridpilot.bus.client import BrokerAddress, BusClient, Message, MqttVersion
from gridpilot.bus.codec import DeadLetter, decode_dead_letter, encode_telemetry
from gridpilot.bus.errors import BusRefusedError
from gridpilot.cli.main import cli
from gridpilot.config import load_config
from gridpilot.config.models import BrokerConfig, GridPilotConfig, StorageConfig
from gridpilot.ingest.service import IngestService
from gridpilot.ingest.validation import RejectReason
from gridpilot.model import DataType, SeriesKey, Topic
from gridpilot.sim.site import SimulatedSite
from gridpilot.storage import open_storage
from gridpilot.storage.base import Storage
from gridpilot.storage.sqlite import SqliteStorage
from tests.production_broker import ProductionBroker

pytestmark = pytest.mark.integration

SITE = "plant"
NOW = 1_795_694_400_000  # 2026-11-26T12:00:00Z
SERVICE_PASSWORD = "a long passphrase for the ingest service"  # noqa: S105 -- test broker
DEVICES = ("meter-a", "meter-b")


def site_config(tmp_path: Path, *, require_signatures: bool) -> GridPilotConfig:
    """Two MQTT-native meters, each signing with its own key file (mode 0600)."""
    devices: list[dict[str, Any]] = []
    for device in DEVICES:
        key_file = tmp_path / f"{device}.sig"
        if not key_file.exists():
            key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
            key_file.chmod(0o600)
        devices.append(
            {
                "id": device,
                "protocol": "mqtt",
                "signing_key_file": str(key_file),
                "points": [{"point": "active_power_w"}],
            }
        )
    return GridPilotConfig.model_validate(
        {
            "site": {"id": SITE},
            "ingest": {"require_signatures": require_signatures},
            "storage": {"flush_interval": "PT0.05S"},
            "devices": devices,
        }
    )


def start_broker(tmp_path: Path, *, acl: bool) -> ProductionBroker:
    broker = ProductionBroker(
        tmp_path / "broker",
        site=site_config(tmp_path, require_signatures=True),
        clients=[*DEVICES, "nobody"],
        users={"ingest": SERVICE_PASSWORD},
        acl=acl,
    )
    broker.workdir.mkdir()
    broker.start()
    return broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ProductionBroker]:
    started = start_broker(tmp_path, acl=True)
    yield started
    started.stop()


@pytest.fixture
def broker_without_acl(tmp_path: Path) -> Iterator[ProductionBroker]:
    started = start_broker(tmp_path, acl=False)
    yield started
    started.stop()


def device_address(
    broker: ProductionBroker,
    device: str | None,
    *,
    signing_key: Path | None = None,
    mqtt_version: MqttVersion | None = None,
) -> BrokerAddress:
    """How a device logs in: TLS to the broker's 8883-style listener with its certificate
    (none when ``device`` is None), through the site file's broker section."""
    tls: dict[str, Any] = {"ca_file": str(broker.ca)}
    if device is not None:
        cert, key = broker.cert(device)
        tls |= {"cert_file": str(cert), "key_file": str(key)}
    config = BrokerConfig.model_validate(
        {
            "url": f"mqtts://127.0.0.1:{broker.tls_port}",
            "tls": tls,
            "signing_key_file": str(signing_key) if signing_key else None,
            "connect_timeout": "PT5S",
        }
    )
    address = BrokerAddress.from_config(config)
    if mqtt_version is not None:
        address = BrokerAddress(
            address.host,
            address.port,
            tls=True,
            mqtt_version=mqtt_version,
            ssl_context=address.ssl_context,
            signing_key=address.signing_key,
        )
    return address


def service_address(broker: ProductionBroker) -> BrokerAddress:
    """A GridPilot service on this host: the loopback listener, user and password."""
    return BrokerAddress("127.0.0.1", broker.local_port, "ingest", SERVICE_PASSWORD)


def client(address: BrokerAddress, name: str, **kwargs: Any) -> BusClient:
    return BusClient(
        address,
        f"{name}-{uuid.uuid4().hex[:6]}",
        connect_timeout_s=5,
        backoff_max_s=1,
        **kwargs,
    )


@asynccontextmanager
async def collect(address: BrokerAddress, topic_filter: str) -> AsyncIterator[list[Message]]:
    got: list[Message] = []
    async with client(address, "watch") as watcher:
        await watcher.wait_connected(5)
        await watcher.subscribe(topic_filter, qos=1)

        async def run() -> None:
            async for message in watcher.messages():
                got.append(message)

        task = asyncio.create_task(run())
        try:
            yield got
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def telemetry(value: float) -> bytes:
    return encode_telemetry(NOW, {"active_power_w": value})


async def eventually(condition: Any, limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 -- polling counters that have no event
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- TLS


def raw_tls(broker: ProductionBroker, context: ssl.SSLContext) -> str:
    """Handshake with the TLS listener and read until the broker speaks or closes;
    returns the negotiated version. TLS 1.3 reports a refused client certificate only
    after the handshake, on the first read."""
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        version = tls.version() or ""
        # An MQTT 3.1.1 CONNECT (client id "raw", clean session, keepalive 30 s).
        tls.sendall(bytes([0x10, 15, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 3]) + b"raw")
        answer = tls.recv(4)
        if not answer:
            raise ConnectionResetError("the broker closed the connection")
        assert answer[0] == 0x20, answer  # CONNACK
        return version


def tls_context(broker: ProductionBroker, device: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(broker.ca))
    if device is not None:
        context.load_cert_chain(*broker.cert(device))
    return context


def test_tls13_handshake_with_a_client_certificate_succeeds(broker: ProductionBroker) -> None:
    assert raw_tls(broker, tls_context(broker, "meter-a")) == "TLSv1.3"


def test_a_tls12_only_client_is_refused(broker: ProductionBroker) -> None:
    context = tls_context(broker, "meter-a")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"):
        raw_tls(broker, context)


def test_without_a_certificate_nothing_connects_to_the_tls_listener(
    broker: ProductionBroker,
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_tls(broker, tls_context(broker, None))
    # A valid user name and password are no credential there either.
    result = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.tls_port),
         "--cafile", str(broker.ca), "-u", "ingest", "-P", SERVICE_PASSWORD,
         "-t", f"gridpilot/v1/{SITE}/meter-a/telemetry", "-m", "x", "-q", "1"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    # The broker logged the refusal of the certificate-less client.
    assert "peer did not return a certificate" in broker.log()


async def test_gridpilot_client_without_a_certificate_is_told_what_to_do(
    broker: ProductionBroker,
) -> None:
    async with client(device_address(broker, None), "nocert") as bus:
        with pytest.raises(BusRefusedError, match="requires a client certificate"):
            await bus.wait_connected(10)


async def test_gridpilot_client_with_a_certificate_connects_over_tls13(
    broker: ProductionBroker,
) -> None:
    async with (
        collect(service_address(broker), f"gridpilot/v1/{SITE}/+/telemetry") as seen,
        client(device_address(broker, "meter-a"), "meter-a") as bus,
    ):
        await bus.wait_connected(10)
        assert bus.mqtt_version is MqttVersion.V5
        await bus.publish(str(Topic.telemetry(SITE, "meter-a")), telemetry(1.0))
        await bus.flush(10)
        await eventually(lambda: len(seen) == 1)
    assert bus.stats.published == 1


def test_a_world_readable_client_key_is_refused_with_the_fix(broker: ProductionBroker) -> None:
    _cert, key = broker.cert("meter-a")
    key.chmod(0o644)
    with pytest.raises(BusRefusedError, match=f"chmod 600 {key}"):
        device_address(broker, "meter-a")


def test_the_certificates_verify_with_openssl(broker: ProductionBroker) -> None:
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(broker.ca), "-purpose", "sslclient",
         str(broker.cert("meter-a")[0])],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    server = subprocess.run(
        ["openssl", "verify", "-CAfile", str(broker.ca), "-purpose", "sslserver",
         str(broker.pki / "server.crt")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert server.returncode == 0, server.stdout + server.stderr
    assert broker.cert("meter-a")[1].stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------- ACL


@pytest.mark.parametrize("version", [MqttVersion.V5, MqttVersion.V311])
async def test_the_acl_refuses_a_device_publishing_another_devices_telemetry(
    broker: ProductionBroker, version: MqttVersion
) -> None:
    own, other = Topic.telemetry(SITE, "meter-a"), Topic.telemetry(SITE, "meter-b")
    async with collect(service_address(broker), f"gridpilot/v1/{SITE}/+/telemetry") as seen:
        address = device_address(broker, "meter-a", mqtt_version=version)
        async with client(address, "meter-a") as meter_a:
            await meter_a.wait_connected(10)
            await meter_a.publish(str(other), telemetry(666.0))
            await meter_a.publish(str(own), telemetry(1.0))
            await meter_a.flush(10)
            await eventually(lambda: any(m.topic == str(own) for m in seen))
            # The own message came after the forged one on the same connection: had the
            # broker delivered the forged one, it would have arrived first.
            await asyncio.sleep(0.2)
        assert [m.topic for m in seen] == [str(own)]
        if version is MqttVersion.V5:
            # MQTT 5 says so: PUBACK reason 0x87 "not authorised".
            assert meter_a.stats.publish_refused == 1
            assert meter_a.stats.published == 1
        else:
            # MQTT 3.1.1 has no way to say so: the broker acknowledges and drops it.
            assert meter_a.stats.published == 2


# ---------------------------------------------------------------------------- ingest


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_storage(StorageConfig(path=tmp_path / "ingest.db"), tmp_path) as opened:
        yield opened


async def stored(storage: Storage, device: str) -> list[float]:
    rows = await storage.history(
        SeriesKey(SITE, device, "active_power_w"), NOW - 60_000, NOW + 60_000
    )
    return [row.value for row in rows]


async def test_without_the_acl_ingest_refuses_a_device_publishing_for_another(
    broker_without_acl: ProductionBroker, storage: Storage, tmp_path: Path
) -> None:
    broker = broker_without_acl
    config = site_config(tmp_path, require_signatures=True)
    own, other = Topic.telemetry(SITE, "meter-a"), Topic.telemetry(SITE, "meter-b")
    letters: list[DeadLetter] = []
    async with (
        IngestService(config, service_address(broker), storage, clock=lambda: NOW) as ingest,
        collect(service_address(broker), f"gridpilot/v1/{SITE}/+/telemetry") as seen,
        collect(service_address(broker), str(Topic.deadletter(SITE))) as dead,
    ):
        # meter-a logs in with its own certificate and signs with its own key.
        address = device_address(broker, "meter-a", signing_key=tmp_path / "meter-a.sig")
        async with client(address, "meter-a") as meter_a:
            await meter_a.wait_connected(10)
            await meter_a.publish(str(other), telemetry(666.0))
            await meter_a.publish(str(own), telemetry(1.0))
            await meter_a.flush(10)
        # meter-b, properly signed, is stored: the check does not stop the real device.
        address_b = device_address(broker, "meter-b", signing_key=tmp_path / "meter-b.sig")
        async with client(address_b, "meter-b") as meter_b:
            await meter_b.wait_connected(10)
            await meter_b.publish(str(other), encode_telemetry(NOW + 1000, {"active_power_w": 2.0}))
            await meter_b.flush(10)
        await eventually(lambda: ingest.stats.samples_written == 2 and len(dead) == 1)
        letters = [decode_dead_letter(m.payload) for m in dead]
    # Without the ACL the broker did deliver the forged message...
    assert meter_a.stats.publish_refused == 0
    assert sum(m.topic == str(other) for m in seen) == 2
    # ...and ingest refused it: it is not signed with meter-b's key.
    assert ingest.stats.rejections[RejectReason.UNAUTHENTICATED] == 1
    assert letters[0].topic == str(other)
    assert letters[0].rejections[0].reason == "unauthenticated"
    assert await stored(storage, "meter-b") == [2.0]
    assert await stored(storage, "meter-a") == [1.0]


async def test_ingest_refuses_unsigned_telemetry_when_signatures_are_required(
    broker_without_acl: ProductionBroker, storage: Storage, tmp_path: Path
) -> None:
    broker = broker_without_acl
    config = site_config(tmp_path, require_signatures=True)
    async with IngestService(config, service_address(broker), storage, clock=lambda: NOW) as ingest:
        async with client(device_address(broker, "meter-a"), "meter-a") as meter_a:
            await meter_a.wait_connected(10)
            await meter_a.publish(str(Topic.telemetry(SITE, "meter-a")), telemetry(5.0))
            await meter_a.flush(10)
        await eventually(lambda: ingest.stats.rejections[RejectReason.UNAUTHENTICATED] == 1)
    assert await stored(storage, "meter-a") == []


async def test_ingest_will_not_start_when_a_devices_key_is_missing(
    broker_without_acl: ProductionBroker, storage: Storage, tmp_path: Path
) -> None:
    config = site_config(tmp_path, require_signatures=True)
    data = config.model_dump(mode="json")
    del data["devices"][1]["signing_key_file"]
    broken = GridPilotConfig.model_validate(data)
    with pytest.raises(BusRefusedError, match="'meter-b' has no signing_key"):
        IngestService(broken, service_address(broker_without_acl), storage)
    (tmp_path / "meter-a.sig").chmod(0o644)
    with pytest.raises(BusRefusedError, match="chmod 600"):
        IngestService(config, service_address(broker_without_acl), storage)


# ---------------------------------------------------------------------------- CLI


def test_deploy_certs_issues_a_ca_server_and_client_certificates(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    runner = CliRunner()
    first = runner.invoke(
        cli,
        ["deploy", "certs", str(out), "--server", "broker.plant.example", "--client", "meter-a"],
    )
    assert first.exit_code == 0, first.output
    assert "created CA" in first.output
    ca = (out / "ca.crt").read_bytes()
    # A device added later: the CA is reused, so earlier certificates stay valid.
    second = runner.invoke(cli, ["deploy", "certs", str(out), "--client", "meter-b"])
    assert second.exit_code == 0, second.output
    assert "reused CA" in second.output
    assert (out / "ca.crt").read_bytes() == ca
    for name in ("ca.key", "server.key", "meter-a.key", "meter-b.key"):
        assert (out / name).stat().st_mode & 0o777 == 0o600
    bad = runner.invoke(cli, ["deploy", "certs", str(out), "--client", "Meter/B"])
    assert bad.exit_code != 0
    assert "not a valid device id" in bad.output


# ---------------------------------------------------------------------------- run all


async def test_run_all_through_the_production_broker_with_signatures_required(
    tmp_path: Path,
) -> None:
    """The deployment the README describes, on one host: the services log in on the
    loopback listener as broker.username (the ACL's merged 'run all' user), the gateway
    signs the Modbus devices' telemetry with the services' key (a file relative to the site
    file), and ingest, requiring signatures, stores every point."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "services.key").write_text(base64.b64encode(os.urandom(32)).decode())
    (site_dir / "services.key").chmod(0o600)
    (site_dir / "broker.pw").write_text(SERVICE_PASSWORD)
    (site_dir / "broker.pw").chmod(0o600)
    async with SimulatedSite(base_port=0, speed=10.0) as sim:
        devices = sim.site_config("e2e-secure")
        for device in devices:
            device["poll_interval"] = 0.5
            device["timeout"] = 0.2
        data: dict[str, Any] = {
            "site": {"id": "e2e-secure"},
            "broker": {
                "username": "gridpilot",
                "password_file": "broker.pw",
                "signing_key_file": "services.key",
            },
            "ingest": {"require_signatures": True},
            "storage": {"path": "site.db", "flush_interval": 0.1},
            "devices": devices,
        }
        broker = ProductionBroker(
            tmp_path / "broker",
            site=GridPilotConfig.model_validate(data),
            users={"gridpilot": SERVICE_PASSWORD},
        )
        broker.workdir.mkdir()
        broker.start()
        try:
            data["broker"]["url"] = f"mqtt://127.0.0.1:{broker.local_port}"
            site_file = site_dir / "site.yaml"
            site_file.write_text(yaml.safe_dump(data))
            config = load_config(site_file)
            expected = {
                SeriesKey("e2e-secure", d.id, p.point)
                for d in config.devices
                for p in d.points
                if p.type is not DataType.STRING
            }
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gridpilot", "run", "all", str(site_file),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                seen: set[SeriesKey] = set()
                async with asyncio.timeout(40):
                    while not expected <= seen:
                        await asyncio.sleep(0.5)
                        if (site_dir / "site.db").exists():
                            async with SqliteStorage(site_dir / "site.db") as storage:
                                seen = {v.series for v in await storage.latest("e2e-secure")}
            finally:
                process.send_signal(signal.SIGTERM)
                _out, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
            assert process.returncode == 0, stderr.decode()
            assert b"unauthenticated" not in stderr, stderr.decode()
            assert b"refused" not in stderr, stderr.decode()
        finally:
            broker.stop()
