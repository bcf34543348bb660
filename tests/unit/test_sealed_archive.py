"""The sealed (encrypted) stream over several chunks, and the strict tar reader."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from gridpilot.ops.archive import ArchiveDamagedError, ArchiveReader, ArchiveWriter
from gridpilot.ops.sealed import (
    DecryptingReader,
    EncryptingWriter,
    KeyFileError,
    SealError,
    WrongKeyError,
    read_key_file,
)

SECRET = b"k" * 32
CHUNK = 64
HEADER = 44
SEALED_CHUNK = CHUNK + 16


def seal(data: bytes, secret: bytes = SECRET) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, secret, chunk_bytes=CHUNK)
    for i in range(0, len(data), 50):  # writes that straddle chunk boundaries
        writer.write(data[i : i + 50])
    writer.close()
    return out.getvalue()


def unseal(sealed: bytes, secret: bytes = SECRET, read_size: int = 37) -> bytes:
    reader = DecryptingReader(io.BytesIO(sealed), secret)
    parts = []
    while part := reader.read(read_size):
        parts.append(part)
    return b"".join(parts)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * CHUNK, 1000])
def test_what_is_sealed_comes_back(size: int) -> None:
    data = os.urandom(size)
    sealed = seal(data)
    full, rest = divmod(size, CHUNK)
    assert len(sealed) == HEADER + full * SEALED_CHUNK + rest + 16
    assert unseal(sealed) == data
    assert DecryptingReader(io.BytesIO(sealed), SECRET).read() == data


def test_chunks_cannot_be_dropped_reordered_cut_or_extended() -> None:
    data = os.urandom(5 * CHUNK + 10)
    sealed = seal(data)
    chunks = [
        sealed[HEADER + i : HEADER + i + SEALED_CHUNK]
        for i in range(0, len(sealed) - HEADER, SEALED_CHUNK)
    ]
    header = sealed[:HEADER]
    swapped = header + chunks[1] + chunks[0] + b"".join(chunks[2:])
    dropped = header + chunks[0] + b"".join(chunks[2:])
    cut_at_chunk = header + b"".join(chunks[:3])  # the final chunk is missing
    cut_inside = sealed[:-5]
    extended = sealed + b"\0"
    for altered in (swapped, dropped, cut_at_chunk, cut_inside, extended):
        with pytest.raises(SealError):
            unseal(altered)
    # The last chunk of one archive does not end another sealed with the same key.
    other = seal(os.urandom(5 * CHUNK + 10))
    with pytest.raises(SealError):
        unseal(sealed[: -len(chunks[-1])] + other[-len(chunks[-1]) :])


def test_the_wrong_key_is_told_apart_from_tampering() -> None:
    sealed = seal(b"site data" * 100)
    with pytest.raises(WrongKeyError):
        DecryptingReader(io.BytesIO(sealed), b"x" * 32)
    flipped = bytearray(sealed)
    flipped[HEADER + 3] ^= 1
    with pytest.raises(SealError, match="fails authentication") as caught:
        unseal(bytes(flipped))
    assert not isinstance(caught.value, WrongKeyError)
    with pytest.raises(SealError, match="not an encrypted"):
        DecryptingReader(io.BytesIO(b"plain tar"), SECRET)


def test_key_files(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("A" * 44 + "\n")
    key.chmod(0o600)
    assert read_key_file(key) == b"A" * 44  # the editor's newline is not part of the key
    key.chmod(0o604)
    with pytest.raises(KeyFileError, match="mode 0604"):
        read_key_file(key)
    key.chmod(0o600)
    key.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="at least 32"):
        read_key_file(key)
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def archive_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    writer = ArchiveWriter(out, 1_700_000_000)
    for name, data in members.items():
        writer.add(name, len(data), io.BytesIO(data))
    writer.close()
    return out.getvalue()


def test_the_archive_is_a_tar_any_tool_reads_and_the_reader_walks_it() -> None:
    members = {"manifest.json": b"{}", "database.sqlite": os.urandom(1500), "empty": b""}
    data = archive_of(members)
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == list(members)
        assert all(m.mode == 0o600 for m in tar.getmembers())
    reader = ArchiveReader(io.BytesIO(data))
    seen = {}
    for header in reader.members():
        sha, body = reader.read_member()
        assert sha == hashlib.sha256(body).hexdigest()
        seen[header.name] = body
    assert seen == members


def test_the_reader_refuses_what_the_writer_never_writes() -> None:
    def walk(data: bytes) -> None:
        reader = ArchiveReader(io.BytesIO(data))
        for _ in reader.members():
            reader.read_member()

    def refused(data: bytes) -> None:
        with pytest.raises(ArchiveDamagedError):
            walk(data)

    for name in ("../etc/passwd", "dir/file", "Upper"):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        refused(out.getvalue())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    refused(out.getvalue())
    good = archive_of({"a": b"x" * 10})
    refused(good[:700])  # cut short
    refused(good + b"\x01")  # a byte after the end
