"""Warm start: the local tier's miss rate in the first second of Zipf traffic, with and without
``TieredBackend(preload=N)``.

    python benchmarks/warm_start.py [--bots 100000] [--preload 10000] [--dsn postgresql://...]

Loads ``--bots`` bots into a PostgreSQL table, gives them an access history drawn from the same
Zipf law the traffic uses (``last_accessed_at``, what the preload orders by), then starts two
fresh ``local -> postgres`` stacks, one with ``preload`` and one without, and sends each one
second of Zipf reads from 32 tasks: prints the time the preload took and each stack's local
misses in that second. The table is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import os
import random
import time
from datetime import UTC, datetime, timedelta

from tiered_registry import LocalCache, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend

TASKS = 32


def zipf_sampler(bots: int, seed: int) -> tuple[list[int], list[float]]:
    order = list(range(bots))
    random.Random(seed).shuffle(order)  # which bots are hot
    return order, list(itertools.accumulate(1 / (rank + 1) ** 1.1 for rank in range(bots)))


async def traffic(stack: TieredBackend, bots: int, seconds: float) -> tuple[int, int]:
    """(reads, local misses) of ``seconds`` of Zipf reads from :data:`TASKS` tasks."""
    order, cumulative = zipf_sampler(bots, 1)
    local = stack.tiers[0]
    before = local.stats.misses
    reads = 0
    deadline = time.monotonic() + seconds

    async def task(seed: int) -> None:
        nonlocal reads
        rng = random.Random(seed)
        total = cumulative[-1]
        while time.monotonic() < deadline:
            await stack.get_config(f"bot{order[bisect.bisect_left(cumulative, rng.random() * total)]:07d}")
            reads += 1

    await asyncio.gather(*(task(i) for i in range(TASKS)))
    return reads, local.stats.misses - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bots", type=int, default=100_000)
    parser.add_argument("--preload", type=int, default=10_000)
    parser.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()
    table = f"warm_{os.getpid()}"
    store = PostgresBackend(args.dsn, table=table)
    await store.initialize()
    try:
        config = {"name": "bot", "prompt": "x" * 2000}
        await store.load((f"bot{i:07d}", config) for i in range(args.bots))
        # An access history: recent accesses drawn from the traffic's own Zipf law.
        order, cumulative = zipf_sampler(args.bots, 1)
        rng = random.Random(2)
        now = datetime.now(UTC)
        times: dict[str, datetime] = {}
        for step in range(200_000):
            bot = f"bot{order[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]:07d}"
            times[bot] = now - timedelta(seconds=200_000 - step)
        await store._record_access_times(times)
        for preload in (0, args.preload):
            stack = TieredBackend(
                tiers=[LocalCache(maxsize=args.preload * 2, ttl=300)],
                store=PostgresBackend(args.dsn, table=table),
                preload=preload,
            )
            started = time.perf_counter()
            await stack.initialize()
            ready = time.perf_counter() - started
            reads, misses = await traffic(stack, args.bots, 1.0)
            await stack.close()
            print(
                f"preload={preload:>6}: initialize {ready:.2f} s; first second: {reads:,} reads, "
                f"{misses:,} local misses ({misses / max(1, reads):.1%})"
            )
    finally:
        await store.drop()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
