"""A single measurement."""

from __future__ import annotations

from dataclasses import dataclass

from gridpilot.model.identity import SeriesKey


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one point at one instant.

    ``ts_ms`` is epoch milliseconds (UTC). ``value`` is a float in the unit that the
    point name's suffix declares (``active_power_w`` -> watts). The identity of a sample
    is (site, device, point, ts_ms): storing the same identity twice stores it once.
    """

    site: str
    device: str
    point: str
    ts_ms: int
    value: float

    @property
    def series(self) -> SeriesKey:
        return SeriesKey(self.site, self.device, self.point)
