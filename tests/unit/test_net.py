"""Listening sockets: loopback names, port fallback, and TCP_NODELAY on what they accept."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gridpilot.net import bind_or_free_port, is_loopback_host


@pytest.mark.parametrize(
    ("name", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("192.0.2.1", False), ("ems.example", False)],
)  # fmt: skip
def test_loopback_names(name: str, loopback: bool) -> None:
    assert is_loopback_host(name) is loopback


def test_a_taken_port_falls_back_to_a_free_one() -> None:
    with bind_or_free_port("127.0.0.1", 0, reuse_address=True) as first:
        first.listen()
        taken = first.getsockname()[1]
        with bind_or_free_port("127.0.0.1", taken, reuse_address=True) as second:
            assert second.getsockname()[1] != taken


async def test_connections_accepted_by_asyncio_have_nodelay() -> None:
    """asyncio turns Nagle off only on sockets that say they are TCP; with Nagle on, each
    HTTP response waits for the client's delayed ACK (~40 ms)."""
    sock = bind_or_free_port("127.0.0.1", 0, reuse_address=True)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("socket")
        accepted.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_client, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(accepted, 5) != 0
        writer.close()
