"""``gridpilot deploy firewall``: the ruleset is checked by nft, loaded into network
namespaces the test creates (never the host's own ruleset), and probed with real TCP
connections from addresses in and out of the configured subnets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gridpilot.config.models import GridPilotConfig
from gridpilot.ops.firewall import FirewallConfigError, render_ruleset

pytestmark = pytest.mark.integration

SITE = {
    "site": {"id": "plant"},
    "api": {"port": 8443},
    "network": {
        "sensor_subnets": ["10.20.0.0/22", "fd00:20::/64"],
        "management_subnets": ["10.10.0.0/24", "fd00:10::/64"],
    },
}


def nft() -> str:
    tool = shutil.which("nft") or "/usr/sbin/nft"
    if not Path(tool).exists():
        pytest.fail("nft not found: apt-get install nftables (scripts/test does)")
    return tool


def in_private_netns(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a network namespace of its own (``unshare -n``): whatever it
    loads dies with it, the host's ruleset is never touched."""
    return subprocess.run(
        ["unshare", "--net", *command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_site(tmp_path: Path, site: dict[str, object]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def gridpilot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpilot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_writes_a_ruleset_nft_accepts(tmp_path: Path) -> None:
    out = tmp_path / "gridpilot.nft"
    result = gridpilot("deploy", "firewall", str(write_site(tmp_path, SITE)), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"nft -f {out}" in result.stderr
    check = in_private_netns(nft(), "-c", "-f", str(out))
    assert check.returncode == 0, check.stderr

    # Loaded (in a private namespace) it is what the seed asks for.
    loaded = in_private_netns(
        "sh", "-c", f"{nft()} -f {out} && {nft()} -f {out} && {nft()} -j list table inet gridpilot"
    )
    assert loaded.returncode == 0, loaded.stderr  # loading twice: the file is idempotent
    objects = [next(iter(o.items())) for o in json.loads(loaded.stdout)["nftables"]]
    chains = {body["name"]: body for kind, body in objects if kind == "chain"}
    assert chains["input"]["policy"] == "drop"
    assert chains["forward"]["policy"] == "drop"
    sets = {body["name"]: body for kind, body in objects if kind == "set"}
    assert set(sets) == {"sensor_v4", "sensor_v6", "management_v4", "management_v6"}
    rules = [body for kind, body in objects if kind == "rule"]
    assert sum(1 for r in rules if r["chain"] == "input") == 14

    # The same text on stdout; --check runs nft -c itself.
    stdout = gridpilot("deploy", "firewall", str(write_site(tmp_path, SITE)))
    assert stdout.stdout == out.read_text()
    checked = in_private_netns(
        sys.executable, "-m", "gridpilot", "deploy", "firewall", str(tmp_path / "site.yaml"),
        "--check",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "the ruleset is valid" in checked.stderr


def test_mqtt_only_from_sensors_and_the_api_only_from_management() -> None:
    ruleset = render_ruleset(GridPilotConfig.model_validate(SITE))
    assert "ip saddr @sensor_v4 tcp dport { 1883, 8883 } accept" in ruleset
    assert "ip6 saddr @sensor_v6 tcp dport { 1883, 8883 } accept" in ruleset
    assert "ip saddr @management_v4 tcp dport 8443 accept" in ruleset
    assert "ip saddr @management_v4 tcp dport 22 accept" in ruleset
    assert "sensor_v4 tcp dport 8443" not in ruleset
    assert "management_v4 tcp dport { 1883" not in ruleset


def test_without_management_subnets_it_refuses_to_lock_operators_out(tmp_path: Path) -> None:
    site = {"site": {"id": "x"}, "network": {"sensor_subnets": ["10.20.0.0/22"]}}
    with pytest.raises(FirewallConfigError, match="management_subnets is empty"):
        render_ruleset(GridPilotConfig.model_validate(site))
    result = gridpilot("deploy", "firewall", str(write_site(tmp_path, site)))
    assert result.returncode == 2
    assert "locking operators out" in result.stderr


def test_a_subnet_with_host_bits_is_a_config_error(tmp_path: Path) -> None:
    site = {"site": {"id": "x"}, "network": {"management_subnets": ["10.10.0.5/24"]}}
    result = gridpilot("config", "check", str(write_site(tmp_path, site)))
    assert result.returncode != 0
    assert "network.management_subnets[0]" in result.stdout + result.stderr
    assert "host bits zero" in result.stdout + result.stderr


# --- behaviour: real connections between two namespaces -----------------------------------

SERVER = textwrap.dedent(
    """
    import socket, sys, time
    socks = []
    for port in map(int, sys.argv[1:]):
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port)); s.listen(16); socks.append(s)
    print("listening", flush=True)
    time.sleep(60)
    """
)

CLIENT = textwrap.dedent(
    """
    import json, socket, sys
    results = {}
    for probe in sys.argv[1:]:
        source, target, port = probe.rsplit(",", 2)
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(0.3)  # a dropped SYN is never answered
        try:
            s.bind((source, 0)); s.connect((target, int(port))); results[probe] = "open"
        except OSError:
            results[probe] = "blocked"
        finally:
            s.close()
    print(json.dumps(results))
    """
)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: ``srv`` with an address in each
    subnet, ``cli`` with a sensor, a management and an outsider address."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating network namespaces needs root and iproute2 (CI runs as root)")
    tag = uuid.uuid4().hex[:6]
    srv, cli = f"gpfw-srv-{tag}", f"gpfw-cli-{tag}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)

    ip("netns", "add", srv)
    ip("netns", "add", cli)
    try:
        ip(
            "link",
            "add",
            f"v{tag}a",
            "netns",
            srv,
            "type",
            "veth",
            "peer",
            f"v{tag}b",
            "netns",
            cli,
        )
        plan = {
            srv: (f"v{tag}a", ["10.10.0.1/24", "10.20.0.1/22", "10.99.0.1/24", "fd00:10::1/64",
                               "fd00:20::1/64", "fd00:99::1/64"]),
            cli: (f"v{tag}b", ["10.10.0.5/24", "10.20.0.5/22", "10.99.0.5/24", "fd00:10::5/64",
                               "fd00:20::5/64", "fd00:99::5/64"]),
        }  # fmt: skip
        for ns, (dev, addresses) in plan.items():
            for address in addresses:
                ip("-n", ns, "addr", "add", address, "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield srv, cli
    finally:
        subprocess.run(["ip", "netns", "del", srv], timeout=30, check=False)
        subprocess.run(["ip", "netns", "del", cli], timeout=30, check=False)


def test_connections_are_let_through_only_from_the_right_subnets(
    tmp_path: Path, two_hosts: tuple[str, str]
) -> None:
    srv, cli = two_hosts
    rules = tmp_path / "gridpilot.nft"
    rules.write_text(render_ruleset(GridPilotConfig.model_validate(SITE)))
    loaded = subprocess.run(
        ["ip", "netns", "exec", srv, nft(), "-f", str(rules)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    server = subprocess.Popen(
        ["ip", "netns", "exec", srv, sys.executable, "-c", SERVER, "1883", "8883", "8443", "22",
         "5432"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        sources = {
            "sensor": ("10.20.0.5", "10.20.0.1", "fd00:20::5", "fd00:20::1"),
            "management": ("10.10.0.5", "10.10.0.1", "fd00:10::5", "fd00:10::1"),
            "outsider": ("10.99.0.5", "10.99.0.1", "fd00:99::5", "fd00:99::1"),
        }
        probes = [
            f"{src},{dst},{port}"
            for v4src, v4dst, v6src, v6dst in sources.values()
            for src, dst in ((v4src, v4dst), (v6src, v6dst))
            for port in (1883, 8883, 8443, 22, 5432)
        ]
        result = subprocess.run(
            ["ip", "netns", "exec", cli, sys.executable, "-c", CLIENT, *probes],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        got = json.loads(result.stdout)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    expected_open = {
        "sensor": {1883, 8883},
        "management": {8443, 22},  # IPv6 management too: fd00:10::/64 is in the site
        "outsider": set(),
    }
    for who, (v4src, _v4dst, v6src, _v6dst) in sources.items():
        for probe, state in got.items():
            src, _dst, port = probe.rsplit(",", 2)
            if src in (v4src, v6src):
                want = "open" if int(port) in expected_open[who] else "blocked"
                assert state == want, f"{who} {probe}: {state}, expected {want}"
