"""Builds the configured controllers from a site file (the control part of the composition root)."""

from __future__ import annotations

from typing import Any

from gridpilot.config.models import GridPilotConfig
from gridpilot.control.base import Controller


def build_controllers(config: GridPilotConfig) -> list[Controller[Any]]:
    """The controllers the ``control`` section enables, in priority-tie order."""
    control = config.control
    if control is None:
        return []
    controllers: list[Controller[Any]] = []
    return controllers
