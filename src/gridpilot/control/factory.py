"""Builds the configured controllers from a site file (the control part of the composition root)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridpilot.config.models import GridPilotConfig
from gridpilot.control.base import Controller
from gridpilot.control.constant_pf import ConstantPfController
from gridpilot.control.enter_service import EnterServiceController
from gridpilot.control.freq_droop import FreqDroopController
from gridpilot.control.grid_operator import GridOperatorController
from gridpilot.control.hvac import HvacController, HvacGroupController
from gridpilot.control.peak_shaving import PeakShavingController
from gridpilot.control.pv_export import PvExportController
from gridpilot.control.thermal import ZoneHistory
from gridpilot.control.vfd import VfdCurtailmentController
from gridpilot.control.volt_var import VoltVarController
from gridpilot.control.volt_watt import VoltWattController
from gridpilot.control.watt_var import WattVarController


def build_controllers(
    config: GridPilotConfig, zone_histories: Mapping[str, ZoneHistory] | None = None
) -> list[Controller[Any]]:
    """The controllers the ``control`` section enables.

    Order matters only between requests of equal priority (the first listed wins): the grid
    operator's controls, enter service, volt-var, volt-watt, frequency droop, constant power factor,
    watt-var, peak shaving, PV export, the VFDs, then the zone planners (one group planner
    for two or more zones with ``hvac_planning: joint``).
    The site ``tariff`` is handed to each controller that has a tariff of its own unset.
    ``zone_histories`` (zone id -> stored history) lets each zone planner identify its
    thermal model before its first plan.
    """
    histories = zone_histories or {}
    control = config.control
    if control is None:
        return []
    controllers: list[Controller[Any]] = []
    tariff = control.tariff
    if control.grid_operator is not None:
        controllers.append(GridOperatorController(control.grid_operator))
    if control.enter_service is not None:
        controllers.append(EnterServiceController(control.enter_service))
    if control.volt_var is not None:
        controllers.append(VoltVarController(control.volt_var))
    if control.volt_watt is not None:
        controllers.append(VoltWattController(control.volt_watt))
    if control.freq_droop is not None:
        controllers.append(FreqDroopController(control.freq_droop))
    if control.constant_pf is not None:
        controllers.append(ConstantPfController(control.constant_pf))
    if control.watt_var is not None:
        controllers.append(WattVarController(control.watt_var))
    if control.peak_shaving is not None:
        params = control.peak_shaving
        if params.tariff is None and tariff is not None:
            params = params.model_copy(update={"tariff": tariff})
        controllers.append(PeakShavingController(params))
    if control.pv_export is not None:
        controllers.append(PvExportController(control.pv_export))
    for index, vfd in enumerate(control.vfd):
        name = "vfd_curtailment" if len(control.vfd) == 1 else f"vfd_curtailment_{index + 1}"
        controllers.append(VfdCurtailmentController(vfd, name=name))
    zones: list[HvacController] = []
    for zone in control.hvac:
        zone_params = zone
        if "tariff" not in zone.model_fields_set and tariff is not None:
            zone_params = zone.model_copy(update={"tariff": tariff})
        zones.append(HvacController(zone_params, history=histories.get(zone.zone)))
    if control.hvac_planning == "joint" and len(zones) > 1:
        controllers.append(HvacGroupController(zones))
    else:
        controllers.extend(zones)
    return controllers
