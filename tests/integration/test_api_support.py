"""Support of the API integration tests (no tests here): a site, its samples, HTTP clients.

``NOW`` is the last full hour (the apps under test get it as their clock), so the expected
aggregates are easy to write down, and the data is recent enough for any retention:

- ``meter/active_power_w``: one sample per second for the two hours before ``NOW``, value =
  seconds since ``NOW - 2h`` (0 ... 7199).
- ``meter/voltage_l1_v``: one sample, 231.4 V, 5 s before ``NOW``.
- ``meter/energy_import_wh``: one sample every 100 ms for the 30 minutes before ``NOW``
  (18,000 samples: more raw rows in an hour than the API returns).
- ``battery/soc_pct``: one sample a minute for the two hours before ``NOW``, 50 + minute/10.
- ``weather``: configured, nothing stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gridpilot.api.audit import AuditLog
from gridpilot.api.tokens import Role, TokenStore
from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.config import GridPilotConfig
from gridpilot.model import Sample, now_ms
from gridpilot.storage.base import Storage

H = 3_600_000
NOW = now_ms() // H * H
POWER_SAMPLES = 7_200
ENERGY_SAMPLES = 18_000


def unique_site(prefix: str = "api") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def site_config(site_id: str, data_dir: Path, **api: Any) -> GridPilotConfig:
    return GridPilotConfig.model_validate(
        {
            "site": {"id": site_id, "name": "Test plant", "timezone": "Europe/Berlin"},
            "storage": {"path": str(data_dir / "api.db")},
            # 10,000 rows: the samples below exceed it without writing 100,000 of them.
            "api": {"history_max_rows": 10_000, **api},
            "devices": [
                {
                    "id": "meter",
                    "name": "Grid meter",
                    "host": "127.0.0.1",
                    "flow": {"role": "grid"},
                    "points": [
                        {
                            "point": "active_power_w",
                            "address": 0,
                            "type": "int32",
                            "valid_range": [-1_000_000, 1_000_000],
                        },
                        {"point": "voltage_l1_v", "address": 2, "scale": 0.1},
                        {"point": "energy_import_wh", "address": 3, "type": "uint32"},
                    ],
                },
                {
                    "id": "battery",
                    "host": "127.0.0.1",
                    "poll_interval": 2.0,
                    "points": [
                        {"point": "soc_pct", "address": 0, "valid_range": [0, 100]},
                        {
                            "point": "active_power_setpoint_w",
                            "address": 1,
                            "type": "int16",
                            "writable": True,
                        },
                    ],
                },
                {
                    "id": "weather",
                    "protocol": "mqtt",
                    "points": [{"point": "air_temperature_degc"}],
                },
            ],
        }
    )


def samples(site_id: str) -> list[Sample]:
    start = NOW - 2 * H
    out = [
        Sample(site_id, "meter", "active_power_w", start + i * 1000, float(i))
        for i in range(POWER_SAMPLES)
    ]
    out.append(Sample(site_id, "meter", "voltage_l1_v", NOW - 5000, 231.4))
    out += [
        Sample(site_id, "meter", "energy_import_wh", NOW - 1_800_000 + i * 100, 1e6 + i)
        for i in range(ENERGY_SAMPLES)
    ]
    out += [
        Sample(site_id, "battery", "soc_pct", start + m * 60_000, 50 + m / 10) for m in range(120)
    ]
    return out


async def fill(storage: Storage, site_id: str) -> None:
    result = await storage.write(samples(site_id))
    assert result.written == POWER_SAMPLES + 1 + ENERGY_SAMPLES + 120


@dataclass(frozen=True)
class Auth:
    """A token store with one token per role, and an audit log, in a test's directory."""

    tokens: TokenStore
    audit: AuditLog
    viewer: str
    operator: str
    admin: str

    @classmethod
    def in_dir(cls, directory: Path) -> Auth:
        store = TokenStore(directory / "tokens.json")
        made = {role: store.create(role, f"test-{role}", created_by="test")[1] for role in Role}
        return cls(
            store,
            AuditLog(directory / "audit.jsonl"),
            made[Role.VIEWER],
            made[Role.OPERATOR],
            made[Role.ADMIN],
        )

    @classmethod
    def of_service(cls, store: TokenStore, audit: AuditLog) -> Auth:
        made = {role: store.create(role, f"test-{role}", created_by="test")[1] for role in Role}
        return cls(store, audit, made[Role.VIEWER], made[Role.OPERATOR], made[Role.ADMIN])


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def client_for(app: Any, token: str | None = None) -> httpx.AsyncClient:
    """An httpx client calling the ASGI app in-process, addressed as loopback, sending
    ``token`` as its bearer token."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://127.0.0.1",
        trust_env=False,
        headers=bearer(token),
    )


def tcp_client(base_url: str, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client over real TCP; ignores proxy settings so traffic stays on loopback."""
    return httpx.AsyncClient(
        base_url=base_url, trust_env=False, timeout=10, headers=bearer(token), **kwargs
    )


async def publish_retained(broker: BrokerAddress, topic: str, payload: bytes) -> None:
    async with BusClient(broker, f"pub-{uuid.uuid4().hex[:12]}") as pub:
        await pub.wait_connected(10)
        await pub.publish(topic, payload, qos=1, retain=True)
        await pub.flush(10)


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], within: float = 10.0
) -> Any:
    """Call ``probe`` until ``accept`` takes its result; fail with the last one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await probe()
        if accept(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not accepted within {within} s; last result: {result!r}")
        await asyncio.sleep(0.05)
