"""Reading a secret (password, API token) named by the configuration: from an environment
variable or a file only readable by its owner, never from the site file itself."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path


class SecretError(ValueError):
    """The configured secret cannot be read, or is readable by others."""


def read_secret(
    *,
    what: str,
    env_name: str | None,
    file: Path | None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The secret from ``env_name`` or ``file`` (None when neither is set).

    ``what`` names the setting in messages (``storage.influxdb.password``). A file readable
    or writable by group or others is refused: a secret next to site files must not leak to
    every local user. A trailing newline (as ``echo`` writes) is not part of the secret.
    """
    env = os.environ if environ is None else environ
    if env_name is not None:
        if env_name not in env:
            raise SecretError(
                f"{what}_env names {env_name!r}, which is not set in the environment; "
                f"export it or use {what}_file"
            )
        return env[env_name]
    if file is None:
        return None
    try:
        mode = file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"{what}_file {file} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {file}"
            )
        return file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretError(f"cannot read {what}_file {file}: {exc.strerror}") from exc
