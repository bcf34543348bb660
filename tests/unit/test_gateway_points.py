"""PointConfig -> RegisterSpec, and register words -> telemetry values (pure)."""

from __future__ import annotations

import orjson
import pytest

from gridpilot.config import GridPilotConfig
from gridpilot.fieldbus.codec import RegisterSpec
from gridpilot.gateway.health import BackoffPolicy, DeviceHealth
from gridpilot.gateway.payloads import (
    device_state_payload,
    gateway_state_payload,
    gateway_will_payload,
    telemetry_payload,
)
from gridpilot.gateway.points import Readings, evaluate, polled_specs, register_spec
from gridpilot.model import ByteOrder, DataType, Table, WordOrder

CONFIG = GridPilotConfig.model_validate(
    {
        "site": {"id": "demo"},
        "devices": [
            {
                "id": "meter",
                "host": "127.0.0.1",
                "points": [
                    {
                        "point": "active_power_w",
                        "address": 0,
                        "type": "int32",
                        "valid_range": [-100000, 100000],
                    },
                    {
                        "point": "soc_pct",
                        "address": 2,
                        "table": "input",
                        "scale": 0.1,
                        "valid_range": [0, 100],
                    },
                    {
                        "point": "frequency_hz",
                        "address": 4,
                        "type": "float32",
                        "word_order": "little",
                        "byte_order": "little",
                    },
                    {"point": "serial_state", "address": 10, "type": "string", "length": 4},
                    {"point": "alarm_state", "address": 14, "type": "bitfield", "bit": 2},
                ],
            }
        ],
    }
)
METER = CONFIG.devices[0]


def test_register_spec_carries_every_field() -> None:
    point = METER.point("frequency_hz")
    assert point is not None
    assert register_spec(point) == RegisterSpec(
        point="frequency_hz",
        table=Table.HOLDING,
        address=4,
        dtype=DataType.FLOAT32,
        word_order=WordOrder.LITTLE,
        byte_order=ByteOrder.LITTLE,
    )
    soc = METER.point("soc_pct")
    assert soc is not None
    assert register_spec(soc).scale == 0.1
    assert register_spec(soc).table is Table.INPUT


def test_polled_specs_leave_out_text() -> None:
    names = [spec.point for spec in polled_specs(METER)]
    assert names == ["active_power_w", "soc_pct", "frequency_hz", "alarm_state"]


def spec(name: str) -> RegisterSpec:
    point = METER.point(name)
    assert point is not None
    return register_spec(point)


def test_evaluate_decodes_and_filters() -> None:
    readings = evaluate(
        METER,
        [
            (spec("active_power_w"), [0xFFFF, 0x9E58]),  # -25000
            (spec("soc_pct"), [1234]),  # 123.4 %: outside [0, 100]
            (spec("frequency_hz"), [0x0000, 0xC07F]),  # NaN (DCBA): invalid
            (spec("alarm_state"), [0b0100]),
        ],
    )
    assert readings == Readings(
        values={"active_power_w": -25000.0, "alarm_state": 1.0},
        out_of_range=("soc_pct",),
        invalid=(("frequency_hz", readings.invalid[0][1]),),
    )
    assert "nan" in readings.invalid[0][1].lower()


def test_evaluate_wrong_word_count_is_invalid() -> None:
    readings = evaluate(METER, [(spec("active_power_w"), [1])])
    assert readings.values == {}
    assert readings.invalid[0][0] == "active_power_w"


def test_evaluate_float_little_endian() -> None:
    # 50.0 = 0x42480000; DCBA on the wire: 0x0000, 0x4842
    readings = evaluate(METER, [(spec("frequency_hz"), [0x0000, 0x4842])])
    assert readings.values == {"frequency_hz": pytest.approx(50.0)}


def test_telemetry_payload_shape() -> None:
    body = orjson.loads(telemetry_payload(1_764_158_400_123, 7, {"active_power_w": 41250.0}))
    assert body == {
        "ts": "2025-11-26T12:00:00.123Z",
        "seq": 7,
        "values": {"active_power_w": 41250.0},
    }


def test_state_payloads() -> None:
    health = DeviceHealth(2, BackoffPolicy(1, 60), now_ms=0)
    health.poll_succeeded(1000)
    health.poll_failed("refused", "connection refused", 2000)
    body = orjson.loads(device_state_payload(health.snapshot(), 2500, reason="test"))
    assert body["status"] == "online"
    assert body["since"] == "1970-01-01T00:00:01.000Z"
    assert body["last_error"]["kind"] == "refused"
    assert body["last_error"]["message"] == "connection refused"
    assert body["last_error"]["hint"]
    assert body["last_error"]["ts"] == "1970-01-01T00:00:02.000Z"
    assert body["counters"]["errors"] == {"refused": 1}
    assert body["reason"] == "test"
    gateway = orjson.loads(gateway_state_payload(health.status, 0, 5, ["b", "a"]))
    assert gateway["status"] == "online"
    assert gateway["devices"] == ["a", "b"]
    will = orjson.loads(gateway_will_payload(["a"]))
    assert will["status"] == "offline"
