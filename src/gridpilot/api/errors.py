"""Errors of the API part.

    ApiError                       root: anything the API part raises on purpose
    ├── InsecureBindError          refused to listen beyond loopback without authentication
    ├── ApiStartError              the HTTP server could not start (no port, server failed)
    └── RequestError               a request cannot be answered; rendered as JSON
        │                          ``{"error": "...", "detail": ...}`` with ``status``
        ├── NotFoundError          404: unknown device or point
        └── InvalidParameterError  422: a query parameter is malformed or asks too much

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


class InvalidParameterError(RequestError, ValueError):
    """A query parameter the API cannot use; ``parameter`` names it."""

    status = 422

    def __init__(self, parameter: str, value: object, error: str) -> None:
        super().__init__(error, {"parameter": parameter, "value": value})
        self.parameter = parameter
