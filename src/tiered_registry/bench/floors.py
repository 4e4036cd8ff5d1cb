"""The raw floors each stack is compared with, measured in the same run on the same servers.

- ``dict``: ``async def f(k): return d.get(k)``, awaited — the least an async ``get_config`` can cost.
- ``redis_get``: one redis-py ``GET`` of the bytes a Redis tier stores for a bot (a whole encoded
  registration), on one client — the least a Redis-backed read can cost from Python.
- ``pg_select``: an asyncpg prepared ``SELECT config::text ... WHERE bot_id = $1`` on one held
  connection, of rows a ``PostgresBackend`` wrote (same layout and indexes as a stack's table) —
  the least a PostgreSQL-backed read of that row can cost. Through PgBouncer in transaction pool
  mode (a DSN with ``?pgbouncer=true``) the statement is unnamed (asyncpg's
  ``statement_cache_size=0``): Parse + Bind + Execute in one round trip, as the store sends it.
- ``redis_cluster_get``: the same ``GET`` from redis-py's own asyncio ``RedisCluster`` (plain,
  not the library's client), of keys spread over every master of the cluster — the least a
  Redis-Cluster-backed read can cost from Python.

For throughput (N tasks reading at once) the ``dict``, ``redis_get`` and ``redis_cluster_get``
floors are the same calls from N tasks (redis-py: one client, its connection pool, large enough
for a connection per task);
the PostgreSQL one is the strong floor
:func:`pg_pool_floor`: as many held connections as the store's pool, the statement prepared on
each, no reset between uses, each task taking a free connection from a queue.

Each floor is an async context manager that sets up its data in its own namespace (key prefix /
table), yields a ``call(bot_id)`` to time, and removes everything on exit. Also here: the probes
that tell whether a server answers, and its version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from ..codec import encode_registration
from ..frozen import freeze
from ..models import Registration
from .measure import Call
from .stacks import CLEANUP_TIMEOUT

__all__ = [
    "PROBE_TIMEOUT",
    "dict_floor",
    "pg_connect",
    "pg_pool_floor",
    "pg_select_floor",
    "postgres_pool_size",
    "postgres_version",
    "redis_client",
    "redis_cluster_client",
    "redis_cluster_get_floor",
    "redis_cluster_version",
    "redis_get_floor",
    "redis_version",
]

PROBE_TIMEOUT: Final = 5.0


def redis_client(url: str, *, timeout: float = PROBE_TIMEOUT, max_connections: int | None = None) -> Any:
    """A plain redis-py asyncio client that fails fast (no retries) instead of redis-py's default ~3 s.

    ``max_connections``: its pool's limit (redis-py's default, 100, raises beyond it).
    """
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )


def redis_cluster_client(url: str, *, timeout: float = PROBE_TIMEOUT, max_connections: int = 100) -> Any:
    """A plain redis-py asyncio ``RedisCluster`` for a ``redis+cluster://`` URL (any node), failing
    fast like :func:`redis_client`; ``max_connections``: per node. No "maintenance notifications"
    handshake on its connections, as the library's cluster client (see
    :mod:`tiered_registry.redis_client`)."""
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.maint_notifications import MaintNotificationsConfig

    scheme, _, rest = url.partition("://")
    tls = scheme.lower() in ("rediss+cluster", "valkeys+cluster")
    return RedisCluster.from_url(
        f"{'rediss' if tls else 'redis'}://{rest}",
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )


async def redis_cluster_version(url: str) -> str:
    """``"redis 7.0.15, cluster of 3 masters"``; raises if the cluster does not answer."""
    client = redis_cluster_client(url)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            info = await client.info("server", target_nodes=client.DEFAULT_NODE)
            masters = len(client.get_primaries())
    finally:
        await client.aclose()
    name = str(info.get("server_name") or "redis")
    version = info.get(f"{name}_version") or info.get("redis_version", "?")
    return f"{name} {version}, cluster of {masters} masters"


async def redis_version(url: str) -> str:
    """``"valkey 8.1.8"`` / ``"redis 7.4.1"``; raises if the server does not answer."""
    client = redis_client(url)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            info = await client.info("server")
    finally:
        await client.aclose()
    name = str(info.get("server_name") or "redis")
    version = info.get(f"{name}_version") or info.get("redis_version", "?")
    return f"{name} {version}"


async def pg_connect(dsn: str) -> Any:
    """``asyncpg.connect(dsn)``; for a DSN with ``?pgbouncer=true`` (PgBouncer in transaction pool
    mode), without that parameter and with named statements off (``statement_cache_size=0``):
    its prepared statements are then unnamed, and re-sent with each execution (one round trip)."""
    import asyncpg

    from ..stores._pgbouncer import pgbouncer_option

    dsn, pgbouncer = pgbouncer_option(dsn, None)
    if pgbouncer:
        return await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT, statement_cache_size=0)
    return await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)


async def postgres_version(dsn: str) -> str:
    """``"PostgreSQL 18.6"``; raises if the server does not answer."""
    async with asyncio.timeout(PROBE_TIMEOUT):
        conn = await pg_connect(dsn)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return f"PostgreSQL {str(version).split()[0]}"


@contextlib.asynccontextmanager
async def dict_floor(ids: Sequence[str], config: dict[str, Any]) -> AsyncIterator[Call]:
    """``async def f(k): return d.get(k)`` over the same bot ids, holding the same frozen config."""
    frozen = freeze(config)
    table = dict.fromkeys(ids, frozen)

    async def lookup(bot_id: str) -> Any:
        return table.get(bot_id)

    yield lookup


@contextlib.asynccontextmanager
async def redis_get_floor(
    url: str,
    namespace: str,
    ids: Sequence[str],
    config: dict[str, Any],
    *,
    max_connections: int | None = None,
) -> AsyncIterator[Call]:
    """redis-py ``GET`` of an encoded registration (what a Redis tier stores) under each bot id.

    One client; ``max_connections`` at least the most tasks that will call at once, so that each
    has its own connection from the client's pool (the best unbatched throughput).
    """
    client = redis_client(url, max_connections=max_connections)
    async with _get_floor(client, f"{namespace}:floor:", ids, config, client.mset) as read:
        yield read


@contextlib.asynccontextmanager
async def redis_cluster_get_floor(
    url: str,
    namespace: str,
    ids: Sequence[str],
    config: dict[str, Any],
    *,
    max_connections: int = 100,
) -> AsyncIterator[Call]:
    """redis-py ``RedisCluster.get`` of an encoded registration under each bot id, as
    :func:`redis_get_floor` on one server; the keys carry no hash tag, so they spread over every
    master. ``max_connections``: per node, at least the most tasks that will call at once."""
    client = redis_cluster_client(url, max_connections=max_connections)
    async with _get_floor(client, f"{namespace}:cfloor:", ids, config, client.mset_nonatomic) as read:
        yield read


@contextlib.asynccontextmanager
async def _get_floor(
    client: Any, prefix: str, ids: Sequence[str], config: dict[str, Any], mset: Any
) -> AsyncIterator[Call]:
    """Store the payload under ``prefix + id`` for every id, yield a raw ``GET``, then remove the
    keys and close ``client`` (which this takes over)."""
    payload = encode_registration(Registration(ids[0], freeze(config)))
    try:
        for start in range(0, len(ids), 500):
            await mset({prefix + bot_id: payload for bot_id in ids[start : start + 500]})
        get = client.get

        def read(bot_id: str) -> Any:
            return get(prefix + bot_id)

        yield read
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                for start in range(0, len(ids), 500):
                    await client.unlink(*(prefix + bot_id for bot_id in ids[start : start + 500]))
        await client.aclose()


@contextlib.asynccontextmanager
async def pg_select_floor(
    dsn: str, table: str, ids: Sequence[str], config: dict[str, Any]
) -> AsyncIterator[Call]:
    """asyncpg prepared ``SELECT config::text`` by primary key, on one held connection, of rows
    that a :class:`~tiered_registry.stores.postgres.PostgresBackend` wrote into a table it created:
    the same row layout, width and indexes as a stack's own table, so the ratio is the store's
    overhead over the raw driver reading the same row, not a difference between two tables.

    ``table`` must be a plain identifier (the caller's unique name); it is dropped on exit.
    """
    from ..stores.postgres import PostgresBackend
    from .stacks import populate

    writer = PostgresBackend(dsn, table=table, min_size=1, max_size=4, connect_timeout=PROBE_TIMEOUT)
    conn = None
    try:
        await writer.initialize()
        await populate(writer, ids, [config])
        conn = await pg_connect(dsn)
        statement = await conn.prepare(f'SELECT config::text FROM "{table}" WHERE bot_id = $1')
        yield statement.fetchval
    finally:
        try:
            if writer.is_open:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLEANUP_TIMEOUT):
                        await writer.drop()
        finally:
            await writer.close()
            if conn is not None:
                await conn.close(timeout=CLEANUP_TIMEOUT)


def postgres_pool_size() -> int:
    """The most connections a :class:`~tiered_registry.stores.postgres.PostgresBackend` pool opens
    by default (its ``max_size``): what the stacks' store reads with."""
    import inspect

    from ..stores.postgres import PostgresBackend

    default = inspect.signature(PostgresBackend.__init__).parameters["max_size"].default
    return int(default) if isinstance(default, int) else 10


@contextlib.asynccontextmanager
async def pg_pool_floor(dsn: str, table: str, size: int) -> AsyncIterator[Call]:
    """The strong throughput floor of a PostgreSQL read: ``size`` held asyncpg connections, the
    ``SELECT config::text`` of :func:`pg_select_floor` prepared on each, never reset; a call takes
    a free connection from a queue (waiting for one if all are busy), reads, and puts it back.

    Reads the rows of ``table``, which must exist (the one :func:`pg_select_floor` set up).
    """
    connections: list[Any] = []
    free: asyncio.Queue[Any] = asyncio.Queue()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT * 2):
            for _ in range(size):
                conn = await pg_connect(dsn)
                connections.append(conn)
                free.put_nowait(await conn.prepare(f'SELECT config::text FROM "{table}" WHERE bot_id = $1'))
        take = free.get
        give_back = free.put_nowait

        async def read(bot_id: str) -> Any:
            statement = await take()
            try:
                return await statement.fetchval(bot_id)
            finally:
                give_back(statement)

        yield read
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close(timeout=CLEANUP_TIMEOUT)
