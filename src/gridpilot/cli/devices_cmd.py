"""``gridpilot devices``: the device library and discovery on a live bus."""

from __future__ import annotations

import click


@click.group("devices")
def devices_group() -> None:
    """Device profiles (the library) and discovery of devices on a bus."""
