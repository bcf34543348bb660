"""``gridpilot gaps CONFIG DEVICE --since 2h``: stretches without stored data of a device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gridpilot.cli.common import EXIT_CONFIG, fail, load_or_exit, run_async
from gridpilot.cli.timeparse import parse_duration_ms, parse_instant_ms
from gridpilot.model import now_ms, to_rfc3339


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("device")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Start: a duration back from now (2h, 7d), -2h, epoch ms or RFC 3339.",
)
@click.option("--until", default="now", show_default=True, help="End: same forms as --since.")
@click.option("--limit", default=1000, show_default=True, help="Gaps listed at most (oldest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gaps(config: Path, device: str, since: str, until: str, limit: int, as_json: bool) -> None:
    """List the gaps in DEVICE's stored data between --since and --until.

    A gap is more than 2.5 expected intervals without a stored sample: the device's fastest
    poll class (an MQTT device: its poll_interval, or its usual spacing in the data). Each
    gap shows its start and end (the samples around it), its length and the samples missing.
    """
    from gridpilot.ops.gaps import WindowTooLargeError, device_gaps
    from gridpilot.storage import open_storage

    cfg = load_or_exit(config)
    known = {d.id: d for d in cfg.devices}
    chosen = known.get(device)
    if chosen is None:
        fail(
            f"no device {device!r} in {config} (site {cfg.site.id!r}); its devices: "
            f"{', '.join(sorted(known)) or 'none'}",
            EXIT_CONFIG,
        )
    now = now_ms()
    try:
        since_ms = _since(since, now)
        until_ms = parse_instant_ms(until, now)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    until_ms = min(until_ms, now)
    if until_ms <= since_ms:
        fail(f"--until ({until}) must be after --since ({since})", EXIT_CONFIG)
    latency_ms = int(cfg.storage.flush_interval.total_seconds() * 1000) + 2000

    async def main() -> None:
        async with open_storage(cfg.storage, config.parent) as storage:
            try:
                found = await device_gaps(
                    storage, cfg, chosen, since_ms=since_ms, until_ms=until_ms,
                    latency_ms=latency_ms, limit=limit, max_samples=10_000_000,
                )  # fmt: skip
            except WindowTooLargeError as exc:
                fail(f"{device}: {exc}", EXIT_CONFIG)
        summary = found.summary
        interval_s = None if found.interval_ms is None else found.interval_ms / 1000
        if as_json:
            doc = {
                "device": device,
                "point": found.point,
                "since": to_rfc3339(since_ms if summary is None else summary.window_start_ms),
                "until": to_rfc3339(until_ms),
                "interval_s": interval_s,
                "interval_source": found.interval_source,
                "samples": 0 if summary is None else summary.samples,
                "expected_samples": 0 if summary is None else summary.expected,
                "gap_count": found.total_gaps,
                "missing_samples": found.missing,
                "truncated": found.truncated,
                "gaps": [
                    {
                        "start": to_rfc3339(g.start_ms),
                        "end": to_rfc3339(g.end_ms),
                        "duration_s": (g.end_ms - g.start_ms) / 1000,
                        "missing_samples": g.missing,
                        "ongoing": g.ongoing,
                    }
                    for g in found.gaps
                ],
            }
            click.echo(json.dumps(doc))
            return
        window = f"{to_rfc3339(since_ms)} .. {to_rfc3339(until_ms)}"
        if found.point is None:
            click.echo(f"{device}: nothing stored in {cfg.storage.backend} ({window})")
            return
        if summary is None or interval_s is None:
            click.echo(f"{device}: too few samples of {found.point} to tell its pace ({window})")
            return
        for g in found.gaps:
            end = "now (ongoing)" if g.ongoing else to_rfc3339(g.end_ms)
            click.echo(
                f"{to_rfc3339(g.start_ms)}  {end}  {(g.end_ms - g.start_ms) / 1000:>10.1f} s  "
                f"{g.missing:>8} missing"
            )
        more = f" (first {len(found.gaps)} listed)" if found.truncated else ""
        click.echo(
            f"{device}: {found.total_gaps} gap(s){more}, {found.missing} sample(s) missing; "
            f"{summary.samples} of ~{summary.expected} expected samples of {found.point} at "
            f"{interval_s:g} s ({found.interval_source}), {to_rfc3339(summary.window_start_ms)}"
            f" .. {to_rfc3339(until_ms)}"
        )

    run_async(main())


def _since(text: str, now: int) -> int:
    """A bare duration (``2h``) means that long before ``now``; else an instant."""
    try:
        return now - parse_duration_ms(text)
    except ValueError:
        return parse_instant_ms(text, now)
