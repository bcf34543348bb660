"""The utility's controls on the bus (contract 1): strict parsing, with the reason for a refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from gridpilot.control.grid_controls import (
    MAX_BYTES,
    MAX_MODES,
    Curve,
    GridControlsError,
    PowerFactor,
    encode_grid_controls,
    parse_grid_controls,
)
from gridpilot.ieee2030_5.client import Snapshot, controls_message
from gridpilot.ieee2030_5.controls import ControlValue
from gridpilot.ieee2030_5.schedule import Effective, ScheduleState, StepResult

TS = "2026-11-27T10:00:00Z"
UNTIL = "2026-11-27T10:05:00Z"


def message(controls: dict[str, Any] | None = None, **top: Any) -> bytes:
    doc: dict[str, Any] = {"ts": TS, "source": "ieee2030_5", "valid_until": UNTIL}
    doc["controls"] = controls if controls is not None else {}
    doc.update(top)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def mode(value: Any, **fields: Any) -> dict[str, Any]:
    return {"value": value, "source": "event", "mrid": "A1B2C3D4E5F6", "primacy": 1} | fields


def test_a_full_message_parses_into_typed_modes() -> None:
    controls = parse_grid_controls(
        message(
            {
                "opModExpLimW": mode(5000, unit="W"),
                "opModImpLimW": mode(60000.0),
                "opModConnect": mode(True, source="default", mrid=None, primacy=None),
                "opModMaxLimW": mode(60.0, unit="%"),
                "opModFixedW": mode(-25),
                "opModFixedPFInjectW": mode({"pf": 0.95, "excitation": "over"}),
                "opModVoltVar": mode(
                    {
                        "points": [[0.92, 44.0], [0.98, 0.0], [1.02, 0.0], [1.08, -44.0]],
                        "x": "V_pu",
                        "y": "var_pct_of_VA",
                        "open_loop_s": 5.0,
                    }
                ),
            }
        )
    )
    assert controls.ts == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert controls.valid_until - controls.ts == timedelta(minutes=5)
    assert controls.source == "ieee2030_5"
    exp = controls.mode("opModExpLimW")
    assert exp is not None
    assert (exp.value, exp.unit, exp.source, exp.mrid, exp.primacy) == (
        5000.0, "W", "event", "A1B2C3D4E5F6", 1,
    )  # fmt: skip
    imp = controls.mode("opModImpLimW")
    assert imp is not None
    assert imp.unit == "W"  # implied by the mode
    assert controls.modes["opModConnect"].value is True
    assert controls.modes["opModConnect"].source == "default"
    assert controls.modes["opModFixedW"].value == -25.0
    assert controls.modes["opModFixedPFInjectW"].value == PowerFactor(0.95, "over")
    curve = controls.modes["opModVoltVar"].value
    assert isinstance(curve, Curve)
    assert curve.points[0] == (0.92, 44.0)
    assert curve.open_loop_s == 5.0
    assert exp.describe() == "opModExpLimW 5000 W (event A1B2C3D4, primacy 1)"
    # the wire form parses back to the same controls
    assert parse_grid_controls(encode_grid_controls(controls)) == controls


def test_an_empty_controls_object_means_nothing_in_force() -> None:
    controls = parse_grid_controls(message({}))
    assert controls.modes == {}
    assert controls.other == {}


def test_a_well_formed_mode_not_known_here_is_kept_aside_not_refused() -> None:
    controls = parse_grid_controls(
        message({"opModFreqDroop": mode({"dBOF": 36}), "opModExpLimW": mode(0)})
    )
    assert set(controls.modes) == {"opModExpLimW"}
    assert controls.other["opModFreqDroop"]["value"] == {"dBOF": 36}


def test_staleness_and_the_default_controls() -> None:
    controls = parse_grid_controls(
        message(
            {
                "opModExpLimW": mode(5000),
                "opModMaxLimW": mode(80, source="default", mrid=None, primacy=None),
            }
        )
    )
    assert not controls.is_stale(datetime(2026, 11, 27, 10, 5, tzinfo=UTC))
    assert controls.is_stale(datetime(2026, 11, 27, 10, 5, 0, 1000, tzinfo=UTC))
    assert set(controls.defaults_only().modes) == {"opModMaxLimW"}


REFUSED: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{nope", "not JSON"),
    ("not an object", b"[1, 2]", "must be a JSON object"),
    ("unknown top-level field", message(extra=1), "unknown field(s) 'extra'"),
    ("ts missing", message(ts=None), "'ts' must be RFC 3339"),
    ("ts without offset", message(ts="2026-11-27T10:00:00"), "has no UTC offset"),
    ("valid_until before ts", message(valid_until="2026-11-27T09:00:00Z"), "is before 'ts'"),
    ("source empty", message(source=""), "'source' must be text"),
    ("controls a list", message(controls=[]), "'controls' must be an object"),  # type: ignore[arg-type]
    ("mode name not opMod", message({"exportLimit": mode(1)}), "is not an opMod"),
    ("mode without value", message({"opModExpLimW": {"source": "event"}}), "with a 'value'"),
    ("negative limit", message({"opModExpLimW": mode(-1)}), "a limit must be >= 0"),
    ("limit as text", message({"opModExpLimW": mode("5000")}), "finite number"),
    ("limit as bool", message({"opModImpLimW": mode(True)}), "finite number"),
    ("wrong unit", message({"opModExpLimW": mode(5, unit="kW")}), "'unit' must be 'W'"),
    ("percent over 100", message({"opModMaxLimW": mode(150)}), "must be in 0..100"),
    ("signed percent under -100", message({"opModFixedW": mode(-120)}), "-100..100"),
    ("connect as text", message({"opModConnect": mode("yes")}), "true or false"),
    ("pf above 1", message({"opModFixedPFInjectW": mode({"pf": 1.2, "excitation": "over"})}),
     "must be in (0, 1]"),
    ("pf excitation", message({"opModFixedPFInjectW": mode({"pf": 0.9, "excitation": "side"})}),
     "'over' or 'under'"),
    ("curve decreasing", message({"opModVoltVar": mode(
        {"points": [[1.1, 0.0], [0.9, 1.0]], "x": "V_pu", "y": "var_pct"})}), "increasing x"),
    ("curve empty", message({"opModVoltVar": mode({"points": [], "x": "V", "y": "var"})}),
     "list of 1-64"),
    ("source unknown", message({"opModExpLimW": mode(1, source="utility")}),
     "'event' or 'default'"),
    ("primacy out of range", message({"opModExpLimW": mode(1, primacy=300)}), "integer 0-255"),
    ("unknown mode field", message({"opModExpLimW": mode(1, extra=2)}), "unknown field(s)"),
    ("too many modes", message({f"opModX{i}": mode(1) for i in range(MAX_MODES + 1)}),
     f"over {MAX_MODES}"),
    ("oversized", b" " * (MAX_BYTES + 1), "bytes is over"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "payload", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_message_is_refused_with_its_reason(case: str, payload: bytes, reason: str) -> None:
    with pytest.raises(GridControlsError) as info:
        parse_grid_controls(payload)
    assert reason in str(info.value), (case, str(info.value))


def test_the_refusal_names_the_mode_at_fault() -> None:
    with pytest.raises(GridControlsError, match=r"^controls\.opModMaxLimW: "):
        parse_grid_controls(message({"opModExpLimW": mode(1), "opModMaxLimW": mode(101)}))


def test_what_the_2030_5_client_publishes_parses() -> None:
    """Contract 1 end to end: the client's own message builder, every kind of mode."""
    curve = {"points": [[0.92, 44.0], [1.08, -44.0]], "x": "V_pu", "y": "var_pct_of_VA",
             "open_loop_s": 5.0}  # fmt: skip
    values = {
        "opModExpLimW": ControlValue(5000.0, "W"),
        "opModStorageTargetW": ControlValue(-2000.0, "W"),
        "opModConnect": ControlValue(True),
        "opModMaxLimW": ControlValue(60.0, "%"),
        "opModFixedVar": ControlValue(-10.0, "%"),
        "opModTargetVar": ControlValue(1000.0, "var"),
        "opModFixedPFInjectW": ControlValue({"pf": 0.95, "excitation": "over"}),
        "opModVoltVar": ControlValue(curve),
        "opModFreqDroop": ControlValue({"db_of_hz": 0.036, "db_uf_hz": 0.036, "k_of_pct": 5.0,
                                        "k_uf_pct": 5.0, "open_loop_s": 5.0}),
    }  # fmt: skip
    controls = {
        mode: Effective(value, "event", "A1B2", 1, "/derp/1") for mode, value in values.items()
    }
    result = StepResult(ScheduleState("x"), controls, [], [], None)
    message = controls_message(
        Snapshot(now=1_800_000_000.0, result=result, status={}), publish_interval_s=60
    )
    parsed = parse_grid_controls(orjson.dumps(message))
    assert parsed.valid_until - parsed.ts == timedelta(minutes=2)
    assert parsed.modes["opModExpLimW"].value == 5000.0
    assert parsed.modes["opModFixedPFInjectW"].value == PowerFactor(0.95, "over")
    voltvar = parsed.modes["opModVoltVar"].value
    assert isinstance(voltvar, Curve)
    assert voltvar.points == ((0.92, 44.0), (1.08, -44.0))
    # not applied by this module, but not refused either
    assert set(parsed.other) == {"opModStorageTargetW", "opModFreqDroop"}
