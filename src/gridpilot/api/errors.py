"""Errors of the API part.

    ApiError                       root: anything the API part raises on purpose
    ├── InsecureBindError          refused to listen beyond loopback without authentication
    ├── ApiStartError              the HTTP server could not start (no port, server failed)
    └── RequestError               a request cannot be answered; rendered as JSON
        │                          ``{"error": "...", "detail": ...}`` with ``status``
        ├── ForbiddenError         403: the token's role may not do this
        ├── NotFoundError          404: unknown device or point
        ├── ConflictError          409: the point is driven by someone else
        ├── UnprocessableError     422: the request is well-formed but cannot be done
        │   └── InvalidParameterError  a query parameter is malformed or asks too much
        ├── UpstreamFailedError    502: the device or the controller could not do it
        ├── UnavailableError       503: a part it needs (broker, token file) is unavailable
        └── UpstreamTimeoutError   504: no answer from the gateway or controller in time

``RequestError`` never leaves the HTTP app: its handler turns it into the response.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Root of the API errors."""


class InsecureBindError(ApiError):
    """``api.host`` is not a loopback address; this release has no authentication."""


class ApiStartError(ApiError):
    """The HTTP server did not start."""


class RequestError(ApiError):
    """A request that cannot be answered: ``status`` with a message saying what to do."""

    status = 500

    def __init__(self, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


class NotFoundError(RequestError):
    status = 404


class ForbiddenError(RequestError):
    status = 403


class ConflictError(RequestError):
    status = 409


class UnprocessableError(RequestError):
    status = 422


class UpstreamFailedError(RequestError):
    status = 502


class UnavailableError(RequestError):
    status = 503


class UpstreamTimeoutError(RequestError):
    status = 504


class InvalidParameterError(UnprocessableError, ValueError):
    """A query parameter the API cannot use; ``parameter`` names it."""

    status = 422

    def __init__(self, parameter: str, value: object, error: str) -> None:
        super().__init__(error, {"parameter": parameter, "value": value})
        self.parameter = parameter
