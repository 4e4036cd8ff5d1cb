"""PostgreSQL-specific behaviour of ``PostgresBackend`` (the shared contract is in tests/contract/)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import pytest

from tiered_registry import BackendUnavailableError, ConfigurationError, FrozenDict, SortSpec
from tiered_registry.query import Query
from tiered_registry.stores.postgres import PostgresBackend

Make = Callable[..., Awaitable[PostgresBackend]]


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A separate connection to look at what the backend really wrote."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def make(database_url: str, namespace: str, pg: asyncpg.Connection[Any]) -> AsyncIterator[Make]:
    """Build and initialize backends on this test's table; closes them and drops the table after."""
    built: list[PostgresBackend] = []
    tables: set[str] = set()

    async def make(dsn_or_pool: Any = None, *, initialize: bool = True, **options: Any) -> PostgresBackend:
        options.setdefault("table", namespace)
        backend = PostgresBackend(dsn_or_pool or database_url, **options)
        built.append(backend)
        tables.add(backend.qualified_table)
        if initialize:
            await backend.initialize()
        return backend

    yield make
    for backend in built:
        await backend.close()
    for table in tables:
        await pg.execute(f"DROP TABLE IF EXISTS {table}")


async def _row(pg: asyncpg.Connection[Any], backend: PostgresBackend, bot_id: str) -> asyncpg.Record:
    row = await pg.fetchrow(
        f"SELECT xmin::text AS version, last_accessed_at FROM {backend.qualified_table} WHERE bot_id = $1",
        bot_id,
    )
    assert row is not None
    return row


# ---- schema ---------------------------------------------------------------------------------


async def test_two_backends_initializing_at_once_create_one_table(make: Make, pg, namespace) -> None:
    first, second = await make(initialize=False), await make(initialize=False)
    await asyncio.gather(first.initialize(), second.initialize())
    await first.register("bot", {"v": 1})
    assert await second.get_config("bot") == {"v": 1}
    indexes = await pg.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = $1", namespace)
    assert indexes == 4  # primary key, (status, bot_id), GIN on metadata, (last_accessed_at, bot_id)


async def test_concurrent_initialize_in_a_new_schema(make: Make, pg) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    try:
        backends = [await make(initialize=False, schema=schema, table=f"t{i}") for i in range(3)]
        await asyncio.gather(*(b.initialize() for b in backends), *(b.initialize() for b in backends))
        for i, backend in enumerate(backends):
            await backend.register("bot", {"i": i})
            assert backend.qualified_table == f'"{schema}"."t{i}"'
            assert await backend.get_config("bot") == {"i": i}
    finally:
        for i in range(3):
            await pg.execute(f'DROP TABLE IF EXISTS "{schema}"."t{i}"')
        await pg.execute(f'DROP SCHEMA IF EXISTS "{schema}"')


async def test_a_long_table_name_gets_distinct_index_names(make: Make, pg) -> None:
    base = f"t_{uuid.uuid4().hex[:12]}_"
    names = [base + "x" * (62 - len(base)) + c for c in "ab"]  # 63 characters each
    for name in names:
        await make(table=name)
    indexes = await pg.fetch("SELECT indexname FROM pg_indexes WHERE tablename = ANY($1::text[])", names)
    assert len({r["indexname"] for r in indexes}) == 8


@pytest.mark.parametrize(
    "bad", ["", "1abc", "a-b", 'x"; DROP TABLE y; --', "a" * 64, "tâble", "a b", None, 5]
)
async def test_bad_table_or_schema_names_are_rejected(database_url, bad) -> None:
    with pytest.raises(ConfigurationError, match="table"):
        PostgresBackend(database_url, table=bad)
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresBackend(database_url, schema=bad)


@pytest.mark.parametrize(
    "options",
    [{"min_size": -1}, {"min_size": 3, "max_size": 2}, {"max_size": 0}, {"command_timeout": 0}],
)
async def test_bad_pool_options_are_rejected(database_url, options) -> None:
    with pytest.raises(ConfigurationError):
        PostgresBackend(database_url, **options)


@pytest.mark.parametrize("source", ["redis://127.0.0.1:6379", "not a url", 42, None])
async def test_only_a_dsn_or_a_pool_is_accepted(source) -> None:
    with pytest.raises(ConfigurationError, match=r"postgresql://|asyncpg\.Pool"):
        PostgresBackend(source)


async def test_drop_removes_the_table(make: Make, pg, namespace) -> None:
    backend = await make()
    await backend.register("bot", {})
    await backend.get_config("bot")  # a pending access must not hit the dropped table on close
    await backend.drop()
    assert await pg.fetchval("SELECT to_regclass($1)", backend.qualified_table) is None
    await backend.close()


# ---- access tracking ------------------------------------------------------------------------


class CountingBackend(PostgresBackend):
    """Counts the batched ``last_accessed_at`` writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        self.batches.append(list(times))
        await super()._record_access_times(times)


async def test_reads_write_nothing_until_one_update_per_flush(database_url, namespace, pg) -> None:
    backend = CountingBackend(database_url, table=namespace, access_flush_interval=3600)
    await backend.initialize()
    try:
        for i in range(3):
            await backend.register(f"bot{i}", {"i": i})
        before = {f"bot{i}": await _row(pg, backend, f"bot{i}") for i in range(3)}
        for _ in range(20):
            for i in range(3):
                await backend.get_config(f"bot{i}")
                await backend.get(f"bot{i}")
                await backend.peek_config(f"bot{i}")
        await backend.get_config("missing")
        for bot_id, row in before.items():
            assert await _row(pg, backend, bot_id) == row  # same row version: no UPDATE yet
        assert backend.batches == []
        await backend.flush_accesses()
        assert backend.batches == [["bot0", "bot1", "bot2"]]  # one statement for 180 reads
        for bot_id, row in before.items():
            after = await _row(pg, backend, bot_id)
            assert after["version"] != row["version"]
            assert after["last_accessed_at"] > row["last_accessed_at"]
        await backend.flush_accesses()
        assert len(backend.batches) == 1  # nothing pending, nothing written
    finally:
        await backend.drop()
        await backend.close()


async def test_the_background_flush_writes_within_the_interval(make: Make, pg) -> None:
    backend = await make(access_flush_interval=0.05)
    await backend.register("bot", {})
    before = (await _row(pg, backend, "bot"))["last_accessed_at"]
    await backend.get_config("bot")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if (await _row(pg, backend, "bot"))["last_accessed_at"] > before:
            break
    else:
        pytest.fail("last_accessed_at was not written by the background flush")


async def test_close_flushes_pending_accesses(make: Make, pg) -> None:
    backend = await make(access_flush_interval=3600)
    await backend.register("bot", {})
    before = (await _row(pg, backend, "bot"))["last_accessed_at"]
    await backend.get("bot")
    await backend.close()
    assert (await _row(pg, backend, "bot"))["last_accessed_at"] > before


async def test_an_access_write_never_moves_last_accessed_at_back(make: Make, pg) -> None:
    backend = await make()
    record = await backend.register("bot", {})
    await backend.record_accesses(["bot"], record.last_accessed_at.replace(year=2000))
    assert (await _row(pg, backend, "bot"))["last_accessed_at"] == record.last_accessed_at


# ---- failures -------------------------------------------------------------------------------


async def test_connection_refused_is_unavailable_fast_and_hides_the_password() -> None:
    backend = PostgresBackend("postgresql://app:s3cr%40tpw@127.0.0.1:1/db?sslmode=disable&password=other-pw")
    started = time.perf_counter()
    with pytest.raises(BackendUnavailableError) as info:
        await backend.initialize()
    assert time.perf_counter() - started < 3
    assert isinstance(info.value.__cause__, OSError)
    for text in (str(info.value), repr(backend)):
        assert "s3cr" not in text
        assert "other-pw" not in text
    assert "127.0.0.1:1" in str(info.value)
    assert not backend.is_open
    with pytest.raises(BackendUnavailableError):  # still not open: initialize may be retried
        await backend.initialize()
    await backend.close()


def test_repr_masks_the_password(database_url) -> None:
    backend = PostgresBackend("postgresql://app:hunter2@db.example:5432/bots?password=x9&application_name=a")
    text = repr(backend)
    assert "hunter2" not in text
    assert "x9" not in text
    assert "app:***@db.example:5432/bots" in text
    assert "application_name=a" in text
    assert '"public"."bot_registrations"' in text
    assert "***" not in repr(PostgresBackend("postgresql://app@db/bots"))


async def test_a_pool_passed_in_is_used_and_not_closed(make: Make, database_url) -> None:
    async def init(conn: asyncpg.Connection[Any]) -> None:  # a caller's own jsonb codec changes nothing
        await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=orjson.dumps, decoder=orjson.loads)

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, init=init)
    try:
        backend = await make(pool)
        assert "pool=" in repr(backend)
        await backend.register("bot", {"a": [1, {"b": None}]}, metadata={"m": True})
        record = await backend.get("bot")
        assert record is not None
        assert record.config == {"a": [1, {"b": None}]}
        assert record.metadata == {"m": True}
        assert isinstance(await backend.get_config("bot"), FrozenDict)
        await backend.close()
        assert not pool.is_closing()
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_killed_connection_is_replaced(make: Make, pg) -> None:
    backend = await make(min_size=1, max_size=1)
    await backend.register("bot", {"v": 1})
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ''"
        " AND backend_type = 'client backend' AND query LIKE $1",
        f"%{backend.qualified_table}%",
    )
    assert killed >= 1
    await asyncio.sleep(0.05)
    with contextlib.suppress(BackendUnavailableError):  # if the loss is seen mid-query
        await backend.get_config("bot")
    assert await backend.get_config("bot") == {"v": 1}


@contextlib.asynccontextmanager
async def _table_locked(database_url: str, backend: PostgresBackend) -> AsyncIterator[None]:
    """Another session holds an exclusive lock on the backend's table: its statements hang."""
    locker: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {backend.qualified_table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await locker.close()


async def test_a_hung_statement_times_out_as_unavailable(make: Make, database_url) -> None:
    backend = await make(command_timeout=0.2)
    await backend.register("bot", {"v": 1})
    async with _table_locked(database_url, backend):
        started = time.perf_counter()
        with pytest.raises(BackendUnavailableError) as info:
            await backend.get_config("bot")
        assert time.perf_counter() - started < 2
        assert isinstance(info.value.__cause__, TimeoutError)
        with pytest.raises(BackendUnavailableError):
            await backend.register("bot", {"v": 2})
    assert await backend.get_config("bot") == {"v": 1}  # the failed write changed nothing


async def test_the_wait_for_a_connection_counts_against_command_timeout(make: Make, database_url) -> None:
    """One connection, held by a hung statement: the next call, queued for it, is bounded too."""
    backend = await make(command_timeout=0.3, max_size=1)
    await backend.register("bot", {"v": 1})
    async with _table_locked(database_url, backend):
        started = time.perf_counter()
        results = await asyncio.gather(
            backend.get_config("bot"), backend.get_config("bot"), return_exceptions=True
        )
        assert time.perf_counter() - started < 1.5
        for result in results:
            assert isinstance(result, BackendUnavailableError)
            assert isinstance(result.__cause__, TimeoutError)
    assert await backend.get_config("bot") == {"v": 1}  # the connection was replaced


async def test_a_callers_cancellation_of_a_statement_stays_a_cancellation(make: Make, database_url) -> None:
    """Statement deadlines cancel the waiting task; a cancellation that is the caller's own (here
    asyncio.timeout, shorter than command_timeout) must not be turned into our timeout error."""
    backend = await make(command_timeout=0.5)
    await backend.register("bot", {"v": 1})
    async with _table_locked(database_url, backend):
        with pytest.raises(TimeoutError):  # asyncio.timeout's own, not BackendUnavailableError
            async with asyncio.timeout(0.1):
                await backend.get_config("bot")
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
        # Our deadline first: our error, and the watchdog's cancellation is withdrawn (else
        # the caller's next `asyncio.timeout` or `TaskGroup` would misread the task's state).
        with pytest.raises(BackendUnavailableError):
            async with asyncio.timeout(5):
                await backend.get_config("bot")
        assert current.cancelling() == 0
    assert await backend.get_config("bot") == {"v": 1}


async def test_use_after_the_pool_was_closed_under_it_is_unavailable(make: Make, database_url) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    backend = await make(pool)
    await pool.close()
    with pytest.raises(BackendUnavailableError) as info:
        await backend.get("bot")
    assert isinstance(info.value.__cause__, asyncpg.InterfaceError)


# ---- queries --------------------------------------------------------------------------------


async def test_filter_is_jsonb_equality_not_containment(make: Make) -> None:
    backend = await make()
    await backend.register("list-xy", {}, metadata={"tags": ["x", "y"], "n": 1, "o": {"a": 1, "b": 2}})
    await backend.register("list-x", {}, metadata={"tags": ["x"], "n": 1.0, "o": {"a": 1}})
    await backend.register("bool", {}, metadata={"tags": [], "n": True, "o": {}})
    await backend.register("null", {}, metadata={"n": None, "o": None})

    async def ids(**filters: Any) -> list[str]:
        return [r.bot_id for r in await backend.list_all(filter_metadata=filters)]

    assert await ids(tags=["x"]) == ["list-x"]
    assert await ids(tags=["y", "x"]) == []
    assert await ids(tags=[]) == ["bool"]
    assert await ids(n=1) == ["list-x", "list-xy"]  # 1 == 1.0, as in Python
    assert await ids(n=True) == ["bool"]  # true is not 1
    assert await ids(n=None) == ["null"]  # a JSON null, not a missing key
    assert await ids(o={"a": 1}) == ["list-x"]
    assert await ids(o={}) == ["bool"]
    assert await backend.count_all(filter_metadata={"n": 1, "tags": ["x", "y"]}) == 1


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice("snnifbzla" if depth == 0 else "snifb")
    if kind == "s":
        return rng.choice(["", "a", "B", "b", "ab", "Z", "é", "日本", "a b", "10", "9", "ß", "\U0001f600"])
    if kind == "n":
        return rng.choice([0, 1, -1, 2, 10, -0.5, 1.0, 2.5, 1e16, 10**16 + 1, -(2**63)])
    if kind == "i":
        return rng.randint(-3, 3)
    if kind == "f":
        return rng.choice([0.1, 1.5, -2.25, 3.0])
    if kind == "b":
        return rng.choice([True, False])
    if kind == "z":
        return None
    if kind == "l":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice("abc"): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 2))}


@pytest.mark.parametrize("with_containers", [False, True], ids=["scalars", "arrays-and-objects"])
async def test_sorting_and_paging_match_query_apply_exactly(make: Make, with_containers: bool) -> None:
    rng = random.Random(20240611 + with_containers)
    backend = await make()
    for i in range(80):
        metadata = {}
        for key in ("k", "j"):
            if rng.random() < 0.8:
                value = _random_value(rng)
                if not with_containers:
                    while isinstance(value, list | dict):
                        value = _random_value(rng)
                metadata[key] = value
        if rng.random() < 0.5:
            metadata["tenant"] = rng.choice(["acme", "zeta"])
        await backend.register(
            f"bot-{rng.randint(0, 10**6):07d}",
            {"i": i},
            rng.choice(["active", "inactive", "error"]),
            metadata=metadata,
        )
    everything = await backend.list_all()
    sorts: list[Any] = [
        None,
        [SortSpec("metadata.k")],
        [SortSpec("metadata.k", "desc")],
        [SortSpec("metadata.j", "desc"), SortSpec("metadata.k")],
        [SortSpec("status"), SortSpec("metadata.k", "desc"), SortSpec("bot_id", "desc")],
        [SortSpec("metadata.nope")],
        [SortSpec("updated_at", "desc")],
    ]
    for sort in sorts:
        for status in (None, "active"):
            for filters in (None, {"tenant": "acme"}):
                for limit, offset in ((None, None), (7, 0), (5, 12), (None, 70), (0, 3)):
                    query = Query.build(
                        status=status, filter_metadata=filters, sort=sort, limit=limit, offset=offset
                    )
                    got = await backend.list_all(
                        status=status, filter_metadata=filters, sort=sort, limit=limit, offset=offset
                    )
                    assert got == query.apply(everything), (sort, status, filters, limit, offset)


async def test_stream_holds_no_connection_between_batches(make: Make) -> None:
    backend = await make(min_size=1, max_size=1)
    for i in range(25):
        await backend.register(f"b{i:02d}", {"i": i}, "active" if i % 3 else "inactive")
    seen = []
    async for record in backend.stream(status="active", batch_size=4):
        assert await backend.get_config(record.bot_id) == {"i": int(record.bot_id[1:])}  # one connection
        seen.append(record.bot_id)
    assert seen == [f"b{i:02d}" for i in range(25) if i % 3]


async def test_metadata_keys_and_values_are_parameters(make: Make) -> None:
    backend = await make()
    odd = 'it\'s a "key" ? -> $1 ; DROP TABLE x; --'
    await backend.register("bot", {"q": odd}, metadata={odd: odd})
    assert [
        r.bot_id for r in await backend.list_all(filter_metadata={odd: odd}, sort=[f"metadata.{odd}"])
    ] == ["bot"]
    assert await backend.get_config("bot") == {"q": odd}


async def test_register_keeps_created_at_and_reports_stored_metadata(make: Make, pg) -> None:
    backend = await make()
    first = await backend.register("bot", {"v": 1}, metadata={"tenant": "acme"})
    await backend.get("bot")
    await backend.flush_accesses()
    accessed = (await _row(pg, backend, "bot"))["last_accessed_at"]
    second = await backend.register("bot", {"v": 2})
    assert second.metadata == {"tenant": "acme"}
    assert second.created_at == first.created_at
    assert second.last_accessed_at == accessed
    assert second == await backend.peek("bot")


# ---- leased connections (no pool checkout per statement) -------------------------------------


async def test_a_burst_larger_than_the_pool_is_served_by_max_size_connections(make: Make, pg) -> None:
    backend = await make(min_size=1, max_size=3)
    await asyncio.gather(*(backend.register(f"b{i}", {"i": i}) for i in range(50)))
    results = await asyncio.gather(*(backend.get_config(f"b{i % 50}") for i in range(300)))
    assert results == [{"i": i % 50} for i in range(300)]
    assert backend._lease is not None
    assert backend._lease.leased <= 3
    connections = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND query LIKE $1",
        f"%{backend.qualified_table}%",
    )
    assert connections <= 3


class TableLock:
    """Another session holding ACCESS EXCLUSIVE on a backend's table: its statements block."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn

    async def __call__(self, backend: PostgresBackend) -> None:
        await self.conn.execute("BEGIN")
        await self.conn.execute(f"LOCK TABLE {backend.qualified_table} IN ACCESS EXCLUSIVE MODE")

    async def unlock(self) -> None:
        await self.conn.execute("ROLLBACK")


@pytest.fixture
async def locked(database_url: str) -> AsyncIterator[TableLock]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    yield TableLock(conn)
    await conn.close()


async def test_waiting_and_cancelled_statements_give_their_connection_back(make: Make, locked) -> None:
    backend = await make(min_size=1, max_size=1, command_timeout=None)
    await backend.register("bot", {"v": 1})
    await locked(backend)
    running = asyncio.create_task(backend.peek_config("bot"))  # holds the one connection, blocked
    waiting = [asyncio.create_task(backend.peek_config("bot")) for _ in range(3)]  # wait for it
    await asyncio.sleep(0.1)
    assert not running.done()
    waiting[0].cancel()  # cancelled while waiting for a connection
    running.cancel()  # cancelled mid-statement: the pool cancels it and cleans the connection
    await asyncio.sleep(0.1)
    await locked.unlock()
    assert await asyncio.wait_for(asyncio.gather(*waiting[1:]), 5) == [{"v": 1}, {"v": 1}]
    for task in (waiting[0], running):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await backend.get_config("bot") == {"v": 1}
    assert backend._lease is not None
    assert backend._lease.leased <= 1


async def test_close_waits_for_statements_in_flight(make: Make, locked) -> None:
    backend = await make(min_size=1, max_size=2, command_timeout=None)
    await backend.register("bot", {"v": 1})
    await locked(backend)
    in_flight = asyncio.create_task(backend.peek_config("bot"))
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(backend.close())
    await asyncio.sleep(0.1)
    assert not closing.done()
    await locked.unlock()
    assert await asyncio.wait_for(in_flight, 5) == {"v": 1}
    await asyncio.wait_for(closing, 5)


async def test_a_caller_cancelled_while_its_connection_is_made_leaves_no_error_behind(make) -> None:
    """The connection being made for a cancelled caller is finished and kept for the next one.

    asyncpg cancelled in the middle of a new connection's TLS negotiation (``sslmode=prefer``,
    the default) leaves a future whose error nobody retrieves: asyncio logs "Future exception was
    never retrieved" at ERROR for each. Request timeouts during a reconnect would flood the logs.
    """
    backend = await make(min_size=0, max_size=4)
    await backend.register("bot", {"v": 1})
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    rng = random.Random(7)
    try:
        for _ in range(40):
            lease = backend._lease
            assert lease is not None
            while lease._idle:  # force new connections in this round
                conn = lease._idle.pop()
                conn.terminate()
                await lease._return_to_pool(conn)
            calls = [asyncio.create_task(backend.get_config("bot")) for _ in range(4)]
            await asyncio.sleep(rng.uniform(0, 0.003))
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        assert await backend.get_config("bot") == {"v": 1}
        await backend.drop()
        await backend.close()
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert not unhandled, unhandled[0].get("message")
