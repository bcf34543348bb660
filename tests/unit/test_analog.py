"""Analog loops: 4-20 mA (NAMUR NE 43) and 0-10 V scaling, and faults as faults, not values."""

from __future__ import annotations

import math

import pytest

from gridpilot.config.models import DeviceConfig
from gridpilot.fieldbus.analog import AnalogRange, AnalogSignal, LoopFault, scale_signal
from gridpilot.gateway.point_faults import FaultReport, PointFaults
from gridpilot.gateway.points import evaluate, register_spec

MA = AnalogSignal.CURRENT_4_20MA
VOLT = AnalogSignal.VOLTAGE_0_10V
PRESSURE = AnalogRange(MA, low=0.0, high=1_000_000.0)  # 0..10 bar in Pa


def test_wire_break_at_2_ma_is_a_fault_not_a_value() -> None:
    assert scale_signal(PRESSURE, 2.0) is LoopFault.WIRE_BREAK


def test_12_ma_is_mid_range() -> None:
    assert scale_signal(PRESSURE, 12.0) == pytest.approx(500_000.0)


@pytest.mark.parametrize(
    ("current_ma", "outcome"),
    [
        (0.0, LoopFault.WIRE_BREAK),
        (3.59, LoopFault.WIRE_BREAK),
        (3.6, LoopFault.WIRE_BREAK),  # NE 43: <= 3.6 mA is a failure signal
        (3.61, LoopFault.UNDER_RANGE),
        (3.79, LoopFault.UNDER_RANGE),
        (3.8, -12_500.0),  # the lowest measurement: slightly under range, on the same line
        (4.0, 0.0),
        (20.0, 1_000_000.0),
        (20.5, 1_031_250.0),  # the highest measurement
        (20.51, LoopFault.OVER_RANGE),
        (20.99, LoopFault.OVER_RANGE),
        (21.0, LoopFault.SENSOR_FAULT),  # NE 43: >= 21 mA is a failure signal
        (22.5, LoopFault.SENSOR_FAULT),
        (math.nan, LoopFault.SENSOR_FAULT),
    ],
)
def test_ne43_bands(current_ma: float, outcome: float | LoopFault) -> None:
    result = scale_signal(PRESSURE, current_ma)
    if isinstance(outcome, LoopFault):
        assert result is outcome
    else:
        assert result == pytest.approx(outcome)


@pytest.mark.parametrize(
    ("volts", "outcome"),
    [
        (-0.5, LoopFault.UNDER_RANGE),
        (-0.2, -2.0),  # within the default 0.2 V tolerance: a (slightly negative) reading
        (0.0, 0.0),  # 0 V is a value: 0-10 V cannot show a broken wire
        (5.0, 50.0),
        (10.0, 100.0),
        (10.2, 102.0),
        (10.21, LoopFault.OVER_RANGE),
    ],
)
def test_0_10_v_tolerance(volts: float, outcome: float | LoopFault) -> None:
    result = scale_signal(AnalogRange(VOLT, low=0.0, high=100.0), volts)
    if isinstance(outcome, LoopFault):
        assert result is outcome
    else:
        assert result == pytest.approx(outcome)


def test_reversed_range_and_negative_low() -> None:
    # A transmitter whose 4 mA is the top of the scale, and one from -30 to 70 degC.
    assert scale_signal(AnalogRange(MA, low=100.0, high=0.0), 8.0) == pytest.approx(75.0)
    assert scale_signal(AnalogRange(MA, low=-30.0, high=70.0), 12.0) == pytest.approx(20.0)


def test_range_without_span_is_refused() -> None:
    with pytest.raises(ValueError, match="no span"):
        AnalogRange(MA, low=5.0, high=5.0)


def _device(
    analog: dict[str, object] | None, valid_range: list[float] | None = None
) -> DeviceConfig:
    point: dict[str, object] = {
        "point": "supply_pressure_pa",
        "address": 0,
        "table": "input",
        "type": "uint16",
        "scale": 0.001,  # the module reports the loop current in µA
    }
    if analog is not None:
        point["analog"] = analog
    if valid_range is not None:
        point["valid_range"] = valid_range
    return DeviceConfig.model_validate({"id": "io", "host": "127.0.0.1", "points": [point]})


@pytest.mark.parametrize(
    ("microamps", "value", "fault"),
    [
        (2000, None, LoopFault.WIRE_BREAK),
        (12000, 500_000.0, None),
        (3700, None, LoopFault.UNDER_RANGE),
        (20700, None, LoopFault.OVER_RANGE),
        (21500, None, LoopFault.SENSOR_FAULT),
    ],
)
def test_evaluate_reports_a_loop_fault_instead_of_the_value(
    microamps: int, value: float | None, fault: LoopFault | None
) -> None:
    device = _device({"signal": "4-20mA", "low": 0, "high": 1_000_000})
    spec = register_spec(device.points[0])
    readings = evaluate(device, [(spec, [microamps])])
    if fault is None:
        assert readings.values == {"supply_pressure_pa": pytest.approx(value)}
        assert readings.faults == ()
    else:
        assert "supply_pressure_pa" not in readings.values  # missing, not a number
        (found,) = readings.faults
        assert found.point == "supply_pressure_pa"
        assert found.kind is fault
        assert found.signal == pytest.approx(microamps / 1000)
        assert str(fault) in found.message
        assert "supply_pressure_pa" in found.message


def test_valid_range_applies_to_the_engineering_value() -> None:
    device = _device({"signal": "4-20mA", "low": 0, "high": 1_000_000}, [0, 600_000])
    spec = register_spec(device.points[0])
    assert evaluate(device, [(spec, [12000])]).values == {"supply_pressure_pa": 500_000.0}
    readings = evaluate(device, [(spec, [16000])])  # 750 kPa: a measurement, out of range
    assert readings.values == {}
    assert readings.out_of_range == ("supply_pressure_pa",)
    assert readings.faults == ()


def test_analog_config_is_validated() -> None:
    with pytest.raises(ValueError, match="no span"):
        _device({"signal": "4-20mA", "low": 1, "high": 1})
    with pytest.raises(ValueError, match="4-20mA"):
        _device({"signal": "4-20 mA", "low": 0, "high": 1})
    with pytest.raises(ValueError, match="analog point is an input"):
        DeviceConfig.model_validate(
            {
                "id": "io",
                "host": "h",
                "points": [
                    {
                        "point": "valve_pct",
                        "address": 0,
                        "writable": True,
                        "analog": {"signal": "0-10V", "low": 0, "high": 100},
                    }
                ],
            }
        )


def test_point_faults_raise_once_keep_while_unread_and_clear() -> None:
    faults = PointFaults()
    broken = FaultReport("p_pa", "wire_break", "point 'p_pa': wire_break")
    changes = faults.update({"p_pa", "q_pa"}, [broken], 1000)
    assert changes.raised == (broken,)
    assert not faults.update({"p_pa"}, [broken], 2000)  # the same fault: counted, not new
    assert faults.snapshot()["p_pa"]["polls"] == 2
    assert faults.snapshot()["p_pa"]["since"] == "1970-01-01T00:00:01.000Z"
    assert not faults.update({"q_pa"}, [], 3000)  # p_pa not read this poll: kept
    other = FaultReport("p_pa", "sensor_fault", "point 'p_pa': sensor_fault")
    assert faults.update({"p_pa"}, [other], 4000).raised == (other,)  # a new kind
    assert faults.update({"p_pa"}, [], 5000).cleared == ("p_pa",)
    assert faults.snapshot() == {}
