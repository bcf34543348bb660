"""Response bodies of the REST API (they make the OpenAPI document). Times are RFC 3339 UTC."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gridpilot.api.state_cache import EffectiveStatus
from gridpilot.api.tokens import Role
from gridpilot.model.identity import IDENTIFIER_PATTERN
from gridpilot.storage.base import Agg
from gridpilot.text import printable


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


class CsipStatusOut(_Out):
    """The site's IEEE 2030.5 client as it last reported itself (its retained status)."""

    site: str
    published: bool = Field(
        description="False when no 2030.5 client has published a status for the site."
    )
    message: str | None = Field(
        description="Why there is no status (no client configured, or none running)."
    )
    status: dict[str, Any] | None = Field(
        description="server, lfdi, sfdi, registered, pin_ok, end_device, clock_offset_s, "
        "poll_rate_s, post_rate_s, programs, active_events, scheduled_events, ended_events, "
        "default_control, responses, mirrors (the last 50 each), last_error, ts and age_s."
    )


class PointOut(_Out):
    name: str
    unit: str | None = Field(description="From the name's suffix: active_power_w -> W.")
    writable: bool
    valid_range: tuple[float, float] | None = Field(description="[min, max] in the unit.")


class FlowOut(_Out):
    """The device's part in the site's power flow (the site file's ``flow``)."""

    role: Literal["grid", "pv", "battery"]
    power_point: str = Field(description="The point giving its active power, W.")
    power_sign: Literal[1, -1] = Field(
        description="1: the point is positive for import (grid), production (pv) or "
        "discharge (battery); -1: the device counts the other way."
    )
    soc_point: str | None = Field(description="battery: its state-of-charge point, %.")


class DeviceOut(_Out):
    id: str
    name: str
    protocol: str
    poll_interval_s: float = Field(description="How often the gateway reads the device.")
    flow: FlowOut | None = Field(
        default=None, description="Its part in the site's power flow; null when not given."
    )
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


class GapOut(_Out):
    start: str = Field(description="The last sample before the gap (or the window's start).")
    end: str = Field(description="The first sample after it (or the window's end if ongoing).")
    duration_s: float
    missing_samples: int = Field(description="Samples that were due in between.")
    ongoing: bool = Field(description="No sample since: the gap reaches the window's end.")


class GapsOut(_Out):
    """Gaps in a device's stored data against its expected interval (``gridpilot.ops.gaps``)."""

    device: str
    point: str | None = Field(description="The series judged; null when nothing is stored.")
    since: str
    until: str
    interval_s: float | None = Field(description="Expected interval; null when unknown.")
    interval_source: str = Field(description="`config`, or `data` (median spacing).")
    samples: int
    expected_samples: int
    gap_count: int = Field(description="All gaps in the window (`gaps` holds at most `limit`).")
    missing_samples: int = Field(description="Samples missing in the gaps listed.")
    truncated: bool
    gaps: list[GapOut]


class HistoryColumnsOut(_Out):
    """The same answer as columns (``format=columns``): what a chart library takes."""

    device: str
    point: str
    unit: str | None
    start: str
    end: str
    every_ms: int | None = Field(description="Bucket length; null for raw samples.")
    agg: Agg | None
    ts_ms: list[int] = Field(description="Epoch ms of each sample or bucket start.")
    value: list[float] = Field(description="The value at the same index of ts_ms.")


# ---------------------------------------------------------------------------- who, writes


class _In(BaseModel):
    """A request body: unknown fields are refused, so a misspelt field is not ignored.
    Numbers and flags are strict (``0`` is not ``false``, ``"5"`` is not 5)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Reason = Annotated[
    str, Field(max_length=500, description="Why, for the audit log."), AfterValidator(printable)
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]
POINT_REF_PATTERN = (
    IDENTIFIER_PATTERN.removesuffix("$") + r"\." + IDENTIFIER_PATTERN.removeprefix("^")
)
PointRefText = Annotated[
    str,
    Field(
        pattern=POINT_REF_PATTERN,
        description="DEVICE.POINT, e.g. battery.active_power_setpoint_w",
        examples=["battery.active_power_setpoint_w"],
    ),
]


class MeOut(_Out):
    name: str
    role: Role
    token_id: str


class CommandIn(_In):
    value: FiniteFloat = Field(description="Absolute target in the point's unit.")
    ttl_s: float = Field(
        default=10.0,
        strict=True,
        gt=0,
        le=3600,
        description="The gateway does not apply it after this.",
    )
    reason: Reason = ""


class CommandOut(_Out):
    """The gateway's result of the command."""

    id: str
    status: str = Field(description="applied, rejected or failed.")
    code: str | None
    reason: str | None
    point: str | None
    value: float | None
    readback: float | None = Field(description="Read from the device after writing.")
    ts: str


class OverrideIn(_In):
    point: PointRefText
    value: FiniteFloat
    duration_s: float = Field(
        gt=0, le=7 * 86_400, strict=True, description="How long to hold the value."
    )
    reason: Reason = ""


class DryRunIn(_In):
    enabled: StrictBool
    reason: Reason = ""


class ControllerIn(_In):
    enabled: StrictBool
    reason: Reason = ""


class ParamsIn(_In):
    params: dict[str, Any] = Field(
        min_length=1,
        max_length=50,
        description="Fields of the controller's section of the site file to change, e.g. "
        '{"limit_w": 95000}; validated like the file. Lasts until the controller restarts.',
    )
    reason: Reason = ""


class ControlReplyOut(_Out):
    ok: bool
    message: str = Field(description="The controller's answer.")


class EventOut(_Out):
    ts: str
    level: str = Field(description="info, warning or alarm.")
    source: str
    message: str


class EventsOut(_Out):
    events: list[EventOut] = Field(description="Newest first.")
    next_before: int | None = Field(
        default=None, description="Pass as `before` for the next (older) page; null at the end."
    )


class AuditEntryOut(_Out):
    seq: int = Field(default=0, description="Increasing; the page cursor.")
    ts: str
    who: dict[str, Any] = Field(description="token id, name and role of who acted.")
    action: str
    target: str
    params: dict[str, Any]
    ok: bool
    result: Any


class AuditOut(_Out):
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )


class TokenIn(_In):
    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"[^ ]",
        description="Who or what holds it; control characters are replaced by '?'.",
    )
    role: Role
    expires_in_s: float | None = Field(default=None, gt=0, le=10 * 366 * 86_400, strict=True)


class TokenOut(_Out):
    id: str
    name: str
    role: Role
    created: str
    created_by: str
    expires: str | None
    revoked: str | None


class TokenCreatedOut(_Out):
    token: str = Field(description="Shown once: the server keeps only its hash.")
    record: TokenOut


class TokensOut(_Out):
    tokens: list[TokenOut]
