"""The PostgreSQL backend's pure parts: partitions, SQL generation, configuration."""

from __future__ import annotations

import itertools
import random
import struct
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from gridpilot.config.models import PostgresConfig, RetentionConfig
from gridpilot.storage.base import Agg, Level, StorageError
from gridpilot.storage.postgres import (
    DAY_MS,
    PARTITION_SPAN_MS,
    GroupView,
    Target,
    create_partition_sql,
    cutoffs,
    droppable,
    history_sql,
    parse_partition_bound,
    partition_name,
    partition_start,
    partitions_for,
)

MIN, QH, H = 60_000, 900_000, 3_600_000
T = 1_772_409_600_000  # 2026-03-02T00:00:00Z


@pytest.mark.parametrize(
    ("level", "ts", "start", "name"),
    [
        (Level.RAW, T, T, "samples_p20260302"),
        (Level.RAW, T + DAY_MS - 1, T, "samples_p20260302"),
        (Level.RAW, T + DAY_MS, T + DAY_MS, "samples_p20260303"),
        (Level.RAW, -1, -DAY_MS, "samples_p19691231"),  # floors before 1970 too
        # Weekly partitions start on Thursdays: 1970-01-01 was one.
        (Level.M1, T, T - 4 * DAY_MS, "rollup_1m_p20260226"),
        (Level.M15, 0, 0, "rollup_15m_p19700101"),
        (Level.H1, T, 56 * 364 * DAY_MS, "rollup_1h_p20251023"),
    ],
)
def test_partition_of_an_instant(level: Level, ts: int, start: int, name: str) -> None:
    assert partition_start(level, ts) == start
    assert partition_name(level, start) == name


def test_spans_nest_so_a_day_names_every_levels_partition() -> None:
    spans = [PARTITION_SPAN_MS[level] for level in (Level.RAW, Level.M1, Level.M15, Level.H1)]
    assert all(coarse % fine == 0 for fine, coarse in itertools.pairwise(spans))
    # Two days in the same week, a third in the next: 3 raw, 2 weekly, 1 of each coarser.
    days = {T, T + DAY_MS, T + 4 * DAY_MS}
    needed = partitions_for(days)
    assert sorted(start for level, start in needed if level is Level.RAW) == sorted(days)
    assert sorted(start for level, start in needed if level is Level.M1) == [
        T - 4 * DAY_MS,
        T + 3 * DAY_MS,
    ]
    assert len([1 for level, _ in needed if level is Level.M15]) == 1
    assert len([1 for level, _ in needed if level is Level.H1]) == 1


def test_partition_ddl_and_its_bound_read_back() -> None:
    assert create_partition_sql(Level.RAW, T) == (
        f"CREATE TABLE IF NOT EXISTS samples_p20260302 PARTITION OF samples "
        f"FOR VALUES FROM ({T}) TO ({T + DAY_MS})"
    )
    # Rollup rows are updated in place: their pages keep room for HOT updates.
    assert create_partition_sql(Level.M15, 0).endswith("TO (2419200000) WITH (fillfactor = 70)")
    # What pg_get_expr(relpartbound) prints for a bigint range partition.
    assert parse_partition_bound(f"FOR VALUES FROM ('{T}') TO ('{T + DAY_MS}')") == (
        T,
        T + DAY_MS,
    )
    assert parse_partition_bound("FOR VALUES FROM ('-86400000') TO ('0')") == (-DAY_MS, 0)
    with pytest.raises(StorageError, match="unexpected partition bound"):
        parse_partition_bound("DEFAULT")


def test_only_partitions_wholly_behind_the_horizon_are_dropped() -> None:
    parts = [
        ("samples_p20260303", T + DAY_MS, T + 2 * DAY_MS),
        ("samples_p20260302", T, T + DAY_MS),
        ("samples_p20260301", T - DAY_MS, T),
    ]
    assert droppable(parts, T + DAY_MS) == ["samples_p20260301", "samples_p20260302"]
    assert droppable(parts, T + DAY_MS - 1) == ["samples_p20260301"]  # holds the horizon
    assert droppable(parts, T - DAY_MS) == []


def test_history_reads_rollups_whole_and_edges_finer() -> None:
    # From 00:05 to 02:00 at 1 h, from the hourly rollup: the 00:00 hour is partial, so its
    # 15-min blocks and 1-min buckets are merged; 01:00 is read as it is.
    queries = history_sql(
        Level.H1, start_ms=T + 5 * MIN, end_ms=T + 2 * H, every_ms=H, agg=Agg.MEAN, horizons={}
    )
    assert len(queries) == 2
    grouped, direct = queries
    assert "FROM rollup_1m" in grouped[0]
    assert "FROM rollup_15m" in grouped[0]
    assert "UNION ALL" in grouped[0]
    assert "GROUP BY bucket" in grouped[0]
    # Parameters are bound; a literal % is doubled so psycopg does not take it for one.
    assert "(t %% %(every)s)" in grouped[0]
    assert "(t % " not in grouped[0]
    assert grouped[1]["every"] == H
    assert direct[0].startswith("SELECT bucket_ms, sum / count::double precision FROM rollup_1h")
    assert direct[1] == {"lo2": T + H, "hi2": T + 2 * H}


def test_history_last_takes_the_newest_partial() -> None:
    ((text, _),) = history_sql(
        Level.RAW, start_ms=T, end_ms=T + H, every_ms=7 * MIN, agg=Agg.LAST, horizons={}
    )
    assert "DISTINCT ON (bucket) bucket, lv" in text
    assert text.endswith("ORDER BY bucket, lts DESC")


def test_history_pieces_stop_at_their_levels_horizon() -> None:
    # Raw kept from 00:30 on: a raw read of [00:00, 01:00) at 7 min starts there.
    ((_, params),) = history_sql(
        Level.RAW,
        start_ms=T,
        end_ms=T + H,
        every_ms=7 * MIN,
        agg=Agg.SUM,
        horizons={Level.RAW: T + 30 * MIN},
    )
    assert params["lo0"] == T + 30 * MIN
    # Everything behind the horizon: nothing to read at all.
    assert (
        history_sql(
            Level.RAW,
            start_ms=T,
            end_ms=T + H,
            every_ms=7 * MIN,
            agg=Agg.SUM,
            horizons={Level.RAW: T + H},
        )
        == []
    )


def test_cutoffs_skip_levels_kept_forever() -> None:
    retention = RetentionConfig(
        raw=timedelta(hours=2), rollup_1m=None, rollup_15m=timedelta(days=1), rollup_1h=None
    )
    assert cutoffs(retention, T) == {Level.RAW: T - 2 * H, Level.M15: T - DAY_MS}


def test_password_comes_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    config = PostgresConfig(host="db.example", password_env="GP_PG_PASSWORD", user="gp")  # noqa: S106
    target = Target.from_config(config, tmp_path, environ={"GP_PG_PASSWORD": "s3cret"})
    assert "s3cret" not in repr(target)
    assert target.describe == "PostgreSQL at db.example:5432 (database gridpilot, schema gridpilot)"
    with pytest.raises(StorageError, match=r"GP_PG_PASSWORD.*not set"):
        Target.from_config(config, tmp_path, environ={})

    secret = tmp_path / "pg.pass"
    secret.write_text("s3cret\n", encoding="utf-8")
    secret.chmod(0o644)
    from_file = PostgresConfig(password_file=Path("pg.pass"))  # relative to the site file
    with pytest.raises(StorageError, match=r"readable by others.*chmod 600"):
        Target.from_config(from_file, tmp_path)
    secret.chmod(0o600)
    Target.from_config(from_file, tmp_path)
    with pytest.raises(StorageError, match="cannot read"):
        Target.from_config(PostgresConfig(password_file=Path("missing")), tmp_path)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://gp:s3cret@db.example/gridpilot",
        "host=db.example password=s3cret",
        "postgresql://db.example/gridpilot?password=s3cret",
    ],
)
def test_a_password_in_the_dsn_is_refused(dsn: str) -> None:
    with pytest.raises(ValidationError, match="password_env or password_file"):
        PostgresConfig(dsn=dsn)


def test_dsn_names_the_server_in_messages(tmp_path: Path) -> None:
    config = PostgresConfig(dsn="host=db.example port=6432 dbname=ems", schema_name="plant-1")
    target = Target.from_config(config, tmp_path)
    assert target.describe == "PostgreSQL at db.example:6432 (database ems, schema plant-1)"


def test_what_the_dsn_sets_is_kept(tmp_path: Path) -> None:
    config = PostgresConfig(dsn="host=db.example sslmode=verify-full connect_timeout=3")
    params = Target.from_config(config, tmp_path).params
    assert "sslmode" not in params  # libpq takes verify-full from the DSN
    assert "connect_timeout" not in params
    assert params["keepalives"] == 1  # what the DSN leaves out is still bounded
    assert Target.from_config(PostgresConfig(), tmp_path).params["sslmode"] == "prefer"


def reference_partials(
    samples: list[tuple[int, int, float]], size_ms: int
) -> dict[tuple[int, int], tuple[float, float, float, int, int, float]]:
    """Partials of ``size_ms`` buckets, one sample at a time, as the staged path's SQL
    folds them."""
    out: dict[tuple[int, int], tuple[float, float, float, int, int, float]] = {}
    for sid, ts, value in samples:
        at = (sid, ts - ts % size_ms)
        have = out.get(at)
        if have is None:
            out[at] = (value, value, value, 1, ts, value)
        else:
            mn, mx, sm, ct, lts, lv = have
            newer = ts > lts
            out[at] = (
                min(mn, value), max(mx, value), sm + value, ct + 1,
                ts if newer else lts, value if newer else lv,
            )  # fmt: skip
    return out


def decode_copy(
    data: bytes,
) -> dict[tuple[int, int, int], tuple[float, float, float, int, int, float]]:
    """Rows of binary COPY data of partials, read back by the format's own rules: (level,
    series, bucket) -> (min, max, sum, count, newest ts, its value)."""
    signature, trailer = b"PGCOPY\n\xff\r\n\x00", b"\xff\xff"
    assert data.startswith(signature)
    assert data.endswith(trailer)
    body, out = memoryview(data)[len(signature) + 8 : -len(trailer)], {}
    formats = "iiqdddqqd"  # int4 x2, int8, float8 x3, int8 x2, float8
    while body:
        (fields,) = struct.unpack_from(">h", body)
        assert fields == len(formats)
        row, at = [], 2
        for kind in formats:
            (size,) = struct.unpack_from(">i", body, at)
            (value,) = struct.unpack_from(f">{kind}", body, at + 4)
            assert size == struct.calcsize(kind)
            row.append(value)
            at += 4 + size
        out[row[0], row[1], row[2]] = tuple(row[3:])
        body = body[at:]
    return out


def test_group_view_partials_match_a_sample_by_sample_fold() -> None:
    rng = random.Random(3)
    # Times on both sides of the epoch (buckets floor), shuffled, in two batches.
    stamps = rng.sample(range(-3 * H, 3 * H, 1_000), 4_000)
    samples = [(rng.choice([3, 7, 11]), ts, rng.uniform(-1e3, 1e3)) for ts in stamps]
    first, second = samples[:1_500], samples[1_500:]
    view = GroupView(
        [[s for s, _, _ in first], [s for s, _, _ in second]],
        [[t for _, t, _ in first], [t for _, t, _ in second]],
        [[v for _, _, v in first], [v for _, _, v in second]],
    )
    assert view.distinct
    rows = decode_copy(view.partials())
    assert {level for level, _, _ in rows} == {MIN, QH, H}
    for level in (Level.M1, Level.M15, Level.H1):
        want = reference_partials(samples, level.bucket_ms)
        got = {(s, b): row for (ms, s, b), row in rows.items() if ms == level.bucket_ms}
        assert got.keys() == want.keys()
        for at, (mn, mx, sm, ct, lts, lv) in want.items():
            assert got[at][:2] == (mn, mx)
            assert got[at][2] == pytest.approx(sm)
            assert got[at][3:] == (ct, lts, lv)
    newest = {sid: max(t for s, t, _ in samples if s == sid) for sid in (3, 7, 11)}
    assert view.newest() == newest


def test_group_view_sees_an_identity_twice_across_batches() -> None:
    view = GroupView([[1, 2], [2]], [[1_000, 1_000], [1_000]], [[1.0, 2.0], [3.0]])
    assert not view.distinct
    assert GroupView([[1, 2], [2]], [[1_000, 1_000], [2_000]], [[1.0, 2.0], [3.0]]).distinct


def test_group_view_is_new_only_past_each_series_newest() -> None:
    view = GroupView([[1, 1, 2]], [[5_000, 6_000, 9_000]], [[1.0, 2.0, 3.0]])
    assert view.all_newer({})  # nothing stored
    assert view.all_newer({1: 4_999, 2: 8_999, 5: 10**9})  # other series do not matter
    assert not view.all_newer({1: 5_000})  # the oldest sample of series 1 is not newer
    assert not view.all_newer({2: 9_000})
