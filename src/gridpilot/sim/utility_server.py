"""A small IEEE 2030.5 utility server over TLS 1.2 CCM8: the project's own test head-end.

It serves the resources a CSIP client walks — ``/dcap``, ``/tm``, ``/edev`` (EndDeviceList;
POST registers), ``/edev/N/reg`` (Registration with the PIN), ``/edev/N/fsa``,
``/edev/N/der`` (a DER whose DERCapability, DERSettings, DERStatus and DERAvailability the
client PUTs), ``/derp`` (DERPrograms with their primacy), ``/derp/N/derc``,
``/derp/N/actderc``, ``/derp/N/dderc`` (DefaultDERControl), ``/derp/N/dc`` (DERCurves),
``/mup`` (MirrorUsagePoints and their MirrorMeterReadings) and ``/rsp`` (Responses) —
and a Python API to program the day: events with randomization and response requests,
cancellation, supersession, the default control, poll and post rates, and a deliberately
hostile document at any path. Every Response, mirror reading and DER report the server
receives is RECORDED (``server.record``) with its server-receive time and the LFDI of the
client certificate that sent it, which is what tests assert on.

Clients are identified only by their TLS certificate (LFDI = hash of it), as in 2030.5: a
client sees only its own EndDevices and MirrorUsagePoints. Every document is written and
read through the typed models (``ieee2030_5.models``, envoy-schema); every body received
goes through ``ieee2030_5.xmlsafe`` and a bad one is answered 400 with an ``Error``
document that says why.

HTTP is plain HTTP/1.1 (h11) on an asyncio TLS server rather than an ASGI stack, because a
handler must see the client's certificate, which ASGI servers do not pass on. The server
keeps everything in memory and is meant for tests and the demo, never for production.

Server time is the machine clock plus ``clock_offset_s``, so tests can check a client
schedules on server time (from ``/tm``) and not on its own clock.

In a test::

    pki = make_test_pki(tmp_path / "pki")
    async with UtilityServer.from_pki(pki, poll_rate_s=1, post_rate_s=5) as server:
        mrid = server.add_event(
            DERControlBase(opModExpLimW=ActivePower(multiplier=0, value=5000)),
            start=server.now_s() + 10, duration=60, randomize_start=5,
        )
        ...  # run the client against server.url with pki.client_cert / client_key / ca_cert
        await server.record.wait_for(lambda r: len(r.responses_for(mrid)) >= 2, within_s=30)

Run it alone with ``python -m gridpilot.sim.utility_server --pki DIR`` (see ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import h11
from envoy_schema.server.schema.sep2.error import ErrorResponse
from envoy_schema.server.schema.sep2.metering import Reading, ReadingType
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReading,
    MirrorMeterReadingListRequest,
    MirrorMeterReadingRequest,
    MirrorUsagePoint,
    MirrorUsagePointListResponse,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.types import ReasonCodeType, TimeQualityType
from pydantic_xml import BaseXmlModel

from gridpilot.ieee2030_5.identity import lfdi as lfdi_of_der
from gridpilot.ieee2030_5.identity import sfdi as sfdi_of
from gridpilot.ieee2030_5.identity import with_check_digit
from gridpilot.ieee2030_5.models import (
    DER,
    DateTimeIntervalType,
    DefaultDERControl,
    DERAvailability,
    DERCapability,
    DERControl,
    DERControlBase,
    DERControlList,
    DERCurve,
    DERCurveList,
    DERList,
    DERProgram,
    DERProgramList,
    DERSettings,
    DERStatus,
    DeviceCapability,
    EndDevice,
    EndDeviceList,
    EndDeviceRequest,
    EventStatus,
    EventStatusType,
    FunctionSetAssignments,
    FunctionSetAssignmentsList,
    Link,
    ListLink,
    Registration,
    Response,
    ResponseType,
    Time,
)
from gridpilot.ieee2030_5.models import DERControlResponse as DERControlResponseDoc
from gridpilot.ieee2030_5.tls import PkiFiles, make_test_pki, server_context
from gridpilot.ieee2030_5.xmlsafe import (
    MAX_DOCUMENT_BYTES,
    XmlRejected,
    parse_resource,
    serialize,
)

__all__ = [
    "DEFAULT_PIN",
    "SEP_XML",
    "DerReport",
    "MirrorReading",
    "MirrorRecord",
    "RequestRecord",
    "ResponseRecord",
    "ServerRecord",
    "UtilityServer",
    "main",
    "mrid_for",
]

log = logging.getLogger(__name__)

SEP_XML = "application/sep+xml"
"""The media type of 2030.5 XML documents."""
DEFAULT_PIN = with_check_digit(11111)
"""The registration PIN served when none is set for a device: 11111 and its check digit."""

_IDLE_TIMEOUT_S = 60.0  # a keep-alive connection with no request for this long is closed
_STOP_TIMEOUT_S = 5.0
_READ_CHUNK = 65536
_DISCARD_LIMIT = 16 * 1024 * 1024  # an oversized body up to this is read and dropped
_MAX_HEADER_BYTES = 16 * 1024
_MAX_RECORDED_REQUESTS = 10_000
# The record keeps the newest of each kind: the demo runs its server for as long as the demo
# runs, and the client PUTs its DERStatus and DERAvailability every few seconds -- unbounded,
# the list grew by ~8 MB a simulated day (benchmarks/soak). Tests look at the first few.
MAX_RECORDED = 1_000
_DEFAULT_RESPONSE_REQUIRED = 0x03  # "received" and the event's progress (started, completed ...)

M = TypeVar("M", bound=BaseXmlModel)
T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# What the server records (tests assert on these)


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """A Response a client POSTed to ``/rsp``."""

    subject: str
    """The event's mRID, as the client wrote it."""
    status: int | None
    created: int | None
    """``createdDateTime`` (epoch seconds, the client's idea of server time)."""
    end_device_lfdi: str
    """The LFDI the document names."""
    lfdi: str
    """The LFDI of the TLS client certificate that sent it."""
    received_at: float
    """Server time (epoch seconds) when the server received it."""
    href: str
    """Where the server stored it (``/rsp/K``)."""

    @property
    def status_name(self) -> str:
        """``EVENT_STARTED`` etc., or the number when it is not a defined ResponseType."""
        try:
            return ResponseType(self.status).name if self.status is not None else "none"
        except ValueError:
            return str(self.status)


@dataclass(frozen=True, slots=True)
class MirrorReading:
    """One reading of a MirrorMeterReading, with the ReadingType it was posted with (or that
    the server remembered for that MirrorMeterReading's mRID)."""

    mmr_mrid: str
    description: str | None
    uom: int | None
    flow_direction: int | None
    data_qualifier: int | None
    power_of_ten: int
    interval_length: int | None
    raw_value: int | None
    start: int | None
    duration: int | None

    @property
    def value(self) -> float | None:
        """The reading in its unit: ``raw_value × 10^power_of_ten``."""
        if self.raw_value is None:
            return None
        return float(self.raw_value) * 10.0**self.power_of_ten


@dataclass(frozen=True, slots=True)
class MirrorRecord:
    """One POST that carried readings (to ``/mup`` or ``/mup/N``)."""

    mup: str
    """The MirrorUsagePoint's href (``/mup/N``)."""
    mup_mrid: str
    role_flags: int
    device_lfdi: str
    lfdi: str
    """The LFDI of the TLS client certificate that sent it."""
    received_at: float
    readings: tuple[MirrorReading, ...]


@dataclass(frozen=True, slots=True)
class DerReport:
    """A DERCapability / DERSettings / DERStatus / DERAvailability a client PUT."""

    kind: str
    path: str
    lfdi: str
    received_at: float
    document: BaseXmlModel


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """Every request the server answered (method, path, HTTP status, who, when)."""

    method: str
    path: str
    status: int
    lfdi: str
    received_at: float


@dataclass
class ServerRecord:
    """What the server received, in arrival order: the newest ``MAX_RECORDED`` responses,
    mirror posts and DER reports, and ``_MAX_RECORDED_REQUESTS`` requests. ``wait_for`` lets a
    test wait (bounded) until a condition on the record holds instead of sleeping."""

    responses: list[ResponseRecord] = field(default_factory=list)
    mirrors: list[MirrorRecord] = field(default_factory=list)
    der_reports: list[DerReport] = field(default_factory=list)
    requests: deque[RequestRecord] = field(
        default_factory=lambda: deque(maxlen=_MAX_RECORDED_REQUESTS)
    )
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def _touch(self) -> None:
        self._changed.set()

    def add_response(self, response: ResponseRecord) -> None:
        _append_bounded(self.responses, response)
        self._touch()

    def add_mirror(self, post: MirrorRecord) -> None:
        _append_bounded(self.mirrors, post)
        self._touch()

    def add_der_report(self, report: DerReport) -> None:
        _append_bounded(self.der_reports, report)
        self._touch()

    def responses_for(self, mrid: str) -> list[ResponseRecord]:
        """The Responses about the event ``mrid``, in arrival order."""
        return [r for r in self.responses if r.subject.upper() == mrid.upper()]

    def mirror_readings(self, mup: str | None = None) -> list[tuple[MirrorRecord, MirrorReading]]:
        """Every reading received (of one MirrorUsagePoint href), with its POST."""
        return [
            (post, reading)
            for post in self.mirrors
            if mup is None or post.mup == mup
            for reading in post.readings
        ]

    async def wait_for(
        self, condition: Callable[[ServerRecord], bool], *, within_s: float, what: str = ""
    ) -> None:
        """Return once ``condition(self)`` holds; ``TimeoutError`` naming ``what`` if it does
        not within ``within_s`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while not condition(self):
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"the utility server's record did not show {what or 'the condition'} "
                    f"within {within_s} s ({len(self.responses)} responses, "
                    f"{len(self.mirrors)} mirror posts, {len(self.requests)} requests)"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


def _append_bounded(items: list[T], item: T) -> None:
    """Append, dropping the oldest beyond ``MAX_RECORDED`` (a list, not a deque: tests slice
    and compare it with lists)."""
    items.append(item)
    if len(items) > MAX_RECORDED:
        del items[: len(items) - MAX_RECORDED]


# ---------------------------------------------------------------------------------------
# The server's state


@dataclass
class _Event:
    mrid: str
    program: int
    description: str | None
    creation_time: int
    start: int
    duration: int
    randomize_start: int | None
    randomize_duration: int | None
    response_required: int
    controls: DERControlBase
    device_category: str | None
    status: EventStatusType | None = None
    """Set by cancel/supersede; ``None`` means scheduled or active by the clock."""
    status_time: int | None = None
    version: int = 0


@dataclass
class _Program:
    index: int
    mrid: str
    description: str
    primacy: int
    default: DefaultDERControl | None = None
    events: dict[str, _Event] = field(default_factory=dict)
    curves: list[DERCurve] = field(default_factory=list)


@dataclass
class _EndDevice:
    index: int
    lfdi: str
    sfdi: int
    changed_time: int
    registered_at: int
    pin: int
    reports: dict[str, BaseXmlModel] = field(default_factory=dict)


@dataclass
class _MirrorPoint:
    index: int
    owner: str
    document: MirrorUsagePoint
    reading_types: dict[str, ReadingType] = field(default_factory=dict)
    descriptions: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = SEP_XML
    location: str | None = None


class _HttpError(Exception):
    """Answered with ``status`` and an Error document carrying ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_DER_REPORTS: dict[str, type[BaseXmlModel]] = {
    "dercap": DERCapability,
    "ders": DERSettings,
    "dstat": DERStatus,
    "dera": DERAvailability,
}


def mrid_for(text: str) -> str:
    """A stable 128-bit mRID (32 upper-case hex digits) derived from ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:32].upper()


def _page(items: Sequence[Any], query: dict[str, list[str]]) -> tuple[list[Any], int]:
    """2030.5 list paging: ``s`` = first index, ``l`` = how many (default all)."""
    try:
        start = int(query.get("s", ["0"])[0])
        limit = int(query.get("l", [str(len(items))])[0])
    except ValueError as exc:
        raise _HttpError(400, f"list paging parameters s/l must be integers ({exc})") from exc
    start, limit = max(start, 0), max(limit, 0)
    return list(items[start : start + limit]), len(items)


class UtilityServer:
    """The test utility server. Use as ``async with UtilityServer(...) as server`` or
    ``await start()`` / ``await stop()``; ``url`` is its base URL once started.

    Programs: one program (index 1, primacy 1) exists from the start; ``add_program``
    adds more. Events, default controls and curves belong to a program by index.
    """

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_offset_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        poll_rate_s: int = 900,
        post_rate_s: int = 300,
        registration_pin: int = DEFAULT_PIN,
    ) -> None:
        self._ssl = server_context(cert, key, ca)
        self._host = host
        self._port = port
        self._clock = clock
        self.clock_offset_s = clock_offset_s
        """Server time = ``clock()`` + this; change it at any time."""
        self.poll_rate_s = poll_rate_s
        """The pollRate served on DeviceCapability, lists and Registration."""
        self.post_rate_s = post_rate_s
        """The postRate served on EndDevices and MirrorUsagePoints."""
        self.registration_pin = registration_pin
        self.record = ServerRecord()
        self._programs: dict[int, _Program] = {}
        self._end_devices: dict[int, _EndDevice] = {}
        self._pins: dict[str, int] = {}
        self._mirrors: dict[int, _MirrorPoint] = {}
        self._raw: dict[str, _Reply] = {}
        self._response_count = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.add_program(primacy=1, description="GridPilot test utility program")

    @classmethod
    def from_pki(cls, pki: PkiFiles, **kwargs: Any) -> Self:
        """A server with the server certificate of ``make_test_pki``'s files."""
        return cls(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (TLS) on ``host:port``; port 0 takes a free one (see ``port``)."""
        if self._server is not None:
            raise RuntimeError("the utility server is already started")
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, ssl=self._ssl, ssl_handshake_timeout=10.0
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("IEEE 2030.5 test utility server listening on %s", self.url)

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Aborting the transports ends each connection's read with EOF, so its handler
        # returns by itself; cancelling is only the fallback for one that does not.
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=_STOP_TIMEOUT_S)
            for task in stuck:
                task.cancel()
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (the host the server certificate names)."""
        return f"https://{self._host}:{self._port}"

    @property
    def dcap_url(self) -> str:
        return f"{self.url}/dcap"

    # -- time -----------------------------------------------------------------------------

    def now(self) -> float:
        """Server time, epoch seconds."""
        return self._clock() + self.clock_offset_s

    def now_s(self) -> int:
        """Server time, whole epoch seconds (what 2030.5 TimeType carries)."""
        return int(self.now())

    # -- programming the day --------------------------------------------------------------

    def add_program(self, *, primacy: int, description: str = "", mrid: str | None = None) -> int:
        """Add a DERProgram; returns its index (its href is ``/derp/{index}``)."""
        index = len(self._programs) + 1
        self._programs[index] = _Program(
            index=index,
            mrid=mrid or mrid_for(f"program {index} {description}"),
            description=description or f"program {index}",
            primacy=primacy,
        )
        return index

    def add_event(
        self,
        controls: DERControlBase,
        *,
        start: int,
        duration: int,
        program: int = 1,
        mrid: str | None = None,
        creation_time: int | None = None,
        randomize_start: int | None = None,
        randomize_duration: int | None = None,
        response_required: int = _DEFAULT_RESPONSE_REQUIRED,
        description: str | None = None,
        device_category: str | None = None,
    ) -> str:
        """Schedule a DERControl in ``program``: ``start`` in server epoch seconds,
        ``duration`` seconds. Returns its mRID (generated when not given). Its status is
        Scheduled before ``start`` and Active from it (by server time) until cancelled or
        superseded."""
        prog = self._program(program)
        created = self.now_s() if creation_time is None else creation_time
        if mrid is None:
            mrid = mrid_for(f"event {program} {len(prog.events)} {start} {created}")
        mrid = mrid.upper()
        if any(mrid in p.events for p in self._programs.values()):
            raise ValueError(f"an event with mRID {mrid} already exists")
        if duration <= 0:
            raise ValueError(f"event {mrid}: duration must be positive, got {duration}")
        prog.events[mrid] = _Event(
            mrid=mrid,
            program=program,
            description=description,
            creation_time=created,
            start=start,
            duration=duration,
            randomize_start=randomize_start,
            randomize_duration=randomize_duration,
            response_required=response_required,
            controls=controls,
            device_category=device_category,
        )
        return mrid

    def cancel_event(self, mrid: str, *, randomized: bool = False) -> None:
        """Mark the event Cancelled (2), or Cancelled with randomization (3), now."""
        self._set_status(
            mrid,
            EventStatusType.CancelledWithRandomization if randomized else EventStatusType.Cancelled,
        )

    def supersede_event(self, mrid: str) -> None:
        """Mark the event Superseded (4), now (the server does this when a newer event of
        the same program replaces all of its controls)."""
        self._set_status(mrid, EventStatusType.Superseded)

    def remove_event(self, mrid: str) -> None:
        """Drop the event from its lists (as a server does once it has ended)."""
        event = self._event(mrid)
        del self._programs[event.program].events[event.mrid]

    def event_status(self, mrid: str) -> EventStatusType:
        """The status the server serves for the event now."""
        return self._status_of(self._event(mrid))

    def set_default_control(
        self,
        controls: DERControlBase | None,
        *,
        program: int = 1,
        mrid: str | None = None,
        description: str = "default control",
        **settings: int,
    ) -> None:
        """Set (or with ``None`` remove) the program's DefaultDERControl; ``settings`` are
        its setES*/setGradW fields (e.g. ``setESDelay=30000``)."""
        prog = self._program(program)
        if controls is None:
            prog.default = None
            return
        prog.default = DefaultDERControl.model_validate(
            {
                **settings,
                "href": f"/derp/{program}/dderc",
                "mRID": (mrid or mrid_for(f"default {program} {self.now()}")).upper(),
                "description": description,
                "DERControlBase_": controls,
            }
        )

    def add_curve(self, curve: DERCurve, *, program: int = 1) -> str:
        """Add a DERCurve to the program's DERCurveList; returns its href, which an event's
        curve mode links to (``opModVoltVar=Link(href=...)``)."""
        prog = self._program(program)
        href = f"/derp/{program}/dc/{len(prog.curves) + 1}"
        prog.curves.append(curve.model_copy(update={"href": href}))
        return href

    def set_pin(self, lfdi: str, pin: int) -> None:
        """The Registration PIN served to the device ``lfdi`` (default ``registration_pin``)."""
        self._pins[lfdi.upper()] = pin
        for device in self._end_devices.values():
            if device.lfdi == lfdi.upper():
                device.pin = pin

    def register_end_device(self, lfdi: str, *, pin: int | None = None) -> str:
        """Pre-register an EndDevice (as a utility does out of band); returns its href."""
        lfdi = lfdi.upper()
        if pin is not None:
            self._pins[lfdi] = pin
        return f"/edev/{self._end_device_for(lfdi, self.now_s()).index}"

    def serve_raw(
        self, path: str, body: bytes, *, status: int = 200, content_type: str = SEP_XML
    ) -> None:
        """Answer every GET of ``path`` with exactly ``body`` (a hostile or malformed
        document for a client's rejection tests) until ``clear_raw(path)``."""
        self._raw[path] = _Reply(status, body, content_type)

    def clear_raw(self, path: str) -> None:
        self._raw.pop(path, None)

    def end_device_href(self, lfdi: str) -> str | None:
        """The href of the EndDevice registered for ``lfdi``, if any."""
        for device in self._end_devices.values():
            if device.lfdi == lfdi.upper():
                return f"/edev/{device.index}"
        return None

    def mirror_usage_points(self) -> dict[str, MirrorUsagePoint]:
        """The MirrorUsagePoints created so far, by href."""
        return {f"/mup/{m.index}": m.document for m in self._mirrors.values()}

    # -- state helpers ---------------------------------------------------------------------

    def _program(self, index: int) -> _Program:
        try:
            return self._programs[index]
        except KeyError:
            raise ValueError(
                f"no program {index}; the server has programs {sorted(self._programs)}"
            ) from None

    def _event(self, mrid: str) -> _Event:
        for prog in self._programs.values():
            if mrid.upper() in prog.events:
                return prog.events[mrid.upper()]
        raise ValueError(f"no event with mRID {mrid}")

    def _set_status(self, mrid: str, status: EventStatusType) -> None:
        event = self._event(mrid)
        event.status = status
        event.status_time = self.now_s()
        event.version += 1

    def _status_of(self, event: _Event) -> EventStatusType:
        if event.status is not None:
            return event.status
        if self.now() >= event.start:
            return EventStatusType.Active
        return EventStatusType.Scheduled

    def _end_device_for(self, lfdi: str, changed_time: int) -> _EndDevice:
        for device in self._end_devices.values():
            if device.lfdi == lfdi:
                return device
        index = len(self._end_devices) + 1
        device = _EndDevice(
            index=index,
            lfdi=lfdi,
            sfdi=sfdi_of(lfdi),
            changed_time=changed_time,
            registered_at=self.now_s(),
            pin=self._pins.get(lfdi, self.registration_pin),
        )
        self._end_devices[index] = device
        return device

    # -- connections ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # never: asyncio runs each connection's callback in a task
            return
        self._connections[task] = writer
        try:
            await self._serve_connection(reader, writer)
        except (OSError, TimeoutError, h11.ProtocolError) as exc:  # OSError: resets, TLS errors
            log.debug("utility server: connection ended: %s", exc)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if not der:  # the TLS context requires one; this is a guard, not a path
            return
        client_lfdi = lfdi_of_der(der)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
        while True:
            event = await self._next_event(conn, reader)
            if isinstance(event, h11.ConnectionClosed | h11.EndOfMessage):
                return
            if not isinstance(event, h11.Request):
                return
            method = event.method.decode("ascii", "replace")
            target = event.target.decode("ascii", "replace")
            body, received = await self._read_body(conn, reader, event)
            if body is None and received is None:
                return  # the client went away mid-request
            if body is None:
                reply = self._error(
                    413, f"the body is {received} bytes or more, over {MAX_DOCUMENT_BYTES}"
                )
            else:
                reply = self._handle(method, target, body, client_lfdi)
            path = urlsplit(target).path
            self.record.requests.append(
                RequestRecord(method, path, reply.status, client_lfdi, self.now())
            )
            self.record._touch()
            headers = [
                ("Content-Type", reply.content_type),
                ("Content-Length", str(len(reply.body))),
            ]
            if reply.location is not None:
                headers.append(("Location", reply.location))
            if reply.status == 413:
                headers.append(("Connection", "close"))
            writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
            if reply.body:
                writer.write(conn.send(h11.Data(data=reply.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, request: h11.Request
    ) -> tuple[bytes | None, int | None]:
        """(body, size); (None, size) for a body over the limit, (None, None) when the
        connection ended. An oversized body is read and dropped (up to a bound) before the
        413 goes out: closing on unread data makes TCP reset the connection, and the client
        would see a reset instead of the reason."""
        declared = dict(request.headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > _DISCARD_LIMIT:
            return None, int(declared)
        body = bytearray()
        received = 0
        while True:
            part = await self._next_event(conn, reader)
            if isinstance(part, h11.Data):
                received += len(part.data)
                if received > _DISCARD_LIMIT:
                    return None, received
                if received <= MAX_DOCUMENT_BYTES:
                    body += part.data
            elif isinstance(part, h11.EndOfMessage):
                if received > MAX_DOCUMENT_BYTES:
                    return None, received
                return bytes(body), received
            else:
                return None, None

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(_READ_CHUNK), _IDLE_TIMEOUT_S)
            conn.receive_data(data)

    # -- request handling -----------------------------------------------------------------

    def _handle(self, method: str, target: str, body: bytes, lfdi: str) -> _Reply:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        if method == "GET" and path in self._raw:
            return self._raw[path]
        try:
            return self._dispatch(method, path, query, body, lfdi)
        except _HttpError as exc:
            return self._error(exc.status, exc.reason)
        except XmlRejected as exc:
            # Not str(exc): that text is written for a client keeping its last good copy.
            return self._error(400, f"{exc.where}: {exc.resource} rejected: {exc.reason}")
        except Exception as exc:  # a bug here must answer 500, not drop the connection
            log.exception("utility server: %s %s failed", method, path)
            return self._error(500, f"{method} {path}: the test server failed: {exc!r}")

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, lfdi: str
    ) -> _Reply:
        segments = [s for s in path.split("/") if s]
        where = f"{method} {path}"
        if method == "GET":
            return self._ok(self._get(segments, query, lfdi))
        if method == "POST":
            return self._post(segments, body, lfdi, where)
        if method == "PUT":
            return self._put(segments, body, lfdi, where)
        raise _HttpError(405, f"method {method} is not served at {path}")

    @staticmethod
    def _ok(document: BaseXmlModel) -> _Reply:
        return _Reply(200, serialize(document))

    @staticmethod
    def _error(status: int, reason: str) -> _Reply:
        if status >= 500:
            code = ReasonCodeType.internal_error
        elif status in {400, 413}:
            code = ReasonCodeType.invalid_request_format
        else:
            code = ReasonCodeType.invalid_request_values
        log.info("utility server answers %d: %s", status, reason)
        return _Reply(status, serialize(ErrorResponse(reasonCode=code, message=reason)))

    def _get(self, seg: list[str], query: dict[str, list[str]], lfdi: str) -> BaseXmlModel:
        match seg:
            case ["dcap"]:
                return self._dcap(lfdi)
            case ["tm"]:
                now = self.now_s()
                return Time(
                    href="/tm",
                    currentTime=now,
                    dstEndTime=0,
                    dstOffset=0,
                    dstStartTime=0,
                    localTime=now,
                    quality=TimeQualityType.level_3_source,
                    tzOffset=0,
                )
            case ["edev"]:
                mine = [d for d in self._end_devices.values() if d.lfdi == lfdi]
                page, total = _page(mine, query)
                return EndDeviceList(
                    href="/edev",
                    all_=total,
                    results=len(page),
                    pollRate=self.poll_rate_s,
                    EndDevice=[self._end_device_doc(d) for d in page] or None,
                )
            case ["edev", index, *rest]:
                return self._get_end_device(self._owned_device(index, lfdi), rest, query)
            case ["derp"]:
                progs = sorted(self._programs.values(), key=lambda p: (p.primacy, p.index))
                page, total = _page(progs, query)
                return DERProgramList(
                    href="/derp",
                    all_=total,
                    results=len(page),
                    pollRate=self.poll_rate_s,
                    DERProgram=[self._program_doc(p) for p in page] or None,
                )
            case ["derp", index, *rest]:
                return self._get_program(self._program_at(index), rest, query)
            case ["mup"]:
                mine_mups = [m for m in self._mirrors.values() if m.owner == lfdi]
                page, total = _page(mine_mups, query)
                return MirrorUsagePointListResponse(
                    href="/mup",
                    all_=total,
                    results=len(page),
                    pollRate=self.poll_rate_s,
                    mirrorUsagePoints=[m.document for m in page],
                )
            case ["mup", index]:
                return self._owned_mirror(index, lfdi).document
        raise _HttpError(404, f"nothing is served at /{'/'.join(seg)}")

    def _dcap(self, lfdi: str) -> DeviceCapability:
        mine = sum(1 for d in self._end_devices.values() if d.lfdi == lfdi)
        mups = sum(1 for m in self._mirrors.values() if m.owner == lfdi)
        return DeviceCapability(
            href="/dcap",
            pollRate=self.poll_rate_s,
            TimeLink=Link(href="/tm"),
            EndDeviceListLink=ListLink(href="/edev", all_=mine),
            MirrorUsagePointListLink=ListLink(href="/mup", all_=mups),
        )

    def _owned_device(self, index: str, lfdi: str) -> _EndDevice:
        device = self._end_devices.get(int(index)) if index.isdigit() else None
        # Another client's device is reported as absent, not forbidden: no enumeration.
        if device is None or device.lfdi != lfdi:
            raise _HttpError(404, f"no EndDevice /edev/{index} for this client")
        return device

    def _owned_mirror(self, index: str, lfdi: str) -> _MirrorPoint:
        mirror = self._mirrors.get(int(index)) if index.isdigit() else None
        if mirror is None or mirror.owner != lfdi:
            raise _HttpError(404, f"no MirrorUsagePoint /mup/{index} for this client")
        return mirror

    def _program_at(self, index: str) -> _Program:
        prog = self._programs.get(int(index)) if index.isdigit() else None
        if prog is None:
            raise _HttpError(404, f"no DERProgram /derp/{index}")
        return prog

    def _end_device_doc(self, device: _EndDevice) -> EndDevice:
        base = f"/edev/{device.index}"
        return EndDevice(
            href=base,
            sFDI=device.sfdi,
            lFDI=device.lfdi,
            changedTime=device.changed_time,
            enabled=True,
            postRate=self.post_rate_s,
            RegistrationLink=Link(href=f"{base}/reg"),
            FunctionSetAssignmentsListLink=ListLink(href=f"{base}/fsa", all_=1),
            DERListLink=ListLink(href=f"{base}/der", all_=1),
        )

    def _get_end_device(
        self, device: _EndDevice, rest: list[str], query: dict[str, list[str]]
    ) -> BaseXmlModel:
        base = f"/edev/{device.index}"
        match rest:
            case []:
                return self._end_device_doc(device)
            case ["reg"]:
                return Registration(
                    href=f"{base}/reg",
                    pollRate=self.poll_rate_s,
                    dateTimeRegistered=device.registered_at,
                    pIN=device.pin,
                )
            case ["fsa"]:
                page, total = _page([self._fsa_doc(device)], query)
                return FunctionSetAssignmentsList(
                    href=f"{base}/fsa",
                    all_=total,
                    results=len(page),
                    pollRate=self.poll_rate_s,
                    FunctionSetAssignments=page or None,
                )
            case ["fsa", "1"]:
                return self._fsa_doc(device)
            case ["der"]:
                page, total = _page([self._der_doc(device)], query)
                return DERList(
                    href=f"{base}/der",
                    all_=total,
                    results=len(page),
                    pollRate=self.poll_rate_s,
                    DER_=page,
                )
            case ["der", "1"]:
                return self._der_doc(device)
            case ["der", "1", kind] if kind in _DER_REPORTS:
                if kind not in device.reports:
                    raise _HttpError(404, f"{base}/der/1/{kind} has not been PUT yet")
                return device.reports[kind]
        raise _HttpError(404, f"nothing is served at {base}/{'/'.join(rest)}")

    def _fsa_doc(self, device: _EndDevice) -> FunctionSetAssignments:
        return FunctionSetAssignments(
            href=f"/edev/{device.index}/fsa/1",
            mRID=mrid_for(f"fsa {device.lfdi}"),
            description="GridPilot test utility assignments",
            DERProgramListLink=ListLink(href="/derp", all_=len(self._programs)),
            TimeLink=Link(href="/tm"),
        )

    def _der_doc(self, device: _EndDevice) -> DER:
        base = f"/edev/{device.index}/der/1"
        return DER(
            href=base,
            DERCapabilityLink=Link(href=f"{base}/dercap"),
            DERSettingsLink=Link(href=f"{base}/ders"),
            DERStatusLink=Link(href=f"{base}/dstat"),
            DERAvailabilityLink=Link(href=f"{base}/dera"),
        )

    def _program_doc(self, prog: _Program) -> DERProgram:
        base = f"/derp/{prog.index}"
        return DERProgram(
            href=base,
            mRID=prog.mrid,
            description=prog.description,
            primacy=prog.primacy,
            DefaultDERControlLink=Link(href=f"{base}/dderc") if prog.default else None,
            DERControlListLink=ListLink(href=f"{base}/derc", all_=len(prog.events)),
            ActiveDERControlListLink=ListLink(href=f"{base}/actderc", all_=len(self._active(prog))),
            DERCurveListLink=ListLink(href=f"{base}/dc", all_=len(prog.curves)),
        )

    def _active(self, prog: _Program) -> list[_Event]:
        now = self.now()
        return [
            e
            for e in prog.events.values()
            if self._status_of(e) is EventStatusType.Active and now < e.start + e.duration
        ]

    def _event_doc(self, event: _Event) -> DERControl:
        status = self._status_of(event)
        if event.status_time is not None:
            status_time = event.status_time
        elif status is EventStatusType.Active:
            status_time = event.start
        else:
            status_time = event.creation_time
        return DERControl(
            href=f"/derp/{event.program}/derc/{event.mrid}",
            mRID=event.mrid,
            description=event.description,
            version=event.version,
            replyTo="/rsp",
            responseRequired=f"{event.response_required:02x}",
            creationTime=event.creation_time,
            EventStatus_=EventStatus(
                currentStatus=int(status), dateTime=status_time, potentiallySuperseded=False
            ),
            interval=DateTimeIntervalType(start=event.start, duration=event.duration),
            randomizeStart=event.randomize_start,
            randomizeDuration=event.randomize_duration,
            DERControlBase_=event.controls,
            deviceCategory=event.device_category,
        )

    def _get_program(
        self, prog: _Program, rest: list[str], query: dict[str, list[str]]
    ) -> BaseXmlModel:
        base = f"/derp/{prog.index}"
        match rest:
            case []:
                return self._program_doc(prog)
            case ["derc"] | ["actderc"]:
                events = list(prog.events.values()) if rest == ["derc"] else self._active(prog)
                # 2030.5 list order for events: start ascending, then creationTime and mRID
                # descending.
                events.sort(key=lambda e: (-e.creation_time, e.mrid), reverse=True)
                events.sort(key=lambda e: e.start)
                page, total = _page(events, query)
                return DERControlList(
                    href=f"{base}/{rest[0]}",
                    all_=total,
                    results=len(page),
                    DERControl=[self._event_doc(e) for e in page] or None,
                )
            case ["derc", mrid]:
                found = prog.events.get(mrid.upper())
                if found is None:
                    raise _HttpError(404, f"no DERControl {mrid} in {base}")
                return self._event_doc(found)
            case ["dderc"]:
                if prog.default is None:
                    raise _HttpError(404, f"{base} has no DefaultDERControl")
                return prog.default
            case ["dc"]:
                page, total = _page(prog.curves, query)
                return DERCurveList(
                    href=f"{base}/dc", all_=total, results=len(page), DERCurve_=page or None
                )
            case ["dc", number] if number.isdigit() and 0 < int(number) <= len(prog.curves):
                return prog.curves[int(number) - 1]
        raise _HttpError(404, f"nothing is served at {base}/{'/'.join(rest)}")

    # -- POST / PUT -----------------------------------------------------------------------

    def _post(self, seg: list[str], body: bytes, lfdi: str, where: str) -> _Reply:
        match seg:
            case ["edev"]:
                return self._register(parse_resource(body, EndDeviceRequest, where=where), lfdi)
            case ["rsp"]:
                return self._response(body, lfdi, where)
            case ["mup"]:
                return self._post_mirror_usage_point(
                    parse_resource(body, MirrorUsagePointRequest, where=where), lfdi
                )
            case ["mup", index]:
                return self._post_mirror_readings(self._owned_mirror(index, lfdi), body, where)
        raise _HttpError(405, f"POST is not accepted at /{'/'.join(seg)}")

    def _register(self, request: EndDeviceRequest, lfdi: str) -> _Reply:
        expected_sfdi = sfdi_of(lfdi)
        if request.sFDI != expected_sfdi:
            raise _HttpError(
                400,
                f"EndDevice sFDI {request.sFDI} is not the SFDI of the client certificate "
                f"({expected_sfdi}); register the device the certificate belongs to",
            )
        if request.lFDI is not None and request.lFDI.upper() != lfdi:
            raise _HttpError(
                400,
                f"EndDevice lFDI {request.lFDI} is not the LFDI of the client certificate ({lfdi})",
            )
        device = self._end_device_for(lfdi, request.changedTime)
        device.changed_time = request.changedTime
        return _Reply(201, location=f"/edev/{device.index}")

    def _response(self, body: bytes, lfdi: str, where: str) -> _Reply:
        # Clients post the generic <Response> or the DER function set's <DERControlResponse>.
        document: Response
        try:
            document = parse_resource(body, Response, where=where)
        except XmlRejected as first:
            if "<DERControlResponse>" not in first.reason:
                raise
            document = parse_resource(body, DERControlResponseDoc, where=where)
        if document.endDeviceLFDI.upper() != lfdi:
            raise _HttpError(
                400,
                f"Response endDeviceLFDI {document.endDeviceLFDI} is not the LFDI of the "
                f"client certificate ({lfdi})",
            )
        self._response_count += 1
        href = f"/rsp/{self._response_count}"
        self.record.add_response(
            ResponseRecord(
                subject=document.subject,
                status=None if document.status is None else int(document.status),
                created=document.createdDateTime,
                end_device_lfdi=document.endDeviceLFDI.upper(),
                lfdi=lfdi,
                received_at=self.now(),
                href=href,
            )
        )
        return _Reply(201, location=href)

    def _post_mirror_usage_point(self, request: MirrorUsagePointRequest, lfdi: str) -> _Reply:
        existing = next(
            (
                m
                for m in self._mirrors.values()
                if m.owner == lfdi and m.document.mRID.upper() == request.mRID.upper()
            ),
            None,
        )
        mirror = existing
        if mirror is None:
            index = len(self._mirrors) + 1
            mirror = _MirrorPoint(index=index, owner=lfdi, document=request)
            self._mirrors[index] = mirror
        href = f"/mup/{mirror.index}"
        # Keep the client's description of the point; serve it with our href and postRate.
        mirror.document = MirrorUsagePoint.model_validate(
            {
                **request.model_dump(),
                "href": href,
                "postRate": self.post_rate_s,
                "mirrorMeterReadings": None,
            }
        )
        self._take_readings(mirror, list(request.mirrorMeterReadings or []))
        return _Reply(201, location=href)

    def _post_mirror_readings(self, mirror: _MirrorPoint, body: bytes, where: str) -> _Reply:
        readings: list[MirrorMeterReading]
        try:
            single = parse_resource(body, MirrorMeterReadingRequest, where=where)
            readings = [single]
        except XmlRejected as first:
            if "<MirrorMeterReadingList>" not in first.reason:
                raise
            many = parse_resource(body, MirrorMeterReadingListRequest, where=where)
            readings = list(many.mirrorMeterReadings or [])
        if not readings:
            raise _HttpError(400, f"{where}: the document carries no MirrorMeterReading")
        self._take_readings(mirror, readings)
        return _Reply(201, location=f"/mup/{mirror.index}")

    def _take_readings(self, mirror: _MirrorPoint, readings: list[MirrorMeterReading]) -> None:
        taken: list[MirrorReading] = []
        for mmr in readings:
            key = mmr.mRID.upper()
            if mmr.readingType is not None:
                mirror.reading_types[key] = mmr.readingType
            if mmr.description is not None or key not in mirror.descriptions:
                mirror.descriptions[key] = mmr.description
            reading_type = mirror.reading_types.get(key)
            values: list[Reading] = [mmr.reading] if mmr.reading is not None else []
            for reading_set in mmr.mirrorReadingSets or []:
                values += reading_set.readings or []
            if values and reading_type is None:
                raise _HttpError(
                    400,
                    f"MirrorMeterReading {key} carries readings but no ReadingType was ever "
                    "posted for it; send readingType with its first post",
                )
            for value in values:
                taken.append(
                    _mirror_reading(key, mirror.descriptions.get(key), reading_type, value)
                )
        if not taken:
            return
        doc = mirror.document
        self.record.add_mirror(
            MirrorRecord(
                mup=f"/mup/{mirror.index}",
                mup_mrid=doc.mRID.upper(),
                role_flags=int(doc.roleFlags, 16),
                device_lfdi=doc.deviceLFDI.upper(),
                lfdi=mirror.owner,
                received_at=self.now(),
                readings=tuple(taken),
            )
        )

    def _put(self, seg: list[str], body: bytes, lfdi: str, where: str) -> _Reply:
        match seg:
            case ["edev", index, "der", "1", kind] if kind in _DER_REPORTS:
                device = self._owned_device(index, lfdi)
                document = parse_resource(body, _DER_REPORTS[kind], where=where)
                path = f"/edev/{device.index}/der/1/{kind}"
                device.reports[kind] = document.model_copy(update={"href": path})
                self.record.add_der_report(
                    DerReport(
                        kind=type(document).__name__,
                        path=path,
                        lfdi=lfdi,
                        received_at=self.now(),
                        document=document,
                    )
                )
                return _Reply(204)
        raise _HttpError(405, f"PUT is not accepted at /{'/'.join(seg)}")


def _mirror_reading(
    mmr: str, description: str | None, reading_type: ReadingType | None, reading: Reading
) -> MirrorReading:
    period = reading.timePeriod
    rt = reading_type or ReadingType()
    return MirrorReading(
        mmr_mrid=mmr,
        description=description,
        uom=None if rt.uom is None else int(rt.uom),
        flow_direction=None if rt.flowDirection is None else int(rt.flowDirection),
        data_qualifier=None if rt.dataQualifier is None else int(rt.dataQualifier),
        power_of_ten=rt.powerOfTenMultiplier or 0,
        interval_length=rt.intervalLength,
        raw_value=reading.value,
        start=None if period is None else period.start,
        duration=None if period is None else period.duration,
    )


# ---------------------------------------------------------------------------------------
# Running it alone (for the demo and by hand)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gridpilot.sim.utility_server",
        description="GridPilot's IEEE 2030.5 test utility server (TLS 1.2 CCM8, loopback).",
    )
    parser.add_argument(
        "--pki",
        type=Path,
        required=True,
        help="directory with ca.crt, server.crt/.key (a test PKI is created there if absent, "
        "with a client certificate client.crt/.key for GridPilot)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 takes a free port (printed)")
    parser.add_argument("--poll-rate", type=int, default=60, help="pollRate served, seconds")
    parser.add_argument("--post-rate", type=int, default=60, help="postRate served, seconds")
    parser.add_argument("--pin", type=int, default=DEFAULT_PIN, help="registration PIN served")
    parser.add_argument(
        "--export-limit-w",
        type=float,
        default=None,
        help="schedule an opModExpLimW event of this many watts",
    )
    parser.add_argument("--event-in", type=int, default=60, help="the event starts in N s")
    parser.add_argument("--event-duration", type=int, default=600, help="event duration, s")
    return parser


def _pki_files(directory: Path) -> PkiFiles:
    if (directory / "server.crt").exists():
        return PkiFiles(
            directory=directory,
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
            client_cert=directory / "client.crt",
            client_key=directory / "client.key",
            clients={"client": (directory / "client.crt", directory / "client.key")},
        )
    return make_test_pki(directory)


async def _run(args: argparse.Namespace) -> None:
    from gridpilot.ieee2030_5.models import ActivePower  # noqa: PLC0415 - CLI-only import

    pki = _pki_files(args.pki)
    server = UtilityServer.from_pki(
        pki,
        host=args.host,
        port=args.port,
        poll_rate_s=args.poll_rate,
        post_rate_s=args.post_rate,
        registration_pin=args.pin,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        event = None
        if args.export_limit_w is not None:
            event = server.add_event(
                DERControlBase(
                    opModExpLimW=ActivePower(multiplier=0, value=round(args.export_limit_w))
                ),
                start=server.now_s() + args.event_in,
                duration=args.event_duration,
                description=f"export limit {args.export_limit_w:g} W",
            )
        ready = {
            "url": server.url,
            "dcap": server.dcap_url,
            "port": server.port,
            "ca": str(pki.ca_cert),
            "client_cert": str(pki.client_cert),
            "client_key": str(pki.client_key),
            "event": event,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        await stop.wait()
        summary = {
            "responses": [dataclasses.asdict(r) for r in server.record.responses],
            "mirror_posts": len(server.record.mirrors),
            "stopped_at": dt.datetime.fromtimestamp(server.now(), dt.UTC).isoformat(),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT. Prints one JSON line when it listens (url,
    port, the client certificate files) and one with what it recorded when it stops."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
