"""Fault injection under load: ``local -> redis cache -> postgres`` keeps its promises while the
Redis server is stopped and started again, and while PostgreSQL is restarted.

Three views of one registry run a mixed workload (95% ``get_config``, 5% register/deactivate/
unregister, over 100 bots): two ``TieredBackend`` instances in this process (50 tasks) and one in a
real second OS process (``python -m tests.faults_support worker``). Counted, per phase: failed reads,
failed writes, operations over the time bound. Checked afterwards, against a fresh connection to the
store: no acknowledged write is missing, and, after recovery and a short settle, every instance
answers every bot exactly as the store does (no stale read). See ``faults_support`` for the write log.

Only servers started here are disturbed: ``private_redis`` and a private embedded PostgreSQL.
``TR_SOAK=1`` enables the long variant (several faults of each kind in a row).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tiered_registry import BackendUnavailableError, LocalCache, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

from .faults_support import (
    OP_TIMEOUT,
    PrivatePostgres,
    State,
    Tally,
    Worker,
    Workload,
    build_stack,
    possible_from_json,
    view,
    views_of,
    wait_channel_up,
)

SOAK = os.environ.get("TR_SOAK") == "1"
N_BOTS = 100
N_TASKS = 50
WORKER_BOTS = 10  # the last ones, written only by the other OS process


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this module's own (never the shared one), to be stopped and restarted."""
    server = PrivatePostgres()
    server.open()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg(private_pg: PrivatePostgres) -> PrivatePostgres:
    private_pg.start()  # whatever an earlier test did, it is up
    return private_pg


@dataclass
class Run:
    """Everything one fault-injection run counted."""

    tallies: dict[str, Tally] = field(default_factory=dict)
    contradictions: int = 0
    missing_acknowledged: int = 0
    ambiguous_bots: int = 0
    stale_reads: int = 0
    stale_examples: list[str] = field(default_factory=list)

    def phase(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    def total(self) -> Tally:
        total = Tally()
        for tally in self.tallies.values():
            total.merge(tally.as_dict())
        return total

    def print(self, title: str) -> None:
        print(f"\n== {title} ==")
        for name, tally in self.tallies.items():
            print(f"  {name:>12}: {tally.as_dict()}")
        total = self.total()
        print(
            f"  TOTAL: reads {total.reads}, failed reads {total.failed_reads}, writes {total.writes}, "
            f"failed writes {total.failed_writes}, over {OP_TIMEOUT}s {total.timeouts}, "
            f"max read {total.max_read_s:.3f}s, max write {total.max_write_s:.3f}s"
        )
        print(
            f"  acknowledged writes missing afterwards: {self.missing_acknowledged} "
            f"(bots with an unknown-outcome write: {self.ambiguous_bots}; "
            f"write answers contradicting the log: {self.contradictions}); "
            f"stale reads after recovery: {self.stale_reads} {self.stale_examples[:5]}"
        )


@dataclass
class Fault:
    """``kind`` is "redis" or "postgres"; ``down``/``up`` stop and start the server (blocking)."""

    kind: str
    stop: Callable[[], None]
    start: Callable[[], None]
    is_down: bool = False

    def down(self) -> None:
        self.is_down = True
        self.stop()

    def up(self) -> None:
        if self.is_down:
            self.start()
            self.is_down = False


async def _run(
    redis_url: str,
    database_url: str,
    namespace: str,
    faults: list[Fault],
    *,
    before: float = 1.5,
    outage: float = 2.5,
    after: float = 2.5,
    settle: float = 1.0,
) -> Run:
    bots = [f"bot-{i:03d}" for i in range(N_BOTS)]
    ours, theirs = bots[:-WORKER_BOTS], bots[-WORKER_BOTS:]
    owned = [[b for j, b in enumerate(ours) if j % N_TASKS == i] for i in range(N_TASKS)]
    # Two instances that read and write, and one that only reads (most bot-server processes).
    stacks = [build_stack(redis_url, database_url, namespace) for _ in range(3)]
    workload = Workload(stacks[:2], bots, owned, tag="p", seed=20240611, readers=stacks[2:])
    run = Run()
    worker: Worker | None = None
    try:
        for stack in stacks:
            await stack.initialize()
        worker = await Worker.start(redis_url, database_url, namespace, bots, theirs)
        await workload.seed()
        await worker.ask("seed")

        async def phase(name: str, *, store_down: bool = False) -> None:
            workload.phase, workload.store_down = name, store_down
            await worker.ask(f"phase {'down' if store_down else 'up'} {name}")

        workload.start(duration_limit=60 + len(faults) * 30)
        await worker.ask("run")
        await asyncio.sleep(before)
        for number, fault in enumerate(faults, 1):
            name = f"{fault.kind}#{number}" if len(faults) > 1 else fault.kind
            if fault.kind == "postgres":
                # Every bot cached in every tier and instance, with no write in flight: from now on
                # each read is of a cached bot, and must keep working while PostgreSQL is down.
                await phase(f"{name} warm")
                await workload.quiesce()
                await worker.ask("quiesce")
                await workload.warm()
                await worker.ask("warm")
                await asyncio.to_thread(fault.down)
                await phase(f"{name} down", store_down=True)
                workload.writes_enabled = True  # writes go on: they must fail cleanly
                await worker.ask("resume")
                await asyncio.sleep(outage)
                await phase(f"{name} starting")
            else:
                await phase(f"{name} stopping")
                await asyncio.to_thread(fault.down)
                await phase(f"{name} down")
                await asyncio.sleep(outage)
                await phase(f"{name} starting")
            await asyncio.to_thread(fault.up)
            await phase(f"after {name}")
            await asyncio.sleep(after)

        # Recovery is over: stop the load. With no request at all, a correct stack converges within
        # a short settle (nothing may wait for a later write or read of the same bot to heal it).
        await workload.quiesce()
        await workload.stop()
        report = await worker.ask("stop")
        for phase_name, tally in workload.tallies.items():
            run.phase(phase_name).merge(tally.as_dict())
        for phase_name, counts in report["tallies"].items():
            run.phase(phase_name).merge(counts)
        run.contradictions = workload.contradictions + report["contradictions"]
        possible: dict[str, set[State]] = {**workload.possible, **possible_from_json(report["possible"])}

        await wait_channel_up(stacks)
        await asyncio.sleep(settle)

        truth = PostgresBackend(database_url, table=namespace)
        async with truth:
            store = {b: view(await truth.peek(b)) for b in bots}
        run.missing_acknowledged = sum(1 for b in bots if store[b] not in possible[b])
        run.ambiguous_bots = sum(1 for b in bots if len(possible[b]) > 1)
        seen = {
            name: await views_of(stack, bots)
            for name, stack in zip(("writer A", "writer B", "reader C"), stacks, strict=True)
        }
        seen["other process"] = await worker.ask("views")
        await worker.quit()
        worker = None
    finally:
        await workload.stop()
        if worker is not None:
            await worker.kill()
        for fault in faults:  # after a failure half-way: every server up again before cleaning up
            await asyncio.to_thread(fault.up)
        for stack in stacks:
            await stack.close()
        await _drop(redis_url, database_url, namespace)
    return run


async def _drop(redis_url: str, database_url: str, namespace: str) -> None:
    cleaner = TieredBackend(
        tiers=[RedisCache(redis_url, namespace=namespace)],
        store=PostgresBackend(database_url, table=namespace),
        coherence=False,
    )
    async with cleaner:
        await cleaner.clear()
        await cleaner.store.drop()  # type: ignore[attr-defined]


def _assert_bounded(run: Run) -> None:
    for name, tally in run.tallies.items():
        assert tally.timeouts == 0, f"{name}: operations over {OP_TIMEOUT}s"
        assert tally.max_read_s < OP_TIMEOUT, name
        assert tally.max_write_s < OP_TIMEOUT, name
        assert tally.foreign_errors == 0, f"{name}: not BackendUnavailableError: {tally.errors}"


def _assert_consistent(run: Run) -> None:
    assert run.missing_acknowledged == 0
    assert run.contradictions == 0
    assert run.stale_reads == 0, run.stale_examples[:10]


def _assert_postgres_outage(run: Run, name: str) -> None:
    down = run.tallies[f"{name} down"]
    assert down.reads > 0
    assert down.failed_reads == 0, f"reads of cached bots failed while PostgreSQL was down: {down.errors}"
    assert down.writes > 0
    assert down.failed_writes == down.writes, "a write was acknowledged while PostgreSQL was down"
    assert set(down.errors) <= {"register BackendUnavailableError", "deactivate BackendUnavailableError",
                                "unregister BackendUnavailableError"}  # fmt: skip
    assert down.half_written == 0, "a write that failed left its value in a tier"


def _redis_fault(private_redis: Any) -> Fault:
    _, start, stop = private_redis
    return Fault("redis", stop, start)


def _postgres_fault(pg: PrivatePostgres) -> Fault:
    return Fault("postgres", pg.stop, pg.start)


async def test_a_redis_restart_under_load(private_redis, database_url, namespace) -> None:
    # PostgreSQL is not disturbed here: the shared server will do.
    run = await _run(private_redis[0], database_url, namespace, [_redis_fault(private_redis)])
    run.print("Redis stopped and started again under load")
    _assert_bounded(run)
    # The store stayed up: every read and every write succeeded, Redis or not.
    assert run.total().failed_reads == 0
    assert run.total().failed_writes == 0
    _assert_consistent(run)


async def test_a_postgres_restart_under_load(private_redis, pg, namespace) -> None:
    run = await _run(private_redis[0], pg.url, namespace, [_postgres_fault(pg)])
    run.print("PostgreSQL stopped and started again under load")
    _assert_bounded(run)
    _assert_consistent(run)
    _assert_postgres_outage(run, "postgres")


async def test_a_postgres_restart_right_after_a_redis_restart(private_redis, pg, namespace) -> None:
    """The short form of the soak below (one fault of each kind, back to back). Before owed
    invalidations were per key, the debt left by the Redis outage never shrank under load, so
    the Redis tier was still skipped, and the final payment evicted every local copy, as
    PostgreSQL went down: reads of cached bots failed."""
    faults = [_redis_fault(private_redis), _postgres_fault(pg)]
    run = await _run(private_redis[0], pg.url, namespace, faults)
    run.print("Redis restarted, then PostgreSQL")
    _assert_bounded(run)
    _assert_postgres_outage(run, "postgres#2")
    _assert_consistent(run)


@pytest.mark.slow
@pytest.mark.skipif(not SOAK, reason="soak variant: set TR_SOAK=1")
@pytest.mark.timeout(900)
async def test_soak_alternating_redis_and_postgres_restarts(private_redis, pg, namespace) -> None:
    faults = [_redis_fault(private_redis), _postgres_fault(pg)] * 5
    run = await _run(private_redis[0], pg.url, namespace, faults, before=5, outage=5, after=5, settle=1)
    run.print("soak: Redis and PostgreSQL restarts, alternating")
    _assert_bounded(run)
    for number, fault in enumerate(faults, 1):
        if fault.kind == "postgres":
            _assert_postgres_outage(run, f"postgres#{number}")
    _assert_consistent(run)


async def test_reads_and_writes_while_postgres_is_down_are_bounded(private_redis, pg, namespace) -> None:
    """Uncached reads and all writes raise our clear error within the bound; cached reads answer."""
    url = private_redis[0]
    stack = build_stack(url, pg.url, namespace)
    try:
        async with stack:
            await stack.register("cached", {"seq": "1"})
            assert await stack.get_config("cached") == {"seq": "1"}
            await asyncio.to_thread(pg.stop)
            for call in (
                lambda: stack.get_config("uncached"),
                lambda: stack.get("uncached"),
                lambda: stack.register("cached", {"seq": "2"}),
                lambda: stack.deactivate("cached"),
                lambda: stack.unregister("cached"),
                lambda: stack.list_ids(),
                lambda: stack.count(),
            ):
                started = time.monotonic()
                with pytest.raises(BackendUnavailableError) as caught:
                    async with asyncio.timeout(OP_TIMEOUT):
                        await call()
                assert time.monotonic() - started < OP_TIMEOUT
                assert caught.value.__cause__ is not None  # the driver's error, for the logs
                assert await stack.get_config("cached") == {"seq": "1"}  # nothing half-written
            await asyncio.to_thread(pg.start)
            deadline = time.monotonic() + 10
            while True:  # the pool reconnects by itself: no restart of the stack
                try:
                    assert await stack.get_config("uncached") is None
                    break
                except BackendUnavailableError:
                    assert time.monotonic() < deadline, "PostgreSQL did not come back"
                    await asyncio.sleep(0.1)
            assert (await stack.get("cached")).config == {"seq": "1"}
            await stack.register("cached", {"seq": "3"})
            assert await stack.get_config("cached") == {"seq": "3"}
    finally:
        await asyncio.to_thread(pg.start)
        await _drop(url, pg.url, namespace)


async def test_a_hung_postgres_costs_a_bounded_time_and_cached_reads_still_answer(
    private_redis, pg, namespace
) -> None:
    """Every PostgreSQL process stopped (SIGSTOP: sockets open, no answer, no error): the explicit
    ``command_timeout``/``connect_timeout`` bound each call; no call hangs."""
    command_timeout = connect_timeout = 1.0
    bound = command_timeout + connect_timeout + 1.0
    url = private_redis[0]
    stack = build_stack(
        url, pg.url, namespace, command_timeout=command_timeout, connect_timeout=connect_timeout
    )
    try:
        async with stack:
            await stack.register("cached", {"seq": "1"})
            assert await stack.get_config("cached") == {"seq": "1"}
            await asyncio.to_thread(pg.pause)
            try:
                for call in (
                    lambda: stack.get_config("uncached"),
                    lambda: stack.register("cached", {"seq": "2"}),
                    lambda: stack.get_config("uncached-2"),
                ):
                    started = time.monotonic()
                    with pytest.raises(BackendUnavailableError):
                        async with asyncio.timeout(OP_TIMEOUT + bound):
                            await call()
                    elapsed = time.monotonic() - started
                    print(f"\ncall on a hung PostgreSQL raised after {elapsed:.2f}s (bound {bound:.1f}s)")
                    assert elapsed < bound
                    started = time.monotonic()
                    assert await stack.get_config("cached") == {"seq": "1"}
                    assert time.monotonic() - started < 0.1
            finally:
                await asyncio.to_thread(pg.resume)
            deadline = time.monotonic() + 10
            while True:
                try:
                    await stack.register("cached", {"seq": "3"})
                    break
                except BackendUnavailableError:
                    assert time.monotonic() < deadline, "PostgreSQL did not come back"
                    await asyncio.sleep(0.1)
            assert await stack.get_config("cached") == {"seq": "3"}
    finally:
        await asyncio.to_thread(pg.resume)
        await _drop(url, pg.url, namespace)


# ---- minimal reproductions of what the load tests found ------------------------------------------


class _FailNextCall:
    """The next call of ``tier.<method>`` raises BackendUnavailableError (as a Redis timeout would)."""

    def __init__(self, tier: RedisCache, method: str) -> None:
        self.tier, self.method = tier, method

    def __enter__(self) -> None:
        real = getattr(self.tier, self.method)

        async def fail_once(*args: object, **kwargs: object) -> object:
            setattr(self.tier, self.method, real)
            raise BackendUnavailableError("injected: Redis did not answer within socket_timeout")

        setattr(self.tier, self.method, fail_once)

    def __exit__(self, *exc: object) -> None:
        vars(self.tier).pop(self.method, None)


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("writer", ["busy", "idle"])
async def test_a_write_that_missed_redis_is_seen_everywhere_once_the_debt_is_paid(
    redis_url, database_url, namespace, writer
) -> None:
    """Two processes A and B. A's write commits, but its Redis update times out: A owes the
    invalidation (circuit.py), publishes it (B drops its local copy), and Redis keeps the old value.
    B's next read copies that old value from Redis into its local tier. A pays the debt on its next
    request or, if it stays idle, from its background settle once the breaker half-opens; paying
    publishes the key again, so B drops the old copy (its local TTL is 300 s: only that can help)."""
    a = build_stack(redis_url, database_url, namespace, failure_threshold=1, reset_timeout=0.2)
    b = build_stack(redis_url, database_url, namespace, failure_threshold=1, reset_timeout=0.2)
    try:
        async with a, b:
            await wait_channel_up([a, b])
            channel_b = b._coherence
            assert channel_b is not None
            local_b = b.tiers[0]
            assert isinstance(local_b, LocalCache)
            await a.register("bot", {"seq": "1"})
            await _until(lambda: channel_b.received == 1)  # A's message about it has reached B
            assert await b.get_config("bot") == {"seq": "1"}
            assert local_b.get_entry("bot") is not None  # in Redis and in B's local tier
            with _FailNextCall(a.tiers[1], "put"):  # type: ignore[arg-type]
                await a.register("bot", {"seq": "2"})  # committed; Redis still holds seq 1
            await _until(lambda: channel_b.received == 2)  # B dropped its local copy
            assert local_b.get_entry("bot") is None
            # While A owes the invalidation, B copies the old value from Redis into its local tier.
            print(f"\nB reads {await b.get_config('bot')} while A owes the invalidation")
            await asyncio.sleep(0.3)  # A's breaker is half-open again
            if writer == "busy":
                assert await a.get_config("another bot") is None  # A's next request pays its debt
            await asyncio.sleep(0.5)
            assert await a.get_config("bot") == {"seq": "2"}
            assert await b.get_config("bot") == {"seq": "2"}
    finally:
        await _drop(redis_url, database_url, namespace)


async def test_a_stack_whose_postgres_is_down_at_start_can_be_initialized_again(
    redis_url, pg, namespace
) -> None:
    """A bot server that starts before its database: initialize() fails with our clear error and
    releases what it opened; called again once PostgreSQL is up, it gives a working stack."""
    stack = build_stack(redis_url, pg.url, namespace)
    try:
        await asyncio.to_thread(pg.stop)
        with pytest.raises(BackendUnavailableError):
            async with asyncio.timeout(OP_TIMEOUT):
                await stack.initialize()
        assert not stack.is_open
        await asyncio.to_thread(pg.start)
        await stack.initialize()
        await stack.register("bot", {"seq": "1"})
        assert await stack.get_config("bot") == {"seq": "1"}
        await stack.close()
    finally:
        await stack.close()
        await _drop(redis_url, pg.url, namespace)


async def test_a_hung_redis_costs_a_write_no_more_than_the_tier_timeout(private_redis, pg, namespace) -> None:
    import redis.asyncio as aioredis

    url = private_redis[0]
    a = build_stack(url, pg.url, namespace)  # RedisCache(socket_timeout=0.5, connect_timeout=0.5)
    hang_ms = 2500
    try:
        async with a:
            await a.register("bot", {"seq": "1"})
            client = aioredis.Redis.from_url(url)
            try:
                await client.execute_command("CLIENT", "PAUSE", hang_ms, "ALL")
            finally:
                await client.aclose()
            latencies = []
            for seq in ("2", "3"):
                started = time.monotonic()
                async with asyncio.timeout(OP_TIMEOUT):
                    await a.register("bot", {"seq": seq})
                latencies.append(round(time.monotonic() - started, 3))
            print(f"\nwrite latencies while Redis hangs: {latencies} s")
            await asyncio.sleep(hang_ms / 1000)
            assert max(latencies) < 1.5
    finally:
        await _drop(url, pg.url, namespace)
