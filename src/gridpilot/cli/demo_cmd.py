"""``gridpilot demo``: the whole system on a simulated building, nothing else to install."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import yaml

from gridpilot.cli.common import default_demo_dir, fail, freeze_startup_heap, run_async
from gridpilot.config import ConfigError, validate_config_text

DEMO_SITE = "demo"


@click.command()
@click.option(
    "--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C)."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the site file and database go (default: ~/.local/share/gridpilot/demo).",
)
@click.option("--mqtt-port", default=1883, show_default=True, help="Taken? A free one is used.")
@click.option(
    "--http-port", default=8080, show_default=True, help="API and page; taken? A free one."
)
@click.option("--speed", default=1.0, show_default=True, help="Simulated seconds per second.")
def demo(
    duration: float | None, data_dir: Path | None, mqtt_port: int, http_port: int, speed: float
) -> None:
    """Run a simulated building with the gateway, an embedded MQTT broker, ingest, SQLite, the
    control engine and the API."""
    from gridpilot.api.tokens import TokenError, TokenStoreError
    from gridpilot.app import (
        ALL_SERVICES,
        Running,
        install_stop_signals,
        run_services,
        startup_errors,
    )
    from gridpilot.bus.embedded import EmbeddedBroker
    from gridpilot.sim.control import control_section
    from gridpilot.sim.site import SimulatedSite
    from gridpilot.storage import open_storage

    directory = data_dir or default_demo_dir()
    # 0700: the directory holds the token store and the database.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    site_file = directory / "site.yaml"

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        async with (
            SimulatedSite(base_port=0, speed=speed) as site,
            EmbeddedBroker(port=mqtt_port) as broker,
        ):
            data = {
                "site": {"id": DEMO_SITE, "name": "GridPilot demo building"},
                "broker": {"url": broker.url},
                "storage": {"path": "gridpilot.db"},
                # The embedded broker (amqtt) ignores $share subscriptions: subscribe plainly.
                "ingest": {"shared_subscription": "off"},
                # Peak shaving with the battery and the load panel, the zone planners, the
                # battery's fail-safe: the same settings examples/building.yaml explains.
                "control": control_section(limit_w=110_000.0),
                "devices": site.site_config(DEMO_SITE),
            }
            text = (
                "# Written by 'gridpilot demo': the simulated building it is running.\n"
                + yaml.safe_dump(data, sort_keys=False)
            )
            site_file.write_text(text, encoding="utf-8")
            try:
                cfg = validate_config_text(text, str(site_file))
            except ConfigError as exc:  # the simulator's own map is wrong: a bug, say so
                fail(f"the simulator produced an invalid site file: {exc}")

            try:
                token = demo_sign_in_token(directory / cfg.api.tokens_file)
            except (TokenError, TokenStoreError) as exc:
                fail(f"the demo cannot make its sign-in token: {exc}")

            def banner(running: Running) -> None:
                freeze_startup_heap()
                port = running.broker.port
                lines = [
                    f"GridPilot demo: simulated building with {len(cfg.devices)} devices "
                    f"({', '.join(d.id for d in cfg.devices)})",
                    f"  dashboard     {running.api_url}/",
                    f"  sign in with  {token}",
                    "                (an admin token of this demo run; make others with "
                    "'gridpilot token create --role viewer|operator')",
                    f"  REST API      {running.api_url}/api/v1/devices "
                    "(header 'Authorization: Bearer <token>'; "
                    f"route list in the dashboard: {running.api_url}/#api)",
                    f"  MQTT broker   mqtt://127.0.0.1:{port}",
                    f"  site file     {site_file}",
                    f"  storage       {running.storage_path}",
                    "Try in another shell:",
                    f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'gridpilot/#' -v",
                    "  gridpilot tail",
                    "  gridpilot query                      # latest value of every point",
                    "  gridpilot query grid_meter active_power_w --every 1m --agg max",
                    "  gridpilot control status             # what the controllers decide",
                    "  gridpilot query controller peak_shaving_demand_w",
                    "Stop with Ctrl-C." if duration is None else f"Stopping after {duration:g} s.",
                ]
                click.echo("\n".join(lines))

            await run_services(cfg, directory, ALL_SERVICES, stop, banner, http_port=http_port)

        async with open_storage(cfg.storage, directory) as storage:
            latest = await storage.latest(DEMO_SITE)
        devices = sorted({v.series.device for v in latest})
        click.echo(
            f"Stored {len(latest)} points from {len(devices)} devices in {directory}; "
            "see them with 'gridpilot query'."
        )

    try:
        run_async(main())
    except startup_errors() as exc:
        fail(f"the demo cannot start: {exc}")


DEMO_TOKEN_NAME = "demo-sign-in"  # noqa: S105 -- a name, not a secret


def demo_sign_in_token(path: Path) -> str:
    """A fresh admin token for this demo run; the previous run's is revoked, so a token
    printed to an old terminal stops working."""
    from gridpilot.api.tokens import Role, TokenStore

    store = TokenStore(path)
    for record in store.records():
        if record.name == DEMO_TOKEN_NAME and record.revoked is None:
            store.revoke(record.id)
    return store.create(Role.ADMIN, DEMO_TOKEN_NAME, created_by="gridpilot demo")[1]
