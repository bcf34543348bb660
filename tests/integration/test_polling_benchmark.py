"""The polling benchmark's harness, small (a few devices, seconds): it runs end to end and
its figures are consistent. Speed is not asserted here (BENCHMARKS.md has the figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.polling import bench_polling

from gridpilot.config.models import DeviceConfig
from gridpilot.fieldbus.codec import decode
from gridpilot.gateway.points import ReadPlan
from gridpilot.sim.image import RegisterImage

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(bench_polling.MOSQUITTO).exists(), reason="needs mosquitto"),
]

DEVICES = 6


def test_the_harness_measures_both_clients_over_the_same_devices(tmp_path: Path) -> None:
    out = tmp_path / "polling.json"
    report = bench_polling.main(
        [
            *("--devices", str(DEVICES), "--seconds", "3", "--warmup", "2"),
            *("--state-interval", "1", "--sim-procs", "2", "--json", str(out)),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["settings"]["devices"] == DEVICES
    (run,) = report["rounds"]
    bare, gridpilot = run["bare"], run["gridpilot"]
    for phase in (bare, gridpilot):
        # The simulator counted every device's reads, whoever polled them.
        assert phase["devices"] == DEVICES
        assert phase["reads"] > 0
        assert phase["registers_per_s"] == pytest.approx(
            phase["reads_per_s"] * bench_polling.REGISTERS, rel=0.01
        )
        assert 0 <= phase["devices_read_every_second"] <= DEVICES
        # CPU time is counted in clock ticks: a few seconds of light load may show 0.
        assert phase["cpu_pct"] >= 0
        assert phase["sim_cpu_pct"] >= 0
        assert 0 <= phase["machine_busy_pct"] <= 100
        # Jitter came from polls inside the window: the bare loop's own, the gateway's
        # from the histograms in its published states.
        assert phase["jitter_polls"] > 0
        assert 0 <= phase["jitter_p50_ms"] <= phase["jitter_p99_ms"]
    # The gateway published telemetry and states for every device to the broker.
    assert gridpilot["telemetry_per_s"] > 0
    assert gridpilot["extra"]["states_seen"] == DEVICES
    assert bare["jitter_exact_p50_ms"] is not None
    assert run["ratio_reads"] == pytest.approx(
        gridpilot["reads_per_s"] / bare["reads_per_s"], abs=1e-3
    )
    assert set(run["target"]) == {
        "every_device_every_second",
        "p99_jitter_under_100ms",
        "ratio_at_least_0.75",
    }


def test_a_device_map_of_50_registers_decodes_to_the_simulated_values() -> None:
    """The benchmark's register map is a real one: the simulator serves it and the
    gateway's codec reads back what was set."""

    image = RegisterImage(bench_polling.sim_map(7))
    image.update(bench_polling.sim_values(7))
    device = DeviceConfig.model_validate(
        {"id": "d", "host": "h", "points": bench_polling.device_points()}
    )
    (block,) = ReadPlan(device).all_blocks  # one read of 50 registers
    assert (block.address, block.count) == (0, bench_polling.REGISTERS)
    words = image.read(block.table, block.address, block.count)
    values = {s.point: decode(s, words[s.address : s.end]) for s in block.specs}
    assert values == pytest.approx(bench_polling.sim_values(7))
