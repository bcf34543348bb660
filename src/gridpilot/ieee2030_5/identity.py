"""Device identity in IEEE 2030.5: LFDI, SFDI and their check digit.

The long-form device identifier (LFDI) is the first 160 bits of the SHA-256 hash of the
device's certificate in DER form, written as 40 upper-case hex digits. The short form
(SFDI) is the first 36 bits of that hash as a decimal number, times ten, plus a check
digit; registration PINs carry the same check digit. IEEE 2030.5-2018 §6.3.3-6.3.4 gives
the worked example LFDI ``3E4F45AB31...`` → SFDI ``167261211391``.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

LFDI_HEX_DIGITS = 40  # 160 bits
SFDI_BITS = 36
_SFDI_HEX_DIGITS = SFDI_BITS // 4  # 36 bits are exactly 9 hex digits
PIN_MAX = 999_999  # PINType: six decimal digits, the last one a check digit


def lfdi(cert_der: bytes) -> str:
    """The LFDI of a certificate given as DER bytes: 40 upper-case hex digits."""
    return hashlib.sha256(cert_der).hexdigest()[:LFDI_HEX_DIGITS].upper()


def lfdi_of_pem(cert_pem: bytes) -> str:
    """The LFDI of a PEM certificate (the hash is over its DER form, not the PEM text)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return lfdi(cert.public_bytes(Encoding.DER))


def check_digit(value: int) -> int:
    """The IEEE 2030.5 check digit of ``value``: (10 − (sum of decimal digits mod 10)) mod 10,
    so that the digits of ``value * 10 + check_digit(value)`` sum to a multiple of 10."""
    if value < 0:
        raise ValueError(f"check digit of a negative number ({value}) is not defined")
    return (10 - sum(int(d) for d in str(value)) % 10) % 10


def sfdi(lfdi_hex: str) -> int:
    """The SFDI for an LFDI: its first 36 bits as a decimal number followed by the check
    digit. Only the first 9 hex digits of ``lfdi_hex`` matter."""
    if len(lfdi_hex) < _SFDI_HEX_DIGITS:
        raise ValueError(
            f"LFDI {lfdi_hex!r} is shorter than {_SFDI_HEX_DIGITS} hex digits; give the 40-digit "
            "LFDI computed from the certificate"
        )
    try:
        prefix = int(lfdi_hex[:_SFDI_HEX_DIGITS], 16)
    except ValueError as exc:
        raise ValueError(f"LFDI {lfdi_hex!r} is not hexadecimal") from exc
    return prefix * 10 + check_digit(prefix)


def with_check_digit(value: int) -> int:
    """``value`` followed by its check digit (how a registration PIN is made from 5 digits)."""
    return value * 10 + check_digit(value)


def has_valid_check_digit(number: int) -> bool:
    """True when the last decimal digit of ``number`` is the check digit of the rest (an SFDI
    or a registration PIN as the server sends it)."""
    if number < 0:
        return False
    return number % 10 == check_digit(number // 10)


def pin_matches(expected: int, served: int) -> bool:
    """Whether the PIN the server's Registration resource carries is the one configured for
    this device. Both must be well-formed six-digit PINs (last digit the check digit); a
    malformed PIN never matches, so a typo in the configuration cannot pass by accident."""
    for pin in (expected, served):
        if not 0 <= pin <= PIN_MAX or not has_valid_check_digit(pin):
            return False
    return expected == served
