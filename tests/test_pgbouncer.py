"""PostgresBackend behind PgBouncer in transaction pool mode (``pgbouncer=True``).

The contract suite runs the stacks ``postgres-pgbouncer`` and
``local+redis-cache+postgres-pgbouncer`` (tests/contract/conftest.py); here: that the option is
what makes the store work there (without it, the failure is a ConfigurationError naming it), how
the option is given (keyword, DSN parameter, factory), and that a statement costs one round trip
once its connection has described it. The tests needing a PgBouncer skip without
``PGBOUNCER_URL`` (``.ci/start-pgbouncer`` starts one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tiered_registry import ConfigurationError
from tiered_registry.factory import create_backend
from tiered_registry.stores._pgbouncer import PgBouncerConnection
from tiered_registry.stores.postgres import PostgresBackend

BOTS = 40
SERVER_CONNECTIONS = 20  # default_pool_size of the PgBouncer .ci/start-pgbouncer starts


async def _on_every_server_connection(url: str, sql: str) -> None:
    """Run ``sql`` once on each of PgBouncer's server connections: ``SERVER_CONNECTIONS`` clients
    each hold one (an open transaction) while it runs."""
    async with asyncio.timeout(30):
        clients = [await asyncpg.connect(url, statement_cache_size=0) for _ in range(SERVER_CONNECTIONS)]
        try:
            for client in clients:
                await client.execute("BEGIN; SELECT 1")
            for client in clients:
                await client.execute(sql)
            for client in clients:
                await client.execute("COMMIT")
        finally:
            for client in clients:
                await client.close()


@contextlib.asynccontextmanager
async def _stale_statements(url: str) -> AsyncIterator[None]:
    """Every server connection holds a prepared statement under each name asyncpg will give this
    process's next named statements, as other processes' statements do on a busy PgBouncer: a
    client's first named statement then fails for sure, not just under load. Afterwards every
    server connection is cleaned (``DEALLOCATE ALL``), so no later test meets them: one could
    otherwise run a stale statement of the same name, another client's SQL."""
    first = asyncpg.connection._uid + 1  # type: ignore[attr-defined]  # asyncpg's statement counter
    names = [f"__asyncpg_stmt_{i:x}__" for i in range(first, first + 500)]
    prepare = "; ".join(f'PREPARE "{name}" AS SELECT 1' for name in names)
    await _on_every_server_connection(url, f"DEALLOCATE ALL; {prepare}")
    try:
        yield
    finally:
        await _on_every_server_connection(url, "DEALLOCATE ALL")


async def _load(backends: list[PostgresBackend], seconds: float) -> int:
    """Reads and writes from 16 tasks over ``backends`` (several pools, so several PgBouncer
    clients whose statements go to whichever server connection is free); the reads checked."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < deadline:
            b = backends[(k + i) % len(backends)]
            bot = f"b{(k * 7 + i) % BOTS}"
            assert await b.get_config(bot) == {"n": int(bot[1:])}
            assert await b.exists(bot)
            record = await b.get(bot)
            assert record is not None
            assert record.bot_id == bot
            if i % 5 == 0:
                await b.register(bot, {"n": int(bot[1:])})
                assert await b.count() == BOTS
            i += 1
            done += 1

    await asyncio.gather(*(worker(k) for k in range(16)))
    return done


async def _backends(url: str, namespace: str, **options: Any) -> list[PostgresBackend]:
    backends = [PostgresBackend(url, table=namespace, batch_size=1, max_size=8, **options) for _ in range(2)]
    for backend in backends:
        await backend.initialize()
    return backends


async def _close(backends: list[PostgresBackend], database_url: str, namespace: str) -> None:
    for backend in backends:
        await backend.close()
    conn = await asyncpg.connect(database_url)  # directly: a drop must not depend on the mode
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{namespace}"')
    finally:
        await conn.close()


async def test_with_the_option_the_store_works_through_pgbouncer(
    pgbouncer_url: str, database_url: str, namespace: str
) -> None:
    backends = await _backends(pgbouncer_url, namespace, pgbouncer=True)
    try:
        await backends[0].register_many({f"b{i}": {"n": i} for i in range(BOTS)})
        assert await _load(backends, 1.5) > 100
        assert [r.bot_id for r in await backends[1].list_all(limit=3)] == ["b0", "b1", "b10"]
        assert len([r async for r in backends[1].stream(batch_size=7)]) == BOTS
    finally:
        await _close(backends, database_url, namespace)


async def test_without_the_option_the_failure_names_it(
    pgbouncer_url: str, database_url: str, namespace: str
) -> None:
    """asyncpg's named statements do not survive transaction pooling; the error says what to do.

    A statement prepared on one server connection is executed on another, or meets a same-named
    one there (another process's): made certain here by :func:`_stale_statements`, then the same
    load as above.
    """
    backends: list[PostgresBackend] = []

    async def run() -> None:
        backends.extend(await _backends(pgbouncer_url, namespace))
        await backends[0].register_many({f"b{i}": {"n": i} for i in range(BOTS)})
        await _load(backends, 5.0)

    async with _stale_statements(pgbouncer_url):
        with pytest.raises(ConfigurationError, match=r"PgBouncer .* pass pgbouncer=True") as caught:
            await run()
    assert isinstance(
        caught.value.__cause__, asyncpg.InvalidSQLStatementNameError | asyncpg.DuplicatePreparedStatementError
    )
    assert "HINT" not in str(caught.value)  # asyncpg's hint suggests another fix; ours names the option
    await _close(backends, database_url, namespace)


async def test_a_callers_pool_through_pgbouncer(
    pgbouncer_url: str, database_url: str, namespace: str
) -> None:
    """A pool passed in: made for PgBouncer it works; one caching named statements is named as the
    cause (``pgbouncer=True`` cannot change a pool it did not create)."""
    good = await asyncpg.create_pool(
        pgbouncer_url, min_size=1, max_size=4, statement_cache_size=0, connection_class=PgBouncerConnection
    )
    backends = [PostgresBackend(good, table=namespace, batch_size=1, pgbouncer=True) for _ in range(2)]
    try:
        for backend in backends:
            await backend.initialize()
        await backends[0].register_many({f"b{i}": {"n": i} for i in range(BOTS)})
        assert await _load(backends, 1.0) > 50
    finally:
        await _close(backends, database_url, namespace)
        await good.close()

    bad = [await asyncpg.create_pool(pgbouncer_url, min_size=1, max_size=4) for _ in range(2)]
    backends = [PostgresBackend(pool, table=namespace, batch_size=1, pgbouncer=True) for pool in bad]

    async def run() -> None:
        for backend in backends:
            await backend.initialize()
        await backends[0].register_many({f"b{i}": {"n": i} for i in range(BOTS)})
        await _load(backends, 5.0)

    try:
        async with _stale_statements(pgbouncer_url):
            with pytest.raises(ConfigurationError, match="must be created with statement_cache_size=0"):
                await run()
    finally:
        await _close(backends, database_url, namespace)
        for pool in bad:
            await pool.close()


async def test_a_statement_is_described_once_per_connection(
    pgbouncer_url: str, database_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first call (Parse/Describe), each call is one round trip: Parse+Bind+Execute."""
    prepared: list[str] = []
    prepare = asyncpg.Connection.prepare

    async def counting(self: Any, query: str, **kwargs: Any) -> Any:
        prepared.append(query)
        return await prepare(self, query, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "prepare", counting)
    backend = PostgresBackend(pgbouncer_url, table=namespace, pgbouncer=True, max_size=2, batch_size=1)
    try:
        await backend.initialize()
        await backend.register("bot", {"v": 1})
        before = len(prepared)
        for _ in range(50):
            assert await backend.get_config("bot") == {"v": 1}
        assert len(prepared) - before == 1  # get_config's statement, described once
        pool = backend._pool  # (its second connection: the lease holds the first)
        assert pool is not None
        async with pool.acquire() as conn:
            assert isinstance(conn, PgBouncerConnection)
    finally:
        await _close([backend], database_url, namespace)


async def test_pgbouncer_mode_works_directly_too(database_url: str, namespace: str) -> None:
    """The option only changes how statements are sent: it is safe on a direct connection."""
    backend = PostgresBackend(database_url, table=namespace, pgbouncer=True)
    try:
        await backend.initialize()
        await backend.register("bot", {"v": 1}, metadata={"t": "x"})
        assert await backend.get_config("bot") == {"v": 1}
        assert [r.bot_id for r in await backend.list_all(filter_metadata={"t": "x"})] == ["bot"]
        await backend.get("bot")  # an access, written by flush_accesses (an UPDATE with arguments)
        await backend.flush_accesses()
    finally:
        await _close([backend], database_url, namespace)


# ---- how the option is given (no server needed) ---------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "keyword", "expected"),
    [
        ("postgresql://app@db:6432/bots", None, False),
        ("postgresql://app@db:6432/bots", True, True),
        ("postgresql://app@db:6432/bots?pgbouncer=true", None, True),
        ("postgresql://app@db:6432/bots?pgbouncer=1&sslmode=disable", True, True),
        ("postgresql://app@db:6432/bots?pgbouncer=off", None, False),
        ("postgresql://app@db:6432/bots?pgbouncer=no", False, False),
    ],
)
def test_the_option_from_the_keyword_or_the_dsn(dsn: str, keyword: bool | None, expected: bool) -> None:
    backend = PostgresBackend(dsn, pgbouncer=keyword)
    assert backend.pgbouncer is expected
    assert "pgbouncer=" not in (backend._dsn or "")  # asyncpg would send it to the server as a setting
    assert ("pgbouncer=True" in repr(backend)) is expected
    if "sslmode" in dsn:
        assert backend._dsn == "postgresql://app@db:6432/bots?sslmode=disable"


@pytest.mark.parametrize(
    ("dsn", "keyword", "message"),
    [
        ("postgresql://db/x?pgbouncer=maybe", None, "pgbouncer= parameter must be true or false"),
        ("postgresql://db/x?pgbouncer=true", False, "contradicts"),
        ("postgresql://db/x", "yes", "pgbouncer must be true, false or None"),
    ],
)
def test_a_bad_option_is_refused(dsn: str, keyword: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PostgresBackend(dsn, pgbouncer=keyword)


def test_the_factory_passes_the_option() -> None:
    store = create_backend({"type": "postgres", "dsn": "postgresql://db/x", "pgbouncer": True})
    assert isinstance(store, PostgresBackend)
    assert store.pgbouncer
    store = create_backend("postgresql://db/x?pgbouncer=true")
    assert isinstance(store, PostgresBackend)
    assert store.pgbouncer
    with pytest.raises(ConfigurationError, match=r"store\.pgbouncer: expected true or false"):
        create_backend({"store": {"type": "postgres", "dsn": "postgresql://db/x", "pgbouncer": "on"}})
