"""The MQTT bus: client, embedded broker, payload codecs.

See ``client`` (``BusClient``), ``embedded`` (``EmbeddedBroker``), ``codec`` (JSON payloads)
and ``errors`` (the error tree).
"""

from gridpilot.bus.client import BrokerAddress, BusClient, BusStats, Message, MqttVersion, Will
from gridpilot.bus.errors import (
    BusClosedError,
    BusError,
    BusRefusedError,
    BusTimeoutError,
    BusUnavailableError,
    PayloadError,
)

__all__ = [
    "BrokerAddress",
    "BusClient",
    "BusClosedError",
    "BusError",
    "BusRefusedError",
    "BusStats",
    "BusTimeoutError",
    "BusUnavailableError",
    "Message",
    "MqttVersion",
    "PayloadError",
    "Will",
]
