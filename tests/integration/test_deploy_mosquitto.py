"""deploy/mosquitto/gridpilot.conf, the shipped production broker configuration: it is what
``gridpilot deploy mosquitto`` renders, and run with only its paths and ports moved into the
test's directory it loads, refuses anonymous clients, admits users of its password file, and
queues far more than Mosquitto's default 1000 QoS 1 messages for a persistent subscriber
that is away. (TLS, certificates and the ACL: test_mqtt_security.py.)"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridpilot.cli.main import cli
from gridpilot.ops.mosquitto import BrokerLayout, render_acl, render_broker_config
from tests.production_broker import ProductionBroker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "mosquitto"
USER, PASSWORD = "ingest", "correct horse battery staple"
PUBLISHER, PUBLISHER_PASSWORD = "gateway", "another long passphrase"  # the ACL's writer
BACKLOG = 5_000  # five times Mosquitto's default max_queued_messages


def test_shipped_files_are_what_deploy_mosquitto_renders() -> None:
    assert (SHIPPED / "gridpilot.conf").read_text() == render_broker_config(BrokerLayout())
    assert (SHIPPED / "gridpilot.acl").read_text() == render_acl()
    conf = (SHIPPED / "gridpilot.conf").read_text().splitlines()
    for line in (
        "per_listener_settings true",
        "persistence true",
        "max_queued_messages 1000000",
        "max_connections 5000",
        "listener 8883",
        "tls_version tlsv1.3",
        "require_certificate true",
        "use_identity_as_username true",
    ):
        assert line in conf
    assert conf.count("allow_anonymous false") == 2  # each listener, per_listener_settings


def test_deploy_mosquitto_writes_a_site_config_and_acl(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: {id: plant}\n"
        "devices:\n"
        "  - {id: meter, host: 10.0.0.5, points: [{point: active_power_w, address: 0}]}\n"
        "  - {id: sensor-1, protocol: mqtt, points: [{point: temperature_degc}]}\n"
    )
    out = tmp_path / "etc"
    result = CliRunner().invoke(cli, ["deploy", "mosquitto", str(site), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "still needed" in result.output  # no certificates issued yet
    acl = (out / "acl").read_text().splitlines()
    # The gateway may publish the Modbus meter's telemetry, not the MQTT sensor's.
    assert "topic write gridpilot/v1/plant/meter/telemetry" in acl
    assert "topic write gridpilot/v1/plant/sensor-1/telemetry" not in acl
    assert "pattern write gridpilot/v1/plant/%u/telemetry" in acl
    conf = (out / "mosquitto.conf").read_text()
    assert f"acl_file {out.absolute() / 'acl'}" in conf
    assert f"cafile {out.absolute() / 'ca.crt'}" in conf


@pytest.fixture
def production_broker(tmp_path: Path) -> Iterator[int]:
    broker = ProductionBroker(tmp_path, users={USER: PASSWORD, PUBLISHER: PUBLISHER_PASSWORD})
    broker.start()
    yield broker.local_port
    broker.stop()


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
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", PUBLISHER,
             "-P", PUBLISHER_PASSWORD,
             "-q", "1", "-t", topic, "-l"],
            input="\n".join(lines.splitlines()[chunk : chunk + 1000]).encode(),
            check=True, timeout=60,
        )  # fmt: skip
    received = sub(
        port, "-q", "1", "-c", "-i", "slow-ingest", "-t", topic, "-C", str(BACKLOG), "-W", "20"
    )
    assert received.returncode == 0, received.stderr
    assert len(received.stdout.splitlines()) == BACKLOG


def test_only_the_utility_client_may_write_the_grid_controls_the_controller_reads(
    tmp_path: Path,
) -> None:
    # The controller obeys grid/controls at grid-operator priority: with the generic ACL the
    # 2030.5 client's user writes them and the controller reads them; the gateway (a
    # service with write rights elsewhere) cannot forge them.
    users = {"ieee2030_5": "utility pass phrase", "controller": "controller pass phrase"}
    users[PUBLISHER] = PUBLISHER_PASSWORD
    broker = ProductionBroker(tmp_path, users=users)
    broker.start()
    try:
        port, topic = broker.local_port, "gridpilot/v1/hq/grid/controls"

        def publish(user: str, message: str) -> None:
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user,
                 "-P", users[user], "-q", "1", "-r", "-t", topic, "-m", message],
                check=True, timeout=30,
            )  # fmt: skip

        publish(PUBLISHER, "forged by the gateway")
        publish("ieee2030_5", "from the utility client")
        publish(PUBLISHER, "forged again")
        received = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", "controller",
             "-P", users["controller"], "-t", topic, "-C", "1", "-W", "5"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert received.returncode == 0, received.stderr
        assert received.stdout.decode().strip() == "from the utility client"
    finally:
        broker.stop()
