"""TLS for IEEE 2030.5: TLS 1.2 only, ``ECDHE-ECDSA-AES128-CCM8`` on P-256, mutual auth.

IEEE 2030.5 (and CSIP / CSIP-AUS) fix one cipher suite, ``TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8``,
with P-256 ECDSA certificates on both sides; the server identifies a client by its
certificate (the LFDI is a hash of it), so the server always asks for one. Python's ``ssl``
(OpenSSL 3) negotiates this suite once the version is pinned to 1.2 — TLS 1.3 has no CCM8
suite in OpenSSL's default list, and allowing it would silently negotiate something else.

``make_test_pki`` writes a throwaway CA, a server certificate for loopback and client
certificates, for the tests, the demo and the test utility server; a real deployment uses
the certificates its utility issues.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from gridpilot.ops.certs import (
    host_names,
    issue_leaf,
    new_ca,
    write_certificate,
    write_private_key,
)

__all__ = [
    "CIPHER",
    "CURVE",
    "PkiFiles",
    "TlsSetupError",
    "client_context",
    "make_test_pki",
    "server_context",
]

CIPHER = "ECDHE-ECDSA-AES128-CCM8"
"""OpenSSL's name of TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, the suite IEEE 2030.5 mandates."""
CURVE = "prime256v1"
"""P-256 (secp256r1), the only curve IEEE 2030.5 allows for ECDHE and certificates."""


class TlsSetupError(ValueError):
    """A TLS context cannot be built from the given files (the message names the file)."""


def _base_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    protocol = (
        ssl.PROTOCOL_TLS_CLIENT if purpose is ssl.Purpose.SERVER_AUTH else (ssl.PROTOCOL_TLS_SERVER)
    )
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.set_ciphers(CIPHER)
    except ssl.SSLError as exc:  # an OpenSSL built without CCM, or a policy forbidding it
        raise TlsSetupError(
            f"this OpenSSL ({ssl.OPENSSL_VERSION}) refuses the cipher {CIPHER} that IEEE "
            f"2030.5 requires ({exc}); use an OpenSSL build with AES-CCM enabled"
        ) from exc
    ctx.set_ecdh_curve(CURVE)
    return ctx


def _load(ctx: ssl.SSLContext, cert: Path, key: Path, ca: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"cannot load the certificate {cert} with its key {key} ({exc}): both must be "
            "PEM files, the key unencrypted and matching the certificate"
        ) from exc
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"cannot load the CA certificate(s) {ca} ({exc}): give a PEM file of the CA "
            "that signed the peer's certificate"
        ) from exc


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A client context: presents ``cert``/``key``, verifies the server's chain against
    ``ca`` and its name (the URL's host must be in the server certificate's SAN)."""
    ctx = _base_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, cert, key, ca)
    return ctx


def server_context(
    cert: Path, key: Path, ca: Path, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server context: presents ``cert``/``key`` and, by default, refuses any client
    without a certificate signed by ``ca`` (2030.5 identifies clients by certificate)."""
    ctx = _base_context(ssl.Purpose.CLIENT_AUTH)
    _load(ctx, cert, key, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


@dataclass(frozen=True, slots=True)
class PkiFiles:
    """Paths written by ``make_test_pki``; ``clients`` maps each client name to its
    (certificate, key); ``client_cert``/``client_key`` are the first client's."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    clients: dict[str, tuple[Path, Path]]


def make_test_pki(
    directory: Path,
    *,
    clients: Sequence[str] = ("client",),
    server_names: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 30,
    now: dt.datetime | None = None,
) -> PkiFiles:
    """Write a fresh CA (``ca.crt``/``ca.key``), a server certificate for ``server_names``
    (``server.crt``/``server.key``) and one certificate per client name
    (``<name>.crt``/``<name>.key``) into ``directory``: P-256 ECDSA, SHA-256 signatures,
    keys mode 0600. For tests and demos only — every call makes a new CA."""
    if not clients:
        raise ValueError("make_test_pki needs at least one client name")
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = new_ca("GridPilot IEEE 2030.5 test CA", now, days)
    write_private_key(directory / "ca.key", ca_key)
    write_certificate(directory / "ca.crt", ca_cert)

    server_cert, server_key = issue_leaf(
        directory / "server",
        "GridPilot IEEE 2030.5 test server",
        ca_cert=ca_cert,
        ca_key=ca_key,
        now=now,
        days=days,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=host_names(server_names),
    )
    issued: dict[str, tuple[Path, Path]] = {}
    for name in clients:
        if not name or "/" in name or name.startswith(".") or name in {"ca", "server"}:
            raise ValueError(f"client name {name!r} cannot be a file name in {directory}")
        issued[name] = issue_leaf(
            directory / name,
            name,
            ca_cert=ca_cert,
            ca_key=ca_key,
            now=now,
            days=days,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
    first = issued[clients[0]]
    return PkiFiles(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=server_cert,
        server_key=server_key,
        client_cert=first[0],
        client_key=first[1],
        clients=issued,
    )
