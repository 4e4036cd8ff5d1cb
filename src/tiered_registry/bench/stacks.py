"""The backend combinations the benchmark measures, and how to build and tear each one down.

Shared by the ``tiered-registry bench`` command and the pytest-benchmark suite in ``benchmarks/``,
so both measure exactly the same stacks. Stacks are built through :func:`create_backend` (the
Redis and PostgreSQL classes are imported only when a stack needs them). Every stack gets its own
namespace: a Redis key prefix and/or a PostgreSQL table, removed by :func:`close_stack`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..base import BackendBase
from ..factory import create_backend
from ..redact import redact_url
from ..tiered import TieredBackend
from .measure import checkpoint

__all__ = [
    "CLEANUP_TIMEOUT",
    "CLUSTER_STACKS",
    "FLOOR_LABELS",
    "PGBOUNCER_STACKS",
    "STACKS",
    "FloorName",
    "ServiceName",
    "StackSpec",
    "close_stack",
    "open_stack",
    "parse_stacks",
    "populate",
    "remove_namespace",
    "stack_namespace",
]

logger = logging.getLogger(__name__)

ServiceName = Literal["redis", "postgres", "pgbouncer", "redis-cluster"]
FloorName = Literal["dict", "redis_get", "pg_select", "redis_cluster_get"]
FLOOR_LABELS: Final[dict[FloorName, str]] = {
    "dict": "async dict lookup",
    "redis_get": "redis-py GET",
    "pg_select": "asyncpg prepared SELECT",
    "redis_cluster_get": "RedisCluster GET",
}
CLEANUP_TIMEOUT: Final = 10.0
"""Seconds one cleanup step may take (a dead server must not hang an interrupted run)."""


_TIER_LABELS: Final = {"redis-cluster-cache": "redis-cluster"}


@dataclass(frozen=True, slots=True)
class StackSpec:
    """One combination: cache tiers (nearest first) in front of a store."""

    name: str  # command-line name, e.g. "local+redis-cache+postgres"
    tiers: tuple[Literal["local", "redis-cache", "redis-cluster-cache"], ...]
    store: Literal["memory", "redis-store", "postgres", "postgres-pgbouncer", "redis-cluster-store"]
    floor: FloorName  # the raw operation its hot path is compared with

    @property
    def label(self) -> str:
        """``local → redis-cache → postgres``; the Redis Cluster tier shows as ``redis-cluster``
        (``local → redis-cluster → postgres``: every label fits the tables' 80 columns)."""
        return " → ".join((*(_TIER_LABELS.get(tier, tier) for tier in self.tiers), self.store))

    @property
    def floor_behind_local(self) -> FloorName:
        """The floor of the tiers behind the local one (``floor`` if it has none): what its reads
        cost when the local tier misses, e.g. a working set larger than it."""
        if self.tiers[:1] != ("local",):
            return self.floor
        rest = self.name.split("+", 1)[1]
        return {**STACKS, **CLUSTER_STACKS}[rest].floor

    @property
    def needs(self) -> frozenset[ServiceName]:
        parts = {*self.tiers, self.store}
        needed: set[ServiceName] = set()
        if parts & {"redis-cache", "redis-store"}:
            needed.add("redis")
        if "postgres" in parts:
            needed.add("postgres")
        if "postgres-pgbouncer" in parts:
            needed.add("pgbouncer")
        if parts & {"redis-cluster-cache", "redis-cluster-store"}:
            needed.add("redis-cluster")
        return frozenset(needed)


def _spec(name: str, floor: FloorName) -> StackSpec:
    *tiers, store = name.split("+")
    return StackSpec(name, tuple(tiers), store, floor)  # type: ignore[arg-type]


STACKS: Final[dict[str, StackSpec]] = {
    spec.name: spec
    for spec in (
        _spec("memory", "dict"),
        _spec("redis-store", "redis_get"),
        _spec("postgres", "pg_select"),
        _spec("local+memory", "dict"),
        _spec("local+redis-store", "dict"),
        _spec("local+postgres", "dict"),
        _spec("redis-cache+postgres", "redis_get"),
        _spec("local+redis-cache+postgres", "dict"),
    )
}
"""Every combination, in the order they are measured and shown."""

PGBOUNCER_STACKS: Final[dict[str, StackSpec]] = {
    spec.name: spec for spec in (_spec("postgres-pgbouncer", "pg_select"),)
}
"""Measured only when asked for (``--pgbouncer-dsn``, or by name in ``--stacks``): the PostgreSQL
store through PgBouncer in transaction pool mode (``pgbouncer=True``), timed next to the same
asyncpg floor as ``postgres`` (a direct connection), so both rows compare with one baseline."""

CLUSTER_STACKS: Final[dict[str, StackSpec]] = {
    spec.name: spec
    for spec in (
        _spec("redis-cluster-store", "redis_cluster_get"),
        _spec("redis-cluster-cache+postgres", "redis_cluster_get"),
        _spec("local+redis-cluster-cache+postgres", "dict"),
    )
}
"""Measured only when asked for (``--redis-cluster-url``, or by name in ``--stacks``): the Redis
store and the Redis tier on a Redis Cluster (a ``redis+cluster://`` URL), their reads compared
with redis-py's own ``RedisCluster`` GET of the same bytes (``redis_cluster_get``)."""


def parse_stacks(text: str) -> list[StackSpec]:
    """``"all"`` or a comma-separated list of names (``→``/``>`` accepted for ``+``), in STACKS order."""
    every = {**STACKS, **PGBOUNCER_STACKS, **CLUSTER_STACKS}
    wanted: list[str] = []
    for raw in text.split(","):
        name = raw.strip().replace(" ", "").replace("→", "+").replace(">", "+")
        if not name:
            continue
        if name == "all":
            wanted.extend(STACKS)
        elif name in every:
            wanted.append(name)
        else:
            raise ValueError(f"unknown stack {raw.strip()!r}; choose from: all, {', '.join(every)}")
    if not wanted:
        raise ValueError("no stack selected")
    return [spec for name, spec in every.items() if name in wanted]


def stack_namespace(run_prefix: str, spec: StackSpec) -> str:
    """``<run prefix>_<stack>``: a valid Redis key prefix and PostgreSQL table name."""
    return f"{run_prefix}_{spec.name.replace('+', '_').replace('-', '_')}"


def build_stack(
    spec: StackSpec,
    namespace: str,
    *,
    redis_url: str | None,
    postgres_dsn: str | None,
    local_maxsize: int = 10_000,
    local_ttl: float = 300.0,
    pgbouncer_dsn: str | None = None,
    redis_cluster_url: str | None = None,
) -> BackendBase:
    """The uninitialized backend of ``spec``, on ``namespace`` (``pgbouncer_dsn``: a PgBouncer in
    transaction pool mode, for the ``postgres-pgbouncer`` store; ``redis_cluster_url``: a
    ``redis+cluster://`` URL, for the ``redis-cluster-*`` tier and store)."""

    def url(service: ServiceName, value: str | None) -> str:
        if value is None:
            raise ValueError(f"stack {spec.name} needs {service}, which is not available")
        return value

    store: dict[str, Any]
    if spec.store == "memory":
        store = {"type": "memory"}
    elif spec.store == "redis-store":
        store = {"type": "redis", "url": url("redis", redis_url), "namespace": namespace}
    elif spec.store == "redis-cluster-store":
        store = {"type": "redis", "url": url("redis-cluster", redis_cluster_url), "namespace": namespace}
    elif spec.store == "postgres-pgbouncer":
        dsn = url("pgbouncer", pgbouncer_dsn)
        store = {"type": "postgres", "dsn": dsn, "table": namespace, "pgbouncer": True}
    else:
        store = {"type": "postgres", "dsn": url("postgres", postgres_dsn), "table": namespace}
    tiers: list[dict[str, Any]] = []
    for tier in spec.tiers:
        if tier == "local":
            tiers.append({"type": "local", "maxsize": local_maxsize, "ttl": local_ttl})
        elif tier == "redis-cluster-cache":
            cluster = url("redis-cluster", redis_cluster_url)
            tiers.append({"type": "redis", "url": cluster, "namespace": f"{namespace}_c"})
        else:
            tiers.append({"type": "redis", "url": url("redis", redis_url), "namespace": f"{namespace}_c"})
    if not tiers:
        return create_backend(store)
    return create_backend({"tiers": tiers, "store": store})


async def open_stack(
    spec: StackSpec,
    namespace: str,
    *,
    redis_url: str | None,
    postgres_dsn: str | None,
    bots: int = 1000,
    local_maxsize: int | None = None,
    pgbouncer_dsn: str | None = None,
    redis_cluster_url: str | None = None,
) -> BackendBase:
    """Build and initialize ``spec``; closes what it opened if initializing fails.

    The local tier (if any) holds ``local_maxsize`` entries; by default enough for every bot.
    """
    backend = build_stack(
        spec,
        namespace,
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        local_maxsize=max(10_000, 2 * bots) if local_maxsize is None else local_maxsize,
        pgbouncer_dsn=pgbouncer_dsn,
        redis_cluster_url=redis_cluster_url,
    )
    try:
        await backend.initialize()
    except BaseException:
        await close_stack(backend)
        raise
    return backend


BULK_SETUP: Final = 10_000
"""More bots than this are set up with :meth:`~tiered_registry.base.BackendBase.load` (chunked
bulk writes), not one ``register`` each: a million registers take the better part of an hour."""


async def populate(
    backend: BackendBase,
    ids: Sequence[str],
    configs: Sequence[dict[str, Any]],
    *,
    concurrency: int = 32,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Register every bot (writes go through the stack, so caches start warm as in production);
    more than :data:`BULK_SETUP` through ``load`` (``progress(bots written so far)``)."""
    if len(ids) > BULK_SETUP:
        written = 0

        def chunk_done(count: int) -> None:
            nonlocal written
            written += count
            if progress is not None:
                progress(written)

        await backend.load(
            ((bot_id, configs[i % len(configs)]) for i, bot_id in enumerate(ids)), progress=chunk_done
        )
        return
    for start in range(0, len(ids), concurrency):
        await checkpoint()
        await asyncio.gather(
            *(
                backend.register(bot_id, configs[i % len(configs)])
                for i, bot_id in enumerate(ids[start : start + concurrency], start)
            )
        )


async def close_stack(backend: BackendBase) -> list[str]:
    """Remove everything the stack stored (flush accesses, clear, drop its table), then close it.

    Never raises (except cancellation): returns the problems met, so an interrupted run or a dead
    server still gets every other step. Each step is bounded by :data:`CLEANUP_TIMEOUT`.
    """
    problems: list[str] = []
    store = backend.store if isinstance(backend, TieredBackend) else backend
    steps: list[tuple[str, Any]] = []
    if backend.is_open:
        # Flush pending access times first: a flush after the drop would hit a missing table.
        steps.append(("flush accesses", backend.flush_accesses))
        steps.append(("clear", backend.clear))
        drop = getattr(store, "drop", None)
        if callable(drop):
            steps.append(("drop table", drop))
    steps.append(("close", backend.close))
    for what, step in steps:
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await step()
        except Exception as exc:
            logger.debug("cleanup of %r: %s failed", backend, what, exc_info=True)
            problems.append(f"{what} of {backend!r} failed: {type(exc).__name__}: {exc}")
    return problems


async def remove_namespace(
    prefix: str,
    *,
    redis_url: str | None,
    postgres_dsn: str | None,
    tables: Sequence[str] = (),
    redis_cluster_url: str | None = None,
) -> list[str]:
    """Remove whatever is left under ``prefix``: Redis keys containing it (on ``redis_url``, and
    on every master of the cluster ``redis_cluster_url``), and ``tables``.

    The safety net after :func:`close_stack` (a stack that failed half-way, a tier's bookkeeping
    keys). Never raises (except cancellation); returns the problems met.
    """
    problems: list[str] = []
    for url in (redis_url, redis_cluster_url):
        if url is None:
            continue
        from ..redis_client import is_cluster_source, make_client
        from .floors import PROBE_TIMEOUT, redis_client

        try:
            if is_cluster_source(url):  # its scan_iter walks every master; unlink splits by slot
                client, _ = make_client(url, connect_timeout=PROBE_TIMEOUT, retries=0)
            else:
                client = redis_client(url)
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    batch: list[bytes] = []
                    async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
                        batch.append(key)
                        if len(batch) >= 500:
                            await client.unlink(*batch)
                            batch = []
                    if batch:
                        await client.unlink(*batch)
            finally:
                await client.aclose()
        except Exception as exc:
            where = redact_url(url)
            error = f"{type(exc).__name__}: {exc}"
            problems.append(f"could not remove the Redis keys of {prefix} at {where}: {error}")
    if postgres_dsn is not None and tables:
        from .floors import pg_connect

        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                conn = await pg_connect(postgres_dsn)
                try:
                    for table in tables:
                        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                finally:
                    await conn.close()
        except Exception as exc:
            problems.append(f"could not drop the tables {list(tables)}: {type(exc).__name__}: {exc}")
    return problems
