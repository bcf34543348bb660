"""``gridpilot devices``: the device library and discovery on a live bus."""

from __future__ import annotations

import click


@click.group("devices")
def devices_group() -> None:
    """Device profiles (the library) and discovery of devices on a bus."""


# The library's command lives in its own module, which needs the group first.
from gridpilot.cli.devices_list import list_command  # noqa: E402

devices_group.add_command(list_command)


# Imported after the group exists: the scan command registers itself on it.
from gridpilot.cli.devices_scan import scan_command  # noqa: E402

devices_group.add_command(scan_command)
