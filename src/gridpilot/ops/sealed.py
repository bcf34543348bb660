"""Authenticated encryption of a backup stream with a key file (AES-256-GCM, chunked).

A backup can be gigabytes, so it is sealed in chunks rather than in one AEAD call; the
chunking follows the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) so that
chunks cannot be reordered, dropped or the stream cut short without detection::

    header  = MAGIC (8) | salt (16) | key check (16) | chunk size (4, big-endian)
    chunk i = AES-256-GCM(key, nonce = i (11 bytes, big-endian) | last (1 byte),
                          aad = header, plaintext of chunk_size bytes (the last: fewer))

``key`` and ``key check`` come from HKDF-SHA256 over the key file's content with the
archive's random salt, so every archive has its own key (and the counter nonces never
repeat under a key). The key check tells "wrong key file" apart from "altered archive";
it reveals nothing about the key beyond what a trial decryption would.

Every chunk is authenticated before its plaintext is released; the last chunk is marked,
so a truncated file is refused too.
"""

from __future__ import annotations

import hmac
import os
import struct
from pathlib import Path
from typing import BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gridpilot.ops.files import private_mode_problem

__all__ = [
    "MAGIC",
    "DecryptingReader",
    "EncryptingWriter",
    "KeyFileError",
    "SealError",
    "WrongKeyError",
    "read_key_file",
]

MAGIC: Final = b"GPBKAE1\n"
_SALT_BYTES: Final = 16
_CHECK_BYTES: Final = 16
_HEADER: Final = struct.Struct(f">8s{_SALT_BYTES}s{_CHECK_BYTES}sI")
_TAG_BYTES: Final = 16
CHUNK_BYTES: Final = 1024 * 1024
# A header may only name chunk sizes a reader can hold in memory: the header is
# authenticated by the first chunk, which is read only after its size is known.
_MAX_CHUNK_BYTES: Final = 64 * 1024 * 1024
_MIN_KEY_BYTES: Final = 32
_INFO: Final = b"gridpilot-backup v1"


class SealError(Exception):
    """The sealed stream is damaged or was altered (or is not a sealed backup)."""


class WrongKeyError(SealError):
    """The key file is not the one the backup was sealed with."""


class KeyFileError(Exception):
    """The key file cannot be used (missing, too short, or readable by others)."""


def read_key_file(path: Path) -> bytes:
    """The secret in ``path``, refused when group or others may read it or it holds fewer
    than 32 bytes. A text key (e.g. ``openssl rand -base64 32``) loses trailing whitespace,
    so an editor's final newline does not change the key."""
    try:
        problem = private_mode_problem(path, "the key file")
        if problem is not None:
            raise KeyFileError(problem)
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror}") from exc
    if data.isascii():
        data = data.rstrip()
    if len(data) < _MIN_KEY_BYTES:
        raise KeyFileError(
            f"the key file {path} holds {len(data)} bytes; use at least {_MIN_KEY_BYTES} "
            "random bytes, e.g.: (umask 077; openssl rand -base64 32 > KEYFILE)"
        )
    return data


def _derive(secret: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=32 + _CHECK_BYTES, salt=salt, info=_INFO).derive(
        secret
    )
    return AESGCM(okm[:32]), okm[32:]


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class EncryptingWriter:
    """A write-only binary stream that seals what is written into ``raw``; ``close()``
    writes the final chunk (and does not close ``raw``)."""

    def __init__(self, raw: BinaryIO, secret: bytes, chunk_bytes: int = CHUNK_BYTES) -> None:
        salt = os.urandom(_SALT_BYTES)
        self._aead, check = _derive(secret, salt)
        self._header = _HEADER.pack(MAGIC, salt, check, chunk_bytes)
        self._raw = raw
        self._chunk = chunk_bytes
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        raw.write(self._header)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed EncryptingWriter")
        self._buffer += data
        while len(self._buffer) >= self._chunk:
            # Full chunks are never the last: the last one is written by close(), with
            # what remains (0 .. chunk-1 bytes), so a reader knows it by its size.
            self._seal(bytes(self._buffer[: self._chunk]), last=False)
            del self._buffer[: self._chunk]
        return len(data)

    def close(self) -> None:
        if not self._closed:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._closed = True

    def _seal(self, plain: bytes, *, last: bool) -> None:
        self._raw.write(self._aead.encrypt(_nonce(self._index, last), plain, self._header))
        self._index += 1


class DecryptingReader:
    """A read-only binary stream of the plaintext of the sealed ``raw``.

    Raises ``WrongKeyError`` on creation when the key does not match, ``SealError`` when a
    chunk fails authentication or the stream is cut short or has trailing data.
    """

    def __init__(self, raw: BinaryIO, secret: bytes) -> None:
        header = raw.read(_HEADER.size)
        if len(header) < _HEADER.size or not header.startswith(MAGIC):
            raise SealError("not an encrypted GridPilot backup (its header is missing)")
        _magic, salt, check, chunk = _HEADER.unpack(header)
        if not 1 <= chunk <= _MAX_CHUNK_BYTES:
            raise SealError(f"the header names a chunk size of {chunk} bytes: damaged")
        self._aead, expected = _derive(secret, salt)
        if not hmac.compare_digest(check, expected):
            raise WrongKeyError(
                "the key file is not the one this backup was encrypted with (or the "
                "archive's header was altered)"
            )
        self._raw = raw
        self._header = header
        self._chunk = chunk
        self._index = 0
        self._plain = b""
        self._pos = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = [self._plain[self._pos :]]
            self._plain, self._pos = b"", 0
            while self._next_chunk():
                parts.append(self._plain)
                self._plain = b""
            return b"".join(parts)
        while self._pos >= len(self._plain):
            if not self._next_chunk():
                return b""
        out = self._plain[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def _next_chunk(self) -> bool:
        if self._done:
            return False
        sealed = self._raw.read(self._chunk + _TAG_BYTES)
        last = len(sealed) < self._chunk + _TAG_BYTES
        if last and len(sealed) < _TAG_BYTES:
            raise SealError("the archive is cut short (its final chunk is missing)")
        try:
            plain = self._aead.decrypt(_nonce(self._index, last), sealed, self._header)
        except InvalidTag as exc:
            raise SealError(
                f"chunk {self._index} of the archive fails authentication: the archive was "
                "altered or damaged"
            ) from exc
        if last:
            self._done = True
            if self._raw.read(1):
                raise SealError("the archive has data after its final chunk: altered")
        self._index += 1
        self._plain, self._pos = plain, 0
        return True
