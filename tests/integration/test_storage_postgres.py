"""The PostgreSQL backend against the machine's PostgreSQL: what the contract suite does not
see (partitions, several writers, a lost connection, refused schemas) and ingest through a
real Mosquitto into it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gridpilot.bus.client import BrokerAddress
from gridpilot.bus.codec import encode_telemetry
from gridpilot.config.models import PostgresConfig, RetentionConfig, StorageConfig
from gridpilot.ingest.service import IngestService
from gridpilot.model import Sample, SeriesKey, Topic
from gridpilot.storage import Agg, StorageError, StorageUnavailable, WriteResult, open_storage
from gridpilot.storage.postgres import DAY_MS, PostgresStorage, Target
from tests import postgres_server
from tests.integration.test_ingest_service import clock, eventually, publisher, site_config

pytestmark = pytest.mark.integration

T0 = 1_772_409_600_000  # 2026-03-02T00:00:00Z
HOUR = 3_600_000
KEY = SeriesKey("site-a", "meter-1", "active_power_w")


@pytest.fixture
def schema() -> str:
    return postgres_server.fresh_schema()


def admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(postgres_server.dsn(), autocommit=True)


def partitions(schema: str, table: str) -> list[str]:
    with admin() as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = format('%%I.%%I', %s::text, %s::text)::regclass ORDER BY 1",
            (schema, table),
        ).fetchall()
    return [str(name) for (name,) in rows]


def hourly(key: SeriesKey, start: int, hours: int, value: float = 1.0) -> list[Sample]:
    return [Sample(key.site, key.device, key.point, start + h * HOUR, value) for h in range(hours)]


async def test_partitions_are_made_on_demand_and_dropped_by_retention(schema: str) -> None:
    retention = RetentionConfig(raw=timedelta(days=1), rollup_1m=None, rollup_15m=None)
    async with postgres_server.storage(schema, retention) as storage:
        await storage.write(hourly(KEY, T0, 72))  # three UTC days
        assert partitions(schema, "samples") == [
            "samples_p20260302",
            "samples_p20260303",
            "samples_p20260304",
        ]
        assert partitions(schema, "rollup_1m") == ["rollup_1m_p20260226"]
        # 1 day kept at 04T12:00: the 2nd and 3rd are behind the cutoff (03T12:00) only in
        # part or not at all, the 2nd (wholly before) goes with its rows.
        now = T0 + 2 * DAY_MS + 12 * HOUR
        assert await storage.apply_retention(now) == 36  # 02T00:00 .. 03T11:00
        assert partitions(schema, "samples") == ["samples_p20260303", "samples_p20260304"]
        raw = await storage.history(KEY, 0, 2**62)
        assert raw[0].ts_ms == now - DAY_MS
        assert len(raw) == 36
        # The hourly rollup keeps everything; late data re-creates a dropped partition.
        (total,) = await storage.history(KEY, T0, T0 + 3 * DAY_MS, 3 * DAY_MS, Agg.COUNT)
        assert total.value == 72.0
        assert await storage.write(hourly(KEY, T0 + 30 * 60_000, 1)) == WriteResult(1, 0)
        assert "samples_p20260302" in partitions(schema, "samples")


async def test_two_writers_store_each_sample_once(schema: str) -> None:
    """Two storages on one schema (as two ingest processes): overlapping batches at once."""
    keys = [SeriesKey("plant", f"dev{d}", "p_w") for d in range(20)]
    batch = [
        Sample(k.site, k.device, k.point, T0 + i * 1_000, float(i))
        for k in keys
        for i in range(600)
    ]
    async with (
        postgres_server.storage(schema) as one,
        postgres_server.storage(schema) as two,
    ):
        results = await asyncio.gather(
            one.write(batch[:8_000]),
            two.write(batch[4_000:]),
            one.write(batch[2_000:10_000]),
            two.write(batch),
        )
        assert sum(r.written for r in results) == len(batch)
        assert sum(r.written + r.duplicates for r in results) == 8_000 + 8_000 + 8_000 + 12_000
        for key in (keys[0], keys[-1]):
            (count,) = await one.history(key, T0, T0 + HOUR, HOUR, Agg.COUNT)
            (total,) = await two.history(key, T0, T0 + HOUR, HOUR, Agg.SUM)
            assert count.value == 600.0
            assert total.value == float(sum(range(600)))
        assert len(await two.series("plant")) == 20


async def test_live_writes_skip_the_stage_until_another_writer_was_first(schema: str) -> None:
    """A writer copies samples newer than what it knows is stored straight into the table;
    when another process stored some of them meanwhile, the key refuses that copy and the
    batch goes through the stage: each sample counted once, in the rows and the rollups."""
    keys = [SeriesKey("plant", f"dev{d}", "p_w") for d in range(5)]

    def minute(start_s: int, stop_s: int) -> list[Sample]:
        return [
            Sample(k.site, k.device, k.point, T0 + i * 1_000, float(i))
            for i in range(start_s, stop_s)
            for k in keys
        ]

    async with (
        postgres_server.storage(schema) as one,
        postgres_server.storage(schema) as two,
    ):
        assert await one.write(minute(0, 30)) == WriteResult(150, 0)
        assert await one.write(minute(30, 40)) == WriteResult(50, 0)
        assert (one.direct_groups, one.staged_groups) == (2, 0)
        # `two` has not seen one's writes: it takes 20..60 for new, the key says otherwise.
        assert await two.write(minute(20, 60)) == WriteResult(100, 100)
        assert (two.direct_groups, two.staged_groups) == (0, 1)
        # Nor has `one` seen two's: its copy of 50..69 is refused too, then it knows.
        assert await one.write(minute(50, 70)) == WriteResult(50, 50)
        assert await one.write(minute(70, 80)) == WriteResult(50, 0)
        assert (one.direct_groups, one.staged_groups) == (3, 1)
        for key in keys:
            rows = await two.history(key, T0, T0 + 2 * 60_000, 60_000, Agg.COUNT)
            assert [p.value for p in rows] == [60.0, 20.0]
            (total,) = await one.history(key, T0, T0 + HOUR, HOUR, Agg.SUM)
            assert total.value == float(sum(range(80)))
            (last,) = await one.history(key, T0, T0 + HOUR, 15 * 60_000, Agg.LAST)
            assert last.value == 79.0
        (latest, *_) = await two.latest("plant")
        assert (latest.ts_ms, latest.value) == (T0 + 79_000, 79.0)


async def test_a_lost_connection_is_reopened(schema: str) -> None:
    async with postgres_server.storage(schema) as storage:
        await storage.write(hourly(KEY, T0, 2))
        # The server ends every session of this schema's storage (an administrator, a
        # failover): the next calls reconnect and go on, idempotently.
        with admin() as conn:
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"gridpilot:{schema}",),
            ).fetchone()
        assert ended is not None
        assert ended[0] >= 3  # the writer and two readers at least
        assert await storage.write(hourly(KEY, T0, 4)) == WriteResult(2, 2)
        assert len(await storage.history(KEY, T0, T0 + 4 * HOUR)) == 4


async def test_an_unreachable_server_is_named_with_what_to_do(free_port: int) -> None:
    port = free_port  # free a moment ago: nothing listens there
    config = PostgresConfig(host="127.0.0.1", port=port, connect_timeout=timedelta(seconds=2))
    storage = PostgresStorage(Target.from_config(config, Path.cwd()))
    with pytest.raises(StorageUnavailable) as caught:
        await storage.open()
    message = str(caught.value)
    assert f"PostgreSQL at 127.0.0.1:{port} (database gridpilot" in message
    assert "check that the server is running" in message


async def test_a_schema_of_another_program_or_version_is_refused(schema: str) -> None:
    with admin() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.orders (id int)").format(sql.Identifier(schema)))
    with pytest.raises(StorageError, match="GridPilot did not create"):
        await postgres_server.storage(schema).open()

    other = postgres_server.fresh_schema()
    async with postgres_server.storage(other):
        pass
    with admin() as conn:
        conn.execute(
            sql.SQL("UPDATE {}.gridpilot_meta SET value = '99'").format(sql.Identifier(other))
        )
    with pytest.raises(StorageError, match="schema version 99, this GridPilot knows 1"):
        await postgres_server.storage(other).open()


async def test_ingest_through_mosquitto_into_postgresql(
    mosquitto: BrokerAddress, schema: str, tmp_path: Path
) -> None:
    """The site file selects the backend; redelivered messages are stored once."""
    site = f"site-{uuid.uuid4().hex[:8]}"
    storage_config = StorageConfig.model_validate(
        {
            "backend": "postgresql",
            "flush_interval": "PT0.05S",
            "postgresql": {"dsn": postgres_server.dsn(), "schema_name": schema},
        }
    )
    config = site_config(site).model_copy(update={"storage": storage_config})
    now = clock()
    async with (
        open_storage(config.storage, tmp_path) as storage,
        IngestService(config, mosquitto, storage, clock=clock) as ingest,
        publisher(mosquitto) as pub,
    ):
        topic = str(Topic.telemetry(site, "meter1"))
        for i in range(200):
            payload = encode_telemetry(now - 200_000 + i * 1000, {"active_power_w": float(i)})
            await pub.publish(topic, payload)
            if i % 4 == 0:  # an at-least-once redelivery
                await pub.publish(topic, payload)
        await eventually(lambda: ingest.stats.samples_written + ingest.stats.duplicates == 250)
        assert ingest.stats.samples_written == 200
        assert ingest.stats.duplicates == 50
        series = SeriesKey(site, "meter1", "active_power_w")
        raw = await storage.history(series, now - HOUR, now + HOUR)
        assert [p.value for p in raw] == [float(i) for i in range(200)]
        (count,) = await storage.history(series, now - 200_000, now, 200_000, Agg.COUNT)
        assert count.value == 200.0
