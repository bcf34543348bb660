"""Identity of sites, devices, points and series."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Site, device and point ids appear in MQTT topics and SQL: keep them to a safe alphabet.
# No '/', '+', '#' (MQTT wildcards and separators), no whitespace, no '$' (broker topics).
IDENTIFIER_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)


def is_valid_identifier(name: str) -> bool:
    """True when ``name`` is usable as a site, device or point id."""
    return _IDENTIFIER_RE.fullmatch(name) is not None


@dataclass(frozen=True, slots=True, order=True)
class SeriesKey:
    """One time series: a point of a device of a site."""

    site: str
    device: str
    point: str

    def __str__(self) -> str:
        return f"{self.site}/{self.device}/{self.point}"
