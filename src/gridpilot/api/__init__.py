"""The HTTP API (first increment: read-only REST, OpenAPI, status page).

``create_app`` (``app``) builds the ASGI application from a configuration, a ``Storage`` and
a ``DeviceStateCache`` (``state_cache``); ``ApiService`` (``service``) runs it with uvicorn
in-process, loopback only until authentication exists. Errors: ``errors``.
"""

from gridpilot.api.app import create_app
from gridpilot.api.errors import ApiError, ApiStartError, InsecureBindError
from gridpilot.api.service import ApiService
from gridpilot.api.state_cache import DeviceStateCache, EffectiveStatus

__all__ = [
    "ApiError",
    "ApiService",
    "ApiStartError",
    "DeviceStateCache",
    "EffectiveStatus",
    "InsecureBindError",
    "create_app",
]
