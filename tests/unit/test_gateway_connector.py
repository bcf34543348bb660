"""The gateway's driver factory: units of one line share one bus; TCP devices stand alone."""

from __future__ import annotations

import pytest

from gridpilot.config import validate_config_text
from gridpilot.fieldbus.modbus_rtu import ModbusRtuDevice
from gridpilot.fieldbus.modbus_tcp import ModbusTcpDevice
from gridpilot.gateway.service import ModbusConnector

from .test_config_serial import RTU_SITE

MORE = """\
  - id: vfd-2
    protocol: modbus_rtu_tcp
    host: 192.0.2.10
    port: 4001
    unit_id: 2
    points:
      - {point: speed_rpm, address: 3}
  - id: tcp-meter
    host: 192.0.2.20
    timeout: 0.3
    points:
      - {point: active_power_w, address: 0}
"""


def test_units_of_one_line_share_one_bus() -> None:
    config = validate_config_text(RTU_SITE + MORE)
    connect = ModbusConnector(config)
    meter1, meter2, vfd1, vfd2, tcp = (connect(d) for d in config.devices)
    assert isinstance(meter1, ModbusRtuDevice)
    assert isinstance(meter2, ModbusRtuDevice)
    assert meter1.bus is meter2.bus
    assert meter1.bus.line is not None
    assert meter1.bus.line.port == "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0"
    assert (meter1.bus.line.baudrate, meter1.bus.line.parity, meter1.bus.line.stopbits) == (
        9600,
        "N",
        2,
    )
    assert meter1.bus.gap_s == 0.005
    assert (meter1.unit_id, meter2.unit_id) == (1, 2)
    assert isinstance(vfd1, ModbusRtuDevice)
    assert isinstance(vfd2, ModbusRtuDevice)
    assert vfd1.bus is vfd2.bus
    assert vfd1.bus is not meter1.bus
    assert (vfd1.bus.host, vfd1.bus.port) == ("192.0.2.10", 4001)
    assert isinstance(tcp, ModbusTcpDevice)
    assert (tcp.host, tcp.port, tcp.timeout_s) == ("192.0.2.20", 502, 0.3)


def test_serial_attempts_get_their_time_on_the_wire() -> None:
    config = validate_config_text(RTU_SITE)
    connect = ModbusConnector(config)
    meter, _, vfd = (connect(d) for d in config.devices)
    assert isinstance(meter, ModbusRtuDevice)
    assert isinstance(vfd, ModbusRtuDevice)
    # 9600 baud, 8N2 = 11 bits a character; a 5 ms gap after each frame.
    assert meter.bus.wire_time_s(8 + 255) == pytest.approx(263 * 11 / 9600 + 0.010)
    assert vfd.bus.wire_time_s(8 + 255) == 0.0  # behind a converter: unknown, not counted
