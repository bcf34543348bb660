"""``gridpilot devices scan TARGET``: find SunSpec devices on a Modbus TCP host or a serial
line, decode them, and print a site-file snippet for what answered.

TARGET is ``tcp://HOST[:PORT]`` (Modbus TCP, or a Modbus TCP gateway in front of several
units), ``rtu-tcp://HOST[:PORT]`` (RTU frames through a serial-to-Ethernet converter) or
``rtu:///dev/ttyUSB0?baud=19200&parity=E&stopbits=1`` (a serial port). Each unit id is
probed with a short timeout and no retries; a unit that answers is tried at every SunSpec
base address (``fieldbus.sunspec_io.find_base``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import orjson
import yaml

from gridpilot.cli.common import fail, run_async
from gridpilot.fieldbus.errors import (
    ConnectionRefused,
    DeviceRejected,
    FieldbusError,
    PortUnavailable,
)
from gridpilot.fieldbus.modbus_client import ModbusClientDevice
from gridpilot.fieldbus.modbus_rtu import ModbusRtuDevice, RtuBus, SerialLine
from gridpilot.fieldbus.modbus_tcp import ModbusTcpDevice
from gridpilot.fieldbus.sunspec import DecodedModel, point_name
from gridpilot.fieldbus.sunspec_io import NotSunSpecError, discover, holding_reader, read_models
from gridpilot.model import is_valid_identifier

__all__ = ["Target", "parse_target", "parse_units", "scan"]

DEFAULT_TCP_UNITS = "1-3,126"
"""Unit ids SunSpec devices answer to on TCP: 1 for most, 2-3 behind data managers, 126
for some inverters' own interface."""
DEFAULT_SERIAL_UNITS = "1-10"


@dataclass(frozen=True, slots=True)
class Target:
    """Where to scan: a TCP host (``kind`` tcp or rtu-tcp) or a serial line (rtu)."""

    kind: str
    host: str = ""
    port: int = 502
    line: SerialLine | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"rtu://{self.line.port}"
        return f"{self.kind}://{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``tcp://host:port`` | ``rtu-tcp://host:port`` | ``rtu:///dev/tty...?baud=...``."""
    parts = urlsplit(text)
    if parts.scheme in ("tcp", "rtu-tcp"):
        if not parts.hostname:
            raise ValueError(f"{text!r} has no host: use tcp://HOST:PORT")
        return Target(parts.scheme, parts.hostname, parts.port or 502)
    if parts.scheme == "rtu":
        if not parts.path:
            raise ValueError(f"{text!r} has no serial port: use rtu:///dev/ttyUSB0?baud=9600")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"baud", "parity", "stopbits", "bytesize"}
        if unknown:
            raise ValueError(
                f"unknown serial settings {sorted(unknown)}: use baud, parity, stopbits"
            )
        parity = query.get("parity", "E").upper()
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity {parity!r}: use N, E or O")
        line = SerialLine(
            parts.path,
            baudrate=int(query.get("baud", "19200")),
            bytesize=int(query.get("bytesize", "8")),
            parity=parity,
            stopbits=int(query.get("stopbits", "1")),
        )
        return Target("rtu", line=line)
    raise ValueError(
        f"{text!r}: scan tcp://HOST:PORT, rtu-tcp://HOST:PORT or rtu:///dev/ttyX?baud=9600"
    )


def parse_units(text: str) -> list[int]:
    """``1-10,126`` -> [1, ..., 10, 126]."""
    units: list[int] = []
    for item in text.split(","):
        item = item.strip()  # noqa: PLW2901
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if match is None:
            raise ValueError(f"{item!r} is not a unit id or a range like 1-10")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 0 <= low <= high <= 255:
            raise ValueError(f"unit ids are 0..255: {item!r}")
        units.extend(u for u in range(low, high + 1) if u not in units)
    return units


@dataclass
class UnitResult:
    """What one unit id answered."""

    unit: int
    status: str
    """``sunspec``, ``no_sunspec`` (answers Modbus, no marker), ``no_answer``, ``error``."""
    detail: str = ""
    base: int | None = None
    models: list[DecodedModel] = field(default_factory=list)


def _device(target: Target, bus: RtuBus | None, unit: int, timeout_s: float) -> ModbusClientDevice:
    if bus is not None:
        return ModbusRtuDevice(bus, unit, timeout_s, retries=0)
    return ModbusTcpDevice(target.host, target.port, unit, timeout_s, retries=0)


async def scan(target: Target, units: Sequence[int], timeout_s: float) -> list[UnitResult]:
    """Probe each unit id in turn (one request on the line at a time)."""
    bus: RtuBus | None = None
    if target.kind == "rtu":
        bus = RtuBus("scan", line=target.line)
    elif target.kind == "rtu-tcp":
        bus = RtuBus("scan", host=target.host, port=target.port)
    results: list[UnitResult] = []
    try:
        for unit in units:
            if bus is not None and not 1 <= unit <= 247:
                continue  # RTU units are 1..247
            device = _device(target, bus, unit, timeout_s)
            try:
                results.append(await _probe(device, unit))
            finally:
                if bus is None:
                    await device.close()
    finally:
        if bus is not None:
            bus.drop()  # close the port (or the converter connection)
    return results


async def _probe(device: ModbusClientDevice, unit: int) -> UnitResult:
    read = holding_reader(device.read_block)
    try:
        found = await discover(read)
        models = await read_models(read, found)
    except NotSunSpecError as exc:
        return UnitResult(unit, "no_sunspec", str(exc))
    except DeviceRejected as exc:
        # 10/11 from a TCP gateway: nothing behind that unit id.
        return UnitResult(unit, "no_answer", str(exc))
    except (ConnectionRefused, PortUnavailable):
        raise  # nothing to scan at all
    except FieldbusError as exc:
        status = "no_answer" if exc.kind == "timeout" else "error"
        return UnitResult(unit, status, str(exc))
    return UnitResult(unit, "sunspec", base=found.base, models=models)


# ---------------------------------------------------------------------------- output


def _identity(models: Sequence[DecodedModel]) -> dict[str, str]:
    common = next((m for m in models if m.id == 1), None)
    if common is None:
        return {}
    return {
        key: str(value)
        for key in ("Mn", "Md", "Opt", "Vr", "SN")
        if isinstance(value := common.value(key), str)
    }


def _device_id(result: UnitResult, taken: set[str]) -> str:
    identity = _identity(result.models)
    stem = re.sub(r"[^a-z0-9]+", "-", f"{identity.get('Md', 'sunspec')}".lower()).strip("-")
    stem = (stem or "sunspec")[:50]
    candidate = f"{stem}-{result.unit}"
    if not is_valid_identifier(candidate) or candidate in taken:
        candidate = f"sunspec-unit-{result.unit}"
    taken.add(candidate)
    return candidate


def site_snippet(target: Target, results: Sequence[UnitResult]) -> dict[str, Any]:
    """The ``devices:`` (and, for a serial line, ``serial_buses:``) of a site file."""
    taken: set[str] = set()
    devices: list[dict[str, Any]] = []
    for result in results:
        if result.status != "sunspec" or result.base is None:
            continue
        entry: dict[str, Any] = {"id": _device_id(result, taken)}
        identity = _identity(result.models)
        if identity:
            entry["name"] = " ".join(identity[k] for k in ("Mn", "Md") if k in identity)
        if target.kind == "rtu":
            entry.update(protocol="modbus_rtu", bus="scanned-bus")
        else:
            entry.update(
                protocol="modbus_tcp" if target.kind == "tcp" else "modbus_rtu_tcp",
                host=target.host,
                port=target.port,
            )
        entry["unit_id"] = result.unit
        entry["sunspec"] = {"base": result.base}
        devices.append(entry)
    snippet: dict[str, Any] = {"devices": devices}
    if target.kind == "rtu" and target.line is not None and devices:
        line = target.line
        snippet = {
            "serial_buses": [
                {
                    "id": "scanned-bus",
                    "port": line.port,
                    "baudrate": line.baudrate,
                    "parity": line.parity,
                    "stopbits": line.stopbits,
                }
            ],
            **snippet,
        }
    return snippet


def _format_value(value: float | str | None, units: str | None, symbol: str | None) -> str:
    if value is None:
        return "-- not implemented"
    if isinstance(value, str):
        return repr(value)
    text = f"{value:g}"
    if units:
        text += f" {units}"
    if symbol:
        text += f" ({symbol})"
    return text


def _report(target: Target, results: Sequence[UnitResult], show_missing: bool) -> str:
    lines: list[str] = [f"scanned {target}, unit ids {', '.join(str(r.unit) for r in results)}"]
    for result in results:
        if result.status != "sunspec":
            lines.append(f"unit {result.unit}: {result.status.replace('_', ' ')} ({result.detail})")
            continue
        identity = _identity(result.models)
        who = " ".join(identity.get(k, "") for k in ("Mn", "Md")).strip() or "SunSpec device"
        extra = ", ".join(
            f"{label} {identity[k]}"
            for k, label in (("SN", "serial"), ("Vr", "version"))
            if k in identity
        )
        lines.append(
            f"unit {result.unit}: {who}{f' ({extra})' if extra else ''}; SunSpec at {result.base}"
        )
        for model in result.models:
            implemented = sum(1 for p in model.points if p.implemented)
            lines.append(
                f"  model {model.id} {model.name} at {model.address}, L={model.length}: "
                f"{implemented} of {len(model.points)} points implemented"
            )
            for point in model.points:
                d = point.definition
                if d.type in ("pad", "sunssf") or point.path in ("ID", "L"):
                    continue
                if point.value is None and not show_missing:
                    continue
                name = point_name(model.id, point.path, d) or ""
                value = _format_value(point.value, d.units, point.symbol)
                access = " rw" if d.writable else ""
                lines.append(f"    {point.path:<28} {value:<34} {name}{access}")
    return "\n".join(lines)


def _json(results: Sequence[UnitResult]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for result in results:
        entry: dict[str, Any] = {"unit": result.unit, "status": result.status}
        if result.detail:
            entry["detail"] = result.detail
        if result.status == "sunspec":
            entry["base"] = result.base
            entry["identity"] = _identity(result.models)
            entry["models"] = [
                {
                    "id": m.id,
                    "name": m.name,
                    "address": m.address,
                    "length": m.length,
                    "points": {
                        p.path: {
                            "value": p.value,
                            "units": p.definition.units,
                            "symbol": p.symbol,
                            "point": point_name(m.id, p.path, p.definition),
                            "writable": p.definition.writable,
                        }
                        for p in m.points
                        if p.definition.type not in ("pad",) and p.path not in ("ID", "L")
                    },
                }
                for m in result.models
            ]
        out.append(entry)
    return out


@click.command("scan")
@click.argument("target")
@click.option(
    "--units",
    help=f"Unit ids to probe, e.g. 1-10,126 (default {DEFAULT_TCP_UNITS} on TCP, "
    f"{DEFAULT_SERIAL_UNITS} on a serial line).",
)
@click.option("--timeout", "timeout_s", default=0.3, show_default=True, help="Seconds per request.")
@click.option(
    "--missing/--no-missing", default=True, show_default=True, help="List unimplemented points."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scan_command(
    target: str, units: str | None, timeout_s: float, missing: bool, as_json: bool
) -> None:
    """Find SunSpec devices at TARGET and print what they are and hold, and a site-file
    snippet (tcp://HOST:PORT, rtu-tcp://HOST:PORT or rtu:///dev/ttyUSB0?baud=9600)."""
    try:
        where = parse_target(target)
        unit_ids = parse_units(
            units or (DEFAULT_SERIAL_UNITS if where.kind == "rtu" else DEFAULT_TCP_UNITS)
        )
    except ValueError as exc:
        fail(str(exc))
    if not 0 < timeout_s <= 30:
        fail(f"--timeout {timeout_s}: use a value above 0 and at most 30 s")
    results: list[UnitResult] = []

    async def main() -> None:
        results.extend(await scan(where, unit_ids, timeout_s))

    try:
        run_async(main())
    except (ConnectionRefused, PortUnavailable) as exc:
        fail(f"cannot scan {where}: {exc} -- check the address and that the device is on")
    found = [r for r in results if r.status == "sunspec"]
    if as_json:
        body = {
            "target": str(where),
            "units": _json(results),
            "config": site_snippet(where, results),
        }
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_report(where, results, missing))
        if found:
            click.echo("\n# site file snippet (gridpilot config check accepts it under site:)")
            click.echo(yaml.safe_dump(site_snippet(where, results), sort_keys=False).rstrip())
    if not found:
        fail(f"no SunSpec device found at {where} (unit ids {units or 'default'})", code=1)
