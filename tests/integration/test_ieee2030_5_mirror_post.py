"""The mirror poster end to end: GridPilot's stored telemetry (a real SQLite storage) is
read per window and posted by ``StorageMirrorPoster`` through the client's HTTP session
over TLS 1.2 CCM8 to the test utility server, whose record holds the window means with
the right codes; consecutive calls tile time, and the MirrorUsagePoints are created once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gridpilot.config.ieee2030_5 import CsipClientConfig
from gridpilot.config.models import RetentionConfig
from gridpilot.ieee2030_5.client import HttpSession
from gridpilot.ieee2030_5.identity import lfdi_of_pem
from gridpilot.ieee2030_5.mirror import StorageMirrorPoster, specs_from_config
from gridpilot.ieee2030_5.tls import PkiFiles, client_context, make_test_pki
from gridpilot.model import Sample
from gridpilot.sim.utility_server import MirrorRecord, UtilityServer
from gridpilot.storage import SqliteStorage

pytestmark = pytest.mark.integration

FOREVER = RetentionConfig(raw=None, rollup_1m=None, rollup_15m=None, rollup_1h=None)
T0_MS = 1_795_000_000_000  # this machine's clock at the first post (storage time)


@pytest.fixture
def pki(tmp_path: Path) -> PkiFiles:
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
async def server(pki: PkiFiles) -> AsyncIterator[UtilityServer]:
    async with UtilityServer.from_pki(pki, clock_offset_s=7.0, post_rate_s=60) as srv:
        yield srv


def _section(pki: PkiFiles) -> CsipClientConfig:
    return CsipClientConfig.model_validate(
        {
            "server": "https://127.0.0.1:1",
            "cert_file": pki.client_cert,
            "key_file": pki.client_key,
            "ca_file": pki.ca_cert,
            "site_meter": {
                "device": "grid_meter",
                "points": {"w": "active_power_w", "v": "voltage_l1_v", "wh": "energy_import_wh"},
            },
            "der_mirrors": [{"device": "pv", "points": {"w": "ac_power_w"}}],
        }
    )


def _samples() -> list[Sample]:
    out = []
    for i in range(12):  # every 10 s from T0 - 60 s to T0 + 50 s
        ts = T0_MS - 60_000 + i * 10_000
        first = i < 6
        out += [
            Sample("s1", "grid_meter", "active_power_w", ts, -2000.0 if first else 1500.0),
            Sample("s1", "grid_meter", "voltage_l1_v", ts, 230.0 + (i % 2)),
            Sample("s1", "grid_meter", "energy_import_wh", ts, 1000.0 + i),
            Sample("s1", "pv", "ac_power_w", ts, 6000.0 + 100 * i),
        ]
    return out


async def test_poster_posts_each_windows_stored_means(
    pki: PkiFiles, server: UtilityServer, tmp_path: Path
) -> None:
    lfdi = lfdi_of_pem(pki.client_cert.read_bytes())
    local = [T0_MS / 1000]
    ctx = client_context(pki.client_cert, pki.client_key, pki.ca_cert)
    async with (
        SqliteStorage(tmp_path / "db.sqlite", FOREVER) as storage,
        httpx.AsyncClient(verify=ctx, timeout=10.0) as http_client,
    ):
        await storage.write(_samples())
        poster = StorageMirrorPoster(
            storage, "s1", specs_from_config(_section(pki)), clock=lambda: local[0]
        )
        http = HttpSession(server.url, http_client)
        now = float(server.now_s())
        first = await poster.post(http, now, lfdi)
        # Half a minute later, on both clocks.
        local[0] += 30
        second = await poster.post(http, now + 30, lfdi)

    assert [(p["mup"], p["readings"], p["http_status"]) for p in first] == [
        ("/mup/1", 3, 201),
        ("/mup/2", 1, 201),
    ]
    assert [p["readings"] for p in second] == [3, 1]
    # The MirrorUsagePoints were created once, with their role flags.
    assert [r.path for r in server.record.requests if r.path == "/mup"] == ["/mup", "/mup"]
    assert {href: m.roleFlags for href, m in server.mirror_usage_points().items()} == {
        "/mup/1": "03",
        "/mup/2": "49",
    }

    site1, pv1, site2, pv2 = server.record.mirrors
    assert (site1.mup, pv1.mup, site2.mup, pv2.mup) == ("/mup/1", "/mup/2", "/mup/1", "/mup/2")

    def by_uom(post: MirrorRecord) -> dict[int | None, tuple[float | None, int | None, int | None]]:
        return {r.uom: (r.value, r.start, r.duration) for r in post.readings}

    start1, start2 = round(now - 60), round(now)
    # First window: [T0 - 60 s, T0) -> the six exporting samples, on server time.
    assert by_uom(site1) == {
        38: (-2000.0, start1, 60),
        29: (pytest.approx(230.5), start1, 60),
        72: (1005.0, start1, 60),  # the register's last value in the window
    }
    assert by_uom(pv1) == {38: (pytest.approx(6250.0), start1, 60)}
    # Second window: [T0, T0 + 30 s) -> three importing samples; it starts where the
    # first ended.
    assert by_uom(site2) == {
        38: (1500.0, start2, 30),
        29: (pytest.approx(230.3), start2, 30),  # 230.33 V sent in tenths of a volt
        72: (1008.0, start2, 30),
    }
    assert by_uom(pv2) == {38: (pytest.approx(6700.0), start2, 30)}
    flows = {(r.uom, r.flow_direction) for r in site1.readings + pv1.readings}
    assert flows == {(38, 1), (29, None), (72, 1), (38, 19)}
