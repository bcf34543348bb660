"""Modbus field access: a pure codec and read planner, and an async Modbus TCP client.

``codec`` and ``planner`` are pure (no I/O, no clock) and do not import pymodbus;
``modbus_tcp`` is the I/O edge. Errors are in ``errors``.
"""
