"""The TLS context of an MQTT client, from the site file's ``broker.tls``, with errors that
name the file at fault and the fix."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from gridpilot.bus.errors import BusRefusedError
from gridpilot.config.models import BrokerTlsConfig, site_path

__all__ = ["client_ssl_context", "describe_tls_failure"]


def client_ssl_context(tls: BrokerTlsConfig | None, base_dir: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the broker (its CA, its name) and presents our
    certificate when one is configured. Raises ``BusRefusedError`` for a missing or
    unusable file, or a private key others may read."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls is None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )

    def resolve(path: Path) -> Path:
        return site_path(base_dir, path) if base_dir is not None else path

    if tls.ca_file is not None:
        ca = resolve(tls.ca_file)
        _require_file(ca, "broker.tls.ca_file")
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, ValueError) as exc:
            raise BusRefusedError(
                f"broker.tls.ca_file {ca} holds no usable PEM certificate ({exc})"
            ) from exc
    if tls.cert_file is not None and tls.key_file is not None:
        cert, key = resolve(tls.cert_file), resolve(tls.key_file)
        _require_file(cert, "broker.tls.cert_file")
        _require_file(key, "broker.tls.key_file")
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o077:
            raise BusRefusedError(
                f"broker.tls.key_file {key} has mode {mode:04o}: others may read the private "
                f"key. Run 'chmod 600 {key}'"
            )
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise BusRefusedError(
                f"broker.tls: the certificate {cert} and key {key} cannot be used together "
                f"({exc.reason or exc}): is the key the one the certificate was issued for, "
                "and are both PEM?"
            ) from exc
    return context


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise BusRefusedError(f"{what} {path} does not exist or is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise BusRefusedError(f"cannot read {what} {path}: {exc.strerror}") from exc


def describe_tls_failure(exc: BaseException | str) -> str | None:
    """What to do about a TLS failure that retrying cannot fix, or None for other errors
    (a network problem: retry). ``exc`` is the exception or the text paho logged."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the broker's certificate was not accepted ({exc.verify_message}): set "
            "broker.tls.ca_file to the CA that signed it (ca.crt of 'gridpilot deploy certs') "
            "and connect by a name or address its certificate lists"
        )
    text = str(exc).lower() if not isinstance(exc, ssl.SSLError) else str(exc.reason).lower()
    if "certificate required" in text or "certificate_required" in text:
        return (
            "the broker requires a client certificate: set broker.tls.cert_file and "
            "key_file to one signed by the broker's CA (gridpilot deploy certs --client ID)"
        )
    if any(
        alert in text
        for alert in ("unknown ca", "unknown_ca", "bad certificate", "bad_certificate",
                      "certificate unknown", "certificate_unknown", "certificate expired",
                      "certificate_expired")
    ):  # fmt: skip
        return (
            f"the broker refused our client certificate ({text}): is it signed by the "
            "broker's CA and still valid? Issue a new one with gridpilot deploy certs"
        )
    if "protocol version" in text or "protocol_version" in text or "unsupported protocol" in text:
        return (
            f"no TLS version both sides accept ({text}): GridPilot's broker speaks TLS 1.3 "
            "only; set broker.tls.min_version to match the broker"
        )
    return None
