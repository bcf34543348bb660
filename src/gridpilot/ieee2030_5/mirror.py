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

Everything except ``window_values`` is pure; ``window_values`` reads the mean (or the last
value) of each channel's point over the window from GridPilot's storage, the same query
``gridpilot query`` runs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

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

from gridpilot.ieee2030_5.models import DateTimeIntervalType
from gridpilot.model import SeriesKey
from gridpilot.storage.base import Storage

__all__ = [
    "DER_CHANNELS",
    "DER_ROLE_FLAGS",
    "SITE_CHANNELS",
    "SITE_ROLE_FLAGS",
    "Aggregate",
    "MirrorRole",
    "MirrorSpec",
    "ReadingChannel",
    "encode_value",
    "mirror_meter_readings",
    "mirror_mrid",
    "mirror_usage_point",
    "reading_type",
    "window_values",
]

SITE_ROLE_FLAGS = RoleFlagsType.IS_MIRROR | RoleFlagsType.IS_PREMISES_AGGREGATION_POINT
"""0x03: the site's connection point."""
DER_ROLE_FLAGS = RoleFlagsType.IS_MIRROR | RoleFlagsType.IS_DER | RoleFlagsType.IS_SUBMETER
"""0x49: a DER's own meter."""

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
    window_s: int,
) -> dict[str, float | None]:
    """Each channel's value over ``[end_ms - window_s, end_ms)`` from stored samples: the
    mean of the samples (GridPilot polls at a fixed interval, so the sample mean is the
    time average), or the last sample for ``Aggregate.LAST``; ``None`` when the point has
    no sample in the window."""
    if window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s} s")
    start_ms = end_ms - window_s * 1000
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
