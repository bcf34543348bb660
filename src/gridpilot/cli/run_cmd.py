"""``gridpilot run SERVICE CONFIG`` and ``gridpilot sim``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import click
import yaml

from gridpilot.cli.common import fail, freeze_startup_heap, load_or_exit, run_async

# Kept in step with gridpilot.app.Service; spelled out so --help needs no service imports.
SERVICE_CHOICES = ["all", "gateway", "ingest", "controller", "api", "ieee2030_5"]
_INSTANCE = re.compile(r"[A-Za-z0-9_-]{1,32}")


@click.command()
@click.argument("service", type=click.Choice(SERVICE_CHOICES))
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--instance",
    default="0",
    show_default=True,
    help="Ingest only: this process's name among the site's ingest processes (letters, "
    "digits, - or _). Give each its own (0, 1, ...) to split the shared subscription; "
    "instance 0 also handles Sparkplug B.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="API only: listen on this port instead of the site file's api.port (0: any free "
    "port), e.g. for several API processes behind a load balancer.",
)
def run(service: str, config: Path, instance: str, port: int | None) -> None:
    """Run SERVICE (or all of them in one process) for the site in CONFIG until SIGTERM."""
    from gridpilot.app import (
        ALL_SERVICES,
        Running,
        Service,
        install_stop_signals,
        run_services,
        startup_errors,
    )

    if not _INSTANCE.fullmatch(instance):
        fail(
            f"--instance {instance!r}: use 1-32 letters, digits, - or _ (it becomes part of "
            "the MQTT client id)"
        )
    if instance != "0" and service not in ("ingest", "all"):
        fail(f"--instance is for ingest processes; 'run {service}' has no instances")
    if port is not None and service not in ("api", "all"):
        fail(f"--port is the API's; 'run {service}' serves no HTTP")
    cfg = load_or_exit(config)
    services = list(ALL_SERVICES) if service == "all" else [Service(service)]
    if service == "all" and cfg.control is None:
        services.remove(Service.CONTROLLER)  # nothing to control: the site has no control section
    if service == "all" and cfg.ieee2030_5 is not None:
        services.append(Service.IEEE2030_5)

    def ready(running: Running) -> None:
        freeze_startup_heap()
        where = "embedded" if running.embedded_broker else "external"
        api = f"; API {running.api_url}" if running.api_url else ""
        click.echo(
            f"gridpilot: {', '.join(services)} running for site {cfg.site.id}; "
            f"MQTT ({where}) mqtt://{running.broker.host}:{running.broker.port}{api}",
            err=True,
        )

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_services(
            cfg, config.parent, services, stop, ready, http_port=port, ingest_instance=instance
        )

    try:
        run_async(main())
    except startup_errors() as exc:
        fail(f"cannot start {service} for {config}: {exc}")


@click.command()
@click.option("--base-port", default=15020, show_default=True, help="Port of the first device.")
@click.option("--speed", default=1.0, show_default=True, help="Simulated seconds per second.")
@click.option("--site-id", default="sim", show_default=True)
@click.option(
    "--write-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a site file whose devices point at the simulator.",
)
@click.option(
    "--rtu",
    "rtu_port",
    help="Also serve every device (with --sunspec the SunSpec ones too, numbered after the "
    "building's) as a Modbus RTU unit (1, 2, ...) on this serial port, e.g. "
    "one end of `socat -d -d pty,raw,echo=0,link=/tmp/sim-rtu pty,raw,echo=0,link=/tmp/gw-rtu`.",
)
@click.option(
    "--rtu-gateway-port",
    help="With --rtu and --write-config: the port the gateway opens (the line's other end); "
    "the site file then polls the devices over RTU.",
)
@click.option(
    "--sunspec",
    is_flag=True,
    help="Also serve a SunSpec inverter, meter and storage (models from pysunspec2's "
    "definitions; try `gridpilot devices scan tcp://127.0.0.1:PORT`).",
)
@click.option(
    "--grid-voltage",
    type=click.FloatRange(0.5, 1.5),
    help="Hold the grid's no-load voltage at this many per unit of nominal (e.g. 1.06 for an "
    "over-voltage that volt-var and volt-watt answer); default: nominal plus the tap.",
)
@click.option(
    "--nominal-frequency",
    type=click.Choice(["50", "60"]),
    default="50",
    show_default=True,
    help="The simulated grid's nominal frequency, Hz (the SunSpec inverter's 121 ECPNomHz).",
)
@click.option(
    "--grid-frequency",
    type=click.FloatRange(40.0, 70.0),
    help="Hold the grid frequency at this many Hz (e.g. 60.5 on a 60 Hz grid, an "
    "over-frequency that frequency droop answers); default: nominal with a slow swing.",
)
def sim(
    base_port: int,
    speed: float,
    site_id: str,
    write_config: Path | None,
    rtu_port: str | None,
    rtu_gateway_port: str | None,
    sunspec: bool,
    grid_voltage: float | None,
    nominal_frequency: str,
    grid_frequency: float | None,
) -> None:
    """Serve the simulated building's Modbus TCP devices on 127.0.0.1 until SIGTERM."""
    from gridpilot.app import install_stop_signals
    from gridpilot.sim.building import BuildingParams
    from gridpilot.sim.physics import MeterParams
    from gridpilot.sim.site import SimulatedSite

    if rtu_gateway_port is not None and rtu_port is None:
        fail("--rtu-gateway-port needs --rtu (the simulator's end of the line)")

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        params = BuildingParams(meter=MeterParams(nominal_frequency_hz=float(nominal_frequency)))
        async with SimulatedSite(
            base_port=base_port, speed=speed, rtu_port=rtu_port, sunspec=sunspec, params=params
        ) as site:
            if grid_voltage is not None:
                site.building.set_grid_voltage(grid_voltage)
                click.echo(f"grid voltage held at {grid_voltage:g} pu")
            if grid_frequency is not None:
                site.building.set_grid_frequency(grid_frequency)
                click.echo(f"grid frequency held at {grid_frequency:g} Hz")
            for device_id in site.devices:
                where = f"modbus tcp://127.0.0.1:{site.port_of(device_id)}"
                if rtu_port is not None and device_id in site.rtu_devices:
                    where += f", rtu unit {site.rtu_unit_of(device_id)} on {rtu_port}"
                click.echo(f"{device_id}: {where}")
            if write_config is not None:
                data: dict[str, object] = {"site": {"id": site_id}}
                if rtu_gateway_port is not None:
                    data.update(site.rtu_site_config(rtu_gateway_port, site_id))
                else:
                    data["devices"] = site.site_config(site_id)
                text = yaml.safe_dump(data, sort_keys=False)
                await asyncio.to_thread(write_config.write_text, text, encoding="utf-8")
                click.echo(f"site file written to {write_config}")
            await stop.wait()

    try:
        run_async(main())
    except OSError as exc:  # a serial port that cannot be opened (serial.SerialException)
        fail(f"cannot serve the simulator: {exc}")
