"""The Sparkplug B host rules and point naming, on payloads built in the test (pure)."""

from __future__ import annotations

import pytest

from gridpilot.bus.sparkplug import (
    DataType,
    SparkplugMetric,
    SparkplugPayload,
    decode_payload,
    encode_payload,
    parse_topic,
    rebirth_command,
)
from gridpilot.config.models import GridPilotConfig
from gridpilot.ingest.sparkplug import SparkplugHost, derive_device_id, derive_point_name
from gridpilot.ingest.validation import RejectReason, ValidationRules

NOW = 1_795_694_400_000
G = "spBv1.0/Plant A"


def host(**sparkplug: object) -> SparkplugHost:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": "s1"},
            "devices": [
                {
                    "id": "meter",
                    "protocol": "mqtt",
                    "points": [{"point": "active_power_w", "valid_range": [-1000, 1000]}],
                }
            ],
            "sparkplug": {
                "group": "Plant A",
                "devices": [
                    {"edge_node": "e1", "id": "node1"},
                    {"edge_node": "e1", "device": "m", "id": "meter"},
                    {"edge_node": "e1", "device": "pv", "id": "pv", "points": {"P": "ac_w"}},
                ],
                **sparkplug,
            },
        }
    )
    return SparkplugHost(config, ValidationRules.from_config(config))


def m(
    name: str | None,
    value: float | bool | None,
    datatype: DataType | None = DataType.DOUBLE,
    alias: int | None = None,
    ts: int | None = NOW,
) -> SparkplugMetric:
    return SparkplugMetric(name, alias, datatype, ts, value)


def payload(seq: int | None, *metrics: SparkplugMetric) -> bytes:
    return encode_payload(SparkplugPayload(NOW, seq, metrics))


def birth(h: SparkplugHost, bd_seq: int = 0, now: int = NOW) -> None:
    out = h.handle(
        f"{G}/NBIRTH/e1",
        payload(0, m("bdSeq", bd_seq, DataType.INT64), m("Uptime [s]", 5, DataType.UINT32, 1)),
        now,
    )
    assert out is not None
    assert out.rebirth is None
    out = h.handle(
        f"{G}/DBIRTH/e1/pv",
        payload(1, m("P", 10.0, alias=7), m("Inverter/Active Power [kW]", 2.0, alias=8)),
        now,
    )
    assert out is not None
    assert [s.point for s in out.samples] == ["ac_w", "inverter_active_power_w"]


@pytest.mark.parametrize(
    ("metric", "datatype", "properties", "expected"),
    [
        ("Inverter/Active Power [kW]", DataType.DOUBLE, {}, ("inverter_active_power_w", 1e3)),
        (
            "Inverter/Active Power",
            DataType.DOUBLE,
            {"engUnit": "kW"},
            ("inverter_active_power_w", 1e3),
        ),
        ("Energy Import (kWh)", DataType.DOUBLE, {}, ("energy_import_wh", 1e3)),
        ("Temp (°C)", DataType.INT16, {}, ("temp_degc", 1.0)),
        ("L1 Voltage", DataType.FLOAT, {"unit": "V"}, ("l1_voltage_v", 1.0)),
        ("SoC", DataType.FLOAT, {"engUnit": "%"}, ("soc_pct", 1.0)),
        ("Pump/Pressure [bar]", DataType.FLOAT, {}, ("pump_pressure_pa", 1e5)),
        ("active_power_w", DataType.DOUBLE, {}, ("active_power_w", 1.0)),
        ("Breaker Closed", DataType.BOOLEAN, {}, ("breaker_closed_state", 1.0)),
        ("Status Word", DataType.UINT16, {}, ("status_word", 1.0)),  # no unit: rejected later
        ("Grid/Frequency [furlongs]", DataType.FLOAT, {}, ("grid_frequency_furlongs", 1.0)),
    ],
)
def test_point_names_are_derived_deterministically(
    metric: str, datatype: DataType, properties: dict[str, str], expected: tuple[str, float]
) -> None:
    assert derive_point_name(metric, datatype, properties) == expected


def test_device_ids_are_derived_from_node_and_device() -> None:
    assert derive_device_id("Edge Node 1", None) == "edge_node_1"
    assert derive_device_id("Edge Node 1", "Inverter/7") == "edge_node_1-inverter_7"


def test_topics() -> None:
    topic = parse_topic("spBv1.0/G/DDATA/e1/d1")
    assert topic is not None
    assert (topic.group, topic.type, topic.edge_node, topic.device) == ("G", "DDATA", "e1", "d1")
    assert parse_topic("spBv1.0/G/NDATA/e1/d1") is None  # node messages have no device
    assert parse_topic("spBv1.0/G/DDATA/e1") is None
    assert parse_topic("spBv1.0/STATE/host") is None
    assert parse_topic("gridpilot/v1/s/d/telemetry") is None


def test_signed_integers_read_back_in_both_encodings() -> None:
    # Int8 -1 as its own width (255) and sign-extended to 32 bits (4294967295).
    for raw in (255, 4_294_967_295):
        encoded = encode_payload(
            SparkplugPayload(NOW, 0, (SparkplugMetric("t", None, DataType.UINT32, NOW, raw),))
        )
        decoded = decode_payload(encoded.replace(b"\x20\x07", b"\x20\x01"))  # datatype -> Int8
        assert decoded.metrics[0].datatype is DataType.INT8
        assert decoded.metrics[0].value == -1


def test_data_by_alias_uses_the_births_names_and_datatypes() -> None:
    h = host()
    birth(h)
    out = h.handle(f"{G}/DDATA/e1/pv", payload(2, m(None, 3.5, None, alias=8)), NOW)
    assert out is not None
    assert [(s.device, s.point, s.value) for s in out.samples] == [
        ("pv", "inverter_active_power_w", 3500.0)
    ]
    unknown = h.handle(f"{G}/DDATA/e1/pv", payload(3, m(None, 1.0, None, alias=99)), NOW)
    assert unknown is not None
    assert [r.reason for r in unknown.rejections] == [RejectReason.UNKNOWN_POINT]


def test_sequence_numbers_wrap_from_255_to_0() -> None:
    h = host()
    birth(h)
    for seq in [*range(2, 256), 0, 1, 2]:
        out = h.handle(f"{G}/NDATA/e1", payload(seq, m("Uptime [s]", seq, DataType.UINT32)), NOW)
        assert out is not None
        assert out.rebirth is None, seq
        assert len(out.samples) == 1


def test_a_gap_asks_for_one_rebirth_per_interval_and_data_waits_for_the_birth() -> None:
    h = host(rebirth_interval="PT5S")
    birth(h)
    gap = h.handle(f"{G}/DDATA/e1/pv", payload(3, m("P", 1.0)), NOW)  # expected 2
    assert gap is not None
    assert gap.rebirth == "e1"
    assert not gap.samples
    assert gap.ignored is not None
    assert "expected 2" in gap.ignored
    again = h.handle(f"{G}/DDATA/e1/pv", payload(4, m("P", 1.0)), NOW + 1_000)
    assert again is not None
    assert again.rebirth is None  # rate-limited
    assert not again.samples
    later = h.handle(f"{G}/DDATA/e1/pv", payload(5, m("P", 1.0)), NOW + 6_000)
    assert later is not None
    assert later.rebirth == "e1"
    birth(h, now=NOW + 7_000)
    after = h.handle(f"{G}/DDATA/e1/pv", payload(2, m("P", 2.0)), NOW + 7_000)
    assert after is not None
    assert [s.value for s in after.samples] == [2.0]


def test_data_before_any_birth_asks_for_a_rebirth() -> None:
    out = host().handle(f"{G}/NDATA/e1", payload(7, m("Uptime [s]", 1, DataType.UINT32)), NOW)
    assert out is not None
    assert out.rebirth == "e1"
    assert not out.samples


def test_ndeath_counts_only_with_the_births_bdseq() -> None:
    h = host()
    birth(h, bd_seq=4)
    h.handle(f"{G}/DBIRTH/e1/m", payload(2, m("active_power_w", 1.0)), NOW)
    stale = h.handle(f"{G}/NDEATH/e1", payload(None, m("bdSeq", 3, DataType.INT64)), NOW)
    assert stale is not None
    assert not stale.states
    death = h.handle(f"{G}/NDEATH/e1", payload(None, m("bdSeq", 4, DataType.INT64)), NOW)
    assert death is not None
    assert sorted((c.device, c.online) for c in death.states) == [
        ("meter", False),
        ("node1", False),
        ("pv", False),
    ]
    out = h.handle(f"{G}/DDATA/e1/pv", payload(3, m("P", 1.0)), NOW)
    assert out is not None
    assert out.rebirth == "e1"


def test_ddeath_marks_one_device_offline() -> None:
    h = host()
    birth(h)
    out = h.handle(f"{G}/DDEATH/e1/pv", payload(2), NOW)
    assert out is not None
    assert [(c.device, c.online) for c in out.states] == [("pv", False)]


def test_configured_devices_keep_their_point_rules() -> None:
    h = host()
    birth(h)
    out = h.handle(
        f"{G}/DBIRTH/e1/m",
        payload(2, m("active_power_w", 5000.0), m("Reactive Power [var]", 1.0)),
        NOW,
    )
    assert out is not None
    assert not out.samples
    assert [r.reason for r in out.rejections] == [
        RejectReason.OUT_OF_RANGE,
        RejectReason.UNKNOWN_POINT,
    ]


def test_unmapped_nodes_are_rejected_unless_auto_devices() -> None:
    out = host().handle(f"{G}/NBIRTH/other", payload(0, m("x_w", 1.0)), NOW)
    assert out is not None
    assert [r.reason for r in out.rejections] == [RejectReason.UNKNOWN_DEVICE]
    auto = host(auto_devices=True).handle(f"{G}/NBIRTH/Other Node", payload(0, m("x_w", 1.0)), NOW)
    assert auto is not None
    assert [(s.device, s.point) for s in auto.samples] == [("other_node", "x_w")]


def test_metrics_without_a_unit_are_rejected_with_a_hint_and_protocol_metrics_skipped() -> None:
    h = host()
    out = h.handle(
        f"{G}/NBIRTH/e1",
        payload(
            0,
            m("bdSeq", 0, DataType.INT64),
            m("Node Control/Rebirth", False, DataType.BOOLEAN),
            m("Status Word", 3, DataType.UINT16),
            m("Name", None, DataType.STRING),
        ),
        NOW,
    )
    assert out is not None
    assert not out.samples
    assert out.skipped == 3
    (rejection,) = out.rejections
    assert rejection.reason is RejectReason.BAD_POINT_NAME
    assert "sparkplug.devices[].points" in rejection.detail


def test_future_and_missing_timestamps_are_rejected() -> None:
    h = host()
    out = h.handle(
        f"{G}/NBIRTH/e1",
        payload(0, m("a_w", 1.0, ts=NOW + 3_600_000)),
        NOW,
    )
    assert out is not None
    assert [r.reason for r in out.rejections] == [RejectReason.FUTURE_TS]


def test_not_a_payload_is_rejected() -> None:
    out = host().handle(f"{G}/NDATA/e1", b"\xff\xff\xff", NOW)
    assert out is not None
    assert out.rejections[0].detail.startswith("not a Sparkplug B protobuf payload")


def test_the_rebirth_command() -> None:
    decoded = decode_payload(rebirth_command(NOW))
    assert decoded.timestamp_ms == NOW
    (metric,) = decoded.metrics
    assert (metric.name, metric.datatype, metric.value) == (
        "Node Control/Rebirth",
        DataType.BOOLEAN,
        True,
    )


def test_state_is_kept_for_mapped_nodes_only() -> None:
    h = host()
    for i in range(50):
        out = h.handle(f"{G}/NDATA/stranger-{i}", payload(i, m("x_w", 1.0)), NOW)
        assert out is not None
        assert out.rebirth is None  # never ask a node we do not map
        assert out.rejections[0].reason is RejectReason.UNKNOWN_DEVICE
    assert h.tracked_nodes == 0
