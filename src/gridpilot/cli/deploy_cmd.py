"""``gridpilot deploy ...``: files for installing GridPilot on a host (the firewall)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from gridpilot.cli.common import EXIT_CONFIG, fail, load_or_exit

_NFT_TIMEOUT_S = 30.0


@click.group("deploy")
def deploy_group() -> None:
    """Generate deployment files for this site (firewall rules)."""


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
