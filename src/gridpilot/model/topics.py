"""The MQTT topic scheme (ARCHITECTURE.md, "Topics").

gridpilot/v1/{site}/{device}/telemetry
gridpilot/v1/{site}/{device}/command
gridpilot/v1/{site}/{device}/command/result
gridpilot/v1/{site}/{device}/state          (retained)
gridpilot/v1/{site}/{controller}/request    operator requests to the control engine
gridpilot/v1/{site}/{controller}/request/result
gridpilot/v1/{site}/events
gridpilot/v1/{site}/deadletter
gridpilot/v1/{site}/grid/controls           (retained) the utility's controls in force (2030.5)
gridpilot/v1/{site}/ieee2030_5/status       (retained) the 2030.5 client's status
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

PREFIX = "gridpilot/v1"


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    COMMAND = "command"
    COMMAND_RESULT = "command/result"
    STATE = "state"
    REQUEST = "request"
    REQUEST_RESULT = "request/result"
    EVENTS = "events"
    DEADLETTER = "deadletter"
    GRID_CONTROLS = "grid/controls"
    IEEE2030_5_STATUS = "ieee2030_5/status"


_SITE_LEVEL = {
    TopicKind.EVENTS,
    TopicKind.DEADLETTER,
    TopicKind.GRID_CONTROLS,
    TopicKind.IEEE2030_5_STATUS,
}


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed or to-be-built GridPilot topic."""

    kind: TopicKind
    site: str
    device: str | None = None

    def __str__(self) -> str:
        if self.kind in _SITE_LEVEL:
            return f"{PREFIX}/{self.site}/{self.kind}"
        if self.device is None:
            raise ValueError(f"a {self.kind} topic needs a device")
        return f"{PREFIX}/{self.site}/{self.device}/{self.kind}"

    @classmethod
    def telemetry(cls, site: str, device: str) -> Topic:
        return cls(TopicKind.TELEMETRY, site, device)

    @classmethod
    def command(cls, site: str, device: str) -> Topic:
        return cls(TopicKind.COMMAND, site, device)

    @classmethod
    def command_result(cls, site: str, device: str) -> Topic:
        return cls(TopicKind.COMMAND_RESULT, site, device)

    @classmethod
    def state(cls, site: str, device: str) -> Topic:
        return cls(TopicKind.STATE, site, device)

    @classmethod
    def request(cls, site: str, controller: str) -> Topic:
        return cls(TopicKind.REQUEST, site, controller)

    @classmethod
    def request_result(cls, site: str, controller: str) -> Topic:
        return cls(TopicKind.REQUEST_RESULT, site, controller)

    @classmethod
    def events(cls, site: str) -> Topic:
        return cls(TopicKind.EVENTS, site)

    @classmethod
    def deadletter(cls, site: str) -> Topic:
        return cls(TopicKind.DEADLETTER, site)

    @classmethod
    def grid_controls(cls, site: str) -> Topic:
        """The utility's controls in force, retained (published by the 2030.5 client)."""
        return cls(TopicKind.GRID_CONTROLS, site)

    @classmethod
    def ieee2030_5_status(cls, site: str) -> Topic:
        """The 2030.5 client's status, retained."""
        return cls(TopicKind.IEEE2030_5_STATUS, site)

    @staticmethod
    def filter(kind: TopicKind, site: str = "+", device: str = "+") -> str:
        """A subscription filter, e.g. ``gridpilot/v1/+/+/telemetry``."""
        if kind in _SITE_LEVEL:
            return f"{PREFIX}/{site}/{kind}"
        return f"{PREFIX}/{site}/{device}/{kind}"


def parse_topic(topic: str) -> Topic | None:
    """Parse a GridPilot topic; None when the topic is not one of ours."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "gridpilot" or parts[1] != "v1":
        return None
    site = parts[2]
    rest = parts[3:]
    if "/".join(rest) in _SITE_LEVEL:
        return Topic(TopicKind("/".join(rest)), site)
    if len(rest) < 2:
        return None
    device, kind = rest[0], "/".join(rest[1:])
    try:
        parsed_kind = TopicKind(kind)
    except ValueError:
        return None
    if parsed_kind in _SITE_LEVEL:
        return None
    return Topic(parsed_kind, site, device)
