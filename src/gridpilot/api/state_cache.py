"""The last retained ``state`` of every device, as the API shows it.

The gateway publishes each device's health as a retained JSON object on
``gridpilot/v1/{site}/{device}/state`` and its own on ``gridpilot/v1/{site}/{gateway}/state``
(with its last will there). :class:`DeviceStateCache` keeps the newest parsed object per
device; :meth:`DeviceStateCache.follow` feeds it from a ``BusClient`` subscription.

Invariants:

* Only topics of the configured site are taken; a payload must be a JSON object of at most
  ``MAX_STATE_BYTES``. Anything else is ignored, counted, and logged (the first few times),
  and the previous good state of that device is kept.
* An empty retained payload clears a state (that is how MQTT deletes a retained message).
* The cache is bounded: configured devices and the gateway always have a slot; at most
  ``spare_slots`` other ids are kept besides them (first come, first kept), the rest are
  counted and dropped. A broker that anyone can publish to cannot grow it without limit.
* While the gateway's own state is ``offline`` the states of its devices are stale (the
  gateway's last will says so): :meth:`DeviceStateCache.status` reports them ``unknown``.

Everything except ``follow`` is synchronous and does no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from gridpilot.bus.client import BusClient
from gridpilot.config.models import GridPilotConfig
from gridpilot.model import Topic, TopicKind, parse_topic

__all__ = [
    "MAX_STATE_BYTES",
    "DeviceStateCache",
    "EffectiveStatus",
    "StateCacheStats",
]

log = logging.getLogger("gridpilot.api")

MAX_STATE_BYTES: Final = 64 * 1024
"""A device state is a few hundred bytes; anything this large is not one."""
_SPARE_SLOTS: Final = 8
_WARN_FIRST: Final = 10  # ignored payloads logged one by one before thinning out
_WARN_EVERY: Final = 1000  # then one warning per this many


class EffectiveStatus(StrEnum):
    """What the API tells a reader about a device."""

    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"
    """No state received, a state without a recognisable ``status``, or a stale state
    (the gateway that publishes it is offline)."""


@dataclass(slots=True)
class StateCacheStats:
    """Counters since the cache was created."""

    updates: int = 0
    """States stored."""
    cleared: int = 0
    """Retained states deleted (empty payload)."""
    unparseable: int = 0
    """Payloads ignored: not JSON, not a JSON object, or larger than ``MAX_STATE_BYTES``."""
    over_capacity: int = 0
    """States of unconfigured ids ignored because the spare slots were taken."""

    @property
    def ignored(self) -> int:
        return self.unparseable + self.over_capacity


class DeviceStateCache:
    """Newest state object per device of one site. See the module docstring."""

    def __init__(
        self,
        site: str,
        devices: Iterable[str],
        gateway: str,
        *,
        polled: Iterable[str] | None = None,
        spare_slots: int = _SPARE_SLOTS,
    ) -> None:
        """
        Args:
            site: the site whose topics are taken; others are ignored.
            devices: configured device ids (each always has a slot).
            gateway: id of the gateway, whose own ``state`` says whether its devices'
                states are current.
            polled: devices the gateway polls (their states go stale with it); default all
                of ``devices``. The gateway's state may list them itself (``devices``).
            spare_slots: states of other ids kept at most.
        """
        if spare_slots < 0:
            raise ValueError("spare_slots must not be negative")
        self.site = site
        self.gateway = gateway
        self._reserved = frozenset(devices) | {gateway}
        self._polled = frozenset(self._reserved - {gateway} if polled is None else polled)
        self._spare_slots = spare_slots
        self._states: dict[str, dict[str, Any]] = {}
        self._spare_used: set[str] = set()
        self.stats = StateCacheStats()

    @classmethod
    def for_config(cls, config: GridPilotConfig) -> DeviceStateCache:
        """A cache for a site file's devices and gateway."""
        return cls(
            config.site.id,
            (d.id for d in config.devices),
            config.gateway.id,
            polled=(d.id for d in config.devices if d.protocol.is_modbus),
        )

    @property
    def capacity(self) -> int:
        """States kept at most."""
        return len(self._reserved) + self._spare_slots

    @property
    def topic_filter(self) -> str:
        """The subscription that feeds this cache: ``gridpilot/v1/{site}/+/state``."""
        return Topic.filter(TopicKind.STATE, self.site)

    def __len__(self) -> int:
        return len(self._states)

    # ------------------------------------------------------------------ updates (pure)

    def apply(self, topic: str, payload: bytes) -> bool:
        """Take one message; True when the cache changed."""
        parsed = parse_topic(topic)
        if (
            parsed is None
            or parsed.kind is not TopicKind.STATE
            or parsed.site != self.site
            or parsed.device is None
        ):
            return False
        device = parsed.device
        if not payload:
            return self._clear(device)
        state = self._parse(device, payload)
        if state is None:
            return False
        if device not in self._reserved and device not in self._spare_used:
            if len(self._spare_used) >= self._spare_slots:
                self.stats.over_capacity += 1
                self._warn(
                    self.stats.over_capacity,
                    "ignoring the state of unconfigured %r: the cache keeps %d besides the "
                    "configured devices (%d ignored so far)",
                    device,
                    self._spare_slots,
                    self.stats.over_capacity,
                )
                return False
            self._spare_used.add(device)
        self._states[device] = state
        self.stats.updates += 1
        return True

    def _clear(self, device: str) -> bool:
        self._spare_used.discard(device)
        if self._states.pop(device, None) is None:
            return False
        self.stats.cleared += 1
        return True

    def _parse(self, device: str, payload: bytes) -> dict[str, Any] | None:
        why: str | None = None
        state: object = None
        if len(payload) > MAX_STATE_BYTES:
            why = f"{len(payload)} bytes, more than {MAX_STATE_BYTES}"
        else:
            try:
                state = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                why = f"not JSON ({exc})"
            else:
                if not isinstance(state, dict):
                    why = f"JSON {type(state).__name__}, not an object"
        if why is None:
            assert isinstance(state, dict)  # noqa: S101 -- narrowed above, for mypy
            return state
        self.stats.unparseable += 1
        self._warn(
            self.stats.unparseable,
            "ignoring the state of %r: %s (%d ignored so far)",
            device,
            why,
            self.stats.unparseable,
        )
        return None

    @staticmethod
    def _warn(count: int, message: str, *args: object) -> None:
        # A misbehaving publisher must not flood the log: the first few, then 1 in 1000.
        if count <= _WARN_FIRST or count % _WARN_EVERY == 0:
            log.warning(message, *args)

    # ------------------------------------------------------------------ reads (pure)

    def get(self, device: str) -> Mapping[str, Any] | None:
        """The newest state object of ``device`` as published, or None when unknown."""
        return self._states.get(device)

    def status(self, device: str) -> EffectiveStatus:
        """``online``/``offline`` from the device's state, ``unknown`` when there is none,
        when it has no valid ``status``, or while the gateway publishing it is offline."""
        state = self._states.get(device)
        if state is None:
            return EffectiveStatus.UNKNOWN
        if device != self.gateway and self._stale(device):
            return EffectiveStatus.UNKNOWN
        return _status_of(state)

    def _stale(self, device: str) -> bool:
        gateway = self._states.get(self.gateway)
        if gateway is None or _status_of(gateway) is not EffectiveStatus.OFFLINE:
            return False
        listed = gateway.get("devices")
        if isinstance(listed, list):
            return device in listed
        return device in self._polled

    # ------------------------------------------------------------------ feeding (I/O)

    async def follow(self, bus: BusClient) -> None:
        """Subscribe ``bus`` to this site's states and apply what arrives, until the bus is
        closed. The subscription is restored on reconnect, and the broker then sends the
        retained states again."""
        await bus.subscribe(self.topic_filter, qos=1)
        async for message in bus.messages():
            self.apply(message.topic, message.payload)


def _status_of(state: Mapping[str, Any]) -> EffectiveStatus:
    status = state.get("status")
    if status == EffectiveStatus.ONLINE:
        return EffectiveStatus.ONLINE
    if status == EffectiveStatus.OFFLINE:
        return EffectiveStatus.OFFLINE
    return EffectiveStatus.UNKNOWN
