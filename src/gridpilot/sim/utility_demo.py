"""The demo's utility: the test IEEE 2030.5 server, a PKI, and the site file's sections.

``gridpilot demo`` runs the whole utility path with nothing else installed: a throwaway PKI
in the demo's data directory (keys 0600), the test utility server in-process on a free
loopback port serving one DER program with a DefaultDERControl (stay connected) and one
export-limit event (``opModExpLimW``, Received/Started/Completed responses requested), the
site's 2030.5 client (registration with the PIN, mirrors of the grid meter and the PV
inverter from storage) and the grid-operator controller that enforces the limit::

    async with DemoUtility(directory / "pki", DemoUtilityPlan(export_limit_w=10_000)) as utility:
        data["ieee2030_5"] = utility.client_section(pki_dir="pki")
        data["control"]["grid_operator"] = grid_operator_section()
        ...
        utility.summary()  # what the utility received, for the demo's last lines

The event's times are server time, which for this in-process server is this machine's
clock: the same clock the gateway stamps telemetry with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from gridpilot.ieee2030_5.identity import lfdi_of_pem
from gridpilot.ieee2030_5.models import ActivePower, DERControlBase
from gridpilot.ieee2030_5.tls import PkiFiles, make_test_pki
from gridpilot.sim.building import BATTERY, GRID_METER, PV_INVERTER, Building
from gridpilot.sim.physics import BatteryParams, PvParams
from gridpilot.sim.utility_server import DEFAULT_PIN, UtilityServer

__all__ = [
    "DemoUtility",
    "DemoUtilityPlan",
    "grid_operator_section",
]

log = logging.getLogger(__name__)

POLL_RATE_S = 10
"""pollRate served: the client sees a changed program within 10 s (a real utility: 300 s+)."""
POST_RATE_S = 30
"""postRate served: the mirrors reach the utility every 30 s."""
DEMO_BATTERY_SOC_PCT = 90.0
"""The battery starts full: the top of the demo's envelope (``sim.control``, soc_max 90 %)."""
SUNNY_START = "2026-07-04T10:30"
"""A sunny Saturday morning: ~80 kW of PV against ~45 kW of load."""
RESPONSE_REQUIRED = 0x03
"""Received (bit 0) and the event's progress: Started, Completed, Cancelled... (bit 1)."""


@dataclass(frozen=True, slots=True)
class DemoUtilityPlan:
    """The utility's day in the demo: one export limit ``event_in_s`` after start."""

    export_limit_w: float = 10_000.0
    event_in_s: float = 90.0
    event_duration_s: float = 300.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.export_limit_w) and 0 <= self.export_limit_w <= 32_767_000):
            raise ValueError(
                f"the export limit must be 0..32767000 W (2030.5 ActivePower), "
                f"not {self.export_limit_w:g}"
            )
        if not (math.isfinite(self.event_in_s) and self.event_in_s >= 0):
            raise ValueError(f"the event must start now or later, not in {self.event_in_s:g} s")
        if not (math.isfinite(self.event_duration_s) and self.event_duration_s >= 1):
            raise ValueError(f"the event must last at least 1 s, not {self.event_duration_s:g} s")


class DemoUtility:
    """The test utility server with the demo's program, as an async context manager."""

    def __init__(self, pki_dir: Path, plan: DemoUtilityPlan) -> None:
        self.pki_dir = pki_dir
        self.plan = plan
        self._server: UtilityServer | None = None
        self._pki: PkiFiles | None = None
        self.event_mrid: str | None = None
        self.event_start: int | None = None
        """Server time (epoch seconds) the event starts; it has no randomization."""
        self.event_end: int | None = None

    async def __aenter__(self) -> Self:
        # A fresh CA each run: nothing to renew or to trust beyond this run (30-day certs).
        self._pki = make_test_pki(self.pki_dir)
        server = UtilityServer.from_pki(
            self._pki,
            poll_rate_s=POLL_RATE_S,
            post_rate_s=POST_RATE_S,
            registration_pin=DEFAULT_PIN,
        )
        await server.start()
        self._server = server
        # The program's fallback: stay connected (the utility's normal state).
        server.set_default_control(DERControlBase(opModConnect=True), description="stay connected")
        limit = round(self.plan.export_limit_w)
        multiplier = 0
        while limit / 10**multiplier > 32_767:  # ActivePower.value is an Int16
            multiplier += 1
        start = server.now_s() + round(self.plan.event_in_s)
        duration = round(self.plan.event_duration_s)
        self.event_mrid = server.add_event(
            DERControlBase(
                opModExpLimW=ActivePower(multiplier=multiplier, value=round(limit / 10**multiplier))
            ),
            start=start,
            duration=duration,
            response_required=RESPONSE_REQUIRED,
            description=f"export limit {self.plan.export_limit_w / 1000:g} kW",
        )
        self.event_start, self.event_end = start, start + duration
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    @property
    def server(self) -> UtilityServer:
        if self._server is None:
            raise RuntimeError("the demo utility is not running; use 'async with'")
        return self._server

    @property
    def pki(self) -> PkiFiles:
        if self._pki is None:
            raise RuntimeError("the demo utility is not running; use 'async with'")
        return self._pki

    def client_section(self, *, pki_dir: str) -> dict[str, Any]:
        """The site file's ``ieee2030_5`` section for this server (paths relative to the
        site file, ``pki_dir`` being where ``pki_dir`` lies from it)."""
        pv = PvParams()
        return {
            "server": self.server.url,
            "cert_file": f"{pki_dir}/{self.pki.client_cert.name}",
            "key_file": f"{pki_dir}/{self.pki.client_key.name}",
            "ca_file": f"{pki_dir}/{self.pki.ca_cert.name}",
            "pin": DEFAULT_PIN,
            "site_meter": {
                "device": GRID_METER,
                "points": {
                    "w": "active_power_w",
                    "var": "reactive_power_var",
                    "va": "apparent_power_va",
                    "v": "voltage_l1_v",
                    "hz": "frequency_hz",
                    "pf": "power_factor_pf",
                    "wh": "energy_import_wh",
                },
            },
            "der_mirrors": [
                {
                    "device": PV_INVERTER,
                    "points": {
                        "w": "ac_power_w",
                        "v": "ac_voltage_v",
                        "hz": "ac_frequency_hz",
                        "wh": "energy_total_wh",
                    },
                }
            ],
            "der": {
                "type": 83,  # PV and storage combined
                "max_w": pv.ac_rating_w,
                "max_va": pv.ac_rating_va,
                "max_var": pv.var_rating,
            },
        }

    def prepare(
        self, building: Building, control: dict[str, Any], *, max_age_s: float = 5.0
    ) -> None:
        """Set the demo's site up for the utility: the grid-operator controller in the
        ``control`` section (and the PV limit's range), and the battery full (the top of
        its envelope in the demo, 90 %), so that the PV surplus is exported -- peak
        shaving would otherwise soak it up recharging -- until the utility limits it.
        ``max_age_s``: how old the meter's and inverter's readings may be."""
        control["grid_operator"] = grid_operator_section() | {"max_age_s": max_age_s}
        control.setdefault("limits", []).append(
            {"point": f"{PV_INVERTER}.power_limit_pct", "min": 0, "max": 100}
        )
        building.set_battery_soc(DEMO_BATTERY_SOC_PCT)

    def banner_lines(self, grid_w: float, sim_now: datetime) -> list[str]:
        """The demo banner's lines: the server, the event, and whether the building
        exports now (``grid_w``, positive = import) so that the limit will bite."""
        lines = [
            f"  utility       IEEE 2030.5 test server {self.server.url} "
            f"(TLS 1.2 CCM8; PKI in {self.pki.directory})"
        ]
        if self.event_start is not None and self.event_end is not None and self.event_mrid:
            start = datetime.fromtimestamp(self.event_start, UTC).strftime("%H:%M:%S")
            end = datetime.fromtimestamp(self.event_end, UTC).strftime("%H:%M:%S")
            lines.append(
                f"  utility event export limit {self.plan.export_limit_w / 1000:g} kW "
                f"(opModExpLimW) from {start} to {end} UTC, event {self.event_mrid[:8]}"
            )
        if grid_w < 0:
            flow = f"exports {-grid_w / 1000:.0f} kW"
        else:
            flow = (
                f"imports {grid_w / 1000:.0f} kW, so the limit will not bite; "
                f"try --sim-start {SUNNY_START}"
            )
        lines.append(
            f"                (the building {flow} at {sim_now:%Y-%m-%d %H:%M} UTC, simulated)"
        )
        return lines

    def summary(self) -> list[str]:
        """What the utility received, for the demo's last lines: the client's registration,
        the Responses to the event, the mirror posts."""
        server = self.server
        record = server.record
        lines: list[str] = []
        registered = server.end_device_href(self.client_lfdi()) is not None
        lines.append(
            "Utility server: the site "
            + ("registered" if registered else "did NOT register")
            + f" (LFDI {self.client_lfdi()})"
        )
        if self.event_mrid is not None:
            responses = record.responses_for(self.event_mrid)
            names = ", ".join(f"{r.status_name} ({r.status})" for r in responses) or "none"
            lines.append(f"  responses to event {self.event_mrid[:8]}: {names}")
        readings = sum(len(m.readings) for m in record.mirrors)
        lines.append(f"  mirror posts: {len(record.mirrors)} ({readings} readings)")
        return lines

    def client_lfdi(self) -> str:
        """The LFDI of the site's client certificate."""
        return lfdi_of_pem(self.pki.client_cert.read_bytes())


def grid_operator_section() -> dict[str, Any]:
    """``control.grid_operator`` for the simulated building: the utility's export limit is
    held with the battery first, then by curtailing the PV inverter."""
    battery = BatteryParams()
    return {
        "grid_power": f"{GRID_METER}.active_power_w",
        "pv_power": f"{PV_INVERTER}.ac_power_w",
        "pv_limit": f"{PV_INVERTER}.power_limit_pct",
        "pv_rated_power_w": PvParams().ac_rating_w,
        "battery_soc": f"{BATTERY}.soc_pct",
        "battery_power": f"{BATTERY}.active_power_w",
        "battery_setpoint": f"{BATTERY}.active_power_setpoint_w",
        "battery_available_charge": f"{BATTERY}.available_charge_power_w",
        "battery_max_charge_w": battery.max_charge_w,
        "battery_max_discharge_w": battery.max_discharge_w,
        # The demo keeps the battery within 10-90 % (sim.control): at the top the surplus
        # over the limit is curtailed at the inverter.
        "battery_soc_max_pct": DEMO_BATTERY_SOC_PCT,
        # The building's load moves at random by ~1.5 % of ~50 kW at every step and its
        # chillers stage on and off, and the meter is read once a second: aim 2.5 kW
        # inside the limit (as tests/integration/test_grid_operator_sim.py does).
        "margin_w": 2_500.0,
        "hysteresis_w": 1_000.0,
    }
