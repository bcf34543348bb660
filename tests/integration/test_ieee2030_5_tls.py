"""IEEE 2030.5 transport on loopback: the contexts of ``ieee2030_5.tls`` negotiate exactly
TLS 1.2 with ECDHE-ECDSA-AES128-CCM8 on P-256, the server refuses a client without a
certificate, and the client refuses a server whose certificate another CA signed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gridpilot.ieee2030_5.tls import (
    CIPHER,
    PkiFiles,
    client_context,
    make_test_pki,
    server_context,
)

pytestmark = pytest.mark.integration

_TIMEOUT_S = 10.0


@asynccontextmanager
async def tls_echo_server(ctx: ssl.SSLContext, seen: list[dict[str, object]]) -> AsyncIterator[int]:
    """A TLS server on a free loopback port that records each connection's TLS version,
    cipher and client certificate, and echoes one line."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        seen.append(
            {
                "version": tls.version(),
                "cipher": tls.cipher()[0],
                "peer": tls.getpeercert(binary_form=True),
            }
        )
        line = await reader.readline()
        writer.write(line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, ctx: ssl.SSLContext) -> tuple[str, str, bytes]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"),
        _TIMEOUT_S,
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        writer.write(b"ping\n")
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readline(), _TIMEOUT_S)
        return tls.version(), tls.cipher()[0], echoed
    finally:
        writer.close()


@pytest.fixture
def pki(tmp_path: Path) -> PkiFiles:
    return make_test_pki(tmp_path / "pki")


def server_ctx(pki: PkiFiles) -> ssl.SSLContext:
    return server_context(pki.server_cert, pki.server_key, pki.ca_cert)


async def test_handshake_negotiates_tls12_ccm8_and_the_server_sees_the_client_cert(
    pki: PkiFiles,
) -> None:
    seen: list[dict[str, object]] = []
    async with tls_echo_server(server_ctx(pki), seen) as port:
        version, cipher, echoed = await exchange(
            port, client_context(pki.client_cert, pki.client_key, pki.ca_cert)
        )
    assert (version, cipher, echoed) == ("TLSv1.2", "ECDHE-ECDSA-AES128-CCM8", b"ping\n")
    assert cipher == CIPHER
    assert seen[0]["version"] == "TLSv1.2"
    client_der = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert seen[0]["peer"] == client_der


def _bare_client(pki: PkiFiles, *, tls13: bool = False) -> ssl.SSLContext:
    """A client that trusts the CA but presents no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(CIPHER)
    return ctx


async def _refused(port: int, ctx: ssl.SSLContext) -> None:
    # In TLS 1.2 the server's alert ends the handshake; depending on timing the client sees
    # it as an SSLError, a reset, or the connection closing before the echo.
    try:
        _, _, echoed = await exchange(port, ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return
    assert not echoed, "the server answered a client it should have refused"


async def test_server_refuses_a_client_without_certificate(pki: PkiFiles) -> None:
    seen: list[dict[str, object]] = []
    async with tls_echo_server(server_ctx(pki), seen) as port:
        await _refused(port, _bare_client(pki))
    assert seen == []


async def test_server_refuses_a_client_certificate_from_another_ca(tmp_path: Path) -> None:
    ours, theirs = make_test_pki(tmp_path / "ours"), make_test_pki(tmp_path / "theirs")
    seen: list[dict[str, object]] = []
    async with tls_echo_server(server_ctx(ours), seen) as port:
        await _refused(port, client_context(theirs.client_cert, theirs.client_key, ours.ca_cert))
    assert seen == []


@pytest.mark.parametrize(
    "configure",
    [
        pytest.param(lambda c: c.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256"), id="gcm"),
        pytest.param(lambda c: setattr(c, "minimum_version", ssl.TLSVersion.TLSv1_3), id="tls13"),
    ],
)
async def test_server_refuses_any_other_version_or_cipher(
    pki: PkiFiles, configure: Callable[[ssl.SSLContext], None]
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    configure(ctx)
    seen: list[dict[str, object]] = []
    async with tls_echo_server(server_ctx(pki), seen) as port:
        await _refused(port, ctx)
    assert seen == []


async def test_client_refuses_a_server_certificate_from_another_ca(tmp_path: Path) -> None:
    ours, theirs = make_test_pki(tmp_path / "ours"), make_test_pki(tmp_path / "theirs")
    # The rogue server trusts our client's CA, so only the client's check can stop this.
    rogue = server_context(theirs.server_cert, theirs.server_key, ours.ca_cert)
    seen: list[dict[str, object]] = []
    async with tls_echo_server(rogue, seen) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            await exchange(port, client_context(ours.client_cert, ours.client_key, ours.ca_cert))
    assert seen == []
