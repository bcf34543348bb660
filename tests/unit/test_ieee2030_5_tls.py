"""The test PKI of ``ieee2030_5.tls``: P-256 ECDSA everywhere, SANs for loopback, private
keys mode 0600, chains that verify; contexts pinned to TLS 1.2 and the one 2030.5 suite."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gridpilot.ieee2030_5.tls import (
    TlsSetupError,
    client_context,
    make_test_pki,
    server_context,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_make_test_pki_writes_p256_certificates_signed_by_its_ca(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path, clients=("site-a", "site-b"))
    ca = _cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert_path, key_path in [
        (pki.server_cert, pki.server_key),
        *pki.clients.values(),
    ]:
        cert = _cert(cert_path)
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == public
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.ca_key.stat().st_mode) == 0o600
    assert (pki.client_cert, pki.client_key) == pki.clients["site-a"]
    assert pki.clients["site-b"][0] == tmp_path / "site-b.crt"


def test_server_certificate_names_loopback_and_client_certificates_are_for_clients(
    tmp_path: Path,
) -> None:
    pki = make_test_pki(tmp_path)
    server = _cert(pki.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client_usage = _cert(pki.client_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(client_usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_every_call_makes_a_new_ca(tmp_path: Path) -> None:
    one, two = make_test_pki(tmp_path / "one"), make_test_pki(tmp_path / "two")
    assert _cert(one.ca_cert).public_key() != _cert(two.ca_cert).public_key()


def test_contexts_allow_only_tls12_and_ccm8(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    client = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
    server = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    for ctx in (client, server):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_2
        tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 == ["ECDHE-ECDSA-AES128-CCM8"]
    assert client.check_hostname
    assert client.verify_mode == server.verify_mode == ssl.CERT_REQUIRED
    optional = server_context(
        pki.server_cert, pki.server_key, pki.ca_cert, require_client_cert=False
    )
    assert optional.verify_mode == ssl.CERT_OPTIONAL


def test_mismatched_key_is_refused_naming_the_files(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    with pytest.raises(TlsSetupError, match=r"client\.crt.*server\.key"):
        client_context(pki.client_cert, pki.server_key, pki.ca_cert)
    with pytest.raises(TlsSetupError, match=r"missing\.pem"):
        server_context(pki.server_cert, pki.server_key, tmp_path / "missing.pem")


def test_client_names_that_are_not_file_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be a file name"):
        make_test_pki(tmp_path, clients=("../x",))
    with pytest.raises(ValueError, match="cannot be a file name"):
        make_test_pki(tmp_path, clients=("server",))
