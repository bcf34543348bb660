"""Transport hygiene for every response: security headers and a request-body limit.

Both are plain ASGI middleware (no per-request objects beyond what they need), so they also
cover responses produced before routing (401, 404, 413).
"""

from __future__ import annotations

from typing import Final

import orjson
from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "SecurityHeadersMiddleware"]


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes (api.max_body_bytes)"


_BASE_HEADERS: Final = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
_API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"
"""JSON needs no sources; a page set by the route (the dashboard) keeps its own policy."""


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api_data = not scope["path"].startswith("/static/") and scope["path"] != "/"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _BASE_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("content-security-policy", _API_CSP)
                if api_data:
                    # Data behind a token must not linger in shared or browser caches.
                    headers.setdefault("cache-control", "no-store")
                else:
                    # The dashboard's files keep their names across upgrades: revalidate
                    # (ETag) every time so a browser never runs an old script.
                    headers.setdefault("cache-control", "no-cache")
                if self.hsts:
                    headers.setdefault("strict-transport-security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI passes an ``HTTPException`` met while reading the body
    on to the error handlers (any other error becomes "400 error parsing the body")."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large(max_bytes))


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, whether announced by
    ``Content-Length`` or sent chunked."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                too_large = False  # h11 refuses a malformed Content-Length before us
            if too_large:
                await self._refuse(send)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"error": _too_large(self.max_bytes)})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
