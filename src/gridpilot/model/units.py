"""Point-name unit suffixes.

A point name ends with its unit: ``active_power_w`` is in watts. Values on the bus and in
storage are plain floats in that unit; the suffix is the contract.
"""

from __future__ import annotations

# Longest suffixes first so that "_wh" is not taken for "_h"-less "_w" and "_varh" not for "_var".
UNIT_SUFFIXES: dict[str, str] = {
    "_varh": "varh",
    "_vah": "VAh",
    "_wm2": "W/m2",
    "_degc": "degC",
    "_m3h": "m3/h",
    "_var": "var",
    "_rpm": "rpm",
    "_pct": "%",
    "_wh": "Wh",
    "_va": "VA",
    "_hz": "Hz",
    "_pa": "Pa",
    "_ma": "mA",
    "_ah": "Ah",  # battery capacity (SunSpec AHRtg)
    "_pf": "1",  # power factor, dimensionless -1..1
    "_s": "s",
    "_w": "W",
    "_v": "V",
    "_a": "A",
    # Dimensionless integers: enumerations, status words and bitfields, counters.
    "_state": "1",
    "_count": "1",
}


def unit_of(point: str) -> str | None:
    """The unit a point name declares by its suffix, or None when it has none."""
    for suffix in sorted(UNIT_SUFFIXES, key=len, reverse=True):
        if point.endswith(suffix) and len(point) > len(suffix):
            return UNIT_SUFFIXES[suffix]
    return None
