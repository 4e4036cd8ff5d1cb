"""What one invalidation costs: Redis's CPU per message by subscriber count, one Redis against a
cluster with classic and with sharded pub/sub, and a subscribing process's CPU per message.

The inputs of the capacity model in docs/scaling.md. Run it against the local servers:

    python benchmarks/invalidation_cost.py [--redis-url URL] [--cluster-url redis+cluster://...]

Server CPU is read from each node's ``INFO cpu`` (``used_cpu_user + used_cpu_sys``) before and
after publishing N messages of the size the library sends (~200 bytes) while S plain subscriber
connections read them; publish round trips are timed from one client. Subscriber CPU is the time
the library's listener takes to handle one message in a process with a local tier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import orjson
import redis.asyncio as aredis

from tiered_registry import LocalCache, TieredBackend
from tiered_registry.coherence import InvalidationChannel
from tiered_registry.redis_client import make_client
from tiered_registry.stores.memory import InMemoryBackend

MESSAGES = 5_000
MESSAGE = orjson.dumps(
    {"v": 2, "s": "f" * 32, "n": 123456, "k": "bot-00012345", "e": "updated", "t": time.time()}
)


async def _cpu(nodes: list[aredis.Redis]) -> list[float]:
    out = []
    for node in nodes:
        info = await node.info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


async def _drain(pubsub: Any, expected: int) -> None:
    got = 0
    while got < expected:
        message = await pubsub.get_message(timeout=5)
        if message is None:
            return
        if message["type"] in ("message", "smessage"):
            got += 1


async def measure(
    publisher: Any,
    nodes: list[aredis.Redis],
    subscribe_to: aredis.Redis,
    channel: str,
    subscribers: int,
    *,
    sharded: bool,
) -> tuple[float, float]:
    """(µs of server CPU per message summed over ``nodes``, µs per publish round trip)."""
    pubsubs = []
    for _ in range(subscribers):
        pubsub = subscribe_to.pubsub()
        await (pubsub.ssubscribe(channel) if sharded else pubsub.subscribe(channel))
        await pubsub.get_message(timeout=1)
        pubsubs.append(pubsub)
    publish = publisher.spublish if sharded else publisher.publish
    readers = [asyncio.create_task(_drain(p, MESSAGES)) for p in pubsubs]
    before = await _cpu(nodes)
    started = time.perf_counter()
    for _ in range(MESSAGES):
        await publish(channel, MESSAGE)
    elapsed = time.perf_counter() - started
    await asyncio.gather(*readers)
    after = await _cpu(nodes)
    for pubsub in pubsubs:
        await pubsub.aclose()
    cpu = sum(a - b for a, b in zip(after, before, strict=True))
    return cpu / MESSAGES * 1e6, elapsed / MESSAGES * 1e6


async def subscriber_cost() -> float:
    """µs one listening process spends on one message for a bot in its local tier."""
    stack = TieredBackend(tiers=[LocalCache(maxsize=100_000, ttl=300)], store=InMemoryBackend())
    await stack.initialize()
    channel = InvalidationChannel("redis://127.0.0.1:1", namespace="cost")  # never connects
    stack._coherence = channel
    channel._on_invalidate = stack._remote_invalidation
    for i in range(1000):
        await stack.register(f"bot-{i:08d}", {"i": i})
    messages = [
        orjson.dumps(
            {"v": 2, "s": "other", "n": n, "k": f"bot-{n % 1000:08d}", "e": "updated", "t": time.time()}
        )
        for n in range(20_000)
    ]
    started = time.perf_counter()
    for message in messages:
        channel._handle(message)
    elapsed = time.perf_counter() - started
    await stack.close()
    return elapsed / len(messages) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--cluster-url", default=os.environ.get("REDIS_CLUSTER_URL"))
    args = parser.parse_args()
    counts = (1, 16, 64)
    rows: list[tuple[str, int, float, float]] = []
    single = aredis.Redis.from_url(args.redis_url)
    for s in counts:
        cpu, rtt = await measure(single, [single], single, "{cost}:inv", s, sharded=False)
        rows.append(("one Redis, PUBLISH", s, cpu, rtt))
    await single.aclose()
    if args.cluster_url:
        cluster, _ = make_client(args.cluster_url)
        await cluster.initialize()
        primaries = cluster.get_primaries()
        nodes = [aredis.Redis(host=n.host, port=n.port) for n in primaries]
        owner = cluster.get_node_from_key("{cost}:inv")
        other = next(n for n in primaries if n.name != owner.name)
        home = aredis.Redis(host=owner.host, port=owner.port)
        away = aredis.Redis(host=other.host, port=other.port)
        for s in counts:
            cpu, rtt = await measure(cluster, nodes, home, "{cost}:inv", s, sharded=True)
            rows.append((f"cluster of {len(nodes)}, SPUBLISH", s, cpu, rtt))
            # classic: subscribers on another node than the one the publish lands on
            cpu, rtt = await measure(cluster, nodes, away, "{cost}:inv", s, sharded=False)
            rows.append((f"cluster of {len(nodes)}, PUBLISH", s, cpu, rtt))
        for client in (*nodes, home, away):
            await client.aclose()
        await cluster.aclose()
    print(f"{MESSAGES} messages of {len(MESSAGE)} bytes each")
    print(f"{'setup':<28} {'subscribers':>11} {'server CPU µs/msg':>18} {'publish µs':>11}")
    for setup, s, cpu, rtt in rows:
        print(f"{setup:<28} {s:>11} {cpu:>18.1f} {rtt:>11.1f}")
    print(f"subscribing process: {await subscriber_cost():.2f} µs per message (local tier of 1,000 bots)")


if __name__ == "__main__":
    asyncio.run(main())
