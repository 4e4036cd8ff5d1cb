"""Resource hygiene: open/close cycles leave nothing behind, and credentials never leak.

- 1000 ``initialize``/``close`` cycles of the full stack (``local -> redis cache -> postgres`` with
  cross-process invalidation; each cycle also writes and reads, so every connection kind is opened)
  leave no client on the Redis server (``CLIENT LIST`` of a private server), no session in
  ``pg_stat_activity`` under the stack's ``application_name``, no socket of this process to either,
  no pending asyncio task and no new file descriptor. Failed initializations (a server unreachable)
  leave nothing either.
- Passwords in URLs (userinfo, ``?password=``, percent-encoded) appear in no ``repr``, no exception
  (message, ``repr``, chained causes and contexts, formatted traceback) and no log record at DEBUG,
  while connections to unreachable and to reachable-but-refusing servers fail.

``TR_SOAK=1`` runs 5000 cycles instead of 1000.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from tiered_registry import (
    BackendUnavailableError,
    ConfigurationError,
    InMemoryBackend,
    LocalCache,
    TieredBackend,
    create_backend,
)
from tiered_registry.coherence import InvalidationChannel
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.stores.redis import RedisBackend
from tiered_registry.tiers.redis import RedisCache

from .faults_support import open_fds, sockets_to

SOAK = os.environ.get("TR_SOAK") == "1"
CYCLES = 5000 if SOAK else 1000
FD_TOLERANCE = 3
SECRET = "s3cret"


# ---- counting what is open ------------------------------------------------------------------------


def _with_app_name(dsn: str, app: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={app}"


async def _pg_sessions(database_url: str, app: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
        )
    finally:
        await conn.close()


async def _redis_clients(url: str) -> int:
    """Clients of a private server, not counting the one asking."""
    client = aioredis.Redis.from_url(url)
    try:
        return len(await client.client_list()) - 1
    finally:
        await client.aclose()


async def _settles_to(probe: Callable[[], Awaitable[int]], expected: int, timeout: float = 3.0) -> int:  # noqa: ASYNC109
    """``probe()`` once it equals ``expected`` (servers notice a closed socket a moment later), else
    its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


def _port(url: str) -> int:
    return urlsplit(url).port or 0


class Snapshot:
    """Open file descriptors, tasks and sockets of this process, before the cycles."""

    def __init__(self, *ports: int) -> None:
        gc.collect()
        self.fds = open_fds()
        self.tasks = _other_tasks()
        self.ports = ports
        self.sockets = {port: sockets_to(port) for port in ports}

    def leftovers(self) -> dict[str, object]:
        gc.collect()
        found: dict[str, object] = {}
        if open_fds() > self.fds + FD_TOLERANCE:
            found["file descriptors"] = f"{self.fds} -> {open_fds()}"
        tasks = _other_tasks() - self.tasks
        if tasks:
            found["tasks"] = sorted(t.get_name() for t in tasks)
        for port in self.ports:
            if sockets_to(port) > self.sockets[port]:
                found[f"sockets to :{port}"] = f"{self.sockets[port]} -> {sockets_to(port)}"
        return found


# ---- open/close cycles ----------------------------------------------------------------------------


@pytest.fixture
async def table(database_url: str, namespace: str) -> AsyncIterator[str]:
    yield namespace
    async with PostgresBackend(database_url, table=namespace) as store:
        await store.drop()


def _full_stack(redis_url: str, dsn: str, namespace: str) -> TieredBackend:
    return TieredBackend(
        tiers=[LocalCache(maxsize=100, ttl=30), RedisCache(redis_url, namespace=namespace)],
        store=PostgresBackend(dsn, table=namespace, min_size=1, max_size=2, command_timeout=5),
    )


@pytest.mark.timeout(300 if SOAK else 120)
async def test_initialize_close_cycles_of_the_full_stack_leave_nothing_open(
    private_redis, database_url: str, table: str
) -> None:
    redis_url = private_redis[0]
    app = f"tr-leak-{uuid.uuid4().hex[:8]}"
    dsn = _with_app_name(database_url, app)

    # One cycle first: imports, the loop's own resources, the table. And a check that the counters
    # below do see this stack's connections while it is open (else "0 afterwards" proves nothing).
    stack = _full_stack(redis_url, dsn, table)
    async with stack:
        await stack.register("b0", {"i": 0})
        assert await stack.get_config("b0") == {"i": 0}
        open_clients = await _redis_clients(redis_url)
        open_sessions = await _pg_sessions(database_url, app)
    assert open_clients >= 3, "tier + publisher + subscriber connections expected while open"
    assert open_sessions >= 1
    assert await _settles_to(lambda: _redis_clients(redis_url), 0) == 0
    assert await _settles_to(lambda: _pg_sessions(database_url, app), 0) == 0

    before = Snapshot(_port(redis_url), _port(database_url))
    started = time.perf_counter()
    for i in range(CYCLES):
        stack = _full_stack(redis_url, dsn, table)
        await stack.initialize()
        bot_id = f"b{i % 10}"
        await stack.register(bot_id, {"i": i})
        assert await stack.get_config(bot_id) == {"i": i}
        await stack.close()
    elapsed = time.perf_counter() - started

    leftovers = before.leftovers()
    clients = await _settles_to(lambda: _redis_clients(redis_url), 0)
    sessions = await _settles_to(lambda: _pg_sessions(database_url, app), 0)
    print(
        f"\n{CYCLES} full-stack cycles in {elapsed:.1f}s ({elapsed / CYCLES * 1000:.1f} ms each): "
        f"redis clients left {clients}, postgres sessions left {sessions}, fds {before.fds} -> "
        f"{open_fds()}, leftovers {leftovers or 'none'}"
    )
    assert clients == 0
    assert sessions == 0
    assert leftovers == {}


async def test_failed_initializations_leave_nothing_open(
    private_redis, database_url: str, table: str
) -> None:
    """PostgreSQL unreachable: ``initialize`` fails, cleanly. Redis unreachable: the stack runs
    degraded (cache skipped, invalidations not published) and closes cleanly."""
    dead_pg = "postgresql://u@127.0.0.1:1/db"
    dead_redis = "redis://127.0.0.1:1/0"
    before = Snapshot(_port(private_redis[0]), _port(database_url))
    for _ in range(50):
        stack = _full_stack(private_redis[0], dead_pg, table)
        with pytest.raises(BackendUnavailableError):
            async with asyncio.timeout(5):
                await stack.initialize()
        await stack.close()
    for i in range(20):
        stack = TieredBackend(
            tiers=[LocalCache(), RedisCache(dead_redis, namespace=table, connect_timeout=0.05)],
            store=PostgresBackend(database_url, table=table, min_size=1, max_size=1),
            coherence=InvalidationChannel(dead_redis, namespace=table, connect_timeout=0.05),
        )
        async with asyncio.timeout(5):
            await stack.initialize()
            await stack.register("b", {"i": i})
            assert await stack.get_config("b") == {"i": i}
            await stack.close()
    assert before.leftovers() == {}


def _problems(stack: TieredBackend, before: Snapshot) -> dict[str, object]:
    problems = before.leftovers()
    if stack.store.is_open:
        problems["store"] = "still open after close()"
    return problems


async def _close_everything(stack: TieredBackend) -> None:
    """Release what a half-initialized stack holds (the cleanup the stack itself does not do today)."""
    await stack._close()


async def test_an_initialize_that_fails_half_way_releases_what_it_opened(database_url, table) -> None:
    before = Snapshot(_port(database_url))
    # The Redis URL is only parsed when the tier initializes: after the store has opened its pool.
    stack = TieredBackend(
        tiers=[LocalCache(), RedisCache("redis://127.0.0.1:notaport/0", namespace=table)],
        store=PostgresBackend(database_url, table=table),
    )
    with pytest.raises(ConfigurationError):
        await stack.initialize()
    await stack.close()
    try:
        assert _problems(stack, before) == {}
    finally:
        await _close_everything(stack)


async def test_a_cancelled_initialize_releases_what_it_opened(database_url, table) -> None:
    before = Snapshot(_port(database_url))
    dead_redis = "redis://127.0.0.1:1/0"  # the channel waits up to connect_timeout for its subscription
    stack = TieredBackend(
        tiers=[LocalCache(), RedisCache(dead_redis, namespace=table)],
        store=PostgresBackend(database_url, table=table),
        coherence=InvalidationChannel(dead_redis, namespace=table, connect_timeout=2.0),
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await stack.initialize()
    await stack.close()
    try:
        assert _problems(stack, before) == {}
    finally:
        await _close_everything(stack)


# ---- credentials ----------------------------------------------------------------------------------


def _texts_of(exc: BaseException) -> list[str]:
    """Everything an exception can show: str, repr, args, and the same for every cause/context,
    plus the formatted traceback (which includes the chain)."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(repr, current.args)]
        if isinstance(current, BaseExceptionGroup):
            todo += current.exceptions
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return texts


def _with_userinfo(url: str, userinfo: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{userinfo}@{rest.rpartition('@')[2]}"


REDIS_DEAD = [
    f"redis://:{SECRET}@127.0.0.1:1/0",
    f"redis://user:{SECRET}@127.0.0.1:1/0",
    f"redis://127.0.0.1:1/0?password={SECRET}",
    f"redis://:{SECRET}%40x%2Fy@127.0.0.1:1/0",  # percent-encoded; decoded it still holds the secret
]
PG_DEAD = [
    f"postgresql://u:{SECRET}@127.0.0.1:1/db",
    f"postgresql://u@127.0.0.1:1/db?password={SECRET}",
    f"postgresql://u:{SECRET}%40x%2Fy@127.0.0.1:1/db",
]


async def test_credentials_appear_in_no_repr_exception_or_log(redis_url, database_url, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ns = f"t_{uuid.uuid4().hex[:12]}"
    # Reachable servers that refuse these credentials (an AUTH error; a login error) -- one failed
    # login each, harmless to the shared servers.
    redis_urls = [*REDIS_DEAD, _with_userinfo(redis_url, f"nobody:{SECRET}")]
    pg_urls = [*PG_DEAD, _with_userinfo(database_url, f"tr_no_such_role:{SECRET}")]
    texts: list[str] = []
    failures = 0

    async def expect_failure(call: Callable[[], Awaitable[object]]) -> None:
        nonlocal failures
        try:
            async with asyncio.timeout(10):
                await call()
        except (BackendUnavailableError, ConfigurationError) as exc:
            failures += 1
            texts.extend(_texts_of(exc))
        else:
            pytest.fail("expected a connection failure")

    for url in pg_urls:
        store = PostgresBackend(url, table=ns, connect_timeout=2)
        texts += [repr(store), str(store)]
        await expect_failure(store.initialize)
        await store.close()
        stack = TieredBackend(tiers=[LocalCache()], store=PostgresBackend(url, table=ns, connect_timeout=2))
        texts.append(repr(stack))
        await expect_failure(stack.initialize)
        await stack.close()
        texts.append(repr(create_backend(url)))

    for url in redis_urls:
        store_r = RedisBackend(url, namespace=ns, connect_timeout=0.5)
        texts += [repr(store_r), str(store_r)]
        await expect_failure(store_r.initialize)  # it PINGs
        await store_r.close()
        # A stack degrades instead of failing: the tier and the channel log their failures.
        channel = InvalidationChannel(url, namespace=ns, connect_timeout=0.2)
        stack = TieredBackend(
            tiers=[LocalCache(), RedisCache(url, namespace=ns, connect_timeout=0.5)],
            store=InMemoryBackend(),
            coherence=channel,
            failure_threshold=100,
        )
        texts += [repr(stack), repr(channel), channel.subscriber_name, str(stack.stats())]
        async with stack:
            await stack.register("bot", {"v": 1})  # tier put fails, publish fails: both logged
            await stack.get_config("other")  # tier lookup fails: logged
            await asyncio.sleep(0.3)  # the listener fails to subscribe a few times: logged
        texts.append(repr(create_backend({"tiers": ["local", url], "store": "memory"})))

    # The log holds the failures we caused (else this test would prove nothing)...
    logged = caplog.text
    assert "failed during" in logged
    assert "could not publish" in logged
    assert failures == 2 * len(pg_urls) + len(redis_urls)
    # ...and not one spelling of the password.
    texts.append(logged)
    texts += [repr(r.args) for r in caplog.records]
    leaks = [t for t in texts if SECRET in t]
    assert leaks == [], leaks[:3]


@pytest.mark.parametrize(
    "spec",
    [
        f"mysql://u:{SECRET}@127.0.0.1:1/db",
        {"tiers": [f"postgresql://u:{SECRET}@127.0.0.1:1/db"], "store": "memory"},
    ],
    ids=["unknown-scheme", "postgres-as-a-tier"],
)
def test_factory_errors_do_not_quote_passwords(spec: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_backend(spec)  # type: ignore[arg-type]
    assert not [t for t in _texts_of(caught.value) if SECRET in t]
