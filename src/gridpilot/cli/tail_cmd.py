"""``gridpilot tail [TOPIC]``: watch the bus, like ``mosquitto_sub -v -t 'gridpilot/#'``."""

from __future__ import annotations

from urllib.parse import urlsplit

import click

from gridpilot.cli.common import fail, load_or_exit, resolve_config_path, run_async


@click.command()
@click.argument("topic", default="gridpilot/#")
@click.option("-c", "--config", help="Site file whose broker to watch.")
@click.option("--url", help="Broker URL (mqtt://host:port), instead of a site file.")
@click.option("--count", type=int, help="Exit after this many messages.")
def tail(topic: str, config: str | None, url: str | None, count: int | None) -> None:
    """Print every message on TOPIC (default gridpilot/#) as 'topic payload'."""
    from gridpilot.bus.client import BrokerAddress, BusClient

    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            fail(f"--url {url!r} must look like mqtt://127.0.0.1:1883", 2)
        address = BrokerAddress(parts.hostname, parts.port or 1883)
    else:
        path = resolve_config_path(config)
        cfg = load_or_exit(path)
        # Relative key, certificate and password files are next to the site file.
        address = BrokerAddress.from_config(cfg.broker, base_dir=path.parent)

    async def main() -> None:
        # Ctrl-C cancels this task (asyncio.run); SIGTERM's default action ends the process:
        # tail holds nothing that needs a clean shutdown.
        async with BusClient(address, "gridpilot-tail", clean_session=True) as bus:
            await bus.subscribe(topic, qos=0)
            seen = 0
            async for message in bus.messages():
                text = message.payload.decode("utf-8", errors="backslashreplace")
                click.echo(f"{message.topic} {text}")
                seen += 1
                if count is not None and seen >= count:
                    return

    run_async(main())
