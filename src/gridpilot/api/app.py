"""The HTTP application: REST under ``/api/v1``, the dashboard at ``/``.

    GET /healthz                                        liveness (no token)
    GET /metrics                                        Prometheus text format (``api.metrics``)
    GET /api/v1/site                                    id, name, timezone, device count, gateway
    GET /api/v1/devices                                 devices, points, health
    GET /api/v1/devices/{device}                        one device
    GET /api/v1/control                                 the control engine's retained state
    GET /api/v1/ieee2030_5                              the 2030.5 client's retained status
    GET /api/v1/latest                                  latest value of every stored point
    GET /api/v1/devices/{device}/latest                 ... of one device
    GET /api/v1/devices/{device}/points/{point}/history ?start=&end=&every=&agg=
    GET /api/v1/devices/{device}/gaps                   ?since=&until=&limit= (stored data)
    GET /api/v1/openapi.json                            the OpenAPI document
    GET /api/v1/stream                                  live telemetry (Server-Sent Events)
    POST/GET /graphql, WebSocket /graphql               GraphQL: queries, live subscriptions
    GET /, /static/...                                  the dashboard (signs in with a token)
    ... and the writes, events, audit and tokens of ``gridpilot.api.actions``.

Every error is JSON ``{"error": "...", "detail": ...}``. Every route but the public ones
(``PUBLIC_PATHS``) needs a bearer token (``gridpilot.api.auth``); reads need ``viewer``.
A loopback-bound API also answers only requests addressed to a loopback name (or one in
``api.allowed_hosts``): a web page elsewhere cannot reach it through DNS rebinding.
``create_app`` builds everything from its arguments; there is no module state.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gridpilot import __version__
from gridpilot.api.actions import actions_router
from gridpilot.api.audit import AuditLog
from gridpilot.api.auth import Authenticator, AuthMiddleware, principal_of_scope, require
from gridpilot.api.errors import InvalidParameterError, NotFoundError, RequestError
from gridpilot.api.graphql import graphql_router
from gridpilot.api.history import (
    COUNT_BUCKET_MS,
    HistoryResult,
    HistoryWindow,
    count_window,
    parse_history_params,
    raw_rows_at_least,
    suggest_every,
    too_many_raw_rows,
)
from gridpilot.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gridpilot.api.metrics import ApiMetrics, LocalServices, RequestMetricsMiddleware
from gridpilot.api.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from gridpilot.api.schemas import (
    ControlOut,
    CsipStatusOut,
    DeviceOut,
    DevicesOut,
    ErrorOut,
    FlowOut,
    GapOut,
    GapsOut,
    GatewayOut,
    HealthzOut,
    HistoryColumnsOut,
    HistoryOut,
    LatestOut,
    LatestValueOut,
    PointOut,
    SiteOut,
)
from gridpilot.api.site_bus import EventBuffer, RetainedMessage, SiteBus, SiteEvents
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.api.stream import StreamHub, stream_router
from gridpilot.api.tokens import Role, TokenStore
from gridpilot.config.models import DeviceConfig, GridPilotConfig
from gridpilot.ieee2030_5.status_view import (
    StatusMessageError,
    not_published_view,
    parse_status,
    status_view,
)
from gridpilot.model import SeriesKey, Topic, now_ms, to_rfc3339, unit_of
from gridpilot.net import is_loopback_host
from gridpilot.ops.gaps import WindowTooLargeError, device_gaps
from gridpilot.storage.base import Agg, Storage, StorageError, StorageUnavailable

__all__ = ["API_PREFIX", "create_app"]

log = logging.getLogger("gridpilot.api")

API_PREFIX = "/api/v1"
_MS = timedelta(milliseconds=1)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or an unknown, expired or revoked one."},
    429: {"model": ErrorOut, "description": "Too many requests for this token; see Retry-After."},
    404: {"model": ErrorOut, "description": "Unknown device or point."},
    422: {"model": ErrorOut, "description": "A parameter is malformed or asks too much."},
    503: {"model": ErrorOut, "description": "Storage is unavailable; retry later."},
}


def create_app(
    config: GridPilotConfig,
    storage: Storage,
    device_states: DeviceStateCache,
    *,
    tokens: TokenStore,
    audit: AuditLog,
    events: EventBuffer | None = None,
    site_bus: SiteBus | None = None,
    clock: Callable[[], int] = now_ms,
    allowed_hosts: Collection[str] | None = None,
    check_host: bool = True,
    tls: bool = False,
    local: LocalServices | None = None,
) -> FastAPI:
    """The API of one site over ``storage`` and the device states in ``device_states``.

    ``tokens`` says who may ask what; ``audit`` records what they did. ``site_bus`` sends
    commands and controller requests (without it those answer 503); ``events`` holds the
    events it follows on the bus (shown while storage holds none). ``clock`` gives "now"
    in epoch ms. ``check_host`` refuses a ``Host`` that is neither loopback nor in
    ``allowed_hosts`` (DNS rebinding); ``tls`` adds HSTS. ``local`` names the services
    running in this process, whose live figures ``/metrics`` reads (the others' come from
    their states on the bus).
    """
    api_config = config.api
    app = FastAPI(
        title="GridPilot API",
        version=__version__,
        summary="A GridPilot site: devices, health, values, history, commands, control.",
        description="Every route but /healthz needs `Authorization: Bearer <token>`; "
        "`gridpilot token create --role viewer|operator|admin` makes one.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        # No Swagger UI: it loads from a CDN (the site may be offline) and could not send the
        # token the document needs; the dashboard's "API" view lists the routes instead.
        docs_url=None,
        redoc_url=None,
    )
    authenticator = Authenticator(
        tokens,
        rate_per_minute=api_config.rate_limit_per_minute,
        burst=api_config.rate_limit_burst,
    )
    # Starlette runs the last added middleware first: headers, host, CORS, body, auth.
    app.add_middleware(
        AuthMiddleware,
        authenticator=authenticator,
        public_paths=PUBLIC_PATHS,
        public_prefixes=("/static/",),
        self_authenticating=SELF_AUTHENTICATING_WS,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=api_config.max_body_bytes)
    if api_config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(api_config.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    if check_host:
        allowed = {*(allowed_hosts or ()), *api_config.allowed_hosts}
        app.add_middleware(_LoopbackHostOnly, allowed=frozenset(allowed))
    app.add_middleware(SecurityHeadersMiddleware, hsts=tls)
    # Outermost, so that answers given before routing (401, 429, 413) are timed too.
    metrics = ApiMetrics(
        config,
        device_states,
        local=local,
        api_bus=lambda: None if site_bus is None else site_bus.bus,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.state.audit = audit
    _install_error_handlers(app)
    page = _StatusPage.load()

    @app.get("/healthz", response_model=HealthzOut, tags=["service"])
    async def healthz() -> HealthzOut:
        """Liveness: the process answers HTTP. The only route without a token."""
        return HealthzOut()

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        dependencies=[Depends(require(Role.VIEWER))],
        include_in_schema=False,  # for Prometheus, not an API client; documented below
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text format 0.0.4: ingest, devices, control, bus queues, API latency.

        Needs a token like every route; Prometheus sends one with
        `authorization: {credentials_file: ...}` in its scrape config (see
        `gridpilot.api.metrics`)."""
        # Collected on the event loop: the stats objects are only touched from there.
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def status_page() -> Response:
        return page.response()

    static_dir = resources.files("gridpilot.api").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    view = _SiteView(
        config,
        storage,
        device_states,
        clock,
        utility_status=None if site_bus is None else site_bus.utility_status,
    )
    site_events = SiteEvents(config.site.id, storage, events or EventBuffer())
    # Live telemetry (SSE and GraphQL subscriptions); app.state.streams.close() ends them all,
    # and it ends a stream whose token is revoked while it runs.
    app.state.streams = streams = StreamHub(
        site_bus, max_clients=api_config.stream_clients, token_check=tokens.refusal
    )
    metrics.watch_streams(streams)
    app.include_router(_router(view))
    app.include_router(stream_router(view, streams, api_prefix=API_PREFIX))
    app.include_router(
        graphql_router(
            view, site_events, streams, authenticator, allowed_origins=api_config.cors_origins
        )
    )
    app.include_router(
        actions_router(
            config=config,
            device_states=device_states,
            events=site_events,
            site_bus=site_bus,
            audit=audit,
            tokens=tokens,
            api_prefix=API_PREFIX,
        )
    )
    return app


PUBLIC_PATHS: Final = frozenset({"/healthz", "/", "/favicon.ico"})
"""No token needed: liveness and the dashboard's page (it signs in from there); its files
under ``/static/`` too. Everything else, the OpenAPI document included, needs a token."""
SELF_AUTHENTICATING_WS: Final = frozenset({"/graphql"})
"""WebSockets that take the token inside their protocol (browsers cannot set headers there)."""


def _router(view: _SiteView) -> APIRouter:
    """The ``/api/v1`` routes: thin adapters from HTTP to ``view``."""
    api = APIRouter(
        prefix=API_PREFIX,
        responses=_ERROR_RESPONSES,
        dependencies=[Depends(require(Role.VIEWER))],
    )

    @api.get("/site", response_model=SiteOut, tags=["site"])
    async def get_site() -> SiteOut:
        """The site: identity, time zone, how many devices, and the gateway's health."""
        return view.site()

    @api.get("/devices", response_model=DevicesOut, tags=["devices"])
    async def list_devices() -> DevicesOut:
        """Every configured device with its points and health."""
        return DevicesOut(devices=[view.device_out(d) for d in view.config.devices])

    @api.get("/devices/{device}", response_model=DeviceOut, tags=["devices"])
    async def get_device(device: str) -> DeviceOut:
        """One device with its points and health."""
        return view.device_out(view.device(device))

    @api.get("/control", response_model=ControlOut, tags=["control"])
    async def control() -> ControlOut:
        """The control engine: controllers, targets and who set them, overrides, fail-safes.
        404 when the site has no ``control`` section."""
        return view.control()

    @api.get("/ieee2030_5", response_model=CsipStatusOut, tags=["control"])
    async def ieee2030_5() -> CsipStatusOut:
        """The site's IEEE 2030.5 (CSIP) client as it last reported itself: LFDI/SFDI,
        registration, programs, active and scheduled utility events, the last responses
        and mirror posts. `published` is false, with the reason in `message`, when no
        client has published (none configured, or none running)."""
        return view.ieee2030_5()

    # The hot reads answer with the model's own JSON: FastAPI would validate the model it
    # was just given against itself and encode it again (a third of a request's CPU).
    @api.get("/latest", response_model=LatestOut, response_class=Response, tags=["values"])
    async def latest() -> Response:
        """The most recent stored value of every point of the site, with its age."""
        return _json(await view.latest(None))

    @api.get(
        "/devices/{device}/latest",
        response_model=LatestOut,
        response_class=Response,
        tags=["values"],
    )
    async def device_latest(device: str) -> Response:
        """The most recent stored value of every point of one device, with its age."""
        return _json(await view.latest(view.device(device).id))

    @api.get(
        "/devices/{device}/points/{point}/history",
        response_model=HistoryOut | HistoryColumnsOut,
        response_class=Response,
        tags=["values"],
    )
    async def history(
        device: str,
        point: str,
        *,
        start: Annotated[
            str | None,
            Query(description="RFC 3339, epoch ms, `now` or relative (`-2h`). Default: end - 1h."),
        ] = None,
        end: Annotated[str | None, Query(description="Same forms as start. Default: now.")] = None,
        every: Annotated[
            str | None,
            Query(description="Aggregate into epoch-aligned buckets of this length (`15m`)."),
        ] = None,
        agg: Annotated[
            Agg | None, Query(description="Aggregate of each bucket (needs every). Default: mean.")
        ] = None,
        format: Annotated[
            Literal["rows", "columns"],
            Query(description="`rows`: a list of {ts, value}; `columns`: ts_ms and value arrays."),
        ] = "rows",
    ) -> Response:
        """Raw samples in [start, end), or aggregates per bucket when `every` is given.

        At most `api.history_max_rows` rows (default 100,000: a day of 1-second samples, a
        year of 15-minute buckets): more is refused (422) with the `every` to use instead.
        """
        result = await view.history(
            device, point, start=start, end=end, every=every, agg=agg, columns=format == "columns"
        )
        return Response(result.to_json(), media_type="application/json")

    @api.get("/devices/{device}/gaps", response_model=GapsOut, tags=["values"])
    async def gaps(
        device: str,
        *,
        since: Annotated[
            str | None,
            Query(description="RFC 3339, epoch ms, `now` or relative (`-2h`). Default: -1h."),
        ] = None,
        until: Annotated[str | None, Query(description="Same forms. Default: now.")] = None,
        limit: Annotated[
            int, Query(ge=1, le=10_000, description="Gaps listed at most (oldest first).")
        ] = 1000,
    ) -> GapsOut:
        """Stretches in [since, until] without stored samples of the device: more than 2.5
        expected intervals (its fastest poll class; for an MQTT device its `poll_interval`, or
        its usual spacing) between neighbouring samples, or from the last one to `until`.
        At most `api.history_max_rows` intervals per request (422 otherwise)."""
        return await view.gaps(device, since=since, until=until, limit=limit)

    return api


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def _json(model: BaseModel) -> Response:
    return Response(model.__pydantic_serializer__.to_json(model), media_type="application/json")


class _SiteView:
    """What the routes show, built from the configuration, storage and device states."""

    def __init__(
        self,
        config: GridPilotConfig,
        storage: Storage,
        device_states: DeviceStateCache,
        clock: Callable[[], int],
        *,
        utility_status: RetainedMessage | None = None,
    ) -> None:
        self.config = config
        self.utility_status = utility_status
        self.storage = storage
        self.device_states = device_states
        self.clock = clock
        self.site_id = config.site.id
        self.devices = {d.id: d for d in config.devices}
        self.max_rows = config.api.history_max_rows
        raw_kept = config.storage.retention.raw
        self.raw_retention_ms = None if raw_kept is None else raw_kept // _MS

    def device(self, device_id: str) -> DeviceConfig:
        """The configured device, or 404."""
        device = self.devices.get(device_id)
        if device is None:
            raise NotFoundError(
                f"no device {device_id!r} at site {self.site_id!r}; "
                f"GET {API_PREFIX}/devices lists them",
                {"device": device_id, "known": sorted(self.devices)},
            )
        return device

    def site(self) -> SiteOut:
        config = self.config
        return SiteOut(
            id=self.site_id,
            name=config.site.name,
            timezone=config.site.timezone,
            device_count=len(self.devices),
            gateway=GatewayOut(
                id=config.gateway.id,
                status=self.device_states.status(config.gateway.id),
                health=self._health(config.gateway.id),
            ),
        )

    def device_out(self, device: DeviceConfig) -> DeviceOut:
        return DeviceOut(
            id=device.id,
            name=device.name,
            protocol=str(device.protocol),
            poll_interval_s=device.poll_interval.total_seconds(),
            flow=None
            if device.flow is None
            else FlowOut(
                role=device.flow.role.value,
                power_point=device.flow.power_point or "",
                power_sign=device.flow.power_sign,
                soc_point=device.flow.soc_point,
            ),
            points=[
                PointOut(
                    name=p.point,
                    unit=unit_of(p.point),
                    writable=p.writable,
                    valid_range=p.valid_range,
                )
                for p in device.points
            ],
            status=self.device_states.status(device.id),
            health=self._health(device.id),
        )

    def control(self) -> ControlOut:
        control = self.config.control
        if control is None:
            raise NotFoundError(
                f"site {self.site_id!r} has no control section; add one to run the controller"
            )
        return ControlOut(
            id=control.id,
            status=self.device_states.status(control.id),
            state=self._health(control.id),
        )

    def ieee2030_5(self) -> CsipStatusOut:
        topic = str(Topic.ieee2030_5_status(self.site_id))
        retained = self.utility_status
        payload = None if retained is None else retained.payload
        if payload is None:
            view = not_published_view(
                self.site_id, topic, configured=self.config.ieee2030_5 is not None
            )
            if retained is None:
                view["message"] = "this API process follows no broker, so it cannot show it"
            return CsipStatusOut(site=self.site_id, published=False, message=view["message"],
                                 status=None)  # fmt: skip
        try:
            doc = parse_status(payload)
        except StatusMessageError as exc:
            return CsipStatusOut(
                site=self.site_id,
                published=False,
                message=f"the retained message on {topic} is not a 2030.5 status: {exc}",
                status=None,
            )
        shown = status_view(doc, site=self.site_id, now=_utc(self.clock()))
        for key in ("site", "published", "message"):
            del shown[key]
        return CsipStatusOut(site=self.site_id, published=True, message=None, status=shown)

    def _health(self, device_id: str) -> dict[str, Any] | None:
        state = self.device_states.get(device_id)
        return None if state is None else dict(state)

    async def latest(self, device: str | None) -> LatestOut:
        now = self.clock()
        values = await self.storage.latest(self.site_id, device)
        return LatestOut(
            site=self.site_id,
            now=to_rfc3339(now),
            values=[
                LatestValueOut(
                    device=v.series.device,
                    point=v.series.point,
                    unit=unit_of(v.series.point),
                    value=v.value,
                    ts=to_rfc3339(v.ts_ms),
                    age_s=(now - v.ts_ms) / 1000,
                )
                for v in values
            ],
        )

    async def history(
        self,
        device: str,
        point: str,
        *,
        start: str | None,
        end: str | None,
        every: str | None,
        agg: Agg | None,
        columns: bool = False,
    ) -> HistoryResult:
        config_device = self.device(device)
        series = SeriesKey(self.site_id, device, point)
        if config_device.point(point) is None and not (
            self.config.ingest.accept_unknown_points
            and series in await self.storage.series(self.site_id)
        ):
            raise NotFoundError(
                f"device {device!r} has no point {point!r}; "
                f"GET {API_PREFIX}/devices/{device} lists its points",
                {
                    "device": device,
                    "point": point,
                    "known": [p.point for p in config_device.points],
                },
            )
        now = self.clock()
        window = parse_history_params(start, end, every, agg, now, max_rows=self.max_rows)
        result = HistoryResult(device, point, unit_of(point), window)
        if window.every_ms is None or window.agg is None:
            await self._check_raw_rows(series, window, now)
        span = (series, window.start_ms, window.end_ms, window.every_ms, window.agg or Agg.MEAN)
        if columns:
            result = replace(result, columns=await self.storage.history_json(*span))
        else:
            result = replace(result, rows=await self.storage.history(*span))
        if window.every_ms is None and len(result) > self.max_rows:
            hint = suggest_every(window.start_ms, window.end_ms, self.max_rows)
            raise too_many_raw_rows(len(result), hint, exact=True, max_rows=self.max_rows)
        return result

    async def gaps(
        self, device: str, *, since: str | None, until: str | None, limit: int
    ) -> GapsOut:
        config_device = self.device(device)
        now = self.clock()
        window = parse_history_params(since, until, None, None, now, max_rows=self.max_rows)
        until_ms = min(window.end_ms, now)  # the future has no gaps yet
        latency = int(self.config.storage.flush_interval.total_seconds() * 1000) + 2000
        try:
            found = await device_gaps(
                self.storage, self.config, config_device,
                since_ms=window.start_ms, until_ms=until_ms,
                latency_ms=latency, limit=limit, max_samples=self.max_rows,
            )  # fmt: skip
        except WindowTooLargeError as exc:
            raise InvalidParameterError("since", since, str(exc)) from None
        summary = found.summary
        return GapsOut(
            device=device,
            point=found.point,
            since=to_rfc3339(window.start_ms if summary is None else summary.window_start_ms),
            until=to_rfc3339(until_ms),
            interval_s=None if found.interval_ms is None else found.interval_ms / 1000,
            interval_source=found.interval_source,
            samples=0 if summary is None else summary.samples,
            expected_samples=0 if summary is None else summary.expected,
            gap_count=found.total_gaps,
            missing_samples=found.missing,
            truncated=found.truncated,
            gaps=[
                GapOut(
                    start=to_rfc3339(g.start_ms),
                    end=to_rfc3339(g.end_ms),
                    duration_s=(g.end_ms - g.start_ms) / 1000,
                    missing_samples=g.missing,
                    ongoing=g.ongoing,
                )
                for g in found.gaps
            ],
        )

    async def _check_raw_rows(self, series: SeriesKey, window: HistoryWindow, now: int) -> None:
        """Refuse (422) a raw request of more than ``max_rows`` samples before reading them:
        see ``gridpilot.api.history`` for how that is known from the hourly counts."""
        start, end = window.start_ms, window.end_ms
        counts = await self.storage.history(
            series, *count_window(start, end), COUNT_BUCKET_MS, Agg.COUNT
        )
        kept_since = None if self.raw_retention_ms is None else now - self.raw_retention_ms
        at_least = raw_rows_at_least(counts, start, end, kept_since_ms=kept_since)
        if at_least > self.max_rows:
            hint = suggest_every(start, end, self.max_rows)
            raise too_many_raw_rows(at_least, hint, exact=False, max_rows=self.max_rows)


# ---------------------------------------------------------------------------- errors


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    body = ErrorOut(error=error, detail=jsonable_encoder(detail)).model_dump(mode="json")
    return JSONResponse(body, status_code=status)


async def _on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)  # noqa: S101 -- registered for RequestError only
    if exc.status == 403 and request.method not in ("GET", "HEAD"):
        # A write refused for the role never reaches its route (which audits what it
        # does): record the attempt here, it is what an investigator looks for.
        principal = principal_of_scope(request.scope)
        audit = getattr(request.app.state, "audit", None)
        if principal is not None and isinstance(audit, AuditLog):
            await audit.record(
                principal,
                f"{request.method} {request.url.path}",
                request.url.path,
                {},
                ok=False,
                result={"error": exc.error},
            )
    return _error(exc.status, exc.error, exc.detail)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 -- registered for it only
    if exc.status_code == 404:
        return _error(
            404,
            f"no such resource: {request.url.path}; see {API_PREFIX}/docs for the routes",
            {"path": request.url.path},
        )
    if exc.status_code == 400:
        # FastAPI's answer to a body that is not UTF-8 JSON; every other body problem is a
        # 422, and so is this one.
        return _error(
            422,
            "the request body is not JSON (or not UTF-8); send Content-Type: application/json",
            {"path": request.url.path},
        )
    error = str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # FastAPI makes one route per method and nests included routers: the Allow it
        # would send is empty or partial, so take the methods from the OpenAPI document.
        allowed = _methods_for(request)
        headers["Allow"] = ", ".join(allowed)
        error = (
            f"{request.method} is not allowed on {request.url.path} (allowed: {headers['Allow']})"
        )
    response = _error(exc.status_code, error, {"path": request.url.path})
    response.headers.update(headers)
    return response


def _methods_for(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for the request's path (FastAPI nests
    included routers, so the routes themselves do not say it simply)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        parts = re.split(r"\{[^}/]+\}", template)
        pattern = "[^/]+".join(re.escape(part) for part in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 -- registered for it only
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "input": e.get("input")}
        for e in exc.errors()
    ]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"][1:]) or "request"
    return _error(422, f"invalid {where}: {first['msg']}", problems)


async def _on_storage_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StorageUnavailable):
        log.warning("storage unavailable while serving %s: %s", request.url.path, exc)
        return _error(503, "storage is unavailable; retry later")
    log.error("storage failed while serving %s", request.url.path, exc_info=exc)
    return _error(500, "storage failed; the server log has the details")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs the exception (it re-raises it after sending this response).
    return _error(500, "internal error; the server log has the details")


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _on_request_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StorageError, _on_storage_error)
    app.add_exception_handler(Exception, _on_unexpected)


# ---------------------------------------------------------------------------- Host check


def _host_name(header: str) -> str:
    """``127.0.0.1:8080`` -> ``127.0.0.1``; ``[::1]:8080`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _LoopbackHostOnly:
    """Refuses requests whose ``Host`` is not a loopback name (or one of ``allowed``).

    Without authentication a browser page from anywhere could otherwise read the API by
    rebinding its own DNS name to 127.0.0.1; the browser then still sends that name.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = frozenset(name.lower() for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            name = _host_name(host)
            if not (is_loopback_host(name) or name in self.allowed):
                response = _error(
                    400,
                    "this API answers only requests to a loopback address "
                    "(http://127.0.0.1:PORT or http://localhost:PORT)",
                    {"host": host},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------- status page

_INLINE_RE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


class _StatusPage:
    """``static/index.html`` (the dashboard), served with a Content-Security-Policy that
    allows scripts and styles from this origin (plus any inline one the page holds, by hash)
    and fetches to this origin, nothing else."""

    def __init__(self, html: str) -> None:
        self.html = html
        sources: dict[str, list[str]] = {"script": [], "style": []}
        for kind, body in _INLINE_RE.findall(html):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            sources[kind].append(f"'sha256-{digest}'")
        script_src = " ".join(["'self'", *sources["script"]])
        style_src = " ".join(["'self'", *sources["style"]])
        self.csp = (
            "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
            f"script-src {script_src}; style-src {style_src}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )

    @classmethod
    def load(cls) -> _StatusPage:
        html = resources.files("gridpilot.api").joinpath("static/index.html").read_text("utf-8")
        return cls(html)

    def response(self) -> HTMLResponse:
        return HTMLResponse(
            self.html,
            headers={
                "Content-Security-Policy": self.csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )
