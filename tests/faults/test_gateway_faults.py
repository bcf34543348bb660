"""Fault injection at the gateway, with real processes: a Modbus device that numbers its
answers (``counter_device.py``), ``gridpilot run gateway`` polling it every 10 ms (10
values per poll), a persistent Mosquitto, ``gridpilot run ingest`` on SQLite. Each test
counts what was stored against what the gateway took (committed to its on-disk buffer:
``gateway_rig``): nothing lost, nothing doubled.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults.conftest import GatewayRig
from tests.faults.gateway_rig import GATEWAY_DEVICE, GatewayTally, out_of_order, stored

pytestmark = pytest.mark.integration

# Debian's libfaketime (scripts/test installs it), for the multiarch directory at hand.
_FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


def assert_nothing_lost(rig: GatewayRig, result: GatewayTally) -> None:
    detail = (
        f"{result.describe()}\ngateway log:\n{rig.gateway.log()[-3000:]}\n"
        f"ingest log:\n{rig.ingest.log()[-1500:]}"
    )
    assert result.sent > 0, detail
    assert result.lost == [], detail
    assert result.duplicated == 0, detail
    assert result.stored == result.sent, detail
    assert result.left_in_buffer == 0, detail
    # In order: no poll reached the broker's subscribers after a later one (buffered
    # polls go before live ones), redeliveries aside.
    arrivals = rig.watcher.arrivals()
    assert arrivals, "the watcher received nothing"
    assert out_of_order(arrivals) == [], out_of_order(arrivals)[:10]


@pytest.mark.parametrize("broker", ["broker-up", "broker-down"])
def test_gateway_killed_mid_stream(gateway_rig: GatewayRig, broker: str) -> None:
    """SIGKILL of the gateway. Broker up: what it had committed and not yet seen
    acknowledged is in its buffer file, and its successor sends it (again, for what the
    broker had in fact received: ingest's storage absorbs it). Broker down: the gateway
    was buffering on disk when killed; its successor keeps buffering and sends everything
    when the broker is back."""
    rig = gateway_rig
    p = rig.profile
    rig.start()
    rig.run_until(p.stream_s * 0.3)
    if broker == "broker-down":
        rig.kill_broker()
        rig.run_until(p.stream_s * 0.3 + p.outage_s / 2)
    rig.kill_gateway(down_s=1.0)
    assert rig.buffered_at_kill is not None
    if broker == "broker-down":
        # It was taking polls all along: they were on disk at the kill.
        assert rig.buffered_at_kill[0] > 50, rig.buffered_at_kill
        rig.run_until(p.stream_s * 0.3 + p.outage_s + 1.0)
        rig.broker.start()
    rig.run_until(p.stream_s)
    result = rig.finish(f"gateway SIGKILL, {broker}")
    assert_nothing_lost(rig, result)
    # What the killed gateway had read but not committed: at most the poll in progress.
    assert len(result.read_not_taken) <= 2, result.read_not_taken
    assert "left by the previous run" in rig.gateway.log() or rig.buffered_at_kill[0] == 0


def test_broker_down_gateway_buffers_on_disk_and_replays(gateway_rig: GatewayRig) -> None:
    """Mosquitto SIGKILLed for ``outage_s`` while the gateway polls: the polls pile up in
    the buffer file (the bus holds 50 at most), and are sent in order once it is back; the
    gateway's memory does not grow with the backlog."""
    rig = gateway_rig
    p = rig.profile
    rig.start()
    rig.run_until(p.stream_s * 0.3)
    rss_before = rig.gateway.rss_kib()
    rig.kill_broker()
    rss_peak = rss_before
    while rig.elapsed() < p.stream_s * 0.3 + p.outage_s:
        rss_peak = max(rss_peak, rig.gateway.rss_kib())
        rig.run_until(rig.elapsed() + 0.5)
    rig.broker.start()
    rig.run_until(p.stream_s + p.outage_s)
    result = rig.finish("Mosquitto SIGKILL, gateway buffering")
    assert_nothing_lost(rig, result)
    log = rig.gateway.log()
    assert "wait on disk" in log, log[-3000:]
    # The backlog grew on disk far past what the bus client holds (50), about an outage's
    # worth of polls (100 a second).
    # (Short backlogs may come and go before, when ingest or the machine is slow.)
    peaks = re.findall(r"backlog sent \((\d+) message\(s\) had waited at most\)", log)
    assert peaks, log[-3000:]
    assert max(int(n) for n in peaks) > 50 * p.outage_s, peaks
    # Bounded memory: the backlog is on disk, not in the gateway (an outage's worth of
    # polls is ~1 MB short, ~12 MB full).
    assert rss_peak - rss_before < 32 * 1024, (rss_before, rss_peak)
    print(f"gateway RSS {rss_before} KiB -> {rss_peak} KiB at most during the outage")


def test_device_flapping(gateway_rig: GatewayRig) -> None:
    """The device's server stops and starts every couple of seconds: the gateway reports it
    offline and online (alarm and info events, stored by ingest), keeps running, stores
    every answer once, and the gaps show in ``gridpilot gaps``."""
    rig = gateway_rig
    p = rig.profile
    up_s, down_s = (2.0, 1.5) if p.name == "short" else (5.0, 3.0)
    rig.start(flap=(up_s, down_s))
    # Outages that began before the gateway ran are not the gateway's to report.
    before = rig.device.downs
    rig.run_until(p.stream_s + 2 * (up_s + down_s))
    downs = rig.device.downs
    ended = rig.device.ups - before  # outages seen whole (the last may still be going on)
    assert ended >= 2, (before, downs, rig.device.ups)
    result = rig.finish(f"device flapping ({up_s:g} s up / {down_s:g} s down, {downs} outages)")
    assert_nothing_lost(rig, result)
    with sqlite3.connect(f"file:{rig.db}?mode=ro", uri=True) as conn:
        messages = [
            str(m)
            for (m,) in conn.execute(
                "SELECT message FROM events WHERE site = ? ORDER BY ts_ms", (rig.site,)
            )
        ]
    conn.close()
    offline = [m for m in messages if m.startswith(f"{GATEWAY_DEVICE} offline")]
    online = [m for m in messages if m == f"{GATEWAY_DEVICE} is online again"]
    assert len(offline) >= ended, (before, downs, messages)
    assert len(online) >= ended, (before, downs, messages)
    gaps = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridpilot",
            "gaps",
            str(rig.site_file),
            GATEWAY_DEVICE,
            "--since",
            "10m",
            "--json",
        ],
        capture_output=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    assert gaps.returncode == 0, gaps.stderr.decode()
    report = json.loads(gaps.stdout)
    listed = report["gaps"] if isinstance(report, dict) else report
    # Each outage is a gap of about down_s (+ detection and reconnection).
    long_gaps = [g for g in listed if g["duration_s"] >= down_s * 0.8]
    assert len(long_gaps) >= ended, report


@pytest.mark.skipif(
    _FAKETIME is None, reason="libfaketime is not installed (apt install libfaketime)"
)
def test_wall_clock_jump(gateway_rig: GatewayRig, tmp_path: Path) -> None:
    """The gateway's wall clock (libfaketime, for its process only; the machine's clock is
    not touched) steps back one hour mid-stream, then forward to 90 s ahead of real time:
    polling goes on (its schedule runs on the monotonic clock), every poll is stored once
    under the time the gateway's clock gave it."""
    rig = gateway_rig
    p = rig.profile
    offset_file = tmp_path / "faketime"
    offset_file.write_text("+0\n")
    assert _FAKETIME is not None
    rig.gateway.env = {
        "LD_PRELOAD": str(_FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        # The offset file is read again at most every second (reading it at every clock
        # call slowed the gateway down enough to time polls out on a busy machine).
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    rig.start()
    rig.run_until(p.stream_s * 0.3)
    offset_file.write_text("-1h\n")
    back_at = rig.device.answered
    rig.run_until(p.stream_s * 0.6)
    offset_file.write_text("+90s\n")
    rig.run_until(p.stream_s)
    result = rig.finish("gateway wall clock -1 h, then +90 s")
    assert_nothing_lost(rig, result)
    # The jumps are in the data: ts runs back an hour, then ahead.
    with sqlite3.connect(f"file:{rig.db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT s.value, s.ts_ms FROM samples s JOIN series r ON r.id = s.series_id "
            "WHERE r.site = ? AND r.point = 'v0_count' ORDER BY s.value",
            (rig.site,),
        ).fetchall()
    conn.close()
    steps = [b[1] - a[1] for a, b in itertools.pairwise(rows)]
    assert min(steps) < -3_500_000, (back_at, min(steps))
    assert max(steps) > 3_500_000
    assert stored(rig.db, rig.site).rows == result.stored * p.points
    assert rig.gateway.process is None  # stopped by finish (SIGTERM, exit 0)
