"""The utility tariff: time-of-use energy prices and the monthly demand charge.

Prices are per kWh of import; hours are local time of the tariff's time zone (a utility's
"on-peak 12:00-18:00 on weekdays" means wall-clock time, daylight saving included). The
demand charge is per kW of the month's highest interval demand (``demand_interval``, 15 min
by default), optionally counted only inside on-peak hours (``demand_hours``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = (0, 1, 2, 3, 4)
ALL_DAYS = (0, 1, 2, 3, 4, 5, 6)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def slot_start(when: datetime, slot: timedelta, zone: ZoneInfo) -> datetime:
    """Start of the slot containing ``when``: slots are aligned to local wall-clock time
    (a utility's 15-minute demand blocks start at :00, :15... of the local clock)."""
    offset = when.astimezone(zone).utcoffset() or timedelta(0)
    local_us = (when + offset - _EPOCH) // _US
    slot_us = slot // _US
    start_us = (local_us // slot_us) * slot_us
    return _EPOCH + timedelta(microseconds=start_us) - offset


def local_month(when: datetime, zone: ZoneInfo) -> tuple[int, int]:
    """(year, month) of ``when`` on the local clock: the billing month."""
    local = when.astimezone(zone)
    return (local.year, local.month)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HourWindow(_Frozen):
    """Local hours [start_hour, end_hour) on the given weekdays (0 = Monday)."""

    start_hour: float = Field(ge=0.0, le=24.0)
    end_hour: float = Field(ge=0.0, le=24.0)
    weekdays: tuple[int, ...] = WEEKDAYS

    @field_validator("weekdays")
    @classmethod
    def _days(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 0 or d > 6 for d in value):
            raise ValueError("weekdays are 0 (Monday) .. 6 (Sunday), at least one")
        return value

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.end_hour <= self.start_hour:
            raise ValueError(
                f"end_hour {self.end_hour} must be after start_hour {self.start_hour}; "
                "split a window across midnight into two"
            )
        return self

    def contains(self, local: datetime) -> bool:
        hour = local.hour + local.minute / 60.0 + local.second / 3600.0
        return local.weekday() in self.weekdays and self.start_hour <= hour < self.end_hour


class PricePeriod(HourWindow):
    """A time-of-use period and its energy price."""

    name: str = ""
    price_per_kwh: float = Field(ge=-10.0, le=100.0)


class Tariff(_Frozen):
    """Energy prices by time of use plus a monthly demand charge."""

    currency: str = "USD"
    timezone: str = "UTC"
    base_price_per_kwh: float = Field(default=0.12, ge=-10.0, le=100.0)
    """Price outside every period."""
    periods: tuple[PricePeriod, ...] = ()
    """The first period that contains an instant sets its price."""
    export_price_per_kwh: float = Field(default=0.0, ge=-10.0, le=100.0)
    """Paid for exported energy (0 = export earns nothing)."""
    demand_charge_per_kw: float = Field(default=15.0, ge=0.0)
    """Per kW of the month's billed demand (highest ``demand_interval`` average import)."""
    demand_interval: timedelta = timedelta(minutes=15)
    demand_hours: tuple[HourWindow, ...] = ()
    """Only intervals inside these windows count towards billed demand; empty = all hours."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name, e.g. 'Europe/Berlin')"
            ) from None
        return value

    @field_validator("demand_interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0) or timedelta(hours=1) % value:
            raise ValueError("demand_interval must divide an hour (e.g. 5, 15, 30 min)")
        return value

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def price_per_kwh(self, when: datetime) -> float:
        """Import price at ``when`` (an aware datetime)."""
        local = when.astimezone(self.zone)
        for period in self.periods:
            if period.contains(local):
                return period.price_per_kwh
        return self.base_price_per_kwh

    def prices_per_kwh(self, start: datetime, step: timedelta, count: int) -> tuple[float, ...]:
        """Import price at ``start + k·step`` for k in 0..count-1."""
        return tuple(self.price_per_kwh(start + k * step) for k in range(count))

    def counts_for_demand(self, when: datetime) -> bool:
        """Whether the interval starting at ``when`` counts towards billed demand."""
        if not self.demand_hours:
            return True
        local = when.astimezone(self.zone)
        return any(window.contains(local) for window in self.demand_hours)
