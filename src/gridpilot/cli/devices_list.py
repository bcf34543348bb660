"""``gridpilot devices list [NAME]``: the device library (profiles as data, see
``gridpilot.config.profiles``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import click
import orjson

from gridpilot.cli.common import EXIT_CONFIG, fail
from gridpilot.config.profiles import DeviceProfile, ProfilePoint, library
from gridpilot.model import unit_of


def _rows(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float) -> str:
    return f"{value:g}"


def _point_row(p: ProfilePoint) -> tuple[str, ...]:
    flags = "rw" if p.writable else "r"
    span = (
        "" if p.valid_range is None else f"{_number(p.valid_range[0])}..{_number(p.valid_range[1])}"
    )
    where = f"{p.address}" + (f".{p.bit}" if p.bit is not None else "")
    scale = "" if p.scale == 1 and p.offset == 0 else f"x{_number(p.scale)}"
    if p.offset:
        scale += f"{p.offset:+g}"
    order = "" if p.word_order.value == "big" else " (LSW first)"
    return (
        p.point,
        p.table.value,
        where,
        p.type.value + order,
        scale,
        unit_of(p.point) or "",
        span,
        flags,
        p.doc,
    )


def _describe(profile: DeviceProfile) -> str:
    out = [
        f"{profile.name}: {profile.vendor} {profile.model} ({profile.kind})",
        *textwrap.wrap(f"manual: {profile.manual}", 100, subsequent_indent="  "),
        *(f"confirmed by: {driver}" for driver in profile.confirmed_by),
    ]
    if profile.notes:
        out += textwrap.wrap(f"notes: {profile.notes}", 100, subsequent_indent="  ")
    if profile.defaults:
        out.append("defaults: " + ", ".join(f"{k}={v}" for k, v in profile.defaults.items()))
    out.append("")
    header = ("POINT", "TABLE", "ADDRESS", "TYPE", "SCALE", "UNIT", "VALID", "RW", "MANUAL")
    out.append(_rows(header, [_point_row(p) for p in profile.points]))
    out += [
        "",
        "Use it in a site file (addresses are 0-based, as on the wire):",
        "  devices:",
        f"    - {{id: my_device, profile: {profile.name}, host: 192.0.2.10}}",
    ]
    return "\n".join(out)


@click.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(name: str | None, as_json: bool) -> None:
    """The device library; with NAME, that profile's points."""
    profiles = library()
    if name is not None:
        found = profiles.get(name)
        if found is None:
            fail(f"no profile {name!r}; the library has: {', '.join(profiles)}", EXIT_CONFIG)
        if as_json:
            click.echo(orjson.dumps(found.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
        else:
            click.echo(_describe(found))
        return
    if as_json:
        summary = [
            {
                "name": p.name,
                "vendor": p.vendor,
                "model": p.model,
                "kind": str(p.kind),
                "manual": p.manual,
                "points": len(p.points),
            }
            for p in profiles.values()
        ]
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        return
    header = ("NAME", "VENDOR", "MODEL", "KIND", "POINTS", "MANUAL")
    rows = [
        (p.name, p.vendor, p.model, str(p.kind), str(len(p.points)), p.manual)
        for p in profiles.values()
    ]
    click.echo(_rows(header, rows))
    click.echo("\n`gridpilot devices list NAME` shows a profile's points; a site file uses one")
    click.echo("with `profile: NAME` in a device entry.")
