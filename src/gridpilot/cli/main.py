"""The ``gridpilot`` command line (ARCHITECTURE.md, "CLI")."""

from __future__ import annotations

import click

from gridpilot import __version__
from gridpilot.cli.backup_cmd import backup, restore
from gridpilot.cli.common import setup_logging
from gridpilot.cli.config_cmd import config_group
from gridpilot.cli.control_cmd import control_group
from gridpilot.cli.demo_cmd import demo
from gridpilot.cli.deploy_cmd import deploy_group
from gridpilot.cli.devices_cmd import devices_group
from gridpilot.cli.doctor_cmd import doctor
from gridpilot.cli.gaps_cmd import gaps
from gridpilot.cli.ieee2030_5_cmd import ieee2030_5_group
from gridpilot.cli.query_cmd import query
from gridpilot.cli.run_cmd import run, sim
from gridpilot.cli.tail_cmd import tail
from gridpilot.cli.token_cmd import token_group


@click.group()
@click.version_option(__version__, prog_name="gridpilot")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """GridPilot: an open-source Energy Management System."""
    setup_logging(verbose)


for command in (
    backup,
    config_group,
    control_group,
    demo,
    deploy_group,
    devices_group,
    doctor,
    gaps,
    ieee2030_5_group,
    query,
    restore,
    run,
    sim,
    tail,
    token_group,
):
    cli.add_command(command)


def main() -> None:
    cli()
