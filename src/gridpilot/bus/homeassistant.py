"""Home Assistant MQTT discovery: the site's points appear in Home Assistant without YAML.

For every configured point of every device, a retained sensor config on

    {discovery_prefix}/sensor/gridpilot_{site}_{device}_{point}/config

(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and
https://www.home-assistant.io/integrations/sensor.mqtt/): the entity reads its value from the
device's GridPilot telemetry (``state_topic`` + ``value_template``), its availability from
the device's retained state (and, for polled devices, the gateway's), and its
``device_class``/``state_class``/``unit_of_measurement`` from the point's unit suffix
(``_w`` -> power/measurement/W, ``_wh`` -> energy/total_increasing/Wh...; the pairs are
those of Home Assistant's sensor device-class table,
https://www.home-assistant.io/integrations/sensor/#device-class). When Home Assistant
(re)starts it publishes ``online`` on ``{discovery_prefix}/status``; every config is then
published again. Configs of points no longer in the site file are removed (an empty
retained message) when the broker hands them back.

``discovery_configs`` is pure; ``HomeAssistantDiscovery`` is the service around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import orjson

import gridpilot
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.errors import BusTimeoutError
from gridpilot.config.models import DeviceProtocol, GridPilotConfig
from gridpilot.model import Topic

__all__ = [
    "DiscoveryConfig",
    "HomeAssistantDiscovery",
    "SensorKind",
    "discovery_configs",
    "sensor_kind",
]

log = logging.getLogger("gridpilot.bus.homeassistant")

MANUFACTURER: Final = "GridPilot"


@dataclass(frozen=True, slots=True)
class SensorKind:
    """How Home Assistant should treat a point."""

    unit: str | None
    device_class: str | None
    state_class: str | None


_MEASUREMENT: Final = "measurement"
_TOTAL_INCREASING: Final = "total_increasing"

# Unit suffix -> (Home Assistant unit, device class, state class). Each device class/unit
# pair is one Home Assistant's sensor documentation lists; energy meters count up.
_BY_SUFFIX: Final[dict[str, SensorKind]] = {
    "_w": SensorKind("W", "power", _MEASUREMENT),
    "_wh": SensorKind("Wh", "energy", _TOTAL_INCREASING),
    "_var": SensorKind("var", "reactive_power", _MEASUREMENT),
    "_varh": SensorKind("varh", None, _TOTAL_INCREASING),
    "_va": SensorKind("VA", "apparent_power", _MEASUREMENT),
    "_vah": SensorKind("VAh", None, _TOTAL_INCREASING),
    "_v": SensorKind("V", "voltage", _MEASUREMENT),
    "_a": SensorKind("A", "current", _MEASUREMENT),
    "_ma": SensorKind("mA", "current", _MEASUREMENT),
    "_ah": SensorKind("Ah", None, _MEASUREMENT),
    "_hz": SensorKind("Hz", "frequency", _MEASUREMENT),
    "_pct": SensorKind("%", None, _MEASUREMENT),
    "_degc": SensorKind("°C", "temperature", _MEASUREMENT),
    "_pa": SensorKind("Pa", "pressure", _MEASUREMENT),
    "_rpm": SensorKind("rpm", None, _MEASUREMENT),
    "_m3h": SensorKind("m³/h", "volume_flow_rate", _MEASUREMENT),
    "_wm2": SensorKind("W/m²", "irradiance", _MEASUREMENT),
    "_pf": SensorKind(None, "power_factor", _MEASUREMENT),
    "_s": SensorKind("s", "duration", _MEASUREMENT),
    "_count": SensorKind(None, None, _TOTAL_INCREASING),
    # Enumerations and status words: a number with no unit and no statistics.
    "_state": SensorKind(None, None, None),
}
_SUFFIXES_LONGEST_FIRST: Final = sorted(_BY_SUFFIX, key=len, reverse=True)


def sensor_kind(point: str) -> SensorKind:
    """Home Assistant's unit, device class and state class for a point name."""
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if point.endswith(suffix) and len(point) > len(suffix):
            kind = _BY_SUFFIX[suffix]
            break
    else:
        return SensorKind(None, None, None)
    if suffix == "_wh" and any(word in point for word in ("stored", "capacity", "remaining")):
        # What a battery holds now, not a meter reading: goes up and down.
        return SensorKind("Wh", "energy_storage", _MEASUREMENT)
    if suffix == "_pct":
        if "soc" in point.split("_") or "state_of_charge" in point or "battery" in point:
            return SensorKind("%", "battery", _MEASUREMENT)
        if "humidity" in point:
            return SensorKind("%", "humidity", _MEASUREMENT)
    return kind


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """One retained discovery message."""

    topic: str
    payload: Mapping[str, Any]
    unique_id: str

    def encode(self) -> bytes:
        return orjson.dumps(self.payload)


def _title(point: str) -> str:
    """``active_power_l1_w`` -> ``Active power l1`` (the unit is Home Assistant's to show)."""
    kind_suffix = next(
        (s for s in _SUFFIXES_LONGEST_FIRST if point.endswith(s) and len(point) > len(s)), ""
    )
    words = point[: len(point) - len(kind_suffix)].replace("_", " ").strip()
    return (words[:1].upper() + words[1:]) if words else point


def discovery_configs(config: GridPilotConfig) -> list[DiscoveryConfig]:
    """A sensor config for every configured point of every device of the site."""
    site = config.site.id
    prefix = config.homeassistant.discovery_prefix
    gateway_state = str(Topic.state(site, config.gateway.id))
    sparkplug_ids = (
        {d.id for d in config.sparkplug.devices} if config.sparkplug is not None else set()
    )
    origin = {"name": "GridPilot", "sw_version": gridpilot.__version__}
    out: list[DiscoveryConfig] = []
    for device in config.devices:
        polled = device.protocol.is_modbus
        availability: list[dict[str, str]] = []
        if polled or device.id in sparkplug_ids:
            # The device's retained state: written by the gateway (polled devices) or by
            # ingest (Sparkplug births and deaths). A plain MQTT device has none.
            availability.append(_availability(str(Topic.state(site, device.id))))
        if polled:
            # While the gateway is gone its devices' states are stale: both must be online.
            availability.append(_availability(gateway_state))
        model = device.profile or _MODEL[device.protocol]
        ha_device = {
            "identifiers": [f"gridpilot_{site}_{device.id}"],
            "name": device.name or device.id,
            "manufacturer": MANUFACTURER,
            "model": model,
            "sw_version": gridpilot.__version__,
        }
        state_topic = str(Topic.telemetry(site, device.id))
        for point in device.points:
            name = point.point
            unique_id = f"gridpilot_{site}_{device.id}_{name}"
            kind = sensor_kind(name)
            payload: dict[str, Any] = {
                "name": _title(name),
                "unique_id": unique_id,
                "state_topic": state_topic,
                # A telemetry message may carry only some points (poll classes): keep the
                # entity's state when this one is absent (``this`` is the entity's state
                # object in MQTT templates); ``none`` renders "None", which Home Assistant
                # reads as unknown, where a number is expected and there is none yet.
                "value_template": (
                    f"{{{{ value_json['values']['{name}'] if '{name}' in value_json['values'] "
                    "else (this.state if this.state not in ['unknown', 'unavailable'] "
                    "else none) }}"
                ),
                "device": ha_device,
                "origin": origin,
            }
            if kind.device_class is not None:
                payload["device_class"] = kind.device_class
            if kind.state_class is not None:
                payload["state_class"] = kind.state_class
            if kind.unit is not None:
                payload["unit_of_measurement"] = kind.unit
            if availability:
                payload["availability"] = availability
                payload["availability_mode"] = "all"
            out.append(DiscoveryConfig(f"{prefix}/sensor/{unique_id}/config", payload, unique_id))
    return out


_MODEL: Final = {
    DeviceProtocol.MODBUS_TCP: "Modbus TCP device",
    DeviceProtocol.MODBUS_RTU: "Modbus RTU device",
    DeviceProtocol.MODBUS_RTU_TCP: "Modbus RTU-over-TCP device",
    DeviceProtocol.MQTT: "MQTT device",
}


def _availability(topic: str) -> dict[str, str]:
    return {
        "topic": topic,
        "value_template": "{{ value_json.status }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


class HomeAssistantDiscovery:
    """Publishes the discovery configs (retained) and republishes them when Home Assistant
    announces ``online``. An async context manager; runs beside the gateway and ingest."""

    def __init__(
        self,
        config: GridPilotConfig,
        broker: BrokerAddress,
        *,
        instance: str = "0",
        publish_timeout_s: float = 10.0,
    ) -> None:
        self._configs = discovery_configs(config)
        self._topics = {c.topic for c in self._configs}
        prefix = config.homeassistant.discovery_prefix
        self.status_topic = f"{prefix}/status"
        self._config_filter = f"{prefix}/sensor/+/config"
        self._ours = f"{prefix}/sensor/gridpilot_{config.site.id}_"
        bus = config.broker
        self._bus = BusClient(
            broker,
            f"{bus.client_id_prefix}-ha-{config.site.id}-{instance}",
            max_outgoing=max(bus.max_outgoing, len(self._configs) + 100),
            keepalive_s=bus.keepalive.total_seconds(),
            connect_timeout_s=bus.connect_timeout.total_seconds(),
            publish_timeout_s=publish_timeout_s,
        )
        self._publish_timeout_s = publish_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        """Config messages published so far."""
        self.rounds = 0
        """Times the whole set was published (start, and each ``online``)."""
        self.removed = 0
        """Stale GridPilot configs removed."""

    @property
    def configs(self) -> list[DiscoveryConfig]:
        return list(self._configs)

    async def __aenter__(self) -> Self:
        await self._bus.__aenter__()
        try:
            await self._bus.wait_connected(timeout=0)
        except BusTimeoutError as exc:
            log.warning("Home Assistant discovery starts without the broker (%s)", exc)
        except BaseException:
            await self._bus.close()
            raise
        self._task = asyncio.create_task(self._run(), name="homeassistant-discovery")
        try:
            await self._bus.subscribe(self.status_topic, qos=1)
            await self._bus.subscribe(self._config_filter, qos=1)
            await self.publish_all()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "Home Assistant discovery: %d sensors under %s; republished on %s = online",
            len(self._configs),
            self._config_filter,
            self.status_topic,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._bus.close()

    async def publish_all(self) -> None:
        """Publish every config and wait (up to ``publish_timeout_s``) until the broker has
        them: a Home Assistant subscribing afterwards gets them all as retained."""
        for item in self._configs:
            await self._bus.publish(item.topic, item.encode(), qos=1, retain=True)
            self.published += 1
        self.rounds += 1
        try:
            await self._bus.flush(timeout=self._publish_timeout_s)
        except BusTimeoutError as exc:
            log.warning("Home Assistant discovery configs not yet at the broker: %s", exc)

    async def _run(self) -> None:
        async for message in self._bus.messages():
            if message.topic == self.status_topic:
                if message.payload.strip() == b"online":
                    log.info("Home Assistant is online: publishing its discovery configs again")
                    with contextlib.suppress(BusTimeoutError):
                        await self.publish_all()
            elif (
                message.retain
                and message.payload
                and message.topic.startswith(self._ours)
                and message.topic not in self._topics
            ):
                # A point or device that left the site file: remove its entity.
                await self._bus.publish(message.topic, b"", qos=1, retain=True)
                self.removed += 1
