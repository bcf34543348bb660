"""The IEEE 1547 controllers' site-file sections (freq_droop, constant_pf, watt_var,
enter_service): dumped parameters read back, and 'control set' rebuilds each controller."""

from __future__ import annotations

from typing import Any

import pytest

from gridpilot.config import GridPilotConfig
from gridpilot.control.constant_pf import ConstantPfController
from gridpilot.control.enter_service import EnterServiceController
from gridpilot.control.factory import build_controllers
from gridpilot.control.freq_droop import FreqDroopController
from gridpilot.control.params import controller_params, with_params
from gridpilot.control.watt_var import WattVarController

INV = "inv"
INV2 = "inv2"
SECTIONS: dict[str, dict[str, Any]] = {
    "freq_droop": {
        "frequency": f"{INV}.m701_hz", "active_power": f"{INV}.m701_w", "rated_w": 100_000.0,
        "pv_limit": f"{INV}.m704_wmaxlimpct_pct", "enable": {f"{INV}.m704_wmaxlimpctena_state": 1},
    },
    "constant_pf": {"device": INV, "pf": 0.95, "excitation": "absorbing"},
    "watt_var": {
        "active_power": f"{INV2}.m701_w", "rated_w": 100_000.0, "rated_va": 100_000.0,
        "var_setpoint": f"{INV2}.m704_varset_var",
        "enable": {f"{INV2}.m704_varsetena_state": 1},
    },
    "enter_service": {
        "voltage": f"{INV}.m701_lnv_v", "nominal_voltage_v": 230.0, "frequency": f"{INV}.m701_hz",
        "connected": f"{INV}.m701_connst_state", "pv_limit": f"{INV}.m704_wmaxlimpct_pct",
        "enable": {f"{INV}.m704_wmaxlimpctena_state": 1},
    },
}  # fmt: skip


def site() -> GridPilotConfig:
    return GridPilotConfig.model_validate(
        {
            "site": {"id": "hq"},
            "devices": [
                {"id": device, "host": "127.0.0.1", "port": port, "sunspec": {}}
                for device, port in ((INV, 1502), (INV2, 1503))
            ],
            "control": {"journal": None, **SECTIONS},
        }
    )


def test_the_factory_builds_each_controller_in_order() -> None:
    names = [c.name for c in build_controllers(site())]
    assert names == ["enter_service", "freq_droop", "constant_pf", "watt_var"]


@pytest.mark.parametrize(
    ("name", "update", "kind"),
    [("freq_droop", {"k_of": 0.04}, FreqDroopController),
     ("constant_pf", {"pf": 0.9}, ConstantPfController),
     ("watt_var", {"response_time_s": 5.0}, WattVarController),
     ("enter_service", {"delay_s": 60.0}, EnterServiceController)],
)  # fmt: skip
def test_params_dump_reads_back_and_can_be_changed_at_run_time(
    name: str, update: dict[str, Any], kind: type
) -> None:
    config = site()
    dumped = controller_params(config)[name]
    # The dump reads back as the same section (enable points as 'device.point' keys).
    section = getattr(config.control, name)
    assert type(section).model_validate(dumped) == section
    controller, changed = with_params(config, name, update)
    assert isinstance(controller, kind)
    ((key, value),) = update.items()
    assert getattr(controller.params, key) == value
    assert getattr(getattr(changed.control, name), key) == value
