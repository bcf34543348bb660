"""Sparkplug B on the wire: topics, payload decoding, the rebirth command.

Sparkplug B (Eclipse Sparkplug 3.0) is the industrial MQTT convention: edge nodes publish

    spBv1.0/{group}/NBIRTH|NDATA|NDEATH/{edge_node}
    spBv1.0/{group}/DBIRTH|DDATA|DDEATH/{edge_node}/{device}

with protobuf payloads (``org.eclipse.tahu.protobuf.Payload``): a timestamp, a sequence
number 0-255 and metrics, each with a name (or, after the birth, only its alias), a
datatype, an optional timestamp and one value. This module is the pure codec; what a host
makes of the messages (aliases, sequence gaps, rebirths, GridPilot points) is
``gridpilot.ingest.sparkplug``.

Decoding uses Google's ``protobuf`` runtime with the Payload schema declared below from the
Sparkplug B specification (chapter "Payload", the ``sparkplug_b.proto`` definition): field
numbers and types are the wire contract, names are as the specification spells them. Only
what GridPilot reads is declared -- a metric's scalar values, its properties (engineering
units) and the payload's timestamp/seq/uuid/body; a DataSet, Template or extension value
is skipped by the parser as an unknown field and the metric is then reported as carrying no
scalar value. Why not a Sparkplug package: the maintained ones (pysparkplug,
mqtt-spb-wrapper) pin paho-mqtt below 2, which GridPilot's bus client needs, and the Tahu
packages on PyPI pin protobuf 3/4; the tests use pysparkplug's edge node, in its own virtual
environment, as the independent implementation this decoder is checked against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from gridpilot.bus.errors import PayloadError

__all__ = [
    "BD_SEQ",
    "NAMESPACE",
    "REBIRTH_METRIC",
    "SEQ_MODULO",
    "DataType",
    "MessageType",
    "SparkplugMetric",
    "SparkplugPayload",
    "SparkplugTopic",
    "decode_payload",
    "encode_payload",
    "host_state_payload",
    "host_state_topic",
    "numeric_value",
    "parse_topic",
    "rebirth_command",
    "signed_value",
    "topic_filter",
]

NAMESPACE: Final = "spBv1.0"
SEQ_MODULO: Final = 256
"""Sequence numbers run 0..255 and wrap to 0."""
BD_SEQ: Final = "bdSeq"
"""The birth/death sequence metric: an NDEATH belongs to the NBIRTH with the same bdSeq."""
REBIRTH_METRIC: Final = "Node Control/Rebirth"
"""Writing ``true`` to it in an NCMD asks an edge node to publish its births again."""
MAX_PAYLOAD_BYTES: Final = 1024 * 1024


class MessageType(StrEnum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    NDATA = "NDATA"
    NCMD = "NCMD"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    DDATA = "DDATA"
    DCMD = "DCMD"
    STATE = "STATE"

    @property
    def is_device(self) -> bool:
        return self.value[0] == "D"


class DataType(IntEnum):
    """Sparkplug B metric datatypes (specification, "Datatypes")."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTYSET = 20
    PROPERTYSETLIST = 21

    @property
    def is_numeric(self) -> bool:
        """Integers, floats and booleans: what becomes a GridPilot sample."""
        return DataType.INT8 <= self <= DataType.BOOLEAN


_SIGNED_BITS: Final = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}


# ---------------------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    group: str
    type: MessageType
    edge_node: str
    device: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.device}" if self.device is not None else ""
        return f"{NAMESPACE}/{self.group}/{self.type}/{self.edge_node}{tail}"


def topic_filter(group: str) -> str:
    """Everything of one Sparkplug group: ``spBv1.0/{group}/#``."""
    return f"{NAMESPACE}/{group}/#"


def host_state_topic(host_id: str) -> str:
    """Where a host application announces itself: ``spBv1.0/STATE/{host_id}`` (retained)."""
    return f"{NAMESPACE}/STATE/{host_id}"


def host_state_payload(online: bool, timestamp_ms: int) -> bytes:
    """The Sparkplug 3.0 STATE payload, JSON (not protobuf): ``{"online", "timestamp"}``.
    The death (the will) carries the timestamp of the birth it ends."""
    return b'{"online": %s, "timestamp": %d}' % (b"true" if online else b"false", timestamp_ms)


def parse_topic(topic: str) -> SparkplugTopic | None:
    """A Sparkplug B node or device topic; None for anything else (STATE included)."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        return None
    try:
        kind = MessageType(parts[2])
    except ValueError:
        return None
    if kind is MessageType.STATE or not all(parts[1:]):
        return None
    if kind.is_device != (len(parts) == 5):
        return None
    return SparkplugTopic(parts[1], kind, parts[3], parts[4] if len(parts) == 5 else None)


# ---------------------------------------------------------------------------- schema

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL: Final = _F.LABEL_OPTIONAL
_REPEATED: Final = _F.LABEL_REPEATED
_PACKAGE: Final = "org.eclipse.tahu.protobuf"


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    label: int = _OPTIONAL,
    type_name: str | None = None,
    oneof: int | None = None,
) -> None:
    f = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name is not None:
        f.type_name = f".{_PACKAGE}.Payload.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof


def _schema() -> descriptor_pb2.FileDescriptorProto:
    """The subset of ``sparkplug_b.proto`` (proto2) that GridPilot reads and writes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="gridpilot/sparkplug_b.proto", package=_PACKAGE, syntax="proto2"
    )
    payload = file.message_type.add(name="Payload")
    _field(payload, "timestamp", 1, _F.TYPE_UINT64)
    _field(payload, "metrics", 2, _F.TYPE_MESSAGE, label=_REPEATED, type_name="Metric")
    _field(payload, "seq", 3, _F.TYPE_UINT64)
    _field(payload, "uuid", 4, _F.TYPE_STRING)
    _field(payload, "body", 5, _F.TYPE_BYTES)

    value = payload.nested_type.add(name="PropertyValue")
    _field(value, "type", 1, _F.TYPE_UINT32)
    _field(value, "is_null", 2, _F.TYPE_BOOL)
    value.oneof_decl.add(name="value")
    for name, number, kind in (
        ("int_value", 3, _F.TYPE_UINT32),
        ("long_value", 4, _F.TYPE_UINT64),
        ("float_value", 5, _F.TYPE_FLOAT),
        ("double_value", 6, _F.TYPE_DOUBLE),
        ("boolean_value", 7, _F.TYPE_BOOL),
        ("string_value", 8, _F.TYPE_STRING),
    ):
        _field(value, name, number, kind, oneof=0)
    _field(value, "propertyset_value", 9, _F.TYPE_MESSAGE, type_name="PropertySet", oneof=0)
    _field(value, "propertysets_value", 10, _F.TYPE_MESSAGE, type_name="PropertySetList", oneof=0)

    pset = payload.nested_type.add(name="PropertySet")
    _field(pset, "keys", 1, _F.TYPE_STRING, label=_REPEATED)
    _field(pset, "values", 2, _F.TYPE_MESSAGE, label=_REPEATED, type_name="PropertyValue")

    plist = payload.nested_type.add(name="PropertySetList")
    _field(plist, "propertyset", 1, _F.TYPE_MESSAGE, label=_REPEATED, type_name="PropertySet")

    metric = payload.nested_type.add(name="Metric")
    _field(metric, "name", 1, _F.TYPE_STRING)
    _field(metric, "alias", 2, _F.TYPE_UINT64)
    _field(metric, "timestamp", 3, _F.TYPE_UINT64)
    _field(metric, "datatype", 4, _F.TYPE_UINT32)
    _field(metric, "is_historical", 5, _F.TYPE_BOOL)
    _field(metric, "is_transient", 6, _F.TYPE_BOOL)
    _field(metric, "is_null", 7, _F.TYPE_BOOL)
    _field(metric, "properties", 9, _F.TYPE_MESSAGE, type_name="PropertySet")
    metric.oneof_decl.add(name="value")
    for name, number, kind in (
        ("int_value", 10, _F.TYPE_UINT32),
        ("long_value", 11, _F.TYPE_UINT64),
        ("float_value", 12, _F.TYPE_FLOAT),
        ("double_value", 13, _F.TYPE_DOUBLE),
        ("boolean_value", 14, _F.TYPE_BOOL),
        ("string_value", 15, _F.TYPE_STRING),
        ("bytes_value", 16, _F.TYPE_BYTES),
    ):
        _field(metric, name, number, kind, oneof=0)
    return file


def _payload_class() -> Any:
    # A private pool: a second definition of the same full name elsewhere in the process
    # (another Sparkplug library's generated module) cannot clash with ours.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))


_Payload: Final = _payload_class()


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class SparkplugMetric:
    """One metric as sent: ``name`` and/or ``alias``; ``value`` None when the metric is
    null or carries no scalar (DataSet, Template, extension)."""

    name: str | None
    alias: int | None
    datatype: DataType | None
    """None when the sender left it out (allowed in DATA messages; the birth has it)."""
    timestamp_ms: int | None
    value: float | bool | int | str | bytes | None
    is_historical: bool = False
    properties: Mapping[str, float | bool | int | str] = field(default_factory=dict)
    """Scalar properties, e.g. ``{"engUnit": "kW"}``."""


@dataclass(frozen=True, slots=True)
class SparkplugPayload:
    timestamp_ms: int | None
    seq: int | None
    metrics: tuple[SparkplugMetric, ...]

    def metric(self, name: str) -> SparkplugMetric | None:
        for m in self.metrics:
            if m.name == name:
                return m
        return None


def decode_payload(raw: bytes) -> SparkplugPayload:
    """Decode a Sparkplug B payload; ``PayloadError`` says what is wrong with it."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"Sparkplug payload of {len(raw)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        message = _Payload.FromString(raw)
    except (DecodeError, RecursionError) as exc:
        raise PayloadError(f"not a Sparkplug B protobuf payload: {exc}") from None
    metrics = tuple(_metric(m) for m in message.metrics)
    return SparkplugPayload(
        message.timestamp if message.HasField("timestamp") else None,
        message.seq if message.HasField("seq") else None,
        metrics,
    )


def _metric(m: Any) -> SparkplugMetric:
    # One ListFields() call instead of a HasField() per field: this is the hot path.
    fields = {f.name: v for f, v in m.ListFields()}
    raw_type = fields.get("datatype")
    datatype: DataType | None = None
    if raw_type is not None:
        try:
            datatype = DataType(raw_type)
        except ValueError:  # arrays (22-34) and newer types: no scalar for GridPilot
            datatype = None
    which = m.WhichOneof("value")
    value = (
        None if which is None or fields.get("is_null") else signed_value(fields[which], datatype)
    )
    properties = fields.get("properties")
    return SparkplugMetric(
        fields.get("name"),
        fields.get("alias"),
        datatype,
        fields.get("timestamp"),
        value,
        fields.get("is_historical", False),
        _NO_PROPERTIES if properties is None else _properties(properties),
    )


_NO_PROPERTIES: Final[Mapping[str, float | bool | int | str]] = MappingProxyType({})


def signed_value(
    raw: float | bool | int | str | bytes, datatype: DataType | None
) -> float | bool | int | str | bytes:
    """A raw protobuf value read as its Sparkplug datatype (for DATA metrics that left the
    datatype out, pass the birth's)."""
    bits = _SIGNED_BITS.get(datatype) if datatype is not None else None
    if bits is not None and type(raw) is int:
        # Signed integers travel as unsigned two's complement: in their own width
        # (pysparkplug: Int8 -1 -> 255) or sign-extended to the field's 32/64 bits (Tahu's
        # Java and C: Int8 -1 -> 4294967295). Both read back as -1.
        width = 64 if bits == 64 else 32
        if raw >= 1 << (width - 1):
            return raw - (1 << width)
        if bits < width and raw >= 1 << (bits - 1):
            return raw - (1 << bits)
    return raw


def _properties(pset: Any) -> dict[str, float | bool | int | str]:
    found: dict[str, float | bool | int | str] = {}
    for key, value in zip(pset.keys, pset.values, strict=False):
        which = value.WhichOneof("value")
        if which is None or value.is_null or which in ("propertyset_value", "propertysets_value"):
            continue
        found[key] = getattr(value, which)
    return found


def numeric_value(metric: SparkplugMetric, datatype: DataType | None) -> float | None:
    """The metric's value as a float (booleans 0/1), or None when it is not a number."""
    value = metric.value
    if datatype is None or not datatype.is_numeric or value is None:
        return None
    if type(value) is bool:
        return 1.0 if value else 0.0
    if type(value) is int or type(value) is float:
        return float(value)
    return None


# ---------------------------------------------------------------------------- encoding

_VALUE_FIELDS: Final = {
    DataType.BOOLEAN: "boolean_value",
    DataType.FLOAT: "float_value",
    DataType.DOUBLE: "double_value",
    DataType.STRING: "string_value",
    DataType.UINT64: "long_value",
    DataType.INT64: "long_value",
    DataType.UINT32: "int_value",
}


def encode_payload(payload: SparkplugPayload) -> bytes:
    """Encode a payload (what GridPilot sends: commands; tests build births with it too).

    Values go into the field their datatype uses; signed integers as two's complement of
    their field's width. Properties are not encoded.
    """
    message = _Payload()
    if payload.timestamp_ms is not None:
        message.timestamp = payload.timestamp_ms
    if payload.seq is not None:
        message.seq = payload.seq
    for metric in payload.metrics:
        m = message.metrics.add()
        if metric.name is not None:
            m.name = metric.name
        if metric.alias is not None:
            m.alias = metric.alias
        if metric.timestamp_ms is not None:
            m.timestamp = metric.timestamp_ms
        if metric.datatype is not None:
            m.datatype = int(metric.datatype)
        if metric.value is None:
            m.is_null = True
            continue
        datatype = metric.datatype or DataType.DOUBLE
        name = _VALUE_FIELDS.get(datatype)
        if name is None:
            name = "long_value" if datatype in (DataType.DATETIME,) else "int_value"
        value = metric.value
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            value += 1 << (32 if name == "int_value" else 64)
        if isinstance(value, float) and not math.isfinite(value) and name.startswith("int"):
            raise ValueError(f"metric {metric.name!r}: {value} is not an integer")
        setattr(m, name, value)
    return bytes(message.SerializeToString())


def rebirth_command(now_ms: int) -> bytes:
    """The NCMD payload asking an edge node to publish NBIRTH and DBIRTHs again."""
    return encode_payload(
        SparkplugPayload(
            now_ms,
            None,
            (SparkplugMetric(REBIRTH_METRIC, None, DataType.BOOLEAN, now_ms, True),),
        )
    )
