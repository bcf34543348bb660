"""DeviceStateCache: what it keeps, what it ignores, and when a state is stale (pure)."""

from __future__ import annotations

import logging

import orjson
import pytest

from gridpilot.api.state_cache import MAX_STATE_BYTES, DeviceStateCache, EffectiveStatus
from gridpilot.config import GridPilotConfig

SITE = "plant"


def topic(device: str, site: str = SITE, kind: str = "state") -> str:
    return f"gridpilot/v1/{site}/{device}/{kind}"


def state(status: str, **extra: object) -> bytes:
    return orjson.dumps({"status": status, **extra})


def make_cache(spare_slots: int = 2) -> DeviceStateCache:
    return DeviceStateCache(
        SITE,
        ["meter", "battery", "sensor"],
        "gateway",
        polled=["meter", "battery"],
        spare_slots=spare_slots,
    )


def test_keeps_the_newest_state_object_as_published() -> None:
    cache = make_cache()
    first = {"status": "offline", "since": "2026-11-26T12:00:00.000Z", "last_error": None}
    second = {
        "status": "online",
        "since": "2026-11-26T12:00:05.000Z",
        "last_error": {"kind": "timeout", "message": "no answer", "hint": "check it"},
        "counters": {"polls": 7, "errors": {"timeout": 1}},
        "vendor_extra": [1, 2, 3],
    }
    assert cache.apply(topic("meter"), orjson.dumps(first)) is True
    assert cache.status("meter") is EffectiveStatus.OFFLINE
    assert cache.apply(topic("meter"), orjson.dumps(second)) is True
    assert cache.get("meter") == second
    assert cache.status("meter") is EffectiveStatus.ONLINE
    assert cache.stats.updates == 2


def test_unknown_until_a_state_arrives() -> None:
    cache = make_cache()
    assert cache.get("meter") is None
    assert cache.status("meter") is EffectiveStatus.UNKNOWN
    assert len(cache) == 0


@pytest.mark.parametrize(
    "wrong_topic",
    [
        topic("meter", site="other-site"),
        topic("meter", kind="telemetry"),
        topic("meter", kind="command/result"),
        "gridpilot/v1/plant/events",
        "spBv1.0/plant/NBIRTH/edge",
        "gridpilot/v2/plant/meter/state",
    ],
)
def test_ignores_topics_that_are_not_this_sites_states(wrong_topic: str) -> None:
    cache = make_cache()
    assert cache.apply(wrong_topic, state("online")) is False
    assert len(cache) == 0
    assert cache.stats.ignored == 0  # not ours: not even worth counting


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"online", "not JSON"),
        (b'{"status": "online"', "not JSON"),
        (b'["online"]', "list, not an object"),
        (b'"online"', "str, not an object"),
        (b'{"status": NaN}', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"pad": "' + b"x" * MAX_STATE_BYTES + b'"}', "bytes, more than"),
    ],
)
def test_unparseable_payloads_are_counted_logged_and_keep_the_last_good_state(
    payload: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    cache.apply(topic("meter"), state("online"))
    with caplog.at_level(logging.WARNING, logger="gridpilot.api"):
        assert cache.apply(topic("meter"), payload) is False
    assert cache.get("meter") == {"status": "online"}
    assert cache.stats.unparseable == 1
    assert why in caplog.text
    assert "'meter'" in caplog.text


def test_warnings_thin_out_but_counting_does_not(caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache()
    with caplog.at_level(logging.WARNING, logger="gridpilot.api"):
        for _ in range(2000):
            cache.apply(topic("meter"), b"garbage")
    assert cache.stats.unparseable == 2000
    assert len(caplog.records) == 10 + 2  # the first ten, then numbers 1000 and 2000


def test_an_empty_retained_payload_clears_the_state() -> None:
    cache = make_cache()
    cache.apply(topic("meter"), state("online"))
    assert cache.apply(topic("meter"), b"") is True
    assert cache.get("meter") is None
    assert cache.status("meter") is EffectiveStatus.UNKNOWN
    assert cache.stats.cleared == 1
    assert cache.apply(topic("meter"), b"") is False  # nothing left to clear


def test_unconfigured_devices_get_only_the_spare_slots() -> None:
    cache = make_cache(spare_slots=2)
    assert cache.capacity == 4 + 2  # three devices and the gateway, plus the spares
    for i in range(5):
        cache.apply(topic(f"stranger-{i}"), state("online"))
    assert cache.get("stranger-0") is not None
    assert cache.get("stranger-1") is not None
    assert cache.get("stranger-2") is None
    assert cache.stats.over_capacity == 3
    # Configured devices and the gateway always fit, however many strangers came first.
    for device in ("meter", "battery", "sensor", "gateway"):
        assert cache.apply(topic(device), state("online")) is True
    assert len(cache) == cache.capacity
    # A stranger that already has a slot keeps updating it; clearing one frees its slot.
    assert cache.apply(topic("stranger-1"), state("offline")) is True
    cache.apply(topic("stranger-0"), b"")
    assert cache.apply(topic("stranger-4"), state("online")) is True
    assert len(cache) == cache.capacity


def test_many_publishers_cannot_grow_the_cache_beyond_its_capacity() -> None:
    cache = make_cache(spare_slots=3)
    for i in range(10_000):
        cache.apply(topic(f"d{i}"), state("online", n=i))
    assert len(cache) <= cache.capacity
    assert cache.stats.over_capacity == 10_000 - 3


def test_devices_of_an_offline_gateway_are_unknown() -> None:
    """The gateway's last will says its devices' states are stale (gateway/payloads.py)."""
    cache = make_cache()
    cache.apply(topic("meter"), state("online"))
    cache.apply(topic("sensor"), state("online"))  # an MQTT-native device, not polled
    cache.apply(topic("gateway"), state("online", devices=["battery", "meter"]))
    assert cache.status("meter") is EffectiveStatus.ONLINE

    will = {"status": "offline", "since": None, "devices": ["battery", "meter"], "reason": "x"}
    cache.apply(topic("gateway"), orjson.dumps(will))
    assert cache.status("gateway") is EffectiveStatus.OFFLINE
    assert cache.status("meter") is EffectiveStatus.UNKNOWN
    assert cache.get("meter") == {"status": "online"}  # still shown, as published
    assert cache.status("sensor") is EffectiveStatus.ONLINE  # not the gateway's device

    cache.apply(topic("gateway"), state("online", devices=["battery", "meter"]))
    assert cache.status("meter") is EffectiveStatus.ONLINE


def test_without_a_device_list_the_polled_devices_go_stale_with_the_gateway() -> None:
    cache = make_cache()
    cache.apply(topic("meter"), state("online"))
    cache.apply(topic("sensor"), state("online"))
    cache.apply(topic("gateway"), state("offline"))
    assert cache.status("meter") is EffectiveStatus.UNKNOWN
    assert cache.status("sensor") is EffectiveStatus.ONLINE


@pytest.mark.parametrize("body", [{}, {"status": "ONLINE"}, {"status": 1}, {"status": None}])
def test_a_state_without_a_valid_status_is_unknown(body: dict[str, object]) -> None:
    cache = make_cache()
    cache.apply(topic("meter"), orjson.dumps(body))
    assert cache.get("meter") == body
    assert cache.status("meter") is EffectiveStatus.UNKNOWN


def test_for_config_reserves_the_configured_devices_and_the_gateway() -> None:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": "plant"},
            "gateway": {"id": "gw-1"},
            "devices": [
                {"id": "meter", "host": "127.0.0.1", "points": [{"point": "p_w", "address": 0}]},
                {"id": "sensor", "protocol": "mqtt", "points": [{"point": "t_degc"}]},
                {"id": "vfd", "protocol": "modbus_rtu", "bus": "rs485", "unit_id": 3,
                 "points": [{"point": "speed_rpm", "address": 0}]},
            ],
            "serial_buses": [{"id": "rs485", "port": "/dev/ttyUSB0"}],
        }
    )  # fmt: skip
    cache = DeviceStateCache.for_config(config)
    assert cache.topic_filter == "gridpilot/v1/plant/+/state"
    assert cache.capacity == 4 + 8
    for device in ("meter", "sensor", "vfd"):
        cache.apply(topic(device), state("online"))
    cache.apply(topic("gw-1"), state("offline"))  # no device list: the polled ones
    assert cache.status("meter") is EffectiveStatus.UNKNOWN
    assert cache.status("vfd") is EffectiveStatus.UNKNOWN  # polled by the gateway too
    assert cache.status("sensor") is EffectiveStatus.ONLINE


def test_negative_spare_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="spare_slots"):
        DeviceStateCache(SITE, [], "gateway", spare_slots=-1)
