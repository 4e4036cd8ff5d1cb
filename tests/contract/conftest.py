"""The contract suite's one parameter: which backend or stack is under test.

``STACKS`` maps a name to a :class:`StackSpec` whose ``build(services, namespace)`` returns an
uninitialized backend. A new store or stack joins the whole contract suite by adding one entry
here. Servers are only started for the stacks that need them (``services`` is lazy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from tiered_registry import InMemoryBackend, LocalCache, RegistryBackend, TieredBackend
from tiered_registry.base import BackendBase
from tiered_registry.stores.foreign import ForeignStore
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.stores.redis import RedisBackend
from tiered_registry.tiers.redis import RedisCache

from ..foreign_backends import FullForeignBackend, MinimalForeignBackend


class Services:
    """Lazy access to the session's servers (a memory-only test starts none)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    @property
    def redis_url(self) -> str:
        return str(self._request.getfixturevalue("redis_url"))

    @property
    def redis_cluster_url(self) -> str:
        return str(self._request.getfixturevalue("redis_cluster_url"))

    @property
    def database_url(self) -> str:
        return str(self._request.getfixturevalue("database_url"))

    @property
    def pgbouncer_url(self) -> str:
        return str(self._request.getfixturevalue("pgbouncer_url"))


async def _clear(backend: BackendBase) -> None:
    await backend.clear()


async def _drop_table(backend: BackendBase) -> None:
    """Postgres: drop the test's own table, so a run leaves nothing behind."""
    assert isinstance(backend, PostgresBackend)
    await backend.drop()


def _postgres(services: Services, namespace: str) -> BackendBase:
    """A PostgresBackend on its own table (``teardown`` drops it)."""
    return PostgresBackend(services.database_url, table=namespace, access_flush_interval=0.1)


def _postgres_pgbouncer(services: Services, namespace: str) -> BackendBase:
    """A PostgresBackend through PgBouncer in transaction pool mode (``PGBOUNCER_URL``; skipped,
    saying so, without one): every statement may land on another server connection."""
    return PostgresBackend(services.pgbouncer_url, table=namespace, access_flush_interval=0.1, pgbouncer=True)


@dataclass(frozen=True)
class StackSpec:
    build: Callable[[Services, str], BackendBase]
    # True when two instances built on one namespace see the same data (a second process's view).
    shared: bool = True
    # Removes what the test left on the servers (default: clear()); runs before close().
    teardown: Callable[[BackendBase], Awaitable[None]] = _clear
    # False when the store cannot keep metadata (a foreign backend whose register() takes none):
    # the tests that need metadata skip on that stack (see the ``needs_metadata`` fixture).
    metadata: bool = True


async def _teardown_stack(backend: BackendBase) -> None:
    """A stack: clear every tier and the store, then drop the store's table if it has one."""
    assert isinstance(backend, TieredBackend)
    await backend.clear()
    drop = getattr(backend.store, "drop", None)
    if drop is not None:
        await drop()


def _redis_cache(services: Services, namespace: str) -> RedisCache:
    return RedisCache(services.redis_url, ttl=60, namespace=namespace)


def _redis_cluster_cache(services: Services, namespace: str) -> RedisCache:
    return RedisCache(services.redis_cluster_url, ttl=60, namespace=namespace)


STACKS: dict[str, StackSpec] = {
    "postgres": StackSpec(_postgres, teardown=_drop_table),
    "postgres-pgbouncer": StackSpec(_postgres_pgbouncer, teardown=_drop_table),
    "local+redis-cache+postgres-pgbouncer": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[LocalCache(ttl=30), _redis_cache(services, ns)], store=_postgres_pgbouncer(services, ns)
        ),
        shared=False,
        teardown=_teardown_stack,
    ),
    "memory": StackSpec(lambda services, ns: InMemoryBackend(), shared=False),
    "redis": StackSpec(
        lambda services, ns: RedisBackend(services.redis_url, namespace=ns, access_flush_interval=0.1)
    ),
    "local+memory": StackSpec(
        lambda services, ns: TieredBackend(tiers=[LocalCache(maxsize=1000, ttl=30)], store=InMemoryBackend()),
        shared=False,
    ),
    "local+redis": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[LocalCache(ttl=30)],
            store=RedisBackend(services.redis_url, namespace=ns, access_flush_interval=0.1),
        ),
        shared=False,  # invalidations reach other processes via pub/sub: see test_coherence.py
        teardown=_teardown_stack,
    ),
    "local+postgres": StackSpec(
        lambda services, ns: TieredBackend(tiers=[LocalCache(ttl=30)], store=_postgres(services, ns)),
        shared=False,  # no Redis, so no cross-process invalidation: the local TTL bounds staleness
        teardown=_teardown_stack,
    ),
    "redis-cache+postgres": StackSpec(
        lambda services, ns: TieredBackend(tiers=[_redis_cache(services, ns)], store=_postgres(services, ns)),
        teardown=_teardown_stack,
    ),
    "local+redis-cache+postgres": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[LocalCache(ttl=30), _redis_cache(services, ns)], store=_postgres(services, ns)
        ),
        shared=False,  # other processes see writes after a pub/sub round trip: see test_coherence.py
        teardown=_teardown_stack,
    ),
    # Redis Cluster (REDIS_CLUSTER_URL; skipped, saying so, without one): the store keeps a
    # namespace in one slot, the cache tier spreads it over every master (keyspace.py).
    "redis-cluster": StackSpec(
        lambda services, ns: RedisBackend(services.redis_cluster_url, namespace=ns, access_flush_interval=0.1)
    ),
    "redis-cluster-cache+postgres": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[_redis_cluster_cache(services, ns)], store=_postgres(services, ns)
        ),
        teardown=_teardown_stack,
    ),
    "local+redis-cluster-cache+postgres": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[LocalCache(ttl=30), _redis_cluster_cache(services, ns)], store=_postgres(services, ns)
        ),
        shared=False,
        teardown=_teardown_stack,
    ),
    # Someone else's RegistryBackend behind the tiers (tests/foreign_backends.py), used through its
    # public methods only (stores/foreign.py): a minimal one (the 13 core methods) and a full one.
    "foreign-full": StackSpec(lambda services, ns: ForeignStore(FullForeignBackend()), shared=False),
    "local+foreign-minimal": StackSpec(
        lambda services, ns: TieredBackend(tiers=[LocalCache(ttl=30)], store=MinimalForeignBackend()),
        shared=False,
        metadata=False,
    ),
    "local+foreign-full": StackSpec(
        lambda services, ns: TieredBackend(tiers=[LocalCache(ttl=30)], store=FullForeignBackend()),
        shared=False,
    ),
    "local+redis-cache+foreign-minimal": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[LocalCache(ttl=30), _redis_cache(services, ns)], store=MinimalForeignBackend()
        ),
        shared=False,  # the foreign store keeps its records inside one instance
        metadata=False,
    ),
    "local+redis-cache+foreign-full": StackSpec(
        lambda services, ns: TieredBackend(
            tiers=[LocalCache(ttl=30), _redis_cache(services, ns)], store=FullForeignBackend()
        ),
        shared=False,
    ),
}

BuildBackend = Callable[[str], Awaitable[BackendBase]]


@pytest.fixture(params=sorted(STACKS))
def stack(request: pytest.FixtureRequest) -> StackSpec:
    return STACKS[request.param]


@pytest.fixture
def needs_metadata(stack: StackSpec) -> None:
    """Skip the test on a stack whose store cannot keep metadata."""
    if not stack.metadata:
        pytest.skip("this stack's store keeps no metadata (its register() takes no metadata=)")


@pytest.fixture
async def build_backend(stack: StackSpec, request: pytest.FixtureRequest) -> AsyncIterator[BuildBackend]:
    """Build (and initialize) more backends of the stack under test; all cleaned up afterwards."""
    services = Services(request)
    built: dict[str, list[BackendBase]] = {}

    async def build(namespace: str) -> BackendBase:
        backend = stack.build(services, namespace)
        built.setdefault(namespace, []).append(backend)
        await backend.initialize()
        return backend

    yield build
    # Per namespace: close the extra instances, then let one open instance remove what the test
    # left (a fresh one if the test closed them all), so nothing stays behind on the servers.
    for namespace, backends in built.items():
        still_open = [b for b in backends if b.is_open]
        for extra in still_open[:-1]:
            await extra.close()
        if still_open:
            keeper = still_open[-1]
        else:
            keeper = stack.build(services, namespace)
            await keeper.initialize()
        await stack.teardown(keeper)
        await keeper.close()


@pytest.fixture
async def backend(build_backend: BuildBackend, namespace: str) -> RegistryBackend:
    return await build_backend(namespace)
