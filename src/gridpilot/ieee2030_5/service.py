"""``gridpilot run ieee2030_5``: the 2030.5 client on the bus.

Publishes (bus contracts of issue 6, both retained):

- ``gridpilot/v1/{site}/grid/controls`` whenever the controls in force change and at least
  every ``publish_interval_s`` (60 s), with ``valid_until`` so a consumer can tell a stale
  message from a client that stopped;
- ``gridpilot/v1/{site}/ieee2030_5/status`` whenever anything in it changes, and at least
  every ``publish_interval_s`` too (its ``ts`` shows the client is alive);
- on ``gridpilot/v1/{site}/events`` (not retained), what happened between two statuses
  (``ieee2030_5.timeline``): registration, utility events received / started / completed /
  cancelled, Responses posted, errors -- the site's timeline.

Restart policy: 2030.5 failures (server down, refusals, rejected documents) are handled
inside the client with backoff and never end the service; an unexpected exception is
logged, reported as ``last_error`` and the client loop starts again after 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.errors import BusError
from gridpilot.config.models import GridPilotConfig
from gridpilot.ieee2030_5.client import (
    CsipClient,
    MirrorPoster,
    Snapshot,
    controls_message,
    status_message,
)
from gridpilot.ieee2030_5.timeline import timeline_events
from gridpilot.model.topics import Topic
from gridpilot.tasks import cancel_and_wait

__all__ = ["Ieee2030_5NotConfiguredError", "Ieee2030_5Service"]

log = logging.getLogger(__name__)

_RESTART_AFTER_S = 30.0


class Ieee2030_5NotConfiguredError(Exception):  # noqa: N801 -- the standard's name
    """``run ieee2030_5`` on a site file without an ``ieee2030_5`` section."""


class Ieee2030_5Service:  # noqa: N801 -- the standard's name
    """The client and its two retained topics; an async context manager."""

    def __init__(
        self,
        config: GridPilotConfig,
        broker: BrokerAddress,
        *,
        base_dir: Path,
        mirrors: MirrorPoster | None = None,
    ) -> None:
        if config.ieee2030_5 is None:
            raise Ieee2030_5NotConfiguredError(
                "the site file has no 'ieee2030_5' section: add one (server, cert_file, "
                "key_file, ca_file, pin) to run the IEEE 2030.5 client"
            )
        self.config = config
        self.site = config.site.id
        self.section = config.ieee2030_5
        self.broker = broker
        # Built here so a bad key file or certificate stops the start with its message.
        self.client = CsipClient(self.section, base_dir=base_dir, mirrors=mirrors)
        self._bus: BusClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_controls: bytes | None = None
        self._controls_sent_at = -float("inf")
        self._last_status: bytes | None = None
        self._status_sent_at = -float("inf")
        self._timeline_seen: dict[str, Any] | None = None

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        try:
            bus = BusClient(
                self.broker,
                f"{self.config.broker.client_id_prefix}-ieee2030_5-{self.site}",
                max_outgoing=self.config.broker.max_outgoing,
                keepalive_s=self.config.broker.keepalive.total_seconds(),
                connect_timeout_s=self.config.broker.connect_timeout.total_seconds(),
            )
            await bus.__aenter__()
        except BaseException:
            await self.client.__aexit__(None, None, None)
            raise
        self._bus = bus
        self._task = asyncio.create_task(self._run(bus), name="ieee2030_5-client")
        log.info(
            "IEEE 2030.5 client for %s: LFDI %s, SFDI %d",
            self.section.server,
            self.client.lfdi,
            self.client.sfdi,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        await self.client.__aexit__(exc_type, exc, tb)
        if self._bus is not None:
            await self._bus.close()

    async def _run(self, bus: BusClient) -> None:
        async def publish(snapshot: Snapshot) -> None:
            await self._publish(bus, snapshot)

        while True:
            try:
                await self.client.run(publish)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("IEEE 2030.5 client loop failed; starting it again")
                await asyncio.sleep(_RESTART_AFTER_S)

    async def _publish(self, bus: BusClient, snapshot: Snapshot) -> None:
        interval = self.section.publish_interval_s
        controls = controls_message(snapshot, publish_interval_s=interval)
        # Compare without the timestamps: a republish is due on change or after interval.
        body = orjson.dumps(controls["controls"], option=orjson.OPT_SORT_KEYS)
        mono = time.monotonic()
        try:
            # Before the first walk the client knows nothing: publishing "{}" then would
            # clear the controls a previous run left retained.
            due = body != self._last_controls or mono - self._controls_sent_at >= interval
            if snapshot.ready and due:
                await bus.publish(
                    str(Topic.grid_controls(self.site)), orjson.dumps(controls), retain=True
                )
                self._last_controls = body
                self._controls_sent_at = mono
            status: dict[str, Any] = dict(status_message(snapshot))
            # The timeline first: what changed since the last status, once each.
            for event in timeline_events(self._timeline_seen, status):
                await bus.publish(
                    str(Topic.events(self.site)),
                    orjson.dumps(
                        {
                            "ts": status.get("ts"),
                            "level": event.level,
                            "source": "ieee2030_5",
                            "message": event.message,
                        }
                    ),
                    qos=1,
                )
            self._timeline_seen = status
            compare = orjson.dumps({k: v for k, v in status.items() if k != "ts"})
            if compare != self._last_status or mono - self._status_sent_at >= interval:
                await bus.publish(
                    str(Topic.ieee2030_5_status(self.site)), orjson.dumps(status), retain=True
                )
                self._last_status = compare
                self._status_sent_at = mono
        except BusError as exc:
            # The bus client queues and reconnects; only a full queue lands here.
            log.warning("IEEE 2030.5 client: cannot publish: %s", exc)
