"""The IEEE 2030.5 client against the project's test utility server over TLS 1.2 CCM8.

Everything real: the utility server (sim/utility_server.py) on loopback with a fresh test
PKI, the client's httpx session over TLS, Mosquitto for the bus topics, and for the scripted
day the `gridpilot run ieee2030_5` process itself. The day runs on second-long events in the
SERVER's time, which is set 20 minutes ahead of the machine's, so a client scheduling on its
own clock would be visibly wrong. Responses are asserted from the server's record: status,
order and createdDateTime against each event's (effective) edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config.ieee2030_5 import CsipClientConfig, DerNameplateConfig
from gridpilot.config.models import RetentionConfig
from gridpilot.ieee2030_5.client import CsipClient, Snapshot
from gridpilot.ieee2030_5.identity import lfdi_of_pem, with_check_digit
from gridpilot.ieee2030_5.mirror import StorageMirrorPoster, specs_from_config
from gridpilot.ieee2030_5.models import (
    ActivePower,
    DERControlBase,
    DERProgram,
    DERProgramList,
    Link,
    ListLink,
)
from gridpilot.ieee2030_5.tls import PkiFiles, make_test_pki
from gridpilot.ieee2030_5.xmlsafe import serialize
from gridpilot.model import Sample
from gridpilot.model.time import parse_timestamp_ms
from gridpilot.model.topics import Topic
from gridpilot.sim.utility_server import ResponseRecord, UtilityServer
from gridpilot.storage import SqliteStorage

pytestmark = pytest.mark.integration

SERVER_AHEAD_S = 1200.0  # the utility's clock runs 20 minutes ahead of ours
PIN = with_check_digit(24680)
FOREVER = RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None, rollup_1h=None)


def watts(value: int) -> DERControlBase:
    return DERControlBase(opModExpLimW=ActivePower(value=value, multiplier=0))


@pytest.fixture
def pki(tmp_path: Path) -> PkiFiles:
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
async def server(pki: PkiFiles) -> AsyncIterator[UtilityServer]:
    async with UtilityServer.from_pki(
        pki, poll_rate_s=1, post_rate_s=300, clock_offset_s=SERVER_AHEAD_S
    ) as utility:
        utility.set_pin(lfdi_of_pem(pki.client_cert.read_bytes()), PIN)
        yield utility


def client_config(pki: PkiFiles, server: UtilityServer, **extra: Any) -> CsipClientConfig:
    return CsipClientConfig(
        server=server.url,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        ca_file=pki.ca_cert,
        pin=PIN,
        **extra,
    )


async def test_registers_checks_pin_and_discovers_programs_by_primacy(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    server.add_program(primacy=0, description="emergency")
    server.add_program(primacy=5, description="market")
    cfg = client_config(pki, server, der=DerNameplateConfig(type=83, max_w=50_000))
    async with CsipClient(cfg, base_dir=tmp_path) as client:
        snapshot = await client.step_once()
    status = snapshot.status
    assert client.last_error is None
    # Registered by POSTing its EndDevice (sFDI/lFDI of the certificate), PIN checked.
    assert status["registered"] is True
    assert status["pin_ok"] is True
    assert status["end_device"] == server.end_device_href(client.lfdi)
    assert status["lfdi"] == lfdi_of_pem(pki.client_cert.read_bytes())
    posts = [r for r in server.record.requests if r.method == "POST" and r.path == "/edev"]
    assert [(r.status, r.lfdi) for r in posts] == [(201, client.lfdi)]
    # Server time, not ours: the offset is the server's 20 minutes ahead (TimeType is
    # whole seconds; the client takes the lower bound, so within 1 s below).
    assert SERVER_AHEAD_S - 1.0 <= status["clock_offset_s"] <= SERVER_AHEAD_S + 0.05
    assert [(p["description"], p["primacy"]) for p in status["programs"]] == [
        ("emergency", 0),
        ("GridPilot test utility program", 1),
        ("market", 5),
    ]
    # The DER's four reports were PUT, capability with the nameplate (50 kW -> 5000 x 10).
    kinds = sorted(r.kind for r in server.record.der_reports)
    assert kinds == ["DERAvailability", "DERCapability", "DERSettings", "DERStatus"]
    cap = next(r.document for r in server.record.der_reports if r.kind == "DERCapability")
    assert (cap.rtgMaxW.value, cap.rtgMaxW.multiplier) == (5000, 1)  # type: ignore[attr-defined]


async def test_wrong_registration_pin_is_refused_and_nothing_is_followed(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    server.set_default_control(watts(7000))
    now = server.now_s()
    mrid = server.add_event(watts(1000), start=now - 5, duration=60)
    cfg = client_config(pki, server).model_copy(update={"pin": with_check_digit(13579)})
    async with CsipClient(cfg, base_dir=tmp_path) as client:
        snapshot = await client.step_once()
    assert snapshot.status["registered"] is True
    assert snapshot.status["pin_ok"] is False
    assert snapshot.ready is True  # "nothing in force" is then the truth to publish
    assert "PIN" in (client.last_error or "")
    assert str(PIN) in (client.last_error or "")
    assert snapshot.result.controls == {}  # neither the event nor the default
    assert server.record.responses_for(mrid) == []  # not even Received


async def test_hostile_document_is_rejected_and_last_good_controls_kept(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    now = server.now_s()
    mrid = server.add_event(watts(4000), start=now - 1, duration=120)
    cfg = client_config(pki, server, poll_rate_s=0.2)
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<DERControlList xmlns="urn:ieee:std:2030.5:ns" all="1" results="1">&c;</DERControlList>'
    )
    wrong_ns = b'<DERControlList xmlns="urn:example:evil" all="0" results="0"/>'
    huge = (
        b'<DERControlList xmlns="urn:ieee:std:2030.5:ns" all="0" results="0">'
        + (b" " * (1024 * 1024 + 1))
        + b"</DERControlList>"
    )
    async with CsipClient(cfg, base_dir=tmp_path) as client:
        first = await client.step_once()
        assert first.result.controls["opModExpLimW"].mrid == mrid
        for body, expected in ((lol, "DOCTYPE"), (wrong_ns, "urn:example:evil"), (huge, "limit")):
            server.serve_raw("/derp/1/derc", body)
            await asyncio.sleep(0.25)  # past the 0.2 s pollRate: the list is fetched again
            snapshot = await client.step_once()
            error = client.last_error or ""
            assert "/derp/1/derc" in error
            assert expected in error
            assert "previous copy" in error
            kept = snapshot.result.controls["opModExpLimW"]
            assert (kept.value.value, kept.source, kept.mrid) == (4000.0, "event", mrid)
            assert snapshot.status["last_error"] == error
        server.clear_raw("/derp/1/derc")
        await asyncio.sleep(0.25)
        healed = await client.step_once()
    assert client.last_error is None
    assert healed.result.controls["opModExpLimW"].mrid == mrid


# ----------------------------------------------------------------------------- the day


class BusWatch:
    """Every grid/controls and status message the client publishes, with arrival order."""

    def __init__(self, site: str) -> None:
        self.controls_topic = str(Topic.grid_controls(site))
        self.status_topic = str(Topic.ieee2030_5_status(site))
        self.controls: list[dict[str, Any]] = []
        self.status: dict[str, Any] | None = None
        self.changed = asyncio.Event()

    async def run(self, bus: BusClient) -> None:
        async for message in bus.messages():
            doc = orjson.loads(message.payload)
            if message.topic == self.controls_topic:
                self.controls.append(doc)
            elif message.topic == self.status_topic:
                self.status = doc
            self.changed.set()

    async def until(self, condition: Any, what: str, within_s: float = 20.0) -> None:
        async with asyncio.timeout(within_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def exp_limits(self) -> list[tuple[float, str]]:
        """The distinct export limits published, in order (value, source)."""
        out: list[tuple[float, str]] = []
        for doc in self.controls:
            mode = doc["controls"].get("opModExpLimW")
            entry = (mode["value"], mode["source"]) if mode else (math.nan, "none")
            if not out or out[-1] != entry:
                out.append(entry)
        return out

    def connect_values(self) -> list[bool]:
        out: list[bool] = []
        for doc in self.controls:
            mode = doc["controls"].get("opModConnect")
            if mode is not None and (not out or out[-1] != mode["value"]):
                out.append(mode["value"])
        return out


def edges(records: list[ResponseRecord]) -> list[tuple[int, int]]:
    return [(r.status or 0, r.created or 0) for r in records]


async def test_scripted_day_through_the_run_command(
    pki: PkiFiles, server: UtilityServer, mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    """A compressed day: an export limit of program 2 overridden by a primacy-1 event
    (aborted, 14), an event superseded by a newer one of its program (7), an event cancelled
    while running (6), a randomized start, and the DefaultDERControl in between and after;
    each response's status and createdDateTime checked against the server's record."""
    low_program = server.add_program(primacy=2, description="network support")
    server.set_default_control(
        DERControlBase(opModExpLimW=ActivePower(value=10, multiplier=3), opModConnect=True)
    )
    site = "utility-day"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "site": {"id": site},
                "broker": {"url": f"mqtt://127.0.0.1:{mosquitto.port}"},
                "ieee2030_5": {
                    "server": server.url,
                    "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key),
                    "ca_file": str(pki.ca_cert),
                    "pin": PIN,
                    "der": {"type": 4, "max_w": 10000},
                },
            }
        ),
        encoding="utf-8",
    )
    watch = BusWatch(site)
    async with BusClient(mosquitto, "ieee2030-5-day-watch") as bus:
        await bus.wait_connected(5)
        await bus.subscribe(watch.controls_topic, qos=1)
        await bus.subscribe(watch.status_topic, qos=1)
        reader = asyncio.create_task(watch.run(bus))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridpilot", "run", "ieee2030_5", str(site_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            # Program the day once the client has registered (it polls every second).
            await watch.until(
                lambda: watch.status is not None and watch.status["registered"],
                "the client's registration",
                within_s=30,
            )
            t = server.now_s() + 3
            created = server.now_s()
            low = server.add_event(watts(3000), start=t, duration=6, program=low_program)
            high = server.add_event(watts(1000), start=t + 2, duration=3)
            old = server.add_event(
                watts(2000), start=t + 6, duration=6, creation_time=created - 100
            )
            new = server.add_event(watts(1500), start=t + 8, duration=2, creation_time=created - 50)
            cancelled = server.add_event(
                DERControlBase(opModConnect=False), start=t + 11, duration=4
            )
            randomized = server.add_event(watts(2500), start=t + 13, duration=2, randomize_start=3)
            # The cancellation is the server's move: once the event has started.
            await server.record.wait_for(
                lambda rec: any(r.status == 2 for r in rec.responses_for(cancelled)),
                within_s=30,
                what="the to-be-cancelled event's Started",
            )
            server.cancel_event(cancelled)
            cancelled_at = server.now_s()
            await server.record.wait_for(
                lambda rec: any(r.status == 3 for r in rec.responses_for(randomized)),
                within_s=30,
                what="the randomized event's Completed",
            )
            await watch.until(
                lambda: (
                    watch.exp_limits()[-1:] == [(10000.0, "default")]
                    and watch.status is not None
                    and all(e["status"] != "active" for e in watch.status["events"])
                ),
                "the default control after the day",
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
            reader.cancel()
    assert proc.returncode == 0, err.decode()

    record = server.record
    lfdi = lfdi_of_pem(pki.client_cert.read_bytes())
    assert {r.lfdi for r in record.responses} == {lfdi}
    assert {r.end_device_lfdi for r in record.responses} == {lfdi}

    def check(mrid: str, expected: list[tuple[int, float]]) -> None:
        """Statuses in order; each createdDateTime at its edge (server time, whole
        seconds) and at most 2 s after it; Received before the day starts."""
        got = edges(record.responses_for(mrid))
        assert [s for s, _ in got] == [s for s, _ in expected], (mrid, got)
        for (status, at), (_, edge) in zip(got, expected, strict=True):
            assert math.floor(edge) <= at <= edge + 2, (mrid, status, at, edge)
        for r in record.responses_for(mrid):
            assert r.created is not None
            assert r.received_at >= r.created  # posted on server time, never early

    first_seen = min(r.created or 0 for r in record.responses)
    assert first_seen < t
    check(low, [(1, first_seen), (2, t), (14, t + 2)])
    check(high, [(1, first_seen), (2, t + 2), (3, t + 5)])
    check(old, [(1, first_seen), (2, t + 6), (7, t + 8)])
    check(new, [(1, first_seen), (2, t + 8), (3, t + 10)])
    check(cancelled, [(1, first_seen), (2, t + 11), (6, cancelled_at)])
    # Randomized start: the client's effective start (from its status) lies in
    # [start, start + 3] and is when it said Started; it completes 2 s later.
    assert watch.status is not None
    view = next(e for e in watch.status["events"] if e["mrid"] == randomized)
    effective = parse_timestamp_ms(view["effective_start"]) / 1000
    assert t + 13 <= effective <= t + 16
    check(randomized, [(1, first_seen), (2, effective), (3, effective + 2)])

    # What the control engine saw on grid/controls, in order.
    assert watch.exp_limits() == [
        (10000.0, "default"),
        (3000.0, "event"),
        (1000.0, "event"),
        (10000.0, "default"),  # HIGH completed; LOW was aborted and does not come back
        (2000.0, "event"),
        (1500.0, "event"),
        (10000.0, "default"),  # NEW completed; OLD was superseded
        (2500.0, "event"),
        (10000.0, "default"),
    ]
    assert watch.connect_values() == [True, False, True]
    final = watch.controls[-1]
    assert final["source"] == "ieee2030_5"
    assert final["valid_until"] > final["ts"]
    phases = {e["mrid"]: e["status"] for e in watch.status["events"]}
    assert phases == {
        low: "aborted",
        high: "completed",
        old: "superseded",
        new: "completed",
        cancelled: "cancelled",
        randomized: "completed",
    }
    assert watch.status["registered"] is True
    assert [r["status"] for r in watch.status["responses"]][-1] == 3
    assert sorted({r.kind for r in record.der_reports}) == [
        "DERAvailability",
        "DERCapability",
        "DERSettings",
        "DERStatus",
    ]


async def test_client_posts_mirror_readings_at_the_servers_post_rate(
    pki: PkiFiles, tmp_path: Path
) -> None:
    """The client drives the mirror poster every postRate (the EndDevice's, here 1 s) with
    the site's stored values (a real SQLite file)."""
    section = CsipClientConfig.model_validate(
        {
            "server": "https://127.0.0.1:1",
            "cert_file": pki.client_cert,
            "key_file": pki.client_key,
            "ca_file": pki.ca_cert,
            "pin": PIN,
            "site_meter": {"device": "grid_meter", "points": {"w": "active_power_w"}},
        }
    )
    now_ms = round(time.time() * 1000)
    samples = [
        Sample("plant", "grid_meter", "active_power_w", now_ms + (i - 600) * 100, 1234.0)
        for i in range(700)  # every 0.1 s from 60 s ago to 10 s ahead
    ]
    async with (
        UtilityServer.from_pki(pki, poll_rate_s=60, post_rate_s=1) as server,
        SqliteStorage(tmp_path / "db.sqlite", FOREVER) as storage,
    ):
        server.set_pin(lfdi_of_pem(pki.client_cert.read_bytes()), PIN)
        await storage.write(samples)
        poster = StorageMirrorPoster(storage, "plant", specs_from_config(section))
        cfg = section.model_copy(update={"server": server.url})
        async with CsipClient(cfg, base_dir=tmp_path, mirrors=poster) as client:
            updates: list[Snapshot] = []

            async def on_update(snapshot: Snapshot) -> None:
                updates.append(snapshot)

            runner = asyncio.create_task(client.run(on_update))
            try:
                await server.record.wait_for(
                    lambda rec: len(rec.mirrors) >= 3, within_s=15, what="three mirror posts"
                )
            finally:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
    assert client.post_rate_s == 1.0
    posts = server.record.mirrors[:3]
    assert {p.mup for p in posts} == {"/mup/1"}
    assert {p.role_flags for p in posts} == {0x03}
    for post in posts:
        (reading,) = post.readings
        assert (reading.uom, reading.flow_direction, reading.data_qualifier) == (38, 1, 2)
        assert reading.value == 1234.0
    # One post per postRate: consecutive posts at least ~1 s apart on the server's clock.
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(posts)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert updates[-1].status["mirrors"][-1]["http_status"] == 201


async def test_server_outage_backs_off_and_keeps_the_last_good_controls(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    now = server.now_s()
    mrid = server.add_event(watts(4200), start=now - 1, duration=300)
    cfg = client_config(pki, server, poll_rate_s=0.1, request_timeout_s=2)
    async with CsipClient(cfg, base_dir=tmp_path) as client:
        await client.step_once()
        await server.stop()
        await asyncio.sleep(0.15)
        down = await client.step_once()
        error = client.last_error or ""
        assert server.url in error
        assert "check the server address" in error
        kept = down.result.controls["opModExpLimW"]
        assert (kept.value.value, kept.mrid) == (4200.0, mrid)
        # Steps while the server is away (backing off) hold the same controls.
        requests = len(server.record.requests)
        again = await client.step_once()
        assert again.result.controls["opModExpLimW"].mrid == mrid
        # A client starting while the server is away knows nothing yet: not "ready", so
        # the service does not publish an empty grid/controls over the retained one.
        async with CsipClient(cfg, base_dir=tmp_path) as fresh:
            blind = await fresh.step_once()
        assert blind.ready is False
        assert blind.result.controls == {}
        assert down.ready is True
        await server.start()  # same port
        async with asyncio.timeout(10):
            while client.last_error is not None:
                await asyncio.sleep(0.2)
                await client.step_once()
    assert len(server.record.requests) > requests


async def test_poll_rate_is_honoured_per_resource(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    """DeviceCapability and the EndDevice say 60 s; the DERProgramList says 1 s, which also
    governs the program's lists below it. Over ~2.5 s of steps the program list and its
    DERControlList are fetched again each second, the rest once."""
    server.poll_rate_s = 60
    program_list = DERProgramList(
        href="/derp",
        all_=1,
        results=1,
        pollRate=1,
        DERProgram=[
            DERProgram(
                href="/derp/1",
                mRID="A0" * 16,
                primacy=1,
                DERControlListLink=ListLink(href="/derp/1/derc", all_=0),
            )
        ],
    )
    server.serve_raw("/derp", serialize(program_list))
    async with CsipClient(client_config(pki, server), base_dir=tmp_path) as client:
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.5
        while loop.time() < end:
            await client.step_once()
            await asyncio.sleep(0.1)
    assert client.last_error is None
    gets: dict[str, int] = {}
    for request in server.record.requests:
        if request.method == "GET":
            gets[request.path] = gets.get(request.path, 0) + 1
    assert gets["/dcap"] == 1
    assert gets["/tm"] == 1
    assert gets["/edev/1"] == 1
    assert gets["/edev/1/reg"] == 1
    assert 2 <= gets["/derp"] <= 3  # at 0, ~1 and ~2 s (a loaded machine may step later)
    assert gets["/derp/1/derc"] == gets["/derp"]


async def test_refusals_and_randomized_cancellation_are_posted(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    """Through the real server: an event already over (254), one asking a mode the site
    does not follow (252), one linking a curve that does not exist (253); and an event
    cancelled with randomization ends within its randomization window (6)."""
    now = server.now_s()
    expired = server.add_event(watts(1000), start=now - 100, duration=10)
    not_ours = server.add_event(DERControlBase(opModMaxLimW=5000), start=now + 60, duration=60)
    broken = server.add_event(
        DERControlBase(opModVoltVar=Link(href="/derp/1/dc/9")), start=now + 60, duration=60
    )
    running = server.add_event(watts(2000), start=now - 1, duration=60, randomize_duration=2)
    cfg = client_config(
        pki, server, poll_rate_s=0.2, supported_modes=("opModExpLimW", "opModVoltVar")
    )
    async with CsipClient(cfg, base_dir=tmp_path) as client:
        runner = asyncio.create_task(client.run(_ignore))
        try:
            await server.record.wait_for(
                lambda rec: any(r.status == 2 for r in rec.responses_for(running)),
                within_s=10,
                what="Started of the running event",
            )
            server.cancel_event(running, randomized=True)
            cancelled_at = server.now_s()
            await server.record.wait_for(
                lambda rec: any(r.status == 6 for r in rec.responses_for(running)),
                within_s=10,
                what="Cancelled of the running event",
            )
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    statuses = {
        m: [r.status for r in server.record.responses_for(m)] for m in (expired, not_ours, broken)
    }
    assert statuses == {expired: [254], not_ours: [252], broken: [253]}
    (cancel,) = [r for r in server.record.responses_for(running) if r.status == 6]
    assert cancel.created is not None
    # Stopped at cancellation time + U * max(|randomizeStart|, |randomizeDuration|) = + [0, 2].
    assert cancelled_at - 1 <= cancel.created <= cancelled_at + 2 + 1


async def _ignore(snapshot: Snapshot) -> None:
    del snapshot
