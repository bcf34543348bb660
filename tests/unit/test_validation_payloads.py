"""The bus payload codecs (``gridpilot.bus.codec``): round trips and the validation of what
they decode."""

from __future__ import annotations

import base64

import orjson
import pytest

from gridpilot.bus.codec import (
    Command,
    CommandResult,
    CommandStatus,
    DeadLetter,
    DeadLetterItem,
    DeviceState,
    DeviceStatus,
    decode_command,
    decode_command_result,
    decode_dead_letter,
    decode_state,
    decode_telemetry,
    encode_command,
    encode_command_result,
    encode_dead_letter,
    encode_state,
    encode_telemetry,
)
from gridpilot.bus.errors import PayloadError

NOW = 1_795_694_400_123


def test_telemetry_matches_the_contract() -> None:
    payload = encode_telemetry(NOW, {"active_power_w": 41250.0, "voltage_l1_v": 231.4}, seq=1842)
    assert orjson.loads(payload) == {
        "ts": "2026-11-26T12:00:00.123Z",
        "seq": 1842,
        "values": {"active_power_w": 41250.0, "voltage_l1_v": 231.4},
    }
    decoded = decode_telemetry(payload)
    assert decoded.ts_ms == NOW
    assert decoded.seq == 1842
    assert decoded.values == {"active_power_w": 41250.0, "voltage_l1_v": 231.4}


def test_telemetry_without_seq() -> None:
    payload = encode_telemetry(NOW, {"active_power_w": 1.0})
    assert "seq" not in orjson.loads(payload)
    assert decode_telemetry(payload).seq is None


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b"[]",
        b'{"ts": "2026-11-26T12:00:00Z"}',
        b'{"ts": "2026-11-26T12:00:00Z", "values": {"a_w": true}}',
        b'{"ts": "2026-11-26T12:00:00Z", "values": {"a_w": "1"}}',
        b'{"values": {"a_w": 1.0}}',
        b'{"ts": "noon", "values": {"a_w": 1.0}}',
        b'{"ts": 1795694400000, "seq": -1, "values": {"a_w": 1.0}}',
    ],
)
def test_bad_telemetry_raises_payload_error(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_telemetry(payload)


def test_state_of_the_gateway_form_decodes() -> None:
    payload = (
        b'{"status": "offline", "since": "2026-11-26T12:00:00.000Z", "ts": "2026-11-26T12:00:01Z",'
        b' "last_error": {"kind": "timeout", "message": "no answer in 1 s", "hint": "check"},'
        b' "consecutive_failures": 3, "counters": {"polls": 10, "errors": 3}}'
    )
    state = decode_state(payload)
    assert state.status is DeviceStatus.OFFLINE
    assert state.last_error == "no answer in 1 s"
    assert state.ts_ms == 1_795_694_401_000
    assert state.counters == {"polls": 10, "errors": 3}


def test_state_round_trip_and_last_will_form() -> None:
    state = DeviceState(DeviceStatus.ONLINE, NOW, "timeout", {"polls": 12, "errors": 1})
    assert decode_state(encode_state(state)) == state
    will = encode_state(DeviceState(DeviceStatus.OFFLINE))
    assert orjson.loads(will) == {"status": "offline", "last_error": None, "counters": {}}
    assert decode_state(will).status is DeviceStatus.OFFLINE


@pytest.mark.parametrize(
    "payload",
    [b'{"status": "sleeping"}', b'{"status": "online", "counters": {"a": "1"}}', b"{}"],
)
def test_bad_state_raises(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_state(payload)


def test_command_round_trip() -> None:
    command = Command("6f1c", "active_power_setpoint_w", -25000.0, "peak_shaving", NOW + 10_000)
    payload = encode_command(command)
    assert orjson.loads(payload)["expires"] == "2026-11-26T12:00:10.123Z"
    assert decode_command(payload) == command
    forever = Command("1", "mode_state", 2.0, "api")
    assert decode_command(encode_command(forever)) == forever


@pytest.mark.parametrize(
    "payload",
    [
        b'{"point": "a_w", "value": 1.0, "source": "x"}',
        b'{"id": "", "point": "a_w", "value": 1.0}',
        b'{"id": "1", "point": "A W", "value": 1.0}',
        b'{"id": "1", "point": "a_w", "value": true}',
        b'{"id": "1", "point": "a_w", "value": "5"}',
        b'{"id": "1", "point": "a_w", "value": 1.0, "expires": "soon"}',
        b'{"id": "' + b"x" * 200 + b'", "point": "a_w", "value": 1.0}',
    ],
)
def test_bad_commands_raise(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_command(payload)


def test_command_result_round_trip() -> None:
    result = CommandResult(
        "6f1c", CommandStatus.APPLIED, NOW, "active_power_setpoint_w", -25000.0, -24990.0
    )
    assert decode_command_result(encode_command_result(result)) == result
    failed = CommandResult("7", CommandStatus.FAILED, NOW, detail="device timeout")
    assert decode_command_result(encode_command_result(failed)) == failed


def test_dead_letter_keeps_text_payloads_as_text() -> None:
    letter = DeadLetter(
        topic="gridpilot/v1/plant/meter1/telemetry",
        received_at_ms=NOW,
        payload=b'{"values": {"voltage_l1_v": 9999}}',
        rejections=[
            DeadLetterItem("voltage_l1_v", "out_of_range", "9999 is outside [0, 400]"),
            DeadLetterItem(None, "bad_ts", "ts is missing"),
        ],
    )
    doc = orjson.loads(encode_dead_letter(letter))
    assert doc["reasons"] == ["bad_ts", "out_of_range"]
    assert doc["payload"] == '{"values": {"voltage_l1_v": 9999}}'
    assert doc["payload_encoding"] == "utf-8"
    assert doc["received_at"] == "2026-11-26T12:00:00.123Z"
    assert doc["rejections"][0] == {
        "point": "voltage_l1_v",
        "reason": "out_of_range",
        "detail": "9999 is outside [0, 400]",
    }
    back = decode_dead_letter(encode_dead_letter(letter))
    assert back.payload == letter.payload
    assert list(back.rejections) == list(letter.rejections)


def test_dead_letter_base64_for_binary_and_truncation() -> None:
    raw = bytes(range(255, -1, -1)) * 4  # not UTF-8 from the first byte on
    letter = DeadLetter("t", NOW, raw, [DeadLetterItem(None, "not_json", "binary")])
    doc = orjson.loads(encode_dead_letter(letter, max_payload_bytes=100))
    assert doc["payload_encoding"] == "base64"
    assert base64.b64decode(doc["payload"]) == raw[:100]
    assert doc["payload_truncated"] is True
    assert doc["payload_bytes"] == len(raw)
    back = decode_dead_letter(orjson.dumps(doc))
    assert back.payload == raw[:100]
    assert back.payload_truncated
    assert back.payload_bytes == len(raw)


def test_dead_letter_truncation_inside_a_character_keeps_text() -> None:
    raw = ("é" * 100).encode()  # two bytes each; 101 cuts the 51st in half
    letter = DeadLetter("t", NOW, raw, [DeadLetterItem(None, "oversized", "big")])
    doc = orjson.loads(encode_dead_letter(letter, max_payload_bytes=101))
    assert doc["payload_encoding"] == "utf-8"
    assert doc["payload"] == "é" * 50
