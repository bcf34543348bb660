"""Sparkplug B decoding and host rules, in-process: messages/s and metrics/s of
``SparkplugHost.handle`` (protobuf decode, alias resolution, sequence check, point naming,
range checks -> samples) beside ``validate`` of the same values as GridPilot JSON telemetry,
the path every other device's data takes. CPU only: no broker, no storage (the ingest
benchmark measures those).

    .venv/bin/python benchmarks/ingest/bench_sparkplug.py                 # 10 metrics/message
    .venv/bin/python benchmarks/ingest/bench_sparkplug.py --metrics 50 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import orjson

from gridpilot.bus.sparkplug import DataType, SparkplugMetric, SparkplugPayload, encode_payload
from gridpilot.config.models import GridPilotConfig
from gridpilot.ingest.sparkplug import SparkplugHost
from gridpilot.ingest.validation import ValidationRules, validate

NOW = 1_795_694_400_000
TOPIC = "spBv1.0/Bench/DDATA/edge/dev"


def run(metrics: int, messages: int) -> dict[str, object]:
    config = GridPilotConfig.model_validate(
        {
            "site": {"id": "bench"},
            "devices": [
                {
                    "id": "dev",
                    "protocol": "mqtt",
                    "points": [
                        {"point": f"metric_{i}_power_w", "valid_range": [-1e9, 1e9]}
                        for i in range(metrics)
                    ],
                }
            ],
            "sparkplug": {
                "group": "Bench",
                "devices": [
                    {"edge_node": "edge", "id": "node"},
                    {"edge_node": "edge", "device": "dev", "id": "dev"},
                ],
            },
        }
    )
    rules = ValidationRules.from_config(config)
    host = SparkplugHost(config, rules)
    names = [f"Metric {i}/Power [W]" for i in range(metrics)]
    host.handle(
        "spBv1.0/Bench/NBIRTH/edge",
        encode_payload(
            SparkplugPayload(NOW, 0, (SparkplugMetric("bdSeq", None, DataType.INT64, NOW, 0),))
        ),
        NOW,
    )
    birth = tuple(
        SparkplugMetric(name, i, DataType.DOUBLE, NOW, 0.0) for i, name in enumerate(names)
    )
    host.handle(
        "spBv1.0/Bench/DBIRTH/edge/dev", encode_payload(SparkplugPayload(NOW, 1, birth)), NOW
    )
    payloads = [
        encode_payload(
            SparkplugPayload(
                NOW + k,
                (k + 2) % 256,
                tuple(
                    SparkplugMetric(None, i, None, NOW + k, float(k + i)) for i in range(metrics)
                ),
            )
        )
        for k in range(messages)
    ]
    json_payloads = [
        orjson.dumps(
            {
                "ts": NOW + k,
                "seq": k,
                "values": {f"metric_{i}_power_w": float(k + i) for i in range(metrics)},
            }
        )
        for k in range(messages)
    ]

    start = time.perf_counter()
    samples = 0
    for payload in payloads:
        outcome = host.handle(TOPIC, payload, NOW)
        assert outcome is not None
        assert not outcome.rejections
        assert outcome.rebirth is None
        samples += len(outcome.samples)
    spb_s = time.perf_counter() - start
    assert samples == messages * metrics

    start = time.perf_counter()
    for payload in json_payloads:
        checked = validate("bench", "dev", payload, NOW, rules)
        assert len(checked.samples) == metrics
    json_s = time.perf_counter() - start

    return {
        "metrics_per_message": metrics,
        "messages": messages,
        "sparkplug_msg_s": round(messages / spb_s),
        "sparkplug_metrics_s": round(samples / spb_s),
        "sparkplug_bytes_per_msg": round(sum(map(len, payloads)) / messages),
        "json_msg_s": round(messages / json_s),
        "json_values_s": round(messages * metrics / json_s),
        "json_bytes_per_msg": round(sum(map(len, json_payloads)) / messages),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=10, help="metrics per DDATA message")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args()
    result = run(args.metrics, args.messages)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
