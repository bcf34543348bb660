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
from enum import StrEnum
from pathlib import Path

from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.embedded import EmbeddedBroker
from gridpilot.config import GridPilotConfig
from gridpilot.gateway.service import GatewayService
from gridpilot.ingest.service import IngestService
from gridpilot.storage import open_storage

log = logging.getLogger(__name__)


class Service(StrEnum):
    GATEWAY = "gateway"
    INGEST = "ingest"
    CONTROLLER = "controller"
    API = "api"


ALL_SERVICES = (Service.GATEWAY, Service.INGEST)
"""Services that exist today; ``controller`` (issue 4) and ``api`` (issue 5) are not built yet."""


@dataclass(frozen=True, slots=True)
class Running:
    """What a caller may want to print once everything is up."""

    broker: BrokerAddress
    embedded_broker: bool
    storage_path: Path | None


def storage_path(config: GridPilotConfig, base_dir: Path) -> Path:
    path = config.storage.path
    return path if path.is_absolute() else base_dir / path


async def run_services(
    config: GridPilotConfig,
    base_dir: Path,
    services: Collection[Service],
    stop: asyncio.Event,
    on_ready: Callable[[Running], None] | None = None,
) -> None:
    """Start the given services, call ``on_ready``, and run until ``stop`` is set."""
    unbuilt = [s for s in services if s not in ALL_SERVICES]
    if unbuilt:
        names = ", ".join(unbuilt)
        raise NotImplementedError(
            f"service(s) {names} are not part of this release; run gateway and/or ingest"
        )
    async with AsyncExitStack() as stack:
        embedded = config.broker.url is None
        if embedded:
            broker = await stack.enter_async_context(
                EmbeddedBroker(port=config.broker.embedded_port)
            )
            address = BrokerAddress("127.0.0.1", broker.port)
            log.info("embedded MQTT broker on %s", broker.url)
        else:
            address = BrokerAddress.from_config(config.broker)
        db_path: Path | None = None
        if Service.INGEST in services:
            db_path = storage_path(config, base_dir)
            storage = await stack.enter_async_context(open_storage(config.storage, base_dir))
            await stack.enter_async_context(
                IngestService(config, address, storage, embedded_broker=embedded)
            )
        if Service.GATEWAY in services:
            await stack.enter_async_context(GatewayService(config, address))
        if on_ready is not None:
            on_ready(Running(address, embedded, db_path))
        await stop.wait()
        log.info("stopping")


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: services then shut down in reverse order."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
