"""Helpers shared by the CLI commands: config lookup, exits, logging, asyncio entry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click

from gridpilot.config import ConfigError, GridPilotConfig, load_config

log = logging.getLogger("gridpilot")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def default_demo_dir() -> Path:
    """Where ``gridpilot demo`` keeps its files unless ``--data-dir`` says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gridpilot" / "demo"


def resolve_config_path(config: str | None) -> Path:
    """``--config``, else ``$GRIDPILOT_CONFIG``, else the last demo's site file."""
    if config:
        return Path(config)
    env = os.environ.get("GRIDPILOT_CONFIG")
    if env:
        return Path(env)
    demo = default_demo_dir() / "site.yaml"
    if demo.exists():
        return demo
    return fail(
        "no configuration given: pass --config FILE, set GRIDPILOT_CONFIG, "
        "or run 'gridpilot demo' first",
        EXIT_CONFIG,
    )


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    click.echo(f"gridpilot: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: Path) -> GridPilotConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        fail(f"{len(exc.issues)} problem(s) in {path}; fix them and try again", EXIT_CONFIG)


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # pymodbus logs every failed connection at ERROR; our gateway reports them per device.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("amqtt").setLevel(logging.WARNING if verbose > 1 else logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.WARNING)


def freeze_startup_heap() -> None:
    """Move everything allocated while starting (modules, configuration, services) out of
    the garbage collector's full passes: it lives as long as the process, and a long history
    answer (up to 100,000 rows of new objects) otherwise triggers passes over all of it.
    Called once by the long-running commands when their services are up."""
    import gc

    gc.freeze()


def user_at_host() -> str:
    """``user@host`` of whoever runs the command, for journals and token records."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
