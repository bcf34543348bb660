"""Telemetry to the utility: MirrorUsagePoints and MirrorMeterReadings from GridPilot's data.

A 2030.5 client without a utility meter of its own reports through *mirrors*: it POSTs a
MirrorUsagePoint per metering point to ``/mup`` (once; the server answers with its
location), then, every ``postRate`` seconds, MirrorMeterReadings to that location. Each
MirrorMeterReading is one quantity with its ReadingType (unit, flow direction, how the
value was aggregated, decimal scaling).

Conventions used here (DOMAIN.md "IEEE 2030.5 / CSIP"):

- roleFlags: the site's mirror 0x03 (isMirror | isPremisesAggregationPoint), a DER's 0x49
  (isMirror | isDER | isSubmeter); serviceCategoryKind 0 (electricity).
- uom 38 W, 63 var, 29 V, 33 Hz, 72 Wh; dataQualifier 2 (average) for powers, voltage and
  frequency averaged over the window; energy registers are sent as their last value
  (accumulationBehaviour 9, summation) and carry no dataQualifier.
- flowDirection 1 (forward: delivered to the site, import) and 19 (reverse: received from
  the site, export). The site's net active/reactive power is sent signed with flowDirection
  1, positive for import — GridPilot's own sign for a grid meter (as CSIP-AUS sends site
  power); a DER's output is sent with flowDirection 19, positive for production.
- value = round(stored value × sign / 10^powerOfTenMultiplier); intervalLength = the
  window (the server's postRate).
- mRIDs are derived from the device's LFDI and the mirror's and channel's names, so they
  stay the same across restarts and the server recognises the point it already has.

Everything except ``window_values`` and ``StorageMirrorPoster`` is pure; ``window_values``
reads the mean (or the last value) of each channel's point over the window from GridPilot's
storage, the same query ``gridpilot query`` runs, and ``StorageMirrorPoster`` is what the
client (``client.MirrorPoster``) calls every postRate: it creates the MirrorUsagePoints once
and posts each window's readings.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from envoy_schema.server.schema.sep2.metering import Reading, ReadingType
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReading,
    MirrorMeterReadingListRequest,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.types import (
    AccumulationBehaviourType,
    DataQualifierType,
    FlowDirectionType,
    KindType,
    RoleFlagsType,
    ServiceKind,
    UomType,
)
from pydantic_xml import BaseXmlModel

from gridpilot.ieee2030_5.models import DateTimeIntervalType
from gridpilot.model import SeriesKey, to_rfc3339
from gridpilot.storage.base import Storage

if TYPE_CHECKING:  # typing only: the client side may import this module
    from gridpilot.config.ieee2030_5 import CsipClientConfig, MirrorSourceConfig, Quantity

__all__ = [
    "DER_CHANNELS",
    "DER_ROLE_FLAGS",
    "SITE_CHANNELS",
    "SITE_ROLE_FLAGS",
    "Aggregate",
    "MirrorHttp",
    "MirrorRole",
    "MirrorSpec",
    "ReadingChannel",
    "StorageMirrorPoster",
    "channels_for",
    "encode_value",
    "mirror_meter_readings",
    "mirror_mrid",
    "mirror_usage_point",
    "reading_type",
    "specs_from_config",
    "window_values",
]

SITE_ROLE_FLAGS = RoleFlagsType.IS_MIRROR | RoleFlagsType.IS_PREMISES_AGGREGATION_POINT
"""0x03: the site's connection point."""
DER_ROLE_FLAGS = RoleFlagsType.IS_MIRROR | RoleFlagsType.IS_DER | RoleFlagsType.IS_SUBMETER
"""0x49: a DER's own meter."""

log = logging.getLogger(__name__)

_INT48_MAX = 2**47 - 1  # Reading.value is an Int48
_USAGE_POINT_IN_SERVICE = 1  # UsagePoint.status: 0 off, 1 on


class Aggregate(StrEnum):
    """How a channel's stored samples become one reading."""

    MEAN = "mean"
    """The mean over the window (dataQualifier 2, average)."""
    LAST = "last"
    """The last value in the window (an energy register)."""


class MirrorRole(StrEnum):
    SITE = "site"
    DER = "der"

    @property
    def role_flags(self) -> RoleFlagsType:
        return SITE_ROLE_FLAGS if self is MirrorRole.SITE else DER_ROLE_FLAGS


@dataclass(frozen=True, slots=True)
class ReadingChannel:
    """One MirrorMeterReading: the GridPilot point that feeds it and its 2030.5 coding."""

    point: str
    """The device's point (``active_power_w``); values are in the unit its suffix names."""
    uom: UomType
    description: str
    flow_direction: FlowDirectionType | None = None
    """1 forward/import, 19 reverse/export; ``None`` where it means nothing (V, Hz)."""
    power_of_ten: int = 0
    """The value sent is the stored value / 10^this (-1 sends tenths, -2 hundredths)."""
    aggregate: Aggregate = Aggregate.MEAN
    sign: int = 1
    """-1 when the point counts the other way than the flow direction asks."""

    def __post_init__(self) -> None:
        if self.sign not in {1, -1}:
            raise ValueError(f"channel {self.point}: sign must be 1 or -1, got {self.sign}")
        if not -9 <= self.power_of_ten <= 9:
            raise ValueError(f"channel {self.point}: powerOfTenMultiplier must be -9..9")


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    """A mirror to keep at the server: which GridPilot device feeds it, in which role."""

    name: str
    """Stable name of the mirror (part of its mRID), e.g. ``site`` or the device id."""
    role: MirrorRole
    device: str
    """The GridPilot device whose stored points feed the channels."""
    channels: tuple[ReadingChannel, ...]
    description: str = ""


SITE_CHANNELS: tuple[ReadingChannel, ...] = (
    ReadingChannel(
        "active_power_w", UomType.REAL_POWER_WATT, "site active power, import positive",
        FlowDirectionType.FORWARD,
    ),
    ReadingChannel(
        "reactive_power_var", UomType.REACTIVE_POWER_VAR, "site reactive power, import positive",
        FlowDirectionType.FORWARD,
    ),
    ReadingChannel("voltage_l1_v", UomType.VOLTAGE, "site voltage L1-N", power_of_ten=-1),
    ReadingChannel("frequency_hz", UomType.FREQUENCY_HZ, "site frequency", power_of_ten=-2),
    ReadingChannel(
        "energy_import_wh", UomType.REAL_ENERGY_WATT_HOURS, "site energy imported",
        FlowDirectionType.FORWARD, aggregate=Aggregate.LAST,
    ),
    ReadingChannel(
        "energy_export_wh", UomType.REAL_ENERGY_WATT_HOURS, "site energy exported",
        FlowDirectionType.REVERSE, aggregate=Aggregate.LAST,
    ),
)  # fmt: skip
"""A grid meter's usual points (an SDM630-like meter in GridPilot's point names)."""

DER_CHANNELS: tuple[ReadingChannel, ...] = (
    ReadingChannel(
        "ac_power_w", UomType.REAL_POWER_WATT, "DER active power, production positive",
        FlowDirectionType.REVERSE,
    ),
    ReadingChannel("ac_voltage_v", UomType.VOLTAGE, "DER AC voltage", power_of_ten=-1),
    ReadingChannel("ac_frequency_hz", UomType.FREQUENCY_HZ, "DER frequency", power_of_ten=-2),
    ReadingChannel(
        "energy_total_wh", UomType.REAL_ENERGY_WATT_HOURS, "DER energy produced",
        FlowDirectionType.REVERSE, aggregate=Aggregate.LAST,
    ),
)  # fmt: skip
"""A PV inverter's usual points (SunSpec 1xx in GridPilot's point names)."""


def _hex_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32].upper()


def mirror_mrid(device_lfdi: str, spec: MirrorSpec, channel: ReadingChannel | None = None) -> str:
    """The stable mRID (128 bits, hex) of a mirror, or of one of its channels."""
    parts = ["gridpilot-mirror", device_lfdi.upper(), spec.name]
    if channel is not None:
        flow = "" if channel.flow_direction is None else str(int(channel.flow_direction))
        parts += [channel.point, str(int(channel.uom)), flow]
    return _hex_id(*parts)


def reading_type(channel: ReadingChannel, interval_s: int) -> ReadingType:
    """The ReadingType of a channel whose readings each cover ``interval_s`` seconds."""
    energy = channel.uom is UomType.REAL_ENERGY_WATT_HOURS
    mean = channel.aggregate is Aggregate.MEAN
    return ReadingType(
        accumulationBehaviour=(
            AccumulationBehaviourType.INSTANTANEOUS if mean else AccumulationBehaviourType.SUMMATION
        ),
        commodity=None,
        dataQualifier=DataQualifierType.AVERAGE if mean else None,
        flowDirection=channel.flow_direction,
        intervalLength=interval_s,
        kind=KindType.ENERGY if energy else (KindType.POWER if _is_power(channel.uom) else None),
        powerOfTenMultiplier=channel.power_of_ten,
        uom=channel.uom,
    )


def _is_power(uom: UomType) -> bool:
    return uom in {
        UomType.REAL_POWER_WATT,
        UomType.REACTIVE_POWER_VAR,
        UomType.APPARENT_POWER_VA,
    }


def encode_value(value: float, channel: ReadingChannel) -> int:
    """The integer a Reading carries for ``value`` (in the point's unit)."""
    if not math.isfinite(value):
        raise ValueError(f"channel {channel.point}: cannot send {value}")
    scaled = round(value * channel.sign / 10.0**channel.power_of_ten)
    if abs(scaled) > _INT48_MAX:
        raise ValueError(
            f"channel {channel.point}: {value} does not fit a Reading at "
            f"powerOfTenMultiplier {channel.power_of_ten}; raise the multiplier"
        )
    return scaled


def mirror_usage_point(
    spec: MirrorSpec, *, device_lfdi: str, interval_s: int
) -> MirrorUsagePointRequest:
    """The MirrorUsagePoint to POST to ``/mup`` once: role flags, the device's LFDI, and
    each channel's MirrorMeterReading with its ReadingType (no readings yet)."""
    return MirrorUsagePointRequest(
        mRID=mirror_mrid(device_lfdi, spec),
        description=spec.description or f"GridPilot {spec.name} ({spec.role.value})",
        roleFlags=f"{int(spec.role.role_flags):02X}",
        serviceCategoryKind=ServiceKind.ELECTRICITY,
        status=_USAGE_POINT_IN_SERVICE,
        deviceLFDI=device_lfdi.upper(),
        mirrorMeterReadings=[
            MirrorMeterReading(
                mRID=mirror_mrid(device_lfdi, spec, channel),
                description=channel.description,
                readingType=reading_type(channel, interval_s),
            )
            for channel in spec.channels
        ],
    )


def mirror_meter_readings(
    spec: MirrorSpec,
    values: Mapping[str, float | None],
    *,
    device_lfdi: str,
    window_start: int,
    interval_s: int,
) -> MirrorMeterReadingListRequest:
    """The MirrorMeterReadingList to POST to the mirror's location: one reading per channel
    whose point has a value in ``values`` (channels without one are left out, never sent
    as zero). ``window_start`` is in server time (epoch seconds); each reading covers
    ``[window_start, window_start + interval_s)``. ReadingTypes are repeated, so a server
    that lost them (a restart) still understands the readings."""
    readings: list[MirrorMeterReading] = []
    for channel in spec.channels:
        value = values.get(channel.point)
        if value is None or not math.isfinite(value):
            continue
        readings.append(
            MirrorMeterReading(
                mRID=mirror_mrid(device_lfdi, spec, channel),
                description=channel.description,
                readingType=reading_type(channel, interval_s),
                reading=Reading(
                    value=encode_value(value, channel),
                    timePeriod=DateTimeIntervalType(start=window_start, duration=interval_s),
                ),
            )
        )
    return MirrorMeterReadingListRequest(mirrorMeterReadings=readings)


async def window_values(
    storage: Storage,
    site: str,
    spec: MirrorSpec,
    *,
    end_ms: int,
    window_s: float,
) -> dict[str, float | None]:
    """Each channel's value over ``[end_ms - window_s, end_ms)`` from stored samples: the
    mean of the samples (GridPilot polls at a fixed interval, so the sample mean is the
    time average), or the last sample for ``Aggregate.LAST``; ``None`` when the point has
    no sample in the window."""
    if window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s} s")
    start_ms = end_ms - round(window_s * 1000)
    values: dict[str, float | None] = {}
    for channel in spec.channels:
        columns = await storage.history_columns(
            SeriesKey(site, spec.device, channel.point), start_ms, end_ms
        )
        samples: Sequence[float] = columns.values
        if not samples:
            values[channel.point] = None
        elif channel.aggregate is Aggregate.LAST:
            values[channel.point] = float(samples[-1])
        else:
            values[channel.point] = math.fsum(samples) / len(samples)
    return values


# ---------------------------------------------------------------------------------------
# From the site file's ieee2030_5 section


# quantity -> (uom, powerOfTenMultiplier, has a flow direction, aggregate, description)
_QUANTITIES: dict[str, tuple[UomType, int, bool, Aggregate, str]] = {
    "w": (UomType.REAL_POWER_WATT, 0, True, Aggregate.MEAN, "active power"),
    "var": (UomType.REACTIVE_POWER_VAR, 0, True, Aggregate.MEAN, "reactive power"),
    "va": (UomType.APPARENT_POWER_VA, 0, True, Aggregate.MEAN, "apparent power"),
    "v": (UomType.VOLTAGE, -1, False, Aggregate.MEAN, "voltage"),
    "a": (UomType.CURRENT_AMPERES, -1, False, Aggregate.MEAN, "current"),
    "hz": (UomType.FREQUENCY_HZ, -2, False, Aggregate.MEAN, "frequency"),
    "pf": (UomType.DISPLACEMENT_POWER_FACTOR_COSTHETA, -3, False, Aggregate.MEAN, "power factor"),
    "wh": (UomType.REAL_ENERGY_WATT_HOURS, 0, True, Aggregate.LAST, "energy register"),
}


def channels_for(role: MirrorRole, points: Mapping[Quantity, str]) -> tuple[ReadingChannel, ...]:
    """The channels of a mirror from the site file's ``{quantity: point}`` map. Flows: the
    site's powers and energy are import (forward, 1), signed; a DER's are its production
    (reverse, 19)."""
    flow = FlowDirectionType.FORWARD if role is MirrorRole.SITE else FlowDirectionType.REVERSE
    sense = "import positive" if role is MirrorRole.SITE else "production positive"
    channels = []
    for quantity, point in points.items():
        if quantity not in _QUANTITIES:
            raise ValueError(f"mirror quantity {quantity!r} is not one of {sorted(_QUANTITIES)}")
        uom, power_of_ten, directed, aggregate, what = _QUANTITIES[quantity]
        description = f"{role.value} {what}" + (f", {sense}" if directed else "")
        channels.append(
            ReadingChannel(
                point=point,
                uom=uom,
                description=description,
                flow_direction=flow if directed else None,
                power_of_ten=power_of_ten,
                aggregate=aggregate,
            )
        )
    return tuple(channels)


def specs_from_config(section: CsipClientConfig) -> list[MirrorSpec]:
    """The mirrors the site file asks for: its site meter (0x03) and each DER (0x49)."""
    specs: list[MirrorSpec] = []
    sources: list[tuple[MirrorRole, MirrorSourceConfig]] = []
    if section.site_meter is not None:
        sources.append((MirrorRole.SITE, section.site_meter))
    sources += [(MirrorRole.DER, der) for der in section.der_mirrors]
    for role, source in sources:
        specs.append(
            MirrorSpec(
                name=f"{role.value}:{source.device}",
                role=role,
                device=source.device,
                channels=channels_for(role, source.points),
                description=f"GridPilot {role.value} {source.device}",
            )
        )
    return specs


# ---------------------------------------------------------------------------------------
# What the client calls every postRate


class MirrorHttp(Protocol):
    """What the poster needs of the client's HTTP session (``client.HttpSession``)."""

    async def post(self, href: str, resource: BaseXmlModel) -> tuple[int, str | None]:
        """POST a typed resource; the HTTP status and the Location header."""
        ...


class StorageMirrorPoster:
    """Posts the site's stored telemetry to the utility (``client.MirrorPoster``).

    Each call covers the time since the previous call (the first covers
    ``first_window_s``), so consecutive readings tile time without gaps or overlaps
    whatever the client's timing. ``now`` is server time; stored samples are on this
    machine's clock, so the window's end in storage time is ``clock()``. The
    MirrorUsagePoints are created on first use; when the server no longer knows one (404
    on a reading post), it is created again on the next call.
    """

    def __init__(
        self,
        storage: Storage,
        site: str,
        specs: Sequence[MirrorSpec],
        *,
        mup_list_href: str = "/mup",
        first_window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if first_window_s <= 0:
            raise ValueError(f"first_window_s must be positive, got {first_window_s}")
        self._storage = storage
        self._site = site
        self._specs = tuple(specs)
        self._mup_list_href = mup_list_href
        self._first_window_s = first_window_s
        self._clock = clock
        self._locations: dict[str, str] = {}
        self._last_now: float | None = None

    async def post(self, http: MirrorHttp, now: float, lfdi: str) -> list[dict[str, Any]]:
        """Post the window ending at ``now`` (server time) for every mirror; one record per
        POST: ``{"mup", "at", "readings", "http_status"}``."""
        # Imported here so that the client may import this module without a cycle.
        from gridpilot.ieee2030_5.client import ServerRefusedError  # noqa: PLC0415

        window_s = self._first_window_s if self._last_now is None else now - self._last_now
        if window_s <= 0:
            return []  # the server clock stepped back; wait for it to pass this point again
        end_ms = round(self._clock() * 1000)
        posted: list[dict[str, Any]] = []
        for spec in self._specs:
            interval_s = max(1, round(window_s))
            location = self._locations.get(spec.name)
            if location is None:
                mup = mirror_usage_point(spec, device_lfdi=lfdi, interval_s=interval_s)
                status, location = await http.post(self._mup_list_href, mup)
                if location is None:
                    raise ServerRefusedError(
                        f"POST {self._mup_list_href} answered {status} without a Location "
                        f"for the mirror {spec.name}: cannot post its readings",
                        status,
                    )
                self._locations[spec.name] = location
            values = await window_values(
                self._storage, self._site, spec, end_ms=end_ms, window_s=window_s
            )
            readings = mirror_meter_readings(
                spec,
                values,
                device_lfdi=lfdi,
                window_start=round(now - window_s),
                interval_s=interval_s,
            )
            count = len(readings.mirrorMeterReadings or [])
            if count == 0:
                log.info("ieee2030_5: no stored values for mirror %s in the window", spec.name)
                continue
            try:
                status, _ = await http.post(location, readings)
            except ServerRefusedError as exc:
                if exc.status == 404:
                    del self._locations[spec.name]  # the server lost it: create it again
                raise
            posted.append(
                {
                    "mup": location,
                    "at": to_rfc3339(round(now * 1000)),
                    "readings": count,
                    "http_status": status,
                }
            )
        self._last_now = now
        return posted
