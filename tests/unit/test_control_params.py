"""Changing a controller's parameters at run time: validated like the site file, rebuilt by
the factory, swapped into the engine with its state kept."""

from __future__ import annotations

from typing import Any

import pytest

from gridpilot.config import GridPilotConfig
from gridpilot.control.engine import Engine, EngineParams
from gridpilot.control.factory import build_controllers
from gridpilot.control.hvac import HvacGroupController
from gridpilot.control.params import ParamsError, controller_params, with_params
from gridpilot.control.peak_shaving import PeakShavingController
from gridpilot.sim.control import control_section
from gridpilot.sim.site import SimulatedSite


@pytest.fixture
def config() -> GridPilotConfig:
    devices = SimulatedSite(base_port=0).site_config("p")
    for index, device in enumerate(devices):
        device["port"] = 15_020 + index  # not started: any port will do
    return GridPilotConfig.model_validate(
        {"site": {"id": "p"}, "control": control_section(limit_w=110_000.0), "devices": devices}
    )


def test_current_parameters_of_every_controller(config: GridPilotConfig) -> None:
    params = controller_params(config)
    assert params["peak_shaving"]["limit_w"] == 110_000.0
    assert set(params) >= {"peak_shaving"}
    assert all(isinstance(p, dict) for p in params.values())


def test_a_change_rebuilds_the_controller_and_keeps_the_rest(config: GridPilotConfig) -> None:
    controller, changed = with_params(config, "peak_shaving", {"limit_w": 95_000})
    assert isinstance(controller, PeakShavingController)
    assert changed.control is not None
    assert changed.control.peak_shaving is not None
    assert changed.control.peak_shaving.limit_w == 95_000
    assert config.control is not None
    assert config.control.peak_shaving is not None
    assert config.control.peak_shaving.limit_w == 110_000  # the original is untouched
    assert changed.devices == config.devices


@pytest.mark.parametrize(
    ("name", "update", "message"),
    [
        ("nobody", {"limit_w": 1}, "no controller named 'nobody'"),
        ("peak_shaving", {"limit_kw": 1}, "has no parameter 'limit_kw'"),
        ("peak_shaving", {"limit_w": "lots"}, "control.peak_shaving.limit_w"),
        ("peak_shaving", {"grid_power_point": "nowhere.active_power_w"}, "nowhere"),
        ("peak_shaving", {"name": "renamed"}, "renames or removes"),
    ],
)
def test_refusals_say_which_field_and_why(
    config: GridPilotConfig, name: str, update: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParamsError, match=message):
        with_params(config, name, update)


def test_the_engine_swaps_the_controller_and_keeps_its_state(config: GridPilotConfig) -> None:
    original = PeakShavingController(config.control.peak_shaving)  # type: ignore[union-attr,arg-type]
    engine = Engine([original], EngineParams())
    marker: Any = engine.controller_state("peak_shaving")
    engine.set_enabled("peak_shaving", False)
    replacement, _ = with_params(config, "peak_shaving", {"limit_w": 90_000})
    engine.replace_controller(replacement)
    assert engine.controllers() == (replacement,)
    assert engine.controller_state("peak_shaving") is marker
    assert engine.is_enabled("peak_shaving") is False


def test_a_jointly_planned_zone_is_changed_through_its_group_planner(
    config: GridPilotConfig,
) -> None:
    assert config.control is not None
    assert config.control.hvac_planning == "joint"
    zones = [z.name or f"{z.zone}_planner" for z in config.control.hvac]
    assert len(zones) > 1
    params = controller_params(config)
    assert set(zones) <= set(params)  # each zone's settings are shown under its name
    group = next(c for c in build_controllers(config) if isinstance(c, HvacGroupController))
    engine = Engine([group], EngineParams())
    marker: Any = engine.controller_state(group.name)

    replacement, changed = with_params(config, zones[0], {"comfort_margin_k": 0.2})

    # The group planner is rebuilt with the zone's new setting, the other zones as they were.
    assert isinstance(replacement, HvacGroupController)
    assert replacement.name == group.name
    first, *others = replacement.zones
    assert first.params.comfort_margin_k == 0.2
    # ... and still the site's tariff (a round trip through the defaults lost it once).
    assert first.params.tariff == group.zones[0].params.tariff == config.control.tariff
    assert [z.params for z in others] == [z.params for z in group.zones[1:]]
    assert controller_params(changed)[zones[0]]["comfort_margin_k"] == 0.2
    engine.replace_controller(replacement)
    assert engine.controller_state(group.name) is marker  # identified models kept
    # A change that would split the group (zones must share one plan step) is refused.
    with pytest.raises(ParamsError, match=zones[0]):
        with_params(config, zones[0], {"step": "PT30M"})
