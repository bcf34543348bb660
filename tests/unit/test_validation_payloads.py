"""The bus payload codecs (``gridpilot.bus.codec``): round trips and the validation of what
they decode."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.bus.codec import (
    MAX_ID_CHARS,
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
from gridpilot.model.identity import IDENTIFIER_PATTERN

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


def test_command_matches_the_contract() -> None:
    command = Command("6f1c", "active_power_setpoint_w", -25000.0, NOW + 10_000, "peak_shaving")
    payload = encode_command(command)
    assert orjson.loads(payload) == {
        "id": "6f1c",
        "point": "active_power_setpoint_w",
        "value": -25000.0,
        "expires": "2026-11-26T12:00:10.123Z",
        "source": "peak_shaving",
    }
    assert decode_command(payload) == command


def test_command_source_is_optional() -> None:
    anonymous = Command("1", "mode_state", 2.0, NOW)
    assert "source" not in orjson.loads(encode_command(anonymous))
    assert decode_command(encode_command(anonymous)) == anonymous
    decoded = decode_command(b'{"id": "1", "point": "a_w", "value": 1, "expires": 1000}')
    assert decoded == Command("1", "a_w", 1.0, 1000, None)


def test_command_without_expires_is_refused_with_the_reason() -> None:
    """A command without expiry could be applied hours late from a persistent session."""
    with pytest.raises(PayloadError) as info:
        decode_command(b'{"id": "1", "point": "a_w", "value": 1.0, "source": "api"}')
    assert info.value.field == "expires"
    message = str(info.value)
    assert message.startswith("'expires' is missing")
    assert "needs an expiry" in message
    assert "RFC 3339 or epoch ms" in message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'{"point": "a_w", "value": 1.0, "expires": 1}', "id"),
        (b'{"id": "", "point": "a_w", "value": 1.0, "expires": 1}', "id"),
        (b'{"id": "' + b"x" * 129 + b'", "point": "a_w", "value": 1.0, "expires": 1}', "id"),
        (b'{"id": "1", "point": "A W", "value": 1.0, "expires": 1}', "point"),
        (b'{"id": "1", "point": "a_w", "expires": 1}', "value"),
        (b'{"id": "1", "point": "a_w", "value": true, "expires": 1}', "value"),
        (b'{"id": "1", "point": "a_w", "value": "5", "expires": 1}', "value"),
        (b'{"id": "1", "point": "a_w", "value": 1.0, "expires": "soon"}', "expires"),
        (b'{"id": "1", "point": "a_w", "value": 1.0, "expires": null}', "expires"),
        (b'{"id": "1", "point": "a_w", "value": 1.0, "expires": "2026-11-26T12:00:10"}', "expires"),
        (b'{"id": "1", "point": "a_w", "value": 1.0, "expires": 1, "source": 5}', "source"),
        (b"[]", None),
        (b"not json", None),
    ],
)
def test_bad_commands_raise_naming_the_field(payload: bytes, field: str | None) -> None:
    with pytest.raises(PayloadError) as info:
        decode_command(payload)
    assert info.value.field == field


def test_command_value_is_checked_after_the_shape() -> None:
    """A wrong value is told apart from a malformed message: it is checked last."""
    with pytest.raises(PayloadError) as info:
        decode_command(b'{"id": "1", "point": "a_w", "value": "5"}')
    assert info.value.field == "expires"


def test_command_result_matches_the_contract() -> None:
    applied = CommandResult(
        id="6f1c",
        status=CommandStatus.APPLIED,
        code=None,
        reason=None,
        point="active_power_setpoint_w",
        value=-25000.0,
        readback=-24990.0,
        ts_ms=NOW,
    )
    assert orjson.loads(encode_command_result(applied)) == {
        "id": "6f1c",
        "status": "applied",
        "code": None,
        "reason": None,
        "point": "active_power_setpoint_w",
        "value": -25000.0,
        "readback": -24990.0,
        "ts": "2026-11-26T12:00:00.123Z",
    }
    assert decode_command_result(encode_command_result(applied)) == applied
    malformed = CommandResult(
        None, CommandStatus.REJECTED, "malformed", "payload is not JSON", None, None, None, NOW
    )
    assert decode_command_result(encode_command_result(malformed)) == malformed


def test_command_result_code_and_reason_are_null_exactly_when_applied() -> None:
    with pytest.raises(ValueError, match="applied"):
        CommandResult("1", CommandStatus.APPLIED, "write_failed", None, "a_w", 1.0, 1.0, NOW)
    with pytest.raises(ValueError, match="needs a 'code'"):
        CommandResult("1", CommandStatus.FAILED, None, "timeout", "a_w", 1.0, None, NOW)
    with pytest.raises(ValueError, match="needs a 'code'"):
        CommandResult("1", CommandStatus.REJECTED, "expired", None, "a_w", 1.0, None, NOW)


RESULT = {
    "id": "1",
    "status": "failed",
    "code": "write_failed",
    "reason": "timeout",
    "point": "a_w",
    "value": 1.0,
    "readback": None,
    "ts": "2026-11-26T12:00:00Z",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "out_of_bounds"}, "status"),  # not in the contract (any more)
        ({"status": "expired"}, "status"),
        ({"status": None}, "status"),
        ({"id": 7}, "id"),
        ({"code": 3}, "code"),
        ({"code": None}, "code"),  # failed without a code
        ({"status": "applied"}, "code"),  # applied with a code
        ({"reason": ["x"]}, "reason"),
        ({"value": "1"}, "value"),
        ({"readback": True}, "readback"),
        ({"ts": "noon"}, "ts"),
        ({"readback": ...}, "readback"),  # every field must be there
        ({"ts": ...}, "ts"),
    ],
)
def test_bad_command_results_raise(change: dict[str, object], field: str) -> None:
    doc = {**RESULT, **change}
    doc = {key: value for key, value in doc.items() if value is not ...}
    with pytest.raises(PayloadError) as info:
        decode_command_result(orjson.dumps(doc))
    assert info.value.field == field


def test_command_result_of_the_old_spelling_is_refused() -> None:
    """``read_back``/``detail`` were the codec's spelling before the contract settled."""
    old = {**RESULT, "read_back": None, "detail": "timeout"}
    del old["readback"], old["reason"]
    with pytest.raises(PayloadError, match="'reason', 'readback'"):
        decode_command_result(orjson.dumps(old))


# ---------------------------------------------------------------------- round trips

ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
points = st.from_regex(IDENTIFIER_PATTERN, fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
timestamps = st.integers(0, 253_402_300_799_999)  # up to 9999-12-31T23:59:59.999Z


@given(ids, points, finite, timestamps, st.none() | st.text(max_size=40))
def test_command_round_trip(
    command_id: str, point: str, value: float, expires_ms: int, source: str | None
) -> None:
    command = Command(command_id, point, value, expires_ms, source)
    assert decode_command(encode_command(command)) == command


@st.composite
def command_results(draw: st.DrawFn) -> CommandResult:
    status = draw(st.sampled_from(CommandStatus))
    applied = status is CommandStatus.APPLIED
    return CommandResult(
        id=draw(st.none() | ids) if not applied else draw(ids),
        status=status,
        code=None if applied else draw(st.from_regex(r"[a-z_]{1,20}", fullmatch=True)),
        reason=None if applied else draw(st.text(max_size=200)),
        point=draw(st.none() | st.text(max_size=64)),
        value=draw(st.none() | finite),
        readback=draw(st.none() | finite),
        ts_ms=draw(timestamps),
    )


@given(command_results())
def test_command_result_round_trip(result: CommandResult) -> None:
    assert decode_command_result(encode_command_result(result)) == result


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
