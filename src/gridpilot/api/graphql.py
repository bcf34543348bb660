"""GraphQL at ``/graphql``: the site's reads, and live telemetry as a subscription.

    query         site, devices, device(id), latest(device), history(device, point, start,
                  end, every, agg), control, ieee2030_5, events(limit, level), me
    subscription  telemetry(device) -> {device, ts, values: [{point, value}], dropped}

The resolvers ask the same view as the REST routes (``SiteReads``: ``_SiteView`` in
``gridpilot.api.app``) and copy its response models into GraphQL types; there is no second
copy of a query. Errors carry the REST message (``NotFoundError`` and friends); anything
unexpected is masked and logged. Live telemetry comes from the ``StreamHub`` that also feeds
``/api/v1/stream``: the same bounded queues and the same ``api.stream_clients`` limit.

Limits, checked before anything runs; an operation over one is refused with an error that
names it: depth ``MAX_DEPTH``, ``MAX_TOKENS`` tokens, ``MAX_ALIASES`` aliases and a cost of
``MAX_COST`` (``query_cost``: each field 1, ``latest`` 20, ``history`` 100, what is under a
list counted ``LIST_FACTOR`` times; about seven histories with their values per operation).
Introspection is left out of depth and cost (tools need it); graphql-core's own rule refuses
introspection nested deeper than the standard query.

Who may ask: over HTTP the bearer header, which ``AuthMiddleware`` checks; over a WebSocket
(``graphql-transport-ws`` only) the token in the ``connection_init`` payload,
``{"authorization": "Bearer <token>"}`` or ``{"token": "<token>"}`` -- without a valid one the
socket is closed with 4403, and a ``subscribe`` before ``connection_init`` with 4401. Every
role may read. GraphiQL is off: it runs inline scripts the dashboard's CSP forbids.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from datetime import timedelta
from typing import Any, Final, Protocol

import strawberry
from fastapi.requests import HTTPConnection
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    get_named_type,
    is_list_type,
)
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.fastapi import BaseContext, GraphQLRouter
from strawberry.scalars import JSON
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionContext
from strawberry.types.unset import UnsetType

from gridpilot.api.auth import Authenticator, Principal, principal_of_scope
from gridpilot.api.errors import (
    ForbiddenError,
    InvalidParameterError,
    RequestError,
    UnavailableError,
)
from gridpilot.api.history import HistoryResult
from gridpilot.api.schemas import (
    ControlOut,
    CsipStatusOut,
    DeviceOut,
    EventOut,
    GatewayOut,
    LatestOut,
    SiteOut,
)
from gridpilot.api.site_bus import SiteEvents
from gridpilot.api.stream import StreamHub, TelemetryFrame
from gridpilot.api.tokens import Role, TokenStoreError
from gridpilot.config.models import DeviceConfig, GridPilotConfig
from gridpilot.model import to_rfc3339
from gridpilot.storage.base import Agg, StorageUnavailable

__all__ = [
    "GRAPHQL_PATH",
    "LIST_FACTOR",
    "MAX_ALIASES",
    "MAX_COST",
    "MAX_DEPTH",
    "MAX_TOKENS",
    "GraphQLContext",
    "SiteReads",
    "build_schema",
    "graphql_router",
    "query_cost",
]

log = logging.getLogger("gridpilot.api")

GRAPHQL_PATH: Final = "/graphql"
MAX_DEPTH: Final = 8
MAX_TOKENS: Final = 2000
MAX_ALIASES: Final = 15
MAX_COST: Final = 1000
LIST_FACTOR: Final = 10
"""How many items a list is assumed to hold when its selection is costed."""
FIELD_COST: Final[Mapping[str, int]] = {"history": 100, "latest": 20}
"""Query fields that read storage cost more than the rest (1)."""
_MAX_EVENTS: Final = 1000


class SiteReads(Protocol):
    """What GraphQL reads through: ``_SiteView`` of ``gridpilot.api.app``, shared with REST."""

    config: GridPilotConfig

    def device(self, device_id: str) -> DeviceConfig: ...

    def site(self) -> SiteOut: ...

    def device_out(self, device: DeviceConfig) -> DeviceOut: ...

    def control(self) -> ControlOut: ...

    def ieee2030_5(self) -> CsipStatusOut: ...

    async def latest(self, device: str | None) -> LatestOut: ...

    async def history(
        self,
        device: str,
        point: str,
        *,
        start: str | None,
        end: str | None,
        every: str | None,
        agg: Agg | None,
    ) -> HistoryResult: ...


# ---------------------------------------------------------------------------- context


class GraphQLContext(BaseContext):
    """Per request (HTTP) or per connection (WebSocket): the parts and who asks."""

    def __init__(
        self,
        view: SiteReads,
        events: SiteEvents,
        streams: StreamHub,
        principal: Principal | None,
    ) -> None:
        super().__init__()
        self.view = view
        self.events = events
        self.streams = streams
        self.principal = principal

    def reader(self) -> Principal:
        """Who asks, if they may read (every role may); else ``ForbiddenError``."""
        principal = self.principal
        if principal is None:
            raise ForbiddenError("no token: send it in connection_init as {'token': '...'}")
        if not principal.role.allows(Role.VIEWER):
            raise ForbiddenError(f"the role {principal.role} may not read")
        return principal


Info = strawberry.Info[GraphQLContext, None]


# ---------------------------------------------------------------------------- types


@strawberry.type(description="The gateway that polls the devices.")
class Gateway:
    id: str
    status: str = strawberry.field(description="online, offline or unknown.")
    health: JSON | None = strawberry.field(
        description="The gateway's retained state as published; null when none was seen."
    )

    @classmethod
    def of(cls, out: GatewayOut) -> Gateway:
        return cls(id=out.id, status=out.status.value, health=_json(out.health))


@strawberry.type(description="The site: identity, time zone, devices, gateway.")
class Site:
    id: str
    name: str
    timezone: str
    device_count: int
    gateway: Gateway

    @classmethod
    def of(cls, out: SiteOut) -> Site:
        return cls(
            id=out.id,
            name=out.name,
            timezone=out.timezone,
            device_count=out.device_count,
            gateway=Gateway.of(out.gateway),
        )


@strawberry.type(description="A point of a device, with its unit.")
class Point:
    name: str
    unit: str | None = strawberry.field(description="From the name's suffix: _w -> W.")
    writable: bool
    valid_range: list[float] | None = strawberry.field(description="[min, max] in the unit.")


@strawberry.type(description="A device's part in the site's power flow.")
class Flow:
    role: str = strawberry.field(description="grid, pv or battery.")
    power_point: str = strawberry.field(description="The point giving its active power, W.")
    power_sign: int = strawberry.field(
        description="1: positive for import (grid), production (pv) or discharge (battery); "
        "-1: the device counts the other way."
    )
    soc_point: str | None = strawberry.field(description="battery: its state of charge, %.")


@strawberry.type(description="A configured device with its points and health.")
class Device:
    id: str
    name: str
    protocol: str
    poll_interval_s: float
    flow: Flow | None = strawberry.field(
        description="Its part in the site's power flow; null when the site file gives none."
    )
    points: list[Point]
    status: str = strawberry.field(description="online, offline or unknown.")
    health: JSON | None = strawberry.field(
        description="The device's retained state as the gateway publishes it (status, "
        "since, last_error, counters...); null when none was seen."
    )

    @classmethod
    def of(cls, out: DeviceOut) -> Device:
        return cls(
            id=out.id,
            name=out.name,
            protocol=out.protocol,
            poll_interval_s=out.poll_interval_s,
            flow=None if out.flow is None else Flow(**out.flow.model_dump()),
            points=[
                Point(
                    name=p.name,
                    unit=p.unit,
                    writable=p.writable,
                    valid_range=None if p.valid_range is None else list(p.valid_range),
                )
                for p in out.points
            ],
            status=out.status.value,
            health=_json(out.health),
        )


@strawberry.type(description="The most recent stored value of a point.")
class LatestValue:
    device: str
    point: str
    unit: str | None
    value: float
    ts: str
    age_s: float = strawberry.field(description="Seconds between ts and the answer.")


@strawberry.type(description="The most recent stored values.")
class Latest:
    site: str
    now: str
    values: list[LatestValue]

    @classmethod
    def of(cls, out: LatestOut) -> Latest:
        return cls(
            site=out.site,
            now=out.now,
            values=[
                LatestValue(
                    device=v.device,
                    point=v.point,
                    unit=v.unit,
                    value=v.value,
                    ts=v.ts,
                    age_s=v.age_s,
                )
                for v in out.values
            ],
        )


@strawberry.type(description="A raw sample, or the aggregate of a bucket starting at ts.")
class HistoryValue:
    ts: str
    value: float


@strawberry.type(description="Raw samples or aggregates of one point over a window.")
class History:
    device: str
    point: str
    unit: str | None
    start: str
    end: str
    every_ms: float | None = strawberry.field(
        description="Bucket length in ms (a Float: a year does not fit GraphQL's Int); "
        "null for raw samples."
    )
    agg: str | None
    values: list[HistoryValue]

    @classmethod
    def of(cls, out: HistoryResult) -> History:
        window = out.window
        return cls(
            device=out.device,
            point=out.point,
            unit=out.unit,
            start=to_rfc3339(window.start_ms),
            end=to_rfc3339(window.end_ms),
            every_ms=None if window.every_ms is None else float(window.every_ms),
            agg=None if window.agg is None else window.agg.value,
            values=[HistoryValue(ts=to_rfc3339(r.ts_ms), value=r.value) for r in out.rows],
        )


@strawberry.type(description="The control engine as it last reported itself.")
class Control:
    id: str
    status: str
    state: JSON | None

    @classmethod
    def of(cls, out: ControlOut) -> Control:
        return cls(id=out.id, status=out.status.value, state=_json(out.state))


@strawberry.type(description="The site's IEEE 2030.5 client as it last reported itself.")
class UtilityClient:
    published: bool
    message: str | None
    status: JSON | None

    @classmethod
    def of(cls, out: CsipStatusOut) -> UtilityClient:
        return cls(published=out.published, message=out.message, status=_json(out.status))


@strawberry.type(description="An alarm or control event.")
class Event:
    ts: str
    level: str = strawberry.field(description="info, warning or alarm.")
    source: str
    message: str

    @classmethod
    def of(cls, out: EventOut) -> Event:
        return cls(ts=out.ts, level=out.level, source=out.source, message=out.message)


@strawberry.type(description="Who the token belongs to.")
class Me:
    name: str
    role: str
    token_id: str


@strawberry.type(description="One value of a telemetry message.")
class PointValue:
    point: str
    value: float


@strawberry.type(name="TelemetryFrame", description="One telemetry message of one device, live.")
class TelemetryFrameType:
    device: str
    ts: str
    values: list[PointValue]
    dropped: int = strawberry.field(
        description="Messages this subscription lost so far because it read too slowly."
    )

    @classmethod
    def of(cls, frame: TelemetryFrame, dropped: int) -> TelemetryFrameType:
        return cls(
            device=frame.device,
            ts=to_rfc3339(frame.ts_ms),
            values=[PointValue(point=p, value=v) for p, v in frame.values.items()],
            dropped=dropped,
        )


def _json(value: dict[str, Any] | None) -> JSON | None:
    return None if value is None else JSON(value)


# ---------------------------------------------------------------------------- resolvers


def _agg(agg: str | None) -> Agg | None:
    if agg is None:
        return None
    try:
        return Agg(agg)
    except ValueError:
        known = ", ".join(a.value for a in Agg)
        raise InvalidParameterError("agg", agg, f"agg must be one of {known}") from None


def _site(info: Info) -> Site:
    info.context.reader()
    return Site.of(info.context.view.site())


def _devices(info: Info) -> list[Device]:
    info.context.reader()
    view = info.context.view
    return [Device.of(view.device_out(d)) for d in view.config.devices]


def _device(info: Info, id: str) -> Device:
    info.context.reader()
    view = info.context.view
    return Device.of(view.device_out(view.device(id)))


def _control(info: Info) -> Control:
    info.context.reader()
    return Control.of(info.context.view.control())


def _ieee2030_5(info: Info) -> UtilityClient:
    info.context.reader()
    return UtilityClient.of(info.context.view.ieee2030_5())


async def _latest(info: Info, device: str | None = None) -> Latest:
    info.context.reader()
    view = info.context.view
    if device is not None:
        view.device(device)
    with _storage_errors():
        return Latest.of(await view.latest(device))


async def _history(  # noqa: PLR0917 -- the REST route's parameters
    info: Info,
    device: str,
    point: str,
    start: str | None = None,
    end: str | None = None,
    every: str | None = None,
    agg: str | None = None,
) -> History:
    info.context.reader()
    with _storage_errors():
        out = await info.context.view.history(
            device, point, start=start, end=end, every=every, agg=_agg(agg)
        )
    return History.of(out)


async def _events(info: Info, limit: int = 100, level: str | None = None) -> list[Event]:
    info.context.reader()
    if not 1 <= limit <= _MAX_EVENTS:
        raise InvalidParameterError("limit", limit, f"limit must be 1 to {_MAX_EVENTS}")
    if level not in (None, "info", "warning", "alarm"):
        raise InvalidParameterError("level", level, "level must be info, warning or alarm")
    with _storage_errors():
        rows, _ = await info.context.events.page(limit, level)
    return [Event.of(EventOut(**e)) for e in rows]


def _me(info: Info) -> Me:
    principal = info.context.reader()
    return Me(name=principal.name, role=str(principal.role), token_id=principal.token_id)


async def _telemetry(
    info: Info, device: str | None = None
) -> AsyncGenerator[TelemetryFrameType, None]:
    context = info.context
    principal = context.reader()
    if device is not None:
        context.view.device(device)
    async with context.streams.subscribe(device, principal.token_id) as subscription:
        async for frame in subscription:
            yield TelemetryFrameType.of(frame, subscription.dropped)
    if subscription.end_reason is not None:
        raise ForbiddenError(f"the stream ended: {subscription.end_reason}")


@strawberry.type
class Query:
    site = strawberry.field(resolver=_site, description="The site: identity, devices, gateway.")
    devices = strawberry.field(
        resolver=_devices, description="Every configured device with its points and health."
    )
    device = strawberry.field(resolver=_device, description="One device, points and health.")
    control = strawberry.field(
        resolver=_control, description="The control engine (an error when the site has none)."
    )
    ieee2030_5 = strawberry.field(
        resolver=_ieee2030_5,
        name="ieee2030_5",
        description="The IEEE 2030.5 client: LFDI/SFDI, registration, utility events, the "
        "last responses and mirror posts (published false, with the reason, without one).",
    )
    latest = strawberry.field(
        resolver=_latest,
        description="The most recent stored value of every point (of one device).",
    )
    history = strawberry.field(
        resolver=_history,
        description="Raw samples in [start, end), or aggregates per bucket when every is "
        "given. start/end: RFC 3339, epoch ms, now or relative (-2h); every: a duration "
        "(15m); agg: mean, min, max, last, sum or count. At most 10,000 rows.",
    )
    events = strawberry.field(
        resolver=_events, description="Recent alarms and control events, newest first."
    )
    me = strawberry.field(resolver=_me, description="Who the token belongs to, and its role.")


@strawberry.type
class Subscription:
    telemetry = strawberry.subscription(
        resolver=_telemetry,
        description="Live telemetry of the site (of one device), as it is published. "
        "Counts against api.stream_clients while it runs.",
    )


class _storage_errors:  # noqa: N801 -- used as a context manager, named like one
    """Storage unavailable -> the REST answer's message (other storage errors are masked)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        if isinstance(exc, StorageUnavailable):
            raise UnavailableError("storage is unavailable; retry later") from exc


# ---------------------------------------------------------------------------- limits


def _field_def(parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
    if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
        field: GraphQLField | None = parent.fields.get(name)
        return field
    return None


class _Coster:
    """The cost of an operation (see ``query_cost``); each fragment is costed once."""

    def __init__(
        self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode]
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self._fragment_cost: dict[str, int] = {}
        self._costing: set[str] = set()

    def selections(self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = parent if condition is None else self.schema.get_type(condition.name.value)
                total += self.selections(selection.selection_set, inner)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value)
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType | None) -> int:
        name = node.name.value
        if name.startswith("__"):
            return 0  # introspection: see the module docstring
        definition = _field_def(parent, name)
        cost = FIELD_COST.get(name, 1) if parent is self.schema.query_type else 1
        if definition is None or node.selection_set is None:
            return cost  # an unknown field is another rule's error
        field_type = definition.type
        if isinstance(field_type, GraphQLNonNull):
            field_type = field_type.of_type
        factor = LIST_FACTOR if is_list_type(field_type) else 1
        return cost + factor * self.selections(node.selection_set, get_named_type(field_type))

    def fragment(self, name: str) -> int:
        if name in self._fragment_cost:
            return self._fragment_cost[name]
        fragment = self.fragments.get(name)
        if fragment is None or name in self._costing:
            return 0  # unknown or cyclic: other rules report those
        self._costing.add(name)
        cost = self.selections(
            fragment.selection_set, self.schema.get_type(fragment.type_condition.name.value)
        )
        self._costing.discard(name)
        self._fragment_cost[name] = cost
        return cost


def query_cost(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
) -> int:
    """Each field 1 (``FIELD_COST`` for the expensive ones), a list's selection counted
    ``LIST_FACTOR`` times, fragments expanded, introspection left out."""
    root = schema.get_root_type(operation.operation)
    return _Coster(schema, fragments).selections(operation.selection_set, root)


_EXPENSIVE: Final = ", ".join(f"{name} {cost}" for name, cost in sorted(FIELD_COST.items()))


class _CostLimit(ValidationRule):
    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        context: ValidationContext = self.context
        fragments = {
            d.name.value: d
            for d in context.document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }
        cost = query_cost(context.schema, node, fragments)
        if cost > MAX_COST:
            name = node.name.value if node.name else "anonymous"
            context.report_error(
                GraphQLError(
                    f"operation '{name}' costs {cost}, over the limit of {MAX_COST} (each "
                    f"field 1, {_EXPENSIVE}, a list's fields x{LIST_FACTOR}); "
                    "ask for fewer fields or split it into several requests",
                    node,
                )
            )


# ---------------------------------------------------------------------------- errors


def _unexpected(error: GraphQLError) -> bool:
    """Errors whose message must not reach the client (a bug, a storage failure)."""
    original = error.original_error
    return original is not None and not isinstance(original, RequestError | GraphQLError)


class _Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            if _unexpected(error):
                log.error("GraphQL: %s failed", error.path, exc_info=error.original_error)
            else:
                log.debug("GraphQL: refused: %s", error.message)


def build_schema() -> strawberry.Schema:
    """The schema with its limits (see the module docstring)."""
    return _Schema(
        query=Query,
        subscription=Subscription,
        extensions=[
            # Factories: an extension instance is made per operation.
            lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
            lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
            lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
            lambda: AddValidationRules([_CostLimit]),
            lambda: MaskErrors(
                should_mask_error=_unexpected,
                error_message="internal error; the server log has the details",
            ),
        ],
    )


# ---------------------------------------------------------------------------- router


def _token(params: object) -> str | None:
    """The token of a ``connection_init`` payload, if it holds one."""
    if not isinstance(params, dict):
        return None
    token = params.get("token")
    if isinstance(token, str) and token:
        return token
    authorization = params.get("authorization", params.get("Authorization"))
    if isinstance(authorization, str):
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value:
            return value
    return None


class _Router(GraphQLRouter[GraphQLContext, None]):
    def __init__(
        self,
        schema: strawberry.Schema,
        authenticator: Authenticator,
        context_getter: Callable[..., Any],
        allowed_origins: Collection[str],
    ) -> None:
        super().__init__(
            schema,
            path=GRAPHQL_PATH,
            graphql_ide=None,
            context_getter=context_getter,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(seconds=10),
            max_subscriptions_per_connection=20,
            include_in_schema=False,
            allowed_origins=tuple(allowed_origins),
        )
        self.authenticator = authenticator

    async def on_ws_connect(self, context: GraphQLContext) -> UnsetType | dict[str, object] | None:
        """Authenticates the socket from its ``connection_init`` payload (else 4403)."""
        token = _token(context.connection_params)
        if token is None:
            raise ConnectionRejectionError(
                {"reason": "send the token in connection_init: {'token': '<token>'}"}
            )
        try:
            principal = self.authenticator.authenticate_token(token)
        except TokenStoreError as exc:
            log.error("tokens cannot be checked: %s", exc)  # noqa: TRY400 -- says it all
            raise ConnectionRejectionError({"reason": "tokens cannot be checked"}) from None
        if principal is None:
            raise ConnectionRejectionError({"reason": "unknown, expired or revoked token"})
        if self.authenticator.retry_after_s(principal) > 0:
            raise ConnectionRejectionError({"reason": "too many requests for this token"})
        context.principal = principal
        return {"name": principal.name, "role": str(principal.role)}


def graphql_router(
    view: SiteReads,
    events: SiteEvents,
    streams: StreamHub,
    authenticator: Authenticator,
    *,
    allowed_origins: Collection[str] = (),
) -> GraphQLRouter[GraphQLContext, None]:
    """``/graphql``: queries over HTTP (GET or POST), subscriptions over a WebSocket."""

    async def context(connection: HTTPConnection) -> GraphQLContext:
        # HTTP: the middleware put the principal there. WebSocket: None until on_ws_connect.
        return GraphQLContext(view, events, streams, principal_of_scope(connection.scope))

    return _Router(build_schema(), authenticator, context, allowed_origins)
