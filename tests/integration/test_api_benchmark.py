"""The API benchmark runs end to end and reports every figure.

Runs ``benchmarks/api/bench_api.py --quick`` as a subprocess (the way the README runs it):
two days of 1 s data made through the storage, the real ``ApiService``, ``wrk`` for 1 s per
run, the shipped API and the what-if. No timing assertions: performance is measured in the
benchmark, never asserted here.
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
SHIPPED = ("latest", "year_1h_max", "quarter_15m_max", "raw_2h30m")
OVER_LIMIT = ("year_15m_max", "day_raw")
CONNECTIONS = (1, 4)
FIGURES = ("requests", "requests_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms")

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
    assert "| API | query |" in proc.stdout  # the markdown table
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


def test_probes_answer_and_over_limit_queries_are_refused(result: dict[str, Any]) -> None:
    probes = result["probes"]
    for name in SHIPPED:
        assert probes[name]["status"] == 200, probes[name]
        assert probes[name]["storage_ms"] >= 0
    assert probes["latest"]["rows"] == 14
    assert probes["raw_2h30m"]["rows"] == 9_000
    # The two queries are over the API's MAX_ROWS: 422 with the reason, and 200
    # in the what-if that raises the limit.
    assert probes["year_15m_max"]["status"] == 422
    assert "35041 buckets" in probes["year_15m_max"]["error"]
    assert probes["day_raw"]["status"] == 422
    assert "raw samples" in probes["day_raw"]["error"]
    for name in OVER_LIMIT:
        assert probes[name]["what_if"]["status"] == 200
    assert probes["day_raw"]["what_if"]["rows"] == 86_400


@pytest.mark.parametrize(
    ("variant", "queries"),
    [("shipped", SHIPPED), ("what-if", SHIPPED + OVER_LIMIT)],
)
def test_every_run_has_its_figures(
    result: dict[str, Any], variant: str, queries: tuple[str, ...]
) -> None:
    runs = {(r["query"], r["connections"]): r for r in result["runs"] if r["variant"] == variant}
    assert set(runs) == {(q, c) for q in queries for c in CONNECTIONS}
    for (query, connections), run in runs.items():
        if "skipped" in run:
            # Only a query slower than the quick plan's latency bound may be left out, and
            # it says why.
            assert query == "day_raw", run
            assert connections > 1
            assert "connections" in run["skipped"]
            continue
        assert run["requests"] > 0, run
        for figure in FIGURES:
            assert isinstance(run[figure], int | float), (query, connections, figure)
        assert run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert run["server_cpu_ms_per_request"] > 0
        assert sum(run["errors"].values()) == 0, run
