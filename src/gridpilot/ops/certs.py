"""A site's own certificate authority for MQTT over TLS (``gridpilot deploy certs``).

One CA per site signs the broker's server certificate and a client certificate per device
or gateway, whose Common Name is its id: the broker takes it as the user name
(``use_identity_as_username``) and the ACL lets that name publish only its own topics.
Keys are ECDSA P-256 (what every TLS 1.3 stack and small device supports), written mode
0600; certificates 0644. An existing CA in the directory is reused, so adding a device
later does not reissue the others.

Uses PyCA ``cryptography`` (X.509 building and signing), never hand-made ASN.1.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridpilot.model import is_valid_identifier
from gridpilot.ops.files import atomic_file

__all__ = [
    "CertError",
    "IssuedFiles",
    "host_names",
    "issue_leaf",
    "issue_site_certificates",
    "new_ca",
    "write_certificate",
    "write_private_key",
]

_KEY_MODE = 0o600
_CERT_MODE = 0o644


class CertError(ValueError):
    """The certificates cannot be issued as asked (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """What ``issue_site_certificates`` wrote (or reused, for the CA)."""

    ca_cert: Path
    ca_created: bool
    written: tuple[Path, ...]


def issue_site_certificates(
    directory: Path,
    *,
    server_names: Sequence[str] = (),
    clients: Sequence[str] = (),
    days: int = 825,
    site: str = "gridpilot",
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Create (or reuse) ``ca.crt``/``ca.key`` in ``directory`` and issue ``server.crt``/
    ``server.key`` for ``server_names`` (DNS names or IP addresses of the broker) and
    ``<id>.crt``/``<id>.key`` for each client id."""
    if days < 1:
        raise CertError("days must be at least 1")
    for client in clients:
        if not is_valid_identifier(client):
            raise CertError(
                f"client {client!r} is not a valid device id (lower-case letters, digits, "
                "'_' and '-'): its certificate's Common Name becomes its MQTT user name"
            )
    now = now or dt.datetime.now(dt.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key_path, ca_cert_path = directory / "ca.key", directory / "ca.crt"
    written: list[Path] = []
    if ca_key_path.exists() != ca_cert_path.exists():
        raise CertError(
            f"{directory} holds only one of ca.crt and ca.key: restore the other, or remove "
            "both to start a new CA (every certificate then has to be issued again)"
        )
    ca_created = not ca_key_path.exists()
    if ca_created:
        ca_cert, ca_key = new_ca(f"GridPilot {site} MQTT CA", now, days * 4)
        write_private_key(ca_key_path, ca_key)
        write_certificate(ca_cert_path, ca_cert)
        written += [ca_cert_path, ca_key_path]
    else:
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)

    if server_names:
        written += issue_leaf(
            directory / "server",
            server_names[0],
            ca_cert=ca_cert,
            ca_key=ca_key,
            now=now,
            days=days,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=host_names(server_names),
        )
    for client in clients:
        written += issue_leaf(
            directory / client,
            client,
            ca_cert=ca_cert,
            ca_key=ca_key,
            now=now,
            days=days,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
    return IssuedFiles(ca_cert_path, ca_created, tuple(written))


def new_ca(
    common_name: str, now: dt.datetime, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        certificate_builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, anything else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_leaf(
    stem: Path,
    common_name: str,
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    days: int,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName] = (),
) -> tuple[Path, Path]:
    """A P-256 certificate for ``common_name`` signed by the CA, for ``usage`` (server or
    client authentication), written as ``<stem>.crt`` and ``<stem>.key`` (mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        certificate_builder(subject, ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    # with_name, not with_suffix: a name with a dot in it keeps all of it.
    cert_path, key_path = stem.with_name(stem.name + ".crt"), stem.with_name(stem.name + ".key")
    write_private_key(key_path, key)
    write_certificate(cert_path, cert)
    return cert_path, key_path


def certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    # Backdated a little: a peer whose clock lags must not see a "not yet valid" certificate.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertError(
            f"cannot use the CA in {cert_path.parent} ({exc}): ca.crt and ca.key must be the "
            "unencrypted PEM files this command wrote"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an EC key; this command only signs with EC CAs")
    if cert.public_key() != key.public_key():
        raise CertError(f"{key_path} is not the key of {cert_path}: restore the matching pair")
    return cert, key


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with atomic_file(path, mode=_KEY_MODE) as out:
        out.write(pem)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    with atomic_file(path, mode=_CERT_MODE) as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
