"""Issue #15 at 100,000 bots on PostgreSQL: bulk load, stream in bounded memory, chunked access
writes, warm start. Correctness is asserted, not timing (the figures are in BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from tiered_registry import ConfigurationError, InMemoryBackend, LocalCache, TieredBackend
from tiered_registry.bench.workload import make_config
from tiered_registry.models import utcnow
from tiered_registry.stores import postgres as postgres_module
from tiered_registry.stores.postgres import PostgresBackend

BOTS = 100_000
_BASE = make_config(2048, 0)


def _config(i: int) -> dict[str, Any]:
    config = dict(_BASE)
    config["name"] = f"support-bot-{i:06d}"
    return config


def _items(n: int) -> Iterator[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    for i in range(n):
        yield f"bot-{i:06d}", _config(i), "inactive" if i % 10 == 0 else "active", {"shard": i % 7}


@pytest.fixture(scope="module")
def loaded(database_url: str) -> Iterator[str]:
    """A table of 100,000 bots (2 KB configs) loaded once through ``load`` (its own event loop)."""
    table = f"t_scale_{uuid.uuid4().hex[:8]}"

    async def load() -> None:
        async with PostgresBackend(database_url, table=table) as backend:
            assert await backend.load(_items(BOTS)) == BOTS

    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()

    asyncio.run(load())
    yield table
    asyncio.run(drop())


async def test_bulk_load_of_100000_bots(loaded: str, database_url: str) -> None:
    async with PostgresBackend(database_url, table=loaded) as backend:
        assert await backend.count_all() == BOTS
        assert await backend.count_inactive() == BOTS // 10
        assert await backend.count_all(filter_metadata={"shard": 3}) == len(range(3, BOTS, 7))
        sample = [0, 1, 4999, 10_000, 54_321, BOTS - 1]
        records = await backend.get_many([f"bot-{i:06d}" for i in sample])
        for i in sample:
            record = records[f"bot-{i:06d}"]
            assert record.config == _config(i)
            assert record.metadata == {"shard": i % 7}
            assert record.status == ("inactive" if i % 10 == 0 else "active")


async def test_stream_walks_100000_bots_in_bounded_memory(loaded: str, database_url: str) -> None:
    async with PostgresBackend(database_url, table=loaded) as backend:
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            seen = 0
            last = ""
            async for record in backend.stream():
                assert record.bot_id > last
                last = record.bot_id
                seen += 1
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
    assert seen == BOTS
    print(f"\nstream of {BOTS} bots: tracemalloc peak growth {peak / 1e6:.1f} MB")
    # 100,000 records are ~500 MB decoded; a walk holds one batch (500) at a time.
    assert peak < 50 * 1024 * 1024, f"stream's peak grew by {peak / 1e6:.1f} MB"


async def test_keyset_pages_walk_every_active_bot(loaded: str, database_url: str) -> None:
    async with PostgresBackend(database_url, table=loaded) as backend:
        count = 0
        after = "bot-079999"  # the last 20,000: a deep page costs what the first does
        while page := await backend.list_active(limit=5000, after=after):
            count += len(page)
            after = page[-1].bot_id
        assert count == 20_000 - 20_000 // 10
        deep = await backend.list_active(limit=3, after="bot-099990")
        assert [r.bot_id for r in deep] == ["bot-099991", "bot-099992", "bot-099993"]


async def test_100000_access_times_are_written_in_chunks(
    loaded: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[int] = []
    async with PostgresBackend(database_url, table=loaded) as backend:
        execute = backend._execute

        async def counted(doing: str, sql: str, *args: Any) -> None:
            if doing == "record accesses":
                statements.append(len(args[0]))
            await execute(doing, sql, *args)

        monkeypatch.setattr(backend, "_execute", counted)
        at = utcnow() + timedelta(days=1)  # later than every stored time
        await backend.record_access_times({f"bot-{i:06d}": at for i in range(BOTS)})
    chunk = postgres_module._TOUCH_CHUNK
    assert chunk <= 5000
    assert statements == [chunk] * (BOTS // chunk)  # each its own statement and transaction
    conn = await asyncpg.connect(database_url)
    try:
        written = await conn.fetchval(f'SELECT count(*) FROM "{loaded}" WHERE last_accessed_at = $1', at)
    finally:
        await conn.close()
    assert written == BOTS


async def test_preload_fills_the_local_tier_with_the_hottest_bots(database_url: str, namespace: str) -> None:
    n, hot = 20_000, 10_000
    async with PostgresBackend(database_url, table=namespace) as store:
        try:
            await store.load((f"b{i:05d}", {"i": i}) for i in range(n))
            start = utcnow()  # bot i accessed at start + i ms: the hottest are the highest i
            await store.record_access_times(
                {f"b{i:05d}": start + timedelta(milliseconds=i) for i in range(n)}
            )
            assert await store.recently_accessed(3) == ["b19999", "b19998", "b19997"]

            local = LocalCache(maxsize=hot, ttl=300)
            stack_store = PostgresBackend(database_url, table=namespace)  # the stack closes it
            stack = TieredBackend(tiers=[local], store=stack_store, preload=hot)
            began = time.perf_counter()
            await stack.initialize()
            warm = time.perf_counter() - began
            try:
                assert len(local) == hot
                hottest = [f"b{i:05d}" for i in range(n - 1, n - hot - 1, -1)]
                for bot_id in hottest:
                    assert await stack.get_config(bot_id) == {"i": int(bot_id[1:])}
                assert stack.stats()["store"]["reads"] == 0  # every first read a local hit
                assert await stack.get_config("b00000") == {"i": 0}  # a cold one: read through
                assert stack.stats()["store"]["reads"] == 1
            finally:
                await stack.close()
            print(f"\nwarm start: {hot} bots preloaded in {warm:.2f} s")
        finally:
            await store.drop()


async def test_preload_is_bounded_in_time(database_url: str, namespace: str, caplog) -> None:
    async with PostgresBackend(database_url, table=namespace) as store:
        try:
            await store.load((f"b{i:05d}", {"i": i}) for i in range(3000))
            local = LocalCache(maxsize=5000, ttl=300)
            stack_store = PostgresBackend(database_url, table=namespace)
            stack = TieredBackend(tiers=[local], store=stack_store, preload=3000, preload_timeout=0.000_001)
            await stack.initialize()  # serves at once, cold, rather than failing
            try:
                assert len(local) < 3000
                assert await stack.get_config("b00001") == {"i": 1}
            finally:
                await stack.close()
            assert "preload stopped" in caplog.text
        finally:
            await store.drop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preload": -1}, "preload must be an int >= 0"),
        ({"preload": True}, "preload must be an int >= 0"),
        ({"preload": 10, "preload_timeout": 0}, "preload_timeout must be positive"),
        ({"preload": 10, "tiers": []}, "the first tier must be a LocalCache"),
    ],
)
def test_bad_preload_options_are_refused(options: dict[str, Any], message: str) -> None:
    options = {"tiers": [LocalCache()], **options}
    with pytest.raises(ConfigurationError, match=message):
        TieredBackend(store=InMemoryBackend(), **options)
