"""``get_config`` hot path of every backend combination, next to the raw floors, with pytest-benchmark.

Run: ``pytest benchmarks/ --benchmark-only`` (add ``--benchmark-columns=min,median,mean,ops`` to
taste). The stacks are the ones ``tiered-registry bench`` measures (:data:`tiered_registry.bench.STACKS`).

Two groups, so that only like is compared with like:

- **in-process (per call)**: the stacks whose hot read never suspends (a local-cache hit, the
  memory store) and the async-dict floor. Each call drives one ``get_config`` coroutine to
  completion with ``coro.send(None)`` -- no event loop -- and the figures are per call (rounds of
  100 calls timed together). They include the harness's own cost (a Python call, ``next()`` on
  the key cycle, the driver): compare rows within the group; the floor row shows that cost.
- **network (per batch of 100 awaits)**: the stacks whose hot read is a round trip, with the raw
  redis-py GET and asyncpg SELECT floors. Each round is ``loop.run_until_complete`` of a coroutine
  awaiting 100 calls: divide the figures by 100 for a per-call latency.

Which group a stack falls in is decided by trying one call, not hard-coded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any, Final

import pytest

from tiered_registry.bench.floors import dict_floor, pg_select_floor, redis_get_floor
from tiered_registry.bench.measure import Call, completes_synchronously, drive
from tiered_registry.bench.stacks import STACKS, close_stack, open_stack, populate, remove_namespace
from tiered_registry.bench.workload import bot_ids, key_sequence, make_config
from tiered_registry.errors import ConfigurationError

BOTS: Final = 1000
BATCH: Final = 100
ROUNDS: Final = 1000  # in-process group: rounds of ITERATIONS calls each
ITERATIONS: Final = 100
GROUP_IN_PROCESS: Final = "get_config hot path: in-process (per call)"
GROUP_NETWORK: Final = f"get_config hot path: network (per batch of {BATCH} awaits)"

IDS: Final = bot_ids(BOTS)
CONFIGS: Final = [make_config(2048, i) for i in range(64)]
KEYS: Final = key_sequence(IDS, 20_000, "uniform", seed=0)


def _benchmark_calls(benchmark: Any, loop: asyncio.AbstractEventLoop, call: Call) -> None:
    """Benchmark ``call`` per call (if it completes without suspending) or per batch of awaits."""
    keys = itertools.cycle(KEYS)
    if completes_synchronously(lambda: call(KEYS[0]), loop):
        benchmark.group = GROUP_IN_PROCESS
        benchmark.extra_info["timed"] = "one call, driven without an event loop"

        def one_call() -> Any:
            return drive(call(next(keys)), loop)  # finished on the loop in the rare case it suspends

        # Rounds of ITERATIONS calls timed together: one clock read per round, not per ~µs call.
        benchmark.pedantic(one_call, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=10)
    else:
        benchmark.group = GROUP_NETWORK
        benchmark.extra_info["timed"] = f"one batch of {BATCH} awaits on a persistent loop"

        async def batch() -> None:
            for _ in range(BATCH):
                await call(next(keys))

        benchmark(lambda: loop.run_until_complete(batch()))


async def _warm(call: Call) -> None:
    for bot_id in IDS:
        await call(bot_id)


@contextlib.contextmanager
def _entered(
    loop: asyncio.AbstractEventLoop, manager: contextlib.AbstractAsyncContextManager[Call]
) -> Iterator[Call]:
    call = loop.run_until_complete(manager.__aenter__())
    try:
        yield call
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))


@pytest.mark.parametrize("name", list(STACKS))
def test_get_config(
    benchmark: Any,
    name: str,
    request: pytest.FixtureRequest,
    bench_loop: asyncio.AbstractEventLoop,
    namespace: str,
) -> None:
    spec = STACKS[name]
    redis_url = request.getfixturevalue("redis_url") if "redis" in spec.needs else None
    postgres_dsn = request.getfixturevalue("database_url") if "postgres" in spec.needs else None
    try:
        backend = bench_loop.run_until_complete(
            open_stack(spec, namespace, redis_url=redis_url, postgres_dsn=postgres_dsn, bots=BOTS)
        )
    except ConfigurationError as exc:  # a module of an optional extra is missing
        pytest.skip(f"{name}: {exc}")
    problems: list[str] = []
    try:
        bench_loop.run_until_complete(populate(backend, IDS, CONFIGS))
        bench_loop.run_until_complete(_warm(backend.get_config))
        benchmark.extra_info["stack"] = spec.label
        _benchmark_calls(benchmark, bench_loop, backend.get_config)
    finally:
        problems += bench_loop.run_until_complete(close_stack(backend))
        tables = [namespace] if spec.store == "postgres" else []
        problems += bench_loop.run_until_complete(
            remove_namespace(namespace, redis_url=redis_url, postgres_dsn=postgres_dsn, tables=tables)
        )
    assert not problems


def test_floor_async_dict(benchmark: Any, bench_loop: asyncio.AbstractEventLoop) -> None:
    """``async def f(k): return d.get(k)``, awaited: the least any async get_config can cost."""
    with _entered(bench_loop, dict_floor(IDS, CONFIGS[0])) as call:
        benchmark.extra_info["stack"] = "floor: async dict lookup"
        _benchmark_calls(benchmark, bench_loop, call)


def test_floor_redis_get(
    benchmark: Any, bench_loop: asyncio.AbstractEventLoop, redis_url: str, namespace: str
) -> None:
    """redis-py GET of an encoded registration (the bytes a Redis tier stores)."""
    with _entered(bench_loop, redis_get_floor(redis_url, namespace, IDS, CONFIGS[0])) as call:
        benchmark.extra_info["stack"] = "floor: redis-py GET"
        _benchmark_calls(benchmark, bench_loop, call)


def test_floor_asyncpg_select(
    benchmark: Any, bench_loop: asyncio.AbstractEventLoop, database_url: str, namespace: str
) -> None:
    """asyncpg prepared SELECT of the same config by primary key, on one held connection."""
    with _entered(bench_loop, pg_select_floor(database_url, f"{namespace}_floor", IDS, CONFIGS[0])) as call:
        benchmark.extra_info["stack"] = "floor: asyncpg prepared SELECT"
        _benchmark_calls(benchmark, bench_loop, call)
