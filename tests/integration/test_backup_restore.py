"""``gridpilot backup`` / ``restore`` as an operator runs them, against a live system.

A real ``gridpilot run ingest`` (its own process) stores telemetry that the test publishes
through the session's Mosquitto while the backup runs; the archive is then restored into a
fresh directory and its tables compared, row counts and checksums, with the live database.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from gridpilot.bus.client import BrokerAddress, BusClient
from gridpilot.bus.codec import encode_telemetry
from gridpilot.config import load_config
from gridpilot.model import Sample, Topic
from gridpilot.ops.backup import ArchiveRefusedError, RestoreBlockedError, restore_backup
from gridpilot.storage import open_storage

pytestmark = pytest.mark.integration

POINTS = [f"p{i}_power_w" for i in range(10)]
MAX_MESSAGES = 50_000  # per device; the stream stops long before (bounded all the same)
TABLES = {
    # table -> its key, for a stable order
    "series": "id",
    "samples": "series_id, ts_ms",
    "rollup_1m": "series_id, bucket_ms",
    "rollup_15m": "series_id, bucket_ms",
    "rollup_1h": "series_id, bucket_ms",
    "latest": "series_id",
    "events": "site, ts_ms, source, message",
}


def write_site(directory: Path, site: str, broker: BrokerAddress) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "site": {"id": site},
        "broker": {"url": f"mqtt://{broker.host}:{broker.port}"},
        "storage": {"path": "data/site.db", "batch_size": 2000, "flush_interval": 0.05},
        "api": {"tokens_file": "secrets/tokens.json", "audit_file": "logs/audit.jsonl"},
        "devices": [
            {
                "id": f"meter{d}",
                "protocol": "mqtt",
                "points": [{"point": p, "valid_range": [-1e9, 1e9]} for p in POINTS],
            }
            for d in range(3)
        ],
    }
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # What a running site has besides the database: tokens and an audit log.
    (directory / "secrets").mkdir(mode=0o700)
    tokens = directory / "secrets" / "tokens.json"
    tokens.write_text('{"version": 1, "tokens": []}\n')
    tokens.chmod(0o600)
    (directory / "logs").mkdir(mode=0o700)
    (directory / "logs" / "audit.jsonl").write_text('{"who": "test", "what": "x"}\n')
    return path


def gridpilot(*args: str) -> list[str]:
    return [sys.executable, "-m", "gridpilot", *args]


def table_digests(db: Path) -> dict[str, tuple[int, str]]:
    """Row count and SHA-256 over every row, in key order, of each table."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = {}
        for table, key in TABLES.items():
            digest = hashlib.sha256()
            count = 0
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY {key}"):  # noqa: S608
                digest.update(repr(row).encode())
                count += 1
            out[table] = (count, digest.hexdigest())
        return out
    finally:
        conn.close()


def samples_of(db: Path) -> dict[tuple[str, str], dict[int, float]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[tuple[str, str], dict[int, float]] = {}
        for device, point, ts, value in conn.execute(
            "SELECT device, point, ts_ms, value FROM samples JOIN series ON id = series_id"
        ):
            out.setdefault((device, point), {})[ts] = value
        return out
    finally:
        conn.close()


def count_samples(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0
    finally:
        conn.close()


def rollups_match_samples(db: Path) -> None:
    """Every 1-minute rollup equals the aggregate of the raw samples it covers: a copy
    cut in the middle of a write transaction would break this."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        recomputed = conn.execute(
            """SELECT series_id, ts_ms - ts_ms % 60000, min(value), max(value), sum(value),
                      count(*)
               FROM samples GROUP BY 1, 2 ORDER BY 1, 2"""
        ).fetchall()
        stored = conn.execute(
            "SELECT series_id, bucket_ms, min, max, sum, count FROM rollup_1m ORDER BY 1, 2"
        ).fetchall()
    finally:
        conn.close()
    assert stored == recomputed


@asynccontextmanager
async def running_ingest(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *gridpilot("run", "ingest", str(config)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            line = await process.stderr.readline()
        assert b"running" in line, line
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await process.wait()


async def publish_stream(
    broker: BrokerAddress, site: str, start_ms: int, stop: asyncio.Event, sent: list[int]
) -> None:
    """A steady stream (about 10,000 samples/s) until ``stop``: one message per device,
    1 s apart in time, every 3 ms; ``sent[0]`` counts the samples published."""
    async with BusClient(broker, f"load-{uuid.uuid4().hex[:8]}") as bus:
        await bus.wait_connected(5)
        for i in range(MAX_MESSAGES):
            if stop.is_set():
                return
            ts = start_ms + i * 1000
            for d in range(3):
                values = {p: float(i * 10 + k + d) for k, p in enumerate(POINTS)}
                await bus.publish(
                    str(Topic.telemetry(site, f"meter{d}")), encode_telemetry(ts, values, seq=i)
                )
            sent[0] = (i + 1) * 3 * len(POINTS)
            await asyncio.sleep(0.003)


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *gridpilot(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def wait_for(condition: object, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    assert callable(condition)
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "backup.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32).hex().encode() + b"\n")
    os.close(fd)
    return path


@pytest.mark.timeout(300)
async def test_a_backup_under_ingest_load_restores_to_an_identical_data_set(
    tmp_path: Path, mosquitto: BrokerAddress, key_file: Path
) -> None:
    site = f"bk-{uuid.uuid4().hex[:6]}"
    config = write_site(tmp_path / "live", site, mosquitto)
    db = tmp_path / "live" / "data" / "site.db"
    start_ms = int(time.time() * 1000) - MAX_MESSAGES * 1000
    sent = [0]
    stop = asyncio.Event()
    async with running_ingest(config) as ingest:
        load = asyncio.create_task(publish_stream(mosquitto, site, start_ms, stop, sent))
        await wait_for(lambda: count_samples(db) >= 5000, 60, "ingest to store samples")
        code, out, err = await run_cli(
            "backup", str(config), str(tmp_path / "under-load.tar"), "--key-file", str(key_file)
        )
        assert code == 0, err
        stored_at_backup_end = count_samples(db)
        load_was_running = not load.done()

        # While ingest holds the database, a restore over it is refused, naming ingest.
        code, _out, err = await run_cli(
            "restore", str(config), str(tmp_path / "under-load.tar"), "--key-file", str(key_file)
        )
        assert code != 0
        assert "in use by" in err
        assert str(ingest.pid) in err

        stop.set()
        await load
        total = sent[0]
        await wait_for(lambda: count_samples(db) == total, 120, "every sample to be stored")
    assert load_was_running, "the load ended before the backup: raise MAX_MESSAGES"
    assert (tmp_path / "under-load.tar").stat().st_mode & 0o777 == 0o600
    assert "encrypted backup" in out

    # Restore into a fresh directory: a new machine.
    fresh = tmp_path / "fresh" / "site.yaml"
    code, out, err = await run_cli(
        "restore", str(fresh), str(tmp_path / "under-load.tar"), "--key-file", str(key_file)
    )
    assert code == 0, err
    restored_db = tmp_path / "fresh" / "data" / "site.db"
    assert fresh.read_bytes() == config.read_bytes()
    assert (tmp_path / "fresh" / "secrets" / "tokens.json").read_bytes() == (
        tmp_path / "live" / "secrets" / "tokens.json"
    ).read_bytes()
    assert (tmp_path / "fresh" / "logs" / "audit.jsonl").read_bytes() == (
        tmp_path / "live" / "logs" / "audit.jsonl"
    ).read_bytes()
    for restored in (fresh, restored_db, tmp_path / "fresh" / "secrets" / "tokens.json"):
        assert restored.stat().st_mode & 0o077 == 0

    # The copy is the database as of one commit taken while samples kept arriving: some,
    # not all, of the stream; for every series exactly the samples up to its newest one
    # (nothing missing inside, nothing torn); rollups agree with the raw samples.
    live = samples_of(db)
    snapshot = samples_of(restored_db)
    snapshot_count = sum(len(v) for v in snapshot.values())
    assert 5000 <= snapshot_count <= stored_at_backup_end < total
    for key, values in snapshot.items():
        newest = max(values)
        assert values == {ts: v for ts, v in live[key].items() if ts <= newest}, key
    rollups_match_samples(restored_db)

    # Quiescent now: a second backup restores to exactly the live tables.
    code, _out, err = await run_cli("backup", str(config), str(tmp_path / "quiet.tar"))
    assert code == 0, err
    again = tmp_path / "again" / "site.yaml"
    code, _out, err = await run_cli("restore", str(again), str(tmp_path / "quiet.tar"))
    assert code == 0, err
    live_digests = table_digests(db)
    assert live_digests["samples"][0] == total
    assert table_digests(tmp_path / "again" / "data" / "site.db") == live_digests


async def make_backup(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """A small site with a database, backed up; returns (site file, archive)."""
    config = write_site(tmp_path / "site", "small", BrokerAddress("127.0.0.1", 1883))
    cfg = load_config(config)
    async with open_storage(cfg.storage, config.parent) as storage:
        await storage.write(
            [
                Sample("small", "meter0", "p0_power_w", 1_700_000_000_000 + i, float(i))
                for i in range(3000)
            ]
        )
    archive = tmp_path / "small.tar"
    code, _out, err = await run_cli("backup", str(config), str(archive), *extra)
    assert code == 0, err
    return config, archive


async def test_a_tampered_backup_is_refused_wherever_the_byte_is(tmp_path: Path) -> None:
    _config, archive = await make_backup(tmp_path)
    original = archive.read_bytes()
    target = tmp_path / "target" / "site.yaml"
    # Headers, the manifest, its digest, the site file, the database's pages, the padding
    # after a member and the end-of-archive zeros: a flipped bit anywhere is refused.
    positions = sorted(
        {0, 100, 148, 155, 600, 1030, 1600, 2100, len(original) - 1}
        | set(range(0, len(original), len(original) // 40))
    )
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        archive.write_bytes(bytes(damaged))
        with pytest.raises(ArchiveRefusedError):
            restore_backup(target, archive)
        assert not target.exists(), f"byte {position}: something was restored"
    # The CLI says so and what was (not) done.
    damaged = bytearray(original)
    damaged[len(original) // 2] ^= 0x80
    archive.write_bytes(bytes(damaged))
    code, _out, err = await run_cli("restore", str(target), str(archive))
    assert code != 0
    assert "restore refused" in err
    assert "nothing was replaced" in err
    # Cut short (an interrupted copy) is refused too.
    archive.write_bytes(original[: len(original) // 3])
    with pytest.raises(ArchiveRefusedError, match="cut short"):
        restore_backup(target, archive)
    archive.write_bytes(original)
    assert restore_backup(target, archive).replaced


async def test_an_encrypted_backup_needs_its_own_key(tmp_path: Path, key_file: Path) -> None:
    config, archive = await make_backup(tmp_path, "--key-file", str(key_file))
    assert b"site:" not in archive.read_bytes()  # nothing readable without the key
    target = tmp_path / "target" / "site.yaml"

    code, _out, err = await run_cli("restore", str(target), str(archive))
    assert code != 0
    assert "encrypted" in err
    assert "--key-file" in err

    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32).hex().encode())
    other.chmod(0o600)
    code, _out, err = await run_cli("restore", str(target), str(archive), "--key-file", str(other))
    assert code != 0
    assert "not the one this backup was encrypted with" in err
    assert not target.exists()

    # A flipped byte in the sealed stream fails authentication.
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bytes(data))
    code, _out, err = await run_cli(
        "restore", str(target), str(tampered), "--key-file", str(key_file)
    )
    assert code != 0
    assert "fails authentication" in err
    assert not target.exists()

    code, _out, err = await run_cli(
        "restore", str(target), str(archive), "--key-file", str(key_file)
    )
    assert code == 0, err
    assert target.read_bytes() == config.read_bytes()


async def test_a_key_file_others_may_read_is_refused(tmp_path: Path, key_file: Path) -> None:
    config = write_site(tmp_path / "site", "perm", BrokerAddress("127.0.0.1", 1883))
    key_file.chmod(0o640)
    code, _out, err = await run_cli(
        "backup", str(config), str(tmp_path / "b.tar"), "--key-file", str(key_file)
    )
    assert code != 0
    assert "mode 0640" in err
    assert f"chmod 600 {key_file}" in err
    assert not (tmp_path / "b.tar").exists()

    short = tmp_path / "short.key"
    short.write_bytes(b"too-short")
    short.chmod(0o600)
    code, _out, err = await run_cli(
        "backup", str(config), str(tmp_path / "b.tar"), "--key-file", str(short)
    )
    assert code != 0
    assert "at least 32" in err


async def test_restore_check_replaces_nothing_and_force_overwrites_a_held_database(
    tmp_path: Path,
) -> None:
    config, archive = await make_backup(tmp_path)
    db = config.parent / "data" / "site.db"
    before = table_digests(db)
    # The site moves on after the backup: 500 more samples.
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM samples WHERE ts_ms >= 1700000002500")
    conn.commit()
    conn.close()
    changed = table_digests(db)
    assert changed != before

    result = restore_backup(config, archive, check_only=True)
    assert result.checked_only
    assert result.replaced[0][0] == "database.sqlite"
    assert table_digests(db) == changed

    # Another process holds the database open (as a running service would).
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM samples').fetchone(); print('open', flush=True); "
        "time.sleep(60)",
        str(db),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(10):
            assert await holder.stdout.readline() == b"open\n"
        with pytest.raises(RestoreBlockedError) as refused:
            restore_backup(config, archive)
        assert [h.pid for h in refused.value.holders] == [holder.pid]
        assert table_digests(db) == changed

        result = restore_backup(config, archive, force=True)
        assert [h.pid for h in result.forced_over] == [holder.pid]
        assert table_digests(db) == before
    finally:
        holder.kill()
        await holder.wait()


@pytest.mark.parametrize(
    ("storage", "tool"),
    [
        ({"backend": "postgresql", "postgresql": {"host": "db.plant", "user": "ems"}},
         "pg_dump -Fc --schema=gridpilot --host=db.plant --port=5432 --dbname=gridpilot "
         "--username=ems -f gridpilot.pgdump"),
        ({"backend": "influxdb", "influxdb": {"url": "http://tsdb.plant:8086"}},
         "influxd backup -portable -db gridpilot DIR"),
    ],
)  # fmt: skip
async def test_with_an_external_database_the_backup_names_its_tool(
    tmp_path: Path, storage: dict[str, object], tool: str
) -> None:
    config = tmp_path / "site" / "site.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"site": {"id": "ext"}, "storage": storage}))
    code, out, err = await run_cli("backup", str(config), str(tmp_path / "ext.tar"))
    assert code == 0, err
    assert tool in err
    assert "not in this archive" in err
    assert "site.yaml" in out
    assert "database.sqlite" not in out
    result = restore_backup(tmp_path / "new" / "site.yaml", tmp_path / "ext.tar")
    assert [name for name, _ in result.replaced] == ["site.yaml"]
    assert result.advice is not None
    assert tool in result.advice
