"""Response bodies of the REST API (they make the OpenAPI document). Times are RFC 3339 UTC."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gridpilot.api.state_cache import EffectiveStatus
from gridpilot.storage.base import Agg


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorOut(_Out):
    """Every error response."""

    error: str = Field(description="What went wrong and what to do about it.")
    detail: Any = Field(default=None, description="Structured context (parameter, value...).")


class HealthzOut(_Out):
    status: str = "ok"


class GatewayOut(_Out):
    id: str
    status: EffectiveStatus
    health: dict[str, Any] | None = Field(
        description="The gateway's retained state as published; null when none was seen."
    )


class SiteOut(_Out):
    id: str
    name: str
    timezone: str
    device_count: int
    gateway: GatewayOut


class ControlOut(_Out):
    """The control engine as it last reported itself (its retained state)."""

    id: str = Field(description="The controller's device id on the bus.")
    status: EffectiveStatus
    state: dict[str, Any] | None = Field(
        description="Controllers, dry-run, overrides, active fail-safes, targets and why, "
        "cycle times; null until the controller has published."
    )


class PointOut(_Out):
    name: str
    unit: str | None = Field(description="From the name's suffix: active_power_w -> W.")
    writable: bool
    valid_range: tuple[float, float] | None = Field(description="[min, max] in the unit.")


class DeviceOut(_Out):
    id: str
    name: str
    protocol: str
    poll_interval_s: float = Field(description="How often the gateway reads the device.")
    points: list[PointOut]
    status: EffectiveStatus = Field(
        description="online/offline from the device's state; unknown when no state was "
        "seen or while the gateway that publishes it is offline (the state is then stale)."
    )
    health: dict[str, Any] | None = Field(
        description="The retained MQTT state of the device as the gateway publishes it "
        "(status, since, last_error, counters, ...); null when none was seen."
    )


class DevicesOut(_Out):
    devices: list[DeviceOut]


class LatestValueOut(_Out):
    device: str
    point: str
    unit: str | None
    value: float
    ts: str
    age_s: float = Field(description="Seconds between ts and the time of the response.")


class LatestOut(_Out):
    site: str
    now: str
    values: list[LatestValueOut]


class HistoryValueOut(_Out):
    ts: str = Field(description="The sample's time, or the start of its bucket.")
    value: float


class HistoryOut(_Out):
    device: str
    point: str
    unit: str | None
    start: str
    end: str
    every_ms: int | None = Field(description="Bucket length; null for raw samples.")
    agg: Agg | None
    values: list[HistoryValueOut]
