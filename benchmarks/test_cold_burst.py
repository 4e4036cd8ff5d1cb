"""A cold burst: 10,000 tasks each read a different bot through ``local -> redis-cache -> postgres``
with every tier empty (a deploy, a flush, a restart), batched and unbatched.

Run: ``pytest benchmarks/test_cold_burst.py --benchmark-only``. Each round empties the tiers
(``invalidate_all``, not timed), then times the burst: 10,000 ``get_config`` calls gathered at
once. ``batch_size=1`` on the Redis tier and the store turns batching off: one ``GET``, one
fill and one ``SELECT`` per bot. Compare the two rows (the target of issue #12: batched within
1/5 of the unbatched wall time).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import pytest

from tiered_registry import LocalCache, PostgresBackend, RedisCache, TieredBackend
from tiered_registry.bench.workload import bot_ids, make_config

BOTS: Final = 10_000
GROUP: Final = f"cold burst: {BOTS:,} distinct cold bots read by {BOTS:,} concurrent tasks"


@pytest.mark.parametrize("batch_size", [256, 1], ids=["batched", "unbatched"])
def test_cold_burst(
    benchmark: Any,
    batch_size: int,
    bench_loop: asyncio.AbstractEventLoop,
    redis_url: str,
    database_url: str,
    namespace: str,
) -> None:
    ids = bot_ids(BOTS)
    stack = TieredBackend(
        tiers=[
            LocalCache(maxsize=BOTS, ttl=300),
            RedisCache(redis_url, namespace=namespace, batch_size=batch_size),
        ],
        store=PostgresBackend(database_url, table=namespace, batch_size=batch_size),
        track_access=False,
    )
    run = bench_loop.run_until_complete
    run(stack.initialize())
    try:
        config = make_config(2048, 0)
        run(stack.register_many(dict.fromkeys(ids, config)))

        def empty_tiers() -> tuple[tuple[Any, ...], dict[str, Any]]:
            run(stack.invalidate_all())
            return (), {}

        async def burst() -> None:
            configs = await asyncio.gather(*map(stack.get_config, ids))
            assert all(c is not None for c in configs)

        benchmark.group = GROUP
        benchmark.extra_info["batch_size"] = batch_size
        benchmark.pedantic(lambda: run(burst()), setup=empty_tiers, rounds=5, warmup_rounds=1)
        # Unbatched, 10,000 reads open up to 100 Redis connections at once; on a busy machine some
        # connects time out, the breaker opens and part of the burst falls through to PostgreSQL
        # (one reason to batch). Batched, a burst needs a few connections and trips nothing.
        errors = stack.stats()["redis"]["errors"]
        benchmark.extra_info["redis_errors"] = errors
        if batch_size > 1:
            assert errors == 0
    finally:
        run(stack.clear())
        run(stack.store.drop())  # type: ignore[attr-defined]
        run(stack.close())
