"""``gridpilot control ...``: watch and steer the running control engine.

Every command but ``journal`` talks to the controller over the bus: a request on
``{site}/{controller}/request``, the reply on ``.../request/result``, the status from the
retained ``{site}/{controller}/state``. Each change is recorded in the controller's journal
with who asked (``--by``, default ``user@host``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import click

from gridpilot.cli.common import (
    EXIT_CONFIG,
    fail,
    load_or_exit,
    resolve_config_path,
    run_async,
    user_at_host,
)
from gridpilot.cli.timeparse import parse_duration_ms

REPLY_TIMEOUT_S = 5.0

config_option = click.option(
    "-c", "--config", help="Site file (default: $GRIDPILOT_CONFIG or the last demo's)."
)
by_option = click.option("--by", help="Who asks, for the journal (default: user@host).")
reason_option = click.option("--reason", default="", help="Why, for the journal.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _who(by: str | None) -> str:
    return by or user_at_host()


def _no_controller(config: Path) -> str:
    return (
        f"no controller answered within {REPLY_TIMEOUT_S:g} s: is "
        f"'gridpilot run controller {config}' (or 'run all', or the demo) running "
        "and connected to the same broker?"
    )


def _send(config_arg: str | None, request: dict[str, Any]) -> dict[str, Any]:
    """Publish ``request``; return the reply (exits with a message when none comes)."""
    from gridpilot.bus.client import BrokerAddress, BusClient
    from gridpilot.bus.errors import BusError
    from gridpilot.control.requests import decode_reply
    from gridpilot.model import Topic

    path = resolve_config_path(config_arg)
    cfg = load_or_exit(path)
    if cfg.control is None:
        fail(f"{path} has no 'control' section: there is no controller to ask", EXIT_CONFIG)
    site, controller = cfg.site.id, cfg.control.id
    request = {"id": uuid.uuid4().hex, **request}
    address = BrokerAddress.from_config(cfg.broker, base_dir=path.parent)
    reply: dict[str, Any] = {}

    async def main() -> None:
        async with BusClient(address, f"gridpilot-control-{uuid.uuid4().hex[:8]}") as bus:
            await bus.wait_connected(timeout=REPLY_TIMEOUT_S)
            await bus.subscribe(str(Topic.request_result(site, controller)), qos=1)
            await bus.publish(
                str(Topic.request(site, controller)), json.dumps(request).encode(), qos=1
            )
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                async for message in bus.messages():
                    try:
                        answer = decode_reply(message.payload)
                    except (ValueError, TypeError):
                        continue
                    if answer.id == request["id"]:
                        reply.update(ok=answer.ok, message=answer.message)
                        return

    try:
        run_async(main())
    except TimeoutError:
        fail(_no_controller(path))
    except BusError as exc:
        fail(f"cannot reach the broker for {path}: {exc}")
    if not reply:
        fail(_no_controller(path))
    return reply


def _report(reply: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(reply))
    elif reply["ok"]:
        click.echo(reply["message"])
    if not reply["ok"]:
        fail(f"the controller refused: {reply['message']}")


@click.group("control")
def control_group() -> None:
    """Watch and steer the control engine (dry-run, overrides, controllers)."""


@control_group.command("status")
@config_option
@json_option
def status(config: str | None, as_json: bool) -> None:
    """Show the controller's retained status: controllers, overrides, fail-safes, targets."""
    from gridpilot.bus.client import BrokerAddress, BusClient
    from gridpilot.bus.errors import BusError
    from gridpilot.model import Topic

    path = resolve_config_path(config)
    cfg = load_or_exit(path)
    if cfg.control is None:
        fail(f"{path} has no 'control' section: there is no controller", EXIT_CONFIG)
    topic = str(Topic.state(cfg.site.id, cfg.control.id))
    found: dict[str, Any] = {}

    async def main() -> None:
        address = BrokerAddress.from_config(cfg.broker, base_dir=path.parent)
        async with BusClient(address, f"gridpilot-control-{uuid.uuid4().hex[:8]}") as bus:
            await bus.wait_connected(timeout=REPLY_TIMEOUT_S)
            await bus.subscribe(topic, qos=1)
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                async for message in bus.messages():
                    if message.payload:
                        found.update(json.loads(message.payload))
                        return

    try:
        run_async(main())
    except TimeoutError:
        fail(f"no controller status on {topic}: has the controller ever run for this site?")
    except BusError as exc:
        fail(f"cannot reach the broker for {path}: {exc}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(
        f"controller {cfg.control.id}: {found.get('status')}"
        + (" (dry-run)" if found.get("dry_run") else "")
    )
    for name, info in (found.get("controllers") or {}).items():
        state = "enabled" if info.get("enabled") else "disabled"
        error = f" - error: {info['error']}" if info.get("error") else ""
        click.echo(f"  {name}: {state}{error}")
    for fail_safe in found.get("fail_safes_active") or []:
        click.echo(f"  FAIL-SAFE active: {fail_safe}")
    for override in found.get("overrides") or []:
        click.echo(
            f"  override {override['point']} = {override['value']:g} until {override['until']} "
            f"by {override['by']}"
        )
    for point, target in (found.get("targets") or {}).items():
        limited = f" (limited by {', '.join(target['limited_by'])})" if target["limited_by"] else ""
        click.echo(f"  {point} -> {target['value']:g} from {target['source']}{limited}")
    utility = found.get("grid_controls")
    if utility:
        stale = " STALE" if utility.get("stale") else ""
        modes = "; ".join(utility.get("modes") or []) or "none in force"
        click.echo(f"  utility controls{stale} (valid until {utility.get('valid_until')}): {modes}")
        if utility.get("refused"):
            click.echo(
                f"  utility messages refused: {utility['refused']} "
                f"(last: {utility.get('last_refusal')})"
            )


@control_group.command("dry-run")
@click.argument("state", type=click.Choice(["on", "off"]))
@config_option
@by_option
@reason_option
@json_option
def dry_run(state: str, config: str | None, by: str | None, reason: str, as_json: bool) -> None:
    """Turn dry-run on (decide and record, send nothing) or off."""
    reply = _send(
        config, {"action": "dry_run", "enabled": state == "on", "by": _who(by), "reason": reason}
    )
    _report(reply, as_json)


@control_group.command("override", context_settings={"ignore_unknown_options": True})
@click.argument("point")
@click.argument("value", type=float)
@click.option("--for", "duration", default="30m", show_default=True, help="e.g. 15m, 2h.")
@config_option
@by_option
@reason_option
@json_option
def override(
    point: str,
    value: float,
    duration: str,
    config: str | None,
    by: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Hold POINT (DEVICE.POINT) at VALUE for a while, above every controller but safety."""
    try:
        duration_s = parse_duration_ms(duration) / 1000.0
    except ValueError as exc:
        fail(f"--for: {exc}", EXIT_CONFIG)
    reply = _send(
        config,
        {
            "action": "override",
            "point": point,
            "value": value,
            "duration_s": duration_s,
            "by": _who(by),
            "reason": reason,
        },
    )
    _report(reply, as_json)


@control_group.command("release")
@click.argument("point")
@config_option
@by_option
@json_option
def release(point: str, config: str | None, by: str | None, as_json: bool) -> None:
    """End the override of POINT now; the controllers take over."""
    reply = _send(config, {"action": "release", "point": point, "by": _who(by)})
    _report(reply, as_json)


@control_group.command("enable")
@click.argument("controller")
@config_option
@by_option
@json_option
def enable(controller: str, config: str | None, by: str | None, as_json: bool) -> None:
    """Let CONTROLLER decide again."""
    reply = _send(config, {"action": "enable", "controller": controller, "by": _who(by)})
    _report(reply, as_json)


@control_group.command("disable")
@click.argument("controller")
@config_option
@by_option
@json_option
def disable(controller: str, config: str | None, by: str | None, as_json: bool) -> None:
    """Stop CONTROLLER deciding; its points go to their idle values."""
    reply = _send(config, {"action": "disable", "controller": controller, "by": _who(by)})
    _report(reply, as_json)


@control_group.command("set")
@click.argument("controller")
@click.argument("assignments", nargs=-1, required=True)
@config_option
@by_option
@reason_option
@json_option
def set_params(
    controller: str,
    assignments: tuple[str, ...],
    config: str | None,
    by: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Change CONTROLLER's parameters while it runs: FIELD=VALUE ... (YAML values).

    E.g. 'gridpilot control set peak_shaving limit_w=95000'. Checked like the same edit in
    the site file; lasts until the controller restarts (edit the file to keep it).
    """
    import yaml

    params: dict[str, Any] = {}
    for assignment in assignments:
        field, sep, text = assignment.partition("=")
        if not sep or not field:
            fail(f"{assignment!r} is not FIELD=VALUE (e.g. limit_w=95000)", EXIT_CONFIG)
        try:
            params[field] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            fail(f"{field}: {text!r} is not a value: {exc}", EXIT_CONFIG)
    reply = _send(
        config,
        {
            "action": "set_params",
            "controller": controller,
            "params": params,
            "by": _who(by),
            "reason": reason,
        },
    )
    _report(reply, as_json)


@control_group.command("journal")
@config_option
@click.option("--limit", default=50, show_default=True, help="Entries to show.")
@json_option
def journal(config: str | None, limit: int, as_json: bool) -> None:
    """Show the last entries of the controller's journal (on this machine)."""
    from gridpilot.config import site_path
    from gridpilot.control.journal import Journal

    path = resolve_config_path(config)
    cfg = load_or_exit(path)
    if cfg.control is None or cfg.control.journal is None:
        fail(f"{path} configures no control journal", EXIT_CONFIG)
    file = site_path(path.parent, cfg.control.journal)
    entries = Journal(file).read(limit)
    if not entries and not file.exists():
        fail(f"no journal at {file} yet: has the controller run on this machine?")
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry))
            continue
        who = f" [{entry['by']}]" if entry.get("by") else ""
        click.echo(
            f"{entry.get('ts')} {entry.get('kind'):7} {entry.get('source')}: "
            f"{entry.get('message')}{who}"
        )
