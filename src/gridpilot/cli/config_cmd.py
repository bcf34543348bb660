"""``gridpilot config check``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gridpilot.cli.common import EXIT_CONFIG
from gridpilot.config import ConfigError, load_config


@click.group("config")
def config_group() -> None:
    """Work with site configuration files."""


@config_group.command("check")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config_check(config: Path, as_json: bool) -> None:
    """Validate CONFIG; every problem is reported with its file, line and field."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "ok": False,
                        "issues": [
                            {"file": i.file, "line": i.line, "field": i.field, "message": i.message}
                            for i in exc.issues
                        ],
                    },
                    indent=2,
                )
            )
        else:
            for issue in exc.issues:
                click.echo(str(issue), err=True)
            click.echo(f"{config}: {len(exc.issues)} problem(s)", err=True)
        sys.exit(EXIT_CONFIG)
    points = sum(len(d.points) for d in cfg.devices)
    if as_json:
        click.echo(
            json.dumps(
                {"ok": True, "site": cfg.site.id, "devices": len(cfg.devices), "points": points}
            )
        )
    else:
        click.echo(
            f"{config}: OK (site {cfg.site.id}, {len(cfg.devices)} devices, {points} points)"
        )
