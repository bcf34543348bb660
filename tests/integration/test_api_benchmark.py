"""The API benchmark runs end to end and reports every figure.

Runs ``benchmarks/api/bench_api.py --quick`` as a subprocess (the way the README runs it):
two days of 1 s data made through the storage, the real ``ApiService``, ``wrk`` for 1 s per
run. No timing assertions: performance is measured in the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "api" / "bench_api.py"
QUERIES = (
    "latest",
    "year_15m_max",
    "day_raw",
    "year_1h_max",
    "raw_2h30m",
    "year_15m_max_columns",
    "day_raw_columns",
)
CONNECTIONS = (1, 4)
FIGURES = (
    "requests",
    "requests_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mb_per_s",
    "server_cpu_ms_per_request",
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk: apt-get install wrk"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("bench-api")
    out = workdir / "api.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--data-dir",
            str(workdir / "data"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| query | rows |" in proc.stdout  # the markdown table
    assert "data: generating 172,800 samples" in proc.stdout
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_describes_machine_commit_and_data(result: dict[str, Any]) -> None:
    assert result["benchmark"] == "api"
    assert result["commit"]
    machine = result["machine"]
    assert machine["cpu"]
    assert machine["cores"] >= 1
    assert machine["kernel"]
    assert machine["wrk"].startswith("wrk")
    assert result["data"]["rows"] == 2 * 86_400
    assert result["data"]["generated_s"] >= 0
    assert result["load"]["connections"] == list(CONNECTIONS)
    assert result["load"]["history_max_rows"] == 100_000


def test_every_query_answers_including_the_issues_two(result: dict[str, Any]) -> None:
    probes = result["probes"]
    assert set(probes) == set(QUERIES)
    for name, probe in probes.items():
        assert probe["status"] == 200, (name, probe)
        assert probe["bytes"] > 0
        assert probe["one_request_ms"] > 0
        assert probe["storage_ms"] >= 0
    assert probes["latest"]["rows"] == 14
    # The issue's queries, under api.history_max_rows (100,000 by default). A year at 15 min
    # asks for 35,041 buckets; the quick data holds two days of them (2 x 96 + 1 touched).
    # In the full run (a year of data) it returns all 35,041.
    assert probes["year_15m_max"]["buckets"] == 35_041
    assert probes["year_15m_max"]["rows"] == 2 * 96 + 1
    assert probes["day_raw"]["rows"] == 86_400
    assert probes["day_raw_columns"]["rows"] == 86_400
    assert probes["year_15m_max_columns"]["rows"] == probes["year_15m_max"]["rows"]
    assert probes["year_1h_max"]["buckets"] == 8_761
    assert probes["raw_2h30m"]["rows"] == 9_000


def test_every_run_has_its_figures(result: dict[str, Any]) -> None:
    runs = {(r["query"], r["connections"]): r for r in result["runs"]}
    assert set(runs) == {(q, c) for q in QUERIES for c in CONNECTIONS}
    for (query, connections), run in runs.items():
        # The quick plan skips nothing: even a day raw is far below its 10 s bound.
        assert "skipped" not in run, run
        assert run["requests"] > 0, run
        for figure in FIGURES:
            assert isinstance(run[figure], int | float), (query, connections, figure)
        assert run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert run["server_cpu_ms_per_request"] > 0
        assert len(run["load_average_1m"]) == 2
        assert sum(run["errors"].values()) == 0, run
