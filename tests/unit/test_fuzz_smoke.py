"""The fuzz harness (``benchmarks/fuzz/fuzz.py``) in CI: a few thousand inputs per target
with a fixed seed must produce only the exceptions each API documents; and the harness
must report what it is there to find (a planted crash, a broken invariant)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz" / "fuzz.py"


def load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gridpilot_fuzz", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = load_harness()


@pytest.mark.parametrize("target", ["modbus", "telemetry"])
def test_two_thousand_inputs_raise_only_documented_errors(target: str) -> None:
    report = fuzz.run_target(target, 2_000, seed=20261127)
    assert report.inputs == 2_000
    assert sum(report.outcomes.values()) == 2_000
    assert report.finding_count == 0, report.findings
    assert not [o for o in report.outcomes if o.startswith("FINDING")]


def test_the_modbus_target_reaches_every_decoder() -> None:
    outcomes = fuzz.run_target("modbus", 2_000, seed=20261127).outcomes
    # Garbled and whole RTU frames, decoded numbers and text, both documented errors, and
    # SunSpec chains walked to their end: the mutations reach past the first check.
    for kind in (
        "rtu:crc",
        "rtu:complete",
        "rtu:incomplete",
        "decoded:number",
        "decoded:text",
        "raised:DecodeError",
        "raised:SunSpecError",
        "sunspec:chain_end",
    ):
        assert outcomes[kind] > 0, kind


def test_the_telemetry_target_reaches_acceptance_and_every_kind_of_rejection() -> None:
    outcomes = fuzz.run_target("telemetry", 2_000, seed=20261127).outcomes
    reasons = {r for o in outcomes if o.startswith("rejected:") for r in o[9:].split(",")}
    assert outcomes["accepted"] > 0
    assert {"not_json", "bad_ts", "future_ts", "wrong_type", "not_finite", "out_of_range"} <= (
        reasons
    )


def test_the_same_seed_gives_the_same_inputs() -> None:
    first = fuzz.run_target("telemetry", 500, seed=7).outcomes
    assert fuzz.run_target("telemetry", 500, seed=7).outcomes == first


def test_an_undocumented_exception_is_reported_with_its_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crashing_validate(site: str, device: str, payload: bytes, *rest: Any) -> Any:
        if b"[" in payload:
            raise IndexError("planted")
        return real_validate(site, device, payload, *rest)

    real_validate = fuzz.validate
    monkeypatch.setattr(fuzz, "validate", crashing_validate)
    report = fuzz.run_target("telemetry", 300, seed=1)
    assert report.finding_count == report.outcomes["FINDING:IndexError"] > 0
    finding = report.findings[0]
    assert finding["error"] == "IndexError: planted"
    assert "[" in finding["input"]


def test_a_non_finite_decoded_value_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzz, "decode", lambda spec, words: float("nan"))
    report = fuzz.run_target("modbus", 300, seed=1)
    assert report.outcomes["FINDING:Finding"] > 0
    assert "decode returned nan" in report.findings[0]["error"]


def test_the_command_line_writes_json_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    status = fuzz.main(["--inputs", "300", "--seed", "3", "--quiet", "--json", str(out)])
    document = json.loads(out.read_text())
    assert status == 0
    assert [r["target"] for r in document["reports"]] == ["modbus", "telemetry"]
    assert all(r["inputs"] == 300 and r["finding_count"] == 0 for r in document["reports"])
    assert document["environment"]["commit"]
