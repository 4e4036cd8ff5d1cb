"""The local hit at size: ``get_config`` with 100,000 bots cached, next to the same with 1,000.

Run: ``pytest benchmarks/test_at_size.py --benchmark-only``. One group, per call (rounds of 100
calls driven without an event loop, as the in-process group of ``test_get_config.py``); the
ratio of the two medians is what size costs a hit (issue #15's target: at most 1.3x; an awaited
``dict.get`` at the same two sizes is in the group too, for what size costs any dict). Reads are
uniform over copies of the ids (equal strings, other objects: as a server's requests bring them).
``BENCH_AT_SIZE`` sets the large size (the smoke test uses a small one).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from typing import Any, Final

import pytest

from tiered_registry import InMemoryBackend, LocalCache, TieredBackend
from tiered_registry.bench.measure import drive
from tiered_registry.bench.workload import bot_ids, key_sequence, make_config
from tiered_registry.frozen import freeze

SMALL: Final = 1000
LARGE: Final = int(os.environ.get("BENCH_AT_SIZE", "100000"))
GROUP: Final = "get_config local hit at size (per call)"
CONFIGS: Final = [make_config(2048, i) for i in range(64)]


def _keys(ids: list[str]) -> list[str]:
    copies = {bot_id: "".join(bot_id) for bot_id in ids}
    return [copies[bot_id] for bot_id in key_sequence(ids, 200_000, "uniform", seed=0)]


@pytest.fixture(scope="module", params=[SMALL, LARGE], ids=["small", "large"])
def cached(
    request: pytest.FixtureRequest, bench_loop: asyncio.AbstractEventLoop
) -> Iterator[tuple[Any, int]]:
    """A local → memory stack with ``param`` bots registered (write-through: all cached)."""
    size: int = request.param
    ids = bot_ids(size, prefix=f"at{size}")
    stack = TieredBackend(
        tiers=[LocalCache(maxsize=2 * size, ttl=3600)], store=InMemoryBackend(), coherence=False
    )
    bench_loop.run_until_complete(stack.initialize())
    try:
        for start in range(0, size, 5000):
            chunk = range(start, min(start + 5000, size))
            bench_loop.run_until_complete(stack.register_many([(ids[i], CONFIGS[i % 64]) for i in chunk]))
        yield stack, size
    finally:
        bench_loop.run_until_complete(stack.close())


def _per_call(benchmark: Any, loop: asyncio.AbstractEventLoop, call: Any, keys: list[str]) -> None:
    cycle = itertools.cycle(keys)
    for key in keys[:20_000]:  # warm
        drive(call(key), loop)

    def one_call() -> Any:
        return drive(call(next(cycle)), loop)

    benchmark.group = GROUP
    benchmark.pedantic(one_call, rounds=1000, iterations=100, warmup_rounds=10)


def test_local_hit(benchmark: Any, bench_loop: asyncio.AbstractEventLoop, cached: tuple[Any, int]) -> None:
    stack, size = cached
    benchmark.extra_info["cached_bots"] = size
    keys = _keys(bot_ids(size, prefix=f"at{size}"))
    assert drive(stack.get_config(keys[0]), bench_loop) is not None
    _per_call(benchmark, bench_loop, stack.get_config, keys)
    assert stack.stats()["local"]["entries"] == size


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
def test_floor_async_dict_at_size(benchmark: Any, bench_loop: asyncio.AbstractEventLoop, size: int) -> None:
    """``async def f(k): return d.get(k)`` over ``size`` keys (one shared config)."""
    ids = bot_ids(size, prefix=f"at{size}")
    table = dict.fromkeys(ids, freeze(CONFIGS[0]))

    async def lookup(bot_id: str) -> Any:
        return table.get(bot_id)

    benchmark.extra_info["cached_bots"] = size
    _per_call(benchmark, bench_loop, lookup, _keys(ids))
