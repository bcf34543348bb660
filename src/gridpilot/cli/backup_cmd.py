"""``gridpilot backup CONFIG DEST`` and ``gridpilot restore CONFIG SRC``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gridpilot.cli.common import EXIT_CONFIG, fail

if TYPE_CHECKING:
    from gridpilot.ops.backup import CopyProgress

# Progress is shown once a copy has run this long: short copies stay quiet.
_PROGRESS_AFTER_S = 1.0
# Without a terminal (cron, journald), a progress line at most this often.
_LOG_EVERY_S = 10.0

key_file_option = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the secret (at least 32 bytes, mode 0600), e.g. made with "
    "'(umask 077; openssl rand -base64 32 > backup.key)'. Keep a copy away from the backups.",
)


def _secret(key_file: Path | None) -> bytes | None:
    from gridpilot.ops.sealed import KeyFileError, read_key_file

    if key_file is None:
        return None
    try:
        return read_key_file(key_file)
    except KeyFileError as exc:
        fail(str(exc), EXIT_CONFIG)


class _ProgressPrinter:
    """Database copy progress on stderr: redrawn in place on a terminal, an occasional
    line otherwise; nothing for copies that end within a second."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._shown = False

    def __call__(self, progress: CopyProgress) -> None:
        now = time.monotonic()
        if now - self._start < _PROGRESS_AFTER_S:
            return
        quiet = not self._tty and self._shown and now - self._last_line < _LOG_EVERY_S
        if quiet and progress.copied_pages < progress.total_pages:
            return
        mib = 1024 * 1024
        text = (
            f"copying the database: {progress.fraction:4.0%} "
            f"({progress.copied_bytes / mib:,.1f} of {progress.total_bytes / mib:,.1f} MiB)"
        )
        click.echo(f"\r{text}" if self._tty else text, err=True, nl=not self._tty)
        self._last_line = now
        self._shown = True

    def finish(self) -> None:
        if self._shown and self._tty:
            click.echo("", err=True)


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@key_file_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def backup(config: Path, dest: Path, key_file: Path | None, as_json: bool) -> None:
    """Back up the site in CONFIG to DEST (a new file, or a directory to create a dated
    file in) while the services run: a consistent copy of the SQLite database, the site
    file, API tokens, audit log and control journal, with a manifest of SHA-256 digests.
    The archive is mode 0600; with --key-file it is encrypted (AES-256-GCM)."""
    from gridpilot.ops.backup import BackupError, take_backup

    secret = _secret(key_file)
    printer = _ProgressPrinter()
    try:
        result = take_backup(config, dest, secret=secret, progress=printer)
    except BackupError as exc:
        printer.finish()
        fail(f"backup of {config} failed: {exc}")
    printer.finish()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(result.path),
                    "site": result.site_id,
                    "encrypted": result.encrypted,
                    "bytes": result.size,
                    "members": [
                        {"name": m.name, "role": m.role, "bytes": m.size, "sha256": m.sha256}
                        for m in result.members
                    ],
                    "advice": result.advice,
                }
            )
        )
    else:
        names = ", ".join(m.name for m in result.members)
        sealed = "encrypted " if result.encrypted else ""
        click.echo(f"{sealed}backup of site {result.site_id} written to {result.path}")
        click.echo(f"  {result.size:,} bytes: {names}")
    if result.advice:
        click.echo(f"gridpilot: note: {result.advice}", err=True)


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("src", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@key_file_option
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Only verify the archive and show what would be replaced.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Restore even while processes hold the database: it is then overwritten in place "
    "through SQLite (the running services see the restored data, not a file swapped under "
    "them), but they must be restarted right after, as their caches describe the old data. "
    "Prefer stopping them first.",
)
def restore(config: Path, src: Path, key_file: Path | None, check_only: bool, force: bool) -> None:
    """Restore the backup SRC as the site file CONFIG and the files it names.

    Everything is verified first (key, every member's SHA-256, the site file, SQLite's
    integrity check); nothing is replaced unless all of it passes. Each file is then
    replaced atomically. Stop the services first (systemctl stop gridpilot.target)."""
    from gridpilot.ops.backup import (
        ArchiveRefusedError,
        BackupError,
        RestoreBlockedError,
        restore_backup,
    )

    secret = _secret(key_file)
    try:
        result = restore_backup(config, src, secret=secret, force=force, check_only=check_only)
    except ArchiveRefusedError as exc:
        fail(f"restore refused: {exc}")
    except RestoreBlockedError as exc:
        fail(f"restore refused: {exc}")
    except BackupError as exc:
        fail(f"restore failed: {exc}")
    verb = "would replace" if result.checked_only else "restored"
    click.echo(f"backup of site {result.site_id} taken {result.created}: verified")
    for name, target in result.replaced:
        click.echo(f"  {verb} {target} ({name})")
    if result.forced_over:
        holders = ", ".join(str(h) for h in result.forced_over)
        click.echo(
            f"gridpilot: the database was overwritten while in use by {holders}: restart "
            "those services now",
            err=True,
        )
    if result.advice:
        click.echo(f"gridpilot: note: {result.advice}", err=True)
