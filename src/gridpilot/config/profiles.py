"""The device library: register maps of widely installed devices, as data.

Each profile is a YAML file in ``gridpilot/fieldbus/profiles/`` (shipped with the package),
written from the device's public register manual, which it cites. A site file uses one by
name::

    devices:
      - id: grid_meter
        profile: eastron_sdm630          # every point of the profile
        host: 10.0.0.21
      - id: plant_io
        profile: advantech_adam6017
        host: 10.0.0.30
        points:                          # only these, with overrides
          - point: ai0_current_ma
            as: supply_pressure_pa       # renamed: its unit is the new name's
            analog: {signal: 4-20mA, low: 0, high: 250000}

``expand_device`` turns such an entry into an ordinary one (``points`` filled in, the
profile's ``defaults`` where the entry sets nothing); the loader runs it first so that each
problem names its line, and ``DeviceConfig`` runs it again for callers that validate data
directly (expanding an expanded entry changes nothing).

Rules of a ``points`` list under a profile: each entry names a profile point (a string, or a
mapping with ``point:`` and the fields to override); ``as`` renames it, and when the new
name's unit differs the profile's ``valid_range`` (in the old unit) is dropped; an entry
with an ``address`` that names no profile point is a point of the site's own (a register the
profile lacks). Without ``points`` the device has every profile point.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gridpilot.config import semantic
from gridpilot.config.models import PointConfig
from gridpilot.model import unit_of

Loc = tuple[str | int, ...]

PROFILE_DIR = "profiles"
"""Folder of the profiles inside the ``gridpilot.fieldbus`` package."""

_DEVICE_DEFAULTS = frozenset({"port", "unit_id", "max_gap", "timeout", "poll_interval", "retries"})
"""Device fields a profile may give defaults for (what its manual says works best)."""


class ProfileKind(StrEnum):
    METER = "meter"
    VFD = "vfd"
    ANALOG_INPUT = "analog_input"
    INVERTER = "inverter"


class ProfilePoint(PointConfig):
    """A point of a profile: a ``PointConfig`` and where the manual describes it."""

    doc: str = ""
    """The manual's name and address of the register (e.g. ``30001 Phase 1 line to neutral
    volts``)."""

    def config(self) -> PointConfig:
        """The point as a site's device has it."""
        return PointConfig.model_validate(self.model_dump(exclude={"doc"}))

    def entry(self) -> dict[str, Any]:
        """The point as a site file's ``points:`` entry (plain YAML values)."""
        return self.model_dump(mode="json", exclude={"doc"}, exclude_defaults=True) | {
            "point": self.point
        }


class DeviceProfile(BaseModel):
    """One device of the library (one YAML file)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    kind: ProfileKind
    manual: str = Field(min_length=1)
    """The register manual the profile is written from: title, version, section."""
    confirmed_by: tuple[str, ...] = ()
    """Open-source drivers that read the same registers the same way, as ``owner/repo:
    path`` (checked when the profile was written; a profile checked against the manual
    only has none and says so in ``notes``)."""
    notes: str = ""
    """What a user must know or set on the device (e.g. an input range)."""
    protocol: Literal["modbus"] = "modbus"
    defaults: dict[str, int | float] = {}
    """Device fields used where the site file sets nothing (``max_gap``, ``unit_id``...)."""
    points: tuple[ProfilePoint, ...] = ()
    sunspec: bool = False
    """The device describes itself (SunSpec): no points here; a device using the profile
    gets a ``sunspec:`` block and the gateway discovers its models."""

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, value: dict[str, int | float]) -> dict[str, int | float]:
        unknown = sorted(set(value) - _DEVICE_DEFAULTS)
        if unknown:
            raise ValueError(f"defaults may set {sorted(_DEVICE_DEFAULTS)}, not {unknown}")
        return value

    def point(self, name: str) -> ProfilePoint | None:
        for p in self.points:
            if p.point == name:
                return p
        return None

    @property
    def point_names(self) -> tuple[str, ...]:
        return tuple(p.point for p in self.points)


class ProfileError(RuntimeError):
    """A profile shipped with GridPilot is broken (a bug: the library's tests catch it)."""


def _load(name: str, text: str) -> DeviceProfile:
    try:
        data = yaml.safe_load(text)
        profile = DeviceProfile.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ProfileError(f"device profile {name}: {exc}") from exc
    if f"{profile.name}.yaml" != name:
        raise ProfileError(f"device profile {name}: name {profile.name!r} differs from the file")
    # The same cross-point checks as a site's device: unique names, no overlapping registers.
    raw = {"devices": [{"id": "profile", "points": [p.entry() for p in profile.points]}]}
    findings = [f.message for f in semantic.check(raw)]
    if findings:
        raise ProfileError(f"device profile {name}: " + "; ".join(findings))
    return profile


@functools.cache
def library() -> Mapping[str, DeviceProfile]:
    """Every profile shipped with GridPilot, by name (read once; the files are immutable)."""
    folder = resources.files("gridpilot.fieldbus") / PROFILE_DIR
    profiles: dict[str, DeviceProfile] = {}
    for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".yaml"):
            profile = _load(item.name, item.read_text(encoding="utf-8"))
            profiles[profile.name] = profile
    return profiles


def profile(name: str) -> DeviceProfile:
    """The profile called ``name``; KeyError naming the known ones."""
    known = library()
    try:
        return known[name]
    except KeyError:
        raise KeyError(_unknown_profile(name, known)) from None


def _unknown_profile(name: str, known: Mapping[str, DeviceProfile]) -> str:
    return (
        f"unknown profile {name!r}; the library has: {', '.join(sorted(known))} "
        "(`gridpilot devices list` describes them)"
    )


@dataclass(frozen=True, slots=True)
class ProfileProblem:
    loc: Loc
    """Where, relative to the device entry (e.g. ``("points", 2, "point")``)."""
    message: str


@dataclass(frozen=True, slots=True)
class Expansion:
    device: dict[str, Any]
    """The device entry with its points filled in (the entry unchanged on problems)."""
    problems: tuple[ProfileProblem, ...] = ()
    origins: tuple[Loc, ...] = ()
    """Per expanded point, where it is written, relative to the device entry:
    ``("points", k)`` for an entry of the site file, ``("profile", name)`` for a profile
    point taken as is."""


def expand_device(
    entry: Mapping[str, Any], profiles: Mapping[str, DeviceProfile] | None = None
) -> Expansion:
    """The device entry ``entry`` (raw site-file data with ``profile:``) as an ordinary one."""
    known = library() if profiles is None else profiles
    name = entry.get("profile")
    if not isinstance(name, str):
        return _failed(entry, ("profile",), f"profile must be a profile's name, not {name!r}")
    found = known.get(name)
    if found is None:
        return _failed(entry, ("profile",), _unknown_profile(name, known))
    device = dict(entry)
    for key, value in found.defaults.items():
        device.setdefault(key, value)
    if found.sunspec:
        # Discovered at run time (gridpilot.fieldbus.sunspec); points the site lists are
        # its own, beside the discovered ones.
        if device.get("sunspec") is None:
            device["sunspec"] = {}
        return Expansion(device)
    selection = entry.get("points")
    problems: list[ProfileProblem] = []
    points: list[dict[str, Any]] = []
    origins: list[Loc] = []
    if selection is None:
        points = [p.entry() for p in found.points]
        origins = [("profile", p.point) for p in found.points]
    elif not isinstance(selection, list | tuple):
        return _failed(
            entry,
            ("points",),
            "points of a profile device is a list of the profile's point names (or entries "
            "with point: NAME and fields to override)",
        )
    else:
        for k, item in enumerate(selection):
            taken = _select(found, k, item)
            if isinstance(taken, ProfileProblem):
                problems.append(taken)
            else:
                points.append(taken)
                origins.append(("points", k))
    if problems:
        return Expansion(dict(entry), tuple(problems))
    device["points"] = points
    return Expansion(device, (), tuple(origins))


def _select(found: DeviceProfile, k: int, item: object) -> dict[str, Any] | ProfileProblem:
    """One entry of a profile device's ``points`` as a whole point, or what is wrong."""
    if isinstance(item, PointConfig):  # an already validated point of a built config
        return item.model_dump()
    if isinstance(item, str):
        item = {"point": item}
    if not isinstance(item, dict):
        return ProfileProblem(
            ("points", k), f"expected a point name of profile {found.name!r}, not {item!r}"
        )
    ref = item.get("point")
    base = found.point(ref) if isinstance(ref, str) else None
    rename = item.get("as")
    if base is None:
        if "address" in item and rename is None:
            return dict(item)  # a point of the site's own, validated like any other
        return ProfileProblem(
            ("points", k, "point"),
            f"profile {found.name!r} has no point {ref!r}; its points: "
            f"{', '.join(found.point_names)} (to add a register the profile lacks, give "
            "its address and type)",
        )
    merged = base.entry()
    overrides = {key: value for key, value in item.items() if key not in ("point", "as")}
    if rename is not None:
        if not isinstance(rename, str):
            return ProfileProblem(("points", k, "as"), f"as must be a point name, not {rename!r}")
        merged["point"] = rename
        if unit_of(rename) != unit_of(base.point):
            # The profile's range is in the old unit; it says nothing of the new one.
            merged.pop("valid_range", None)
    merged.update(overrides)
    return merged


def _failed(entry: Mapping[str, Any], loc: Loc, message: str) -> Expansion:
    return Expansion(dict(entry), (ProfileProblem(loc, message),))


__all__ = [
    "DeviceProfile",
    "Expansion",
    "ProfileError",
    "ProfileKind",
    "ProfilePoint",
    "ProfileProblem",
    "expand_device",
    "library",
    "profile",
]
