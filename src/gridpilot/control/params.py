"""Changing a controller's parameters while it runs.

An operator changes fields of one controller's section of the site file (the peak-shaving
``limit_w``, a zone's comfort band...). The whole site configuration is validated again with
the change -- the same checks ``gridpilot config check`` makes -- and the controller is
rebuilt by the same factory that built it at start, so a change is exactly as valid as the
same edit in the file would be. The engine then swaps the controller and keeps its state.

A change lasts until the controller restarts; the journal and the API's audit log record
it. To keep it, edit the site file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gridpilot.config import semantic
from gridpilot.config.models import ControlConfig, GridPilotConfig
from gridpilot.control.base import Controller
from gridpilot.control.factory import build_controllers
from gridpilot.control.hvac import HvacGroupController

__all__ = ["ParamsError", "controller_params", "with_params"]


class ParamsError(ValueError):
    """The change cannot be made; the message says which field and why."""


def _sections(control: ControlConfig) -> dict[str, tuple[str, int | None]]:
    """Controller name -> where its parameters are in the ``control`` section (the names
    ``build_controllers`` gives)."""
    out: dict[str, tuple[str, int | None]] = {}
    if control.grid_operator is not None:
        out["grid_operator"] = ("grid_operator", None)
    if control.enter_service is not None:
        out["enter_service"] = ("enter_service", None)
    if control.volt_var is not None:
        out["volt_var"] = ("volt_var", None)
    if control.volt_watt is not None:
        out["volt_watt"] = ("volt_watt", None)
    if control.freq_droop is not None:
        out["freq_droop"] = ("freq_droop", None)
    if control.constant_pf is not None:
        out["constant_pf"] = ("constant_pf", None)
    if control.watt_var is not None:
        out["watt_var"] = ("watt_var", None)
    if control.peak_shaving is not None:
        out[control.peak_shaving.name] = ("peak_shaving", None)
    if control.pv_export is not None:
        out["pv_export"] = ("pv_export", None)
    for index in range(len(control.vfd)):
        name = "vfd_curtailment" if len(control.vfd) == 1 else f"vfd_curtailment_{index + 1}"
        out[name] = ("vfd", index)
    # Jointly planned zones keep their own sections (and names): a change to one rebuilds
    # the group planner that plans them together (see with_params).
    for index, zone in enumerate(control.hvac):
        out[zone.name or f"{zone.zone}_planner"] = ("hvac", index)
    return out


def controller_params(config: GridPilotConfig) -> dict[str, dict[str, Any]]:
    """Each controller's current parameters as JSON-ready objects (for status and the API)."""
    control = config.control
    if control is None:
        return {}
    dumped = control.model_dump(mode="json", exclude_none=True)
    out: dict[str, dict[str, Any]] = {}
    for name, (key, index) in _sections(control).items():
        section = dumped[key]
        out[name] = section if index is None else section[index]
    return out


def with_params(
    config: GridPilotConfig, name: str, update: Mapping[str, Any]
) -> tuple[Controller[Any], GridPilotConfig]:
    """The controller ``name`` rebuilt with ``update`` applied to its section, and the
    configuration that holds the change. Raises ``ParamsError``."""
    control = config.control
    if control is None:
        raise ParamsError("the site has no control section")
    sections = _sections(control)
    if name not in sections:
        known = ", ".join(sorted(sections)) or "none"
        raise ParamsError(f"no controller named {name!r} has parameters to change (known: {known})")
    key, index = sections[name]
    # Only what the site file set: a default dumped here would come back as "set" and stop
    # the factory from filling it in (a zone's tariff from the site's tariff, for one).
    doc = config.model_dump(mode="json", exclude_unset=True)
    section = doc["control"][key] if index is None else doc["control"][key][index]
    unknown = sorted(set(update) - set(type(_section_model(control, key, index)).model_fields))
    if unknown:
        raise ParamsError(f"{name} has no parameter {', '.join(map(repr, unknown))}")
    section.update(update)
    for finding in semantic.check(doc):
        raise ParamsError(f"{_where(finding.loc)}: {finding.message}")
    try:
        changed = GridPilotConfig.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ParamsError(f"{_where(first['loc'])}: {first['msg']}") from None
    try:
        rebuilt = build_controllers(changed)
    except ValueError as exc:  # e.g. the zones of a group no longer share one plan step
        raise ParamsError(f"{name}: {exc}") from None
    for controller in rebuilt:
        if controller.name == name:
            return controller, changed
        if isinstance(controller, HvacGroupController) and any(
            zone.name == name for zone in controller.zones
        ):
            # The zone is planned with the others: the group planner takes its place in
            # the engine (its state, one per zone, is kept).
            return controller, changed
    raise ParamsError(f"the change renames or removes {name!r}; change the site file instead")


def _section_model(control: ControlConfig, key: str, index: int | None) -> Any:
    section = getattr(control, key)
    return section if index is None else section[index]


def _where(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc)
