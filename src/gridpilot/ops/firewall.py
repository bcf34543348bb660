"""An nftables ruleset for a GridPilot host, from the site file's ``network`` section.

What the seed asks (ARCHITECTURE.md, "CLI": ``gridpilot deploy firewall CONFIG``): MQTT only
from the sensor subnets, the API only from the management subnets, everything else dropped.
The ruleset lives in its own table (``inet gridpilot``) so it never edits another table; a
packet must be accepted by every base chain on its hook, so this table's ``policy drop``
holds whatever other tables say.

Inbound, in order:

1. ``ct state invalid`` dropped; ``established,related`` accepted (answers to this host's
   own connections: Modbus polls, the 2030.5 client, package updates);
2. loopback accepted (the services talk to each other over 127.0.0.1);
3. the ICMP/ICMPv6 that networks need to work (path MTU, unreachable, IPv6 neighbour and
   router discovery) and rate-limited echo;
4. MQTT ports from the sensor subnets, the API port and SSH from the management subnets;
5. anything else: counted and dropped.

Outbound traffic is not filtered: the gateway polls devices and the controller reaches the
utility's 2030.5 server, wherever the site puts them. Forwarding is dropped (an EMS is not a
router).

Pure: ``render_ruleset`` is a function of the configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from gridpilot.config.models import GridPilotConfig

__all__ = ["FirewallConfigError", "render_ruleset"]

TABLE = "gridpilot"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FirewallConfigError(ValueError):
    """The site's ``network`` section cannot give a safe ruleset (the message says why)."""


def render_ruleset(config: GridPilotConfig, *, source: str = "") -> str:
    """The nftables ruleset (``nft -f`` input) for ``config``.

    Raises ``FirewallConfigError`` when no management subnet is set: the ruleset would lock
    every operator out of SSH and the API.
    """
    network = config.network
    if not network.management_subnets:
        raise FirewallConfigError(
            "network.management_subnets is empty: the ruleset would drop SSH and the API "
            "for everyone, locking operators out. Add the operators' subnets, e.g.\n"
            "network:\n  management_subnets: [10.10.0.0/24]\n  sensor_subnets: [10.20.0.0/22]"
        )
    if config.api.port == 0:
        raise FirewallConfigError(
            "api.port is 0 (any free port): a firewall needs the port the API listens on; "
            "set api.port (8080 by default)"
        )
    sensors = network.sensor_subnets
    management = network.management_subnets
    api_port = config.api.port
    lines = [
        f"# GridPilot firewall for site {config.site.id}"
        + (f", generated from {source}" if source else ""),
        "# by 'gridpilot deploy firewall'. Load: nft -f THIS_FILE (replaces only the",
        f"# table inet {TABLE}). Check without loading: nft -c -f THIS_FILE.",
        "",
        # Declaring then deleting the table makes the file idempotent: loading it again
        # replaces the old rules instead of appending to them ('destroy' needs nft 1.0.8).
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        "",
        f"table inet {TABLE} {{",
        *_set("sensor_v4", "ipv4_addr", _of_version(sensors, 4)),
        *_set("sensor_v6", "ipv6_addr", _of_version(sensors, 6)),
        *_set("management_v4", "ipv4_addr", _of_version(management, 4)),
        *_set("management_v6", "ipv6_addr", _of_version(management, 6)),
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        "",
        "        ct state invalid drop",
        "        ct state established,related accept",
        '        iif "lo" accept',
        "",
        "        # What IPv4 and IPv6 need to work; echo rate-limited.",
        "        ip protocol icmp icmp type { destination-unreachable, time-exceeded, "
        "parameter-problem } accept",
        "        ip protocol icmp icmp type echo-request limit rate 10/second accept",
        "        ip6 nexthdr icmpv6 icmpv6 type { destination-unreachable, packet-too-big, "
        "time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, "
        "nd-neighbor-advert } accept",
        "        ip6 nexthdr icmpv6 icmpv6 type echo-request limit rate 10/second accept",
        "",
    ]
    if network.mqtt_ports and sensors:
        lines.append("        # MQTT: devices and gateways, from the sensor subnets only.")
        lines += _allow("sensor", sensors, network.mqtt_ports)
    else:
        lines.append(
            "        # MQTT: no sensor subnet configured, so no remote client reaches the broker."
        )
    lines.append("        # The API and dashboard, from the management subnets only.")
    lines += _allow("management", management, (api_port,))
    if network.ssh_port is not None:
        lines.append("        # SSH, from the management subnets only.")
        lines += _allow("management", management, (network.ssh_port,))
    lines += [
        "",
        '        counter comment "dropped by policy"',
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "    }",
        "",
        "    chain output {",
        "        type filter hook output priority filter; policy accept;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def _of_version(networks: Iterable[Network], version: int) -> list[Network]:
    return [n for n in networks if n.version == version]


def _set(name: str, addr_type: str, networks: Sequence[Network]) -> list[str]:
    if not networks:
        return []
    elements = ", ".join(str(n) for n in networks)
    return [
        f"    set {name} {{",
        f"        type {addr_type}; flags interval;",
        f"        elements = {{ {elements} }}",
        "    }",
        "",
    ]


def _allow(group: str, networks: Sequence[Network], ports: Iterable[int]) -> list[str]:
    port_list = ", ".join(str(p) for p in sorted(set(ports)))
    ports_expr = f"{{ {port_list} }}" if "," in port_list else port_list
    out = []
    if _of_version(networks, 4):
        out.append(f"        ip saddr @{group}_v4 tcp dport {ports_expr} accept")
    if _of_version(networks, 6):
        out.append(f"        ip6 saddr @{group}_v6 tcp dport {ports_expr} accept")
    return out
