"""Telemetry validation: a pure function, tested by tables and one property."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.config.models import GridPilotConfig
from gridpilot.ingest.validation import (
    Outcome,
    Rejection,
    RejectReason,
    ValidationRules,
    validate,
)
from gridpilot.model import Sample

SITE = "plant"
NOW = 1_795_694_400_000  # 2026-11-26T12:00:00.000Z
NOW_TEXT = "2026-11-26T12:00:00.000Z"
SKEW_MS = 300_000

CONFIG = GridPilotConfig.model_validate(
    {
        "site": {"id": SITE},
        "ingest": {"max_payload_bytes": 1024, "max_future_skew": "PT5M"},
        "devices": [
            {
                "id": "meter1",
                "protocol": "mqtt",
                "points": [
                    {"point": "active_power_w", "valid_range": [-100000, 100000]},
                    {"point": "voltage_l1_v", "valid_range": [0, 400]},
                    {"point": "energy_import_wh"},
                ],
            },
            {"id": "pv-2", "protocol": "mqtt", "points": [{"point": "ac_power_w"}]},
        ],
    }
)
RULES = ValidationRules.from_config(CONFIG)


def message(values: Any, ts: Any = NOW_TEXT, **extra: Any) -> bytes:
    return json.dumps({"ts": ts, **extra, "values": values}).encode()


def run(payload: bytes, *, device: str = "meter1", rules: ValidationRules = RULES) -> Outcome:
    return validate(SITE, device, payload, NOW, rules)


def test_rules_come_from_the_configuration() -> None:
    assert RULES.site == SITE
    assert RULES.max_payload_bytes == 1024
    assert RULES.max_future_skew_ms == SKEW_MS
    assert RULES.accept_unknown_points is False
    assert RULES.devices["meter1"]["voltage_l1_v"] == (0, 400)
    assert RULES.devices["meter1"]["energy_import_wh"] == (-math.inf, math.inf)
    assert set(RULES.devices) == {"meter1", "pv-2"}


def test_a_valid_message_becomes_samples_with_their_identity() -> None:
    outcome = run(message({"active_power_w": 41250.5, "voltage_l1_v": 231}, seq=1842))
    assert outcome.ok
    assert outcome.seq == 1842
    assert outcome.ts_ms == NOW
    assert outcome.samples == [
        Sample(SITE, "meter1", "active_power_w", NOW, 41250.5),
        Sample(SITE, "meter1", "voltage_l1_v", NOW, 231.0),
    ]
    # Integers become floats; floats stay floats.
    assert all(type(s.value) is float for s in outcome.samples)


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (NOW_TEXT, NOW),
        ("2026-11-26T12:00:00Z", NOW),
        ("2026-11-26T12:00:00.001Z", NOW + 1),
        ("2026-11-26T12:00:00.999z", NOW + 999),
        ("2026-11-26T13:00:00.250+01:00", NOW + 250),
        ("2026-11-26T07:00:00-05:00", NOW),
        (NOW, NOW),
        (NOW - 86_400_000, NOW - 86_400_000),
        (NOW + SKEW_MS, NOW + SKEW_MS),  # exactly at the skew limit is still accepted
    ],
)
def test_timestamp_formats(ts: object, expected_ms: int) -> None:
    outcome = run(message({"active_power_w": 1.0}, ts=ts))
    assert outcome.ok, outcome.rejections
    assert outcome.samples[0].ts_ms == expected_ms


def test_seq_is_optional() -> None:
    outcome = run(message({"active_power_w": 1.0}))
    assert outcome.ok
    assert outcome.seq is None


WHOLE_MESSAGE_CASES: list[tuple[str, bytes, str, RejectReason]] = [
    ("not JSON", b"active_power_w=1", "meter1", RejectReason.NOT_JSON),
    ("empty payload", b"", "meter1", RejectReason.NOT_JSON),
    ("binary", b"\xff\xfe\x00\x01", "meter1", RejectReason.NOT_JSON),
    ("truncated JSON", b'{"ts": 1, "values": {', "meter1", RejectReason.NOT_JSON),
    ("array", b"[1, 2]", "meter1", RejectReason.NOT_OBJECT),
    ("number", b"42", "meter1", RejectReason.NOT_OBJECT),
    ("string", b'"hello"', "meter1", RejectReason.NOT_OBJECT),
    ("null", b"null", "meter1", RejectReason.NOT_OBJECT),
    ("no values", b'{"ts": "2026-11-26T12:00:00Z"}', "meter1", RejectReason.MISSING_VALUES),
    ("values is a list", message([1, 2]), "meter1", RejectReason.MISSING_VALUES),
    ("values is null", message(None), "meter1", RejectReason.MISSING_VALUES),
    ("values is text", message("1.0"), "meter1", RejectReason.MISSING_VALUES),
    ("ts missing", b'{"values": {"active_power_w": 1}}', "meter1", RejectReason.BAD_TS),
    ("ts null", message({"active_power_w": 1}, ts=None), "meter1", RejectReason.BAD_TS),
    ("ts words", message({"active_power_w": 1}, ts="yesterday"), "meter1", RejectReason.BAD_TS),
    (
        "ts without offset",
        message({"active_power_w": 1}, ts="2026-11-26T12:00:00"),
        "meter1",
        RejectReason.BAD_TS,
    ),
    ("ts boolean", message({"active_power_w": 1}, ts=True), "meter1", RejectReason.BAD_TS),
    ("ts negative", message({"active_power_w": 1}, ts=-5), "meter1", RejectReason.BAD_TS),
    ("ts float", message({"active_power_w": 1}, ts=1.7e12), "meter1", RejectReason.BAD_TS),
    (
        "ts in seconds",
        message({"active_power_w": 1}, ts=1_795_694_400),
        "meter1",
        RejectReason.BAD_TS,
    ),
    ("ts object", message({"active_power_w": 1}, ts={}), "meter1", RejectReason.BAD_TS),
    (
        "ts beyond skew",
        message({"active_power_w": 1}, ts=NOW + SKEW_MS + 1),
        "meter1",
        RejectReason.FUTURE_TS,
    ),
    (
        "ts a day ahead",
        message({"active_power_w": 1}, ts="2026-11-27T12:00:00Z"),
        "meter1",
        RejectReason.FUTURE_TS,
    ),
    ("unknown device", message({"active_power_w": 1}), "meter9", RejectReason.UNKNOWN_DEVICE),
    # Size is checked before parsing: an oversized payload is "oversized", even if not JSON.
    ("oversized", b"x" * 1025, "meter1", RejectReason.OVERSIZED),
    (
        "oversized JSON",
        message({"active_power_w": 1.0}, pad="y" * 1024),
        "meter1",
        RejectReason.OVERSIZED,
    ),
    ("oversized unknown device", b"x" * 2000, "meter9", RejectReason.OVERSIZED),
]


@pytest.mark.parametrize(
    ("payload", "device", "reason"),
    [case[1:] for case in WHOLE_MESSAGE_CASES],
    ids=[case[0] for case in WHOLE_MESSAGE_CASES],
)
def test_whole_message_rejections(payload: bytes, device: str, reason: RejectReason) -> None:
    outcome = run(payload, device=device)
    assert outcome.samples == []
    assert len(outcome.rejections) == 1
    rejection = outcome.rejections[0]
    assert rejection.point is None
    assert rejection.reason is reason
    assert rejection.detail  # says what is wrong


def test_payload_exactly_at_the_limit_is_parsed() -> None:
    base = message({"active_power_w": 1.0}, pad="")
    padded = message({"active_power_w": 1.0}, pad="y" * (1024 - len(base)))
    assert len(padded) == 1024
    assert run(padded).ok


def test_another_site_is_rejected() -> None:
    outcome = validate("other-site", "meter1", message({"active_power_w": 1}), NOW, RULES)
    assert [r.reason for r in outcome.rejections] == [RejectReason.UNKNOWN_DEVICE]


VALUE_CASES: list[tuple[str, str, RejectReason]] = [
    # (JSON text of the value, point, reason)
    ('"41.0"', "active_power_w", RejectReason.WRONG_TYPE),
    ("true", "active_power_w", RejectReason.WRONG_TYPE),
    ("false", "active_power_w", RejectReason.WRONG_TYPE),
    ("null", "active_power_w", RejectReason.WRONG_TYPE),
    ("[1.0]", "active_power_w", RejectReason.WRONG_TYPE),
    ('{"v": 1.0}', "active_power_w", RejectReason.WRONG_TYPE),
    ("NaN", "active_power_w", RejectReason.NOT_FINITE),
    ("Infinity", "energy_import_wh", RejectReason.NOT_FINITE),
    ("-Infinity", "energy_import_wh", RejectReason.NOT_FINITE),
    ("1e400", "energy_import_wh", RejectReason.NOT_FINITE),
    ("400.0001", "voltage_l1_v", RejectReason.OUT_OF_RANGE),
    ("-0.5", "voltage_l1_v", RejectReason.OUT_OF_RANGE),
    ("100001", "active_power_w", RejectReason.OUT_OF_RANGE),
    ("1.0", "reactive_power_var", RejectReason.UNKNOWN_POINT),
    ("1.0", "Active_Power_W", RejectReason.BAD_POINT_NAME),
    ("1.0", "power", RejectReason.BAD_POINT_NAME),  # no unit suffix
    ("1.0", "active power_w", RejectReason.BAD_POINT_NAME),
    ("1.0", "meter/active_power_w", RejectReason.BAD_POINT_NAME),
    ("1.0", "", RejectReason.BAD_POINT_NAME),
    ("1.0", "p" * 70 + "_w", RejectReason.BAD_POINT_NAME),
]


@pytest.mark.parametrize(("value_json", "point", "reason"), VALUE_CASES)
def test_bad_values_are_rejected_and_their_siblings_kept(
    value_json: str, point: str, reason: RejectReason
) -> None:
    # One good sibling before the bad value, one after: neither position loses it.
    siblings = [
        (name, value)
        for name, value in (
            ("active_power_w", 5.0),
            ("voltage_l1_v", 230.0),
            ("energy_import_wh", 7.0),
        )
        if name != point
    ][:2]
    (first, first_value), (last, last_value) = siblings
    payload = (
        f'{{"ts": "2026-11-26T12:00:00Z", "values": {{"{first}": {first_value}, '
        f'{json.dumps(point)}: {value_json}, "{last}": {last_value}}}}}'
    ).encode()
    outcome = run(payload)
    assert len(outcome.rejections) == 1, outcome.rejections
    rejection = outcome.rejections[0]
    assert rejection.reason is reason
    assert rejection.point == point
    assert rejection.detail
    assert {s.point: s.value for s in outcome.samples} == {first: first_value, last: last_value}


def test_nan_literals_do_not_cost_the_siblings() -> None:
    # Python's json.dumps writes NaN by default; such a message is not JSON, but only the
    # NaN values are rejected.
    payload = json.dumps(
        {"ts": NOW, "values": {"active_power_w": math.nan, "voltage_l1_v": 230.0}}
    ).encode()
    assert b"NaN" in payload
    outcome = run(payload)
    assert [(r.point, r.reason) for r in outcome.rejections] == [
        ("active_power_w", RejectReason.NOT_FINITE)
    ]
    assert [s.point for s in outcome.samples] == ["voltage_l1_v"]


def test_range_bounds_are_inclusive() -> None:
    outcome = run(message({"voltage_l1_v": 400, "active_power_w": -100000.0}))
    assert outcome.ok
    assert len(outcome.samples) == 2


def test_several_rejections_in_one_message_each_have_their_reason() -> None:
    payload = message(
        {
            "active_power_w": "high",
            "voltage_l1_v": 1e6,
            "energy_import_wh": 12.5,
            "frequency_hz": 50.0,
            "BAD": 1,
        },
        seq="7",
    )
    outcome = run(payload)
    assert [s.point for s in outcome.samples] == ["energy_import_wh"]
    assert [(r.point, r.reason) for r in outcome.rejections] == [
        (None, RejectReason.WRONG_TYPE),  # seq
        ("active_power_w", RejectReason.WRONG_TYPE),
        ("voltage_l1_v", RejectReason.OUT_OF_RANGE),
        ("frequency_hz", RejectReason.UNKNOWN_POINT),
        ("BAD", RejectReason.BAD_POINT_NAME),
    ]
    assert outcome.seq is None
    assert outcome.reasons == [
        RejectReason.WRONG_TYPE,
        RejectReason.OUT_OF_RANGE,
        RejectReason.UNKNOWN_POINT,
        RejectReason.BAD_POINT_NAME,
    ]


def test_accept_unknown_points_stores_well_named_points_only() -> None:
    rules = ValidationRules.from_config(
        CONFIG.model_copy(
            update={"ingest": CONFIG.ingest.model_copy(update={"accept_unknown_points": True})}
        )
    )
    outcome = run(message({"frequency_hz": 50.01, "Frequency": 50.0, "x_w": "1"}), rules=rules)
    assert [s.point for s in outcome.samples] == ["frequency_hz"]
    assert [(r.point, r.reason) for r in outcome.rejections] == [
        ("Frequency", RejectReason.BAD_POINT_NAME),
        ("x_w", RejectReason.WRONG_TYPE),  # unknown points are still type-checked
    ]


def test_an_empty_values_object_is_not_an_error() -> None:
    outcome = run(message({}))
    assert outcome == Outcome([], [], NOW, None)


def test_rejection_details_are_bounded() -> None:
    outcome = run(message({"active_power_w": "x" * 10_000}), rules=_rules(max_payload=64_000))
    assert len(outcome.rejections[0].detail) < 200


def test_skew_and_size_follow_the_configuration() -> None:
    rules = _rules(max_payload=64, skew=timedelta(seconds=1))
    assert run(
        message({"active_power_w": 1}, ts=NOW + 1001), rules=_rules(skew=timedelta(seconds=1))
    ).reasons == [RejectReason.FUTURE_TS]
    assert run(b'{"ts":1795694400000,"values":{"active_power_w":1.0}}', rules=rules).ok
    assert run(
        b'{"ts":1795694400000,"values":{"active_power_w":1.0}} ' + b" " * 20, rules=rules
    ).reasons == [RejectReason.OVERSIZED]


def _rules(max_payload: int = 1024, skew: timedelta = timedelta(minutes=5)) -> ValidationRules:
    ingest = CONFIG.ingest.model_copy(
        update={"max_payload_bytes": max_payload, "max_future_skew": skew}
    )
    return ValidationRules.from_config(CONFIG.model_copy(update={"ingest": ingest}))


# Every value of a message ends up either stored or rejected, never both, never neither.
json_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
point_names = st.one_of(
    st.sampled_from(["active_power_w", "voltage_l1_v", "energy_import_wh", "frequency_hz"]),
    st.text(max_size=8),
)


@given(st.dictionaries(point_names, json_values, max_size=8))
def test_every_value_is_accounted_for(values: dict[str, Any]) -> None:
    payload = json.dumps({"ts": NOW, "values": values}).encode()
    outcome = validate(SITE, "meter1", payload, NOW, _rules(max_payload=1 << 20))
    stored = [s.point for s in outcome.samples]
    rejected = [r.point for r in outcome.rejections]
    assert sorted(stored + rejected) == sorted(values)
    assert not set(stored) & set(rejected)
    for sample in outcome.samples:
        assert type(sample.value) is float
        assert math.isfinite(sample.value)
        low, high = RULES.devices["meter1"][sample.point]
        assert low <= sample.value <= high
    for rejection in outcome.rejections:
        assert isinstance(rejection, Rejection)


def test_orjson_and_json_payloads_validate_alike() -> None:
    values = {"active_power_w": 1.5, "voltage_l1_v": 230}
    a = run(orjson.dumps({"ts": NOW, "values": values}))
    b = run(json.dumps({"ts": NOW, "values": values}, indent=2).encode())
    assert a == b


def test_the_controller_is_an_open_device_of_its_site() -> None:
    """The control engine's metrics (any well-named point) are stored; other unknown
    devices are still refused."""
    config = GridPilotConfig.model_validate(
        {"site": {"id": "s1"}, "control": {"id": "ctl"}, "devices": []}
    )
    rules = ValidationRules.from_config(config)
    payload = b'{"ts": 1790000000000, "values": {"peak_shaving_limit_w": 80000, "bad name": 1}}'
    outcome = validate("s1", "ctl", payload, 1790000001000, rules)
    assert [s.point for s in outcome.samples] == ["peak_shaving_limit_w"]
    assert outcome.reasons == [RejectReason.BAD_POINT_NAME]
    other = validate("s1", "intruder", payload, 1790000001000, rules)
    assert other.samples == []
    assert other.reasons == [RejectReason.UNKNOWN_DEVICE]


def test_a_value_nested_deeper_than_json_dumps_goes_is_rejected_not_raised() -> None:
    # Found by benchmarks/fuzz/fuzz.py: orjson accepts 1000 nested arrays, json.dumps (which
    # builds the rejection's detail) raised RecursionError out of validate.
    payload = (
        b'{"ts":'
        + str(NOW).encode()
        + b',"values":{"active_power_w":'
        + b"[" * 1000
        + b"]" * 1000
        + b',"voltage_l1_v":230}}'
    )
    outcome = validate(SITE, "meter1", payload, NOW, replace(RULES, max_payload_bytes=10_000))
    assert [(r.point, r.reason) for r in outcome.rejections] == [
        ("active_power_w", RejectReason.WRONG_TYPE)
    ]
    assert "deeply nested" in outcome.rejections[0].detail
    assert [s.value for s in outcome.samples] == [230.0]


def test_a_ts_too_large_for_a_float_is_rejected_as_future_not_raised() -> None:
    # Found by benchmarks/fuzz/fuzz.py: a 400-digit integer ts (the lenient parser takes it)
    # made the "s in the future" message divide it into a float: OverflowError.
    payload = b'{"ts":1' + b"9" * 400 + b',"values":{"active_power_w":1.0}}'
    outcome = run(payload)
    assert [(r.point, r.reason) for r in outcome.rejections] == [(None, RejectReason.FUTURE_TS)]
    assert outcome.samples == []


def test_the_future_ts_message_keeps_its_milliseconds() -> None:
    outcome = run(message({"active_power_w": 1.0}, ts=NOW + SKEW_MS + 1_234))
    assert "ts is 301.234 s in the future" in outcome.rejections[0].detail
