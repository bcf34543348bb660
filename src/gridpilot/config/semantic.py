"""Checks that span several entries of a site file: duplicate ids, overlapping registers,
Modbus points without an address.

They run on the raw YAML data, not on validated models, so that they are reported together
with type errors in the same run of ``gridpilot config check`` — a user fixes a file in one
pass, not one error per run. Each finding carries the path of the entry it is about, which the
loader turns into a line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gridpilot.model import DataType, Table

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    loc: Loc
    message: str


def _register_span(point: dict[str, Any]) -> int | None:
    try:
        dtype = DataType(point.get("type", DataType.UINT16.value))
    except ValueError:
        return None
    if dtype is DataType.STRING:
        length = point.get("length", 1)
        return length if isinstance(length, int) and length > 0 else None
    return dtype.register_count


def check(data: object) -> Iterator[Finding]:
    """Yield every cross-entry problem found in raw site data."""
    if not isinstance(data, dict):
        return
    devices = data.get("devices")
    if not isinstance(devices, list):
        return
    gateway = data.get("gateway")
    gateway_id = gateway.get("id", "gateway") if isinstance(gateway, dict) else "gateway"
    seen_devices: dict[str, int] = {}
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            continue
        device_id = device.get("id")
        if isinstance(device_id, str):
            if device_id in seen_devices:
                first = seen_devices[device_id]
                yield Finding(
                    ("devices", i, "id"),
                    f"device id {device_id!r} is already used by devices[{first}]",
                )
            else:
                seen_devices[device_id] = i
            if device_id == gateway_id:
                yield Finding(
                    ("devices", i, "id"),
                    f"device id {device_id!r} is the gateway's own id (gateway.id); rename one",
                )
        yield from _check_points(i, device)


def _check_points(i: int, device: dict[str, Any]) -> Iterator[Finding]:
    points = device.get("points")
    if not isinstance(points, list):
        return
    modbus = device.get("protocol", "modbus_tcp") == "modbus_tcp"
    seen_names: dict[str, int] = {}
    # (table) -> list of (start, end_exclusive, bit, index, name)
    occupied: dict[str, list[tuple[int, int, int | None, int, str]]] = {}
    for j, point in enumerate(points):
        if not isinstance(point, dict):
            continue
        name = point.get("point")
        label = repr(name) if isinstance(name, str) else f"points[{j}]"
        if isinstance(name, str):
            if name in seen_names:
                yield Finding(
                    ("devices", i, "points", j, "point"),
                    f"point {name!r} is already defined at points[{seen_names[name]}]",
                )
            else:
                seen_names[name] = j
        if not modbus:
            continue
        address = point.get("address")
        if address is None:
            yield Finding(
                ("devices", i, "points", j),
                f"point {label} has no address; a modbus_tcp point needs its register address",
            )
            continue
        span = _register_span(point)
        if not isinstance(address, int) or isinstance(address, bool) or span is None:
            continue  # type errors are reported by model validation
        table = point.get("table", Table.HOLDING.value)
        bit = point.get("bit")
        bit = bit if isinstance(bit, int) else None
        start, end = address, address + span
        for other_start, other_end, other_bit, k, other_name in occupied.get(str(table), []):
            if start < other_end and other_start < end:
                # Several bits of one status word may be separate points.
                if bit is not None and other_bit is not None and bit != other_bit:
                    continue
                yield Finding(
                    ("devices", i, "points", j, "address"),
                    f"point {label} ({table} {start}..{end - 1}) overlaps point "
                    f"{other_name!r} ({table} {other_start}..{other_end - 1}) at points[{k}]",
                )
        occupied.setdefault(str(table), []).append((start, end, bit, j, str(name)))
