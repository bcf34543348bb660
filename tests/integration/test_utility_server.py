"""The IEEE 2030.5 test utility server over a real TLS 1.2 CCM8 connection (httpx with the
client certificate): discovery and registration, events on server time with cancellation
and supersession, the record of Responses and mirror readings, DER reports, hostile
documents served on purpose, malformed bodies refused with 400 and a reason, and the
stand-alone process stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from envoy_schema.server.schema.sep2.error import ErrorResponse
from envoy_schema.server.schema.sep2.metering import Reading, ReadingType
from envoy_schema.server.schema.sep2.metering_mirror import (
    MirrorMeterReadingListRequest,
    MirrorMeterReadingRequest,
    MirrorUsagePointRequest,
)
from envoy_schema.server.schema.sep2.types import (
    DataQualifierType,
    FlowDirectionType,
    ServiceKind,
    UomType,
)
from pydantic_xml import BaseXmlModel

from gridpilot.ieee2030_5.identity import lfdi_of_pem, sfdi
from gridpilot.ieee2030_5.mirror import (
    DER_CHANNELS,
    SITE_CHANNELS,
    MirrorRole,
    MirrorSpec,
    mirror_meter_readings,
    mirror_usage_point,
)
from gridpilot.ieee2030_5.models import (
    ActivePower,
    CurveData,
    DateTimeIntervalType,
    DefaultDERControl,
    DERCapability,
    DERControl,
    DERControlBase,
    DERControlList,
    DERCurve,
    DERCurveList,
    DERCurveType,
    DERList,
    DERProgramList,
    DERStatus,
    DERUnitRefType,
    DeviceCapability,
    EndDeviceList,
    EndDeviceRequest,
    FunctionSetAssignmentsList,
    Link,
    Registration,
    Response,
    Time,
)
from gridpilot.ieee2030_5.models import DERControlResponse as DERControlResponseDoc
from gridpilot.ieee2030_5.tls import PkiFiles, client_context, make_test_pki
from gridpilot.ieee2030_5.xmlsafe import parse_resource, serialize
from gridpilot.sim.utility_server import DEFAULT_PIN, SEP_XML, UtilityServer

M = TypeVar("M", bound=BaseXmlModel)

pytestmark = pytest.mark.integration

_TIMEOUT_S = 10.0
_OFFSET_S = 3600.0  # server clock one hour ahead of this machine's


@pytest.fixture
def pki(tmp_path: Path) -> PkiFiles:
    return make_test_pki(tmp_path / "pki", clients=("site", "neighbour"))


@pytest.fixture
async def server(pki: PkiFiles) -> AsyncIterator[UtilityServer]:
    async with UtilityServer.from_pki(
        pki, clock_offset_s=_OFFSET_S, poll_rate_s=5, post_rate_s=10
    ) as srv:
        yield srv


def _client(pki: PkiFiles, server: UtilityServer, name: str = "site") -> httpx.AsyncClient:
    cert, key = pki.clients[name]
    return httpx.AsyncClient(
        base_url=server.url,
        verify=client_context(cert, key, pki.ca_cert),
        timeout=_TIMEOUT_S,
        headers={"Accept": SEP_XML, "Content-Type": SEP_XML},
    )


@pytest.fixture
async def client(pki: PkiFiles, server: UtilityServer) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(pki, server) as http:
        yield http


def _lfdi(pki: PkiFiles, name: str = "site") -> str:
    return lfdi_of_pem(pki.clients[name][0].read_bytes())


async def _get(http: httpx.AsyncClient, path: str, model: type[M]) -> M:
    reply = await http.get(path)
    assert reply.status_code == 200, (path, reply.status_code, reply.text)
    return parse_resource(reply.content, model, where=f"GET {path}")


async def _register(http: httpx.AsyncClient, server: UtilityServer, lfdi: str) -> str:
    reply = await http.post(
        "/edev",
        content=serialize(EndDeviceRequest(sFDI=sfdi(lfdi), lFDI=lfdi, changedTime=server.now_s())),
    )
    assert reply.status_code == 201, reply.text
    return reply.headers["location"]


def _reason(reply: httpx.Response) -> str:
    error = parse_resource(reply.content, ErrorResponse, where="error")
    assert error.message is not None
    return error.message


def _export_limit(watts: int) -> DERControlBase:
    return DERControlBase(opModExpLimW=ActivePower(multiplier=0, value=watts))


async def test_discovery_walk_over_tls12_ccm8(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    lfdi = _lfdi(pki)
    reply = await client.get("/dcap")
    tls = reply.extensions["network_stream"].get_extra_info("ssl_object")
    assert (tls.version(), tls.cipher()[0]) == ("TLSv1.2", "ECDHE-ECDSA-AES128-CCM8")
    dcap = parse_resource(reply.content, DeviceCapability, where="dcap")
    assert dcap.pollRate == 5
    assert dcap.TimeLink is not None
    assert dcap.EndDeviceListLink is not None
    assert dcap.EndDeviceListLink.all_ == 0

    tm = await _get(client, dcap.TimeLink.href, Time)
    assert abs(tm.currentTime - server.now()) <= 2
    assert tm.currentTime - _OFFSET_S > 0  # the offset is served, not this machine's time

    assert (await _get(client, "/edev", EndDeviceList)).all_ == 0
    edev_href = await _register(client, server, lfdi)
    assert edev_href == "/edev/1"
    assert await _register(client, server, lfdi) == edev_href  # registering again: same one

    listed = await _get(client, dcap.EndDeviceListLink.href, EndDeviceList)
    assert listed.all_ == 1
    assert listed.EndDevice is not None
    device = listed.EndDevice[0]
    assert (device.href, device.lFDI, device.sFDI) == (edev_href, lfdi, sfdi(lfdi))
    assert device.postRate == 10
    assert device.RegistrationLink is not None
    reg = await _get(client, device.RegistrationLink.href, Registration)
    assert reg.pIN == DEFAULT_PIN == 111115

    assert device.FunctionSetAssignmentsListLink is not None
    fsas = await _get(
        client, device.FunctionSetAssignmentsListLink.href, FunctionSetAssignmentsList
    )
    assert fsas.FunctionSetAssignments is not None
    derp_link = fsas.FunctionSetAssignments[0].DERProgramListLink
    assert derp_link is not None

    second = server.add_program(primacy=0, description="emergency")
    programs = await _get(client, derp_link.href, DERProgramList)
    assert programs.DERProgram is not None
    # Listed in primacy order: the lower number (higher priority) first.
    assert [(p.href, p.primacy) for p in programs.DERProgram] == [
        (f"/derp/{second}", 0),
        ("/derp/1", 1),
    ]
    first = programs.DERProgram[1]
    assert first.DERControlListLink is not None
    assert first.ActiveDERControlListLink is not None
    assert first.DERCurveListLink is not None
    assert first.DefaultDERControlLink is None  # none set yet

    assert device.DERListLink is not None
    ders = await _get(client, device.DERListLink.href, DERList)
    assert ders.DER_ is not None
    assert ders.DER_[0].DERCapabilityLink is not None


async def test_clients_see_only_their_own_end_devices(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    href = await _register(client, server, _lfdi(pki))
    async with _client(pki, server, "neighbour") as neighbour:
        assert (await _get(neighbour, "/edev", EndDeviceList)).all_ == 0
        assert (await neighbour.get(href)).status_code == 404
        assert (await neighbour.get(f"{href}/reg")).status_code == 404
        # Registering with someone else's identity is refused with the reason.
        reply = await neighbour.post(
            "/edev",
            content=serialize(EndDeviceRequest(sFDI=sfdi(_lfdi(pki)), changedTime=server.now_s())),
        )
        assert reply.status_code == 400
        assert "is not the SFDI of the client certificate" in _reason(reply)


async def test_pre_registered_device_gets_its_own_pin(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    href = server.register_end_device(_lfdi(pki), pin=123453)
    listed = await _get(client, "/edev", EndDeviceList)
    assert listed.EndDevice is not None
    assert [d.href for d in listed.EndDevice] == [href]
    assert (await _get(client, f"{href}/reg", Registration)).pIN == 123453


async def test_events_follow_server_time_and_are_cancelled_and_superseded(
    server: UtilityServer, client: httpx.AsyncClient
) -> None:
    now = server.now_s()
    later = server.add_event(
        _export_limit(4000), start=now + 600, duration=300, creation_time=now - 10
    )
    running = server.add_event(
        _export_limit(5000),
        start=now - 60,
        duration=600,
        randomize_start=30,
        randomize_duration=-20,
        response_required=0x03,
        description="running",
    )
    events = await _get(client, "/derp/1/derc", DERControlList)
    assert events.DERControl is not None
    by_mrid = {e.mRID: e for e in events.DERControl}
    # Listed by start time; statuses from the server clock (offset included).
    assert [e.mRID for e in events.DERControl] == [running, later]
    assert by_mrid[later].EventStatus_.currentStatus == 0  # scheduled
    assert by_mrid[running].EventStatus_.currentStatus == 1  # active
    run = by_mrid[running]
    assert (run.interval.start, run.interval.duration) == (now - 60, 600)
    assert (run.randomizeStart, run.randomizeDuration) == (30, -20)
    assert (run.replyTo, run.responseRequired) == ("/rsp", "03")
    assert run.DERControlBase_.opModExpLimW == ActivePower(multiplier=0, value=5000)
    assert run.description == "running"

    active = await _get(client, "/derp/1/actderc", DERControlList)
    assert [e.mRID for e in active.DERControl or []] == [running]
    paged = await _get(client, "/derp/1/derc?s=1&l=1", DERControlList)
    assert (paged.all_, paged.results) == (2, 1)
    assert [e.mRID for e in paged.DERControl or []] == [later]
    single = await _get(client, f"/derp/1/derc/{running}", DERControl)
    assert single.mRID == running

    server.cancel_event(running)
    server.cancel_event(later, randomized=True)
    events = await _get(client, "/derp/1/derc", DERControlList)
    statuses = {e.mRID: e.EventStatus_ for e in events.DERControl or []}
    assert statuses[running].currentStatus == 2
    assert statuses[later].currentStatus == 3
    assert abs(statuses[running].dateTime - server.now()) <= 2
    assert (await _get(client, "/derp/1/actderc", DERControlList)).all_ == 0

    replacement = server.add_event(_export_limit(3000), start=now, duration=60)
    server.supersede_event(replacement)
    assert server.event_status(replacement).value == 4
    server.remove_event(replacement)
    assert (await _get(client, "/derp/1/derc", DERControlList)).all_ == 2

    # Moving the server clock past the start activates a scheduled event.
    soon = server.add_event(_export_limit(2000), start=now + 100, duration=100)
    assert server.event_status(soon).value == 0
    server.clock_offset_s += 150
    assert [
        e.mRID for e in (await _get(client, "/derp/1/actderc", DERControlList)).DERControl or []
    ] == [soon]


async def test_default_control_and_curves(server: UtilityServer, client: httpx.AsyncClient) -> None:
    server.set_default_control(
        DERControlBase(opModConnect=True, opModExpLimW=ActivePower(multiplier=1, value=1500)),
        setESDelay=30000,
    )
    curve_href = server.add_curve(
        DERCurve(
            mRID="C0FFEE",
            creationTime=server.now_s(),
            CurveData_=[
                CurveData(xvalue=92, yvalue=44),
                CurveData(xvalue=98, yvalue=0),
                CurveData(xvalue=102, yvalue=0),
                CurveData(xvalue=108, yvalue=-44),
            ],
            curveType=DERCurveType.OP_MOD_VOLT_VAR,
            xMultiplier=0,
            yMultiplier=0,
            yRefType=DERUnitRefType(3),
        )
    )
    event = server.add_event(
        DERControlBase(opModVoltVar=Link(href=curve_href)), start=server.now_s(), duration=60
    )
    default = await _get(client, "/derp/1/dderc", DefaultDERControl)
    assert default.DERControlBase_.opModConnect is True
    assert default.DERControlBase_.opModExpLimW == ActivePower(multiplier=1, value=1500)
    assert default.setESDelay == 30000
    curves = await _get(client, "/derp/1/dc", DERCurveList)
    assert curves.DERCurve_ is not None
    assert [(c.href, c.curveType) for c in curves.DERCurve_] == [
        (curve_href, DERCurveType.OP_MOD_VOLT_VAR)
    ]
    assert [(p.xvalue, p.yvalue) for p in curves.DERCurve_[0].CurveData_] == [
        (92, 44),
        (98, 0),
        (102, 0),
        (108, -44),
    ]
    control = await _get(client, f"/derp/1/derc/{event}", DERControl)
    assert control.DERControlBase_.opModVoltVar == Link(href=curve_href)

    server.set_default_control(None)
    assert (await client.get("/derp/1/dderc")).status_code == 404


async def test_responses_are_recorded_with_server_time_and_sender(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    lfdi = _lfdi(pki)
    event = server.add_event(_export_limit(5000), start=server.now_s(), duration=60)
    created = server.now_s()
    received = Response(endDeviceLFDI=lfdi, subject=event, status=1, createdDateTime=created)
    reply = await client.post("/rsp", content=serialize(received))
    assert reply.status_code == 201
    assert reply.headers["location"] == "/rsp/1"
    started = DERControlResponseDoc(
        endDeviceLFDI=lfdi, subject=event, status=2, createdDateTime=created + 1
    )
    assert (await client.post("/rsp", content=serialize(started))).status_code == 201
    await server.record.wait_for(
        lambda r: len(r.responses_for(event)) == 2, within_s=_TIMEOUT_S, what="2 responses"
    )
    first, second = server.record.responses_for(event)
    assert (first.status, first.status_name, first.created) == (1, "EVENT_RECEIVED", created)
    assert (second.status, second.status_name, second.created) == (2, "EVENT_STARTED", created + 1)
    for record in (first, second):
        assert record.lfdi == record.end_device_lfdi == lfdi
        # Received on the server's clock (one hour ahead of this machine's).
        assert abs(record.received_at - server.now()) < _TIMEOUT_S

    with pytest.raises(TimeoutError, match="a third response"):
        await server.record.wait_for(
            lambda r: len(r.responses) == 3, within_s=0.05, what="a third response"
        )

    forged = Response(endDeviceLFDI="AB" * 20, subject=event, status=3, createdDateTime=created)
    reply = await client.post("/rsp", content=serialize(forged))
    assert reply.status_code == 400
    assert "is not the LFDI of the client certificate" in _reason(reply)
    assert len(server.record.responses) == 2


def _reading_type(uom: UomType, flow: FlowDirectionType, power_of_ten: int) -> ReadingType:
    return ReadingType(
        uom=uom,
        flowDirection=flow,
        dataQualifier=DataQualifierType.AVERAGE,
        powerOfTenMultiplier=power_of_ten,
        intervalLength=10,
    )


async def test_mirror_usage_point_and_readings_are_recorded(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    lfdi = _lfdi(pki)
    start = server.now_s() - 10
    mup = MirrorUsagePointRequest(
        mRID="5173",
        description="site",
        roleFlags="03",
        serviceCategoryKind=ServiceKind.ELECTRICITY,
        status=1,
        deviceLFDI=lfdi,
        mirrorMeterReadings=[
            MirrorMeterReadingRequest(
                mRID="A1",
                description="site active power",
                readingType=_reading_type(UomType.REAL_POWER_WATT, FlowDirectionType.FORWARD, 0),
            )
        ],
    )
    reply = await client.post("/mup", content=serialize(mup))
    assert (reply.status_code, reply.headers["location"]) == (201, "/mup/1")
    # The same mRID again is the same point (a client restarting), not a new one.
    assert (await client.post("/mup", content=serialize(mup))).headers["location"] == "/mup/1"
    served = await _get(client, "/mup/1", MirrorUsagePointRequest)
    assert (served.postRate, served.roleFlags, served.deviceLFDI) == (10, "03", lfdi)

    power = MirrorMeterReadingRequest(
        mRID="A1",
        reading=Reading(value=-4250, timePeriod=DateTimeIntervalType(start=start, duration=10)),
    )
    assert (await client.post("/mup/1", content=serialize(power))).status_code == 201
    batch = MirrorMeterReadingListRequest(
        mirrorMeterReadings=[
            MirrorMeterReadingRequest(
                mRID="B2",
                description="site voltage",
                readingType=_reading_type(UomType.VOLTAGE, FlowDirectionType.NOT_APPLICABLE, -1),
                reading=Reading(
                    value=2314, timePeriod=DateTimeIntervalType(start=start, duration=10)
                ),
            ),
            MirrorMeterReadingRequest(
                mRID="A1",
                reading=Reading(
                    value=-4100, timePeriod=DateTimeIntervalType(start=start + 10, duration=10)
                ),
            ),
        ]
    )
    assert (await client.post("/mup/1", content=serialize(batch))).status_code == 201
    await server.record.wait_for(
        lambda r: len(r.mirror_readings("/mup/1")) == 3, within_s=_TIMEOUT_S, what="3 readings"
    )
    readings = [reading for _, reading in server.record.mirror_readings("/mup/1")]
    assert [(r.mmr_mrid, r.uom, r.flow_direction, r.value) for r in readings] == [
        ("A1", 38, 1, -4250.0),
        ("B2", 29, 0, pytest.approx(231.4)),
        ("A1", 38, 1, -4100.0),
    ]
    assert readings[0].description == "site active power"  # remembered from the MUP post
    assert (readings[0].data_qualifier, readings[0].interval_length) == (2, 10)
    assert (readings[0].start, readings[0].duration) == (start, 10)
    post = server.record.mirrors[0]
    assert (post.mup_mrid, post.role_flags, post.device_lfdi, post.lfdi) == ("5173", 3, lfdi, lfdi)

    unknown = MirrorMeterReadingRequest(
        mRID="C3",
        reading=Reading(value=1, timePeriod=DateTimeIntervalType(start=start, duration=10)),
    )
    reply = await client.post("/mup/1", content=serialize(unknown))
    assert reply.status_code == 400
    assert "no ReadingType was ever posted" in _reason(reply)
    async with _client(pki, server, "neighbour") as neighbour:
        assert (await neighbour.post("/mup/1", content=serialize(power))).status_code == 404


async def test_der_reports_are_recorded_and_served_back(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    href = await _register(client, server, _lfdi(pki))
    capability = DERCapability(
        modesSupported="00500088",
        rtgMaxW=ActivePower(multiplier=3, value=100),
        type_=4,
        doeModesSupported="03",
    )
    reply = await client.put(f"{href}/der/1/dercap", content=serialize(capability))
    assert reply.status_code == 204, reply.text
    status = DERStatus(readingTime=server.now_s())
    assert (await client.put(f"{href}/der/1/dstat", content=serialize(status))).status_code == 204
    assert [(r.kind, r.path) for r in server.record.der_reports] == [
        ("DERCapability", f"{href}/der/1/dercap"),
        ("DERStatus", f"{href}/der/1/dstat"),
    ]
    served = await _get(client, f"{href}/der/1/dercap", DERCapability)
    assert served.rtgMaxW == ActivePower(multiplier=3, value=100)
    assert (await client.get(f"{href}/der/1/ders")).status_code == 404  # not PUT yet
    # A DERStatus PUT where DERCapability belongs is refused, not stored.
    reply = await client.put(f"{href}/der/1/dercap", content=serialize(status))
    assert reply.status_code == 400
    assert "root element is <DERStatus>, expected <DERCapability>" in _reason(reply)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(
            b'<Response xmlns="urn:example:other"><subject>01</subject></Response>',
            "expected urn:ieee:std:2030.5:ns",
            id="wrong-namespace",
        ),
        pytest.param(
            b'<Response xmlns="urn:ieee:std:2030.5:ns"><status>1</status></Response>',
            "is missing",
            id="missing-fields",
        ),
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b'<Response xmlns="urn:ieee:std:2030.5:ns"><subject>&b;</subject></Response>',
            "DOCTYPE declaration",
            id="entity-expansion",
        ),
        pytest.param(b"not xml at all", "not well-formed XML", id="not-xml"),
    ],
)
async def test_malformed_posts_are_refused_with_a_reason(
    server: UtilityServer, client: httpx.AsyncClient, body: bytes, reason: str
) -> None:
    reply = await client.post("/rsp", content=body)
    assert reply.status_code == 400
    message = _reason(reply)
    assert message.startswith("POST /rsp: Response rejected: ")
    assert reason in message
    assert server.record.responses == []


async def test_oversized_body_is_refused_with_413_and_the_reason(
    server: UtilityServer, client: httpx.AsyncClient
) -> None:
    reply = await client.post("/rsp", content=b"<" + b"x" * (2 * 1024 * 1024) + b"/>")
    assert reply.status_code == 413
    assert "over 1048576" in _reason(reply)
    # The connection is closed after the 413; the server is there for the next request.
    assert (await client.get("/tm")).status_code == 200


async def test_hostile_document_is_served_verbatim_until_cleared(
    server: UtilityServer, client: httpx.AsyncClient
) -> None:
    hostile = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    )
    server.serve_raw("/derp/1/derc", hostile)
    reply = await client.get("/derp/1/derc")
    assert (reply.status_code, reply.content) == (200, hostile)
    server.clear_raw("/derp/1/derc")
    assert (await _get(client, "/derp/1/derc", DERControlList)).all_ == 0


async def test_unknown_paths_and_methods(server: UtilityServer, client: httpx.AsyncClient) -> None:
    assert (await client.get("/nowhere")).status_code == 404
    assert (await client.get("/derp/9")).status_code == 404
    assert (await client.delete("/dcap")).status_code == 405
    assert (await client.post("/tm", content=b"")).status_code == 405
    assert [r.path for r in server.record.requests][-1] == "/tm"


async def test_stand_alone_server_serves_an_export_limit_event_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot.sim.utility_server", "--pki", str(tmp_path / "pki"),
        "--export-limit-w", "5000", "--event-in", "0", "--poll-rate", "7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), _TIMEOUT_S)
        ready = json.loads(line)
        ctx = client_context(
            Path(ready["client_cert"]), Path(ready["client_key"]), Path(ready["ca"])
        )
        async with httpx.AsyncClient(base_url=ready["url"], verify=ctx, timeout=_TIMEOUT_S) as http:
            programs = await _get(http, "/derp", DERProgramList)
            assert programs.pollRate == 7
            active = await _get(http, "/derp/1/actderc", DERControlList)
        assert [e.mRID for e in active.DERControl or []] == [ready["event"]]
        assert active.DERControl is not None
        assert active.DERControl[0].DERControlBase_.opModExpLimW == ActivePower(
            multiplier=0, value=5000
        )
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), _TIMEOUT_S)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out.decode().strip().splitlines()[-1])["responses"] == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_mirror_builders_post_and_the_record_decodes_the_site_values(
    pki: PkiFiles, server: UtilityServer, client: httpx.AsyncClient
) -> None:
    lfdi = _lfdi(pki)
    site = MirrorSpec("site", MirrorRole.SITE, "grid_meter", SITE_CHANNELS)
    pv = MirrorSpec("pv", MirrorRole.DER, "pv_inverter", DER_CHANNELS)
    locations = {}
    for spec in (site, pv):
        mup = mirror_usage_point(spec, device_lfdi=lfdi, interval_s=server.post_rate_s)
        reply = await client.post("/mup", content=serialize(mup))
        assert reply.status_code == 201
        locations[spec.name] = reply.headers["location"]
    window_start = server.now_s() - server.post_rate_s
    site_values = {"active_power_w": -3100.0, "voltage_l1_v": 229.8, "frequency_hz": 50.02}
    pv_values = {"ac_power_w": 7400.0, "energy_total_wh": 1_234_567.0}
    for spec, values in ((site, site_values), (pv, pv_values)):
        readings = mirror_meter_readings(
            spec, values, device_lfdi=lfdi, window_start=window_start, interval_s=server.post_rate_s
        )
        reply = await client.post(locations[spec.name], content=serialize(readings))
        assert reply.status_code == 201, reply.text
    await server.record.wait_for(lambda r: len(r.mirrors) == 2, within_s=_TIMEOUT_S)
    site_post, pv_post = server.record.mirrors
    assert (site_post.mup, site_post.role_flags) == (locations["site"], 0x03)
    assert (pv_post.mup, pv_post.role_flags) == (locations["pv"], 0x49)
    assert {r.uom: (r.flow_direction, r.data_qualifier, r.value) for r in site_post.readings} == {
        38: (1, 2, -3100.0),
        29: (None, 2, pytest.approx(229.8)),
        33: (None, 2, pytest.approx(50.02)),
    }
    assert {r.uom: (r.flow_direction, r.value) for r in pv_post.readings} == {
        38: (19, 7400.0),
        72: (19, 1_234_567.0),
    }
    assert {(r.start, r.duration, r.interval_length) for r in site_post.readings} == {
        (window_start, 10, 10)
    }
