"""Batching: concurrent reads of different keys share one round trip (``batching.py``).

First the :class:`Batcher` on its own (no server: what goes out when, failures, cancellation),
then the Redis tier against a real Redis (one ``MGET`` for many lookups, one script call for
many fills, each still guarded by its own token), then a whole ``local -> redis -> postgres``
stack under a burst of concurrent cold reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest
import redis.asyncio as aioredis

from tiered_registry import BackendClosedError, Registration
from tiered_registry.batching import Batcher, KeyFailed
from tiered_registry.coherence import InvalidationChannel
from tiered_registry.errors import ConfigurationError
from tiered_registry.frozen import freeze
from tiered_registry.tiers.base import ABSENT
from tiered_registry.tiers.redis import RedisCache

from .conftest import MakeStack


class Recorder:
    """``one``/``many`` functions that record what was sent and can be held or made to fail."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []  # each round trip's keys; a lone read is a list of one
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None
        self.failing_keys: set[str] = set()
        self.many_cancelled = False

    async def one(self, key: str) -> str:
        self.sent.append([key])
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return key.upper()

    async def many(self, keys: list[str]) -> Sequence[str | KeyFailed]:
        self.sent.append(list(keys))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.many_cancelled = True
            raise
        if self.fail is not None:
            raise self.fail
        return [KeyFailed(LookupError(k)) if k in self.failing_keys else k.upper() for k in keys]


async def test_a_lone_load_goes_out_at_once_as_a_single_read() -> None:
    rec = Recorder()
    batcher = Batcher(rec.one, rec.many)
    assert await batcher.load("a") == "A"
    assert await batcher.load("b") == "B"  # sequential loads never wait for a batch
    assert rec.sent == [["a"], ["b"]]
    assert batcher.stats.as_dict() == {"single": 2, "batches": 0, "batched_keys": 0, "largest": 0}


async def test_loads_arriving_during_a_round_trip_go_out_together_when_it_lands() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec.one, rec.many)
    tasks = [asyncio.create_task(batcher.load(f"k{i}")) for i in range(20)]
    await asyncio.sleep(0.01)
    assert rec.sent == [["k0"]]  # the first went out alone; the rest wait for it
    rec.release.set()
    assert await asyncio.gather(*tasks) == [f"K{i}" for i in range(20)]
    assert rec.sent == [["k0"], [f"k{i}" for i in range(1, 20)]]
    assert batcher.stats.batches == 1
    assert batcher.stats.batched_keys == 19


async def test_a_batch_holds_at_most_max_batch_keys() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec.one, rec.many, max_batch=5, max_in_flight=2)
    tasks = [asyncio.create_task(batcher.load(f"k{i}")) for i in range(23)]
    await asyncio.sleep(0.01)
    # One lone read in flight, one full batch sent at once (two in flight at most); the rest wait.
    assert [len(keys) for keys in rec.sent] == [1, 5]
    rec.release.set()
    assert await asyncio.gather(*tasks) == [f"K{i}" for i in range(23)]
    assert max(len(keys) for keys in rec.sent) == 5
    assert sorted(k for keys in rec.sent for k in keys) == sorted(f"k{i}" for i in range(23))


async def test_a_failed_batch_fails_each_of_its_callers_with_the_same_error() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec.one, rec.many)
    first = asyncio.create_task(batcher.load("a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.load(k)) for k in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    rec.fail = error = ConnectionError("server gone")
    rec.release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(r is error for r in results)


async def test_one_keys_error_does_not_fail_the_others_in_its_batch() -> None:
    rec = Recorder()
    rec.release.clear()
    rec.failing_keys = {"c"}
    batcher = Batcher(rec.one, rec.many)
    tasks = [asyncio.create_task(batcher.load(k)) for k in "abcd"]
    await asyncio.sleep(0.01)
    rec.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "A"
    assert results[1] == "B"
    assert results[3] == "D"
    assert isinstance(results[2], LookupError)


async def test_a_cancelled_caller_leaves_a_batch_not_sent_yet() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec.one, rec.many)
    lone = asyncio.create_task(batcher.load("a"))
    await asyncio.sleep(0)
    waiting = {k: asyncio.create_task(batcher.load(k)) for k in "bcd"}
    await asyncio.sleep(0)
    waiting["c"].cancel()
    rec.release.set()
    assert await lone == "A"
    assert await waiting["b"] == "B"
    assert await waiting["d"] == "D"
    assert rec.sent == [["a"], ["b", "d"]]


async def test_a_cancelled_caller_does_not_cancel_the_batch_in_flight_for_the_others() -> None:
    rec = Recorder()
    lone_gate = asyncio.Event()

    async def one(key: str) -> str:
        rec.sent.append([key])
        await lone_gate.wait()
        return key.upper()

    rec.release.clear()
    batcher = Batcher(one, rec.many)
    lone = asyncio.create_task(batcher.load("a"))
    await asyncio.sleep(0)
    b, c = asyncio.create_task(batcher.load("b")), asyncio.create_task(batcher.load("c"))
    await asyncio.sleep(0)
    lone_gate.set()  # the lone read lands; the batch goes out, and is held
    await asyncio.sleep(0.01)
    assert rec.sent[-1] == ["b", "c"]  # the batch is in flight, held
    b.cancel()
    await asyncio.sleep(0)
    rec.release.set()
    assert await c == "C"
    assert await lone == "A"
    assert not rec.many_cancelled
    with pytest.raises(asyncio.CancelledError):
        await b


async def test_max_batch_1_turns_batching_off() -> None:
    rec = Recorder()
    rec.release.clear()
    batcher = Batcher(rec.one, rec.many, max_batch=1)
    tasks = [asyncio.create_task(batcher.load(k)) for k in "abc"]
    await asyncio.sleep(0.01)
    assert rec.sent == [["a"], ["b"], ["c"]]  # all at once, each alone
    rec.release.set()
    assert await asyncio.gather(*tasks) == ["A", "B", "C"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_a_bad_batch_size_is_refused_with_its_name(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="batch_size"):
        RedisCache("redis://127.0.0.1:6379", batch_size=bad)  # type: ignore[arg-type]


# ---- the Redis tier, against a real Redis ----------------------------------------------------------


def record(bot_id: str, n: int = 0) -> Registration:
    return Registration(bot_id, freeze({"n": n, "name": bot_id}))


@pytest.fixture
async def tier(redis_url: str, namespace: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(redis_url, namespace=namespace, ttl=300)
    await cache.initialize()
    yield cache
    await cache.clear()
    await cache.close()


async def test_concurrent_lookups_of_many_bots_share_one_round_trip(tier: RedisCache) -> None:
    ids = [f"bot-{i}" for i in range(50)]
    found = await asyncio.gather(*map(tier.lookup, ids))
    assert all(what is None and isinstance(token, tuple) for what, token in found)
    lookups = tier.batch_stats["lookups"]
    assert lookups["single"] == 1
    assert lookups["batches"] == 1
    assert lookups["batched_keys"] == 49
    # The fills that follow go back in one script call too, each with its own token.
    await asyncio.gather(*(tier.fill(b, record(b), token) for b, (_, token) in zip(ids, found, strict=True)))
    fills = tier.batch_stats["fills"]
    assert fills["single"] == 1
    assert fills["batches"] == 1
    assert fills["batched_keys"] == 49
    again = await asyncio.gather(*map(tier.lookup, ids))
    assert [what.bot_id for what, _ in again] == ids  # type: ignore[union-attr]
    assert tier.stats.fills == 50


async def test_a_batched_fill_is_refused_for_exactly_the_bots_written_meanwhile(tier: RedisCache) -> None:
    ids = [f"bot-{i}" for i in range(10)]
    found = await asyncio.gather(*map(tier.lookup, ids))
    await tier.invalidate("bot-3")  # a write of bot-3 reached the tier after its lookup
    await tier.invalidate("bot-7")
    await asyncio.gather(
        *(tier.fill(b, None if b == "bot-5" else record(b), t) for b, (_, t) in zip(ids, found, strict=True))
    )
    after = dict(zip(ids, await asyncio.gather(*map(tier.lookup, ids)), strict=True))
    assert after["bot-3"][0] is None
    assert after["bot-7"][0] is None
    assert after["bot-5"][0] is ABSENT  # the remembered miss, from the same batch
    assert all(isinstance(after[b][0], Registration) for b in ids if b not in ("bot-3", "bot-5", "bot-7"))


async def test_a_corrupt_value_in_a_batch_is_a_miss_for_that_bot_only(
    tier: RedisCache, redis_url: str
) -> None:
    ids = [f"bot-{i}" for i in range(6)]
    found = await asyncio.gather(*map(tier.lookup, ids))
    await asyncio.gather(*(tier.fill(b, record(b), t) for b, (_, t) in zip(ids, found, strict=True)))
    client = aioredis.from_url(redis_url)
    try:
        await client.set(f"{{{tier.namespace}}}:c:bot-2", b"\xff not json")
    finally:
        await client.aclose()
    after = await asyncio.gather(*map(tier.lookup, ids))
    assert after[2][0] is None
    assert isinstance(after[2][1], tuple)
    assert all(isinstance(what, Registration) for i, (what, _) in enumerate(after) if i != 2)


# ---- a whole stack, cold, under a burst --------------------------------------------------------------


async def test_a_burst_of_cold_reads_is_batched_and_trips_no_breaker(make_stack: MakeStack) -> None:
    """10,000 tasks used to exhaust the Redis tier's connection pool, which counted as an outage,
    opened the breaker and sent the burst to PostgreSQL. Batched, a burst needs a few connections."""
    writer = await make_stack(coherence=False)
    n = 3000
    ids = [f"bot-{i:05d}" for i in range(n)]
    sem = asyncio.Semaphore(32)

    async def put(bot_id: str) -> None:
        async with sem:
            await writer.store.register(bot_id, {"name": bot_id})

    await asyncio.gather(*map(put, ids))
    reader = await make_stack(coherence=False)
    configs = await asyncio.gather(*map(reader.get_config, ids))
    assert [c["name"] for c in configs] == ids  # type: ignore[index]
    redis_stats = reader.stats()["redis"]
    assert redis_stats["errors"] == 0
    assert redis_stats["misses"] == n
    (redis_tier,) = [t for t in reader.tiers if isinstance(t, RedisCache)]
    lookups = redis_tier.batch_stats["lookups"]
    assert lookups["batches"] + lookups["single"] < n / 10  # few round trips, each many keys
    assert reader.health()["tiers"]["redis"]["status"] == "up"
    # The next reader finds them all in Redis.
    third = await make_stack(local=False, coherence=False)
    assert await asyncio.gather(*map(third.get_config, ids)) == configs
    assert third.stats()["redis"]["hits"] == n


async def test_get_many_on_a_stack_reads_local_hits_and_batches_the_rest(make_stack: MakeStack) -> None:
    stack = await make_stack(coherence=False)
    for i in range(5):
        await stack.register(f"bot-{i}", {"n": i})
    await stack.invalidate("bot-3")  # not cached anywhere now
    found = await stack.get_many(["bot-3", "nope", "bot-0", "bot-4", "bot-0"])
    assert list(found) == ["bot-3", "bot-0", "bot-4"]
    assert found["bot-3"].config == {"n": 3}
    assert await stack.get_configs(["bot-1", "missing"]) == {"bot-1": {"n": 1}}


async def test_register_many_reaches_every_tier_and_every_process_in_one_message(
    make_stack: MakeStack,
) -> None:
    writer, reader = await make_stack(), await make_stack()
    ids = [f"bot-{i}" for i in range(40)]
    await writer.register_many({bot_id: {"v": 1} for bot_id in ids})
    assert await reader.get_configs(ids) == {bot_id: {"v": 1} for bot_id in ids}  # now cached in reader
    published = writer.stats()["channel"]["published"]
    (tier,) = [t for t in writer.tiers if isinstance(t, RedisCache)]
    fills_before = tier.stats.fills
    records = await writer.register_many([(bot_id, {"v": 2}) for bot_id in ids])
    assert [r.config for r in records] == [{"v": 2}] * len(ids)
    assert writer.stats()["channel"]["published"] == published + 1  # one message for 40 bots
    assert tier.stats.fills == fills_before + len(ids)  # one pipeline put them all into Redis
    deadline = asyncio.get_running_loop().time() + 2
    while await reader.get_configs(ids) != {bot_id: {"v": 2} for bot_id in ids}:
        assert asyncio.get_running_loop().time() < deadline, "the reader kept old configs"
        await asyncio.sleep(0.01)
    assert reader.stats()["channel"]["received"] >= 1
    third = await make_stack(local=False, coherence=False)
    assert await third.get_configs(ids) == {bot_id: {"v": 2} for bot_id in ids}
    assert third.stats()["redis"]["hits"] == len(ids)  # Redis holds the new values, not the old


async def test_a_message_for_many_bots_reads_as_everything_to_a_version_2_reader(
    make_stack: MakeStack, redis_url: str, namespace: str
) -> None:
    """A rolling deploy: a process that knows only ``k`` sees ``k: null`` and flushes its local
    tier; a version-3 reader drops just the bots named in ``ks``."""
    reader = await make_stack()
    await reader.register("a", {"v": 1})
    await reader.get_config("a")
    assert reader.stats()["local"]["entries"] == 1
    channel = InvalidationChannel(redis_url, namespace=namespace)
    raw = aioredis.from_url(redis_url)
    pubsub = raw.pubsub()
    try:
        await pubsub.subscribe(channel.channel)
        await channel.start()
        assert await channel.publish_many([("x", "updated"), ("y", "registered")])
        message = None
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=2)
            assert message is not None, "no message on the channel"
        fields = orjson.loads(message["data"])
        assert fields["k"] is None
        assert fields["e"] == "resync"
        assert fields["ks"] == ["x", "y"]
        assert fields["es"] == ["updated", "registered"]
    finally:
        await channel.stop()
        await pubsub.aclose()
        await raw.aclose()
    deadline = asyncio.get_running_loop().time() + 2
    while reader.stats()["channel"]["received"] < 1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert reader.stats()["local"]["entries"] == 1  # "a" is not among them: kept


async def test_closing_fails_the_waiting_callers_with_a_clear_error_not_a_cancellation() -> None:
    rec = Recorder()
    rec.release.clear()  # holds every batch
    lone_gate = asyncio.Event()

    async def one(key: str) -> str:
        await lone_gate.wait()
        return key.upper()

    batcher = Batcher(one, rec.many)
    lone = asyncio.create_task(batcher.load("a"))
    await asyncio.sleep(0)
    in_batch = asyncio.create_task(batcher.load("b"))
    await asyncio.sleep(0)
    lone_gate.set()
    assert await lone == "A"
    await asyncio.sleep(0.01)
    assert rec.sent == [["b"]]  # the batch holding "b" is in flight, held
    late = asyncio.create_task(batcher.load("c"))  # waits behind it
    await asyncio.sleep(0)
    await batcher.close()
    for task in (in_batch, late):
        with pytest.raises(BackendClosedError):
            await task
