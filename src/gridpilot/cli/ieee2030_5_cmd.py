"""``gridpilot ieee2030-5 ...``: the site's IEEE 2030.5 (CSIP) client, seen from the bus.

``status`` reads the client's retained status (``{site}/ieee2030_5/status``): its LFDI and
SFDI, registration, programs, active and scheduled events, the last responses and mirror
posts, and the last error. It needs no running client to answer: without one it says why.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import click

from gridpilot.cli.common import fail, load_or_exit, resolve_config_path, run_async

WAIT_S = 3.0
"""How long to wait for the retained status (the broker sends it at once if there is one)."""


@click.group("ieee2030-5")
def ieee2030_5_group() -> None:
    """The site's IEEE 2030.5 (CSIP) client: registration, utility events, responses."""


@ieee2030_5_group.command("status")
@click.argument("config_arg", metavar="[CONFIG]", required=False)
@click.option("-c", "--config", help="Site file (default: $GRIDPILOT_CONFIG or the last demo's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_arg: str | None, config: str | None, as_json: bool) -> None:
    """Show the 2030.5 client's status: LFDI/SFDI, registration, events, responses, mirrors.

    Exits 1 when no client has published a status for the site (with the reason).
    """
    from gridpilot.bus.client import BrokerAddress, BusClient
    from gridpilot.bus.errors import BusError
    from gridpilot.ieee2030_5.status_view import (
        StatusMessageError,
        not_published_view,
        parse_status,
        render_text,
        status_view,
    )
    from gridpilot.model import Topic

    path = resolve_config_path(config_arg or config)
    cfg = load_or_exit(path)
    site = cfg.site.id
    topic = str(Topic.ieee2030_5_status(site))
    found: list[bytes] = []

    async def main() -> None:
        address = BrokerAddress.from_config(cfg.broker, base_dir=path.parent)
        async with BusClient(address, f"gridpilot-ieee2030-5-{uuid.uuid4().hex[:8]}") as bus:
            await bus.wait_connected(timeout=WAIT_S)
            await bus.subscribe(topic, qos=1)
            # A retained message arrives right after the subscription; none means none.
            async with asyncio.timeout(WAIT_S):
                async for message in bus.messages():
                    if message.topic == topic and message.payload:
                        found.append(message.payload)
                        return

    try:
        run_async(main())
    except TimeoutError:
        pass  # nothing retained
    except BusError as exc:
        fail(f"cannot reach the broker for {path}: {exc}")
    view: dict[str, Any]
    if not found:
        view = not_published_view(site, topic, configured=cfg.ieee2030_5 is not None)
    else:
        try:
            doc = parse_status(found[0])
        except StatusMessageError as exc:
            fail(f"the retained message on {topic} is not a 2030.5 status: {exc}")
        view = status_view(doc, site=site, now=datetime.now(UTC))
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        for line in render_text(view):
            click.echo(line)
    if not view["published"]:
        raise SystemExit(1)
