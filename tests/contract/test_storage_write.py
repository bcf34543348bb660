"""Contract: writing is idempotent, the first value wins, bad values are refused."""

from __future__ import annotations

import asyncio
import math

import pytest

from gridpilot.model import Sample, SeriesKey
from gridpilot.storage import Agg, ManagedStorage, StorageError, WriteResult
from tests.contract.storage_reference import HOUR, MINUTE, T0

KEY = SeriesKey("site-a", "meter-1", "active_power_w")


def samples(values: dict[int, float], key: SeriesKey = KEY) -> list[Sample]:
    return [Sample(key.site, key.device, key.point, ts, v) for ts, v in values.items()]


async def raw(storage: ManagedStorage, key: SeriesKey = KEY) -> list[tuple[int, float]]:
    return [(p.ts_ms, p.value) for p in await storage.history(key, 0, 2**62)]


async def test_written_samples_read_back_exactly_in_time_order(storage: ManagedStorage) -> None:
    values = {
        T0 + 3_000: 41_250.5,
        T0: -0.1,
        T0 + 1_000: 1e-300,
        T0 + 2_000: 1.7976931348623157e308,
    }
    result = await storage.write(samples(values))
    assert result == WriteResult(written=4, duplicates=0)
    assert await raw(storage) == sorted(values.items())


async def test_same_batch_twice_is_stored_once(storage: ManagedStorage) -> None:
    batch = samples({T0 + i * 1_000: float(i) for i in range(100)})
    assert await storage.write(batch) == WriteResult(100, 0)
    assert await storage.write(batch) == WriteResult(0, 100)
    assert len(await raw(storage)) == 100
    counts = await storage.history(KEY, T0, T0 + HOUR, every_ms=HOUR, agg=Agg.COUNT)
    assert [p.value for p in counts] == [100.0]


async def test_overlapping_batches_store_the_union_and_keep_first_values(
    storage: ManagedStorage,
) -> None:
    first = samples({T0 + i * 1_000: 1.0 for i in range(60)})
    second = samples({T0 + i * 1_000: 2.0 for i in range(40, 100)})
    assert await storage.write(first) == WriteResult(60, 0)
    assert await storage.write(second) == WriteResult(40, 20)
    stored = dict(await raw(storage))
    assert len(stored) == 100
    assert all(stored[T0 + i * 1_000] == 1.0 for i in range(60))
    assert all(stored[T0 + i * 1_000] == 2.0 for i in range(60, 100))


async def test_duplicates_within_a_batch_keep_the_first_value(storage: ManagedStorage) -> None:
    batch = [
        Sample(KEY.site, KEY.device, KEY.point, T0, 1.0),
        Sample(KEY.site, KEY.device, KEY.point, T0 + 1, 5.0),
        Sample(KEY.site, KEY.device, KEY.point, T0, 2.0),
        Sample(KEY.site, KEY.device, KEY.point, T0, 3.0),
    ]
    assert await storage.write(batch) == WriteResult(2, 2)
    assert await raw(storage) == [(T0, 1.0), (T0 + 1, 5.0)]


async def test_duplicates_never_change_aggregates(storage: ManagedStorage) -> None:
    original = samples({T0 + i * 10_000: float(i) for i in range(360)})  # one hour
    await storage.write(original)
    before = {
        agg: await storage.history(KEY, T0, T0 + HOUR, every_ms=every, agg=agg)
        for agg in Agg
        for every in (MINUTE, HOUR)
    }
    # Re-send everything with other values, alone and mixed into a batch with new samples.
    await storage.write(
        samples({ts: v + 1_000 for ts, v in ((s.ts_ms, s.value) for s in original)})
    )
    await storage.write([*original[::7], *samples({T0 + HOUR + 5: 9.0})])
    after = {
        agg: await storage.history(KEY, T0, T0 + HOUR, every_ms=every, agg=agg)
        for agg in Agg
        for every in (MINUTE, HOUR)
    }
    assert after == before


async def test_same_timestamp_in_other_series_is_not_a_duplicate(storage: ManagedStorage) -> None:
    other_point = SeriesKey(KEY.site, KEY.device, "voltage_l1_v")
    other_device = SeriesKey(KEY.site, "meter-2", KEY.point)
    other_site = SeriesKey("site-b", KEY.device, KEY.point)
    batch = [
        *samples({T0: 1.0}),
        *samples({T0: 2.0}, other_point),
        *samples({T0: 3.0}, other_device),
        *samples({T0: 4.0}, other_site),
    ]
    assert await storage.write(batch) == WriteResult(4, 0)
    for key, value in ((KEY, 1.0), (other_point, 2.0), (other_device, 3.0), (other_site, 4.0)):
        assert await raw(storage, key) == [(T0, value)]


async def test_empty_batch_writes_nothing(storage: ManagedStorage) -> None:
    assert await storage.write([]) == WriteResult(0, 0)
    assert await storage.series() == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_non_finite_value_is_refused_naming_the_series(
    storage: ManagedStorage, bad: float
) -> None:
    bad_key = SeriesKey("site-a", "inverter-7", "dc_voltage_v")
    batch = [*samples({T0: 1.0}), Sample(bad_key.site, bad_key.device, bad_key.point, T0, bad)]
    with pytest.raises(ValueError, match="site-a/inverter-7/dc_voltage_v"):
        await storage.write(batch)
    # The batch is one unit: its valid sibling was not stored either.
    assert await raw(storage) == []
    assert await storage.write(samples({T0: 1.0})) == WriteResult(1, 0)


async def test_big_batch_is_written_once(storage: ManagedStorage) -> None:
    keys = [SeriesKey("plant", f"dev{d:03d}", f"p{p}_w") for d in range(50) for p in range(2)]
    batch = [
        Sample(k.site, k.device, k.point, T0 + i * 1_000, float(i))
        for k in keys
        for i in range(1_000)
    ]
    assert len(batch) == 100_000
    assert await storage.write(batch) == WriteResult(100_000, 0)
    assert await storage.write(batch) == WriteResult(0, 100_000)
    for key in (keys[0], keys[-1]):
        total = await storage.history(key, T0, T0 + HOUR, every_ms=HOUR, agg=Agg.SUM)
        assert [p.value for p in total] == [float(sum(range(1_000)))]
    assert len(await storage.series("plant")) == 100


async def test_concurrent_overlapping_writes_store_each_sample_once(
    storage: ManagedStorage,
) -> None:
    batches = [
        samples({T0 + i * 1_000: float(n) for i in range(n * 10, n * 10 + 50)}) for n in range(8)
    ]
    results = await asyncio.gather(*(storage.write(b) for b in batches))
    unique = {s.ts_ms for b in batches for s in b}
    assert sum(r.written for r in results) == len(unique)
    assert sum(r.written + r.duplicates for r in results) == sum(len(b) for b in batches)
    assert [ts for ts, _ in await raw(storage)] == sorted(unique)


async def test_storage_refuses_work_after_close(backend_storage_closed: ManagedStorage) -> None:
    with pytest.raises(StorageError):
        await backend_storage_closed.write(samples({T0: 1.0}))
    with pytest.raises(StorageError):
        await backend_storage_closed.history(KEY, T0, T0 + 1)


@pytest.fixture
async def backend_storage_closed(storage: ManagedStorage) -> ManagedStorage:
    await storage.close()
    return storage
