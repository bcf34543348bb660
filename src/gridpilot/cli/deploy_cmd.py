"""``gridpilot deploy ...``: files for installing GridPilot on a host (the firewall, the
MQTT broker's configuration and certificates)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from gridpilot.cli.common import EXIT_CONFIG, fail, load_or_exit

_NFT_TIMEOUT_S = 30.0


@click.group("deploy")
def deploy_group() -> None:
    """Generate deployment files for this site (firewall rules, broker config, certificates)."""


@deploy_group.command("firewall")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the ruleset here (atomically) instead of to standard output.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Also have nft parse and check the ruleset (nft -c: nothing is loaded).",
)
def firewall(config: Path, output: Path | None, check: bool) -> None:
    """An nftables ruleset from the site's network section: MQTT only from the sensor
    subnets, the API and SSH only from the management subnets, everything else dropped.

    Load it with 'nft -f FILE', or put it in /etc/nftables.d/ and include it from
    /etc/nftables.conf so it is loaded at boot.
    """
    from gridpilot.ops.files import atomic_file
    from gridpilot.ops.firewall import FirewallConfigError, render_ruleset

    cfg = load_or_exit(config)
    try:
        ruleset = render_ruleset(cfg, source=str(config))
    except FirewallConfigError as exc:
        fail(f"{config}: {exc}", EXIT_CONFIG)
    if check:
        _nft_check(ruleset)
    if output is None:
        click.echo(ruleset, nl=False)
        return
    # 0644 like /etc/nftables.conf: the rules are not secret, and an auditor may read them.
    with atomic_file(output, mode=0o644) as out:
        out.write(ruleset.encode())
    click.echo(f"ruleset written to {output}; load it with: nft -f {output}", err=True)


def _nft_check(ruleset: str) -> None:
    nft = shutil.which("nft") or ("/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else None)
    if nft is None:
        fail("--check needs nft: apt-get install nftables")
    try:
        result = subprocess.run(  # noqa: S603 -- a fixed program, the ruleset on stdin
            [nft, "-c", "-f", "-"],
            input=ruleset.encode(),
            capture_output=True,
            timeout=_NFT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fail(f"nft -c did not answer within {_NFT_TIMEOUT_S:g} s")
    if result.returncode != 0:
        fail(
            "nft refused the ruleset (nft -c needs CAP_NET_ADMIN: run as root):\n"
            + result.stderr.decode(errors="replace")
        )
    click.echo("nft -c: the ruleset is valid", err=True)


@deploy_group.command("mosquitto")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for mosquitto.conf and acl (e.g. /etc/mosquitto/gridpilot).",
)
@click.option(
    "--files-in",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the broker will find ca.crt, server.crt/.key, passwd and acl "
    "(default: the output directory).",
)
def mosquitto(config: Path, output: Path, files_in: Path | None) -> None:
    """A production Mosquitto config and ACL for the site in CONFIG: TLS 1.3 listener on
    8883 with client certificates, password logins on loopback 1883, per-device ACL
    (a device publishes only its own topics), persistence, raised queue limits."""
    from gridpilot.ops.files import atomic_file
    from gridpilot.ops.mosquitto import BrokerLayout, render_acl, render_broker_config

    cfg = load_or_exit(config)
    output.mkdir(parents=True, exist_ok=True)
    layout = BrokerLayout(directory=(files_in or output).absolute())
    # 0644: mosquitto (its own user) reads both; neither holds a secret.
    for name, text in (
        ("mosquitto.conf", render_broker_config(layout)),
        ("acl", render_acl(cfg, source=str(config))),
    ):
        with atomic_file(output / name, mode=0o644) as out:
            out.write(text.encode())
        click.echo(f"wrote {output / name}", err=True)
    how = {
        "ca.crt": f"gridpilot deploy certs {layout.directory} --server BROKER-HOST",
        "server.crt": f"gridpilot deploy certs {layout.directory} --server BROKER-HOST",
        "server.key": f"gridpilot deploy certs {layout.directory} --server BROKER-HOST",
        "passwd": f"mosquitto_passwd -c {layout.path('passwd')} ingest",
    }
    missing = [name for name in how if not layout.path(name).exists()]
    if missing:
        click.echo(f"still needed in {layout.directory}: {', '.join(missing)}; run:", err=True)
        for command in dict.fromkeys(how[name] for name in missing):
            click.echo(f"  {command}", err=True)


@deploy_group.command("certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--server",
    "servers",
    multiple=True,
    help="DNS name or IP address of the broker (repeat for each); issues server.crt/.key.",
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    help="Device or gateway id (repeat for each); issues ID.crt/.key with Common Name ID.",
)
@click.option("--days", default=825, show_default=True, help="Validity of each certificate.")
@click.option("--site", default="gridpilot", show_default=True, help="Named in the CA's name.")
def certs(
    directory: Path, servers: tuple[str, ...], clients: tuple[str, ...], days: int, site: str
) -> None:
    """A certificate authority for the site's broker in DIRECTORY (reused when it is there),
    the broker's server certificate and a client certificate per device. Keys are written
    mode 0600; keep ca.key off the broker if you can."""
    from gridpilot.ops.certs import CertError, issue_site_certificates

    if not servers and not clients:
        fail("nothing to issue: give --server NAME and/or --client ID", EXIT_CONFIG)
    try:
        issued = issue_site_certificates(
            directory, server_names=servers, clients=clients, days=days, site=site
        )
    except CertError as exc:
        fail(str(exc), EXIT_CONFIG)
    except OSError as exc:
        fail(f"cannot write certificates to {directory}: {exc}")
    click.echo(f"{'created' if issued.ca_created else 'reused'} CA {issued.ca_cert}", err=True)
    for path in issued.written:
        click.echo(f"wrote {path}", err=True)
