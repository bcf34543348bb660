"""Who is asking: bearer tokens, roles, and per-token rate limits.

``AuthMiddleware`` runs before any route. A request to a public path (``/healthz``, the
dashboard's page and static assets, the OpenAPI document, which describes routes but holds no
site data) passes; any other needs ``Authorization: Bearer <token>`` naming an active token,
else 401 with ``WWW-Authenticate: Bearer``. The principal is put in the ASGI scope's state,
where the ``require(role)`` dependency finds it and answers 403 when the role is too low.
Each token has a token bucket (``rate_per_minute``, burst ``burst``); beyond it the answer is
429 with ``Retry-After``.

WebSocket routes that authenticate inside their own protocol (GraphQL's ``connection_init``
carries the token, because a browser cannot set headers on a WebSocket) are listed in
``self_authenticating``; every other WebSocket needs the header like HTTP.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gridpilot.api.errors import ForbiddenError
from gridpilot.api.tokens import Role, TokenStore, TokenStoreError

__all__ = [
    "AuthMiddleware",
    "Authenticator",
    "Principal",
    "current_principal",
    "principal_of_scope",
    "require",
]

log = logging.getLogger("gridpilot.api")

_SCOPE_KEY: Final = "gridpilot.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of a token, as the audit log names them."""

    token_id: str
    name: str
    role: Role

    @property
    def who(self) -> str:
        return f"{self.name} ({self.role}, token {self.token_id})"


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class Authenticator:
    """Checks tokens against ``store`` and meters each token's request rate."""

    def __init__(
        self,
        store: TokenStore,
        *,
        rate_per_minute: float = 600.0,
        burst: int = 120,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.rate_per_s = rate_per_minute / 60.0
        self.burst = float(burst)
        self._monotonic = monotonic
        # Bounded by the number of tokens in the store: only verified ids get a bucket.
        self._buckets: dict[str, _Bucket] = {}

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header value, or None.

        Raises ``TokenStoreError`` when the token file cannot be read.
        """
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self.authenticate_token(token)

    def authenticate_token(self, token: str) -> Principal | None:
        record = self.store.verify(token)
        if record is None:
            return None
        return Principal(record.id, record.name, record.role)

    def retry_after_s(self, principal: Principal) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        now = self._monotonic()
        bucket = self._buckets.get(principal.token_id)
        if bucket is None:
            bucket = self._buckets[principal.token_id] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s if self.rate_per_s > 0 else math.inf


def _json(status: int, error: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"status": status, "body": orjson.dumps({"error": error}), "headers": headers or {}}


class AuthMiddleware:
    """Refuses requests without an active token (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        public_paths: Collection[str],
        public_prefixes: Collection[str] = (),
        self_authenticating: Collection[str] = (),
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)
        self.self_authenticating = frozenset(self_authenticating)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self.public_paths or path.startswith(self.public_prefixes):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and path in self.self_authenticating:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            principal = self.authenticator.authenticate(headers.get("authorization"))
        except TokenStoreError as exc:
            log.error("tokens cannot be checked: %s", exc)  # noqa: TRY400 -- says it all
            await self._refuse(scope, receive, send, _json(503, f"tokens cannot be checked: {exc}"))
            return
        if principal is None:
            await self._refuse(
                scope,
                receive,
                send,
                _json(
                    401,
                    "this needs a token: send 'Authorization: Bearer <token>'; an admin makes "
                    "one with 'gridpilot token create --role viewer|operator|admin'",
                    {"www-authenticate": 'Bearer realm="gridpilot"'},
                ),
            )
            return
        wait = self.authenticator.retry_after_s(principal)
        if wait > 0:
            await self._refuse(
                scope,
                receive,
                send,
                _json(
                    429,
                    f"too many requests for token {principal.token_id}; retry after "
                    f"{math.ceil(wait)} s (api.rate_limit_per_minute sets the rate)",
                    {"retry-after": str(math.ceil(wait))},
                ),
            )
            return
        scope.setdefault("state", {})[_SCOPE_KEY] = principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, answer: dict[str, Any]) -> None:
        if scope["type"] == "websocket":
            # Close before accepting: the client sees HTTP 403 on the handshake.
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in answer["headers"].items()]
        await send({"type": "http.response.start", "status": answer["status"], "headers": headers})
        await send({"type": "http.response.body", "body": answer["body"]})


def current_principal(request: Request) -> Principal:
    """The principal the middleware put in the request (a route behind it always has one)."""
    principal = request.scope.get("state", {}).get(_SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise TypeError("AuthMiddleware is not installed in front of this route")
    return principal


def principal_of_scope(scope: Scope) -> Principal | None:
    principal = scope.get("state", {}).get(_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


def require(role: Role) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the principal, if its role allows ``role``; else 403."""

    def dependency(request: Request) -> Principal:
        principal = current_principal(request)
        if not principal.role.allows(role):
            raise ForbiddenError(
                f"the role {principal.role} may not do this; it needs {role} or higher",
                {"role": str(principal.role), "needed": str(role)},
            )
        return principal

    return dependency
