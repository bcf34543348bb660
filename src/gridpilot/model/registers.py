"""Enumerations that describe how a point lives in a Modbus device."""

from __future__ import annotations

from enum import StrEnum


class Table(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"  # 16-bit, read/write (FC3, FC6/FC16)
    INPUT = "input"  # 16-bit, read-only (FC4)
    COIL = "coil"  # 1-bit, read/write (FC1, FC5/FC15)
    DISCRETE = "discrete"  # 1-bit, read-only (FC2)

    @property
    def is_bit(self) -> bool:
        return self is Table.COIL or self is Table.DISCRETE

    @property
    def is_writable(self) -> bool:
        return self in (Table.HOLDING, Table.COIL)


class DataType(StrEnum):
    """How the registers of a point encode its value."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BITFIELD = "bitfield"  # a uint16 status word, or one bit of it
    BOOL = "bool"  # a coil or discrete input

    @property
    def register_count(self) -> int:
        """Registers a value of this type takes (strings: per configured length)."""
        return _REGISTER_COUNT[self]


_REGISTER_COUNT = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.STRING: 1,
    DataType.BITFIELD: 1,
    DataType.BOOL: 1,
}


class WordOrder(StrEnum):
    """Order of 16-bit words in a multi-register value."""

    BIG = "big"  # most significant word first (Modbus convention, "ABCD")
    LITTLE = "little"  # least significant word first ("CDAB", common on meters)


class ByteOrder(StrEnum):
    """Order of the two bytes inside each 16-bit register."""

    BIG = "big"  # Modbus convention
    LITTLE = "little"  # byte-swapped ("BADC" / "DCBA" with word order)
