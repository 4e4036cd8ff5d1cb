"""Memory per cached bot: a bot in the local tier costs at most 1.2x the plain ``orjson.loads`` tree.

Measured the way the bench measures it (:mod:`tiered_registry.bench.memory`, tracemalloc): 2 KB
configs read from PostgreSQL into an empty ``LocalCache``, against the plain trees of the same
payloads, in the same process. 10,000 bots keep it at a few seconds (the per-bot cost is lower
at 100,000: the dicts' spare slots amortize; ``tiered-registry bench --at-size 100000`` shows it).
"""

from __future__ import annotations

from typing import Final

import orjson

from tiered_registry import LocalCache
from tiered_registry.bench.memory import cached_bytes_per_bot, plain_tree_bytes
from tiered_registry.bench.workload import bot_ids, make_config

from .conftest import MakeStack

BOTS: Final = 10_000
LOAD_CHUNK: Final = 5_000
TARGET: Final = 1.2


async def _cached_vs_plain(make_stack: MakeStack, local: LocalCache) -> tuple[float, float]:
    ids = bot_ids(BOTS)
    payloads = [orjson.dumps(make_config(2048, i)) for i in range(BOTS)]
    stack = await make_stack(redis=None, local=local, coherence=False)
    for start in range(0, BOTS, LOAD_CHUNK):  # into the store only: the local tier stays empty
        chunk = range(start, min(start + LOAD_CHUNK, BOTS))
        await stack.store.register_many([(ids[i], orjson.loads(payloads[i])) for i in chunk])
    plain = plain_tree_bytes(payloads)
    cached = await cached_bytes_per_bot(stack, ids)
    assert len(local) == BOTS
    return cached, plain


async def test_a_cached_bot_costs_at_most_1_2x_its_plain_tree(make_stack: MakeStack) -> None:
    cached, plain = await _cached_vs_plain(make_stack, LocalCache(maxsize=2 * BOTS, ttl=3600))
    assert cached <= TARGET * plain, f"{cached:.0f} bytes per cached bot, plain tree {plain:.0f}"


async def test_max_bytes_estimates_what_tracemalloc_measures(make_stack: MakeStack) -> None:
    local = LocalCache(maxsize=2 * BOTS, ttl=3600, max_bytes=2**40)
    cached, plain = await _cached_vs_plain(make_stack, local)
    assert cached <= TARGET * plain, f"{cached:.0f} bytes per cached bot, plain tree {plain:.0f}"
    assert local.bytes_used is not None
    estimate = local.bytes_used / BOTS
    assert 0.8 * cached <= estimate <= 1.25 * cached, f"estimated {estimate:.0f}, measured {cached:.0f}"
