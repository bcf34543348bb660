"""Command parsing, validation, read-back judgement and result messages (pure)."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.bus.codec import CommandStatus, decode_command_result
from gridpilot.config import DeviceConfig, GridPilotConfig
from gridpilot.fieldbus.sunspec import ModelHeader, decode_model, layout, model_def
from gridpilot.fieldbus.sunspec import unimplemented_words as sunspec_unimplemented
from gridpilot.gateway.commands import (
    MAX_COMMAND_BYTES,
    Applied,
    Command,
    FailCode,
    Failed,
    RecentIds,
    RejectCode,
    Rejected,
    encode_result,
    holds_whole_numbers,
    judge_readback,
    not_representable,
    parse_command,
    readback_tolerance,
    rejected_as,
    result_of,
    status_of,
)
from gridpilot.gateway.sunspec_poll import command_points
from gridpilot.model import DataType, parse_timestamp_ms

NOW = parse_timestamp_ms("2026-11-26T12:00:00Z")
LATER = "2026-11-26T12:00:10Z"

CONFIG = GridPilotConfig.model_validate(
    {
        "site": {"id": "demo"},
        "devices": [
            {
                "id": "battery",
                "host": "127.0.0.1",
                "points": [
                    {
                        "point": "active_power_setpoint_w",
                        "address": 0,
                        "type": "int32",
                        "writable": True,
                        "valid_range": [-50000, 50000],
                    },
                    {"point": "soc_pct", "address": 0, "table": "input", "scale": 0.1},
                    {"point": "active_power_w", "address": 2, "type": "int32"},
                    {
                        "point": "enable_state",
                        "address": 0,
                        "table": "coil",
                        "type": "bool",
                        "writable": True,
                    },
                    {"point": "limit_pct", "address": 4, "type": "float32", "writable": True},
                    {
                        "point": "voltage_setpoint_v",
                        "address": 6,
                        "scale": 0.1,
                        "offset": 200,
                        "writable": True,
                    },
                    {
                        "point": "model_state",
                        "address": 7,
                        "type": "string",
                        "length": 4,
                        "writable": True,
                    },
                    {
                        "point": "mode_state",
                        "address": 11,
                        "type": "bitfield",
                        "bit": 3,
                        "writable": True,
                    },
                    {
                        "point": "operating_mode_state",
                        "address": 12,
                        "writable": True,
                        "valid_range": [0, 4],
                    },
                    {"point": "limit_enable_state", "address": 13, "writable": True},
                    {"point": "cycles_count", "address": 14, "type": "uint32", "writable": True},
                ],
            },
            {
                "id": "weather",
                "protocol": "mqtt",
                "points": [{"point": "temperature_degc"}],
            },
        ],
    }
)
DEVICES = {d.id: d for d in CONFIG.devices}
BATTERY = DEVICES["battery"]


def point(name: str):
    p = BATTERY.point(name)
    assert p is not None
    return p


def payload(**fields: object) -> bytes:
    body: dict[str, object] = {
        "id": "c-1",
        "point": "active_power_setpoint_w",
        "value": -25000.0,
        "expires": LATER,
        "source": "peak_shaving",
    }
    for key, value in fields.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return orjson.dumps(body)


def parse(data: bytes, device: str = "battery") -> Command | Rejected:
    return parse_command(data, device, DEVICES, NOW)


def test_valid_command() -> None:
    cmd = parse(payload())
    assert cmd == Command(
        id="c-1",
        device="battery",
        point="active_power_setpoint_w",
        value=-25000.0,
        expires_ms=NOW + 10_000,
        source="peak_shaving",
    )


def test_integer_value_and_epoch_ms_expiry_and_no_source() -> None:
    cmd = parse(payload(value=100, expires=NOW + 1, source=...))
    assert isinstance(cmd, Command)
    assert cmd.value == 100.0
    assert cmd.expires_ms == NOW + 1
    assert cmd.source == ""


@pytest.mark.parametrize(
    ("data", "code", "needle"),
    [
        (b"{not json", RejectCode.MALFORMED, "not JSON"),
        (b"", RejectCode.MALFORMED, "not JSON"),
        (b"[1, 2]", RejectCode.MALFORMED, "an array"),
        (b'"text"', RejectCode.MALFORMED, "expected a JSON object"),
        (payload(id=...), RejectCode.MALFORMED, "'id'"),
        (payload(id=""), RejectCode.MALFORMED, "'id'"),
        (payload(id=17), RejectCode.MALFORMED, "'id'"),
        (payload(id="x" * 129), RejectCode.MALFORMED, "'id'"),
        (payload(point=...), RejectCode.MALFORMED, "'point'"),
        (payload(point=3), RejectCode.MALFORMED, "'point'"),
        (payload(value=...), RejectCode.MALFORMED, "'value' is missing"),
        (payload(source=5), RejectCode.MALFORMED, "'source'"),
        (payload(expires=...), RejectCode.MALFORMED, "'expires' is missing"),
        (payload(expires="soon"), RejectCode.MALFORMED, "'expires'"),
        (payload(expires="2026-11-26T12:00:10"), RejectCode.MALFORMED, "offset"),
        (payload(expires=1.5), RejectCode.MALFORMED, "'expires'"),
        # A message without expiry is malformed whatever its value.
        (payload(expires=..., value="x"), RejectCode.MALFORMED, "'expires' is missing"),
        (payload(point="Active Power"), RejectCode.MALFORMED, "point name"),
        (b"{" + b" " * MAX_COMMAND_BYTES + b"}", RejectCode.MALFORMED, "exceeds"),
        (payload(point="charge_w"), RejectCode.UNKNOWN_POINT, "no point 'charge_w'"),
        (payload(point="soc_pct"), RejectCode.NOT_WRITABLE, "not writable"),
        (payload(point="active_power_w"), RejectCode.NOT_WRITABLE, "not writable"),
        (payload(point="model_state"), RejectCode.NOT_WRITABLE, "text"),
        (payload(point="mode_state"), RejectCode.NOT_WRITABLE, "one bit"),
        (payload(value="-25000"), RejectCode.NOT_A_NUMBER, "the string '-25000'"),
        (payload(value=None), RejectCode.NOT_A_NUMBER, "null"),
        (payload(value=True), RejectCode.NOT_A_NUMBER, "a boolean"),
        (payload(value=[1]), RejectCode.NOT_A_NUMBER, "an array"),
        (payload(value={"w": 1}), RejectCode.NOT_A_NUMBER, "an object"),
        (payload(value=50000.5), RejectCode.OUT_OF_RANGE, "[-50000, 50000]"),
        (payload(value=-1e9), RejectCode.OUT_OF_RANGE, "outside the valid range"),
        (payload(point="enable_state", value=2), RejectCode.OUT_OF_RANGE, "0 or 1"),
        (payload(expires="2026-11-26T12:00:00Z"), RejectCode.EXPIRED, "expired at"),
        (payload(expires="2026-11-26T11:00:00Z"), RejectCode.EXPIRED, "expired at"),
        (payload(expires=NOW), RejectCode.EXPIRED, "expired"),
    ],
)
def test_rejections(data: bytes, code: RejectCode, needle: str) -> None:
    outcome = parse(data)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.code is code
    assert needle in outcome.reason
    assert outcome.device == "battery"


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":"a","point":"active_power_setpoint_w","value":NaN,"expires":1}',
        b'{"id":"a","point":"active_power_setpoint_w","value":1e999,"expires":1}',
    ],
)
def test_non_finite_literals_are_malformed(data: bytes) -> None:
    # JSON has no NaN/Infinity; an overflowing literal is refused by the parser too.
    outcome = parse(data)
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.MALFORMED


def test_unknown_device_and_mqtt_device() -> None:
    outcome = parse(payload(), device="chiller")
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.UNKNOWN_DEVICE
    assert outcome.device == "chiller"
    outcome = parse(payload(point="temperature_degc"), device="weather")
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.NOT_WRITABLE
    assert "not polled by the gateway" in outcome.reason


def test_null_source_is_no_source() -> None:
    cmd = parse(payload(source=None))
    assert isinstance(cmd, Command)
    assert cmd.source == ""


def test_rejection_echoes_what_was_readable() -> None:
    outcome = parse(payload(value=99999.0))
    assert isinstance(outcome, Rejected)
    assert (outcome.id, outcome.point, outcome.value) == ("c-1", "active_power_setpoint_w", 99999.0)
    outcome = parse(payload(id=..., value="abc"))
    assert isinstance(outcome, Rejected)
    assert (outcome.id, outcome.point, outcome.value) == (None, "active_power_setpoint_w", None)


def test_range_bounds_are_inclusive_and_coils_take_0_and_1() -> None:
    assert isinstance(parse(payload(value=50000)), Command)
    assert isinstance(parse(payload(value=-50000)), Command)
    assert isinstance(parse(payload(point="enable_state", value=1)), Command)
    assert isinstance(parse(payload(point="enable_state", value=0.0)), Command)


def test_expiry_check_before_range() -> None:
    outcome = parse(payload(value=1e9, expires="2020-01-01T00:00:00Z"))
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.EXPIRED


def test_command_is_expired() -> None:
    cmd = parse(payload())
    assert isinstance(cmd, Command)
    assert not cmd.is_expired(NOW + 9_999)
    assert cmd.is_expired(NOW + 10_000)


def command(point_name: str, value: float) -> Command:
    return Command("c-9", "battery", point_name, value, NOW + 10_000, "test")


@pytest.mark.parametrize(
    ("point_name", "target", "readback", "applied"),
    [
        ("active_power_setpoint_w", -25000.0, -25000.0, True),
        ("active_power_setpoint_w", -25000.0, -24999.0, True),  # one step of scale 1
        ("active_power_setpoint_w", -25000.0, -24998.0, False),
        ("active_power_setpoint_w", -25000.0, 0.0, False),  # device ignored the write
        ("voltage_setpoint_v", 231.4, 231.4, True),
        ("voltage_setpoint_v", 231.44, 231.4, True),  # rounded to the 0.1 V register step
        ("voltage_setpoint_v", 231.4, 231.3, True),
        ("voltage_setpoint_v", 231.4, 231.2, False),
        ("limit_pct", 33.3, 33.29999923706055, True),  # float32 of 33.3
        ("limit_pct", 33.3, 33.3001, False),
        ("enable_state", 1.0, 1.0, True),
        ("enable_state", 1.0, 0.0, False),
        # Enumerations and flags in registers: the very value, not "within one step".
        ("limit_enable_state", 1.0, 1.0, True),
        ("limit_enable_state", 1.0, 0.0, False),  # the device ignored "enable"
        ("operating_mode_state", 3.0, 2.0, False),
        ("operating_mode_state", 3.0, 4.0, False),
        ("cycles_count", 70000.0, 69999.0, False),
    ],
)
def test_judge_readback(point_name: str, target: float, readback: float, applied: bool) -> None:
    outcome = judge_readback(command(point_name, target), point(point_name), readback)
    if applied:
        assert outcome == Applied(command(point_name, target), readback)
    else:
        assert isinstance(outcome, Failed)
        assert outcome.code is FailCode.READBACK_MISMATCH
        assert outcome.readback == readback
        assert "differs from the target" in outcome.reason


def test_readback_not_a_number_fails() -> None:
    outcome = judge_readback(command("limit_pct", 1.0), point("limit_pct"), float("nan"))
    assert isinstance(outcome, Failed)
    assert outcome.code is FailCode.READBACK_FAILED
    outcome = judge_readback(command("limit_pct", 1.0), point("limit_pct"), "text")
    assert isinstance(outcome, Failed)
    assert outcome.code is FailCode.READBACK_FAILED


@pytest.mark.parametrize(
    ("point_name", "value"),
    [
        ("operating_mode_state", 0.5),
        ("operating_mode_state", 2.999),
        ("limit_enable_state", 0.5),
        ("cycles_count", 1e6 + 0.25),
    ],
)
def test_a_fraction_for_an_enumeration_flag_or_count_is_refused(
    point_name: str, value: float
) -> None:
    outcome = parse(payload(point=point_name, value=value))
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.NOT_AN_INTEGER
    assert outcome.reason.startswith(f"{value:g} is not an integer: {point_name} is an ")
    assert "holds whole numbers" in outcome.reason
    assert (outcome.id, outcome.point, outcome.value) == ("c-1", point_name, value)
    result = orjson.loads(encode_result(outcome, NOW))
    assert (result["status"], result["code"]) == ("rejected", "not_an_integer")


def test_the_integer_check_names_the_range_and_comes_before_range_and_expiry() -> None:
    outcome = parse(
        payload(point="operating_mode_state", value=7.5, expires="2020-01-01T00:00:00Z")
    )
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.NOT_AN_INTEGER
    assert outcome.reason.endswith("send one of them within [0, 4]")
    # Whole numbers pass on to the range check as before; 2.0 is a whole number.
    out_of_range = parse(payload(point="operating_mode_state", value=7.0))
    assert isinstance(out_of_range, Rejected)
    assert out_of_range.code is RejectCode.OUT_OF_RANGE
    assert isinstance(parse(payload(point="operating_mode_state", value=2.0)), Command)
    assert isinstance(parse(payload(point="operating_mode_state", value=2)), Command)


def test_quantities_in_integer_registers_are_still_rounded_to_their_step() -> None:
    # A controller's fractional watts are not a mistake: the int32 W register holds the
    # nearest step and the read-back is judged within that step.
    assert not holds_whole_numbers(point("active_power_setpoint_w"))
    assert not holds_whole_numbers(point("voltage_setpoint_v"))
    assert not holds_whole_numbers(point("enable_state"))  # a coil: 0 or 1, checked apart
    cmd = parse(payload(value=-12345.6))
    assert isinstance(cmd, Command)
    assert isinstance(judge_readback(cmd, point("active_power_setpoint_w"), -12346.0), Applied)


def test_a_unitless_point_with_fractional_steps_takes_fractions() -> None:
    # SunSpec 711 KOf: a droop of 0.05 in a uint16 at scale 0.001, named _count.
    count = point("active_power_setpoint_w").model_copy(
        update={"point": "m711_ctl_2_kof_count", "type": DataType.UINT16, "scale": 1.0}
    )
    assert holds_whole_numbers(count)
    assert not holds_whole_numbers(count.model_copy(update={"scale": 0.001}))


def _sunspec_704_device() -> DeviceConfig:
    """The battery's 704 as the gateway offers it for commands (``command_points``)."""
    definition = model_def(704)
    assert definition is not None
    values = {"WMaxLimPctEna": [0], "WMaxLimPct": [1000], "WMaxLimPct_SF": [0xFFFF], "WSetEna": [0]}
    values |= {"WSet": [0, 0], "WSet_SF": [1], "WSetMod": [0]}
    words: list[int] = []
    items = layout(definition)
    for path, p, _ in items:
        if path == "ID":
            words.append(704)
        elif path == "L":
            words.append(sum(q.size for _, q, _ in items) - 2)
        else:
            words.extend(values.get(path, sunspec_unimplemented(p)))
    model = decode_model(ModelHeader(704, 40002, len(words) - 2), words)
    return DeviceConfig.model_validate(
        {"id": "storage", "host": "127.0.0.1", "sunspec": {}, "points": command_points([model])}
    )


def test_sunspec_enumerations_refuse_a_fraction_and_are_read_back_exactly() -> None:
    device = _sunspec_704_device()
    enable = device.point("m704_wsetena_state")
    assert enable is not None
    assert enable.valid_range == (0.0, 1.0)
    outcome = parse_command(
        payload(point="m704_wsetena_state", value=0.5), "storage", {"storage": device}, NOW
    )
    assert isinstance(outcome, Rejected)
    assert outcome.code is RejectCode.NOT_AN_INTEGER
    ok = parse_command(
        payload(point="m704_wsetena_state", value=1.0), "storage", {"storage": device}, NOW
    )
    assert isinstance(ok, Command)
    assert isinstance(judge_readback(ok, enable, 0.0), Failed)
    assert isinstance(judge_readback(ok, enable, 1.0), Applied)
    # WSet (int32 W, scale factor 1: steps of 10 W) is a quantity: rounded to its step.
    wset = parse_command(
        payload(point="m704_wset_w", value=-20004.0), "storage", {"storage": device}, NOW
    )
    assert isinstance(wset, Command)
    wset_point = device.point("m704_wset_w")
    assert wset_point is not None
    assert isinstance(judge_readback(wset, wset_point, -20000.0), Applied)


def test_tolerance_is_the_register_resolution() -> None:
    assert readback_tolerance(point("voltage_setpoint_v"), 230.0) == pytest.approx(0.1, abs=1e-6)
    assert readback_tolerance(point("active_power_setpoint_w"), 1e3) == pytest.approx(1, abs=1e-5)
    assert readback_tolerance(point("enable_state"), 1.0) < 1e-6


@given(st.floats(-1e6, 1e6))
def test_float32_roundtrip_is_always_within_tolerance(value: float) -> None:
    readback = struct.unpack(">f", struct.pack(">f", value))[0]
    assert isinstance(
        judge_readback(command("limit_pct", value), point("limit_pct"), readback), Applied
    )


def test_results_have_the_contract_shape() -> None:
    cmd = command("active_power_setpoint_w", -25000.0)
    applied = orjson.loads(encode_result(Applied(cmd, -25000.0), NOW))
    assert applied == {
        "id": "c-9",
        "status": "applied",
        "code": None,
        "reason": None,
        "point": "active_power_setpoint_w",
        "value": -25000.0,
        "readback": -25000.0,
        "ts": "2026-11-26T12:00:00.000Z",
    }
    failed = orjson.loads(encode_result(Failed(cmd, FailCode.WRITE_FAILED, "timeout"), NOW))
    assert failed == {
        "id": "c-9",
        "status": "failed",
        "code": "write_failed",
        "reason": "timeout",
        "point": "active_power_setpoint_w",
        "value": -25000.0,
        "readback": None,
        "ts": "2026-11-26T12:00:00.000Z",
    }
    outcome = parse(payload(value=1e6))
    assert isinstance(outcome, Rejected)
    rejected = orjson.loads(encode_result(outcome, NOW))
    assert rejected == {
        "id": "c-1",
        "status": "rejected",
        "code": "out_of_range",
        "reason": outcome.reason,
        "point": "active_power_setpoint_w",
        "value": 1e6,
        "readback": None,
        "ts": "2026-11-26T12:00:00.000Z",
    }


def test_result_of_a_malformed_command_has_a_null_id() -> None:
    outcome = parse(b"{not json")
    assert isinstance(outcome, Rejected)
    result = result_of(outcome, NOW)
    assert (result.id, result.status, result.code) == (None, CommandStatus.REJECTED, "malformed")
    assert result.reason is not None
    assert "not JSON" in result.reason
    assert (result.point, result.value, result.readback) == (None, None, None)


@pytest.mark.parametrize(
    ("outcome", "status", "code", "readback"),
    [
        (
            Applied(command("active_power_setpoint_w", -25000.0), -25000.0),
            CommandStatus.APPLIED,
            None,
            -25000.0,
        ),
        (
            Failed(command("active_power_setpoint_w", 1.0), FailCode.READBACK_MISMATCH, "x", 0.0),
            CommandStatus.FAILED,
            "readback_mismatch",
            0.0,
        ),
        (
            Rejected("battery", RejectCode.OUT_OF_RANGE, "too big", "c-1", "p_w", 1e9),
            CommandStatus.REJECTED,
            "out_of_range",
            None,
        ),
    ],
)
def test_results_decode_with_the_bus_codec(
    outcome: Applied | Failed | Rejected,
    status: CommandStatus,
    code: str | None,
    readback: float | None,
) -> None:
    """The gateway publishes exactly what ``gridpilot.bus.codec`` decodes."""
    result = result_of(outcome, NOW)
    assert decode_command_result(encode_result(outcome, NOW)) == result
    assert (result.status, result.code, result.readback) == (status, code, readback)
    assert status == status_of(outcome)


def test_status_of_and_helpers() -> None:
    cmd = command("active_power_setpoint_w", 1.0)
    assert status_of(Applied(cmd, 1.0)) == "applied"
    assert status_of(Failed(cmd, FailCode.INTERRUPTED, "x")) == "failed"
    busy = rejected_as(cmd, RejectCode.BUSY, "queue full")
    assert status_of(busy) == "rejected"
    assert (busy.id, busy.point, busy.value, busy.code) == ("c-9", cmd.point, 1.0, RejectCode.BUSY)
    assert not_representable(cmd, "too big").code is RejectCode.NOT_REPRESENTABLE


def test_recent_ids_drop_duplicates_and_are_bounded() -> None:
    ids = RecentIds(capacity=3)
    assert [ids.seen(i) for i in ["a", "b", "a", "c", "d"]] == [False, False, True, False, False]
    # "b" was the least recently seen and fell out; "a" was refreshed and stays.
    assert ids.seen("a") is True
    assert ids.seen("b") is False


def test_every_device_config_type_is_accepted() -> None:
    assert isinstance(BATTERY, DeviceConfig)
