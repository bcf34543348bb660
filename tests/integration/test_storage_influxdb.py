# ruff: noqa: S608, S106 - literal InfluxQL as a Grafana user types it; names of env vars
"""The InfluxDB backend beyond the storage contract: the documented layout as any InfluxDB
client (Grafana) reads it, configuration and credentials, and what happens when the server
is missing, refuses or goes away.

Everything runs against Debian's ``influxd`` started by the tests (``tests/influxdb_server``).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gridpilot.config.models import InfluxDBConfig, RetentionConfig, StorageConfig
from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import (
    Agg,
    SqliteStorage,
    StorageError,
    StorageUnavailable,
    WriteResult,
    open_storage,
)
from gridpilot.storage.base import Event
from gridpilot.storage.influx import InfluxStorage
from tests.conftest import find_free_port
from tests.contract.storage_reference import DAY, HOUR, MINUTE, QUARTER, T0
from tests.influxdb_server import InfluxServer

pytestmark = pytest.mark.integration

P = SeriesKey("site-a", "meter-1", "active_power_w")
V = SeriesKey("site-a", "meter-1", "voltage_l1_v")


def influxql(url: str, database: str, query: str) -> list[dict[str, Any]]:
    """A plain InfluxQL query over HTTP, as Grafana sends it: the series of the answer."""
    response = httpx.post(
        f"{url}/query",
        data={"db": database, "q": query, "epoch": "ms"},
        timeout=10,
        trust_env=False,
    )
    response.raise_for_status()
    (result,) = response.json()["results"]
    assert "error" not in result, result
    series: list[dict[str, Any]] = result.get("series", [])
    return series


async def test_the_documented_layout_is_what_a_plain_influxql_client_reads(
    influxdb: InfluxServer,
) -> None:
    db = influxdb.new_database_name("layout")
    samples = [Sample(P.site, P.device, P.point, T0 + m * MINUTE, float(m)) for m in range(30)]
    samples += [Sample(V.site, V.device, V.point, T0, 230.5)]
    async with InfluxStorage(influxdb.url, db) as storage:
        await storage.write(samples)
        await storage.write_events([Event("site-a", T0, "alarm", "gateway/meter-1", "offline")])
        ours = await storage.history(P, T0, T0 + 30 * MINUTE, every_ms=QUARTER, agg=Agg.MEAN)

    url = influxdb.url
    # Raw samples: measurement "samples", tags site/device/point, float field "value".
    tags = influxql(url, db, 'SHOW TAG KEYS FROM "samples"')
    assert [row[0] for row in tags[0]["values"]] == ["device", "point", "site"]
    fields = influxql(url, db, 'SHOW FIELD KEYS FROM "samples"')
    assert fields[0]["values"] == [["value", "float"]]
    raw = influxql(
        url,
        db,
        'SELECT "value" FROM "samples" WHERE "site" = \'site-a\' AND "device" = \'meter-1\' '
        "AND \"point\" = 'active_power_w' LIMIT 3",
    )
    assert raw[0]["columns"] == ["time", "value"]
    assert raw[0]["values"] == [[T0, 0], [T0 + MINUTE, 1], [T0 + 2 * MINUTE, 2]]

    # The README's Grafana query (raw, $timeFilter and $__interval filled in) and the same
    # from the 15-min rollup give GridPilot's own answer.
    span = f"time >= {T0}ms AND time < {T0 + 30 * MINUTE}ms"
    grafana = influxql(
        url,
        db,
        'SELECT mean("value") FROM "samples" WHERE "site" = \'site-a\' '
        f"AND \"point\" = 'active_power_w' AND {span} "
        'GROUP BY time(15m), "device" fill(none)',
    )
    assert grafana[0]["tags"] == {"device": "meter-1"}
    assert [tuple(row) for row in grafana[0]["values"]] == [tuple(p) for p in ours]
    rollup = influxql(
        url,
        db,
        'SELECT "mean", "min", "max", "sum", "count", "last", "last_ts" FROM "rollup_15m" '
        f"WHERE \"site\" = 'site-a' AND \"point\" = 'active_power_w' AND {span}",
    )
    assert rollup[0]["columns"] == ["time", "mean", "min", "max", "sum", "count", "last", "last_ts"]
    # A bucket is written once it is closed (the series moved past it); the one holding the
    # newest sample is still open, and "latest" says from where raw samples answer.
    assert rollup[0]["values"] == [[T0, 7, 0, 14, 105, 15, 14, T0 + 14 * MINUTE]]
    rolled = influxql(
        url, db, 'SELECT "rolled_ms" FROM "latest" WHERE "point" = \'active_power_w\''
    )
    assert rolled[0]["values"] == [[0, T0 + 29 * MINUTE]]
    async with InfluxStorage(influxdb.url, db) as storage:
        await storage.write([Sample(P.site, P.device, P.point, T0 + 30 * MINUTE, 30.0)])
    rollup = influxql(
        url,
        db,
        'SELECT "mean", "min", "max", "sum", "count", "last", "last_ts" FROM "rollup_15m" '
        f"WHERE \"site\" = 'site-a' AND \"point\" = 'active_power_w' AND {span}",
    )
    assert rollup[0]["values"] == [
        [T0, 7, 0, 14, 105, 15, 14, T0 + 14 * MINUTE],
        [T0 + QUARTER, 22, 15, 29, 330, 15, 29, T0 + 29 * MINUTE],
    ]
    # (rollup_1h has none yet: its bucket is open)
    rollup_fields = dict(
        map(tuple, influxql(url, db, 'SHOW FIELD KEYS FROM "rollup_15m"')[0]["values"])
    )
    assert rollup_fields == {
        "count": "integer",
        "last": "float",
        "last_ts": "integer",
        "max": "float",
        "mean": "float",
        "min": "float",
        "sum": "float",
    }

    # Newest value of each series at time 0 in "latest"; events with their text.
    latest = influxql(
        url, db, 'SELECT "ts_ms", "value" FROM "latest" WHERE "site" = \'site-a\' GROUP BY "point"'
    )
    assert {s["tags"]["point"]: s["values"][0][1:] for s in latest} == {
        "active_power_w": [T0 + 30 * MINUTE, 30],
        "voltage_l1_v": [T0, 230.5],
    }
    events = influxql(
        url, db, 'SELECT "level", "source", "message" FROM "events" WHERE "site" = \'site-a\''
    )
    assert events[0]["values"] == [[T0, "alarm", "gateway/meter-1", "offline"]]


async def test_open_storage_builds_the_influxdb_backend_from_the_site_file(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    db = influxdb.new_database_name("config")
    config = StorageConfig(
        backend="influxdb",
        influxdb=InfluxDBConfig(url=influxdb.url, database=db),
        retention=RetentionConfig(raw=timedelta(days=1)),
    )
    async with open_storage(config, tmp_path) as storage:
        assert isinstance(storage, InfluxStorage)
        assert await storage.write([Sample(P.site, P.device, P.point, T0, 1.5)]) == WriteResult(
            1, 0
        )
    assert influxql(influxdb.url, db, 'SELECT "value" FROM "samples"')[0]["values"] == [[T0, 1.5]]


def test_credentials_are_never_inline_and_never_both_kinds() -> None:
    with pytest.raises(ValidationError, match="not in the url"):
        InfluxDBConfig(url="http://admin:secret@127.0.0.1:8086")
    with pytest.raises(ValidationError, match="either a token"):
        InfluxDBConfig(username="gp", password_env="PW", token_env="TOKEN")
    with pytest.raises(ValidationError, match="needs a username"):
        InfluxDBConfig(password_env="PW")
    with pytest.raises(ValidationError, match="http://host:8086"):
        InfluxDBConfig(url="influx.example:8086")


def test_secret_sources_are_checked_before_connecting(tmp_path: Path) -> None:
    token_file = tmp_path / "influx.token"
    token_file.write_text("abc\n")
    token_file.chmod(0o644)
    config = StorageConfig(
        backend="influxdb", influxdb=InfluxDBConfig(token_file=Path("influx.token"))
    )
    with pytest.raises(StorageError, match="chmod 600"):
        open_storage(config, tmp_path)
    missing = StorageConfig(
        backend="influxdb",
        influxdb=InfluxDBConfig(username="gp", password_env="GRIDPILOT_TEST_UNSET_VARIABLE"),
    )
    assert "GRIDPILOT_TEST_UNSET_VARIABLE" not in os.environ
    with pytest.raises(StorageError, match="GRIDPILOT_TEST_UNSET_VARIABLE"):
        open_storage(missing, tmp_path)


@pytest.fixture
def secured_influxdb(tmp_path: Path) -> Iterator[InfluxServer]:
    """A private influxd with authentication on and one admin user."""
    server = InfluxServer(tmp_path / "influxd-auth", auth=True)
    server.workdir.mkdir()
    server.start()
    response = httpx.post(
        f"{server.url}/query",
        data={"q": "CREATE USER gp WITH PASSWORD 's3cret pw' WITH ALL PRIVILEGES"},
        timeout=10,
        trust_env=False,
    )
    response.raise_for_status()
    try:
        yield server
    finally:
        server.stop()


async def test_username_and_password_file_authenticate_and_a_wrong_one_is_named(
    secured_influxdb: InfluxServer, tmp_path: Path
) -> None:
    secret = tmp_path / "influx.pw"
    secret.write_text("s3cret pw\n")
    secret.chmod(0o600)
    good = InfluxDBConfig(url=secured_influxdb.url, username="gp", password_file=secret)
    async with open_storage(StorageConfig(backend="influxdb", influxdb=good), tmp_path) as s:
        await s.write([Sample(P.site, P.device, P.point, T0, 2.0)])
        assert [p.value for p in await s.history(P, T0, T0 + 1)] == [2.0]

    secret.write_text("wrong\n")
    bad = StorageConfig(backend="influxdb", influxdb=good)
    with pytest.raises(StorageError, match=r"refused the credentials \(HTTP 401") as caught:
        async with open_storage(bad, tmp_path):
            pass
    assert secured_influxdb.url in str(caught.value)
    assert not isinstance(caught.value, StorageUnavailable)  # retrying would not help


async def test_no_server_is_unavailable_naming_the_url_and_what_to_check() -> None:
    url = f"http://127.0.0.1:{find_free_port()}"  # nothing listens there
    storage = InfluxStorage(url, "gridpilot", max_retries=2, timeout=timedelta(seconds=2))
    with pytest.raises(StorageUnavailable, match="failed 3 time") as caught:
        await storage.open()
    assert url in str(caught.value)
    assert "curl -i" in str(caught.value)


async def test_a_missing_database_is_named_with_how_to_create_it(influxdb: InfluxServer) -> None:
    storage = InfluxStorage(influxdb.url, "never_created", create_database=False)
    with pytest.raises(StorageError, match=r"never_created.*create it"):
        await storage.open()


async def test_writes_retry_while_the_server_restarts(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influxd")
    server.workdir.mkdir()
    server.start()
    try:
        # Backoff 0.1, 0.2, 0.4, ... s (jittered): 8 retries wait ~25 s in all.
        async with InfluxStorage(server.url, "restarts", max_retries=8) as storage:
            await storage.write([Sample(P.site, P.device, P.point, T0, 1.0)])
            await asyncio.to_thread(server.stop)
            write = asyncio.create_task(
                storage.write([Sample(P.site, P.device, P.point, T0 + 1, 2.0)])
            )
            await asyncio.sleep(0.5)
            assert not write.done()  # waiting in its retries, not failed
            await asyncio.to_thread(server.start)
            assert await write == WriteResult(1, 0)
            assert [(p.ts_ms, p.value) for p in await storage.history(P, T0, T0 + 2)] == [
                (T0, 1.0),
                (T0 + 1, 2.0),
            ]
    finally:
        server.stop()


async def test_a_value_influxdb_cannot_hold_is_refused_before_anything_is_written(
    influxdb: InfluxServer,
) -> None:
    async with InfluxStorage(influxdb.url, influxdb.new_database_name("range")) as storage:
        too_late = Sample(P.site, P.device, P.point, 10**16, 1.0)  # year 318857
        with pytest.raises(ValueError, match="outside what InfluxDB can store"):
            await storage.write([Sample(P.site, P.device, P.point, T0, 1.0), too_late])
        assert await storage.series() == []


async def test_same_answers_as_sqlite_through_late_samples_retention_and_reopening(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    """What the InfluxDB writer remembers between writes (newest sample and newest bucket
    of each series) must never make it answer differently from SQLite: live data, late
    samples into older buckets, re-sends, retention cutting buckets it remembers, and a
    reopened storage that has to read that state back."""
    rng = random.Random(8)
    retention = RetentionConfig(
        raw=timedelta(hours=6), rollup_1m=timedelta(hours=12), rollup_15m=None, rollup_1h=None
    )
    quiet = SeriesKey("site-b", "old-meter", "p_w")  # stopped reporting long ago
    live = [P, V, SeriesKey("site-b", "pv", "p_w")]
    db = influxdb.new_database_name("differential")
    sqlite_path = tmp_path / "reference.db"
    now = T0
    sent: list[Sample] = []

    async def round_of_writes(influx: InfluxStorage, sqlite: SqliteStorage) -> None:
        nonlocal now
        for _ in range(20):
            batch = []
            for _ in range(rng.choice((1, 20, 200))):
                key = rng.choice(live)
                roll = rng.random()
                if roll < 0.1 and sent:  # a re-send with another value
                    old = rng.choice(sent)
                    batch.append(Sample(old.site, old.device, old.point, old.ts_ms, -1.0))
                    continue
                # late (up to a day back, into buckets written long ago) or live
                late = roll < 0.25
                ts = now - rng.randrange(DAY) if late else now + rng.randrange(MINUTE)
                batch.append(Sample(key.site, key.device, key.point, ts, rng.uniform(-50, 50)))
            sent.extend(batch)
            assert await influx.write(batch) == await sqlite.write(batch)
            now += rng.randrange(5 * MINUTE)

    async def same(influx: InfluxStorage, sqlite: SqliteStorage) -> None:
        lo, hi = T0 - DAY, now + HOUR
        for key in [*live, quiet]:
            assert await influx.history(key, lo, hi) == await sqlite.history(key, lo, hi)
            for every in (MINUTE, QUARTER, HOUR, 2 * HOUR):
                for agg in Agg:
                    got = await influx.history(key, lo, hi, every_ms=every, agg=agg)
                    want = await sqlite.history(key, lo, hi, every_ms=every, agg=agg)
                    assert [p.ts_ms for p in got] == [p.ts_ms for p in want], (key, every, agg)
                    for a, b in zip(got, want, strict=True):
                        assert math.isclose(a.value, b.value, rel_tol=1e-9, abs_tol=1e-9)
        for site in ("site-a", "site-b"):
            assert await influx.latest(site) == await sqlite.latest(site)

    for step in range(3):
        async with (
            InfluxStorage(influxdb.url, db, retention) as influx,
            SqliteStorage(sqlite_path, retention) as sqlite,
        ):
            await round_of_writes(influx, sqlite)
            await same(influx, sqlite)
            if step == 0:
                # The quiet series' newest minute: cut by the retention below while this
                # writer still remembers it as that series' newest bucket.
                quiet_at = now - 8 * HOUR
                quiet_batch = [
                    Sample(quiet.site, quiet.device, quiet.point, quiet_at + i * 1_000, float(i))
                    for i in range(10)
                ]
                assert await influx.write(quiet_batch) == await sqlite.write(quiet_batch)
            if step < 2:
                cut = now + 7 * HOUR
                assert (await influx.apply_retention(cut) > 0) == (
                    await sqlite.apply_retention(cut) > 0
                )
                if step == 0:  # a late sample in the quiet series' newest, now cut, minute
                    late = [Sample(quiet.site, quiet.device, quiet.point, quiet_at + 500, 7.0)]
                    assert await influx.write(late) == await sqlite.write(late)
                await round_of_writes(influx, sqlite)  # also into buckets retention cut
                await same(influx, sqlite)


@pytest.mark.parametrize("failing", ["writing the rollups", "writing the latest"])
@pytest.mark.parametrize("resend_first", [True, False])
async def test_a_write_failing_after_its_samples_still_counts_each_sample_once(
    influxdb: InfluxServer, monkeypatch: pytest.MonkeyPatch, failing: str, resend_first: bool
) -> None:
    """The samples of a write are stored, then the request that writes the buckets they
    close (or ``latest`` after them) fails: the re-sent batch is all duplicates, a later
    batch is all new, and every bucket -- in GridPilot's answers and in the rollup points
    a dashboard reads -- counts each sample once."""

    def seconds(start: int, stop: int) -> list[Sample]:
        return [
            Sample(P.site, P.device, P.point, T0 + i * 1_000, float(i)) for i in range(start, stop)
        ]

    db = influxdb.new_database_name("failed-write")
    async with InfluxStorage(influxdb.url, db) as storage:
        assert await storage.write(seconds(0, 90)) == WriteResult(90, 0)
        write_lines = storage._write_lines

        async def fail_once(lines: list[str], *, what: str) -> None:
            if what.startswith(failing):
                monkeypatch.undo()
                raise StorageUnavailable("injected: the server went away")
            await write_lines(lines, what=what)

        monkeypatch.setattr(storage, "_write_lines", fail_once)
        with pytest.raises(StorageUnavailable, match="injected"):
            await storage.write(seconds(90, 200))  # its samples are stored
        if resend_first:
            assert await storage.write(seconds(90, 200)) == WriteResult(0, 110)
            assert await storage.write(seconds(200, 230)) == WriteResult(30, 0)
        else:
            assert await storage.write(seconds(200, 230)) == WriteResult(30, 0)
            assert await storage.write(seconds(90, 200)) == WriteResult(0, 110)
        (latest,) = await storage.latest(P.site)
        assert (latest.ts_ms, latest.value) == (T0 + 229_000, 229.0)
    async with InfluxStorage(influxdb.url, db) as storage:
        await storage.write(seconds(3_600, 3_601))  # closes every bucket of the first hour
        counts = await storage.history(P, T0, T0 + HOUR, MINUTE, Agg.COUNT)
        assert [p.value for p in counts] == [60.0, 60.0, 60.0, 50.0]
        sums = await storage.history(P, T0, T0 + HOUR, MINUTE, Agg.SUM)
        assert [p.value for p in sums] == [
            float(sum(range(m * 60, min(m * 60 + 60, 230)))) for m in range(4)
        ]
        (hour,) = await storage.history(P, T0, T0 + HOUR, HOUR, Agg.MEAN)
        assert hour.value == sum(range(230)) / 230
    rollup = influxql(
        influxdb.url,
        db,
        f'SELECT "count", "sum", "last_ts" FROM "rollup_1m" WHERE time < {T0 + HOUR}ms',
    )
    assert [row[1:] for row in rollup[0]["values"]] == [
        [60, float(sum(range(60))), T0 + 59_000],
        [60, float(sum(range(60, 120))), T0 + 119_000],
        [60, float(sum(range(120, 180))), T0 + 179_000],
        [50, float(sum(range(180, 230))), T0 + 229_000],
    ]


async def test_retention_writes_the_open_buckets_of_a_series_a_failed_write_left(
    influxdb: InfluxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write's samples are stored, its buckets and ``latest`` are not, and the series
    never writes again: the retention pass that deletes its raw samples first writes every
    bucket they were answering for, and ``latest`` then names the newest sample."""
    retention = RetentionConfig(raw=timedelta(days=1), rollup_1m=None, rollup_15m=None)
    samples = [Sample(P.site, P.device, P.point, T0 + i * 1_000, float(i)) for i in range(200)]
    db = influxdb.new_database_name("idle-after-failure")
    async with InfluxStorage(influxdb.url, db, retention) as storage:
        assert await storage.write(samples[:90]) == WriteResult(90, 0)
        write_lines = storage._write_lines

        async def fail_once(lines: list[str], *, what: str) -> None:
            if what.startswith("writing the rollups"):
                monkeypatch.undo()
                raise StorageUnavailable("injected: the server went away")
            await write_lines(lines, what=what)

        monkeypatch.setattr(storage, "_write_lines", fail_once)
        with pytest.raises(StorageUnavailable, match="injected"):
            await storage.write(samples[90:])
    async with InfluxStorage(influxdb.url, db, retention) as storage:
        assert await storage.apply_retention(T0 + 2 * DAY) == 200  # the raw samples
        assert await storage.history(P, T0, T0 + HOUR) == []
        counts = await storage.history(P, T0, T0 + HOUR, MINUTE, Agg.COUNT)
        assert [p.value for p in counts] == [60.0, 60.0, 60.0, 20.0]
        (hour,) = await storage.history(P, T0, T0 + HOUR, HOUR, Agg.MEAN)
        assert hour.value == sum(range(200)) / 200
        (last,) = await storage.history(P, T0, T0 + HOUR, QUARTER, Agg.LAST)
        assert last.value == 199.0
        (latest,) = await storage.latest(P.site)
        assert (latest.ts_ms, latest.value) == (T0 + 199_000, 199.0)


async def test_a_configured_retention_policy_is_written_and_read(influxdb: InfluxServer) -> None:
    db = influxdb.new_database_name("rp")
    influxql(influxdb.url, db, f'CREATE DATABASE "{db}"')
    influxql(
        influxdb.url,
        db,
        f'CREATE RETENTION POLICY "site_data" ON "{db}" DURATION INF REPLICATION 1',
    )
    async with InfluxStorage(influxdb.url, db, retention_policy="site_data") as storage:
        await storage.write([Sample(P.site, P.device, P.point, T0 + i, float(i)) for i in range(3)])
        assert [p.value for p in await storage.history(P, T0, T0 + 3)] == [0.0, 1.0, 2.0]
        assert (await storage.history(P, T0, T0 + MINUTE, every_ms=MINUTE, agg=Agg.SUM))[
            0
        ].value == 3.0
        assert await storage.series() == [P]
    in_policy = influxql(
        influxdb.url, db, f'SELECT count("value") FROM "{db}"."site_data"."samples"'
    )
    assert in_policy[0]["values"][0][1] == 3
    assert (
        influxql(influxdb.url, db, f'SELECT count("value") FROM "{db}"."autogen"."samples"') == []
    )
