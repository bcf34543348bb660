"""``gridpilot demo``: the whole system on a simulated building, nothing else to install."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

if TYPE_CHECKING:
    from gridpilot.app import Running
    from gridpilot.config import GridPilotConfig
    from gridpilot.sim.utility_demo import DemoUtilityPlan

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
@click.option(
    "--sim-start",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]),
    help="The simulated building's clock at start, UTC (default: now), e.g. "
    "2026-07-04T10:30 -- a sunny Saturday morning when it exports tens of kW.",
)
@click.option(
    "--utility/--no-utility",
    default=True,
    show_default=True,
    help="Run the IEEE 2030.5 test utility server and the site's 2030.5 client.",
)
@click.option(
    "--utility-event-in",
    type=click.FloatRange(min=0),
    default=90.0,
    show_default=True,
    metavar="SECONDS",
    help="The utility's export-limit event starts this long after the demo.",
)
@click.option(
    "--utility-event-duration",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the export-limit event lasts.",
)
@click.option(
    "--utility-export-limit-w",
    type=click.FloatRange(min=0, max=32_767_000),
    default=10_000.0,
    show_default=True,
    metavar="W",
    help="The export limit (opModExpLimW) the utility's event sets.",
)
@click.option(
    "--poll-every",
    type=click.FloatRange(min=1, max=60),
    metavar="SECONDS",
    help="Poll every device at most this often (default: each device's own interval, "
    "1-5 s): a lighter site for slow hardware or long accelerated runs.",
)
@click.option(
    "--cycle",
    "cycle_s",
    type=click.FloatRange(min=0.1, max=60),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="The control engine's cycle.",
)
@click.option(
    "--mqtt-keepalive",
    type=click.IntRange(min=5, max=3600),
    default=30,
    show_default=True,
    metavar="SECONDS",
    help="Every client's MQTT keep-alive: a connection silent for 1.5 times this is "
    "dropped and made again. Longer for runs under an accelerated clock.",
)
def demo(
    duration: float | None,
    data_dir: Path | None,
    mqtt_port: int,
    http_port: int,
    speed: float,
    sim_start: datetime | None,
    utility: bool,
    utility_event_in: float,
    utility_event_duration: float,
    utility_export_limit_w: float,
    poll_every: float | None,
    cycle_s: float,
    mqtt_keepalive: int,
) -> None:
    """Run a simulated building with the gateway, an embedded MQTT broker, ingest, SQLite, the
    control engine and the API -- and a utility: an IEEE 2030.5 test server in-process that
    the site's 2030.5 client registers with, and an export-limit event the grid-operator
    controller holds the building's export under (it shows in the events timeline,
    'gridpilot ieee2030-5 status' and /api/v1/ieee2030_5).

    The export limit bites while the building exports: on a sunny day around noon. At other
    times (night, winter, a busy weekday) start the simulated clock on one with --sim-start.
    """
    from gridpilot.api.tokens import TokenError, TokenStoreError
    from gridpilot.app import (
        ALL_SERVICES,
        Service,
        install_stop_signals,
        run_services,
        startup_errors,
    )
    from gridpilot.bus.embedded import EmbeddedBroker
    from gridpilot.sim.control import control_section
    from gridpilot.sim.site import SimulatedSite
    from gridpilot.sim.utility_demo import DemoUtility
    from gridpilot.storage import open_storage

    directory = data_dir or default_demo_dir()
    # 0700: the directory holds the token store and the database.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    site_file = directory / "site.yaml"
    start = sim_start.replace(tzinfo=UTC) if sim_start is not None else None
    plan = utility_plan(utility_export_limit_w, utility_event_in, utility_event_duration)
    last_lines: list[str] = []
    # The controllers' inputs are this old at times: their age limits must allow for it.
    slowest = max(poll_every or 1.0, cycle_s)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, stop.set)
        async with (
            SimulatedSite(base_port=0, speed=speed, start=start) as site,
            EmbeddedBroker(port=mqtt_port) as broker,
            AsyncExitStack() as stack,
        ):
            # Peak shaving with the battery and the load panel, the zone planners, the
            # battery's fail-safe: the same settings examples/building.yaml explains.
            control = control_section(
                limit_w=110_000.0, cycle_s=cycle_s, meter_max_age_s=max(10.0, 3 * slowest)
            )
            services = list(ALL_SERVICES)
            grid: DemoUtility | None = None
            if utility:
                grid = await stack.enter_async_context(DemoUtility(directory / "pki", plan))
                grid.prepare(site.building, control, max_age_s=max(5.0, 2 * slowest))
                services.append(Service.IEEE2030_5)
            cfg = write_site_file(
                site_file,
                {"url": broker.url, "keepalive": mqtt_keepalive},
                control,
                slowed(site.site_config(DEMO_SITE), poll_every),
                None if grid is None else grid.client_section(pki_dir="pki"),
            )
            try:
                token = demo_sign_in_token(directory / cfg.api.tokens_file)
            except (TokenError, TokenStoreError) as exc:
                fail(f"the demo cannot make its sign-in token: {exc}")

            def banner(running: Running) -> None:
                freeze_startup_heap()
                utility_lines = (
                    []
                    if grid is None
                    else grid.banner_lines(
                        site.building.state.meter.reading.active_power_w, site.now
                    )
                )
                click.echo(
                    banner_text(
                        cfg, running, token, site_file, duration, utility_lines=utility_lines
                    )
                )

            await run_services(cfg, directory, services, stop, banner, http_port=http_port)
            if grid is not None:
                last_lines.extend(grid.summary())

        async with open_storage(cfg.storage, directory) as storage:
            latest = await storage.latest(DEMO_SITE)
        devices = sorted({v.series.device for v in latest})
        click.echo(
            f"Stored {len(latest)} points from {len(devices)} devices in {directory}; "
            "see them with 'gridpilot query'."
        )
        for line in last_lines:
            click.echo(line)

    try:
        run_async(main())
    except startup_errors() as exc:
        fail(f"the demo cannot start: {exc}")


def utility_plan(export_limit_w: float, event_in_s: float, duration_s: float) -> DemoUtilityPlan:
    """The utility's event from the command line; exits with the reason when it is not one."""
    from gridpilot.sim.utility_demo import DemoUtilityPlan

    try:
        return DemoUtilityPlan(
            export_limit_w=export_limit_w, event_in_s=event_in_s, event_duration_s=duration_s
        )
    except ValueError as exc:
        fail(f"the demo's utility event: {exc}")


def slowed(devices: list[dict[str, object]], poll_every: float | None) -> list[dict[str, object]]:
    """``devices`` polled at most every ``poll_every`` seconds: a device polled faster gets
    that interval, and a timeout of half of it (at most 5 s) instead of its own."""
    if poll_every is None:
        return devices
    out: list[dict[str, object]] = []
    for device in devices:
        interval = device["poll_interval"]
        assert isinstance(interval, float | int)  # noqa: S101  # the simulator's own maps
        if interval >= poll_every:
            out.append(device)
        else:
            out.append(device | {"poll_interval": poll_every, "timeout": min(5.0, poll_every / 2)})
    return out


def write_site_file(
    site_file: Path,
    broker: dict[str, Any],
    control: dict[str, Any],
    devices: list[dict[str, object]],
    ieee2030_5: dict[str, Any] | None,
) -> GridPilotConfig:
    """Write the demo's site file (what the other commands read) and validate it."""
    data: dict[str, Any] = {
        "site": {"id": DEMO_SITE, "name": "GridPilot demo building"},
        "broker": broker,
        "storage": {"path": "gridpilot.db"},
        # The embedded broker (amqtt) ignores $share subscriptions: subscribe plainly.
        "ingest": {"shared_subscription": "off"},
        "control": control,
        "devices": devices,
    }
    if ieee2030_5 is not None:
        data["ieee2030_5"] = ieee2030_5
    text = (
        "# Written by 'gridpilot demo': the simulated building it is running.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    site_file.write_text(text, encoding="utf-8")
    try:
        return validate_config_text(text, str(site_file))
    except ConfigError as exc:  # the simulator's own map is wrong: a bug, say so
        fail(f"the simulator produced an invalid site file: {exc}")


def banner_text(
    cfg: GridPilotConfig,
    running: Running,
    token: str,
    site_file: Path,
    duration: float | None,
    *,
    utility_lines: list[str],
) -> str:
    """What the demo prints once everything is up: where to look and what to try."""
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
        *utility_lines,
        "Try in another shell:",
        f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'gridpilot/#' -v",
        "  gridpilot tail",
        "  gridpilot query                      # latest value of every point",
        "  gridpilot query grid_meter active_power_w --every 1m --agg max",
        "  gridpilot control status             # what the controllers decide",
        "  gridpilot query controller peak_shaving_demand_w",
    ]
    if utility_lines:
        lines.append("  gridpilot ieee2030-5 status          # the utility's events, responses")
    lines.append("Stop with Ctrl-C." if duration is None else f"Stopping after {duration:g} s.")
    return "\n".join(lines)


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
