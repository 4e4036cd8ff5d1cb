"""Redis Cluster: the cache tier spread over every master, clear() across all of them, the
invalidation channel over sharded (and classic) pub/sub, and a master restart.

Needs a real cluster (``REDIS_CLUSTER_URL``; ``.ci/run`` starts one with
``.ci/start-redis-cluster``): skipped, saying so, without one. The contract suite, the coherence
and the model tests run on cluster stacks too (``tests/contract/conftest.py``, ``test_model.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from tiered_registry import TieredBackend
from tiered_registry.coherence import InvalidationChannel
from tiered_registry.frozen import freeze
from tiered_registry.keyspace import CLUSTER_GROUPS, KeySpace
from tiered_registry.models import Registration
from tiered_registry.redis_client import is_cluster, make_client
from tiered_registry.tiers.redis import RedisCache

from .test_coherence import test_a_write_in_one_instance_evicts_the_others_local_copy

START_CLUSTER = Path(__file__).parents[1] / ".ci" / "start-redis-cluster"
CLUSTER_DIR = Path("/tmp/tiered-registry-cluster")


def restartable(port: int) -> bool:
    """Whether this node was started by .ci/start-redis-cluster (so it can be started again)."""
    return START_CLUSTER.exists() and (CLUSTER_DIR / str(port) / "nodes.conf").exists()


async def shut_down(port: int) -> None:
    """Stop one cluster node at once (no save: it comes back empty, as after a crash)."""
    await asyncio.to_thread(
        subprocess.run, ["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False, capture_output=True
    )


async def start_again(port: int) -> None:
    """Start a node that :func:`shut_down` stopped; it rejoins with its nodes.conf."""
    command = [str(START_CLUSTER), "node", str(port)]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)


@pytest.fixture
async def cluster(redis_cluster_url: str) -> Any:
    client, _ = make_client(redis_cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def make_cluster_stack(make_stack, redis_cluster_url):
    """``local -> redis-cluster cache -> postgres`` instances on the test's namespace."""

    async def make(**options: Any) -> TieredBackend:
        return await make_stack(redis=redis_cluster_url, **options)

    return make


def test_a_namespace_has_one_group_per_slot_share() -> None:
    space = KeySpace("tiered_registry", CLUSTER_GROUPS)
    from redis.crc import key_slot

    slots = [key_slot(tag.encode()) for tag in space.tags]
    for group, slot in enumerate(slots):
        assert group * 16384 // CLUSTER_GROUPS <= slot < (group + 1) * 16384 // CLUSTER_GROUPS
    assert KeySpace("tiered_registry", 1).tags == ("{tiered_registry}",)
    assert space.pattern(":c:*") == "{tiered_registry:*}:c:*"


async def test_a_cluster_url_gives_a_cluster_client(redis_cluster_url) -> None:
    client, owned = make_client(redis_cluster_url)
    try:
        assert owned
        assert is_cluster(client)
        assert await client.ping()
    finally:
        await client.aclose()


async def test_the_cache_tier_spreads_a_namespace_over_every_master(make_cluster_stack, cluster) -> None:
    stack = await make_cluster_stack()
    await stack.register_many({f"bot{i}": {"i": i} for i in range(300)})
    tier = stack.tiers[1]
    assert isinstance(tier, RedisCache)
    per_master = {}
    for node in cluster.get_primaries():
        master = aioredis.Redis(host=node.host, port=node.port)
        try:
            keys = [k async for k in master.scan_iter(match=f"{{{tier.namespace}:*}}:c:*", count=1000)]
        finally:
            await master.aclose()
        per_master[node.name] = len(keys)
    assert len(per_master) >= 3
    assert sum(per_master.values()) == 300
    assert min(per_master.values()) > 300 / len(per_master) / 2, per_master  # roughly even


async def test_clear_refuses_fills_in_flight_in_every_group(make_cluster_stack, database_url) -> None:
    stack = await make_cluster_stack()
    tier = stack.tiers[1]
    assert isinstance(tier, RedisCache)
    bots = [f"cold{i}" for i in range(40)]  # over many groups, so over every master
    assert len({tier._keys.group(b) for b in bots}) > 20
    tokens = [(await tier.lookup(b))[1] for b in bots]  # misses: the tokens a fill would carry
    await tier.clear()
    for bot_id, token in zip(bots, tokens, strict=True):
        record = Registration(bot_id, freeze({"stale": True}))
        await tier.fill(bot_id, record, token)
    assert [(await tier.lookup(b))[0] for b in bots] == [None] * len(bots)  # every fill refused
    assert tier.stats.fills == 0


async def test_a_batch_of_lookups_and_fills_across_slots(redis_cluster_url, namespace) -> None:
    tier = RedisCache(redis_cluster_url, ttl=60, namespace=namespace)
    await tier.initialize()
    try:
        bots = [f"b{i}" for i in range(200)]
        misses = await asyncio.gather(*(tier.lookup(b) for b in bots))
        assert all(found is None for found, _ in misses)
        await asyncio.gather(
            *(
                tier.fill(b, Registration(b, freeze({"n": i})), token)
                for i, (b, (_, token)) in enumerate(zip(bots, misses, strict=True))
            )
        )
        hits = await asyncio.gather(*(tier.lookup(b) for b in bots))
        assert [found.config["n"] for found, _ in hits] == list(range(200))  # type: ignore[union-attr]
        assert tier.batch_stats["lookups"]["batches"] > 0  # they did share round trips
    finally:
        await tier.clear()
        await tier.close()


async def test_invalidations_cross_processes_over_sharded_pubsub(make_cluster_stack) -> None:
    await test_a_write_in_one_instance_evicts_the_others_local_copy(make_cluster_stack)


async def test_invalidations_cross_processes_over_classic_pubsub_too(
    make_cluster_stack, redis_cluster_url, namespace
) -> None:
    async def make() -> TieredBackend:
        channel = InvalidationChannel(redis_cluster_url, namespace=namespace, sharded=False)
        assert not channel.sharded
        return await make_cluster_stack(coherence=channel)

    await test_a_write_in_one_instance_evicts_the_others_local_copy(make)


async def _wait_for(check: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout}s")
        await asyncio.sleep(0.02)


async def test_a_master_restart_keeps_reads_working_and_the_channel_recovers(
    make_cluster_stack, cluster, namespace
) -> None:
    """Shut down the master that serves the invalidation channel, keep reading, start it again:
    no read fails (the tier is skipped, the store answers), the channel goes down and comes back,
    and a write after that reaches the other instance."""
    if not START_CLUSTER.exists():
        pytest.skip(f"{START_CLUSTER} is needed to restart a node")
    writer, reader = await make_cluster_stack(), await make_cluster_stack()
    await writer.register_many({f"bot{i}": {"v": 1} for i in range(50)})
    for i in range(50):
        assert await reader.get_config(f"bot{i}") == {"v": 1}
    channel = reader._coherence
    assert channel is not None
    assert channel.is_up
    node = cluster.get_node_from_key(channel.channel)
    port = node.port
    if not restartable(port):
        pytest.skip("the cluster was not started by .ci/start-redis-cluster: cannot restart its node")
    await shut_down(port)
    try:
        await _wait_for(lambda: not channel.is_up)
        for i in range(50):  # local tier bypassed, the tier may fail: the store answers
            assert await reader.get_config(f"bot{i}") == {"v": 1}
    finally:
        await start_again(port)
    await _wait_for(lambda: channel.is_up, timeout=30)
    await writer.register("bot0", {"v": 2})
    for _ in range(500):
        if await reader.get_config("bot0") == {"v": 2}:
            break
        await asyncio.sleep(0.01)
    assert await reader.get_config("bot0") == {"v": 2}


def test_a_cluster_client_passed_in_is_used_as_is(redis_cluster_url) -> None:
    client = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster", "redis"))
    tier = RedisCache(client, namespace="x")
    assert tier._keys.groups == CLUSTER_GROUPS
    decoding = RedisCluster.from_url(
        redis_cluster_url.replace("redis+cluster", "redis"), decode_responses=True
    )
    from tiered_registry.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="decode_responses"):
        make_client(decoding)


async def test_a_burst_on_a_new_cluster_client_reaches_the_right_masters(
    redis_cluster_url, namespace
) -> None:
    """Commands started together on a client that has not fetched the slots yet: redis-py 8.1
    sent them all to one node (MOVED), and every 5th MOVED closed every connection in use
    (``'NoneType' object has no attribute 'writelines'``). The library's client fetches the
    slots first: every command of the burst succeeds (first seen in ``tiered-registry bench``,
    whose set-up registers 32 bots at once through a cluster tier)."""
    client, _ = make_client(redis_cluster_url, socket_timeout=0.5, connect_timeout=0.5, retries=0)
    try:
        keys = [f"{{{namespace}:{i}}}:k" for i in range(64)]
        results = await asyncio.gather(*(client.mget(key, key + "2") for key in keys), return_exceptions=True)
        assert results == [[None, None]] * len(keys)
    finally:
        await client.aclose()
