"""Listening sockets for GridPilot's own servers (the embedded broker, the API).

Both listen on loopback unless configured otherwise, and both take a free port rather than
fail when the configured one is taken (on many machines a Mosquitto already owns 1883).
"""

from __future__ import annotations

import errno
import ipaddress
import socket


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, also ``[::1]``)."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind_or_free_port(host: str, port: int, *, reuse_address: bool) -> socket.socket:
    """A TCP socket bound to ``host:port``, or to a free port of ``host`` when ``port`` is
    taken (EADDRINUSE). Any other failure is raised. The caller compares
    ``sock.getsockname()[1]`` with ``port`` to say which port it got.

    ``reuse_address`` sets SO_REUSEADDR (rebinding while old connections sit in TIME_WAIT;
    on Linux it never lets two listeners share a port).
    """
    address = "127.0.0.1" if host == "localhost" else host
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return _bound(family, address, port, reuse_address)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
    return _bound(family, address, 0, reuse_address)


def _bound(
    family: socket.AddressFamily, address: str, port: int, reuse_address: bool
) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the socket says it is TCP. Without it every HTTP response (head and body in two
    # writes) waits ~40 ms for the client's delayed ACK (benchmarks/api).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock
