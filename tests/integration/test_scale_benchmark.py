"""The connections benchmark's harness, tiny (a few dozen connections, seconds): it runs end
to end through Mosquitto, ``gridpilot run ingest`` and SQLite, and its accounting adds up.
Speed is not asserted here (BENCHMARKS.md has the figures)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from benchmarks.scale import bench_connections as bench

from gridpilot.model import Sample
from gridpilot.storage.sqlite import SqliteStorage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(bench.MOSQUITTO).exists(), reason="needs mosquitto"),
]

DEVICES = 24
SECONDS = 5


def run_tiny(tmp_path: Path, ingests: int) -> dict[str, Any]:
    out = tmp_path / "scale.json"
    report = bench.main(
        [
            *("--devices", str(DEVICES), "--minutes", str(SECONDS / 60), "--load-procs", "2"),
            *("--ramp", "200", "--ingest", str(ingests), "--json", str(out)),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    return report


def check_report(report: dict[str, Any], ingests: int) -> None:
    settings = report["settings"]
    assert (settings["devices"], settings["seconds"]) == (DEVICES, SECONDS)
    assert settings["ingest_processes"] == ingests
    assert settings["rlimit_nofile"]["after"][0] >= DEVICES + 1024
    # Every device connected once, through the device listener, and stayed connected.
    connections = report["connections"]
    assert connections["established"] == DEVICES
    assert (connections["refused"], connections["failed"]) == (0, 0)
    assert 0 < connections["connect_p50_ms"] <= connections["connect_p99_ms"]
    assert report["load"]["disconnects"] == 0

    acc = report["accounting"]
    # Each device sent one message a second: sent + skipped (disconnected) = the schedule.
    assert acc["messages_sent"] + acc["messages_skipped_disconnected"] == DEVICES * SECONDS
    assert acc["messages_acknowledged"] == acc["messages_sent"] - acc["messages_unacknowledged"]
    assert acc["samples_expected"] == acc["messages_acknowledged"] * len(bench.POINTS)
    # Nothing the broker acknowledged is missing, nothing is stored twice; every row in
    # storage is one of the messages sent.
    assert (acc["lost_samples"], acc["duplicated_samples"]) == (0, 0)
    assert (acc["lost_messages"], acc["duplicated_messages"], acc["foreign_rows"]) == (0, 0, 0)
    assert acc["samples_stored"] == acc["samples_expected"] + acc[
        "unacknowledged_but_stored"
    ] * len(bench.POINTS)

    latency = report["latency"]
    assert 0 < latency["probes_stored"] <= latency["probes_sent"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]

    up = report["keeping_up"]
    assert up["drained"] is True
    assert up["drain_s"] is not None
    assert up["drain_s"] >= 0
    assert up["backlog_at_end_messages"] >= 0
    # Each ingest process logged its share; together they wrote every device sample and
    # every probe once, and storage had none of them already.
    shares = up["ingest_shares"]
    assert len(shares) == ingests
    assert len({s["client"] for s in shares}) == ingests
    assert all(s["samples_written"] > 0 for s in shares)
    written = sum(s["samples_written"] for s in shares)
    assert written == acc["samples_stored"] + latency["probes_stored"]
    assert up["ingest_duplicates"] == 0

    timeline = report["timeline"]
    assert timeline
    for point in timeline:
        assert point["behind"] == point["due"] - point["queryable"]
        assert 0 <= point["due"] <= DEVICES * SECONDS

    names = {"mosquitto", "load-0", "load-1", "harness"} | {f"ingest-{i}" for i in range(ingests)}
    assert set(report["processes"]) == names
    for process in report["processes"].values():
        # CPU time is counted in clock ticks: a few seconds of light load may show 0.
        assert process["cpu_s"] >= 0
        assert process["run_queue_wait_s_in_window"] >= 0
        assert process["peak_rss_mib"] > 0
    assert 0 <= report["load"]["machine_busy_pct"] <= 100
    assert report["machine"]["commit"]


@pytest.mark.timeout(180)
def test_one_ingest_process_stores_every_acknowledged_message_once(tmp_path: Path) -> None:
    check_report(run_tiny(tmp_path, 1), 1)


@pytest.mark.timeout(180)
def test_two_ingest_processes_split_the_stream_on_a_shared_subscription(
    tmp_path: Path,
) -> None:
    check_report(run_tiny(tmp_path, 2), 2)


def test_the_accounting_finds_lost_duplicated_and_unacknowledged_messages(
    tmp_path: Path,
) -> None:
    """Storage written by hand: device m00000 lacks message 2 (lost: it was acknowledged),
    m00001 has message 1 under a second timestamp (duplicated) and message 3, which the
    broker never acknowledged (stored, not counted as lost)."""
    db = tmp_path / "bench.db"
    ts = {seq: 1_800_000_000_000 + seq * 1000 for seq in range(4)}

    def message(device: str, seq: int, ts_ms: int) -> list[Sample]:
        return [
            Sample(bench.SITE, device, point, ts_ms, float(seq) if point == "energy_wh" else 1.0)
            for point in bench.POINTS
        ]

    samples = [s for seq in (0, 1, 3) for s in message("m00000", seq, ts[seq])]
    samples += [s for seq in (0, 1, 2, 3) for s in message("m00001", seq, ts[seq])]
    samples += message("m00001", 1, ts[3] + 500)

    async def write() -> None:
        async with SqliteStorage(db) as storage:
            await storage.write(samples)

    asyncio.run(write())
    result = bench.account(
        db,
        sent={"m00000": 4, "m00001": 4},
        skipped={},
        unacked={"m00001": [(3, ts[3])]},
        rounds=4,
    )
    assert result["messages_sent"] == 8
    assert result["messages_acknowledged"] == 7
    assert result["unacknowledged_but_stored"] == 1
    assert result["lost_messages"] == 1
    assert result["lost_samples"] == len(bench.POINTS)
    assert result["duplicated_messages"] == 1
    assert result["duplicated_samples"] == len(bench.POINTS)
    assert result["samples_stored"] == len(samples)


def test_the_schedule_counts_messages_due() -> None:
    # Device g of 4 sends message k at t0 + k + g/4.
    assert bench.due_messages(99.0, 100.0, 4, 3) == 0
    assert bench.due_messages(100.0, 100.0, 4, 3) == 1
    assert bench.due_messages(100.6, 100.0, 4, 3) == 3
    assert bench.due_messages(101.0, 100.0, 4, 3) == 5
    assert bench.due_messages(103.5, 100.0, 4, 3) == 12
