"""Message signatures (bus.signing) and the key each device's telemetry must carry
(ingest.service.publisher_keys): pure, no broker."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.errors import BusRefusedError
from gridpilot.bus.signing import decode_key, sign, verify
from gridpilot.config.models import GridPilotConfig
from gridpilot.ingest.service import publisher_keys

KEY = bytes(range(32))
TOPIC = "gridpilot/v1/plant/meter-a/telemetry"
PAYLOAD = b'{"ts":1795694400000,"values":{"active_power_w":1.0}}'


def test_a_signature_verifies_only_for_its_key_topic_and_payload() -> None:
    signature = sign(KEY, TOPIC, PAYLOAD)
    assert signature.startswith("v1.")
    assert verify(KEY, TOPIC, PAYLOAD, signature)
    assert not verify(KEY, TOPIC.replace("meter-a", "meter-b"), PAYLOAD, signature)
    assert not verify(KEY, TOPIC, PAYLOAD.replace(b"1.0", b"9.0"), signature)
    assert not verify(bytes(32), TOPIC, PAYLOAD, signature)
    assert not verify(KEY, TOPIC, PAYLOAD, None)
    assert not verify(KEY, TOPIC, PAYLOAD, "v1.")


def test_the_topic_and_payload_cannot_trade_bytes() -> None:
    # The NUL separator: moving a byte from the topic's end to the payload's start changes
    # what is signed.
    assert sign(KEY, "a/b", b"c") != sign(KEY, "a/", b"bc")


def test_keys_are_base64_of_at_least_16_bytes() -> None:
    assert decode_key(base64.b64encode(KEY).decode() + "\n", what="k") == KEY
    with pytest.raises(ValueError, match="not base64"):
        decode_key("not base64!", what="k")
    with pytest.raises(ValueError, match="at least 16"):
        decode_key(base64.b64encode(b"short").decode(), what="k")


def _config(tmp_path: Path) -> GridPilotConfig:
    key_file = tmp_path / "sensor.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    key_file.chmod(0o600)
    return GridPilotConfig.model_validate(
        {
            "site": {"id": "plant"},
            "control": {"id": "ems", "cycle": "PT1S"},
            "devices": [
                {"id": "meter", "host": "10.0.0.5", "points": [{"point": "p_w", "address": 0}]},
                {
                    "id": "sensor",
                    "protocol": "mqtt",
                    "signing_key_file": "sensor.key",
                    "points": [{"point": "t_degc"}],
                },
            ],
        }
    )


def test_modbus_devices_and_the_controller_use_the_services_key(tmp_path: Path) -> None:
    config = _config(tmp_path)
    services = BrokerAddress("127.0.0.1", 1883, signing_key=KEY)
    keys = publisher_keys(config, services, tmp_path)
    assert keys["meter"] == KEY
    assert keys["ems"] == KEY
    assert keys["sensor"] == decode_key((tmp_path / "sensor.key").read_text(), what="k")
    with pytest.raises(BusRefusedError, match=r"broker\.signing_key_env/_file is not set"):
        publisher_keys(config, BrokerAddress("127.0.0.1", 1883), tmp_path)


def test_a_signing_key_belongs_to_mqtt_devices_only() -> None:
    with pytest.raises(ValueError, match="signing_key_\\* is for mqtt devices"):
        GridPilotConfig.model_validate(
            {
                "site": {"id": "plant"},
                "devices": [
                    {
                        "id": "meter",
                        "host": "10.0.0.5",
                        "signing_key_env": "K",
                        "points": [{"point": "p_w", "address": 0}],
                    }
                ],
            }
        )
