"""Routes that act or that show who acted: commands, controller requests, events, audit, tokens.

    GET    /api/v1/me                                      viewer    who the token belongs to
    POST   /api/v1/devices/{d}/points/{p}/command          operator  a setpoint, via the gateway
    POST   /api/v1/control/overrides                       operator  hold a point for a time
    DELETE /api/v1/control/overrides/{point}               operator  release it
    PUT    /api/v1/control/dry-run                         operator  decide but do not act
    PUT    /api/v1/control/controllers/{name}              operator  enable / disable one
    GET    /api/v1/events                                  viewer    alarms and control events
    GET    /api/v1/audit                                   operator  who did what through the API
    GET    /api/v1/tokens, POST, DELETE /api/v1/tokens/{id} admin    token management

Every write, refused ones included, is written to the audit log with its result. A command
waits for the gateway's result, a controller request for the controller's reply, at most
``api.command_timeout``: no answer is a 504 that says which service to check.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from gridpilot.api.audit import AuditLog
from gridpilot.api.auth import Principal, current_principal, require
from gridpilot.api.errors import (
    ConflictError,
    NotFoundError,
    RequestError,
    UnavailableError,
    UnprocessableError,
    UpstreamFailedError,
    UpstreamTimeoutError,
)
from gridpilot.api.schemas import (
    POINT_REF_PATTERN,
    AuditEntryOut,
    AuditOut,
    CommandIn,
    CommandOut,
    ControllerIn,
    ControlReplyOut,
    DryRunIn,
    ErrorOut,
    EventOut,
    EventsOut,
    MeOut,
    OverrideIn,
    ParamsIn,
    TokenCreatedOut,
    TokenIn,
    TokenOut,
    TokensOut,
)
from gridpilot.api.site_bus import BusBusyError, SiteBus, SiteEvents
from gridpilot.api.state_cache import EffectiveStatus
from gridpilot.api.tokens import Role, TokenError, TokenRecord, TokenStore, TokenStoreError
from gridpilot.bus.codec import CommandStatus
from gridpilot.bus.errors import BusError
from gridpilot.config.models import GridPilotConfig
from gridpilot.control.base import PointRef
from gridpilot.model import to_rfc3339

__all__ = ["actions_router"]

log = logging.getLogger("gridpilot.api")


_COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or an unknown, expired or revoked one."},
    422: {"model": ErrorOut, "description": "A parameter or the body is malformed."},
    429: {"model": ErrorOut, "description": "Too many requests for this token; see Retry-After."},
}
_READ_403: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "The token's role may not read this."},
    503: {"model": ErrorOut, "description": "The token file or audit log cannot be read."},
}
_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown device, point, controller or token."},
    403: {"model": ErrorOut, "description": "The token's role may not do this."},
    409: {"model": ErrorOut, "description": "The point is driven by the controller."},
    422: {"model": ErrorOut, "description": "Refused: the gateway or controller says why."},
    502: {
        "model": ErrorOut,
        "description": "The device could not apply it, or a malformed answer.",
    },
    503: {"model": ErrorOut, "description": "The broker is unreachable, or too busy."},
    504: {"model": ErrorOut, "description": "No answer within api.command_timeout."},
}


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


def _token_out(record: TokenRecord) -> TokenOut:
    return TokenOut(
        id=record.id,
        name=record.name,
        role=record.role,
        created=_iso(record.created) or "",
        created_by=record.created_by,
        expires=_iso(record.expires),
        revoked=_iso(record.revoked),
    )


class _Actions:
    def __init__(
        self,
        config: GridPilotConfig,
        site_bus: SiteBus | None,
        audit: AuditLog,
        tokens: TokenStore,
    ) -> None:
        self.config = config
        self.site_bus = site_bus
        self.audit = audit
        self.tokens = tokens

    def bus(self) -> SiteBus:
        if self.site_bus is None:
            raise UnavailableError("this API runs without a broker connection; commands need one")
        return self.site_bus

    async def audited(  # noqa: PLR0917 -- the audit entry's fields, in its order
        self,
        principal: Principal,
        action: str,
        target: str,
        params: dict[str, Any],
        act: Callable[[], Awaitable[Any]],
        summary: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Run ``act`` and write the outcome (result or error) to the audit log."""
        try:
            result = await act()
        except RequestError as exc:
            await self.audit.record(
                principal, action, target, params, ok=False, result={"error": exc.error}
            )
            raise
        summarized = _plain(result) if summary is None else summary(result)
        await self.audit.record(principal, action, target, params, ok=True, result=summarized)
        return result

    async def ask_controller(
        self, principal: Principal, action: str, target: str, request: dict[str, Any]
    ) -> ControlReplyOut:
        control = self.config.control
        if control is None:
            raise NotFoundError(
                f"site {self.config.site.id!r} has no control section: there is no controller"
            )

        async def act() -> ControlReplyOut:
            with _asking(
                self.config,
                f"the controller {control.id!r}",
                "'gridpilot run controller' (or 'run all') running for this site",
            ):
                reply = await self.bus().control_request(
                    control.id, {**request, "by": principal.who}
                )
            if not reply.ok:
                # The controller checks the request (point known and writable, value in
                # range, controller exists): its refusal is the asker's to fix.
                raise UnprocessableError(f"the controller refused: {reply.message}")
            return ControlReplyOut(ok=True, message=reply.message)

        params = {k: v for k, v in request.items() if k != "action"}
        result: ControlReplyOut = await self.audited(principal, action, target, params, act)
        return result


@contextlib.contextmanager
def _asking(config: GridPilotConfig, who: str, running: str) -> Iterator[None]:
    """Turn what can go wrong asking a service over the bus into the API's answers: no
    answer in time (504, naming what should be running), no broker (503), a malformed
    answer (502)."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeoutError(
            f"{who} did not answer within {config.api.command_timeout.total_seconds():g} s: "
            f"is {running}?"
        ) from None
    except (BusError, BusBusyError) as exc:
        raise UnavailableError(f"cannot reach {who}: {exc}") from None
    except ValueError as exc:
        raise UpstreamFailedError(str(exc)) from None


def _plain(result: Any) -> Any:
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    return result


Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def actions_router(  # noqa: PLR0915 -- one adapter per route
    *,
    config: GridPilotConfig,
    device_states: Any,
    events: SiteEvents,
    site_bus: SiteBus | None,
    audit: AuditLog,
    tokens: TokenStore,
    api_prefix: str,
) -> APIRouter:
    actions = _Actions(config, site_bus, audit, tokens)
    api = APIRouter(prefix=api_prefix, responses=_COMMON_RESPONSES)
    viewer = Depends(require(Role.VIEWER))

    @api.get("/me", response_model=MeOut, tags=["security"], dependencies=[viewer])
    async def me(request: Request) -> MeOut:
        """Who the token belongs to, and its role."""
        principal = current_principal(request)
        return MeOut(name=principal.name, role=principal.role, token_id=principal.token_id)

    @api.post(
        "/devices/{device}/points/{point}/command",
        response_model=CommandOut,
        tags=["commands"],
        responses=_WRITE_RESPONSES,
    )
    async def command(
        device: str, point: str, body: CommandIn, principal: Operator, request: Request
    ) -> CommandOut:
        """Send a setpoint to a writable point and wait for the gateway's result.

        The controller re-sends its own targets every cycle, so a point it drives is refused
        with 409: hold it with an override (`POST /control/overrides`) instead.
        """
        params = {"value": body.value, "ttl_s": body.ttl_s, "reason": body.reason}

        async def act() -> CommandOut:
            _writable_point(config, device, point)
            _not_driven_by_controller(config, device_states, device, point)
            with _asking(
                config,
                "the gateway",
                "'gridpilot run gateway' (or 'run all') running and connected",
            ):
                result = await actions.bus().send_command(
                    device,
                    point,
                    body.value,
                    ttl_ms=int(body.ttl_s * 1000),
                    source=f"api:{principal.name}",
                )
            out = CommandOut(
                id=result.id or "",
                status=result.status.value,
                code=result.code,
                reason=result.reason,
                point=result.point,
                value=result.value,
                readback=result.readback,
                ts=to_rfc3339(result.ts_ms),
            )
            if result.status is CommandStatus.REJECTED:
                raise UnprocessableError(
                    f"the gateway rejected the command: {result.reason}", out.model_dump()
                )
            if result.status is CommandStatus.FAILED:
                raise UpstreamFailedError(f"the command failed: {result.reason}", out.model_dump())
            return out

        out: CommandOut = await actions.audited(
            principal, "command", f"{device}.{point}", params, act
        )
        return out

    @api.post(
        "/control/overrides",
        response_model=ControlReplyOut,
        tags=["control"],
        responses=_WRITE_RESPONSES,
    )
    async def override(body: OverrideIn, principal: Operator) -> ControlReplyOut:
        """Hold a point at a value for a time; beats every controller but safety."""
        _configured_point(config, body.point)
        return await actions.ask_controller(
            principal,
            "override",
            body.point,
            {
                "action": "override",
                "point": body.point,
                "value": body.value,
                "duration_s": body.duration_s,
                "reason": body.reason,
            },
        )

    @api.delete(
        "/control/overrides/{point}",
        response_model=ControlReplyOut,
        tags=["control"],
        responses=_WRITE_RESPONSES,
    )
    async def release(
        point: Annotated[str, Path(pattern=POINT_REF_PATTERN)], principal: Operator
    ) -> ControlReplyOut:
        """End an override: the controllers decide the point again."""
        _configured_point(config, point)
        return await actions.ask_controller(
            principal, "release", point, {"action": "release", "point": point}
        )

    @api.put(
        "/control/dry-run",
        response_model=ControlReplyOut,
        tags=["control"],
        responses=_WRITE_RESPONSES,
    )
    async def dry_run(body: DryRunIn, principal: Operator) -> ControlReplyOut:
        """Dry-run on: the controller decides and records but sends no command."""
        return await actions.ask_controller(
            principal,
            "dry_run",
            "controller",
            {"action": "dry_run", "enabled": body.enabled, "reason": body.reason},
        )

    @api.put(
        "/control/controllers/{name}",
        response_model=ControlReplyOut,
        tags=["control"],
        responses=_WRITE_RESPONSES,
    )
    async def set_controller(name: str, body: ControllerIn, principal: Operator) -> ControlReplyOut:
        """Enable or disable one controller (its points go back to idle when disabled)."""
        action = "enable" if body.enabled else "disable"
        _known_controller(config, device_states, name)
        return await actions.ask_controller(
            principal,
            action,
            name,
            {"action": action, "controller": name, "reason": body.reason},
        )

    @api.put(
        "/control/controllers/{name}/params",
        response_model=ControlReplyOut,
        tags=["control"],
        responses=_WRITE_RESPONSES,
    )
    async def set_params(name: str, body: ParamsIn, principal: Operator) -> ControlReplyOut:
        """Change a controller's parameters (e.g. the peak-shaving limit) while it runs.

        Checked like the same edit in the site file; the controller keeps its state. The
        change lasts until the controller restarts (edit the site file to keep it). The
        current parameters are in `GET /control` under `state.controllers.{name}.params`."""
        _known_controller(config, device_states, name)
        return await actions.ask_controller(
            principal,
            "set_params",
            name,
            {
                "action": "set_params",
                "controller": name,
                "params": body.params,
                "reason": body.reason,
            },
        )

    @api.get("/events", response_model=EventsOut, tags=["events"], dependencies=[viewer])
    async def list_events(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        level: Annotated[Literal["info", "warning", "alarm"] | None, Query()] = None,
        before: Annotated[
            int | None,
            Query(ge=0, description="Epoch ms: only older events (`next_before` of a page)."),
        ] = None,
    ) -> EventsOut:
        """The site's alarms and notable changes (devices dropping out and back, operators'
        overrides and changes, controller warnings), newest first, as stored by ingest
        (kept `storage.retention.events`, a year by default)."""
        rows, next_before = await events.page(limit, level, before)
        return EventsOut(events=[EventOut(**e) for e in rows], next_before=next_before)

    @api.get("/audit", response_model=AuditOut, tags=["security"], responses=_READ_403)
    async def read_audit(
        principal: Operator,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[
            int | None,
            Query(
                ge=0,
                description="Only entries older than this `seq` (the `next_before` of the "
                "previous page).",
            ),
        ] = None,
    ) -> AuditOut:
        """Commands and changes made through the API (who, what, when, result), newest
        first, `limit` per page; `next_before` continues."""
        entries = await audit.read(limit, before)
        out = []
        for entry in entries:
            try:
                out.append(AuditEntryOut(**entry))
            except (TypeError, ValueError):
                continue  # a line from another version or cut by a crash
        next_before = out[-1].seq if len(entries) == limit and out else None
        return AuditOut(entries=out, next_before=next_before)

    @api.get("/tokens", response_model=TokensOut, tags=["security"], responses=_READ_403)
    async def list_tokens(principal: Admin) -> TokensOut:
        """Every token (never the secret): name, role, creator, expiry, revocation."""
        return TokensOut(tokens=[_token_out(r) for r in _records(tokens)])

    @api.post(
        "/tokens", response_model=TokenCreatedOut, tags=["security"], responses=_WRITE_RESPONSES
    )
    async def create_token(body: TokenIn, principal: Admin) -> TokenCreatedOut:
        """Create a token; the answer is the only time the token is shown."""
        params = {"name": body.name, "role": body.role, "expires_in_s": body.expires_in_s}

        async def act() -> TokenCreatedOut:
            now = datetime.now(UTC)
            expires = None
            if body.expires_in_s is not None:
                expires = now + timedelta(seconds=body.expires_in_s)
            try:
                record, secret = tokens.create(
                    body.role, body.name, created_by=principal.who, expires=expires, now=now
                )
            except TokenError as exc:
                raise UnprocessableError(str(exc)) from None
            except TokenStoreError as exc:
                raise UnavailableError(str(exc)) from None
            return TokenCreatedOut(token=secret, record=_token_out(record))

        created: TokenCreatedOut = await actions.audited(
            principal,
            "token_create",
            body.name,
            params,
            act,
            # The audit log must never hold the token itself: only its record.
            summary=lambda out: out.record.model_dump(mode="json"),
        )
        return created

    @api.delete(
        "/tokens/{token_id}", response_model=TokenOut, tags=["security"], responses=_WRITE_RESPONSES
    )
    async def revoke_token(token_id: str, principal: Admin) -> TokenOut:
        """Revoke a token at once (kept in the list, marked revoked)."""

        async def act() -> TokenOut:
            try:
                return _token_out(tokens.revoke(token_id))
            except TokenError as exc:
                raise NotFoundError(str(exc)) from None
            except TokenStoreError as exc:
                raise UnavailableError(str(exc)) from None

        out: TokenOut = await actions.audited(principal, "token_revoke", token_id, {}, act)
        return out

    return api


def _records(tokens: TokenStore) -> list[TokenRecord]:
    try:
        return tokens.records()
    except TokenStoreError as exc:
        raise UnavailableError(str(exc)) from None


def _writable_point(config: GridPilotConfig, device: str, point: str) -> None:
    config_device = config.device(device)
    if config_device is None:
        raise NotFoundError(f"no device {device!r}; GET /api/v1/devices lists them")
    config_point = config_device.point(point)
    if config_point is None:
        raise NotFoundError(f"device {device!r} has no point {point!r}")
    if not config_point.writable:
        raise UnprocessableError(
            f"{device}.{point} is not writable (the site file does not mark it 'writable')"
        )


def _not_driven_by_controller(
    config: GridPilotConfig, device_states: Any, device: str, point: str
) -> None:
    control = config.control
    if control is None or device_states.status(control.id) is not EffectiveStatus.ONLINE:
        return
    state = device_states.get(control.id) or {}
    targets = state.get("targets") or {}
    if f"{device}.{point}" in targets:
        raise ConflictError(
            f"the controller drives {device}.{point} every cycle and would undo this command; "
            "hold it with POST /api/v1/control/overrides (or disable that controller) instead",
            {"point": f"{device}.{point}", "controller": control.id},
        )


def _known_controller(config: GridPilotConfig, device_states: Any, name: str) -> None:
    """404 for a controller the running engine does not have (known from its retained
    state; without one the controller itself answers)."""
    control = config.control
    if control is None:
        return
    state = device_states.get(control.id) or {}
    known = state.get("controllers")
    if isinstance(known, dict) and name not in known:
        raise NotFoundError(
            f"the controller has no controller named {name!r}; known: "
            f"{', '.join(sorted(known)) or 'none configured'}",
            {"controller": name, "known": sorted(known)},
        )


def _configured_point(config: GridPilotConfig, text: str) -> None:
    """404 for a point the site does not have (the controller checks the rest)."""
    ref = PointRef.parse(text)  # the route's pattern guarantees the form
    device = config.device(ref.device)
    if device is None or device.point(ref.point) is None:
        raise NotFoundError(
            f"the site has no point {text!r}; GET /api/v1/devices lists devices and points",
            {"point": text},
        )
