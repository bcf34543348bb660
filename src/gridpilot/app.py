"""The composition root: builds services from a site configuration and runs them.

This is the only place that knows which concrete classes make up a running GridPilot.
``gridpilot run`` and ``gridpilot demo`` both come through here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from gridpilot.api.errors import ApiError
from gridpilot.api.metrics import LocalServices
from gridpilot.api.service import ApiService
from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.embedded import EmbeddedBroker
from gridpilot.bus.errors import BusError
from gridpilot.bus.homeassistant import HomeAssistantDiscovery
from gridpilot.config import GridPilotConfig, site_path
from gridpilot.control.base import Controller
from gridpilot.control.factory import build_controllers
from gridpilot.control.inputs import StoredInputs
from gridpilot.control.service import ControllerService
from gridpilot.control.thermal import ZoneHistory
from gridpilot.gateway.buffer import GatewayBufferError
from gridpilot.gateway.service import GatewayService
from gridpilot.ieee2030_5.client import Ieee2030_5Error
from gridpilot.ieee2030_5.mirror import StorageMirrorPoster, specs_from_config
from gridpilot.ieee2030_5.service import Ieee2030_5NotConfiguredError, Ieee2030_5Service
from gridpilot.ingest.service import IngestService
from gridpilot.ops.systemd import supervision
from gridpilot.storage import open_storage
from gridpilot.storage.base import StorageError
from gridpilot.storage.retention import RetentionService

log = logging.getLogger(__name__)


class Service(StrEnum):
    GATEWAY = "gateway"
    INGEST = "ingest"
    CONTROLLER = "controller"
    API = "api"
    IEEE2030_5 = "ieee2030_5"


ALL_SERVICES = (Service.GATEWAY, Service.INGEST, Service.CONTROLLER, Service.API)
"""What ``run all`` starts; the 2030.5 client joins them when the site file configures it."""


@dataclass(frozen=True, slots=True)
class Running:
    """What a caller may want to print once everything is up."""

    broker: BrokerAddress
    embedded_broker: bool
    storage_path: Path | None
    api_url: str | None = None
    """e.g. http://127.0.0.1:8080 (a free port when the configured one is taken)."""


def startup_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "this configuration cannot start here" (a refused broker login, an
    API host beyond loopback, an unusable database file, a controller without a ``control``
    section): the CLI reports them in one line, not as a traceback."""
    return (
        ApiError,
        BusError,
        StorageError,
        ControlNotConfiguredError,
        GatewayBufferError,
        Ieee2030_5Error,
        Ieee2030_5NotConfiguredError,
    )


class ControlNotConfiguredError(Exception):
    """``run controller`` on a site file without a ``control`` section."""


def storage_path(config: GridPilotConfig, base_dir: Path) -> Path:
    return site_path(base_dir, config.storage.path)


async def run_services(
    config: GridPilotConfig,
    base_dir: Path,
    services: Collection[Service],
    stop: asyncio.Event,
    on_ready: Callable[[Running], None] | None = None,
    *,
    http_port: int | None = None,
    ingest_instance: str = "0",
) -> None:
    """Start the given services, call ``on_ready``, and run until ``stop`` is set.

    ``http_port`` overrides ``api.port`` (0 = any free port). ``ingest_instance`` tells
    ingest processes of one site apart (their MQTT client ids; instance ``0`` alone handles
    Sparkplug B), so several split the shared subscription. Services stop in reverse order
    of start: the API and gateway first, ingest (flushing its buffer) before storage closes.
    """
    if config.control is None and Service.CONTROLLER in services:
        if len(services) == 1:
            raise ControlNotConfiguredError(
                "the site file has no 'control' section: add one (see examples/building.yaml) "
                "to run the controller"
            )
        services = [s for s in services if s is not Service.CONTROLLER]
    async with AsyncExitStack() as stack:
        embedded = config.broker.url is None
        if embedded:
            broker = await stack.enter_async_context(
                EmbeddedBroker(port=config.broker.embedded_port)
            )
            address = broker.address
            log.info("embedded MQTT broker on %s", broker.url)
        else:
            address = BrokerAddress.from_config(config.broker, base_dir=base_dir)
        db_path: Path | None = None
        storage = None
        # The 2030.5 client reads stored telemetry only for its mirrors.
        mirrors_wanted = Service.IEEE2030_5 in services and _has_mirrors(config)
        if {Service.INGEST, Service.API, Service.CONTROLLER} & set(services) or mirrors_wanted:
            db_path = storage_path(config, base_dir)
            storage = await stack.enter_async_context(open_storage(config.storage, base_dir))
        ingest = gateway = controller = None
        if Service.INGEST in services and storage is not None:
            # The writer owns housekeeping: one retention timer per database, not per reader.
            await stack.enter_async_context(RetentionService(storage))
            ingest = await stack.enter_async_context(
                IngestService(
                    config,
                    address,
                    storage,
                    embedded_broker=embedded,
                    instance=ingest_instance,
                    base_dir=base_dir,
                )
            )
        if Service.GATEWAY in services:
            buffer = config.gateway.buffer
            gateway = await stack.enter_async_context(
                GatewayService(
                    config,
                    address,
                    buffer_path=site_path(
                        base_dir, buffer.path or Path(f"gateway-{config.gateway.id}.buffer.db")
                    ),
                )
            )
        if config.homeassistant.enabled and {Service.GATEWAY, Service.INGEST} & set(services):
            # With the gateway (its devices' points) or ingest (a Sparkplug-only site);
            # processes running both publish the same retained configs, which is harmless.
            await stack.enter_async_context(HomeAssistantDiscovery(config, address))
        if Service.CONTROLLER in services and storage is not None:
            inputs = StoredInputs(storage, config)
            controller = await stack.enter_async_context(
                ControllerService(
                    config,
                    address,
                    await controllers_from_history(config, inputs),
                    base_dir=base_dir,
                    forecasts=inputs,
                )
            )
        if Service.IEEE2030_5 in services:
            mirrors = None
            if mirrors_wanted and storage is not None and config.ieee2030_5 is not None:
                mirrors = StorageMirrorPoster(
                    storage, config.site.id, specs_from_config(config.ieee2030_5)
                )
            await stack.enter_async_context(
                Ieee2030_5Service(config, address, base_dir=base_dir, mirrors=mirrors)
            )
        api_url: str | None = None
        if Service.API in services and storage is not None:
            api = await stack.enter_async_context(
                ApiService(
                    config,
                    address,
                    storage,
                    base_dir=base_dir,
                    port=http_port,
                    # /metrics reads the live figures of the services next to it.
                    local=LocalServices(ingest, gateway, controller),
                )
            )
            api_url = api.url
        if on_ready is not None:
            on_ready(Running(address, embedded, db_path, api_url))
        # Under systemd: READY=1 now, then watchdog heartbeats while the loop runs and no
        # task the services started has crashed (see gridpilot.ops.systemd).
        started = asyncio.all_tasks() - {asyncio.current_task()}
        async with supervision(f"{', '.join(services)} running", started):
            await stop.wait()
        log.info("stopping")


def _has_mirrors(config: GridPilotConfig) -> bool:
    section = config.ieee2030_5
    return section is not None and (section.site_meter is not None or bool(section.der_mirrors))


async def controllers_from_history(
    config: GridPilotConfig, inputs: StoredInputs
) -> list[Controller[Any]]:
    """The configured controllers, each zone planner with its zone's stored history to
    identify its thermal model from (none yet: it runs the plain thermostat and says so)."""
    histories: dict[str, ZoneHistory] = {}
    now = datetime.now(UTC)
    for zone in config.control.hvac if config.control is not None else ():
        try:
            history = await inputs.zone_history(zone, now)
        except StorageError as exc:
            log.warning("no history for %s: %s; its planner starts without a model", zone.zone, exc)
            continue
        if history is not None:
            histories[zone.zone] = history
    return build_controllers(config, histories)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: services then shut down in reverse order."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
