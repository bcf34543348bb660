"""``gridpilot doctor CONFIG``: check a site against the troubleshooting matrix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from gridpilot.cli.common import load_or_exit, run_async


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable report (schema gridpilot.doctor/1)."
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1, max=600),
    default=10.0,
    show_default=True,
    help="Seconds each check may take (they run at the same time).",
)
def doctor(config: Path, as_json: bool, timeout_s: float) -> None:
    """Check the site in CONFIG: broker (and its TLS and queue limits), storage (writable,
    free space, latency), every device (reachable, timed out or refused, serial port busy
    and by whom), CRC and timeout rates, data gaps in the last hour, clock skew, file
    permissions and the open-file limit. Each check says what it found and what to do
    next. Exit status: 0 when nothing failed (warnings allowed), 1 when something failed,
    2 when CONFIG itself is invalid."""
    from gridpilot.ops.doctor import run_doctor

    cfg = load_or_exit(config)
    path = config.resolve()
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # The checks provoke the failures they diagnose (refused connections, timeouts):
        # the services' warnings about them would only repeat the report.
        logging.getLogger("gridpilot").setLevel(logging.CRITICAL)
    outcome: list[int] = []

    async def main() -> None:
        report = await run_doctor(cfg, path, timeout_s=timeout_s)
        if as_json:
            click.echo(json.dumps(report.as_json(), indent=2))
        else:
            click.echo(report.render_text())
        outcome.append(report.exit_code)

    run_async(main())
    raise SystemExit(outcome[0] if outcome else 1)
