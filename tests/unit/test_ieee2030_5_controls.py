"""2030.5 control encodings to plain units (controls.modes_of)."""

from __future__ import annotations

import pytest

from gridpilot.ieee2030_5.controls import InvalidControlError, modes_of
from gridpilot.ieee2030_5.models import (
    ActivePower,
    CurveData,
    DERControlBase,
    DERCurve,
    DERCurveType,
    DERUnitRefType,
    FixedVar,
    Link,
    PowerFactorWithExcitation,
)


def _volt_var(
    href: str = "/derp/1/dc/1", curve_type: DERCurveType = DERCurveType.OP_MOD_VOLT_VAR
) -> DERCurve:
    return DERCurve(
        href=href,
        mRID="C1",
        creationTime=0,
        CurveData_=[
            CurveData(xvalue=9200, yvalue=44),
            CurveData(xvalue=9800, yvalue=0),
            CurveData(xvalue=10200, yvalue=0),
            CurveData(xvalue=10800, yvalue=-44),
        ],
        curveType=curve_type,
        openLoopTms=500,
        xMultiplier=-2,
        yMultiplier=0,
        yRefType=DERUnitRefType.PERC_SET_MAX_VAR,
    )


def test_power_percent_bool_and_pf_modes() -> None:
    base = DERControlBase(
        opModExpLimW=ActivePower(value=5, multiplier=3),
        opModImpLimW=ActivePower(value=-15, multiplier=2),
        opModMaxLimW=6000,
        opModFixedW=-2550,
        opModConnect=True,
        opModEnergize=False,
        opModFixedPFInjectW=PowerFactorWithExcitation(
            displacement=95, multiplier=-2, excitation=False
        ),
        opModFixedPFAbsorbW=PowerFactorWithExcitation(
            displacement=9, multiplier=-1, excitation=True
        ),
        opModFixedVar=FixedVar(refType=DERUnitRefType.PERC_SET_MAX_VAR, value=-1000),
    )
    modes = {k: v.to_json() for k, v in modes_of(base, {}).items()}
    assert modes == {
        "opModExpLimW": {"value": 5000.0, "unit": "W"},
        "opModImpLimW": {"value": -1500.0, "unit": "W"},
        "opModMaxLimW": {"value": 60.0, "unit": "%"},
        "opModFixedW": {"value": -25.5, "unit": "%"},
        "opModConnect": {"value": True},
        "opModEnergize": {"value": False},
        "opModFixedPFInjectW": {"value": {"pf": 0.95, "excitation": "over"}},
        "opModFixedPFAbsorbW": {"value": {"pf": 0.9, "excitation": "under"}},
        "opModFixedVar": {"value": -10.0, "unit": "%"},
    }


def test_volt_var_curve_in_per_unit() -> None:
    curve = _volt_var()
    base = DERControlBase(opModVoltVar=Link(href=curve.href or ""))
    value = modes_of(base, {curve.href or "": curve})["opModVoltVar"].value
    assert value == {
        "points": [[0.92, 44.0], [0.98, 0.0], [1.02, 0.0], [1.08, -44.0]],
        "x": "V_pu",
        "y": "var_pct_of_VA",
        "open_loop_s": 5.0,
    }


@pytest.mark.parametrize(
    ("base", "curves", "message"),
    [
        (DERControlBase(opModMaxLimW=12000), {}, "opModMaxLimW"),
        (
            DERControlBase(
                opModFixedPFInjectW=PowerFactorWithExcitation(
                    displacement=12, multiplier=-1, excitation=False
                )
            ),
            {},
            "power factor 1.2",
        ),
        (DERControlBase(opModVoltVar=Link(href="/dc/missing")), {}, "not in the program"),
        (
            DERControlBase(opModVoltWatt=Link(href="/derp/1/dc/1")),
            {"/derp/1/dc/1": _volt_var()},
            "curveType 11",
        ),
        (DERControlBase(opModExpLimW=ActivePower(value=1, multiplier=20)), {}, "multiplier"),
    ],
)
def test_invalid_controls_are_refused(
    base: DERControlBase, curves: dict[str, DERCurve], message: str
) -> None:
    with pytest.raises(InvalidControlError, match=message):
        modes_of(base, curves)
