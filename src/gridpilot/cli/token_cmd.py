"""``gridpilot token ...``: API tokens (create, list, revoke).

Tokens live in ``api.tokens_file`` (relative to the site file), mode 0600, as hashes only:
``create`` prints the token once. A running API picks up changes at its next request.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from gridpilot.cli.common import EXIT_CONFIG, fail, load_or_exit, resolve_config_path, user_at_host
from gridpilot.cli.timeparse import parse_duration_ms

if TYPE_CHECKING:  # imported lazily below: the CLI starts fast without the API's imports
    from gridpilot.api.tokens import TokenStore

config_option = click.option(
    "-c", "--config", help="Site file (default: $GRIDPILOT_CONFIG or the last demo's)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _store(config: str | None) -> TokenStore:
    from gridpilot.api.tokens import TokenStore
    from gridpilot.config import site_path

    path = resolve_config_path(config)
    cfg = load_or_exit(path)
    return TokenStore(site_path(path.parent, cfg.api.tokens_file))


def _who() -> str:
    return f"cli:{user_at_host()}"


@click.group("token")
def token_group() -> None:
    """API tokens: viewer reads; operator also commands; admin also manages tokens."""


@token_group.command("create")
@config_option
@click.option(
    "--role",
    required=True,
    type=click.Choice(["viewer", "operator", "admin"]),
    help="What it may do.",
)
@click.option("--name", default=None, help="Who or what holds it (default: ROLE-token).")
@click.option("--expires", default=None, help="Lifetime, e.g. 90d, 12h (default: never).")
@json_option
def create(
    config: str | None, role: str, name: str | None, expires: str | None, as_json: bool
) -> None:
    """Create a token and print it (the only time it is shown)."""
    from gridpilot.api.tokens import Role, TokenError, TokenStoreError

    store = _store(config)
    now = datetime.now(UTC)
    until = None
    if expires is not None:
        try:
            until = now + timedelta(milliseconds=parse_duration_ms(expires))
        except ValueError as exc:
            fail(f"--expires: {exc}", EXIT_CONFIG)
    try:
        record, token = store.create(
            Role(role), name or f"{role}-token", created_by=_who(), expires=until, now=now
        )
    except (TokenError, TokenStoreError) as exc:
        fail(str(exc), EXIT_CONFIG)
    if as_json:
        click.echo(
            json.dumps({"token": token, "record": record.to_json() | {"secret_sha256": None}})
        )
        return
    click.echo(token)
    click.echo(
        f"# {record.role} token {record.id} '{record.name}'"
        + (f", expires {record.expires.isoformat(timespec='seconds')}" if record.expires else "")
        + f"; stored as a hash in {store.path}. Keep it secret: it is not shown again.",
        err=True,
    )


@token_group.command("list")
@config_option
@json_option
def list_tokens(config: str | None, as_json: bool) -> None:
    """List tokens (ids, names, roles, expiry; never the tokens)."""
    from gridpilot.api.tokens import TokenStoreError

    store = _store(config)
    try:
        records = store.records()
    except TokenStoreError as exc:
        fail(str(exc), EXIT_CONFIG)
    if as_json:
        click.echo(
            json.dumps(
                [{k: v for k, v in r.to_json().items() if k != "secret_sha256"} for r in records]
            )
        )
        return
    if not records:
        click.echo(
            f"no tokens in {store.path}; create one with 'gridpilot token create --role ...'"
        )
        return
    now = datetime.now(UTC)
    for r in records:
        state = "revoked" if r.revoked else ("expired" if not r.active(now) else "active")
        until = r.expires.isoformat(timespec="seconds") if r.expires else "never"
        click.echo(
            f"{r.id}  {r.role:<8}  {state:<7}  expires {until:<25}  {r.name}  (by {r.created_by})"
        )


@token_group.command("revoke")
@config_option
@click.argument("token_id")
def revoke(config: str | None, token_id: str) -> None:
    """Revoke a token by id (see 'gridpilot token list'); effective at once."""
    from gridpilot.api.tokens import TokenError, TokenStoreError

    store = _store(config)
    try:
        record = store.revoke(token_id)
    except (TokenError, TokenStoreError) as exc:
        fail(str(exc), EXIT_CONFIG)
    click.echo(f"revoked {record.id} '{record.name}' ({record.role})")
