"""Issue #12, the store side: point reads of different bots share one round trip, and the bulk
methods use few round trips, against the real Redis and PostgreSQL servers.

What a round trip is here: the store's batcher counts them (``store._batcher.stats``: ``single``
lone reads, ``batches`` batched reads); ``get_many``/``register_many`` are counted by wrapping the
one method that sends a statement (``_fetch``/``_write``) or a Redis script call (``_read_batch``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis

from tiered_registry import BackendUnavailableError, ConfigurationError, create_backend
from tiered_registry.base import BackendBase
from tiered_registry.stores.foreign import ForeignStore
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.stores.redis import _READ_CHUNK, RedisBackend

from .foreign_backends import FullForeignBackend, MinimalForeignBackend

Make = Callable[..., Awaitable[BackendBase]]


@pytest.fixture
async def make(
    request: pytest.FixtureRequest, namespace: str
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await make(kind, url=None, **options)``: an initialized store on this test's namespace;
    its data is removed and it is closed afterwards."""
    built: list[BackendBase] = []

    async def make(kind: str, url: str | None = None, **options: Any) -> Any:
        backend: BackendBase
        if kind == "postgres":
            dsn = url or str(request.getfixturevalue("database_url"))
            backend = PostgresBackend(dsn, table=namespace, access_flush_interval=60, **options)
        else:
            source = url or str(request.getfixturevalue("redis_url"))
            backend = RedisBackend(source, namespace=namespace, access_flush_interval=60, **options)
        built.append(backend)
        await backend.initialize()
        return backend

    yield make
    for backend in built:
        if backend.is_open:
            try:
                if isinstance(backend, PostgresBackend):
                    await backend.drop()
                else:
                    await backend.clear()
            finally:
                await backend.close()


@pytest.fixture
def make_pg(make: Callable[..., Awaitable[Any]]) -> Make:
    return lambda **options: make("postgres", **options)


@pytest.fixture
def make_redis(make: Callable[..., Awaitable[Any]]) -> Make:
    return lambda url=None, **options: make("redis", url, **options)


@pytest.fixture(params=["postgres", "redis"])
async def store(request: pytest.FixtureRequest, make: Callable[..., Awaitable[Any]]) -> BackendBase:
    backend: BackendBase = await make(request.param)
    return backend


def _count_calls(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[Any]:
    """Wrap ``obj.<name>`` so that each call is noted (its positional arguments)."""
    calls: list[Any] = []
    original = getattr(obj, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await original(*args, **kwargs)

    monkeypatch.setattr(obj, name, counted)
    return calls


async def _seed(store: BackendBase, n: int) -> list[str]:
    ids = [f"bot-{i:03d}" for i in range(n)]
    await store.register_many([(b, {"name": b}) for b in ids])
    return ids


# ---- point reads share round trips ---------------------------------------------------------------


@pytest.mark.parametrize("read", ["get", "get_config"])
async def test_50_concurrent_reads_take_at_most_3_round_trips(store: BackendBase, read: str) -> None:
    ids = await _seed(store, 50)
    batcher = store._batcher if read == "get" else store._config_batcher  # type: ignore[attr-defined]
    results = await asyncio.gather(*(getattr(store, read)(b) for b in ids))
    names = [r.config["name"] if read == "get" else r["name"] for r in results]
    assert names == ids
    stats = batcher.stats
    assert stats.single + stats.batches <= 3, stats.as_dict()
    assert stats.single + stats.batched_keys == 50
    assert stats.largest >= 45


async def test_a_lone_read_is_one_single_round_trip(store: BackendBase) -> None:
    await _seed(store, 2)
    assert (await store.get("bot-001")) is not None
    assert await store.get_config("bot-000") == {"name": "bot-000"}
    assert store._batcher.stats.as_dict() == {"single": 1, "batches": 0, "batched_keys": 0, "largest": 0}  # type: ignore[attr-defined]
    assert store._config_batcher.stats.single == 1  # type: ignore[attr-defined]
    assert store._config_batcher.stats.batches == 0  # type: ignore[attr-defined]
    assert store.batch_stats["records"]["single"] == 1  # type: ignore[attr-defined]
    assert store.batch_stats["configs"]["batches"] == 0  # type: ignore[attr-defined]


async def test_missing_bots_in_a_batch_read_as_none(store: BackendBase) -> None:
    ids = await _seed(store, 10)
    asked = [x for b in ids for x in (b, f"no-{b}")]
    results = await asyncio.gather(*(store.get_config(b) for b in asked))
    assert results == [{"name": b} if not b.startswith("no-") else None for b in asked]
    assert store._config_batcher.stats.batches >= 1  # type: ignore[attr-defined]


async def test_batched_gets_are_accesses(store: BackendBase) -> None:
    ids = await _seed(store, 20)
    before = {r.bot_id: r.last_accessed_at for r in await store.list_all()}
    await asyncio.sleep(0.005)
    got = await asyncio.gather(*(store.get(b) for b in ids))
    assert all(r is not None and r.last_accessed_at > before[r.bot_id] for r in got)
    await store.flush_accesses()
    after = {r.bot_id: r.last_accessed_at for r in await store.list_all()}
    assert all(after[b] > before[b] for b in ids)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_batch_size_1_turns_batching_off(make: Make, kind: str) -> None:
    store = await make(kind, batch_size=1)
    ids = await _seed(store, 20)
    assert [r.bot_id for r in await asyncio.gather(*map(store.get, ids))] == ids  # type: ignore[union-attr]
    assert store._batcher.stats.single == 20  # type: ignore[attr-defined]
    assert store._batcher.stats.batches == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_batch_size_bounds_each_batch(make: Make, kind: str) -> None:
    store = await make(kind, batch_size=8)
    ids = await _seed(store, 60)
    assert [r.bot_id for r in await asyncio.gather(*map(store.get, ids))] == ids  # type: ignore[union-attr]
    assert store._batcher.stats.largest <= 8  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8", None])
@pytest.mark.parametrize("cls", [PostgresBackend, RedisBackend])
def test_a_bad_batch_size_is_a_configuration_error(cls: type, bad: object) -> None:
    url = "postgresql://u@127.0.0.1:1/db" if cls is PostgresBackend else "redis://127.0.0.1:1"
    with pytest.raises(ConfigurationError, match="batch_size"):
        cls(url, batch_size=bad)


def test_batch_size_is_reachable_from_create_backend() -> None:
    pg = create_backend({"type": "postgres", "dsn": "postgresql://u@127.0.0.1:1/db", "batch_size": 32})
    rd = create_backend({"type": "redis", "url": "redis://127.0.0.1:1", "batch_size": 16})
    assert pg._batcher.max_batch == 32  # type: ignore[attr-defined]
    assert rd._batcher.max_batch == 16  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="batch_size"):
        create_backend({"type": "redis", "url": "redis://127.0.0.1:1", "batch_size": 0})


async def test_redis_a_foreign_value_in_a_batch_is_a_miss_for_that_bot_only(
    make_redis: Make, redis_url: str, namespace: str
) -> None:
    store = await make_redis()
    ids = await _seed(store, 6)
    raw = aredis.Redis.from_url(redis_url)
    try:
        await raw.delete(f"{{{namespace}}}:bot:bot-002")
        await raw.set(f"{{{namespace}}}:bot:bot-002", b"a string, not a hash")
        records = await asyncio.gather(*map(store.get, ids))
        configs = await asyncio.gather(*map(store.get_config, ids))
        many = await store.get_many(ids)
        await raw.delete(f"{{{namespace}}}:bot:bot-002")
    finally:
        await raw.aclose()
    assert records[2] is None
    assert configs[2] is None
    assert [r.bot_id for r in records if r is not None] == [b for b in ids if b != "bot-002"]
    assert [c["name"] for c in configs if c is not None] == [b for b in ids if b != "bot-002"]
    assert list(many) == [b for b in ids if b != "bot-002"]
    assert store.batch_stats["records"]["batches"] >= 1  # type: ignore[attr-defined]


# ---- bulk methods: few round trips -----------------------------------------------------------------


async def test_postgres_get_many_is_one_statement_per_1000_ids(make_pg: Make, monkeypatch) -> None:
    store = await make_pg()
    ids = await _seed(store, 300)
    fetches = _count_calls(monkeypatch, store, "_fetch")
    got = await store.get_many(ids)
    assert list(got) == ids
    assert len(fetches) == 1
    fetches.clear()
    many = ids * 4 + [f"x-{i}" for i in range(1000)]  # 1300 distinct ids
    assert len(await store.get_configs(many)) == 300
    assert len(fetches) == 2


async def test_postgres_register_many_is_one_statement(make_pg: Make, monkeypatch) -> None:
    store = await make_pg()
    writes = _count_calls(monkeypatch, store, "_write")
    written = await store.register_many([(f"b{i}", {"i": i}) for i in range(500)])
    assert len(written) == 500
    assert len(writes) == 1
    assert await store.count() == 500


async def test_postgres_register_many_is_all_or_nothing(make_pg: Make, database_url: str) -> None:
    """A row the server refuses (here: a CHECK added behind our back) fails the statement: none is written."""
    store = await make_pg()
    await store.register("keep", {"v": 1})
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"ALTER TABLE {store.qualified_table} ADD CONSTRAINT no_bad CHECK (NOT config ? 'bad')"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await store.register_many([("keep", {"v": 2}), ("new", {"v": 1}), ("b", {"bad": 1})])
    finally:
        await conn.close()
    assert await store.get_configs(["keep", "new", "b"]) == {"keep": {"v": 1}}


async def test_redis_get_many_is_one_round_trip_per_chunk(make_redis: Make, monkeypatch) -> None:
    store = await make_redis()
    ids = await _seed(store, 300)
    pipelines = _count_calls(monkeypatch, store._scripts, "read")
    assert list(await store.get_many(ids)) == ids
    assert len(pipelines) == -(-300 // _READ_CHUNK)  # 200 a call: Redis is never held long
    pipelines.clear()
    assert len(await store.get_configs(ids + [f"x-{i}" for i in range(400)])) == 300
    assert len(pipelines) == -(-700 // _READ_CHUNK)


async def test_redis_register_many_is_one_script_call(make_redis: Make, monkeypatch) -> None:
    store = await make_redis()
    calls = _count_calls(monkeypatch, store._scripts, "register_many")  # type: ignore[attr-defined]
    written = await store.register_many(
        [(f"b{i}", {"i": i}, "inactive" if i % 3 else "active") for i in range(300)]
    )
    assert len(written) == 300
    assert len(calls) == 1
    assert await store.count() == 100
    assert await store.count_inactive() == 200


async def test_redis_register_many_writes_nothing_when_a_key_holds_a_foreign_value(
    make_redis: Make, redis_url: str, namespace: str
) -> None:
    store = await make_redis()
    await store.register("keep", {"v": 1})
    raw = aredis.Redis.from_url(redis_url)
    try:
        await raw.set(f"{{{namespace}}}:bot:foreign", b"not a hash")
        with pytest.raises(Exception, match="WRONGTYPE"):
            await store.register_many([("keep", {"v": 2}), ("new", {}), ("foreign", {})])
        assert await raw.get(f"{{{namespace}}}:bot:foreign") == b"not a hash"
        await raw.delete(f"{{{namespace}}}:bot:foreign")
    finally:
        await raw.aclose()
    assert await store.get_configs(["keep", "new", "foreign"]) == {"keep": {"v": 1}}
    assert await store.list_ids() == ["keep"]


# ---- cancellation and failure ----------------------------------------------------------------------


async def _started(*tasks: asyncio.Task[Any]) -> None:
    for _ in range(5):  # let every task reach its await
        await asyncio.sleep(0)


async def test_postgres_a_cancelled_caller_does_not_cancel_the_batch(
    make_pg: Make, database_url: str
) -> None:
    store = await make_pg(batch_size=3)
    ids = await _seed(store, 4)
    locker = await asyncpg.connect(database_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"LOCK TABLE {store.qualified_table} IN ACCESS EXCLUSIVE MODE")
        tasks = [asyncio.create_task(store.get_config(b)) for b in ids]  # 1 lone read, then a batch of 3
        await asyncio.sleep(0.2)  # both statements are waiting for the lock on the server
        assert store._config_batcher.stats.single == 1  # type: ignore[attr-defined]
        assert store._config_batcher.stats.batches == 1  # type: ignore[attr-defined]
        tasks[2].cancel()
        await asyncio.sleep(0.05)
        await tx.rollback()
    finally:
        await locker.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == {"name": ids[0]}
    assert results[1] == {"name": ids[1]}
    assert isinstance(results[2], asyncio.CancelledError)
    assert results[3] == {"name": ids[3]}
    assert await store.get_config(ids[2]) == {"name": ids[2]}  # the store is fine


async def test_postgres_a_failing_batch_fails_every_caller_with_the_same_error(
    make_pg: Make, database_url: str
) -> None:
    store = await make_pg(batch_size=3)
    ids = await _seed(store, 4)
    locker = await asyncpg.connect(database_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"LOCK TABLE {store.qualified_table} IN ACCESS EXCLUSIVE MODE")
        tasks = [asyncio.create_task(store.get(b)) for b in ids]
        await asyncio.sleep(0.2)
        killed = await locker.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE $1",
            f"%{store.qualified_table}%",
        )
        assert killed == 2  # the lone read and the batch
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await tx.rollback()
    finally:
        await locker.close()
    assert all(isinstance(r, BackendUnavailableError) for r in results), results
    assert results[1] is results[2] is results[3]  # one batch, one error
    assert "PostgreSQL unavailable" in str(results[1])
    assert [r.bot_id for r in await asyncio.gather(*map(store.get, ids))] == ids  # type: ignore[union-attr]


async def test_redis_a_cancelled_caller_does_not_cancel_the_batch(make_redis: Make, private_redis) -> None:
    url, _, _ = private_redis
    store = await make_redis(url, batch_size=3)
    ids = await _seed(store, 4)
    raw = aredis.Redis.from_url(url)
    try:
        sleeping = asyncio.create_task(raw.execute_command("DEBUG", "SLEEP", "0.3"))
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(store.get_config(b)) for b in ids]
        await asyncio.sleep(0.05)
        assert store._config_batcher.stats.batches == 1  # type: ignore[attr-defined]
        tasks[2].cancel()
        await sleeping
    finally:
        await raw.aclose()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [results[i] for i in (0, 1, 3)] == [{"name": ids[i]} for i in (0, 1, 3)]
    assert isinstance(results[2], asyncio.CancelledError)
    assert await store.get_config(ids[2]) == {"name": ids[2]}
    await store.clear()
    await store.close()  # before private_redis stops its server (fixtures end in reverse)


async def test_redis_a_failing_batch_fails_every_caller_with_the_same_error(
    make_redis: Make, private_redis
) -> None:
    url, start, stop = private_redis
    store = await make_redis(url, batch_size=3, retries=0)
    ids = await _seed(store, 4)
    await store.clear()
    stop()
    try:
        results = await asyncio.gather(*map(store.get, ids), return_exceptions=True)
    finally:
        start()
    assert all(isinstance(r, BackendUnavailableError) for r in results), results
    assert store._batcher.stats.batches == 1  # type: ignore[attr-defined]
    assert results[1] is results[2] is results[3]
    assert "Redis" in str(results[1])
    await store.close()  # before private_redis stops its server


# ---- a foreign store: its own bulk methods when it has them ----------------------------------------


class _BulkForeign(FullForeignBackend):
    """A third-party backend with ``get_many``/``register_many`` of its own."""

    async def get_many(self, bot_ids: list[str]) -> dict[str, Any]:
        self.calls["get_many"] += 1
        found = {}
        for bot_id in bot_ids:
            record = await self.get(bot_id)
            if record is not None:
                found[bot_id] = record
        return found

    async def register_many(self, items: list[tuple[Any, ...]]) -> list[Any]:
        self.calls["register_many"] += 1
        out = []
        for bot_id, config, status, *rest in items:
            out.append(await self.register(bot_id, config, status, metadata=rest[0] if rest else None))
        return out


async def test_a_foreign_store_uses_its_backends_bulk_methods() -> None:
    foreign = _BulkForeign()
    async with ForeignStore(foreign) as store:
        written = await store.register_many([("a", {"v": 1}), ("b", {"v": 2}, "inactive", {"t": 1})])
        assert [(r.bot_id, r.status, r.metadata) for r in written] == [
            ("a", "active", {}),
            ("b", "inactive", {"t": 1}),
        ]
        assert foreign.calls["register_many"] == 1
        assert await store.get_configs(["b", "x", "a"]) == {"b": {"v": 2}, "a": {"v": 1}}
        assert list(await store.get_many(["a", "b"])) == ["a", "b"]
        assert foreign.calls["get_many"] == 2


async def test_a_foreign_store_without_bulk_methods_loops() -> None:
    foreign = FullForeignBackend()
    async with ForeignStore(foreign) as store:
        await store.register_many({"a": {"v": 1}, "b": {"v": 2}})
        assert foreign.calls["register"] == 2
        assert await store.get_configs(["b", "a", "x"]) == {"b": {"v": 2}, "a": {"v": 1}}


async def test_metadata_a_foreign_store_cannot_keep_is_refused_before_any_write() -> None:
    foreign = MinimalForeignBackend()
    async with ForeignStore(foreign) as store:
        with pytest.raises(ConfigurationError, match="metadata"):
            await store.register_many([("a", {}), ("b", {}, "active", {"t": 1})])
        assert foreign.records == {}
        assert len(await store.register_many([("a", {}, "active", {})])) == 1
