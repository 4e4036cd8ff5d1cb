"""TieredBackend behaviour beyond the contract: races, single-flight, negative caching, the hot path.

Parametrized over real stores (and, where available, a real Redis cache tier): ``CountingStore``
wraps the real store to count reads and to hold a read at a gate while the test writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tiered_registry import (
    BackendBase,
    BackendUnavailableError,
    CacheTier,
    InMemoryBackend,
    LocalCache,
    Registration,
    TieredBackend,
)
from tiered_registry.models import utcnow
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.base import Lookup
from tiered_registry.tiers.redis import RedisCache

from .helpers import CountingStore


def _postgres(request: pytest.FixtureRequest, ns: str) -> BackendBase:
    return PostgresBackend(request.getfixturevalue("database_url"), table=ns)


# (store, with a Redis cache tier between the local tier and the store?)
STACKS: dict[str, tuple[Callable[[pytest.FixtureRequest, str], BackendBase], bool]] = {
    "local+memory": (lambda request, ns: InMemoryBackend(), False),
    "local+postgres": (_postgres, False),
    "local+redis-cache+postgres": (_postgres, True),
}

MakeTiered = Callable[..., Awaitable[tuple[TieredBackend, CountingStore]]]


@pytest.fixture(params=sorted(STACKS))
async def make_tiered(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[MakeTiered]:
    """Build a TieredBackend over a CountingStore(real store); seed data straight into the store.

    ``make.shared_tier`` tells a test whether a Redis tier sits between the local tier and the store.
    """
    built: list[TieredBackend] = []
    build_store, with_redis = STACKS[request.param]

    async def make(
        *, local: LocalCache | None = None, seed: dict[str, dict] | None = None
    ) -> tuple[TieredBackend, CountingStore]:
        store = CountingStore(build_store(request, namespace))
        tiers: list[CacheTier] = [local if local is not None else LocalCache(maxsize=100, ttl=30)]
        if with_redis:
            tiers.append(RedisCache(request.getfixturevalue("redis_url"), namespace=namespace))
        tiered = TieredBackend(tiers=tiers, store=store)
        await tiered.initialize()
        built.append(tiered)
        for bot_id, config in (seed or {}).items():
            await store.register(bot_id, config)  # behind the caches' back: they start cold
        store.reads = 0
        return tiered, store

    make.shared_tier = with_redis  # type: ignore[attr-defined]
    yield make
    for tiered in built:
        if tiered.is_open:
            await tiered.clear()
            inner = tiered.store.inner  # type: ignore[attr-defined]
            if hasattr(inner, "drop"):
                await inner.drop()
            await tiered.close()


def _skip_if_shared_tier(make_tiered: MakeTiered) -> None:
    """For tests that change the store behind the caches' back: a Redis tier would (rightly) keep
    serving what it cached, so the local tier's own expiry cannot be observed through it."""
    if make_tiered.shared_tier:  # type: ignore[attr-defined]
        pytest.skip("writes behind the caches' back stay visible in the Redis tier until its TTL")


async def _start_read_and_hold(tiered: TieredBackend, store: CountingStore, bot_id: str) -> asyncio.Task:
    store.gate.clear()
    store.read_started.clear()
    task = asyncio.create_task(tiered.get_config(bot_id))
    await asyncio.wait_for(store.read_started.wait(), 5)
    return task


@pytest.mark.parametrize("write", ["register", "deactivate", "unregister"])
async def test_a_read_that_started_before_a_write_does_not_refill_the_old_value(make_tiered, write) -> None:
    tiered, store = await make_tiered(seed={"bot": {"v": 1}})
    held = await _start_read_and_hold(tiered, store, "bot")  # has read v1, not yet filled
    if write == "register":
        await tiered.register("bot", {"v": 2})
    elif write == "deactivate":
        assert await tiered.deactivate("bot")
    else:
        assert await tiered.unregister("bot")
    store.gate.set()
    assert await held == {"v": 1}  # it started before the write: the old value is a fair answer
    # ...but it must not have been put back into the cache:
    expected = {"register": {"v": 2}, "deactivate": {"v": 1}, "unregister": None}[write]
    assert await tiered.get_config("bot") == expected
    assert await tiered.exists("bot") is (write == "register")
    record = await tiered.get("bot")
    assert (record.status if record else None) == {
        "register": "active",
        "deactivate": "inactive",
        "unregister": None,
    }[write]


async def test_a_read_that_started_before_clear_does_not_refill(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"bot": {"v": 1}})
    held = await _start_read_and_hold(tiered, store, "bot")
    await tiered.clear()
    store.gate.set()
    await held
    assert await tiered.get_config("bot") is None


async def test_1000_concurrent_misses_of_one_key_read_the_store_once(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"cold": {"v": 1}})
    results = await asyncio.gather(*(tiered.get_config("cold") for _ in range(1000)))
    assert store.reads == 1
    assert all(r == {"v": 1} for r in results)
    assert all(r is results[0] for r in results)  # one shared frozen object, no copies


async def test_concurrent_misses_of_an_unknown_id_read_once_and_are_remembered(make_tiered) -> None:
    tiered, store = await make_tiered()
    results = await asyncio.gather(*(tiered.get_config("ghost") for _ in range(1000)))
    assert results == [None] * 1000
    assert store.reads == 1
    for _ in range(1000):
        assert await tiered.get_config("ghost") is None
        assert await tiered.exists("ghost") is False
    assert store.reads == 1


async def test_register_clears_a_remembered_miss_at_once(make_tiered) -> None:
    tiered, _store = await make_tiered()
    assert await tiered.get_config("late") is None
    await tiered.register("late", {"v": 1})
    assert await tiered.get_config("late") == {"v": 1}
    assert await tiered.exists("late") is True


async def test_a_remembered_miss_expires_after_negative_ttl(make_tiered) -> None:
    _skip_if_shared_tier(make_tiered)
    tiered, store = await make_tiered(local=LocalCache(maxsize=10, ttl=30, negative_ttl=0.05))
    assert await tiered.get_config("x") is None
    await store.register("x", {"v": 1})  # behind the cache's back
    assert await tiered.get_config("x") is None  # still remembered
    await asyncio.sleep(0.1)
    assert await tiered.get_config("x") == {"v": 1}


async def test_negative_caching_can_be_turned_off(make_tiered) -> None:
    tiered, store = await make_tiered(local=LocalCache(maxsize=10, ttl=30, negative_ttl=0))
    for _ in range(3):
        assert await tiered.get_config("x") is None
    # The Redis tier (when there is one) remembers misses on its own (its own negative_ttl).
    assert store.reads == (1 if make_tiered.shared_tier else 3)


async def test_hits_do_not_reach_the_store_and_are_counted(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"hot": {"v": 1}})
    first = await tiered.get_config("hot")
    for _ in range(100):
        assert await tiered.get_config("hot") is first
    assert store.reads == 1
    stats = tiered.stats()
    assert stats["local"]["hits"] == 100
    assert stats["local"]["misses"] == 1
    assert stats["local"]["fills"] == 1
    assert stats["store"]["reads"] == 1


async def test_entries_expire_after_ttl(make_tiered) -> None:
    _skip_if_shared_tier(make_tiered)
    tiered, store = await make_tiered(local=LocalCache(maxsize=10, ttl=0.05), seed={"bot": {"v": 1}})
    await tiered.get_config("bot")
    await store.register("bot", {"v": 2})  # behind the cache's back
    assert await tiered.get_config("bot") == {"v": 1}
    await asyncio.sleep(0.1)
    assert await tiered.get_config("bot") == {"v": 2}
    assert store.reads == 2


async def test_the_local_tier_sweeps_expired_entries_that_nobody_reads() -> None:
    """The hot path does not look at deadlines: the tier itself must drop expired entries."""
    async with InMemoryBackend() as store:
        record = await store.register("bot", {"v": 1})
    local = LocalCache(maxsize=10, ttl=0.1, negative_ttl=0.03)
    assert local.sweep_interval == pytest.approx(0.003)  # a tenth of the shorter TTL
    await local.initialize()
    try:
        local.set("bot", record)
        local.set("missing", None)  # a remembered miss
        await asyncio.sleep(0.06)
        assert set(local.entries) == {"bot"}
        await asyncio.sleep(0.1)
        assert local.entries == {}
    finally:
        await local.close()
    with pytest.raises(ValueError, match="sweep_interval"):
        LocalCache(sweep_interval=0)


async def test_the_local_tier_is_bounded(make_tiered) -> None:
    local = LocalCache(maxsize=10, ttl=30)
    tiered, _store = await make_tiered(local=local, seed={f"b{i}": {"i": i} for i in range(50)})
    for i in range(50):
        assert await tiered.get_config(f"b{i}") == {"i": i}
    assert len(local) <= 10
    assert len(local.entries) == len(local._index)


async def test_lru_keeps_recently_hit_bots(make_tiered) -> None:
    local = LocalCache(maxsize=3, ttl=30)
    tiered, _store = await make_tiered(local=local, seed={b: {} for b in "abcd"})
    for b in "abc":
        await tiered.get_config(b)
    await tiered.get_config("a")  # a hot-path hit...
    await tiered.flush_accesses()  # ...replayed into the LRU order
    await tiered.get_config("d")  # evicts the least recently used: b
    assert set(local.entries) == {"a", "c", "d"}


async def test_local_hits_count_as_accesses_in_the_store(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"bot": {"v": 1}})
    await tiered.get_config("bot")
    await tiered.flush_accesses()
    (before,) = await tiered.list_all()
    await asyncio.sleep(0.002)
    await tiered.get_config("bot")  # a local hit
    assert store.reads == 1
    await tiered.flush_accesses()
    (after,) = await tiered.list_all()
    assert after.last_accessed_at > before.last_accessed_at


async def test_peek_config_is_not_an_access_even_from_the_cache(make_tiered) -> None:
    tiered, _store = await make_tiered(seed={"bot": {"v": 1}})
    await tiered.flush_accesses()
    (before,) = await tiered.list_all()
    await tiered.peek_config("bot")
    await tiered.peek_config("bot")
    await tiered.flush_accesses()
    (after,) = await tiered.list_all()
    assert after.last_accessed_at == before.last_accessed_at


async def test_a_pending_hot_hit_is_shown_stamped_when_collected_and_written_so() -> None:
    """The hot path reads no clock: a read that shows its hit (peek, a list) stamps it at that
    moment, and that time is the one written. Once written, a peek served from the local tier
    shows the time the entry was cached with (peek is not an access: nothing refreshes it)."""
    store = InMemoryBackend()
    async with TieredBackend(tiers=[LocalCache(ttl=30)], store=store, access_flush_interval=3600) as tiered:
        registered = await tiered.register("bot", {})
        await asyncio.sleep(0.005)
        before = utcnow()
        await tiered.get_config("bot")  # a local hit on the hot path
        assert tiered._hot_accessed == {"bot": None}
        peeked = await tiered.peek("bot")
        assert peeked is not None
        shown = peeked.last_accessed_at
        assert shown >= before
        assert shown > registered.last_accessed_at
        assert [r.last_accessed_at for r in await tiered.list_all()] == [shown]
        assert [r.last_accessed_at async for r in tiered.stream()] == [shown]
        await tiered.flush_accesses()
        stored = await store.peek("bot")
        assert stored is not None
        assert stored.last_accessed_at == shown
        got = await tiered.get("bot")  # a local hit too: shows the time of this access
        assert got is not None
        assert got.last_accessed_at >= shown


async def test_a_failed_store_write_leaves_every_tier_as_it_was(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"bot": {"v": 1}})
    assert await tiered.get_config("bot") == {"v": 1}
    before = tiered.stats()

    async def broken(*args: object, **kwargs: object) -> Registration:
        raise BackendUnavailableError("store is down")

    store._register = broken  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailableError):
        await tiered.register("bot", {"v": 2})
    assert await tiered.get_config("bot") == {"v": 1}
    assert tiered.stats() == before | {"local": before["local"] | {"hits": before["local"]["hits"] + 1}}


class _DeadTier(CacheTier):
    """A tier whose server is down: every call fails like a refused connection."""

    name = "dead"

    async def lookup(self, bot_id: str) -> tuple[Lookup, object]:
        raise BackendUnavailableError("connection refused")

    async def fill(self, bot_id: str, record: Registration | None, token: object) -> None:
        raise BackendUnavailableError("connection refused")

    async def put(self, bot_id: str, record: Registration, token: object) -> None:
        raise BackendUnavailableError("connection refused")

    async def invalidate(self, bot_id: str) -> None:
        raise BackendUnavailableError("connection refused")

    async def clear(self) -> None:
        raise BackendUnavailableError("connection refused")


async def test_a_failing_tier_is_skipped_and_counted(caplog) -> None:
    store = CountingStore(InMemoryBackend())
    async with TieredBackend(tiers=[LocalCache(), _DeadTier()], store=store) as tiered:
        await tiered.register("bot", {"v": 1})
        await tiered.deactivate("bot")
        assert await tiered.get_config("bot") == {"v": 1}
        assert await tiered.exists("bot") is False
        # The failed put made the tier owe an invalidation: it is skipped until that is paid.
        assert tiered.stats()["dead"]["errors"] >= 1


async def test_the_stack_closes_every_part() -> None:
    store = InMemoryBackend()
    tiered = TieredBackend(tiers=[LocalCache()], store=store)
    await tiered.initialize()
    assert store.is_open
    await tiered.close()
    assert not store.is_open


async def test_bad_ids_are_rejected_on_the_hot_path_too() -> None:
    async with TieredBackend(tiers=[LocalCache()], store=InMemoryBackend()) as tiered:
        with pytest.raises(TypeError, match="bot_id"):
            await tiered.get_config(["unhashable"])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="bot_id"):
            await tiered.get_config("")


async def test_cancelling_the_reader_in_front_does_not_fail_the_others(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"bot": {"v": 1}})
    leader = await _start_read_and_hold(tiered, store, "bot")
    followers = [asyncio.create_task(tiered.get_config("bot")) for _ in range(10)]
    await asyncio.sleep(0.01)  # the followers are waiting on the leader's read
    leader.cancel()
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await asyncio.gather(*followers) == [{"v": 1}] * 10


async def test_a_store_error_reaches_every_waiting_reader(make_tiered) -> None:
    tiered, store = await make_tiered(seed={"bot": {"v": 1}})

    async def broken(bot_id: str, *, touch: bool) -> Registration | None:
        await asyncio.sleep(0.01)
        raise BackendUnavailableError("store is down")

    store._get = broken  # type: ignore[method-assign]
    results = await asyncio.gather(*(tiered.get_config("bot") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, BackendUnavailableError) for r in results)
    assert tiered.stats()["store"]["errors"] == 1


@pytest.mark.parametrize("write", ["register", "unregister", "clear"])
async def test_another_process_read_that_started_before_a_write_does_not_refill_redis(
    redis_url, database_url, namespace, write
) -> None:
    """The stale-fill guard across processes: B (its own TieredBackend, no local tier, so nothing
    in-process can tell it about A's write) reads the old value from the store, A writes, then B's
    fill of the Redis tier must be refused by the tier's version/epoch check."""

    def stack(store: BackendBase) -> TieredBackend:
        return TieredBackend(tiers=[RedisCache(redis_url, namespace=namespace)], store=store, coherence=False)

    a = stack(PostgresBackend(database_url, table=namespace))
    b_store = CountingStore(PostgresBackend(database_url, table=namespace))
    b = stack(b_store)
    try:
        async with a, b:
            await a.store.register("bot", {"v": 1})  # in the store only: Redis starts cold
            held = await _start_read_and_hold(b, b_store, "bot")  # B missed Redis, read v1
            if write == "register":
                await a.register("bot", {"v": 2})
            elif write == "unregister":
                await a.unregister("bot")
            else:
                await a.clear()
            b_store.gate.set()
            assert await held == {"v": 1}  # B's read started before the write: a fair answer
            reads = b_store.reads
            expected = {"v": 2} if write == "register" else None
            assert await b.get_config("bot") == expected  # not B's old v1 from Redis
            assert await a.get_config("bot") == expected
            if write == "register":
                assert b_store.reads == reads  # A's write-through is what Redis holds
    finally:
        async with stack(PostgresBackend(database_url, table=namespace)) as cleaner:
            await cleaner.clear()
            await cleaner.store.drop()  # type: ignore[attr-defined]
