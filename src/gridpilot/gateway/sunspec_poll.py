"""SunSpec devices in the gateway: discovery at connect, polling by model, command points.

A device with ``sunspec:`` in the site file has no register map. Its ``SunSpecSession``
discovers the models on the first poll (and again after the chain stops matching, e.g. a
firmware update), then reads the whole chain each poll and decodes it with the official
definitions (``fieldbus.sunspec``). What is published:

* every implemented point that has a GridPilot name (``m103_w``, ``m704_wmaxlimpct_pct``),
  or only those the ``sunspec`` block selects;
* nothing for a point that is not implemented or whose scale factor is not: it is absent
  from the telemetry (the telemetry contract has no "null" value; absence is missing).

Commands. After each poll the session describes the writable points (``RW`` in the
definition, implemented, scale factor known; the common model's ``DA`` excluded: changing
the unit id would cut the gateway off) as ``PointConfig`` entries with the scale read from
the device and a ``valid_range`` from ``sunspec.write_range``. The gateway's ordinary
command path (``commands.parse_command``, write, read-back, ``judge_readback``) then
serves them unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from gridpilot.config.models import DeviceConfig, PointConfig
from gridpilot.fieldbus.planner import ReadBlock
from gridpilot.fieldbus.sunspec import (
    DecodedModel,
    DecodedPoint,
    SunSpecError,
    point_name,
    published_values,
    write_range,
)
from gridpilot.fieldbus.sunspec_io import SunSpecMap, discover, holding_reader, read_models
from gridpilot.model import DataType, Table

__all__ = ["SunSpecSession", "command_points"]

log = logging.getLogger(__name__)

DISCOVERY_REQUESTS = 16
"""Requests a discovery may take beyond a poll's reads (bases tried + model headers), for
the poll's time budget."""
_NOT_COMMANDED = frozenset({1})
"""Models whose writable points are not offered as commands (1: the device's own address)."""


class SunSpecSession:
    """The discovered map of one SunSpec device and what its last poll decoded."""

    def __init__(self, device: DeviceConfig) -> None:
        if device.sunspec is None:
            raise ValueError(f"device {device.id!r} has no sunspec section")
        self.device = device
        self.settings = device.sunspec
        self.map: SunSpecMap | None = None
        self.models: list[DecodedModel] = []
        self._commanded: tuple[PointConfig, ...] = ()

    @property
    def blocks(self) -> list[ReadBlock]:
        """The reads of one poll (empty before discovery)."""
        return [] if self.map is None else self.map.blocks(self.settings.models)

    def forget(self) -> None:
        """Discover again on the next poll."""
        self.map = None

    async def poll(
        self, read_block: Callable[[ReadBlock], Awaitable[list[int]]]
    ) -> list[DecodedModel]:
        """Discover (when needed) and read every model. Raises ``FieldbusError`` (a
        ``SunSpecError`` when the registers are not the SunSpec the map said)."""
        read = holding_reader(read_block)
        if self.map is None:
            base = self.settings.base
            self.map = await discover(read, None if base == "auto" else [base])
            log.info(
                "%s: SunSpec at %d, models %s",
                self.device.id,
                self.map.base,
                ", ".join(str(i) for i in self.map.model_ids()),
            )
        try:
            self.models = await read_models(read, self.map, self.settings.models)
        except SunSpecError:
            self.forget()  # the chain moved (new firmware?): find it again next time
            raise
        return self.models

    def values(self) -> tuple[dict[str, float], list[str]]:
        """The values to publish and the names of the missing points (last poll)."""
        return published_values(
            self.models, model_ids=self.settings.models, points=self.settings.points
        )

    def command_device(self) -> DeviceConfig | None:
        """The device with its writable SunSpec points as ``points`` (for the command path),
        when they changed since the last call; None when unchanged."""
        points = command_points(self.models)
        if points == self._commanded:
            return None
        self._commanded = points
        return self.device.model_copy(update={"points": points})


def command_points(models: Sequence[DecodedModel]) -> tuple[PointConfig, ...]:
    """``PointConfig`` entries of the writable, implemented, scalable points of ``models``."""
    out: list[PointConfig] = []
    seen: dict[int, int] = {}
    for model in models:
        seen[model.id] = instance = seen.get(model.id, 0) + 1
        if model.id in _NOT_COMMANDED:
            continue
        for point in model.points:
            config = _command_point(model.id, point, instance)
            if config is not None:
                out.append(config)
    return tuple(out)


def _command_point(model_id: int, point: DecodedPoint, instance: int) -> PointConfig | None:
    d = point.definition
    if not d.writable or not point.implemented or isinstance(point.value, str):
        return None
    if point.value is None:  # implemented, but its scale factor is not
        return None
    name = point_name(model_id, point.path, d, instance)
    limits = write_range(point)
    if name is None or limits is None:
        return None
    dtype = d.dtype
    if dtype is DataType.BITFIELD:
        dtype = DataType.UINT16  # a whole word is written; bits are not commanded singly
    try:
        return PointConfig(
            point=name,
            address=point.address,
            table=Table.HOLDING,
            type=dtype,
            scale=10.0 ** (point.sf or 0),
            valid_range=limits,
            writable=True,
        )
    except ValueError:
        return None
