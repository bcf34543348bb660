"""HTTPS for the API: a server context that speaks TLS 1.3 only, from checked files."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from gridpilot.api.errors import ApiStartError
from gridpilot.config.models import ApiTlsConfig, site_path

__all__ = ["server_ssl_context"]


def server_ssl_context(tls: ApiTlsConfig, base_dir: Path) -> ssl.SSLContext:
    """TLS 1.3 only (no older protocol to downgrade to); raises ``ApiStartError`` saying
    which file is wrong and how to fix it."""
    cert = site_path(base_dir, tls.cert_file)
    key = site_path(base_dir, tls.key_file)
    for name, path in (("cert_file", cert), ("key_file", key)):
        if not path.is_file():
            raise ApiStartError(f"api.tls.{name} {path} does not exist or is not a file")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise ApiStartError(
            f"api.tls.key_file {key} has mode {mode:04o}: others may read the private key. "
            f"Run 'chmod 600 {key}'"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ApiStartError(
            f"api.tls: the certificate {cert} and key {key} cannot be used together "
            f"({exc.reason or exc}): is the key the one the certificate was issued for, "
            "and are both PEM?"
        ) from exc
    except OSError as exc:
        raise ApiStartError(f"api.tls: cannot read {cert} or {key}: {exc.strerror}") from exc
    return context
