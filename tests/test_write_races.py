"""Write races across the tiers of ``local -> redis cache -> postgres``.

Two stacks, A and B, on one Redis namespace and one table, stand in for two processes. After every
scenario, A and B (``peek``, ``get_config``, ``exists``), the raw Redis value of the bot and a fresh
read of the store must agree. The scenarios:

1. Write-through out of commit order: A's write commits, then A stalls (``PausingStore`` holds it
   after the commit) while B unregisters / registers / deactivates / clears; A then updates the
   tiers with its older value. Also two concurrent registers on A itself.
2. A write cancelled after the store committed still finishes its tier updates and its
   announcement: cancelled while Redis stalls (``CLIENT PAUSE``), and cancelled at every await
   point after the commit in turn.
3. A write whose statement times out while another transaction holds the row lock is cancelled on
   the server (it does not commit once the lock is released) and raises
   ``WriteOutcomeUnknownError``.
4. ``TierGuard`` debts have generations: a debt incurred while ``settle`` pays an older one of
   the same key (or "everything") survives that ``settle``, unless the tier was invalidated
   again after it was incurred.
5. A half-open probe that is cancelled does not leave the breaker half-open for good: once Redis
   answers again it is used again, and what a write owed it meanwhile is paid.

TTLs are far longer than a test, so expiry can never hide a stale entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tiered_registry import (
    BackendUnavailableError,
    Registration,
    TieredBackend,
    WriteOutcomeUnknownError,
)
from tiered_registry.circuit import TierGuard
from tiered_registry.codec import decode_registration
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

from .faults_support import build_stack, wait_channel_up
from .helpers import PausingStore

BOT = "bot-1"
SETTLE = 0.3  # a pub/sub round trip, with a wide margin
AGREE_WITHIN = 1.0  # how long a check of agreement keeps trying before it fails

State = tuple[str, str] | None  # None: no such bot; else (status, the config's tag)


def cfg(tag: str) -> dict[str, Any]:
    return {"v": tag, "model": "m-1"}


def _state(record: Registration | None) -> State:
    return None if record is None else (record.status, str(record.config["v"]))


@dataclass
class Pair:
    a: TieredBackend
    b: TieredBackend
    a_store: PausingStore  # A's store: can hold a write after its commit
    raw: Any  # a plain redis-py client on the same Redis
    truth: PostgresBackend  # a fresh reader of the table
    namespace: str

    async def views(self, bot_id: str) -> dict[str, object]:
        """What each part answers for ``bot_id`` (Redis first: the stacks' reads may fill it)."""
        out: dict[str, object] = {}
        raw = await self.raw.get(f"{{{self.namespace}}}:c:{bot_id}")
        if raw is not None:
            out["redis"] = None if raw == b"null" else _state(decode_registration(raw))
        for name, stack in (("A", self.a), ("B", self.b)):
            out[name] = _state(await stack.peek(bot_id))
            config = await stack.get_config(bot_id)
            out[f"{name}.get_config"] = None if config is None else str(config["v"])
            out[f"{name}.exists"] = await stack.exists(bot_id)
        out["store"] = _state(await self.truth.peek(bot_id))
        return out

    async def seed(self, bot_id: str, tag: str) -> None:
        """A registers ``bot_id`` as ``tag``; B has heard of it and holds it in its local tier."""
        heard = _channel(self.b).received
        await self.a.register(bot_id, cfg(tag))
        await _heard(self.b, heard + 1)
        assert await self.b.get_config(bot_id) == cfg(tag)
        assert self.b._local is not None
        assert self.b._local.get_entry(bot_id) is not None


def _channel(stack: TieredBackend) -> Any:
    channel = stack._coherence
    assert channel is not None
    return channel


async def _heard(stack: TieredBackend, count: int) -> None:
    """Wait until ``stack`` has received ``count`` invalidations from other processes."""
    channel = _channel(stack)
    async with asyncio.timeout(2):
        while channel.received < count:  # noqa: ASYNC110 - a counter of the channel's, no event to wait on
            await asyncio.sleep(0.002)


def _disagreements(views: dict[str, object]) -> list[str]:
    store = views["store"]
    assert store is None or isinstance(store, tuple)
    want_config = None if store is None else store[1]
    want_exists = store is not None and store[0] == "active"
    bad = []
    for part, seen in views.items():
        want: object = store
        if part.endswith(".get_config"):
            want = want_config
        elif part.endswith(".exists"):
            want = want_exists
        if seen != want:
            bad.append(f"{part}={seen!r}")
    return bad


async def assert_agree(pair: Pair, *bot_ids: str, within: float = AGREE_WITHIN) -> None:
    """A, B, Redis and the store agree on every bot (tried again for ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        problems = []
        for bot_id in bot_ids:
            views = await pair.views(bot_id)
            bad = _disagreements(views)
            if bad:
                problems.append(f"{bot_id}: store={views['store']!r} but {', '.join(bad)}")
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail("caches disagree with the store: " + "; ".join(problems))
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def two_stacks(
    redis_url: str,
    database_url: str,
    namespace: str,
    *,
    a_command_timeout: float = 2.0,
    **a_options: Any,
) -> AsyncIterator[Pair]:
    a_store = PausingStore(
        PostgresBackend(database_url, table=namespace, command_timeout=a_command_timeout, max_size=4)
    )
    a = build_stack(redis_url, database_url, namespace, store=a_store, **a_options)
    b = build_stack(redis_url, database_url, namespace)
    raw = aioredis.Redis.from_url(redis_url)
    truth = PostgresBackend(database_url, table=namespace, max_size=2)
    try:
        await truth.initialize()
        await a.initialize()
        await b.initialize()
        await wait_channel_up([a, b])
        yield Pair(a, b, a_store, raw, truth, namespace)
    finally:
        try:
            await a.close()
            await b.close()
            if truth.is_open:
                await truth.drop()
        finally:
            await truth.close()
            keys = [key async for key in raw.scan_iter(match=f"{{{namespace}}}*")]
            if keys:
                await raw.unlink(*keys)
            await raw.aclose()


# ---- 1. write-through out of commit order -------------------------------------------------------


@pytest.mark.parametrize("b_op", ["unregister", "register", "deactivate", "clear"])
async def test_write_through_out_of_commit_order_across_processes(
    redis_url: str, database_url: str, namespace: str, b_op: str
) -> None:
    """A's register commits X1 and stalls before any tier; B's later write completes; A resumes."""
    async with two_stacks(redis_url, database_url, namespace) as pair:
        hold = pair.a_store.hold_next("register")
        a_write = asyncio.create_task(pair.a.register(BOT, cfg("X1")))
        await hold.reached.wait()  # X1 committed; A has touched no tier yet
        if b_op == "register":
            await pair.b.register(BOT, cfg("X2"))
        elif b_op == "unregister":
            assert await pair.b.unregister(BOT) is True
        elif b_op == "deactivate":
            assert await pair.b.deactivate(BOT) is True
        else:
            await pair.b.clear()
        hold.gate.set()
        await a_write
        await asyncio.sleep(SETTLE)
        expected = {
            "unregister": None,
            "register": ("active", "X2"),
            "deactivate": ("inactive", "X1"),
            "clear": None,
        }[b_op]
        assert _state(await pair.truth.peek(BOT)) == expected
        await assert_agree(pair, BOT)


async def test_write_through_out_of_commit_order_in_one_process(
    redis_url: str, database_url: str, namespace: str
) -> None:
    """Two registers on A: the first (X1) commits and stalls, the second (X2) completes, the first resumes."""
    async with two_stacks(redis_url, database_url, namespace) as pair:
        hold = pair.a_store.hold_next("register")
        first = asyncio.create_task(pair.a.register(BOT, cfg("X1")))
        await hold.reached.wait()
        await pair.a.register(BOT, cfg("X2"))
        hold.gate.set()
        await first
        await asyncio.sleep(SETTLE)
        assert _state(await pair.truth.peek(BOT)) == ("active", "X2")
        await assert_agree(pair, BOT)
        assert await pair.a.get_config(BOT) == cfg("X2")
        assert await pair.b.get_config(BOT) == cfg("X2")


# ---- 2. a write cancelled after the commit still finishes ---------------------------------------

STALL_MS = 300


@pytest.mark.parametrize("op", ["register", "deactivate"])
async def test_write_cancelled_while_redis_stalls_still_finishes(
    private_redis, database_url: str, namespace: str, op: str
) -> None:
    """A's write committed; then Redis stalls (``CLIENT PAUSE``, begun after the commit) and A's write,
    its Redis update pending, is cancelled 50 ms later."""
    url = private_redis[0]
    async with two_stacks(url, database_url, namespace) as pair:
        await pair.seed(BOT, "X1")  # A and B hold X1 locally, Redis too
        hold = pair.a_store.hold_next(op)
        write: asyncio.Task[Any]
        if op == "register":
            write = asyncio.create_task(pair.a.register(BOT, cfg("X2")))
        else:
            write = asyncio.create_task(pair.a.deactivate(BOT))
        await hold.reached.wait()  # committed
        await pair.raw.execute_command("CLIENT", "PAUSE", STALL_MS, "ALL")  # every client waits
        stall_ends = time.monotonic() + STALL_MS / 1000
        hold.gate.set()  # A goes on to the (stalled) Redis
        await asyncio.sleep(0.05)
        assert not write.done(), "the write did not wait for the stalled Redis"
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        await asyncio.sleep(max(0.0, stall_ends - time.monotonic()) + SETTLE)
        expected = ("active", "X2") if op == "register" else ("inactive", "X1")
        assert _state(await pair.truth.peek(BOT)) == expected
        await assert_agree(pair, BOT)


@pytest.mark.parametrize("op", ["register", "unregister"])
async def test_write_cancelled_at_every_await_point_after_the_commit(
    redis_url: str, database_url: str, namespace: str, op: str
) -> None:
    """Cancel A's write ``k`` loop iterations after its commit, k = 0, 1, 2... until it finishes first."""
    async with two_stacks(redis_url, database_url, namespace) as pair:
        cancelled = 0
        bots = []
        for k in range(1000):
            bot_id = f"bot-{k}"
            bots.append(bot_id)
            await pair.seed(bot_id, "X1")
            pair.a_store.committed.clear()
            write: asyncio.Task[Any]
            if op == "register":
                write = asyncio.create_task(pair.a.register(bot_id, cfg("X2")))
            else:
                write = asyncio.create_task(pair.a.unregister(bot_id))
            await pair.a_store.committed.wait()
            for _ in range(k):
                await asyncio.sleep(0)
            finished = write.done()
            if not finished:
                write.cancel()
                cancelled += 1
            with contextlib.suppress(asyncio.CancelledError):
                await write
            assert _state(await pair.truth.peek(bot_id)) == (("active", "X2") if op == "register" else None)
            try:
                await assert_agree(pair, bot_id)
            except pytest.fail.Exception as exc:
                raise AssertionError(f"cancelled {k} loop iterations after the commit: {exc}") from None
            if finished:
                break
        else:
            pytest.fail("the write never finished before being cancelled")
        assert cancelled >= 3, f"only {cancelled} await points after the commit were covered"
        await asyncio.sleep(SETTLE)
        await assert_agree(pair, *bots)


# ---- 3. a timed-out write is cancelled on the server --------------------------------------------


async def test_write_timed_out_on_a_locked_row_is_cancelled_on_the_server(
    redis_url: str, database_url: str, namespace: str
) -> None:
    async with two_stacks(redis_url, database_url, namespace, a_command_timeout=0.5) as pair:
        await pair.seed(BOT, "X1")
        holder = await asyncpg.connect(database_url)
        error: BaseException | None = None
        try:
            locked = holder.transaction()
            await locked.start()
            try:
                sql = f"SELECT 1 FROM {pair.truth.qualified_table} WHERE bot_id = $1 FOR UPDATE"
                assert await holder.fetchval(sql, BOT) == 1
                started = time.monotonic()
                try:
                    await pair.a.register(BOT, cfg("X2"))
                except BackendUnavailableError as exc:
                    error = exc
                elapsed = time.monotonic() - started
            finally:
                await locked.rollback()
        finally:
            await holder.close()
        await asyncio.sleep(0.5)  # time for a statement still waiting on the lock to commit
        problems = []
        if not isinstance(error, WriteOutcomeUnknownError):
            problems.append(f"register raised {error!r}, not WriteOutcomeUnknownError")
        if elapsed > 1.5:
            problems.append(f"register took {elapsed:.2f}s with command_timeout=0.5")
        stored = _state(await pair.truth.peek(BOT))
        if stored != ("active", "X1"):
            problems.append(f"the timed-out statement committed once the lock was gone: store has {stored}")
        try:
            await assert_agree(pair, BOT)
        except pytest.fail.Exception as exc:
            problems.append(str(exc))
        assert not problems, "\n".join(problems)


# ---- 4. debts with generations --------------------------------------------------------------------


@pytest.fixture
async def guarded_tier(redis_url: str, namespace: str) -> AsyncIterator[tuple[TierGuard, RedisCache]]:
    tier = RedisCache(redis_url, namespace=namespace, ttl=300)
    await tier.initialize()
    try:
        yield TierGuard(tier), tier
    finally:
        await tier.close()
        raw = aioredis.Redis.from_url(redis_url)
        try:
            keys = [key async for key in raw.scan_iter(match=f"{{{namespace}}}*")]
            if keys:
                await raw.unlink(*keys)
        finally:
            await raw.aclose()


class TierCalls:
    """Wraps a tier's ``invalidate`` and ``clear`` (instance attributes): records each call that
    starts after :meth:`newer_debt` and holds the first call of ``pause`` at a gate once the real
    call has returned (it reached Redis)."""

    def __init__(self, tier: RedisCache, pause: str) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.after_newer_debt: list[tuple[str, tuple[Any, ...]]] = []
        self._newer = False
        self._paused = False
        for name in ("invalidate", "clear"):
            setattr(tier, name, self._wrap(name, getattr(tier, name), pause))

    def _wrap(self, name: str, real: Any, pause: str) -> Any:
        async def call(*args: Any) -> None:
            if self._newer:
                self.after_newer_debt.append((name, args))
            await real(*args)
            if name == pause and not self._paused:
                self._paused = True
                self.entered.set()
                await self.gate.wait()

        return call

    def newer_debt(self, guard: TierGuard, bot_id: str) -> None:
        guard.owe(bot_id)
        self._newer = True

    def paid_later(self, bot_id: str) -> bool:
        """Did a call that can pay ``bot_id``'s newer debt start after it was incurred?"""
        return any(name == "clear" or args == (bot_id,) for name, args in self.after_newer_debt)


async def test_a_debt_incurred_while_settle_pays_the_key_survives(guarded_tier) -> None:
    guard, tier = guarded_tier
    guard.owe("bot")
    calls = TierCalls(tier, pause="invalidate")
    settling = asyncio.create_task(guard.settle())
    await calls.entered.wait()  # the old debt's invalidation reached Redis
    calls.newer_debt(guard, "bot")  # a newer write missed the tier
    calls.gate.set()
    await settling
    # Still owed, unless this settle paid it with an invalidation that began after it was owed.
    assert guard.owes_for("bot") or calls.paid_later("bot"), "the newer debt was discarded with the older one"
    await guard.settle()
    assert not guard.owes_for("bot")


async def test_a_debt_incurred_while_settle_clears_everything_survives(guarded_tier) -> None:
    guard, tier = guarded_tier
    guard.owe(None)
    calls = TierCalls(tier, pause="clear")
    settling = asyncio.create_task(guard.settle())
    await calls.entered.wait()  # the tier was cleared
    calls.newer_debt(guard, "bot")
    calls.gate.set()
    await settling
    assert guard.owes_for("bot") or calls.paid_later("bot"), (
        "a debt incurred during the clear was dropped with 'everything'"
    )
    await guard.settle()
    assert not guard.owes_for("bot")


# ---- 5. a cancelled half-open probe ---------------------------------------------------------------


async def test_a_cancelled_half_open_probe_does_not_keep_the_breaker_half_open(
    private_redis, database_url: str, namespace: str
) -> None:
    url = private_redis[0]
    hang_ms = 1500
    async with two_stacks(
        url, database_url, namespace, socket_timeout=0.3, failure_threshold=1, reset_timeout=0.2
    ) as pair:
        a = pair.a
        redis_tier = a.tiers[1]
        guard = a._guards[id(redis_tier)]
        await pair.raw.execute_command("CLIENT", "PAUSE", hang_ms, "ALL")  # Redis hangs
        hang_ends = time.monotonic() + hang_ms / 1000
        assert await a.get_config("uncached-1") is None  # the lookup times out: the breaker opens
        assert guard.state == "open"
        await asyncio.sleep(guard.reset_timeout + 0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await a.get_config("uncached-2")  # the half-open probe, cancelled
        await a.register("written", cfg("W"))  # Redis still hangs: owed
        assert guard.owes_for("written")
        assert time.monotonic() < hang_ends, "too slow: Redis answered again before the checks began"
        await asyncio.sleep(max(0.0, hang_ends - time.monotonic()))
        deadline = time.monotonic() + 2.0
        n = 0
        while guard.state != "closed" or guard.owes:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"2 s after Redis answered again the breaker is {guard.state!r} "
                    f"and owes {'something' if guard.owes else 'nothing'}"
                )
            n += 1
            await a.get_config(f"probe-{n}")  # reads that may probe
            await asyncio.sleep(0.05)
        lookups = redis_tier.stats.hits + redis_tier.stats.misses
        assert await a.get_config("uncached-after") is None
        assert redis_tier.stats.hits + redis_tier.stats.misses > lookups, "reads still skip Redis"
        await asyncio.sleep(SETTLE)
        await assert_agree(pair, "written")
