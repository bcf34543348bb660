"""Stream integrity end to end: telemetry with a hole (skipped seqs, a silent stretch) and a
publisher restart, published through real Mosquitto into ingest and SQLite; then ingest's
live counters (``/metrics``), its stored gap event, ``GET /api/v1/devices/{id}/gaps`` and
``gridpilot gaps`` must all report exactly that hole."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from gridpilot.api.app import create_app
from gridpilot.api.metrics import LocalServices
from gridpilot.api.state_cache import DeviceStateCache
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.config import GridPilotConfig
from gridpilot.ingest.service import IngestService
from gridpilot.model import Topic, now_ms, to_rfc3339
from gridpilot.ops.gaps import GapKind
from gridpilot.storage import open_storage
from tests.integration.test_api_support import Auth, client_for
from tests.unit.test_metrics import Samples

pytestmark = pytest.mark.integration

LOST = range(11, 17)
"""Messages 11..16 (seq and time) never arrive: a 7 s stretch at 1 s, 6 samples missing."""


def write_site(tmp_path: Path, site: str, broker: BrokerAddress) -> Path:
    doc = {
        "site": {"id": site},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "storage": {"path": str(tmp_path / "site.db"), "flush_interval": 0.05},
        "devices": [
            {
                "id": "meter",
                "protocol": "mqtt",
                "poll_interval": 1,  # it publishes once a second
                "points": [{"point": "active_power_w", "valid_range": [-1e5, 1e5]}],
            }
        ],
    }
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


async def gridpilot(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridpilot", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_hole_in_the_stream_is_reported_by_metrics_api_and_cli(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site = f"gaps-{uuid.uuid4().hex[:8]}"
    path = write_site(tmp_path, site, mosquitto)
    config = GridPilotConfig.model_validate_json(path.read_text())
    base = now_ms() // 1000 * 1000 - 60_000
    # (seq, ts): 1..30 at 1 s without 11..16, then the publisher restarts at seq 1.
    sent = [(i, base + i * 1000) for i in range(1, 31) if i not in LOST]
    sent += [(j, base + (30 + j) * 1000) for j in range(1, 6)]
    last_ts = sent[-1][1]
    async with (
        open_storage(config.storage, tmp_path) as storage,
        IngestService(config, mosquitto, storage) as ingest,
        BusClient(mosquitto, f"pub-{uuid.uuid4().hex[:8]}") as publisher,
    ):
        await publisher.wait_connected(10)
        topic = str(Topic.telemetry(site, "meter"))
        for seq, ts in sent:
            await publisher.publish(
                topic, encode_telemetry(ts, {"active_power_w": seq}, seq), qos=1
            )
        await publisher.flush(10)
        async with asyncio.timeout(20):
            while ingest.stats.samples_written < len(sent):  # noqa: ASYNC110 -- a counter
                await asyncio.sleep(0.02)
        assert ingest.stats.messages_rejected == 0

        # Live, in ingest: one seq gap and one interval gap of 6, the restart is no gap.
        assert ingest.streams is not None
        counts = ingest.streams.counts["meter"]
        assert counts.gaps == {GapKind.SEQ: 1, GapKind.INTERVAL: 1}
        assert counts.missing == {GapKind.SEQ: 6, GapKind.INTERVAL: 6}
        assert counts.restarts == 1
        assert counts.out_of_order == 0

        auth = Auth.in_dir(tmp_path)
        app = create_app(
            config, storage, DeviceStateCache.for_config(config),
            tokens=auth.tokens, audit=auth.audit, local=LocalServices(ingest=ingest),
        )  # fmt: skip
        async with client_for(app, auth.viewer) as http:
            response = await http.get("/metrics")
            assert response.status_code == 200, response.text
            metrics = Samples(response.text)
            for kind in ("seq", "interval"):
                labels = {"device": "meter", "kind": kind}
                assert metrics.value("gridpilot_ingest_stream_gaps_total", **labels) == 1
                missing = "gridpilot_ingest_stream_missing_messages_total"
                assert metrics.value(missing, **labels) == 6
            assert metrics.value("gridpilot_ingest_stream_restarts_total", device="meter") == 1

            # ... and stored as one site event (an API in another process shows it too).
            response = await http.get("/api/v1/events", params={"level": "warning"})
            assert response.status_code == 200, response.text
            events = [e for e in response.json()["events"] if e["source"] == "ingest"]
            assert len(events) == 1, events
            assert events[0]["ts"] == to_rfc3339(base + 17_000)
            message = events[0]["message"]
            assert message.startswith("gap in the telemetry of meter before ")
            assert "6 by seq" in message
            assert "6 by interval" in message

            # From storage, through the API.
            query = {"since": str(base), "until": str(last_ts)}
            response = await http.get("/api/v1/devices/meter/gaps", params=query)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["gaps"] == [
                {
                    "start": to_rfc3339(base + 10_000),
                    "end": to_rfc3339(base + 17_000),
                    "duration_s": 7.0,
                    "missing_samples": 6,
                    "ongoing": False,
                }
            ]
            assert body["gap_count"] == 1
            assert body["missing_samples"] == 6
            assert body["point"] == "active_power_w"
            assert (body["interval_s"], body["interval_source"]) == (1.0, "config")
            assert (body["samples"], body["expected_samples"]) == (len(sent), 34)
            assert not body["truncated"]
            # Unknown devices are 404; an over-long window is refused before it is read.
            unknown = await http.get("/api/v1/devices/nope/gaps")
            assert unknown.status_code == 404
            assert "GET /api/v1/devices lists them" in unknown.json()["error"]
            huge = await http.get("/api/v1/devices/meter/gaps", params={"since": "-400d"})
            assert huge.status_code == 422
            assert "at a time" in huge.json()["error"]
            # The route is in the OpenAPI document.
            spec = (await http.get("/api/v1/openapi.json")).json()
            assert "/api/v1/devices/{device}/gaps" in spec["paths"]

    # The same gap from the command line, reading the site's storage.
    code, out, err = await gridpilot(
        "gaps", str(path), "meter", "--since", str(base), "--until", str(last_ts), "--json"
    )
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert doc["gaps"] == body["gaps"]
    assert (doc["gap_count"], doc["missing_samples"]) == (1, 6)
    code, out, err = await gridpilot(
        "gaps", str(path), "meter", "--since", str(base), "--until", to_rfc3339(last_ts)
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == [to_rfc3339(base + 10_000), to_rfc3339(base + 17_000)]
    assert "7.0 s" in lines[0]
    assert "6 missing" in lines[0]
    assert lines[-1].startswith("meter: 1 gap(s), 6 sample(s) missing; 29 of ~34 expected")
    code, out, err = await gridpilot("gaps", str(path), "pv", "--since", "2h")
    assert code == 2
    assert "no device 'pv'" in err
    assert "meter" in err


async def test_gap_events_are_held_to_one_per_device_a_minute(
    mosquitto: BrokerAddress, tmp_path: Path
) -> None:
    site = f"gaps-{uuid.uuid4().hex[:8]}"
    config = GridPilotConfig.model_validate_json(write_site(tmp_path, site, mosquitto).read_text())
    base = now_ms() // 1000 * 1000 - 120_000
    # Gaps before seq 5 (stored), 8 (a second later: held) and 11 (70 s on: stored, with
    # the held one counted in it).
    sent = [(1, base), (2, base + 1000), (5, base + 2000), (8, base + 3000), (11, base + 73_000)]
    async with (
        open_storage(config.storage, tmp_path) as storage,
        IngestService(config, mosquitto, storage) as ingest,
        BusClient(mosquitto, f"pub-{uuid.uuid4().hex[:8]}") as publisher,
    ):
        await publisher.wait_connected(10)
        topic = str(Topic.telemetry(site, "meter"))
        for seq, ts in sent:
            await publisher.publish(
                topic, encode_telemetry(ts, {"active_power_w": seq}, seq), qos=1
            )
        await publisher.flush(10)
        async with asyncio.timeout(20):
            while ingest.stats.samples_written < len(sent):  # noqa: ASYNC110 -- a counter
                await asyncio.sleep(0.02)
        assert ingest.streams is not None
        assert ingest.streams.counts["meter"].gaps[GapKind.SEQ] == 3
        events = await storage.events(site, limit=10)
        assert [(e.ts_ms, e.source) for e in events] == [
            (base + 73_000, "ingest"),
            (base + 2000, "ingest"),
        ]
        assert "(and 1 more gap(s) since the last such event)" in events[0].message
        assert "2 by seq" in events[1].message
        assert "by interval" not in events[1].message  # a second apart: no time hole
