"""The gateway against the real simulated site (Modbus TCP) and a private Mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.codec import (
    Command,
    CommandResult,
    CommandStatus,
    decode_command_result,
    encode_command,
)
from gridpilot.config import GridPilotConfig
from gridpilot.gateway.points import polled_specs
from gridpilot.gateway.service import GatewayService
from gridpilot.model import now_ms, to_rfc3339
from gridpilot.sim.site import SimulatedSite
from tests.integration.test_gateway_support import RFC3339_MS, Observer, Record, observing

pytestmark = pytest.mark.integration

GATEWAY = "gw1"
INTERVAL_S = 0.3
WEDNESDAY_NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def gateway_config(
    site: SimulatedSite, site_id: str, interval_s: float = INTERVAL_S
) -> GridPilotConfig:
    devices = site.site_config(site_id)
    for device in devices:
        device["poll_interval"] = interval_s
        device["timeout"] = interval_s / 2
        device["retries"] = 0
    return GridPilotConfig.model_validate(
        {"site": {"id": site_id}, "gateway": {"id": GATEWAY}, "devices": devices}
    )


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(speed=1.0, start=WEDNESDAY_NOON, tick_s=0.05) as running:
        yield running


@pytest.fixture
def site_id() -> str:
    """The Mosquitto is shared by the session: each test gets its own site (topics, retained
    states, the gateway's persistent session)."""
    return f"site-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def observer(mosquitto: BrokerAddress, site_id: str) -> AsyncIterator[Observer]:
    async with observing(mosquitto, site_id, f"observer-{site_id}") as obs:
        yield obs


@pytest.fixture
async def gateway(
    site: SimulatedSite, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> AsyncIterator[GatewayService]:
    async with GatewayService(gateway_config(site, site_id), mosquitto) as service:
        # Online is announced after the command subscription is in place.
        await observer.wait_for(lambda r: is_state(r, GATEWAY, "online"))
        yield service


def is_state(record: Record, device: str, status: str) -> bool:
    return record.device == device and record.kind == "state" and record.json["status"] == status


def command(point: str, value: object, expires_in_ms: int = 10_000, **extra: object) -> dict:
    body: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "point": point,
        "value": value,
        "expires": to_rfc3339(now_ms() + expires_in_ms),
        "source": "test",
    }
    body.update(extra)
    return body


async def result_of(observer: Observer, device: str, cmd_id: str | None) -> Record:
    return await observer.wait_for(
        lambda r: r.device == device and r.kind == "command/result" and r.json["id"] == cmd_id
    )


async def test_telemetry_from_every_device_has_the_contract_shape(
    site: SimulatedSite, gateway: GatewayService, observer: Observer
) -> None:
    config = gateway.config
    for device in config.devices:
        # Three messages per device: shape, and seq counting up by one.
        await observer.wait_for(
            lambda r, d=device.id: r.device == d and len(observer.of(d, "telemetry")) >= 3
        )
        messages = observer.of(device.id, "telemetry")
        seqs = []
        for record in messages:
            body = record.json
            assert set(body) == {"ts", "seq", "values"}
            assert RFC3339_MS.match(body["ts"]), body["ts"]
            seqs.append(body["seq"])
            values = body["values"]
            expected = {spec.point for spec in polled_specs(device)}
            assert set(values) <= expected
            # Every simulated value is valid, so none is dropped.
            assert set(values) == expected, expected - set(values)
            for name, value in values.items():
                assert isinstance(value, float), (name, value)
                assert math.isfinite(value)
                point = device.point(name)
                assert point is not None
                assert point.valid_range is not None
                assert point.valid_range[0] <= value <= point.valid_range[1]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        state = await observer.wait_for(lambda r, d=device.id: is_state(r, d, "online"))
        body = state.json
        assert RFC3339_MS.match(body["since"])
        assert body["counters"]["polls"] >= 1


async def test_stopped_device_goes_offline_others_keep_their_rate_then_back_online(
    site: SimulatedSite, gateway: GatewayService, observer: Observer
) -> None:
    loop = asyncio.get_running_loop()
    await observer.wait_for(lambda r: is_state(r, "battery", "online"))
    await observer.wait_for(lambda r: r.device == "battery" and r.kind == "telemetry")

    stopped_at = loop.time()
    await site.stop_device("battery")
    offline = await observer.wait_for(
        lambda r: is_state(r, "battery", "offline") and r.at >= stopped_at, within=5
    )
    assert offline.at - stopped_at <= 3 * INTERVAL_S, offline.at - stopped_at
    error = offline.json["last_error"]
    assert error["kind"] in {"refused", "disconnected", "timeout"}
    assert error["message"]
    assert error["hint"]
    assert offline.retain is False  # a live update; the broker keeps the retained copy
    # ... and an alarm on the site's events topic says so, with the hint
    alarm = await observer.wait_for(
        lambda r: r.topic.endswith("/events") and r.json["source"] == "gateway/battery"
    )
    assert alarm.json["level"] == "alarm"
    assert alarm.json["message"].startswith("battery offline after")
    assert error["hint"] in alarm.json["message"]
    # Stay down long enough for the backoff to kick in.
    await asyncio.sleep(8 * INTERVAL_S)
    restarted_at = loop.time()
    await site.start_device("battery")
    online = await observer.wait_for(
        lambda r: is_state(r, "battery", "online") and r.at >= restarted_at, within=5
    )
    # Backoff is capped at 4 intervals early in an outage, plus one grid step.
    assert online.at - restarted_at <= 6 * INTERVAL_S, online.at - restarted_at
    back = await observer.wait_for(
        lambda r: r.topic.endswith("/events") and r.json["source"] == "gateway/battery",
        after=alarm.index,
    )
    assert back.json["level"] == "info"
    assert back.json["message"] == "battery is online again"
    await observer.wait_for(
        lambda r: r.device == "battery" and r.kind == "telemetry", after=online.index
    )

    # Meanwhile the other devices kept their rate: no gap above ~1.5 intervals.
    for other in ("grid_meter", "ahu_fan", "hvac_zone_1"):
        times = [r.at for r in observer.of(other, "telemetry", since=stopped_at)]
        window = online.at - stopped_at
        assert len(times) >= window / INTERVAL_S - 2, (other, len(times), window)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 1.5 * INTERVAL_S + 0.1, (other, max(gaps))
    assert gateway.health("battery").counters.polls_failed >= 2
    assert gateway.health("grid_meter").counters.polls_failed == 0


async def test_command_applied_with_readback_and_shown_in_next_telemetry(
    gateway: GatewayService, observer: Observer
) -> None:
    await observer.wait_for(lambda r: is_state(r, "battery", "online"))
    # Sent the way a controller sends it: through the bus codec.
    sent = Command(uuid.uuid4().hex, "active_power_setpoint_w", -20000.0, now_ms() + 10_000, "t")
    await observer.command(gateway.site, "battery", encode_command(sent))
    result = await result_of(observer, "battery", sent.id)
    assert result.topic == f"gridpilot/v1/{gateway.site}/battery/command/result"
    answer = result.json
    assert set(answer) == {"id", "status", "code", "reason", "point", "value", "readback", "ts"}
    assert answer["status"] == "applied"
    assert answer["readback"] == -20000.0
    assert answer["value"] == -20000.0
    assert answer["point"] == "active_power_setpoint_w"
    assert answer["code"] is None
    assert answer["reason"] is None
    assert RFC3339_MS.match(answer["ts"])
    decoded = decode_command_result(result.payload)
    assert decoded == CommandResult(
        sent.id,
        CommandStatus.APPLIED,
        None,
        None,
        "active_power_setpoint_w",
        -20000.0,
        -20000.0,
        decoded.ts_ms,
    )
    telemetry = await observer.wait_for(
        lambda r: r.device == "battery" and r.kind == "telemetry", after=result.index
    )
    assert telemetry.json["values"]["active_power_setpoint_w"] == -20000.0
    # Exactly one result for the command.
    await asyncio.sleep(2 * INTERVAL_S)
    results = [r for r in observer.of("battery", "command/result") if r.json["id"] == sent.id]
    assert len(results) == 1
    assert gateway.health("battery").counters.commands["applied"] == 1


async def test_bad_commands_are_rejected_with_reasons(
    gateway: GatewayService, observer: Observer
) -> None:
    cases = [
        ("battery", command("active_power_setpoint_w", 60000.0), "out_of_range", "valid range"),
        ("battery", command("active_power_setpoint_w", -1e9), "out_of_range", "valid range"),
        ("battery", command("active_power_setpoint_w", 100.0, -1), "expired", "expired at"),
        ("battery", command("active_power_setpoint_w", 100.0, -60_000), "expired", "expired at"),
        ("battery", command("soc_pct", 50.0), "not_writable", "not writable"),
        ("battery", command("no_such_point_w", 1.0), "unknown_point", "no point"),
        ("battery", command("active_power_setpoint_w", "lots"), "not_a_number", "number"),
        ("chiller", command("active_power_setpoint_w", 1.0), "unknown_device", "not configured"),
        ("ahu_fan", command("run_command_state", 2), "out_of_range", "0 or 1"),
    ]
    for device, body, _, _ in cases:
        await observer.command(gateway.site, device, body)
    for device, body, code, needle in cases:
        record = await result_of(observer, device, body["id"])
        assert decode_command_result(record.payload).status is CommandStatus.REJECTED
        answer = record.json
        assert answer["status"] == "rejected", answer
        assert answer["code"] == code, answer
        assert needle in answer["reason"], answer
        assert answer["readback"] is None
    # Nothing was written: the setpoint is still the simulator's initial one.
    mark = len(observer.records)
    telemetry = await observer.wait_for(
        lambda r: r.device == "battery" and r.kind == "telemetry", after=mark
    )
    assert telemetry.json["values"]["active_power_setpoint_w"] not in (60000.0, 100.0)
    assert gateway.health("battery").counters.commands["rejected"] == 7


async def test_malformed_command_is_rejected_and_gateway_keeps_running(
    site: SimulatedSite, gateway: GatewayService, observer: Observer
) -> None:
    await observer.command(gateway.site, "battery", b"{this is not json")
    answer = (await result_of(observer, "battery", None)).json
    assert answer["status"] == "rejected"
    assert answer["code"] == "malformed"
    await observer.command(
        gateway.site, "battery", b'{"id": "no-expiry", "point": "x_w", "value": 1}'
    )
    answer = (await result_of(observer, "battery", "no-expiry")).json
    assert answer["code"] == "malformed"
    assert "expires" in answer["reason"]
    # Still polling, still commanding.
    mark = len(observer.records)
    await observer.wait_for(lambda r: r.device == "battery" and r.kind == "telemetry", after=mark)
    body = command("active_power_setpoint_w", 12345.0)
    await observer.command(gateway.site, "battery", body)
    assert (await result_of(observer, "battery", body["id"])).json["status"] == "applied"


async def test_duplicate_command_gets_one_result(
    gateway: GatewayService, observer: Observer
) -> None:
    body = command("active_power_setpoint_w", 1000.0)
    await observer.command(gateway.site, "battery", body)
    await observer.command(gateway.site, "battery", body)
    await result_of(observer, "battery", body["id"])
    await asyncio.sleep(3 * INTERVAL_S)
    results = [r for r in observer.of("battery", "command/result") if r.json["id"] == body["id"]]
    assert len(results) == 1
    assert gateway.health("battery").counters.commands["duplicate"] == 1


async def test_stop_leaves_retained_offline_states(
    site: SimulatedSite, site_id: str, mosquitto: BrokerAddress, observer: Observer
) -> None:
    config = gateway_config(site, site_id)
    async with GatewayService(config, mosquitto):
        await observer.wait_for(lambda r: is_state(r, GATEWAY, "online"))
        await observer.wait_for(lambda r: is_state(r, "battery", "online"))
    # A newcomer sees the retained states: everything offline.
    async with observing(mosquitto, site_id, f"latecomer-{site_id}") as latecomer:
        for device_id in [GATEWAY, *(d.id for d in config.devices)]:
            record = await latecomer.wait_for(
                lambda r, d=device_id: r.device == d and r.kind == "state"
            )
            assert record.retain is True
            assert record.json["status"] == "offline"
            assert record.json["reason"] == "gateway stopped"
