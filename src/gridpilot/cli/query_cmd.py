"""``gridpilot query [DEVICE [POINT]]``: stored values, raw or aggregated."""

from __future__ import annotations

import json

import click

from gridpilot.cli.common import fail, load_or_exit, resolve_config_path, run_async
from gridpilot.cli.timeparse import parse_duration_ms, parse_instant_ms
from gridpilot.model import SeriesKey, now_ms, to_rfc3339, unit_of

AGG_CHOICES = ["mean", "min", "max", "last", "sum", "count"]  # gridpilot.storage.base.Agg


@click.command()
@click.argument("device", required=False)
@click.argument("point", required=False)
@click.option("-c", "--config", help="Site file (default: $GRIDPILOT_CONFIG or the demo's).")
@click.option("--start", default="-1h", show_default=True, help="now, -2h, epoch ms or RFC 3339.")
@click.option("--end", default="now", show_default=True)
@click.option("--every", help="Aggregate into buckets, e.g. 1m, 15m, 1h, 1d.")
@click.option("--agg", type=click.Choice(AGG_CHOICES), default="mean", show_default=True)
@click.option("--limit", default=1000, show_default=True, help="Rows shown at most (newest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def query(
    device: str | None,
    point: str | None,
    config: str | None,
    start: str,
    end: str,
    every: str | None,
    agg: str,
    limit: int,
    as_json: bool,
) -> None:
    """Show stored data.

    Without arguments: the latest value of every point. With DEVICE: that device's latest
    values. With DEVICE POINT: the history of one point between --start and --end.
    """
    from gridpilot.storage import open_storage
    from gridpilot.storage.base import Agg

    path = resolve_config_path(config)
    cfg = load_or_exit(path)
    now = now_ms()
    try:
        start_ms = parse_instant_ms(start, now)
        end_ms = parse_instant_ms(end, now)
        every_ms = parse_duration_ms(every) if every else None
    except ValueError as exc:
        fail(str(exc), 2)
    if end_ms <= start_ms:
        fail(f"--end ({end}) must be after --start ({start})", 2)

    async def main() -> None:
        async with open_storage(cfg.storage, path.parent) as storage:
            if point is None:
                latest = await storage.latest(cfg.site.id, device)
                if not latest:
                    what = f"device {device!r}" if device else f"site {cfg.site.id!r}"
                    fail(f"nothing stored for {what} in {cfg.storage.path}", 1)
                if as_json:
                    click.echo(
                        json.dumps(
                            [
                                {
                                    "device": v.series.device,
                                    "point": v.series.point,
                                    "ts": to_rfc3339(v.ts_ms),
                                    "value": v.value,
                                }
                                for v in latest
                            ]
                        )
                    )
                    return
                for v in latest:
                    age_s = (now - v.ts_ms) / 1000
                    unit = _unit_label(v.series.point)
                    click.echo(
                        f"{v.series.device:<16} {v.series.point:<32} {_number(v.value):>16} "
                        f"{unit:<5} {to_rfc3339(v.ts_ms)} ({age_s:.0f} s ago)"
                    )
                return
            series = SeriesKey(cfg.site.id, device or "", point)
            rows = await storage.history(series, start_ms, end_ms, every_ms, Agg(agg))
            if not rows:
                known = await storage.series(cfg.site.id)
                hint = (
                    "" if series in known else " (no such series; run without POINT to list them)"
                )
                fail(f"no data for {series} between {start} and {end}{hint}", 1)
            rows = rows[-limit:]
            if as_json:
                click.echo(
                    json.dumps([{"ts": to_rfc3339(r.ts_ms), "value": r.value} for r in rows])
                )
                return
            unit = _unit_label(point)
            label = f"{agg} per {every}" if every else "raw"
            click.echo(f"# {series} [{unit}] {label}")
            for r in rows:
                click.echo(f"{to_rfc3339(r.ts_ms)}  {_number(r.value)}")

    run_async(main())


def _unit_label(point: str) -> str:
    unit = unit_of(point) or ""
    return "" if unit == "1" else unit  # dimensionless: states, flags, counts


def _number(value: float) -> str:
    """Readable without exponents: counters in Wh run to 10^9 and users compare digits."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"
