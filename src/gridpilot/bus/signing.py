"""Message signatures: who published a message, in a form a subscriber can check.

MQTT does not tell a subscriber who published a message; only the broker knows, and only
its ACL stops a device from publishing on another device's topic. So that an ACL mistake
is not enough to inject data for another device, a publisher may sign each message, and
ingest checks the signature against the key the site registers for the topic's device
(``ingest.require_signatures``).

    user property  gridpilot-sig = "v1." + base64url(HMAC-SHA256(key, topic + NUL + payload))

- The topic is signed with the payload: a message signed for device A's topic does not
  verify on device B's, so a device cannot re-address its own signed data, nor another's.
- Replaying a captured message on its own topic stores nothing new: storage keeps one
  sample per (site, device, point, ts).
- Keys are symmetric (HMAC): ingest holds every publisher's key, so whoever controls
  ingest's key files can forge any device. They live in files readable by their owner only.
- Comparison is constant-time (``hmac.compare_digest``).

Pure functions; the bus client carries the property (MQTT 5 only: 3.1.1 has no
properties).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

__all__ = ["SIGNATURE_PROPERTY", "decode_key", "sign", "verify"]

SIGNATURE_PROPERTY: Final = "gridpilot-sig"
_VERSION: Final = "v1."
_MIN_KEY_BYTES: Final = 16


def decode_key(text: str, *, what: str) -> bytes:
    """A key from its file or variable: base64 of at least 16 random bytes (``head -c 32
    /dev/urandom | base64``). Raises ``ValueError`` naming ``what`` when it is not."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{what} is not base64; make one with: head -c 32 /dev/urandom | base64"
        ) from None
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(
            f"{what} holds {len(key)} bytes; use at least {_MIN_KEY_BYTES} random bytes "
            "(head -c 32 /dev/urandom | base64)"
        )
    return key


def sign(key: bytes, topic: str, payload: bytes) -> str:
    """The signature property value of ``payload`` published on ``topic``."""
    mac = hmac.digest(key, topic.encode() + b"\0" + payload, hashlib.sha256)
    return _VERSION + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def verify(key: bytes, topic: str, payload: bytes, signature: str | None) -> bool:
    """True when ``signature`` is ``sign(key, topic, payload)``."""
    if signature is None:
        return False
    return hmac.compare_digest(sign(key, topic, payload), signature)
