"""The simulated site: the building's physics behind one Modbus TCP server per device.

``SimulatedSite`` is the I/O shell around the pure ``Building``: it owns one ticker task
that, every ``tick_s`` of wall time, advances simulated time by ``speed`` times the wall time that
passed, and re-encodes every device's registers; and one ``DeviceServer`` per device on
127.0.0.1. Client writes land in the building at once and show on the next read-back; their
physical effect (battery power, ramps) appears from the next tick.

    async with SimulatedSite(speed=60.0) as site:        # one simulated minute per second
        port = site.port_of("grid_meter")
        config = {"site": {"id": "demo"}, "devices": site.site_config("demo")}
        await site.stop_device("battery")                # clients now see connection refused
        await site.start_device("battery")               # back on the same port

With ``rtu_port`` the same devices also answer as Modbus RTU units 1, 2, ... (in device
order, the SunSpec devices after the building's) on that serial port, e.g. one end of a
pseudo-terminal pair whose other end the gateway opens; ``rtu_site_config`` describes them
as a site file's serial bus and devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Self

from gridpilot.model import is_valid_identifier
from gridpilot.sim.building import BATTERY, GRID_METER, PV_INVERTER, Building, BuildingParams
from gridpilot.sim.devices import DEVICE_MAPS, DeviceMap
from gridpilot.sim.image import AppliedWrite, RegisterImage
from gridpilot.sim.rtu import RtuSlaveBus
from gridpilot.sim.server import DeviceServer
from gridpilot.sim.sunspec_devices import SUNSPEC_PLANS, SunSpecImage, SunSpecPlan

log = logging.getLogger(__name__)

MAX_CATCH_UP_S = 5.0
"""Wall time one tick may make up for (after a stalled loop or a suspended machine)."""


# The simulated building's grid meter, inverter and battery count their power as GridPilot
# does (import, production, discharge positive), under the points the flow defaults name.
_FLOW_ROLES = {GRID_METER: "grid", PV_INVERTER: "pv", BATTERY: "battery"}


class SimulatedSite:
    """A simulated commercial building served over Modbus TCP, one port per device.

    ``base_port`` 0 lets the OS pick free ports; otherwise device *i* (in ``devices`` order)
    listens on ``base_port + i``. ``speed`` is simulated seconds per wall second. ``start`` is
    the simulated time at entry (timezone-aware; default: now, UTC). With ``sunspec`` the
    devices of ``sunspec_plans`` are served too (default: inverter, meter, storage; e.g.
    ``BASIC_INVERTER_PLAN`` for an inverter without volt-var of its own).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        base_port: int = 0,
        speed: float = 1.0,
        start: datetime | None = None,
        *,
        tick_s: float = 0.1,
        seed: int = 0,
        params: BuildingParams | None = None,
        device_maps: tuple[DeviceMap, ...] = DEVICE_MAPS,
        rtu_port: str | None = None,
        sunspec: bool = False,
        sunspec_plans: tuple[SunSpecPlan, ...] = SUNSPEC_PLANS,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, not {tick_s}")
        if not 0 <= base_port <= 65535 - len(device_maps):
            raise ValueError(f"base_port {base_port} leaves no room for {len(device_maps)} ports")
        self.host = host
        self.speed = speed
        self.tick_s = tick_s
        self._start = start
        self._seed = seed
        self._params = params
        self._maps = {m.id: m for m in device_maps}
        self._images = {m.id: RegisterImage(m) for m in device_maps}
        self._servers = {
            m.id: DeviceServer(
                self._images[m.id],
                partial(self._apply_write, m.id),
                host=host,
                port=base_port + i if base_port else 0,
            )
            for i, m in enumerate(device_maps)
        }
        # SunSpec devices (``sunspec_devices``): the same physics, discovered by clients.
        self._sunspec = {p.id: SunSpecImage(p) for p in (sunspec_plans if sunspec else ())}
        for offset, image in enumerate(self._sunspec.values(), start=len(device_maps)):
            plan = image.plan
            self._servers[plan.id] = DeviceServer(
                image,
                partial(self._apply_sunspec_write, plan.id),
                host=host,
                port=base_port + offset if base_port else 0,
            )
        self.rtu_port = rtu_port
        # One unit id per device on the line, the SunSpec devices (unit 1 each on their own
        # TCP port) numbered on after the building's.
        self._rtu_units = {
            device_id: unit for unit, device_id in enumerate((*self._maps, *self._sunspec), start=1)
        }
        self._rtu: RtuSlaveBus | None = None
        self._building: Building | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tick_count = 0
        self._ticked = asyncio.Condition()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        start = self._start or datetime.now(UTC)
        self._building = Building(start, self._params, seed=self._seed)
        self._refresh()
        try:
            for server in self._servers.values():
                await server.start()
            if self.rtu_port is not None:
                units: dict[int, RegisterImage] = {
                    self._rtu_units[d]: image for d, image in self._images.items()
                }
                units |= {self._rtu_units[d]: image for d, image in self._sunspec.items()}
                self._rtu = RtuSlaveBus(self.rtu_port, units, self._apply_any_write)
                self._rtu.open()
        except BaseException:
            await self._stop_servers()
            raise
        self._ticker = asyncio.create_task(self._run_ticker(), name="gridpilot-sim-ticker")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self._stop_servers()

    async def _stop_servers(self) -> None:
        rtu, self._rtu = self._rtu, None
        if rtu is not None:
            rtu.close()
        for server in self._servers.values():
            await server.stop()

    # ------------------------------------------------------------------ queries

    @property
    def devices(self) -> tuple[str, ...]:
        """Ids of the simulated devices."""
        return (*self._maps, *self._sunspec)

    @property
    def building(self) -> Building:
        """The physics (for tests and the demo's narration); only valid inside ``async with``."""
        if self._building is None:
            raise RuntimeError("the site is not running; use 'async with SimulatedSite(...)'")
        return self._building

    @property
    def now(self) -> datetime:
        """Simulated time."""
        return self.building.now

    @property
    def tick_count(self) -> int:
        """Ticks since entry (each one advanced the physics and refreshed the registers)."""
        return self._tick_count

    def device_map(self, device_id: str) -> DeviceMap:
        return self._maps[self._known(device_id)]

    def port_of(self, device_id: str) -> int:
        """TCP port of a device (fixed for the site's life, also across stop/start)."""
        return self._servers[self._known(device_id)].port

    def is_running(self, device_id: str) -> bool:
        return self._servers[self._known(device_id)].running

    def site_config(self, site_id: str = "demo") -> list[dict[str, object]]:
        """The ``devices:`` list of a site file for this site: YAML-ready dicts with every
        register map, pointing at the running ports.

        Validates as ``GridPilotConfig.model_validate({"site": {"id": site_id}, "devices": ...})``.
        """
        if not is_valid_identifier(site_id):
            raise ValueError(f"{site_id!r} is not a valid site id")
        devices = [m.config(self.host, self._servers[m.id].port) for m in self._maps.values()]
        for device in devices:  # their parts in the power flow, as a site file says them
            role = _FLOW_ROLES.get(str(device["id"]))
            if role is not None:
                device["flow"] = {"role": role}
        devices += [
            i.plan.config(self.host, self._servers[i.plan.id].port) for i in self._sunspec.values()
        ]
        return devices

    @property
    def rtu(self) -> RtuSlaveBus:
        """The RTU units' serial bus (with its fault switches); only with ``rtu_port``."""
        if self._rtu is None:
            raise RuntimeError("the site serves RTU only with rtu_port, inside 'async with'")
        return self._rtu

    @property
    def rtu_devices(self) -> tuple[str, ...]:
        """Ids of the devices that also answer as RTU units on ``rtu_port`` (all of them)."""
        return tuple(self._rtu_units)

    def rtu_unit_of(self, device_id: str) -> int:
        """The RTU unit id of a device on ``rtu_port``."""
        return self._rtu_units[self._known(device_id)]

    def rtu_site_config(
        self, gateway_port: str, site_id: str = "demo", bus_id: str = "sim-rs485"
    ) -> dict[str, object]:
        """``serial_buses`` and ``devices`` of a site file that polls every device as an RTU
        unit through ``gateway_port`` (the other end of the line from ``rtu_port``)."""
        devices: list[dict[str, object]] = []
        for entry in self.site_config(site_id):
            device_id = entry.pop("id")
            assert isinstance(device_id, str)  # noqa: S101  # DeviceMap.config sets it
            devices.append(
                {
                    "id": device_id,
                    "name": entry.pop("name"),
                    "protocol": "modbus_rtu",
                    "bus": bus_id,
                    "unit_id": self._rtu_units[device_id],
                    **{
                        k: v
                        for k, v in entry.items()
                        if k not in ("protocol", "host", "port", "unit_id")
                    },
                }
            )
        # Pseudo-terminals accept parity N only (see sim.rtu).
        bus = {"id": bus_id, "port": gateway_port, "baudrate": 19200, "parity": "N"}
        return {"serial_buses": [bus], "devices": devices}

    # ------------------------------------------------------------------ control

    async def stop_device(self, device_id: str) -> None:
        """Take a device off the network: its port refuses connections until ``start_device``.

        Its physics keeps running (a device that is unreachable is not a device that stopped).
        """
        await self._servers[self._known(device_id)].stop()

    async def start_device(self, device_id: str) -> None:
        """Bring a stopped device back on its old port."""
        await self._servers[self._known(device_id)].start()

    def advance(self, seconds: float) -> None:
        """Advance simulated time now by ``seconds`` (on top of the ticker) and refresh registers.

        For tests and demos that need hours to pass at once.
        """
        self.building.advance(seconds)
        self._refresh()

    async def wait_ticks(self, count: int = 1) -> None:
        """Return after ``count`` more ticks have advanced the physics."""
        async with self._ticked:
            target = self._tick_count + count
            await self._ticked.wait_for(lambda: self._tick_count >= target)

    # ------------------------------------------------------------------ internals

    def _known(self, device_id: str) -> str:
        if device_id not in self._maps and device_id not in self._sunspec:
            raise KeyError(f"no simulated device {device_id!r}; devices: {', '.join(self._maps)}")
        return device_id

    def _apply_write(self, device_id: str, write: AppliedWrite) -> None:
        log.info("%s.%s written: %g", device_id, write.point.name, write.value)
        self.building.write_point(device_id, write.point.name, write.value)

    def _apply_any_write(self, device_id: str, write: AppliedWrite) -> None:
        """A write through the RTU line, to a building device or a SunSpec one."""
        if device_id in self._sunspec:
            self._apply_sunspec_write(device_id, write)
        else:
            self._apply_write(device_id, write)

    def _apply_sunspec_write(self, device_id: str, write: AppliedWrite) -> None:
        log.info("%s.%s written: %g", device_id, write.point.name, write.value)
        image = self._sunspec[device_id]
        if image.plan.on_point is not None:
            image.plan.on_point(image, write.point.name)
        image.plan.on_write(image, self.building)

    def _refresh(self) -> None:
        building = self.building
        for device_id, image in self._images.items():
            image.update(building.device_values(device_id))
        for sunspec_image in self._sunspec.values():
            sunspec_image.update(sunspec_image.plan.values(building, sunspec_image))

    async def _run_ticker(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            wall_s = min(now - last, MAX_CATCH_UP_S)
            last = now
            try:
                self.advance(wall_s * self.speed)
            except Exception:
                # The task's exception resurfaces at __aexit__; say so now, the site is frozen.
                log.exception("simulated site: the physics failed; registers no longer change")
                raise
            async with self._ticked:
                self._tick_count += 1
                self._ticked.notify_all()


async def run_sim(
    base_port: int = 15020,
    speed: float = 1.0,
    *,
    host: str = "127.0.0.1",
    start: datetime | None = None,
) -> None:
    """Serve the simulated site until cancelled (the body of a ``gridpilot sim`` command)."""
    async with SimulatedSite(host=host, base_port=base_port, speed=speed, start=start) as site:
        for device_id in site.devices:
            log.info("%s: modbus tcp://%s:%d", device_id, host, site.port_of(device_id))
        await asyncio.Event().wait()  # until cancelled; __aexit__ closes every port
