"""The raw floors each stack is compared with, measured in the same run on the same servers.

- ``dict``: ``async def f(k): return d.get(k)``, awaited — the least an async ``get_config`` can cost.
- ``redis_get``: one redis-py ``GET`` of the bytes a Redis tier stores for a bot (a whole encoded
  registration), on one client — the least a Redis-backed read can cost from Python.
- ``pg_select``: an asyncpg prepared ``SELECT config::text ... WHERE bot_id = $1`` on one held
  connection, of rows a ``PostgresBackend`` wrote (same layout and indexes as a stack's table) —
  the least a PostgreSQL-backed read of that row can cost.

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
    "pg_select_floor",
    "postgres_version",
    "redis_client",
    "redis_get_floor",
    "redis_version",
]

PROBE_TIMEOUT: Final = 5.0


def redis_client(url: str, *, timeout: float = PROBE_TIMEOUT) -> Any:
    """A plain redis-py asyncio client that fails fast (no retries) instead of redis-py's default ~3 s."""
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


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


async def postgres_version(dsn: str) -> str:
    """``"PostgreSQL 18.6"``; raises if the server does not answer."""
    import asyncpg

    async with asyncio.timeout(PROBE_TIMEOUT):
        conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
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
    url: str, namespace: str, ids: Sequence[str], config: dict[str, Any]
) -> AsyncIterator[Call]:
    """redis-py ``GET`` of an encoded registration (what a Redis tier stores) under each bot id."""
    client = redis_client(url)
    prefix = f"{namespace}:floor:"
    payload = encode_registration(Registration(ids[0], freeze(config)))
    try:
        for start in range(0, len(ids), 500):
            await client.mset({prefix + bot_id: payload for bot_id in ids[start : start + 500]})
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
    import asyncpg

    from ..stores.postgres import PostgresBackend
    from .stacks import populate

    writer = PostgresBackend(dsn, table=table, min_size=1, max_size=4, connect_timeout=PROBE_TIMEOUT)
    conn = None
    try:
        await writer.initialize()
        await populate(writer, ids, [config])
        conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
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
