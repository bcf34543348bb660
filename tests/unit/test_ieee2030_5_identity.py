"""LFDI / SFDI / check digits (IEEE 2030.5 §6.3): the published example and a real
certificate."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gridpilot.ieee2030_5.identity import (
    check_digit,
    has_valid_check_digit,
    lfdi,
    lfdi_of_pem,
    pin_matches,
    sfdi,
    with_check_digit,
)

PUBLISHED_PREFIX = "3E4F45AB31"


@pytest.mark.parametrize("rest", ["EDBE8BAE9CB4BCC0A9F5A3BCDE0123", "0" * 30, "F" * 30])
def test_published_example_lfdi_prefix_gives_published_sfdi(rest: str) -> None:
    # 2030.5 publishes only the first hex digits of its example LFDI; whatever follows, the
    # SFDI comes from the first 36 bits (9 hex digits) alone.
    example_lfdi = PUBLISHED_PREFIX + rest
    assert len(example_lfdi) == 40
    assert sfdi(example_lfdi) == 167261211391


def test_sfdi_uses_only_first_36_bits() -> None:
    # The 10th hex digit ("1" in the example) is bit 37-40: changing it changes nothing.
    assert sfdi("3E4F45AB3" + "0" * 31) == sfdi("3E4F45AB3" + "F" * 31) == 167261211391
    assert sfdi("3E4F45AB4" + "0" * 31) != 167261211391


@pytest.mark.parametrize(
    ("value", "digit"),
    [(16726121139, 1), (0, 0), (1, 9), (9, 1), (10, 9), (12345, 5), (99999, 5)],
)
def test_check_digit_makes_digit_sum_a_multiple_of_ten(value: int, digit: int) -> None:
    assert check_digit(value) == digit
    assert sum(int(d) for d in str(with_check_digit(value))) % 10 == 0


def test_pin_checks() -> None:
    pin = with_check_digit(12345)  # 123455
    assert pin == 123455
    assert has_valid_check_digit(pin)
    assert pin_matches(123455, 123455)
    assert not pin_matches(123455, 111115)  # well formed, but not ours
    assert not pin_matches(123456, 123456)  # wrong check digit on both sides: never a match
    assert not pin_matches(1234555, 1234555)  # seven digits is not a PINType


def _p256_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridpilot-test-device")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def test_lfdi_of_real_der_certificate() -> None:
    cert = _p256_certificate()
    der = cert.public_bytes(Encoding.DER)
    expected = hashlib.sha256(der).digest()[:20].hex().upper()
    assert lfdi(der) == expected
    assert len(lfdi(der)) == 40
    assert lfdi(der) == lfdi(der).upper()
    # PEM text hashes as its DER content, never as the text.
    assert lfdi_of_pem(cert.public_bytes(Encoding.PEM)) == expected
    # SFDI: first 36 bits of the digest, × 10, + check digit; at most 12 digits.
    first36 = int.from_bytes(hashlib.sha256(der).digest()[:5], "big") >> 4
    assert sfdi(lfdi(der)) == first36 * 10 + check_digit(first36)
    assert has_valid_check_digit(sfdi(lfdi(der)))
    assert sfdi(lfdi(der)) < 2**36 * 10


def test_sfdi_refuses_short_or_non_hex_lfdi() -> None:
    with pytest.raises(ValueError, match="shorter"):
        sfdi("3E4F")
    with pytest.raises(ValueError, match="not hexadecimal"):
        sfdi("XYZ" + "0" * 37)
