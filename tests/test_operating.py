"""Operating a stack: explicit invalidation, ``track_access=False``, ``get_active_config`` on the hot path,
``health()`` and ``strict=True`` (fail fast at start). Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import orjson
import pytest

from tiered_registry import BackendUnavailableError, LocalCache, TieredBackend, create_backend
from tiered_registry.changes import ChangeEvent
from tiered_registry.stores.memory import InMemoryBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

from .conftest import MakeStack

WORKER = Path(__file__).with_name("coherence_worker.py")


@pytest.fixture
def make_stack(make_stack: MakeStack) -> MakeStack:
    """The shared ``make_stack``, with accesses flushed every 50 ms."""
    return functools.partial(make_stack, store_options={"access_flush_interval": 0.05})


async def _admin_sql(database_url: str, statement: str, *args: object) -> None:
    """A write made around the stack: an admin's SQL on the table."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:  # noqa: ASYNC109
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)
    return time.monotonic() - start


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- invalidate / invalidate_all ---------------------------------------------------------------


async def test_invalidate_after_an_admin_update_reaches_every_instance(
    make_stack, database_url, namespace
) -> None:
    a, b = await make_stack(), await make_stack()
    await a.register("bot", {"v": 1})
    await a.register("other", {"v": 1})
    assert await b.get_config("bot") == {"v": 1}
    assert await b.get_config("other") == {"v": 1}
    events: list[ChangeEvent] = []
    b.on_change(events.append)
    await _admin_sql(database_url, f'UPDATE "{namespace}" SET config = \'{{"v": 2}}\'::jsonb')
    await asyncio.sleep(0.05)
    assert await b.get_config("bot") == {"v": 1}  # cached: the write went around the stack
    await a.invalidate("bot")
    assert await a.get_config("bot") == {"v": 2}  # this process: at once
    lag = await _eventually(lambda: _equals(b, "bot", {"v": 2}), timeout=2)
    assert lag < 1
    assert [(e.bot_id, e.kind, e.remote) for e in events] == [("bot", "invalidated", True)]
    assert await b.get_config("other") == {"v": 1}  # only that bot
    assert a.stats()["redis"]["invalidations"] >= 1


async def test_invalidate_all_reaches_every_instance(make_stack, database_url, namespace) -> None:
    a, b = await make_stack(), await make_stack()
    for bot in ("x", "y"):
        await a.register(bot, {"v": 1})
        assert await b.get_config(bot) == {"v": 1}
    events: list[ChangeEvent] = []
    b.on_change(events.append)
    await _admin_sql(database_url, f'UPDATE "{namespace}" SET config = \'{{"v": 3}}\'::jsonb')
    await a.invalidate_all()
    for bot in ("x", "y"):
        assert await a.get_config(bot) == {"v": 3}
        await _eventually(lambda bot=bot: _equals(b, bot, {"v": 3}), timeout=2)  # type: ignore[misc]
    assert [(e.bot_id, e.kind) for e in events] == [(None, "resync")]


async def _equals(stack: TieredBackend, bot_id: str, expected: object) -> bool:
    return await stack.get_config(bot_id) == expected


async def test_invalidate_reaches_another_os_process(make_stack, redis_url, database_url, namespace) -> None:
    a = await make_stack()
    await a.register("bot", {"v": 1})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), redis_url, database_url, namespace,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        child.stdin.write(b"expect " + orjson.dumps(["active", {"v": 1}]) + b"\n")
        await child.stdin.drain()
        assert (await asyncio.wait_for(child.stdout.readline(), 15)).split()[0] == b"seen"  # cached now
        await _admin_sql(database_url, f'UPDATE "{namespace}" SET config = \'{{"v": 2}}\'::jsonb')
        child.stdin.write(b"expect " + orjson.dumps(["active", {"v": 2}]) + b"\n")
        await child.stdin.drain()
        await asyncio.sleep(0.2)  # the child spins on its local copy: the admin's write is not seen
        await a.invalidate("bot")
        answer = (await asyncio.wait_for(child.stdout.readline(), 15)).decode().split()
        assert answer[0] == "seen", answer
        assert (int(answer[1]) - time.time_ns()) / 1e9 < 1
        child.stdin.write(b"quit\n")
        await child.stdin.drain()
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_invalidate_with_redis_unreachable_is_owed(database_url, namespace, private_redis) -> None:
    url, _start, stop = private_redis
    stack = TieredBackend(
        tiers=[LocalCache(ttl=300), RedisCache(url, ttl=300, namespace=namespace)],
        store=PostgresBackend(database_url, table=namespace),
        reset_timeout=0.05,
    )
    async with stack:
        try:
            await stack.register("bot", {"v": 1})
            stop()
            await stack.invalidate("bot")  # does not raise: owed to the Redis tier
            assert stack.stats()["redis"]["owed"] >= 1
            assert await stack.get_config("bot") == {"v": 1}  # from the store
        finally:
            await stack.store.drop()  # type: ignore[attr-defined]


async def test_plain_stores_have_no_op_invalidation() -> None:
    async with InMemoryBackend() as store:
        await store.register("bot", {"v": 1})
        await store.invalidate("bot")
        await store.invalidate_all()
        assert await store.get_config("bot") == {"v": 1}


# ---- track_access=False -------------------------------------------------------------------------


async def _last_accessed(database_url: str, table: str, bot_id: str) -> object:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(f'SELECT last_accessed_at FROM "{table}" WHERE bot_id = $1', bot_id)
    finally:
        await connection.close()


@pytest.mark.parametrize("kind", ["store", "stack", "create_backend"])
async def test_track_access_false_writes_no_access(database_url, namespace, kind) -> None:
    if kind == "store":
        registry = PostgresBackend(
            database_url, table=namespace, access_flush_interval=0.01, track_access=False
        )
    elif kind == "stack":
        registry = TieredBackend(
            tiers=[LocalCache(ttl=30)],
            store=PostgresBackend(database_url, table=namespace),
            access_flush_interval=0.01,
            track_access=False,
        )
    else:
        registry = create_backend(
            {
                "tiers": ["local"],
                "store": {"type": "postgres", "dsn": database_url, "table": namespace},
                "access_flush_interval": 0.01,
                "track_access": False,
            }
        )
    async with registry:
        try:
            written = await registry.register("bot", {"v": 1})
            before = await _last_accessed(database_url, namespace, "bot")
            for _ in range(20):
                assert await registry.get_config("bot") == {"v": 1}
                record = await registry.get("bot")
                assert record is not None
                assert record.last_accessed_at == written.last_accessed_at  # not moved: not tracked
                await asyncio.sleep(0.005)
            await registry.flush_accesses()
            assert await _last_accessed(database_url, namespace, "bot") == before
            listed = await registry.list_all()
            assert listed[0].last_accessed_at == written.last_accessed_at
        finally:
            await registry.clear()
            store = registry.store if isinstance(registry, TieredBackend) else registry
            await store.drop()  # type: ignore[attr-defined]


# ---- get_active_config ---------------------------------------------------------------------------


async def test_get_active_config_hot_path_is_about_as_cheap_as_get_config() -> None:
    import timeit

    async with TieredBackend(tiers=[LocalCache(ttl=300)], store=InMemoryBackend()) as stack:
        await stack.register("bot", {"v": 1})
        await stack.register("off", {"v": 1}, "inactive")
        assert await stack.get_active_config("bot") == {"v": 1}
        assert await stack.get_active_config("off") is None
        assert await stack.get_active_config("off") is None  # a local hit too
        assert await stack.get_active_config("none") is None

        def run(method: Callable[[str], Awaitable[object]]) -> float:
            def once() -> None:
                coroutine = method("bot")
                with contextlib.suppress(StopIteration):
                    coroutine.send(None)  # type: ignore[attr-defined]

            return min(timeit.repeat(once, number=20_000, repeat=5)) / 20_000 * 1e6

        plain, active = run(stack.get_config), run(stack.get_active_config)
        print(f"\nlocal hit: get_config {plain:.3f} µs, get_active_config {active:.3f} µs")
        assert active < plain * 1.5 + 0.1


# ---- health() and strict=True -------------------------------------------------------------------


def _stack_on(url: str, namespace: str, **options: object) -> TieredBackend:
    return TieredBackend(
        tiers=[LocalCache(ttl=300), RedisCache(url, ttl=300, namespace=namespace)],
        store=InMemoryBackend(),
        reset_timeout=0.1,
        **options,  # type: ignore[arg-type]
    )


async def test_health_of_a_working_stack(redis_url, namespace) -> None:
    async with _stack_on(redis_url, namespace) as stack:
        await stack.register("bot", {"v": 1})
        health = stack.health()
        assert health["status"] == "up"
        assert {name: part["status"] for name, part in health["tiers"].items()} == {
            "local": "up",
            "redis": "up",
        }
        assert health["store"]["status"] == "up"
        assert health["channel"]["status"] == "up"
        assert health["channel"]["since"] <= time.time()
        assert health["tiers"]["redis"]["breaker"] == "closed"
        await stack.clear()
    assert stack.health()["status"] == "down"  # closed


async def test_health_with_a_dead_redis_port(namespace) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    async with _stack_on(url, namespace) as stack:
        await stack.register("bot", {"v": 1})
        for i in range(5):
            assert await stack.get_config("bot") == {"v": 1}
            assert await stack.get_config(f"other-{i}") is None  # not owed: tried, fails
        health = stack.health()
        assert health["status"] == "degraded"
        redis = health["tiers"]["redis"]
        assert redis["status"] == "down"
        assert redis["breaker"] in ("open", "half-open")
        assert redis["owed"] >= 1
        assert health["tiers"]["local"] == {
            **health["tiers"]["local"],
            "status": "degraded",
            "bypassed": True,
        }
        assert health["channel"]["status"] == "down"
        assert health["store"]["status"] == "up"
        assert stack.stats()["channel"]["up"] == 0


async def test_health_follows_a_redis_outage_and_recovery(namespace, private_redis, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="tiered_registry")
    url, start, stop = private_redis
    async with _stack_on(url, namespace) as stack:
        await stack.register("bot", {"v": 1})
        assert stack.health()["status"] == "up"
        stopped_at = time.time()
        stop()

        async def degraded() -> bool:
            await stack.register("bot", {"v": 2})  # a write owes Redis its invalidation
            await asyncio.sleep(0.01)
            health = stack.health()
            return health["tiers"]["redis"]["status"] == "down" and health["channel"]["status"] == "down"

        await _eventually(degraded, timeout=10)
        health = stack.health()
        assert health["status"] == "degraded"
        assert health["tiers"]["redis"]["since"] >= stopped_at
        assert health["channel"]["since"] >= stopped_at
        assert health["channel"]["drops"] >= 1
        assert health["tiers"]["redis"]["owed"] >= 1
        assert await stack.get_config("bot") == {"v": 2}  # from the store
        start()

        async def up() -> bool:
            await stack.get_config("bot")
            await asyncio.sleep(0.02)
            return stack.health()["status"] == "up"

        await _eventually(up, timeout=15)
        assert stack.health()["tiers"]["redis"]["owed"] == 0
    # The tier's outage: logged once when it started and once when it ended, at WARNING.
    tier_warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith("cache tier")
    ]
    assert len(tier_warnings) == 2, tier_warnings
    assert "failed during" in tier_warnings[0]
    assert "answers again" in tier_warnings[1]
    assert any(r.levelno == logging.DEBUG and "failed during" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("with_local", [True, False])
async def test_strict_start_fails_fast_on_a_dead_port(namespace, with_local) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    tiers = [LocalCache(ttl=30)] if with_local else []
    stack = TieredBackend(
        tiers=[*tiers, RedisCache(url, namespace=namespace)], store=InMemoryBackend(), strict=True
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="strict=True"):
        await stack.initialize()
    assert time.monotonic() - started < 3
    assert not stack.is_open
    await stack.close()


async def test_strict_start_fails_when_only_the_channel_is_unreachable(redis_url, namespace) -> None:
    from tiered_registry.coherence import InvalidationChannel

    dead = InvalidationChannel(f"redis://127.0.0.1:{_free_port()}/0", namespace=namespace)
    stack = TieredBackend(
        tiers=[LocalCache(ttl=30), RedisCache(redis_url, namespace=namespace)],
        store=InMemoryBackend(),
        coherence=dead,
        strict=True,
    )
    with pytest.raises(BackendUnavailableError, match="not subscribed"):
        await stack.initialize()
    await stack.close()


async def test_strict_start_succeeds_when_everything_answers(redis_url, database_url, namespace) -> None:
    stack = create_backend(
        {
            "tiers": ["local", {"type": "redis", "url": redis_url, "namespace": namespace}],
            "store": "memory",
            "strict": True,
        }
    )
    async with stack:
        assert isinstance(stack, TieredBackend)
        assert stack.health()["status"] == "up"


async def test_health_of_the_store_follows_its_last_call(database_url, namespace) -> None:
    stack = TieredBackend(tiers=[LocalCache(ttl=30)], store=PostgresBackend(database_url, table=namespace))
    async with stack:
        await stack.register("bot", {"v": 1})
        assert stack.health()["store"]["status"] == "up"
        await _admin_sql(database_url, f'DROP TABLE "{namespace}"')  # every store call fails now
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the store raises
            await stack.get_config("other")
        health = stack.health()
        assert health["status"] == "down"
        assert health["store"]["status"] == "down"
        assert health["store"]["error"]
        async with PostgresBackend(database_url, table=namespace) as again:  # creates the table again
            await again.register("other", {"v": 2})
        assert await stack.get_config("other") == {"v": 2}
        assert stack.health()["store"]["status"] == "up"
        assert stack.health()["store"]["error"] is None
        await stack.store.drop()  # type: ignore[attr-defined]
