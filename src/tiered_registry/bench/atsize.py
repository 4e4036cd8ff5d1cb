"""``tiered-registry bench --at-size N``: memory and the hot paths with N distinct bots cached.

The default run reads 1,000 bots: every one fits in the CPU's caches and in the Redis tier's
decode cache (1,024 payloads), so it cannot show what size costs. This step, opt-in because it
loads N bots (about 50 s at 100,000), measures:

- **memory per cached bot**: N distinct configs read from the store (PostgreSQL if available)
  into an empty local tier; the last :data:`MEMORY_SAMPLE` of them under tracemalloc (what one
  more bot costs with N already cached), against the plain ``orjson.loads`` trees of the same
  payloads; and the process's RSS growth per bot over the rest of the fill (allocator
  overhead and the fill's transient garbage included: what the operator sees);
- **local hit at size**: ``get_config`` with N bots cached against a stack with
  :data:`SMALL` cached, timed in alternation (same distribution of reads);
- **Redis-tier hit at size**: a Redis tier holding all N bots (far more than its decode cache),
  against a floor of a raw redis-py ``GET`` of the same document plus ``orjson.loads``.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..base import BackendBase
from ..codec import encode_registration
from ..frozen import freeze
from ..stores.memory import InMemoryBackend
from ..tiered import TieredBackend
from ..tiers.local import LocalCache
from .measure import Call, Latency, checkpoint, measure_paired
from .memory import cached_bytes_per_bot, peak_rss_bytes, plain_tree_bytes, rss_bytes
from .stacks import close_stack, remove_namespace
from .workload import Distribution, KeyStream, bot_ids, key_sequence, make_config

__all__ = ["AT_SIZE_STEPS", "MEMORY_SAMPLE", "SMALL", "AtSizeResult", "measure_at_size"]

SMALL: Final = 1000
"""Bots cached in the stack the local hit at size is compared with."""
MEMORY_SAMPLE: Final = 10_000
"""Bots read under tracemalloc (the last ones of the fill)."""
AT_SIZE_STEPS: Final = 4
_CHUNK: Final = 5000  # bots per register_many while loading
_FILL_CHUNK: Final = 1000  # bots per get_many while filling (bounds the transient garbage)
_KEYS: Final = 200_000  # reads drawn per key sequence


@dataclass(slots=True)
class AtSizeResult:
    """What :func:`measure_at_size` found (``None``: not measured, see ``errors``)."""

    bots: int
    store: str = "memory"
    load_seconds: float = 0.0
    fill_seconds: float = 0.0
    bytes_per_bot: float | None = None
    plain_bytes_per_bot: float | None = None
    rss_per_bot: float | None = None
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    local_hit: Latency | None = None
    local_hit_small: Latency | None = None
    dict_hit: Latency | None = None
    dict_hit_small: Latency | None = None
    redis_hit: Latency | None = None
    redis_floor: Latency | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def memory_ratio(self) -> float | None:
        """Bytes per cached bot ÷ the plain tree's (target: at most 1.2)."""
        return _ratio(self.bytes_per_bot, self.plain_bytes_per_bot)

    @property
    def local_ratio(self) -> float | None:
        """Local hit median with ``bots`` cached ÷ with :data:`SMALL` cached (target: at most 1.3)."""
        return _ratio(_median(self.local_hit), _median(self.local_hit_small))

    @property
    def dict_ratio(self) -> float | None:
        """The same for an awaited plain dict lookup: what size costs any dict (memory latency)."""
        return _ratio(_median(self.dict_hit), _median(self.dict_hit_small))

    @property
    def redis_ratio(self) -> float | None:
        """Redis-tier hit median ÷ the GET + ``orjson.loads`` floor's."""
        return _ratio(_median(self.redis_hit), _median(self.redis_floor))

    def to_dict(self) -> dict[str, Any]:
        def opt(latency: Latency | None) -> dict[str, Any] | None:
            return None if latency is None else latency.to_dict()

        def rounded(value: float | None, digits: int = 0) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "bots": self.bots,
            "store": self.store,
            "load_seconds": round(self.load_seconds, 3),
            "fill_seconds": round(self.fill_seconds, 3),
            "bytes_per_cached_bot": rounded(self.bytes_per_bot),
            "plain_tree_bytes_per_bot": rounded(self.plain_bytes_per_bot),
            "memory_ratio": rounded(self.memory_ratio, 3),
            "rss_growth_per_bot": rounded(self.rss_per_bot),
            "rss_bytes": self.rss_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "local_hit": opt(self.local_hit),
            "local_hit_small": opt(self.local_hit_small),
            "small_bots": SMALL,
            "local_ratio": rounded(self.local_ratio, 3),
            "dict_hit": opt(self.dict_hit),
            "dict_hit_small": opt(self.dict_hit_small),
            "dict_ratio": rounded(self.dict_ratio, 3),
            "redis_hit": opt(self.redis_hit),
            "redis_floor": opt(self.redis_floor),
            "redis_ratio": rounded(self.redis_ratio, 3),
            "errors": list(self.errors),
        }


def _median(latency: Latency | None) -> float | None:
    return None if latency is None else latency.median_ns


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None or theirs <= 0 else ours / theirs


async def _fill(backend: BackendBase, ids: Sequence[str]) -> None:
    for start in range(0, len(ids), _FILL_CHUNK):
        await backend.get_many(ids[start : start + _FILL_CHUNK])
        await checkpoint()


def _fresh(keys: Sequence[str]) -> list[str]:
    """Copies of the keys, as a server's requests bring them: equal to the cached keys, never the
    same objects (so both stacks compare strings, as in production, instead of matching identity)."""
    copies: dict[str, str] = {}
    return [copies.setdefault(key, "".join(key)) for key in keys]


async def _warm(call: Call, keys: Sequence[str]) -> None:
    for start in range(0, min(len(keys), 20_000), 256):
        for key in keys[start : start + 256]:
            await call(key)
        await checkpoint()


async def measure_at_size(
    bots: int,
    *,
    prefix: str,
    redis_url: str | None,
    postgres_dsn: str | None,
    config_size: int = 2048,
    distribution: Distribution = "uniform",
    duration: float = 1.0,
    seed: int = 0,
    step: Callable[[str], None] = lambda description: None,
    tables: list[str] | None = None,
) -> AtSizeResult:
    """Measure memory and hot paths with ``bots`` distinct bots (see the module docstring).

    Every key and table is named after ``prefix``; a PostgreSQL table is appended to ``tables``
    before it is created, so the caller's clean-up drops it whatever happens here.
    """
    result = AtSizeResult(bots)
    ids = bot_ids(bots, prefix=f"{prefix}-big")
    keys = _fresh(key_sequence(ids, max(_KEYS, 2 * bots), distribution, seed=seed))
    table = f"{prefix}_atsize"

    def configs(chunk: range) -> list[tuple[str, dict[str, Any]]]:
        return [(ids[i], make_config(config_size, i)) for i in chunk]

    step(f"at size: load {bots} bots")
    started = time.perf_counter()
    store: BackendBase
    if postgres_dsn is not None:
        from ..stores.postgres import PostgresBackend

        result.store = "postgres"
        if tables is not None:
            tables.append(table)
        async with PostgresBackend(postgres_dsn, table=table) as loader:
            for start in range(0, bots, _CHUNK):
                await loader.register_many(configs(range(start, min(start + _CHUNK, bots))))
        store = PostgresBackend(postgres_dsn, table=table)
    else:
        store = InMemoryBackend()
        result.errors.append(
            "no PostgreSQL: bytes per cached bot not measured (the local tier would share the "
            "memory store's records)"
        )
    result.load_seconds = time.perf_counter() - started

    step(f"at size: fill a local tier with {bots} bots, memory")
    large = TieredBackend(tiers=[LocalCache(maxsize=2 * bots, ttl=3600)], store=store, coherence=False)
    small = TieredBackend(
        tiers=[LocalCache(maxsize=2 * SMALL, ttl=3600)], store=InMemoryBackend(), coherence=False
    )
    async with large, small:
        if isinstance(store, InMemoryBackend):
            for start in range(0, bots, _CHUNK):
                await store.register_many(configs(range(start, min(start + _CHUNK, bots))))
        gc.collect()
        rss_before = rss_bytes()
        started = time.perf_counter()
        sample = min(MEMORY_SAMPLE, bots)
        await _fill(large, ids[: bots - sample])
        gc.collect()
        rss_after = rss_bytes()
        if rss_before is not None and rss_after is not None and bots - sample >= SMALL:
            result.rss_per_bot = (rss_after - rss_before) / (bots - sample)
        if result.store == "postgres":
            result.bytes_per_bot = await cached_bytes_per_bot(large, ids[bots - sample :])
            payloads = [orjson.dumps(config) for _, config in configs(range(bots - sample, bots))]
            result.plain_bytes_per_bot = plain_tree_bytes(payloads)
            del payloads
        else:
            await _fill(large, ids[bots - sample :])
        result.fill_seconds = time.perf_counter() - started

        step(f"at size: local hit, {bots} vs {SMALL} bots cached")
        small_ids = bot_ids(SMALL, prefix=f"{prefix}-small")
        await small.register_many([(b, make_config(config_size, i)) for i, b in enumerate(small_ids)])
        small_keys = _fresh(key_sequence(small_ids, _KEYS, distribution, seed=seed))
        await _warm(large.get_config, keys)
        await _warm(small.get_config, small_keys)
        gc.collect()
        hits_before = large.stats()["local"]["hits"]
        result.local_hit, result.local_hit_small = await measure_paired(
            large.get_config, KeyStream(keys), small.get_config, KeyStream(small_keys), duration=duration
        )
        reads = result.local_hit.samples * result.local_hit.per
        if large.stats()["local"]["hits"] - hits_before < 0.9 * reads:
            result.errors.append("the large local tier missed: its hit figures are not all local hits")
        result.dict_hit, result.dict_hit_small = await _dict_at_size(
            ids, keys, small_ids, small_keys, duration
        )

    step(f"at size: Redis-tier hit over {bots} bots")
    if redis_url is None:
        result.errors.append("no Redis: the Redis-tier hit at size was not measured")
    else:
        await _redis_at_size(result, ids, keys, prefix, redis_url, postgres_dsn, table, configs, duration)
    result.rss_bytes = rss_bytes()
    result.peak_rss_bytes = peak_rss_bytes()
    return result


async def _dict_at_size(
    ids: Sequence[str], keys: list[str], small_ids: Sequence[str], small_keys: list[str], duration: float
) -> tuple[Latency, Latency]:
    """An awaited ``dict.get`` over ``len(ids)`` keys against one over ``len(small_ids)``, timed in
    alternation: the floor of the local-hit comparison (the memory hierarchy's share)."""
    config = freeze(make_config(256))
    large, small = dict.fromkeys(ids, config), dict.fromkeys(small_ids, config)

    async def large_get(bot_id: str) -> Any:
        return large.get(bot_id)

    async def small_get(bot_id: str) -> Any:
        return small.get(bot_id)

    return await measure_paired(
        large_get, KeyStream(keys), small_get, KeyStream(small_keys), duration=duration
    )


async def _redis_at_size(
    result: AtSizeResult,
    ids: Sequence[str],
    keys: list[str],
    prefix: str,
    redis_url: str,
    postgres_dsn: str | None,
    table: str,
    configs: Callable[[range], list[tuple[str, dict[str, Any]]]],
    duration: float,
) -> None:
    """A Redis tier holding every bot (read from the store, or written through), timed against
    ``GET`` + ``orjson.loads`` of the same documents under keys of the floor's own."""
    from ..tiers.redis import RedisCache
    from .floors import redis_client

    store: BackendBase
    if postgres_dsn is not None:
        from ..stores.postgres import PostgresBackend

        store = PostgresBackend(postgres_dsn, table=table)
    else:
        store = InMemoryBackend()
    stack = TieredBackend(
        # a generous socket timeout: filling 100,000 bots on a busy machine is not an outage
        tiers=[RedisCache(redis_url, namespace=f"{prefix}_atsize_c", ttl=3600, socket_timeout=5.0)],
        store=store,
        coherence=False,
    )
    client = redis_client(redis_url)
    floor_prefix = f"{prefix}_atsize:floor:"
    try:
        await stack.initialize()
        for start in range(0, len(ids), _FILL_CHUNK):
            chunk = ids[start : start + _FILL_CHUNK]
            if postgres_dsn is None:
                found = {
                    r.bot_id: r for r in await stack.register_many(configs(range(start, start + len(chunk))))
                }
            else:
                found = await stack.get_many(chunk)  # from the store: fills the Redis tier
            await client.mset({floor_prefix + bot_id: encode_registration(r) for bot_id, r in found.items()})
            await checkpoint()
        get = client.get
        loads = orjson.loads

        async def floor(bot_id: str) -> Any:
            return loads(await get(floor_prefix + bot_id))

        half = len(keys) // 2
        hits_before = stack.stats()["redis"]["hits"]
        result.redis_hit, result.redis_floor = await measure_paired(
            stack.get_config, KeyStream(keys), floor, KeyStream(keys[half:] + keys[:half]), duration=duration
        )
        if stack.stats()["redis"]["hits"] - hits_before < 0.9 * result.redis_hit.samples:
            result.errors.append("the Redis tier missed: its hit figures are not all Redis hits")
    except Exception as exc:
        result.errors.append(f"Redis-tier hit at size failed: {type(exc).__name__}: {exc}")
    finally:
        result.errors.extend(await close_stack(stack))
        with contextlib.suppress(Exception):
            for start in range(0, len(ids), 1000):
                await client.unlink(*(floor_prefix + bot_id for bot_id in ids[start : start + 1000]))
        await client.aclose()
        # and whatever the tier keeps besides the bots (its epoch key): every key named after us
        result.errors.extend(
            await remove_namespace(f"{prefix}_atsize", redis_url=redis_url, postgres_dsn=None)
        )
