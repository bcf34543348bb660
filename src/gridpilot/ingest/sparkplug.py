"""Sparkplug B host logic: births, aliases, sequence numbers, deaths -> GridPilot samples.

A pure state machine (``SparkplugHost.handle(topic, payload, now_ms)``); the ingest service
feeds it messages and carries out what it returns: samples to store, rejections to
dead-letter, device states to publish (retained ``.../{device}/state``), and rebirth
requests to send (NCMD ``Node Control/Rebirth``).

Rules (Sparkplug B 3.0, "Host Applications"):
- NBIRTH starts a node session: its bdSeq, its sequence number, and for every metric the
  name, alias and datatype; earlier device births of the node are forgotten. DBIRTH does the
  same for one device. Births carry current values, which are stored like data.
- Every NDATA/DBIRTH/DDATA/DDEATH of a node carries the node's next sequence number
  (0..255, wrapping). A number other than the expected one is a gap: the message is
  dropped, a rebirth is requested and the node's data is ignored until its NBIRTH. So is
  data of a node (or device) whose birth GridPilot has not seen, e.g. after ingest restarted.
- Rebirth requests to one node are at least ``rebirth_interval`` apart.
- NDEATH (normally the broker's last will) counts only when its bdSeq is the one of the
  node's current birth -- a stale will from an older session must not kill the new one.
  It marks the node's device and all its devices offline; DDEATH marks one device offline.
- With ``sparkplug.host_id`` ingest is a primary host application: retained
  ``spBv1.0/STATE/{host_id}`` ``{"online": true, "timestamp": birth}`` after every connection,
  and the same with ``false`` as its MQTT will and before a clean disconnect.
- With ``sparkplug.republish`` the stored values of the listed devices are also published as
  GridPilot telemetry (one message per timestamp), which ingest then skips.

Point names (deterministic, documented in the README):
1. the device mapping's ``points`` (metric name -> point name), else
2. the metric name, its ``/`` folders joined with ``_``, lower-cased, every run of other
   characters as one ``_``; then the unit: a trailing ``[unit]``/``(unit)`` in the name or
   the metric's ``engUnit``/``unit``/``units`` property, mapped to GridPilot's unit suffix
   (``kW`` -> ``_w``, values scaled by 1000); a name already ending in a unit suffix is kept;
   a boolean without a unit gets ``_state`` (0/1).
   A name that still has no unit suffix is rejected (``bad_point_name``) with a hint to map it.
Metrics under ``Node Control/``, ``Node Info/``, ``Properties/`` and ``bdSeq`` are the
protocol's own and not stored; strings, bytes, datasets, templates and nulls are counted
(``metrics_skipped``), not stored.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import orjson

from gridpilot.bus.client import BusClient, Will
from gridpilot.bus.codec import encode_telemetry
from gridpilot.bus.errors import PayloadError
from gridpilot.bus.sparkplug import (
    BD_SEQ,
    NAMESPACE,
    SEQ_MODULO,
    DataType,
    MessageType,
    SparkplugMetric,
    SparkplugPayload,
    SparkplugTopic,
    decode_payload,
    host_state_payload,
    host_state_topic,
    parse_topic,
    rebirth_command,
    signed_value,
    topic_filter,
)
from gridpilot.config.models import GridPilotConfig, SparkplugConfig, SparkplugDeviceConfig
from gridpilot.ingest.validation import Rejection, RejectReason, ValidationRules
from gridpilot.model import Sample, Topic, is_valid_identifier, to_rfc3339
from gridpilot.model.units import UNIT_SUFFIXES

__all__ = [
    "DeviceStateChange",
    "HostOutcome",
    "SparkplugHost",
    "SparkplugIngest",
    "SparkplugStats",
    "derive_device_id",
    "derive_point_name",
]

log = logging.getLogger("gridpilot.ingest.sparkplug")

_PROTOCOL_PREFIXES: Final = ("Node Control/", "Node Info/", "Properties/", "Device Control/")
_UNIT_PROPERTIES: Final = ("engUnit", "engUnits", "EngUnit", "unit", "units", "Unit", "Units")
_MIN_PLAUSIBLE_TS_MS: Final = 946_684_800_000  # 2000-01-01, as in validation.py
_MAX_NODES: Final = 10_000
"""Edge nodes tracked at most with ``auto_devices`` (listed nodes always are)."""
_MAX_NAMES: Final = 100_000
"""(device, metric) -> point names cached at most."""
_SUFFIXES: Final = tuple(UNIT_SUFFIXES)

# Engineering unit (as edge nodes write it) -> (GridPilot suffix, factor to that unit).
_UNITS: Final[dict[str, tuple[str, float]]] = {
    "w": ("_w", 1.0),
    "kw": ("_w", 1e3),
    "mw": ("_w", 1e6),
    "wh": ("_wh", 1.0),
    "kwh": ("_wh", 1e3),
    "mwh": ("_wh", 1e6),
    "var": ("_var", 1.0),
    "kvar": ("_var", 1e3),
    "varh": ("_varh", 1.0),
    "kvarh": ("_varh", 1e3),
    "va": ("_va", 1.0),
    "kva": ("_va", 1e3),
    "vah": ("_vah", 1.0),
    "kvah": ("_vah", 1e3),
    "v": ("_v", 1.0),
    "kv": ("_v", 1e3),
    "a": ("_a", 1.0),
    "ma": ("_ma", 1.0),
    "ah": ("_ah", 1.0),
    "hz": ("_hz", 1.0),
    "%": ("_pct", 1.0),
    "pct": ("_pct", 1.0),
    "percent": ("_pct", 1.0),
    "°c": ("_degc", 1.0),
    "degc": ("_degc", 1.0),
    "deg c": ("_degc", 1.0),
    "c": ("_degc", 1.0),
    "rpm": ("_rpm", 1.0),
    "pa": ("_pa", 1.0),
    "kpa": ("_pa", 1e3),
    "bar": ("_pa", 1e5),
    "mbar": ("_pa", 1e2),
    "m3/h": ("_m3h", 1.0),
    "m³/h": ("_m3h", 1.0),
    "w/m2": ("_wm2", 1.0),
    "w/m²": ("_wm2", 1.0),
    "s": ("_s", 1.0),
    "ms": ("_s", 1e-3),
    "pf": ("_pf", 1.0),
}
_TRAILING_UNIT = re.compile(r"^(?P<base>.*?)\s*[\[(](?P<unit>[^\[\]()]{1,12})[\])]\s*$")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def _slug(text: str) -> str:
    return _NOT_ALNUM.sub("_", text.lower()).strip("_")


def derive_device_id(edge_node: str, device: str | None) -> str:
    """``auto_devices`` ids: ``<edge_node>`` or ``<edge_node>-<device>``, slugged, at most
    63 characters."""
    base = _slug(edge_node) or "node"
    if device is not None:
        base = f"{base}-{_slug(device) or 'device'}"
    return base[:63].rstrip("_-") or "node"


def _unit_suffix(unit: str) -> tuple[str, float] | None:
    return _UNITS.get(unit.strip().lower())


def derive_point_name(
    metric: str, datatype: DataType | None, properties: Mapping[str, object]
) -> tuple[str, float]:
    """The GridPilot point name of a metric and the factor that scales its value to the
    name's unit (rule 2 of the module docstring). The name may be invalid (no unit suffix,
    too long): the caller checks."""
    name = metric
    unit: str | None = None
    match = _TRAILING_UNIT.match(name)
    if match is not None and _unit_suffix(match["unit"]) is not None:
        name, unit = match["base"], match["unit"]
    if unit is None:
        for key in _UNIT_PROPERTIES:
            value = properties.get(key)
            if isinstance(value, str) and value.strip():
                unit = value
                break
    slug = "_".join(p for p in (_slug(part) for part in name.split("/")) if p)
    if unit is not None:
        found = _unit_suffix(unit)
        if found is not None:
            suffix, factor = found
            return (slug if slug.endswith(suffix) else slug + suffix), factor
    if slug.endswith(_SUFFIXES):
        return slug, 1.0
    if datatype is DataType.BOOLEAN:
        return slug + "_state", 1.0
    return slug, 1.0


# ---------------------------------------------------------------------------- outcome


@dataclass(frozen=True, slots=True)
class DeviceStateChange:
    device: str
    online: bool
    reason: str


@dataclass(slots=True)
class HostOutcome:
    """What one Sparkplug message asks of the ingest service."""

    device: str | None = None
    """The GridPilot device the message is about (None: unmapped, or node-wide)."""
    samples: list[Sample] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    states: list[DeviceStateChange] = field(default_factory=list)
    rebirth: str | None = None
    """Edge node id to send an NCMD rebirth request to."""
    skipped: int = 0
    """Metrics not stored: protocol metrics, non-numbers, nulls."""
    ignored: str | None = None
    """Why the whole message was dropped (gap, no birth, stale death...), for logs."""


@dataclass(slots=True)
class _Metric:
    name: str
    datatype: DataType | None


@dataclass(slots=True)
class _Defs:
    """Metric definitions of one birth: alias -> metric, name -> datatype."""

    by_alias: dict[int, _Metric] = field(default_factory=dict)
    by_name: dict[str, DataType | None] = field(default_factory=dict)

    @classmethod
    def from_birth(cls, payload: SparkplugPayload) -> _Defs:
        defs = cls()
        for m in payload.metrics:
            if m.name is None:
                continue
            defs.by_name[m.name] = m.datatype
            if m.alias is not None:
                defs.by_alias[m.alias] = _Metric(m.name, m.datatype)
        return defs

    def resolve(self, m: SparkplugMetric) -> tuple[str, DataType | None] | None:
        if m.name is not None:
            return m.name, m.datatype if m.datatype is not None else self.by_name.get(m.name)
        if m.alias is not None:
            known = self.by_alias.get(m.alias)
            if known is not None:
                return known.name, m.datatype if m.datatype is not None else known.datatype
        return None


@dataclass(slots=True)
class _Node:
    bd_seq: int | None = None
    next_seq: int | None = None
    """Expected sequence number; None while the node is not (re)born."""
    defs: _Defs = field(default_factory=_Defs)
    devices: dict[str, _Defs] = field(default_factory=dict)
    """Devices born in the current node session."""
    online_devices: set[str] = field(default_factory=set)
    """GridPilot ids marked online by this node's births."""
    last_rebirth_ms: int | None = None


class SparkplugHost:
    """The host application's view of one Sparkplug group (one GridPilot site)."""

    def __init__(self, config: GridPilotConfig, rules: ValidationRules) -> None:
        if config.sparkplug is None:
            raise ValueError("the site file has no 'sparkplug' section")
        self.config: SparkplugConfig = config.sparkplug
        self.site = config.site.id
        self._rules = rules
        self._mapped_nodes = frozenset(d.edge_node for d in self.config.devices)
        self._rebirth_ms = int(self.config.rebirth_interval.total_seconds() * 1000)
        self._nodes: dict[str, _Node] = {}
        self._names: dict[tuple[str, str], tuple[str, float] | None] = {}

    @property
    def tracked_nodes(self) -> int:
        """Edge nodes whose session state is kept."""
        return len(self._nodes)

    # ------------------------------------------------------------------ mapping

    def device_id(self, edge_node: str, device: str | None) -> str | None:
        """The GridPilot device of a Sparkplug node/device, None when it is not mapped."""
        mapping = self.config.mapping(edge_node, device)
        if mapping is not None:
            return mapping.id
        if self.config.auto_devices:
            return derive_device_id(edge_node, device)
        return None

    def point_name(
        self,
        mapping: SparkplugDeviceConfig | None,
        metric: str,
        datatype: DataType | None,
        properties: Mapping[str, object],
    ) -> tuple[str, float]:
        if mapping is not None:
            explicit = mapping.points.get(metric)
            if explicit is not None:
                return explicit, 1.0
        return derive_point_name(metric, datatype, properties)

    # ------------------------------------------------------------------ messages

    def handle(self, topic: str, payload: bytes, now_ms: int) -> HostOutcome | None:
        """Process one message of the group; None when the topic is not for this host."""
        parsed = parse_topic(topic)
        if parsed is None or parsed.group != self.config.group:
            return None
        if parsed.type in (MessageType.NCMD, MessageType.DCMD):
            return HostOutcome(ignored="a command (for the edge node, not the host)")
        outcome = HostOutcome(device=self.device_id(parsed.edge_node, parsed.device))
        node = self._node(parsed)
        if node is None:
            why = (
                f"is one more than the {_MAX_NODES} edge nodes auto_devices tracks"
                if self.config.auto_devices
                else "is not mapped: add it to sparkplug.devices (or set sparkplug.auto_devices)"
            )
            outcome.rejections.append(
                Rejection(
                    None,
                    RejectReason.UNKNOWN_DEVICE,
                    f"Sparkplug edge node {parsed.edge_node!r} of group {parsed.group!r} {why}",
                )
            )
            return outcome
        try:
            decoded = decode_payload(payload)
        except PayloadError as exc:
            outcome.rejections.append(Rejection(None, RejectReason.NOT_JSON, str(exc)))
            return outcome
        match parsed.type:
            case MessageType.NBIRTH:
                self._node_birth(parsed, decoded, node, outcome, now_ms)
            case MessageType.NDEATH:
                self._node_death(parsed, decoded, node, outcome)
            case _:
                if not self._in_sequence(parsed, decoded, node, outcome, now_ms):
                    return outcome
                if parsed.type is MessageType.DBIRTH:
                    self._device_birth(parsed, decoded, node, outcome, now_ms)
                elif parsed.type is MessageType.DDEATH:
                    self._device_death(parsed, node, outcome)
                else:
                    self._data(parsed, decoded, node, outcome, now_ms)
        return outcome

    def _node(self, topic: SparkplugTopic) -> _Node | None:
        """The session state of the topic's edge node; None for a node this site does not
        map. State is kept for mapped nodes only, and for at most ``_MAX_NODES`` with
        ``auto_devices``, so that a flood of made-up node ids cannot grow memory."""
        node = self._nodes.get(topic.edge_node)
        if node is not None:
            return node
        if topic.edge_node not in self._mapped_nodes and not (
            self.config.auto_devices and len(self._nodes) < _MAX_NODES
        ):
            return None
        node = self._nodes[topic.edge_node] = _Node()
        return node

    def _node_birth(
        self,
        topic: SparkplugTopic,
        payload: SparkplugPayload,
        node: _Node,
        outcome: HostOutcome,
        now_ms: int,
    ) -> None:
        bd_seq = payload.metric(BD_SEQ)
        node.bd_seq = _bd_seq(bd_seq)
        node.next_seq = None if payload.seq is None else (payload.seq + 1) % SEQ_MODULO
        node.defs = _Defs.from_birth(payload)
        node.devices.clear()
        if outcome.device is not None:
            node.online_devices.add(outcome.device)
            outcome.states.append(DeviceStateChange(outcome.device, True, "Sparkplug NBIRTH"))
        if node.next_seq is None:
            self._ask_rebirth(topic.edge_node, node, outcome, now_ms, "NBIRTH without seq")
            return
        self._values(topic, payload, node.defs, outcome, now_ms)

    def _node_death(
        self, topic: SparkplugTopic, payload: SparkplugPayload, node: _Node, outcome: HostOutcome
    ) -> None:
        bd_seq = payload.metric(BD_SEQ)
        got = _bd_seq(bd_seq)
        if node.bd_seq is not None and got is not None and got != node.bd_seq:
            outcome.ignored = f"NDEATH with bdSeq {got} of an older session (current {node.bd_seq})"
            return
        node.next_seq = None
        node.devices.clear()
        for device in sorted(node.online_devices):
            outcome.states.append(DeviceStateChange(device, False, "Sparkplug NDEATH"))
        if outcome.device is not None and outcome.device not in node.online_devices:
            outcome.states.append(DeviceStateChange(outcome.device, False, "Sparkplug NDEATH"))
        node.online_devices.clear()

    def _in_sequence(
        self,
        topic: SparkplugTopic,
        payload: SparkplugPayload,
        node: _Node,
        outcome: HostOutcome,
        now_ms: int,
    ) -> bool:
        expected = node.next_seq
        if expected is None:
            self._ask_rebirth(
                topic.edge_node,
                node,
                outcome,
                now_ms,
                f"{topic.type} before the node's NBIRTH",
            )
            return False
        if payload.seq != expected:
            node.next_seq = None
            self._ask_rebirth(
                topic.edge_node,
                node,
                outcome,
                now_ms,
                f"sequence gap: {topic.type} seq {payload.seq}, expected {expected}",
            )
            return False
        node.next_seq = (expected + 1) % SEQ_MODULO
        return True

    def _ask_rebirth(
        self, edge_node: str, node: _Node, outcome: HostOutcome, now_ms: int, why: str
    ) -> None:
        outcome.ignored = f"{why}; data ignored until the node's rebirth"
        last = node.last_rebirth_ms
        if last is None or now_ms - last >= self._rebirth_ms or now_ms < last:
            node.last_rebirth_ms = now_ms
            outcome.rebirth = edge_node

    def _device_birth(
        self,
        topic: SparkplugTopic,
        payload: SparkplugPayload,
        node: _Node,
        outcome: HostOutcome,
        now_ms: int,
    ) -> None:
        assert topic.device is not None  # noqa: S101 -- parse_topic: D* topics have a device
        defs = _Defs.from_birth(payload)
        node.devices[topic.device] = defs
        if outcome.device is not None:
            node.online_devices.add(outcome.device)
            outcome.states.append(DeviceStateChange(outcome.device, True, "Sparkplug DBIRTH"))
        self._values(topic, payload, defs, outcome, now_ms)

    def _device_death(self, topic: SparkplugTopic, node: _Node, outcome: HostOutcome) -> None:
        assert topic.device is not None  # noqa: S101
        node.devices.pop(topic.device, None)
        if outcome.device is not None:
            node.online_devices.discard(outcome.device)
            outcome.states.append(DeviceStateChange(outcome.device, False, "Sparkplug DDEATH"))

    def _data(
        self,
        topic: SparkplugTopic,
        payload: SparkplugPayload,
        node: _Node,
        outcome: HostOutcome,
        now_ms: int,
    ) -> None:
        if topic.device is None:
            defs = node.defs
        else:
            found = node.devices.get(topic.device)
            if found is None:
                node.next_seq = None
                self._ask_rebirth(
                    topic.edge_node,
                    node,
                    outcome,
                    now_ms,
                    f"DDATA of device {topic.device!r} before its DBIRTH",
                )
                return
            defs = found
        self._values(topic, payload, defs, outcome, now_ms)

    # ------------------------------------------------------------------ values

    def _values(
        self,
        topic: SparkplugTopic,
        payload: SparkplugPayload,
        defs: _Defs,
        outcome: HostOutcome,
        now_ms: int,
    ) -> None:
        device = outcome.device
        if device is None:
            where = f"edge node {topic.edge_node!r}" + (
                f" device {topic.device!r}" if topic.device is not None else ""
            )
            outcome.rejections.append(
                Rejection(
                    None,
                    RejectReason.UNKNOWN_DEVICE,
                    f"Sparkplug {where} of group {topic.group!r} is not mapped to a device: "
                    "add it to sparkplug.devices (or set sparkplug.auto_devices)",
                )
            )
            return
        mapping = self.config.mapping(topic.edge_node, topic.device)
        rules = self._rules
        points = rules.devices.get(device)
        for metric in payload.metrics:
            resolved = defs.resolve(metric)
            if resolved is None:
                outcome.rejections.append(
                    Rejection(
                        None if metric.alias is None else f"alias {metric.alias}",
                        RejectReason.UNKNOWN_POINT,
                        f"metric alias {metric.alias} is not in the birth of {device!r}",
                    )
                )
                continue
            name, datatype = resolved
            if name == BD_SEQ or name.startswith(_PROTOCOL_PREFIXES):
                outcome.skipped += 1
                continue
            value = metric.value
            if value is not None and metric.datatype is None and datatype is not None:
                value = signed_value(value, datatype)
            number = _number(value, datatype)
            if number is None:
                outcome.skipped += 1
                continue
            key = (device, name)
            if key not in self._names:
                if len(self._names) >= _MAX_NAMES:
                    self._names.clear()  # a cache: rebuilt on demand
                self._names[key] = self._checked_name(mapping, name, datatype, metric, outcome)
            named = self._names[key]
            if named is None:
                self._names.pop(key)  # report it each time; the birth may change
                continue
            point, factor = named
            ts = metric.timestamp_ms if metric.timestamp_ms is not None else payload.timestamp_ms
            rejection = self._check(point, number * factor, ts, points, now_ms)
            if rejection is not None:
                outcome.rejections.append(rejection)
                continue
            assert ts is not None  # noqa: S101 -- _check rejected a missing ts
            outcome.samples.append(Sample(self.site, device, point, ts, number * factor))

    def _checked_name(
        self,
        mapping: SparkplugDeviceConfig | None,
        name: str,
        datatype: DataType | None,
        metric: SparkplugMetric,
        outcome: HostOutcome,
    ) -> tuple[str, float] | None:
        point, factor = self.point_name(mapping, name, datatype, metric.properties)
        if not (is_valid_identifier(point) and point.endswith(_SUFFIXES)):
            outcome.rejections.append(
                Rejection(
                    point[:120] or name[:120],
                    RejectReason.BAD_POINT_NAME,
                    f"metric {name!r} makes no GridPilot point name ({point!r} has no unit "
                    "suffix or is longer than 63 characters): give it an engUnit property, "
                    "a unit in brackets, or map it in sparkplug.devices[].points",
                )
            )
            return None
        return point, factor

    def _check(
        self,
        point: str,
        value: float,
        ts: int | None,
        points: Mapping[str, tuple[float, float]] | None,
        now_ms: int,
    ) -> Rejection | None:
        rules = self._rules
        if ts is None or ts < _MIN_PLAUSIBLE_TS_MS:
            return Rejection(
                point, RejectReason.BAD_TS, f"metric timestamp {ts} is missing or before 2000"
            )
        if ts - now_ms > rules.max_future_skew_ms:
            return Rejection(
                point,
                RejectReason.FUTURE_TS,
                f"timestamp is {(ts - now_ms) / 1000:.3f} s in the future: check the edge "
                "node's clock",
            )
        if not math.isfinite(value):
            return Rejection(point, RejectReason.NOT_FINITE, f"{value} is not finite")
        if points is None:
            return None  # a Sparkplug-only device: any well-named point
        bounds = points.get(point)
        if bounds is None:
            if rules.accept_unknown_points:
                return None
            return Rejection(
                point,
                RejectReason.UNKNOWN_POINT,
                f"the device has no point {point!r} configured (or set "
                "ingest.accept_unknown_points)",
            )
        low, high = bounds
        if not low <= value <= high:
            return Rejection(
                point,
                RejectReason.OUT_OF_RANGE,
                f"{value:g} is outside the valid range [{low:g}, {high:g}]",
            )
        return None


def _number(value: object, datatype: DataType | None) -> float | None:
    """A metric's value as a float (booleans 0/1); None when it is not a number."""
    if datatype is None or not datatype.is_numeric or value is None:
        return None
    kind = type(value)
    if kind is float:
        return value  # type: ignore[return-value]
    if kind is bool:
        return 1.0 if value else 0.0
    if kind is int:
        return float(value)  # type: ignore[arg-type]
    return None


def _bd_seq(metric: SparkplugMetric | None) -> int | None:
    value = None if metric is None else metric.value
    return value if type(value) is int else None


# ---------------------------------------------------------------------------- the I/O shell


@dataclass(slots=True)
class SparkplugStats:
    """Counters since the service started."""

    messages: int = 0
    births: int = 0
    deaths: int = 0
    rebirth_requests: int = 0
    ignored: int = 0
    """Messages dropped by the host rules (gap, no birth, stale death)."""
    metrics_skipped: int = 0
    republished: int = 0
    """Telemetry messages published with ``sparkplug.republish``."""


class SparkplugIngest:
    """The ingest service's Sparkplug B part: it runs ``SparkplugHost`` on the messages of
    the group's topics and publishes what the host decides (device states, rebirth NCMDs).
    Samples and rejections go back to the ingest service, which stores and dead-letters
    them like those of JSON telemetry."""

    def __init__(
        self,
        config: GridPilotConfig,
        rules: ValidationRules,
        bus: BusClient,
        *,
        birth_ms: int | None = None,
    ) -> None:
        """``birth_ms``: the timestamp of the host's STATE birth and will (``will``)."""
        self.host = SparkplugHost(config, rules)
        self.stats = SparkplugStats()
        self._bus = bus
        self._birth_ms = birth_ms
        host_id = self.host.config.host_id
        self._state_topic = None if host_id is None else host_state_topic(host_id)
        self._site = config.site.id
        self._group = self.host.config.group
        self.topic_filter = topic_filter(self._group)
        self._prefix = f"{NAMESPACE}/{self._group}/"
        spb = self.host.config
        self._republish = frozenset(d.id for d in spb.devices) if spb.republish else frozenset()

    def accepts(self, topic: str) -> bool:
        return topic.startswith(self._prefix)

    @staticmethod
    def will(config: GridPilotConfig, birth_ms: int) -> Will | None:
        """The host's death certificate, for the ingest client's MQTT will (with
        ``sparkplug.host_id``): STATE offline with the birth's timestamp."""
        spb = config.sparkplug
        if spb is None or spb.host_id is None:
            return None
        return Will(host_state_topic(spb.host_id), host_state_payload(False, birth_ms), 1, True)

    async def announce(self) -> None:
        """STATE online (retained), after every (re)connection: edge nodes that wait for
        their primary host publish their births then."""
        if self._state_topic is not None and self._birth_ms is not None:
            await self._bus.publish(
                self._state_topic, host_state_payload(True, self._birth_ms), qos=1, retain=True
            )

    async def goodbye(self) -> None:
        """STATE offline before a clean disconnect (the will covers the unclean ones)."""
        if self._state_topic is not None and self._birth_ms is not None:
            await self._bus.publish(
                self._state_topic, host_state_payload(False, self._birth_ms), qos=1, retain=True
            )

    async def handle(self, topic: str, payload: bytes, now_ms: int) -> HostOutcome | None:
        outcome = self.host.handle(topic, payload, now_ms)
        if outcome is None:
            return None
        stats = self.stats
        stats.messages += 1
        stats.metrics_skipped += outcome.skipped
        if outcome.ignored is not None:
            stats.ignored += 1
            log.debug("Sparkplug %s: %s", topic, outcome.ignored)
        for change in outcome.states:
            if change.online:
                stats.births += 1
            else:
                stats.deaths += 1
            await self._bus.publish(
                str(Topic.state(self._site, change.device)),
                sparkplug_state_payload(change, now_ms),
                qos=1,
                retain=True,
            )
        if outcome.rebirth is not None:
            stats.rebirth_requests += 1
            log.info(
                "asking Sparkplug edge node %r to rebirth: %s", outcome.rebirth, outcome.ignored
            )
            ncmd = SparkplugTopic(self._group, MessageType.NCMD, outcome.rebirth)
            # QoS 0 and not retained, as the specification requires of NCMD.
            await self._bus.publish(str(ncmd), rebirth_command(now_ms), qos=0)
        if outcome.samples and outcome.device in self._republish:
            await self._republish_samples(outcome.samples)
        return outcome

    async def _republish_samples(self, samples: list[Sample]) -> None:
        """The stored values as GridPilot telemetry, one message per timestamp (a Sparkplug
        message may carry several: each metric has its own). QoS 0: the live view; storage
        has them already."""
        by_ts: dict[int, dict[str, float]] = {}
        for sample in samples:
            by_ts.setdefault(sample.ts_ms, {})[sample.point] = sample.value
        topic = str(Topic.telemetry(self._site, samples[0].device))
        for ts, values in sorted(by_ts.items()):
            await self._bus.publish(topic, encode_telemetry(ts, values), qos=0)
            self.stats.republished += 1


def sparkplug_state_payload(change: DeviceStateChange, now_ms: int) -> bytes:
    """The retained ``.../{device}/state`` of a Sparkplug device: the gateway's shape
    (``status``, ``since``, ``last_error``, ``counters``, ``ts``) plus ``source`` and
    ``reason``, so the API and ``gridpilot tail`` show it like any device's."""
    ts = to_rfc3339(now_ms)
    return orjson.dumps(
        {
            "status": "online" if change.online else "offline",
            "since": ts,
            "last_error": None
            if change.online
            else {"kind": "sparkplug", "message": change.reason, "hint": None, "ts": ts},
            "counters": {},
            "ts": ts,
            "source": "sparkplug",
            "reason": change.reason,
        }
    )
