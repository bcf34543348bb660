"""Mosquitto configuration and ACL for a GridPilot site (``gridpilot deploy mosquitto``).

The broker has two listeners (``per_listener_settings true``: each has its own login rules):

- **local**, ``127.0.0.1:1883``: GridPilot's own services on this host log in with a user of
  the password file. Loopback only, so passwords never cross a network in clear text.
- **tls**, ``0.0.0.0:8883``: devices and gateways on other hosts. TLS 1.3 only; a client
  certificate signed by the site's CA is required and its Common Name is the MQTT user
  name (``use_identity_as_username``). Without a certificate nothing connects.

Both listeners use the same ACL: a device (user = its id) may publish only its own
``telemetry``, ``state`` and ``command/result`` and read only its own ``command``; each
service user gets what that service publishes and reads, nothing more. Mosquitto checks the
ACL on every PUBLISH: a message to a topic the user may not write is dropped (MQTT 3.1.1
cannot say so; MQTT 5 answers the PUBACK with reason 0x87 "not authorised").

Pure: the renderers are functions of their arguments. ``deploy/mosquitto/gridpilot.conf``
is ``render_broker_config(BrokerLayout())``, checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gridpilot.config.models import DeviceProtocol, GridPilotConfig
from gridpilot.model.topics import PREFIX

__all__ = [
    "SERVICE_USERS",
    "BrokerLayout",
    "render_acl",
    "render_broker_config",
]

SERVICE_USERS: Final = ("gateway", "ingest", "controller", "api")
"""Broker users of GridPilot's services when each runs as its own process (``gridpilot run
SERVICE``); ``gridpilot run all`` logs in once, as ``broker.username``."""

MAX_QUEUED_MESSAGES: Final = 1_000_000
MAX_TLS_CONNECTIONS: Final = 5_000


@dataclass(frozen=True, slots=True)
class BrokerLayout:
    """Where the broker's files are and which ports it serves. The defaults are a Debian
    install (``apt-get install mosquitto``) with GridPilot's files in
    ``/etc/mosquitto/gridpilot/``."""

    directory: Path = Path("/etc/mosquitto/gridpilot")
    """Holds ``ca.crt``, ``server.crt``, ``server.key``, ``passwd`` and ``acl``."""
    persistence_location: Path = Path("/var/lib/mosquitto")
    pid_file: Path | None = Path("/run/mosquitto/mosquitto.pid")
    log_file: Path | None = None
    """None: log to syslog."""
    local_port: int = 1883
    tls_port: int = 8883
    tls_bind: str | None = None
    """Address of the TLS listener; None: every interface (the firewall limits who gets in,
    see ``gridpilot deploy firewall``)."""
    acl: bool = True
    """False leaves ``acl_file`` out: every logged-in client may publish anywhere (only for
    showing what ingest's own checks catch; never in production)."""
    run_as: str | None = None
    """``user`` option: the account mosquitto drops to when started as root."""

    def path(self, name: str) -> Path:
        return self.directory / name


def render_broker_config(layout: BrokerLayout) -> str:
    """The ``mosquitto.conf`` (Mosquitto 2.x) for ``layout``."""
    d = layout
    lines = [
        "# Mosquitto 2.x for GridPilot in production, written by 'gridpilot deploy mosquitto'.",
        "#",
        "# Install (README, 'Securing the broker'):",
        "#   apt-get install mosquitto",
        f"#   gridpilot deploy certs {d.directory} --server BROKER-HOST --client DEVICE ...",
        f"#   gridpilot deploy mosquitto site.yaml --output {d.directory}",
        f"#   mosquitto_passwd -c {d.path('passwd')} ingest     (and gateway, controller, api)",
        f"#   chown -R root:mosquitto {d.directory}; chmod 0640 {d.path('server.key')} "
        f"{d.path('passwd')}",
        f"#   ln -s {d.path('mosquitto.conf')} /etc/mosquitto/conf.d/  -- or replace",
        "#   /etc/mosquitto/mosquitto.conf with it (Debian's file sets options this one sets).",
        "# Apply: systemctl restart mosquitto. Check: gridpilot doctor site.yaml",
        "",
        "# Each listener below has its own authentication and ACL settings.",
        "per_listener_settings true",
        "",
        "# --- Persistence ----------------------------------------------------------------",
        "# Keep sessions and queued QoS 1 messages across broker restarts: ingest uses a",
        "# persistent session and acknowledges a message only after storing it, so a restart",
        "# loses nothing. Saved every autosave_interval seconds and on a clean shutdown.",
        "persistence true",
        f"persistence_location {d.persistence_location}/",
        "autosave_interval 60",
        "# A persistent session of a client that never comes back (a decommissioned ingest",
        "# instance) is dropped after this long, with the messages queued for it.",
        "persistent_client_expiration 14d",
        "",
        "# --- Flow control ---------------------------------------------------------------",
        "# Mosquitto's default max_queued_messages (1000) silently DROPS QoS 1 messages for a",
        "# subscriber that falls behind -- a slow or restarting ingest would lose data",
        "# (DOMAIN.md, 'MQTT'). 1,000,000 messages of ~200 B of telemetry is ~200 MB of broker",
        "# memory at worst; the byte bound caps it whatever the message size. Size them to the",
        "# longest ingest outage to ride out: messages/s of the site x seconds.",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "max_queued_bytes 536870912",
        "# QoS 1 messages in flight to one client before the broker waits for PUBACKs; the",
        "# default 20 throttles MQTT 3.1.1 subscribers to 20 messages per round trip (MQTT 5",
        "# clients, GridPilot's by default, announce their own Receive Maximum).",
        "max_inflight_messages 1000",
        "# Largest packet accepted; ingest rejects telemetry over ingest.max_payload_bytes",
        "# (64 KiB) itself. This is the broker's own guard and must stay above that setting.",
        "max_packet_size 1048576",
        "# Telemetry is small and latency matters more than packet count.",
        "set_tcp_nodelay true",
        "",
        "# --- Local listener: GridPilot's services on this host ----------------------------",
        "# Loopback only: passwords never cross a network in clear text here.",
        f"listener {d.local_port} 127.0.0.1",
        "max_connections 200",
        "allow_anonymous false",
        f"password_file {d.path('passwd')}",
    ]
    if d.acl:
        lines.append(f"acl_file {d.path('acl')}")
    lines += [
        "",
        "# --- TLS listener: devices and gateways on the network ---------------------------",
        "# TLS 1.3 only. A client certificate signed by cafile is required; its Common Name",
        "# is the user name the ACL sees (a device's id). Without one, nothing connects.",
        f"listener {d.tls_port}" + (f" {d.tls_bind}" if d.tls_bind else ""),
        "# Each connection is a file descriptor: mosquitto's LimitNOFILE must exceed this",
        "# (Debian's unit leaves the default 1024; see README, 'Securing the broker').",
        f"max_connections {MAX_TLS_CONNECTIONS}",
        "tls_version tlsv1.3",
        f"cafile {d.path('ca.crt')}",
        f"certfile {d.path('server.crt')}",
        f"keyfile {d.path('server.key')}",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ]
    if d.acl:
        lines.append(f"acl_file {d.path('acl')}")
    lines += [
        "",
        "# --- Logging ----------------------------------------------------------------------",
    ]
    if d.pid_file is not None:
        lines.append(f"pid_file {d.pid_file}")
    lines.append(f"log_dest file {d.log_file}" if d.log_file is not None else "log_dest syslog")
    lines += [
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "log_timestamp true",
    ]
    if d.run_as is not None:
        lines.append(f"user {d.run_as}")
    return "\n".join(lines) + "\n"


def render_acl(config: GridPilotConfig | None = None, *, source: str = "") -> str:
    """The ACL file: a site's when ``config`` is given (its site id, its Modbus devices for
    the gateway, its controller), else a generic one for any site (``+``).

    Rules are allow-lists: what is not granted is refused. A ``pattern`` applies to every
    user with ``%u`` replaced by the user name (Mosquitto refuses the substitution for
    names containing ``+``, ``#`` or ``/``, so a name cannot widen its own pattern).
    """
    site = config.site.id if config is not None else "+"
    base = f"{PREFIX}/{site}"
    if config is not None:
        modbus = [d.id for d in config.devices if d.protocol is not DeviceProtocol.MQTT]
        gateway_id = config.gateway.id
        controller = config.control.id if config.control is not None else None
    else:
        modbus, gateway_id, controller = ["+"], "+", "+"

    gateway = [f"topic read {base}/+/command", f"topic write {base}/events"]
    gateway.append(f"topic write {base}/{gateway_id}/state")
    for device in modbus:
        gateway += [
            f"topic write {base}/{device}/telemetry",
            f"topic write {base}/{device}/state",
            f"topic write {base}/{device}/command/result",
        ]
    ingest = [
        f"topic read {base}/+/telemetry",
        f"topic read {base}/events",
        f"topic write {base}/deadletter",
    ]
    controller_rules = [
        f"topic read {base}/grid/controls",
        f"topic read {base}/+/telemetry",
        f"topic read {base}/+/state",
        f"topic read {base}/+/command/result",
        f"topic write {base}/+/command",
        f"topic write {base}/events",
    ]
    if controller is not None:
        controller_rules += [
            f"topic read {base}/{controller}/request",
            f"topic write {base}/{controller}/request/result",
            f"topic write {base}/{controller}/state",
            f"topic write {base}/{controller}/telemetry",
        ]
    api = [
        f"topic read {base}/#",
        f"topic write {base}/+/command",
        f"topic write {base}/+/request",
        f"topic write {base}/events",
    ]
    # The utility's client is the only writer of the controls the controller obeys at
    # grid-operator priority: a device or another service that could write them could
    # lift an export limit.
    utility = [
        f"topic write {base}/grid/controls",
        f"topic write {base}/ieee2030_5/status",
        f"topic write {base}/events",
    ]
    users: dict[str, list[str]] = {
        "gateway": gateway,
        "ingest": ingest,
        "controller": controller_rules,
        "api": api,
    }
    if config is None or config.ieee2030_5 is not None:
        users["ieee2030_5"] = utility
    header = [
        "# Mosquitto ACL for GridPilot"
        + (f" site {site}" if config is not None else " (any site)")
        + (f", generated from {source}" if source else "")
        + " by 'gridpilot deploy mosquitto'.",
        "# Allow-lists: anything not granted here is refused. 'read' covers subscribing.",
        "",
        "# Devices and remote gateways, whose user name is their certificate's Common Name:",
        "# each may publish only its own telemetry, state and command results, and read only",
        "# its own commands.",
        f"pattern write {base}/%u/telemetry",
        f"pattern write {base}/%u/state",
        f"pattern write {base}/%u/command/result",
        f"pattern read {base}/%u/command",
        "",
        "# GridPilot's services, one user each (gridpilot run SERVICE).",
    ]
    body: list[str] = []
    for name, rules in users.items():
        body += [f"user {name}", *dict.fromkeys(rules), ""]
    all_user = config.broker.username if config is not None else None
    if all_user is not None and all_user not in users:
        # 'gridpilot run all' logs in once with broker.username: it needs every service's
        # rules (duplicates removed, order kept).
        merged = list(dict.fromkeys(r for rules in users.values() for r in rules))
        body += [
            "# broker.username of the site file: every service in one process (run all).",
            f"user {all_user}",
            *merged,
            "",
        ]
    return "\n".join(header + body)
