"""Checks that span several entries of a site file: duplicate ids, overlapping registers,
Modbus points without an address, control settings that name points no device has, RTU
devices on a serial bus that is not configured or on a unit id another device on the same
line already answers to.

They run on the raw YAML data, not on validated models, so that they are reported together
with type errors in the same run of ``gridpilot config check`` — a user fixes a file in one
pass, not one error per run. Each finding carries the path of the entry it is about, which the
loader turns into a line number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gridpilot.fieldbus.sunspec import known_model_ids
from gridpilot.model import DataType, Table, unit_of

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
    yield from _check_sparkplug(data.get("sparkplug"), data.get("devices"))
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
        yield from _check_flow(i, device)
    yield from _check_serial_buses(data.get("serial_buses"), devices)
    control = data.get("control")
    if isinstance(control, dict):
        yield from _check_control_refs(control, devices)


_MODBUS_PROTOCOLS = frozenset({"modbus_tcp", "modbus_rtu", "modbus_rtu_tcp"})
_FLOW_DEFAULTS = {
    "grid": {"power_point": "active_power_w"},
    "pv": {"power_point": "ac_power_w"},
    "battery": {"power_point": "active_power_w", "soc_point": "soc_pct"},
}


def _check_flow(i: int, device: dict[str, object]) -> Iterator[Finding]:
    """A device's ``flow`` names points the device has (a SunSpec device's points are only
    known once discovered: not checked)."""
    flow, points = device.get("flow"), device.get("points")
    if not isinstance(flow, dict) or device.get("sunspec") is not None:
        return
    if not isinstance(points, list):
        return
    defaults = _FLOW_DEFAULTS.get(str(flow.get("role")))
    if defaults is None:
        return  # the model's validation names the role
    names = {p.get("point") for p in points if isinstance(p, dict)}
    for key, default in defaults.items():
        name = flow.get(key) or default
        if name not in names:
            known = ", ".join(sorted(str(n) for n in names if isinstance(n, str)))
            yield Finding(
                ("devices", i, "flow", key) if key in flow else ("devices", i, "flow"),
                f"flow.{key} {name!r} is not a point of device {device.get('id')!r}; "
                f"name one of: {known}",
            )


def _check_sparkplug(sparkplug: object, devices: object) -> Iterator[Finding]:
    """A Sparkplug mapping names a device no other mapping and no polled device uses: its
    state (births, deaths) and its samples come from that one edge node or device."""
    if not isinstance(sparkplug, dict) or not isinstance(sparkplug.get("devices"), list):
        return
    polled = {
        d.get("id")
        for d in (devices if isinstance(devices, list) else [])
        if isinstance(d, dict) and d.get("protocol", "modbus_tcp") in _MODBUS_PROTOCOLS
    }
    seen: dict[str, int] = {}
    for i, mapping in enumerate(sparkplug["devices"]):
        device_id = mapping.get("id") if isinstance(mapping, dict) else None
        if not isinstance(device_id, str):
            continue
        loc: Loc = ("sparkplug", "devices", i, "id")
        if device_id in polled:
            yield Finding(
                loc,
                f"device {device_id!r} is polled over Modbus by the gateway; a Sparkplug "
                "node or device needs an id of its own (or list it as protocol: mqtt)",
            )
        if device_id in seen:
            yield Finding(
                loc,
                f"device id {device_id!r} is already mapped by "
                f"sparkplug.devices[{seen[device_id]}]",
            )
        else:
            seen[device_id] = i


def _check_serial_buses(buses: object, devices: list[Any]) -> Iterator[Finding]:
    """Bus ids and ports are unique; every ``modbus_rtu`` device names a configured bus;
    no two devices on one line (a serial bus, or one converter's host:port for
    ``modbus_rtu_tcp``) share a unit id: both would answer, and garble each other."""
    known: dict[str, int] = {}
    ports: dict[str, int] = {}
    for i, bus in enumerate(buses if isinstance(buses, list) else []):
        if not isinstance(bus, dict):
            continue
        bus_id, port = bus.get("id"), bus.get("port")
        if isinstance(bus_id, str):
            if bus_id in known:
                yield Finding(
                    ("serial_buses", i, "id"),
                    f"serial bus id {bus_id!r} is already used by serial_buses[{known[bus_id]}]",
                )
            else:
                known[bus_id] = i
        if isinstance(port, str):
            if port in ports:
                yield Finding(
                    ("serial_buses", i, "port"),
                    f"port {port!r} is already the port of serial_buses[{ports[port]}]; "
                    "units on one line belong to one bus",
                )
            else:
                ports[port] = i
    units: dict[tuple[str, str], dict[int, tuple[int, str]]] = {}
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            continue
        protocol = device.get("protocol")
        if protocol == "modbus_rtu":
            bus_id = device.get("bus")
            if not isinstance(bus_id, str):
                continue  # missing: reported by model validation
            if bus_id not in known:
                names = ", ".join(sorted(known)) or "none configured under serial_buses"
                yield Finding(
                    ("devices", i, "bus"), f"no serial bus {bus_id!r} (serial buses: {names})"
                )
                continue
            line = ("bus", bus_id)
        elif protocol == "modbus_rtu_tcp":
            line = ("converter", f"{device.get('host')}:{device.get('port', 502)}")
        else:
            continue
        unit = device.get("unit_id", 1)
        if not isinstance(unit, int) or isinstance(unit, bool):
            continue
        name = str(device.get("id", f"devices[{i}]"))
        taken = units.setdefault(line, {})
        if unit in taken:
            first, first_name = taken[unit]
            where = f"bus {line[1]!r}" if line[0] == "bus" else f"converter {line[1]}"
            yield Finding(
                ("devices", i, "unit_id"),
                f"unit_id {unit} on {where} is already device {first_name!r} "
                f"(devices[{first}]); each unit on a line needs its own id",
            )
        else:
            taken[unit] = (i, name)


_POINT_REF = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9_]+$")


def _walk_strings(node: object, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every string (values and mapping keys) below ``node`` with its path."""
    if isinstance(node, str):
        yield loc, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield (*loc, key), key
            yield from _walk_strings(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_strings(value, (*loc, index))


def _check_control_refs(control: dict[str, Any], devices: list[Any]) -> Iterator[Finding]:
    """Each ``device.point`` the control section names must be a configured point: a typo
    would otherwise leave a controller blind (its input never arrives) or deaf (its command
    rejected by the gateway) at run time."""
    points: dict[str, set[str]] = {}
    sunspec: dict[str, dict[str, Any]] = {}
    for device in devices:
        if isinstance(device, dict) and isinstance(device.get("id"), str):
            names = {
                p["point"]
                for p in device.get("points") or []
                if isinstance(p, dict) and isinstance(p.get("point"), str)
            }
            points[device["id"]] = names
            if isinstance(device.get("sunspec"), dict):
                sunspec[device["id"]] = device["sunspec"]
    own_id = control.get("id", "controller")
    for loc, text in _walk_strings(control, ("control",)):
        if not _POINT_REF.match(text):
            continue
        device, _, point = text.partition(".")
        if unit_of(point) is None:
            continue  # not a point reference (point names end in a unit), e.g. a file name
        if device == own_id:
            continue  # the controller's own metrics
        if device not in points:
            known = ", ".join(sorted(points)) or "none configured"
            yield Finding(loc, f"{text!r}: no device {device!r} (devices: {known})")
        elif device in sunspec and point not in points[device]:
            problem = _sunspec_point_problem(point, sunspec[device])
            if problem is not None:
                yield Finding(loc, f"{text!r}: {problem}")
        elif point not in points[device]:
            yield Finding(loc, f"{text!r}: device {device!r} has no point {point!r}")


_SUNSPEC_POINT = re.compile(r"^m(\d+)_[a-z0-9_]+$")


def _sunspec_point_problem(point: str, settings: dict[str, Any]) -> str | None:
    """What is wrong with ``point`` on a SunSpec device, or None. Its points are found at
    discovery, so only the model can be checked here: a known SunSpec model, one the device's
    ``models`` selection keeps, and a point its ``points`` selection keeps."""
    match = _SUNSPEC_POINT.match(point)
    if match is None:
        return (
            f"{point!r} is not a SunSpec point name (m<model>_<point>_<unit>, e.g. m103_w; "
            "`gridpilot devices scan` lists the device's)"
        )
    model = int(match.group(1))
    if model not in known_model_ids():
        return f"SunSpec has no model {model} (in {point!r})"
    models = settings.get("models")
    if isinstance(models, list) and model not in models:
        return f"model {model} is not in the device's sunspec.models, so {point!r} is not read"
    selected = settings.get("points")
    if isinstance(selected, list) and point not in selected:
        return f"{point!r} is not in the device's sunspec.points, so it is not published"
    return None


def _check_points(i: int, device: dict[str, Any]) -> Iterator[Finding]:
    points = device.get("points")
    if not isinstance(points, list):
        return
    modbus = device.get("protocol", "modbus_tcp") in _MODBUS_PROTOCOLS
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
                f"point {label} has no address; a Modbus point needs its register address",
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
