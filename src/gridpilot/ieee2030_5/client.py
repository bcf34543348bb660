"""The IEEE 2030.5 (CSIP) client: walks the utility server, follows its DERControls and
reports back.

``CsipClient`` is the I/O shell around the pure scheduler (``schedule.step``): it moves
bytes (httpx over TLS 1.2 CCM8, every document through ``xmlsafe``) and time (the server's,
from ``/tm``), and hands the results to a callback. ``Ieee2030_5Service`` wires it to the
bus: ``grid/controls`` and ``ieee2030_5/status`` (see the issue 6 contracts).

The walk (IEEE 2030.5-2018 §6, DOMAIN.md):
``/dcap`` → ``/tm`` (clock offset) → EndDeviceList (find ours by LFDI or POST it) →
Registration (the PIN must match the configured one, else nothing is followed) →
FunctionSetAssignmentsList → DERProgramList (by primacy) → per program DERControlList,
ActiveDERControlList, DefaultDERControl, DERCurveList; DERList → PUT DERCapability,
DERSettings, DERStatus, DERAvailability.

Every resource is fetched again when its pollRate has run out (the resource's own, else
the list it came from, else DeviceCapability's, default 900 s; ``poll_rate_s`` in the config
overrides). A fetch that fails keeps the last good copy: a timeout or refusal sets
``last_error`` and backs off; a document ``xmlsafe`` rejects sets ``last_error`` naming it
and the copy before stays in force.

Errors::

    Ieee2030_5Error               the client cannot go on for now (retried with backoff)
    ├── TransportError            timeout, refused connection, TLS failure
    ├── ServerRefusedError        an HTTP 4xx/5xx answer (status and the server's reason)
    └── RegistrationError         no EndDevice for us, or the Registration PIN differs
    XmlRejected (xmlsafe)         a document refused; the last good copy stays
"""

from __future__ import annotations

import asyncio
import logging
import random
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic_xml import BaseXmlModel

from gridpilot.bus.client import backoff_delay
from gridpilot.config.ieee2030_5 import CsipClientConfig
from gridpilot.config.models import site_path
from gridpilot.config.secrets import SecretError, read_secret
from gridpilot.ieee2030_5.controls import InvalidControlError, modes_of
from gridpilot.ieee2030_5.identity import lfdi_of_pem, pin_matches, sfdi
from gridpilot.ieee2030_5.models import (
    DER,
    ActivePower,
    DefaultDERControl,
    DERAvailability,
    DERCapability,
    DERControl,
    DERControlList,
    DERControlResponse,
    DERControlType,
    DERCurve,
    DERCurveList,
    DERList,
    DERProgram,
    DERProgramList,
    DERSettings,
    DERStatus,
    DERType,
    DeviceCapability,
    EndDevice,
    EndDeviceList,
    EndDeviceRequest,
    FunctionSetAssignmentsList,
    Registration,
    ResponseType,
    Time,
)
from gridpilot.ieee2030_5.schedule import (
    DefaultDoc,
    Documents,
    EventDoc,
    ResponseToPost,
    ScheduleState,
    StepResult,
    step,
)
from gridpilot.ieee2030_5.tls import TlsSetupError, client_context
from gridpilot.ieee2030_5.xmlsafe import XmlRejected, parse_resource, serialize
from gridpilot.model.time import to_rfc3339
from gridpilot.storage.base import StorageError

__all__ = [
    "DEFAULT_POLL_RATE_S",
    "CsipClient",
    "Ieee2030_5Error",
    "MirrorPoster",
    "RegistrationError",
    "ServerRefusedError",
    "Snapshot",
    "TransportError",
    "controls_message",
    "status_message",
]

log = logging.getLogger(__name__)

DEFAULT_POLL_RATE_S = 900.0
"""2030.5's default pollRate."""
SEP_XML = "application/sep+xml"
_MAX_PENDING_RESPONSES = 1000
_HISTORY = 50
_MAX_LIST_PAGES = 20
_BACKOFF_INITIAL_S = 1.0
_BACKOFF_MAX_S = 300.0
_INT16_MAX = 32767
_MIN_SLEEP_S = 0.05

# DERControlType bits of the modes GridPilot forwards (DERCapability.modesSupported).
_MODE_BITS: Mapping[str, DERControlType] = {
    "opModConnect": DERControlType.OP_MOD_CONNECT,
    "opModEnergize": DERControlType.OP_MOD_ENERGIZE,
    "opModFixedPFAbsorbW": DERControlType.OP_MOD_FIXED_PF_ABSORB_W,
    "opModFixedPFInjectW": DERControlType.OP_MOD_FIXED_PF_INJECT_W,
    "opModFixedVar": DERControlType.OP_MOD_FIXED_VAR,
    "opModFixedW": DERControlType.OP_MOD_FIXED_W,
    "opModFreqDroop": DERControlType.OP_MOD_FREQ_DROOP,
    "opModFreqWatt": DERControlType.OP_MOD_FREQ_WATT,
    "opModMaxLimW": DERControlType.OP_MOD_MAX_LIM_W,
    "opModTargetVar": DERControlType.OP_MOD_TARGET_VAR,
    "opModTargetW": DERControlType.OP_MOD_TARGET_W,
    "opModVoltVar": DERControlType.OP_MOD_VOLT_VAR,
    "opModVoltWatt": DERControlType.OP_MOD_VOLT_WATT,
    "opModWattPF": DERControlType.OP_MOD_WATT_PF,
    "opModWattVar": DERControlType.OP_MOD_WATT_VAR,
}
# CSIP-AUS DOESupportedMode bits.
_DOE_BITS: Mapping[str, int] = {
    "opModExpLimW": 1,
    "opModImpLimW": 2,
    "opModGenLimW": 4,
    "opModLoadLimW": 8,
}

M = TypeVar("M", bound=BaseXmlModel)


class Ieee2030_5Error(Exception):  # noqa: N801 -- the standard's name
    """The client cannot go on for now; it retries with backoff."""


class TransportError(Ieee2030_5Error):
    """Timeout, refused connection or TLS failure talking to the server."""


class ServerRefusedError(Ieee2030_5Error):
    """The server answered 4xx/5xx."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RegistrationError(Ieee2030_5Error):
    """No EndDevice for this certificate, or its Registration PIN is not ours."""


class MirrorPoster(Protocol):
    """Posts the site's telemetry as MirrorUsagePoints / MirrorMeterReadings (mirror.py
    builds the documents; this is how the client drives it)."""

    async def post(self, http: HttpSession, now: float, lfdi: str) -> list[dict[str, Any]]:
        """Post what is due; returns one record per POST ({"mup", "at", "readings",
        "http_status"})."""
        ...


# ------------------------------------------------------------------------------- HTTP


class HttpSession:
    """GET/POST/PUT of typed 2030.5 resources on one server, each with a timeout."""

    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url
        self._client = client
        origin = urlsplit(base_url)
        self._origin = (origin.scheme, origin.hostname, origin.port)

    def url(self, href: str) -> str:
        """The absolute URL of ``href``; a link to another host is refused (a server must
        not send the client to third parties with its certificate)."""
        url = urljoin(self.base_url + "/", href)
        parts = urlsplit(url)
        if (parts.scheme, parts.hostname, parts.port) != self._origin:
            raise ServerRefusedError(
                f"the server links {href!r}, outside {self.base_url}; not followed", 0
            )
        return url

    async def _request(self, method: str, href: str, body: bytes | None = None) -> httpx.Response:
        url = self.url(href)
        headers = {"Accept": SEP_XML}
        if body is not None:
            headers["Content-Type"] = SEP_XML
        try:
            reply = await self._client.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransportError(
                f"{method} {url}: no answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise TransportError(
                f"{method} {url}: {exc or type(exc).__name__}; check the server address, "
                "that it is up, and the TLS files (ca_file, cert_file, key_file)"
            ) from exc
        if reply.status_code >= 400:
            raise ServerRefusedError(
                f"{method} {url}: HTTP {reply.status_code} {_error_reason(reply)}",
                reply.status_code,
            )
        return reply

    async def get(self, href: str, model: type[M]) -> M:
        reply = await self._request("GET", href)
        return parse_resource(reply.content, model, where=f"GET {self.url(href)}")

    async def post(self, href: str, resource: BaseXmlModel) -> tuple[int, str | None]:
        """POST ``resource``; returns the HTTP status and the Location header."""
        reply = await self._request("POST", href, serialize(resource))
        return reply.status_code, reply.headers.get("Location")

    async def put(self, href: str, resource: BaseXmlModel) -> int:
        reply = await self._request("PUT", href, serialize(resource))
        return reply.status_code


def _error_reason(reply: httpx.Response) -> str:
    # A 2030.5 Error document carries a message; anything else is summarised by length.
    text = reply.text[:300] if reply.content else ""
    start, end = text.find("<message>"), text.find("</message>")
    if 0 <= start < end:
        return text[start + len("<message>") : end]
    return f"({len(reply.content)} bytes)" if reply.content else ""


# ------------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Cached:
    doc: BaseXmlModel
    due: float  # monotonic time of the next fetch
    rate: float


@dataclass(slots=True)
class _Program:
    href: str
    doc: DERProgram
    events: list[DERControl] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    default: DefaultDERControl | None = None
    curves: dict[str, DERCurve] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the client knows after a step (the status and controls messages are made
    from it)."""

    now: float
    result: StepResult
    status: Mapping[str, Any]
    ready: bool = True
    """False until the client has walked the server once: its controls mean "not known
    yet", not "nothing in force", and are not published."""


def _rfc3339(seconds: float) -> str:
    return to_rfc3339(round(seconds * 1000))


def _active_power(watts: float) -> ActivePower:
    # ActivePower.value is an Int16: scale by powers of ten until it fits.
    multiplier = 0
    value = watts
    while abs(value) > _INT16_MAX:
        multiplier += 1
        value = watts / 10**multiplier
    return ActivePower(value=round(value), multiplier=multiplier)


class _ClockOffset:
    """Server time = local time + offset, from ``/tm`` samples.

    TimeType is whole seconds, so one sample only bounds the offset: the server's clock
    read at least ``currentTime`` when the answer arrived and less than ``currentTime + 1``
    when the request left. Samples are intersected, and the LOWER bound is used: the
    client then acts on an edge at most the remaining uncertainty late, never early.
    A sample outside the running bounds means the server's clock moved: start over.
    """

    def __init__(self) -> None:
        self.low: float | None = None
        self.high: float | None = None

    def add(self, server_time: int, sent: float, received: float) -> None:
        low, high = server_time - received, server_time + 1 - sent
        if self.low is None or self.high is None or low > self.high or high < self.low:
            self.low, self.high = low, high
        else:
            self.low, self.high = max(self.low, low), min(self.high, high)

    @property
    def value(self) -> float | None:
        return self.low


# ------------------------------------------------------------------------------- client


class CsipClient:
    """The 2030.5 client for one site. ``async with CsipClient(...) as client`` opens the
    HTTP session; ``run(on_update)`` walks, polls and schedules until cancelled, calling
    ``on_update`` after every step."""

    def __init__(
        self,
        config: CsipClientConfig,
        *,
        base_dir: Path,
        mirrors: MirrorPoster | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._base_dir = base_dir
        self._mirrors = mirrors
        self._clock = clock
        self._mono = monotonic
        self._rng = rng or random.Random()  # noqa: S311 -- backoff jitter, not cryptography
        cert = site_path(base_dir, config.cert_file)
        key = site_path(base_dir, config.key_file)
        ca = site_path(base_dir, config.ca_file)
        _check_key_mode(key)
        try:
            self._ssl = client_context(cert, key, ca)
            self.lfdi = lfdi_of_pem(cert.read_bytes())
        except (TlsSetupError, OSError, ValueError) as exc:
            raise Ieee2030_5Error(f"ieee2030_5: {exc}") from exc
        self.sfdi = sfdi(self.lfdi)
        self.pin = _configured_pin(config, base_dir, environ)
        self.supported_modes = (
            frozenset(config.supported_modes) if config.supported_modes is not None else None
        )
        self._http: HttpSession | None = None
        self._httpx: httpx.AsyncClient | None = None
        self._cache: dict[str, _Cached] = {}
        # Cache keys used by the current walk: their due times wake the loop, and the
        # others (a program that went away, old pages) are dropped after a full walk.
        self._touched: set[str] = set()
        self.ready = False
        """True once a walk completed (the controls then reflect the server), or the PIN
        was found wrong (then "nothing in force" is the truth)."""
        self._offset = _ClockOffset()
        self._schedule = ScheduleState(seed=self.lfdi)
        self._pending: deque[ResponseToPost] = deque(maxlen=_MAX_PENDING_RESPONSES)
        self._response_log: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._mirror_log: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._programs: list[_Program] = []
        self._failures = 0
        self._retry_at = 0.0
        self._next_mirror = 0.0
        self._reported_der = False
        self.end_device: str | None = None
        self.registered = False
        self.pin_ok: bool | None = None
        self.poll_rate_s: float = DEFAULT_POLL_RATE_S
        self.post_rate_s: float | None = config.post_rate_s
        self._general_error: str | None = None
        self._href_errors: dict[str, str] = {}
        self.last: Snapshot | None = None

    async def __aenter__(self) -> Self:
        timeout = self.config.request_timeout_s
        self._httpx = httpx.AsyncClient(
            verify=self._ssl,
            timeout=httpx.Timeout(timeout),
            # Loopback or the utility only: no proxies or netrc from the environment.
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )
        self._http = HttpSession(self.config.server, self._httpx)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()

    @property
    def last_error(self) -> str | None:
        """The latest problem still standing: a failed round (transport, refusal,
        registration) or a document rejected and not yet served well again."""
        if self._general_error is not None:
            return self._general_error
        if self._href_errors:
            return next(reversed(self._href_errors.values()))
        return None

    def _note_error(self, message: str) -> None:
        self._general_error = message

    @property
    def http(self) -> HttpSession:
        if self._http is None:
            raise RuntimeError("CsipClient is used inside 'async with'")
        return self._http

    # -- time -----------------------------------------------------------------------------

    def server_now(self) -> float:
        """Server time (epoch seconds): local clock + the offset from ``/tm``."""
        offset = self._offset.value
        return self._clock() + (offset if offset is not None else 0.0)

    @property
    def clock_offset_s(self) -> float | None:
        return self._offset.value

    # -- the loop -------------------------------------------------------------------------

    async def run(self, on_update: Callable[[Snapshot], Awaitable[None]]) -> None:
        """Poll, schedule and report until cancelled."""
        while True:
            snapshot = await self.step_once()
            await on_update(snapshot)
            await asyncio.sleep(self._sleep_s(snapshot))

    async def step_once(self) -> Snapshot:
        """One round: fetch what is due, advance the schedule, post responses and mirrors."""
        mono = self._mono()
        if mono >= self._retry_at:
            self._touched = set()
            try:
                await self._refresh(mono)
            except (Ieee2030_5Error, XmlRejected) as exc:
                self._failed(exc)
                if self.pin_ok is False:
                    self.ready = True
            else:
                self._failures = 0
                self._general_error = None
                self.ready = True
                for stale in set(self._cache) - self._touched:
                    del self._cache[stale]
        now = self.server_now()
        result = step(self._schedule, self._documents(), now, supported_modes=self.supported_modes)
        self._schedule = result.state
        self._pending.extend(result.responses)
        await self._post_responses()
        await self._post_mirrors(now)
        snapshot = Snapshot(
            now=now, result=result, status=self._status(now, result), ready=self.ready
        )
        self.last = snapshot
        return snapshot

    def _failed(self, exc: BaseException) -> None:
        self._general_error = str(exc)
        delay = backoff_delay(
            self._failures,
            initial_s=_BACKOFF_INITIAL_S,
            max_s=min(_BACKOFF_MAX_S, self.poll_rate_s),
            jitter=self._rng.random(),
        )
        self._failures += 1
        self._retry_at = self._mono() + delay
        log.warning("ieee2030_5: %s (retry in %.1f s)", exc, delay)

    def _sleep_s(self, snapshot: Snapshot) -> float:
        mono = self._mono()
        if self._failures:
            wakes = [self._retry_at]
        else:
            wakes = [self._cache[k].due for k in self._touched if k in self._cache]
        if snapshot.result.next_change is not None:
            wakes.append(mono + (snapshot.result.next_change - snapshot.now))
        if self._pending:
            wakes.append(mono + _BACKOFF_INITIAL_S)
        if self._mirrors is not None and self.post_rate_s is not None:
            wakes.append(self._next_mirror)
        wakes.append(mono + self.config.publish_interval_s)
        return max(_MIN_SLEEP_S, min(wakes) - mono)

    # -- fetching -------------------------------------------------------------------------

    async def _fetch(
        self, href: str, model: type[M], inherited: float, mono: float, *, required: bool = True
    ) -> M | None:
        """``href`` as ``model``: the cached copy while its pollRate has not run out, else
        fetched again. A failed fetch keeps the cached copy (and records the error); with
        none cached it raises when ``required``, else gives None."""
        self._touched.add(href)
        cached = self._cache.get(href)
        if cached is not None and mono < cached.due and isinstance(cached.doc, model):
            return cached.doc
        try:
            doc = await self.http.get(href, model)
        except (XmlRejected, Ieee2030_5Error) as exc:
            self._href_errors.pop(href, None)  # re-insert: the newest error reads last
            self._href_errors[href] = str(exc)
            if isinstance(exc, ServerRefusedError) and exc.status in (404, 410):
                # Gone, not broken: a copy of a resource the server removed is not kept
                # (an EndDevice it forgot is registered again).
                self._cache.pop(href, None)
                cached = None
            if cached is not None and isinstance(cached.doc, model):
                # Keep the last good copy; look again at the same rate.
                cached.due = mono + cached.rate
                if isinstance(exc, TransportError):
                    raise
                log.warning("ieee2030_5: keeping the last good %s: %s", href, exc)
                return cached.doc
            if required:
                raise
            return None
        self._href_errors.pop(href, None)
        served = getattr(doc, "pollRate", None)
        rate = self.config.poll_rate_s or (float(served) if served else inherited)
        self._cache[href] = _Cached(doc, mono + rate, rate)
        return doc

    async def _list(
        self, href: str, model: type[M], items: str, inherited: float, mono: float
    ) -> tuple[M, list[Any]]:
        """A list resource and all of its items (following 2030.5 paging s/l)."""
        first = await self._fetch(href, model, inherited, mono)
        assert first is not None  # noqa: S101 -- required=True never returns None
        collected = list(getattr(first, items) or [])
        total = int(getattr(first, "all_", len(collected)))
        pages = 1
        while len(collected) < total and pages < _MAX_LIST_PAGES:
            base = href.partition("?")[0]
            page = await self._fetch(
                f"{base}?s={len(collected)}&l={total - len(collected)}", model, inherited, mono
            )
            assert page is not None  # noqa: S101
            more = list(getattr(page, items) or [])
            if not more:
                break
            collected += more
            pages += 1
        return first, collected

    async def _refresh(self, mono: float) -> None:
        dcap = await self._fetch(self.config.dcap_path, DeviceCapability, DEFAULT_POLL_RATE_S, mono)
        assert dcap is not None  # noqa: S101
        self.poll_rate_s = self._cache[self.config.dcap_path].rate
        base_rate = self.poll_rate_s
        if dcap.TimeLink is not None:
            await self._sync_clock(dcap.TimeLink.href, base_rate, mono)
        if dcap.EndDeviceListLink is None:
            raise RegistrationError(
                f"{self.config.dcap_path} has no EndDeviceListLink: this server offers no "
                "registration to this client; ask the utility to enrol the certificate"
            )
        device = await self._end_device(dcap.EndDeviceListLink.href, base_rate, mono)
        if device.postRate is not None and self.config.post_rate_s is None:
            self.post_rate_s = float(device.postRate)
        await self._check_registration(device, base_rate, mono)
        await self._programs_of(device, base_rate, mono)
        await self._report_der(device, base_rate, mono)

    async def _sync_clock(self, href: str, rate: float, mono: float) -> None:
        self._touched.add(href)
        cached = self._cache.get(href)
        if cached is not None and mono < cached.due:
            return
        sent = self._clock()
        tm = await self.http.get(href, Time)
        received = self._clock()
        self._offset.add(tm.currentTime, sent, received)
        self._cache[href] = _Cached(tm, mono + rate, rate)

    async def _end_device(self, list_href: str, rate: float, mono: float) -> EndDevice:
        if self.end_device is not None:
            device = await self._fetch(self.end_device, EndDevice, rate, mono, required=False)
            if device is not None and (device.lFDI or "").upper() in ("", self.lfdi):
                return device
            self.end_device = None
        _, devices = await self._list(list_href, EndDeviceList, "EndDevice", rate, mono)
        candidate: EndDevice
        for candidate in devices:
            if (candidate.lFDI or "").upper() == self.lfdi or candidate.sFDI == self.sfdi:
                if candidate.href is not None:
                    self.end_device = candidate.href
                self.registered = True
                return candidate
        # Not enrolled yet: register ourselves (the server identifies us by certificate).
        request = EndDeviceRequest(
            sFDI=self.sfdi, lFDI=self.lfdi, changedTime=int(self.server_now())
        )
        status, location = await self.http.post(list_href, request)
        log.info("ieee2030_5: registered EndDevice at %s (HTTP %d)", location, status)
        self._cache.pop(list_href, None)
        if location is None:
            raise RegistrationError(
                f"POST {list_href} answered {status} without a Location: cannot find our "
                "EndDevice; the server must return where it created it"
            )
        self.end_device = location
        device = await self._fetch(location, EndDevice, rate, mono)
        assert device is not None  # noqa: S101
        self.registered = True
        return device

    async def _check_registration(self, device: EndDevice, rate: float, mono: float) -> None:
        if device.RegistrationLink is None:
            self.pin_ok = None if self.pin is None else False
            if self.pin is not None:
                raise RegistrationError(
                    f"EndDevice {self.end_device} has no Registration; the configured PIN "
                    "cannot be checked, so the server's controls are not followed"
                )
            return
        reg = await self._fetch(device.RegistrationLink.href, Registration, rate, mono)
        assert reg is not None  # noqa: S101
        if self.pin is None:
            self.pin_ok = None
            return
        self.pin_ok = pin_matches(self.pin, reg.pIN)
        if not self.pin_ok:
            self._programs = []  # a server that is not our utility's controls nothing
            raise RegistrationError(
                f"Registration {device.RegistrationLink.href} carries PIN {reg.pIN}, not the "
                f"configured {self.pin}: this server is not the one the device was enrolled "
                "with; its controls are not followed. Check ieee2030_5.pin with the utility"
            )

    async def _programs_of(self, device: EndDevice, rate: float, mono: float) -> None:
        programs: dict[str, tuple[DERProgram, float]] = {}
        if device.FunctionSetAssignmentsListLink is not None:
            href = device.FunctionSetAssignmentsListLink.href
            _, assignments = await self._list(
                href, FunctionSetAssignmentsList, "FunctionSetAssignments", rate, mono
            )
            fsa_rate = self._cache[href].rate
            for fsa in assignments:
                if fsa.DERProgramListLink is None:
                    continue
                list_href = fsa.DERProgramListLink.href
                _, found = await self._list(list_href, DERProgramList, "DERProgram", fsa_rate, mono)
                list_rate = self._cache[list_href].rate
                for prog in found:
                    if prog.href is not None:
                        programs.setdefault(prog.href, (prog, list_rate))
        fresh: list[_Program] = []
        for href, (doc, prog_rate) in sorted(programs.items(), key=lambda p: p[1][0].primacy):
            fresh.append(await self._program(href, doc, prog_rate, mono))
        self._programs = fresh

    async def _program(self, href: str, doc: DERProgram, rate: float, mono: float) -> _Program:
        prog = _Program(href, doc)
        if doc.DERCurveListLink is not None:
            _, curves = await self._list(
                doc.DERCurveListLink.href, DERCurveList, "DERCurve_", rate, mono
            )
            prog.curves = {c.href: c for c in curves if c.href is not None}
        if doc.DERControlListLink is not None:
            _, prog.events = await self._list(
                doc.DERControlListLink.href, DERControlList, "DERControl", rate, mono
            )
        if doc.ActiveDERControlListLink is not None:
            _, active = await self._list(
                doc.ActiveDERControlListLink.href, DERControlList, "DERControl", rate, mono
            )
            prog.active = [e.mRID.upper() for e in active]
        if doc.DefaultDERControlLink is not None:
            prog.default = await self._fetch(
                doc.DefaultDERControlLink.href, DefaultDERControl, rate, mono, required=False
            )
        return prog

    async def _report_der(self, device: EndDevice, rate: float, mono: float) -> None:
        """PUT the DER's capability and settings once, its status and availability at every
        EndDevice poll."""
        nameplate = self.config.der
        if nameplate is None or device.DERListLink is None:
            return
        _, ders = await self._list(device.DERListLink.href, DERList, "DER_", rate, mono)
        if not ders:
            return
        der: DER = ders[0]
        now = int(self.server_now())
        modes = (
            self.supported_modes
            if self.supported_modes is not None
            else frozenset(_MODE_BITS) | frozenset(_DOE_BITS)
        )
        mode_bits = sum(int(bit) for name, bit in _MODE_BITS.items() if name in modes)
        doe_bits = sum(bit for name, bit in _DOE_BITS.items() if name in modes)
        puts: list[tuple[str | None, BaseXmlModel]] = []
        if not self._reported_der:
            puts.append(
                (
                    der.DERCapabilityLink.href if der.DERCapabilityLink else None,
                    DERCapability(
                        modesSupported=f"{mode_bits:08X}",
                        rtgMaxW=_active_power(nameplate.max_w),
                        type_=_der_type(nameplate.type),
                        doeModesSupported=f"{doe_bits:02X}",
                    ),
                )
            )
            puts.append(
                (
                    der.DERSettingsLink.href if der.DERSettingsLink else None,
                    DERSettings(
                        modesEnabled=f"{mode_bits:08X}",
                        setGradW=0,
                        setMaxW=_active_power(nameplate.max_w),
                        updatedTime=now,
                        doeModesEnabled=f"{doe_bits:02X}",
                    ),
                )
            )
        self._touched.add("der-status")
        status_cached = self._cache.get("der-status")
        if status_cached is None or mono >= status_cached.due:
            puts.append(
                (der.DERStatusLink.href if der.DERStatusLink else None, DERStatus(readingTime=now))
            )
            puts.append(
                (
                    der.DERAvailabilityLink.href if der.DERAvailabilityLink else None,
                    DERAvailability(readingTime=now),
                )
            )
            self._cache["der-status"] = _Cached(der, mono + rate, rate)
        for href, doc in puts:
            if href is not None:
                await self.http.put(href, doc)
        self._reported_der = True

    # -- scheduling inputs ----------------------------------------------------------------

    def _documents(self) -> Documents:
        if self.pin_ok is False:
            return Documents()
        events: list[EventDoc] = []
        defaults: list[DefaultDoc] = []
        for prog in self._programs:
            primacy = prog.doc.primacy
            for control in prog.events:
                events.append(_event_doc(control, prog, primacy))
            if prog.default is not None:
                try:
                    modes = modes_of(prog.default.DERControlBase_, prog.curves)
                except InvalidControlError as exc:
                    self._href_errors[prog.href + "#default"] = (
                        f"DefaultDERControl of {prog.href} not followed: {exc}"
                    )
                    continue
                defaults.append(DefaultDoc(prog.href, primacy, prog.default.mRID.upper(), modes))
        return Documents(events=events, defaults=defaults)

    # -- responses and mirrors ------------------------------------------------------------

    async def _post_responses(self) -> None:
        while self._pending:
            response = self._pending[0]
            doc = DERControlResponse(
                createdDateTime=response.at,
                endDeviceLFDI=self.lfdi,
                status=ResponseType(int(response.status)),
                subject=response.mrid,
            )
            entry: dict[str, Any] = {
                "mrid": response.mrid,
                "status": int(response.status),
                "status_name": response.status.name.lower(),
                "at": _rfc3339(response.at),
            }
            try:
                http_status, _ = await self.http.post(response.reply_to, doc)
            except ServerRefusedError as exc:
                # The server refuses this one for good (4xx): log it and move on.
                entry["http_status"] = exc.status
                self._response_log.append(entry)
                self._pending.popleft()
                self._note_error(str(exc))
                if exc.status >= 500:
                    return  # the server is in trouble: try again later, in order
                continue
            except TransportError as exc:
                self._note_error(str(exc))
                return  # keep it queued; the next step retries
            entry["http_status"] = http_status
            self._response_log.append(entry)
            self._pending.popleft()

    async def _post_mirrors(self, now: float) -> None:
        if self._mirrors is None or self.post_rate_s is None or not self.registered:
            return
        mono = self._mono()
        if mono < self._next_mirror:
            return
        self._next_mirror = mono + self.post_rate_s
        try:
            posted = await self._mirrors.post(self.http, now, self.lfdi)
        except (Ieee2030_5Error, XmlRejected, StorageError) as exc:
            self._note_error(f"mirror post failed: {exc}")
            return
        self._mirror_log.extend(posted)

    # -- status ---------------------------------------------------------------------------

    def _status(self, now: float, result: StepResult) -> dict[str, Any]:
        default_modes: dict[str, Any] = {}
        for mode, effective in result.controls.items():
            if effective.source == "default":
                default_modes[mode] = effective.value.to_json()
        offset = self._offset.value
        return {
            "ts": _rfc3339(now),
            "server": self.config.server,
            "lfdi": self.lfdi,
            "sfdi": self.sfdi,
            "registered": self.registered,
            "pin_ok": self.pin_ok,
            "end_device": self.end_device,
            "clock_offset_s": None if offset is None else round(offset, 3),
            "poll_rate_s": self.poll_rate_s,
            "post_rate_s": self.post_rate_s,
            "programs": [
                {"href": p.href, "description": p.doc.description, "primacy": p.doc.primacy}
                for p in self._programs
            ],
            "events": [
                {
                    "mrid": e.mrid,
                    "program": e.program,
                    "primacy": e.primacy,
                    "description": e.description,
                    "creation_time": _rfc3339(e.creation_time),
                    "start": _rfc3339(e.start),
                    "duration": e.duration,
                    "effective_start": _rfc3339(e.effective_start),
                    "effective_end": _rfc3339(e.effective_end),
                    "status": str(e.phase),
                    "reason": e.reason,
                    "modes": {m: v.to_json() for m, v in e.modes.items()},
                }
                for e in result.events
            ],
            "default_control": default_modes or None,
            "responses": list(self._response_log),
            "mirrors": list(self._mirror_log),
            "last_error": self.last_error,
        }


def _event_doc(control: DERControl, prog: _Program, primacy: int) -> EventDoc:
    invalid: str | None = None
    modes: dict[str, Any] = {}
    try:
        modes = modes_of(control.DERControlBase_, prog.curves)
    except InvalidControlError as exc:
        invalid = str(exc)
    try:
        required = int(control.responseRequired or "0", 16)
    except ValueError:
        required, invalid = 0, f"responseRequired {control.responseRequired!r} is not hex"
    return EventDoc(
        mrid=control.mRID.upper(),
        program=prog.href,
        primacy=primacy,
        creation_time=control.creationTime,
        start=control.interval.start,
        duration=control.interval.duration,
        modes=modes,
        randomize_start=control.randomizeStart or 0,
        randomize_duration=control.randomizeDuration or 0,
        server_status=control.EventStatus_.currentStatus,
        status_time=control.EventStatus_.dateTime,
        reply_to=control.replyTo,
        response_required=required,
        description=control.description,
        invalid=invalid,
    )


def _der_type(value: int) -> DERType:
    try:
        return DERType(value)
    except ValueError:
        known = ", ".join(f"{t.value} {t.name.lower()}" for t in DERType)
        raise Ieee2030_5Error(f"ieee2030_5.der.type {value} is not a DERType ({known})") from None


def _check_key_mode(key: Path) -> None:
    try:
        mode = key.stat().st_mode
    except OSError as exc:
        raise Ieee2030_5Error(f"ieee2030_5.key_file {key}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise Ieee2030_5Error(
            f"ieee2030_5.key_file {key} has mode {stat.S_IMODE(mode):04o}: others may read the "
            f"private key. Run: chmod 600 {key}"
        )


def _configured_pin(
    config: CsipClientConfig, base_dir: Path, environ: Mapping[str, str] | None
) -> int | None:
    if config.pin is not None:
        return config.pin
    file = site_path(base_dir, config.pin_file) if config.pin_file is not None else None
    try:
        text = read_secret(
            what="ieee2030_5.pin", env_name=config.pin_env, file=file, environ=environ
        )
    except SecretError as exc:
        raise Ieee2030_5Error(str(exc)) from exc
    if text is None:
        return None
    if not text.strip().isdigit():
        raise Ieee2030_5Error("ieee2030_5.pin: the PIN must be six decimal digits")
    return int(text.strip())


# ------------------------------------------------------------------------------- bus messages


def controls_message(snapshot: Snapshot, *, publish_interval_s: float) -> dict[str, Any]:
    """The ``grid/controls`` message (bus contract 1) for a snapshot.

    ``valid_until``: two publish intervals ahead (the client republishes every interval),
    but no later than a few seconds past the next scheduled change, so a client that dies
    does not leave an ended event's limit in force for long.
    """
    now = snapshot.now
    until = now + 2 * publish_interval_s
    change = snapshot.result.next_change
    if change is not None:
        until = min(until, max(change, now) + 5.0)
    controls: dict[str, Any] = {}
    for mode, effective in sorted(snapshot.result.controls.items()):
        entry = effective.value.to_json()
        entry.update(
            {"source": effective.source, "mrid": effective.mrid, "primacy": effective.primacy}
        )
        controls[mode] = entry
    return {
        "ts": _rfc3339(now),
        "source": "ieee2030_5",
        "valid_until": _rfc3339(until),
        "controls": controls,
    }


def status_message(snapshot: Snapshot) -> Mapping[str, Any]:
    """The ``ieee2030_5/status`` message (bus contract 2)."""
    return snapshot.status
