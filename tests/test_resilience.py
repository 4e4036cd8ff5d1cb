"""Degraded modes: a Redis tier that stops answering is skipped by a circuit breaker, and the
invalidations it missed are paid before it is trusted again (nothing stale when it comes back).

These tests disturb a private Valkey server (``private_redis``), never the shared one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tiered_registry import TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache


@pytest.fixture
async def redis_over_postgres(private_redis, database_url, namespace) -> AsyncIterator[TieredBackend]:
    url, _, _ = private_redis
    stack = TieredBackend(
        tiers=[RedisCache(url, ttl=300, namespace=namespace, socket_timeout=0.2)],
        store=PostgresBackend(database_url, table=namespace),
        reset_timeout=0.3,
    )
    async with stack:
        yield stack
        await stack.store.drop()  # type: ignore[attr-defined]


async def _pause(url: str, milliseconds: int) -> None:
    """Make the server stop answering (it keeps its data) for a while."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")
    finally:
        await client.aclose()


async def test_a_hung_redis_is_skipped_and_owed_invalidations_are_paid(
    redis_over_postgres, private_redis
) -> None:
    stack = redis_over_postgres
    url, _, _ = private_redis
    await stack.register("bot", {"v": 1})
    assert await stack.get_config("bot") == {"v": 1}  # cached in Redis

    await _pause(url, 1500)
    started = time.perf_counter()
    # Redis holds {"v": 1} but does not answer: the write reaches the store only.
    await stack.register("bot", {"v": 2})
    reads = [await stack.get_config("bot") for _ in range(20)]
    elapsed = time.perf_counter() - started
    assert reads == [{"v": 2}] * 20  # from the store
    stats = stack.stats()["redis"]
    # The failed write left Redis owing an invalidation: from then on requests skip the tier at
    # once (no timeout per request); only the background debt collector keeps trying.
    assert stats["errors"] <= 3
    assert elapsed < 1.5

    await asyncio.sleep(1.6)  # Redis answers again, still holding the old value
    assert await stack.get_config("bot") == {"v": 2}  # owed invalidation paid before trusting it
    assert await stack.get_config("bot") == {"v": 2}
    assert stack.stats()["redis"]["hits"] >= 1  # and the tier is in use again


async def test_a_stopped_redis_costs_no_timeout_per_request(redis_over_postgres, private_redis) -> None:
    stack = redis_over_postgres
    _, start, stop = private_redis
    await stack.register("bot", {"v": 1})
    stop()
    started = time.perf_counter()
    for i in range(200):
        assert await stack.get_config("bot") == {"v": 1}
        if i == 100:
            assert await stack.deactivate("bot")  # writes still succeed: the store is up
    assert time.perf_counter() - started < 3
    assert await stack.exists("bot") is False
    start()
    await asyncio.sleep(0.4)  # past reset_timeout: the next request tries Redis again
    assert await stack.exists("bot") is False
    assert (await stack.get("bot")).status == "inactive"


@pytest.mark.parametrize("garbage", [b"{not json", b'{"bot_id": "bot"}', b"[]", b"\xff\xfe"])
async def test_a_corrupt_redis_tier_value_is_a_miss_logged_once_and_repaired(
    redis_url, database_url, namespace, caplog, garbage
) -> None:
    stack = TieredBackend(
        tiers=[RedisCache(redis_url, namespace=namespace)],
        store=PostgresBackend(database_url, table=namespace),
    )
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with stack:
            await stack.register("bot", {"v": 1})
            await stack.register("other", {"v": 2})
            for bot_id in ("bot", "other"):
                await raw.set(f"{{{namespace}}}:c:{bot_id}", garbage)
            with caplog.at_level("WARNING", logger="tiered_registry"):
                assert await stack.get_config("bot") == {"v": 1}  # from the store
                assert await stack.get_config("other") == {"v": 2}
            warnings = [r for r in caplog.records if "undecodable" in r.getMessage()]
            assert len(warnings) == 1  # logged once, counted always
            assert stack.stats()["redis"]["errors"] == 2
            hits = stack.stats()["redis"]["hits"]
            assert await stack.get_config("bot") == {"v": 1}  # repaired: a hit now
            assert stack.stats()["redis"]["hits"] == hits + 1
            await stack.clear()
            await stack.store.drop()  # type: ignore[attr-defined]
    finally:
        await raw.aclose()


async def test_after_a_redis_restart_no_call_fails_on_a_connection_the_restart_closed(
    private_redis, namespace
) -> None:
    """A restart closes every pooled connection. Each component must replace a dead one on the
    call that finds it, not report the tier down: with dozens of pooled connections, one failure
    per connection kept a restarted Redis "down" (breaker re-opening) for seconds, and a failed
    invalidation PUBLISH left other processes' local copies stale."""
    from tiered_registry.coherence import InvalidationChannel

    url, start, stop = private_redis
    tier = RedisCache(url, namespace=namespace)
    channel = InvalidationChannel(url, namespace=namespace)
    await tier.initialize()
    await channel.start()
    try:
        # Many connections in each pool: concurrent calls.
        await asyncio.gather(*(tier.lookup(f"bot-{i}") for i in range(30)))
        await asyncio.gather(*(channel.publish(f"bot-{i}") for i in range(30)))
        await asyncio.to_thread(stop)
        await asyncio.to_thread(start)
        for i in range(30):  # one at a time: each takes the next pooled (dead) connection
            found, _ = await tier.lookup(f"bot-{i}")
            assert found is None
            assert await channel.publish(f"bot-{i}") is True
        assert channel.publish_errors == 0
    finally:
        await channel.stop()
        await tier.close()


async def test_a_tier_owed_some_keys_serves_the_others_and_takes_writes(redis_over_postgres) -> None:
    """Owed invalidations are per key. Skipping the whole tier until every debt was paid made
    the debt unpayable under load: each write skipped the tier and was owed too, so the
    debt collector, paying one key per round trip, never caught up (seen: 5 s of writes after
    a Redis restart, the tier skipped all along, and its final announcement evicted every
    other process's local copies)."""
    stack = redis_over_postgres
    tier = stack.tiers[0]
    guard = stack._guards[id(tier)]
    await stack.register("owed", {"v": 1})
    await stack.register("fine", {"v": 1})
    guard.owe("owed")  # as if a write of "owed" had missed the tier (the breaker stays closed)
    reads = stack.stats()["store"]["reads"]
    assert await stack.get_config("fine") == {"v": 1}
    assert stack.stats()["store"]["reads"] == reads  # served by the tier
    assert await stack.get_config("owed") == {"v": 1}
    assert stack.stats()["store"]["reads"] == reads + 1  # the tier may hold an old value: skipped
    await stack.register("fine", {"v": 2})  # goes through to the tier
    found, _ = await tier.lookup("fine")
    assert found is not None
    assert found.config == {"v": 2}
    assert guard.owes
    await stack.register("owed", {"v": 3})  # the tier's value of "owed" is current again
    assert not guard.owes
    assert guard.healthy
    found, _ = await tier.lookup("owed")
    assert found is not None
    assert found.config == {"v": 3}
