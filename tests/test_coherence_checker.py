"""A randomized coherence checker, in the spirit of Jepsen: after any mix of concurrent writes,
cancellations, timeouts and Redis faults, once the system is quiet every cache agrees with the store.

Setup: three ``local -> redis cache -> postgres`` instances on one namespace and table (every TTL
300 s, so expiry can never hide a stale entry): A and B in this process, W in a second OS process
(``python -m tests.checker_support worker``). Redis is a private Valkey server (stalled with
``DEBUG SLEEP`` and restarted); PostgreSQL is the shared test database (a table of our own).

Each round:

1. Ops: many tasks (here and in W) do random ops over 12 bots (so writes collide) on random
   instances: ``register`` (unique ``seq`` tag in the config), ``deactivate``, ``unregister``,
   rarely ``clear`` (60% writes), and ``get_config``/``get`` reads; 20% of the ops are cancelled
   after 0-3 ms, 20% run under ``asyncio.timeout`` of 0.5-5 ms. Meanwhile Redis is stalled (``DEBUG SLEEP``
   0.05-0.4 s, sometimes 0.6-0.9 s, longer than the tiers' 0.5 s socket timeout) and restarted.
2. Quiescence (bounded, 15 s): no op and no other task in flight, Redis up, every invalidation
   channel up, no debt (no guard owes, nothing unannounced). Then the documented bound for lost
   messages (``ping_interval + ping_timeout`` = 2 s) and a little more. A round that does not
   become quiet is a failure too (a debt never paid), but is still checked.
3. Check, once (no polling, which would hide staleness). Truth: a fresh ``PostgresBackend`` read of
   every bot. Must agree with it: the raw Redis value ``{ns}:c:<bot>`` if present (``null`` = cached
   miss), each instance's local-tier entry if present, and each instance's ``get_config`` and
   ``peek``.

Expected failures of ops (``BackendUnavailableError``, ``WriteOutcomeUnknownError``, our
cancellations and timeouts) are tallied; anything else fails the test, as does any disagreement.

Seeds: a fixed one and a fresh random one per run; ``TR_CHECKER_SEED=<n>`` replays seed ``n`` only.
``TR_CHECKER_LONG=1`` enables the long run (12 rounds, 15,600 ops per seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tiered_registry import TieredBackend
from tiered_registry.codec import decode_registration
from tiered_registry.stores.postgres import PostgresBackend

from .checker_support import (
    Runner,
    Spec,
    Tally,
    Worker,
    build_stack,
    is_quiet,
    local_views,
    quiet_state,
    read_views,
    spec_json,
    view,
    wait_channels_up,
)

LONG = os.environ.get("TR_CHECKER_LONG") == "1"
FIXED_SEED = 20240611
N_BOTS = 12
QUIESCENCE_BOUND = 15.0
QUIESCENCE_BOUND_AGAIN = 5.0  # once a round was not quiet (what is stuck stays stuck: save time)
LOST_MESSAGE_BOUND = 2.0 + 0.5  # ping_interval + ping_timeout, plus a little


def _seeds() -> list[Any]:
    replay = os.environ.get("TR_CHECKER_SEED")
    if replay:
        return [pytest.param(int(replay), id="replay")]
    return [pytest.param(FIXED_SEED, id="fixed"), pytest.param(secrets.randbits(32), id="random")]


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The library logs a warning per Redis failure: thousands here, all expected."""
    logger = logging.getLogger("tiered_registry")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class RedisFaults:
    """Stalls (``DEBUG SLEEP``) and restarts of the private Redis, at random, until stopped.
    Each round has one restart at a random point (plus, rarely, more)."""

    def __init__(self, url: str, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self.url, self._start, self._stop = url, start, stop
        self.down = False
        self.stalls = 0
        self.long_stalls = 0
        self.stalled_s = 0.0
        self.restarts = 0
        self.failed_injections = 0

    async def run(self, rng: random.Random, done: asyncio.Event) -> None:
        restart_at = rng.randrange(0, 3)
        for event in range(1_000_000):
            try:
                async with asyncio.timeout(rng.uniform(0.1, 0.4)):
                    await done.wait()
                return
            except TimeoutError:
                pass
            if event == restart_at or rng.random() < 0.03:
                await self.restart(rng.uniform(0.1, 0.6))
            elif rng.random() < 0.2:
                await self.stall(rng.uniform(0.6, 0.9))
                self.long_stalls += 1
            else:
                await self.stall(rng.uniform(0.05, 0.4))

    async def stall(self, seconds: float) -> None:
        client = aioredis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=1)
        try:
            await client.execute_command("DEBUG", "SLEEP", f"{seconds:.3f}")
            self.stalls += 1
            self.stalled_s += seconds
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self.failed_injections += 1
        finally:
            await client.aclose()

    async def restart(self, downtime: float) -> None:
        self.down = True
        await asyncio.to_thread(self._stop)
        await asyncio.sleep(downtime)
        await self.up()
        self.restarts += 1

    async def up(self) -> None:
        if self.down:
            await asyncio.to_thread(self._start)
            self.down = False

    async def answers(self) -> bool:
        if self.down:
            return False
        client = aioredis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            return False
        finally:
            await client.aclose()


# ---- the run -----------------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    rounds: int = 0
    tally: Tally = field(default_factory=Tally.empty)
    faults: dict[str, Any] = field(default_factory=dict)
    quiescence_s: list[float] = field(default_factory=list)
    not_quiet: list[str] = field(default_factory=list)  # rounds that never became quiet, and why
    checked: Counter[str] = field(default_factory=Counter)  # comparisons made, by layer
    disagreements: Counter[str] = field(default_factory=Counter)  # by layer
    # the outcome of the register that wrote each stored value checked
    final_writes: Counter[str] = field(default_factory=Counter)
    stale_bots: int = 0  # (round, bot) pairs with at least one disagreement
    examples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def stale_bot(self, round_no: int, bot_id: str, want: Any, wrong: list[tuple[str, Any]]) -> None:
        """One bot, in one round, that some layer answered differently from the store."""
        self.stale_bots += 1
        if len(self.examples) < 12:
            seen: dict[str, list[str]] = {}  # the wrong value -> where it was seen
            for where, got in wrong:
                seen.setdefault(self._show(got), []).append(where)
            found = "; ".join(f"{', '.join(places)}: {value}" for value, places in seen.items())
            self.examples.append(
                f"round {round_no} {bot_id}: store {self._show(want)}; {found}\n"
                f"        last writes: {self.tally.history(bot_id)}"
            )

    def _show(self, value: Any) -> str:
        """A view, with what we know of the write that produced its seq."""
        if value is None:
            return "None"
        seq = value if isinstance(value, str) else value[1]
        shown = str(value if isinstance(value, str) else tuple(value))
        return f"{shown} [{self.tally.writes_log.get(seq, '?')}]"

    def print(self) -> None:
        t = self.tally
        total_ops = sum(t.ops.values())
        print(f"\n== coherence checker, seed {self.seed} (replay: TR_CHECKER_SEED={self.seed}) ==")
        ops = dict(sorted(t.ops.items()))
        print(f"  {self.rounds} round(s), {total_ops} ops in {self.elapsed_s:.1f}s: {ops}")
        print(f"  cancellations: {dict(t.cancels)}; tiny timeouts: {dict(t.timeouts)}; hung ops: {t.hung}")
        print(f"  Redis faults: {self.faults}")
        print(f"  failed ops by error: {dict(t.errors().most_common())}")
        print(f"  quiescence reached after (s): {[round(q, 2) for q in self.quiescence_s]}")
        if self.not_quiet:
            bounds = f"{QUIESCENCE_BOUND}s, {QUIESCENCE_BOUND_AGAIN}s after the first"
            print(f"  NOT QUIET within {bounds} (checked anyway):")
            for text in self.not_quiet:
                print(f"    {text}")
        print(f"  foreign errors: {t.foreign_count}")
        for text in t.foreign[:3]:
            print("   ", text.replace("\n", "\n    "))
        print(f"  stored values checked, by the outcome of their register: {dict(self.final_writes)}")
        print(f"  comparisons: {dict(self.checked)}")
        print(
            f"  DISAGREEMENTS: {sum(self.disagreements.values())} {dict(self.disagreements)}, "
            f"in {self.stale_bots} of {self.rounds * N_BOTS} (round, bot) checks"
        )
        for example in self.examples:
            print(f"    {example}")


async def _truth(database_url: str, namespace: str, bots: list[str]) -> dict[str, Any]:
    store = PostgresBackend(database_url, table=namespace)
    async with store:
        return {bot_id: view(bot_id, await store.peek(bot_id)) for bot_id in bots}


async def _raw_redis(url: str, namespace: str, bots: list[str]) -> dict[str, Any]:
    """Bot -> view of the raw Redis value (None = cached miss); absent keys omitted."""
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    try:
        raw = await client.mget([f"{{{namespace}}}:c:{bot_id}" for bot_id in bots])
    finally:
        await client.aclose()
    out: dict[str, Any] = {}
    for bot_id, value in zip(bots, raw, strict=True):
        if value is not None:
            out[bot_id] = None if value == b"null" else view(bot_id, decode_registration(value))
    return out


async def _quiesce(
    stacks: list[TieredBackend], runner: Runner, baseline: set[asyncio.Task[Any]], worker: Worker,
    faults: RedisFaults, report: Report, round_no: int,
) -> None:  # fmt: skip
    started = time.monotonic()
    bound = QUIESCENCE_BOUND_AGAIN if report.not_quiet else QUIESCENCE_BOUND
    while True:
        mine = quiet_state(stacks, runner.writing, baseline)
        theirs = await worker.ask("quiet")
        redis_up = await faults.answers()
        if is_quiet(mine) and is_quiet(theirs) and redis_up:
            report.quiescence_s.append(time.monotonic() - started)
            return
        if time.monotonic() - started > bound:
            # A liveness failure (e.g. a debt never paid): noted, and the round is checked anyway.
            report.not_quiet.append(
                f"round {round_no}: here {mine}, worker {theirs}, redis answers: {redis_up}"
            )
            return
        await asyncio.sleep(0.05)


async def _check(
    stacks: list[TieredBackend], names: list[str], worker: Worker, bots: list[str], url: str,
    database_url: str, namespace: str, report: Report, round_no: int,
) -> None:  # fmt: skip
    """One look at everything, no retries: the truth, raw Redis, local tiers, then reads."""
    truth = await _truth(database_url, namespace, bots)
    in_redis = await _raw_redis(url, namespace, bots)
    local = {name: local_views(stack, bots) for name, stack in zip(names, stacks, strict=True)}
    local["W"] = await worker.ask("local")
    reads = {name: await read_views(stack, bots) for name, stack in zip(names, stacks, strict=True)}
    reads["W"] = await worker.ask("views")

    for bot_id in bots:
        want = truth[bot_id]
        wrong: list[tuple[str, Any]] = []

        def compare(layer: str, where: str, got: Any, want: Any) -> None:
            report.checked[layer] += 1
            if got != want:
                report.disagreements[layer] += 1
                wrong.append((where, got))  # noqa: B023  (used before the loop moves on)

        written_by = "no bot" if want is None else report.tally.writes_log.get(want[1], "?")
        report.final_writes[written_by.rpartition(": ")[2]] += 1
        if bot_id in in_redis:
            compare("redis", "redis", in_redis[bot_id], want)
        for name in (*names, "W"):
            if bot_id in local[name]:
                compare("local", f"{name} local", local[name][bot_id], want)
            answer = reads[name][bot_id]
            compare("get_config", f"{name}.get_config", answer["get_config"], want and want[1])
            compare("peek", f"{name}.peek", answer["peek"], want)
        if wrong:
            report.stale_bot(round_no, bot_id, want, wrong)


async def run_checker(
    seed: int, redis: tuple[str, Callable[[], None], Callable[[], None]], database_url: str, namespace: str,
    *, rounds: int, here: Spec, there: Spec,
) -> Report:  # fmt: skip
    url, start, stop = redis
    rng = random.Random(seed)
    report = Report(seed)
    print(f"\ncoherence checker seed {seed} (replay: TR_CHECKER_SEED={seed})")
    bots = [f"bot-{i:02d}" for i in range(N_BOTS)]
    names = ["A", "B"]
    stacks = [build_stack(url, database_url, namespace) for _ in names]
    faults = RedisFaults(url, start, stop)
    worker: Worker | None = None
    runner: Runner | None = None
    fault_task: asyncio.Task[None] | None = None
    started = time.monotonic()
    try:
        for stack in stacks:
            await stack.initialize()
        await wait_channels_up(stacks)
        worker = await Worker.start(url, database_url, namespace, bots)
        for round_no in range(1, rounds + 1):
            baseline = set(asyncio.all_tasks())
            runner = Runner(stacks, names, bots, tag=f"p{round_no}", seed=rng.getrandbits(64), spec=here)
            order = {"seed": rng.getrandbits(64), "tag": f"w{round_no}", "spec": spec_json(there)}
            fault_rng = random.Random(rng.getrandbits(64))
            await worker.ask(f"run {orjson.dumps(order).decode()}")
            runner.start()
            done = asyncio.Event()
            fault_task = asyncio.get_running_loop().create_task(faults.run(fault_rng, done))
            await runner.wait()
            done.set()
            await fault_task
            fault_task = None
            await faults.up()
            report.tally.merge(runner.tally.as_dict())
            report.tally.merge(await worker.ask("stop", timeout=90))
            await _quiesce(stacks, runner, baseline, worker, faults, report, round_no)
            await asyncio.sleep(LOST_MESSAGE_BOUND)
            await _check(stacks, names, worker, bots, url, database_url, namespace, report, round_no)
            report.rounds = round_no
        await worker.quit()
        worker = None
    finally:
        if fault_task is not None:
            fault_task.cancel()
            await asyncio.gather(fault_task, return_exceptions=True)
        if runner is not None:
            await runner.stop()
        await faults.up()
        if worker is not None:
            await worker.kill()
        for stack in stacks:
            await stack.close()
        with contextlib.suppress(Exception):
            table = PostgresBackend(database_url, table=namespace)
            async with table:
                await table.drop()
        report.elapsed_s = time.monotonic() - started
        report.faults = {
            "stalls": faults.stalls,
            "of which > socket_timeout": faults.long_stalls,
            "stalled_s": round(faults.stalled_s, 1),
            "restarts": faults.restarts,
            "failed injections": faults.failed_injections,
        }
    return report


def _assert_coherent(report: Report) -> None:
    report.print()
    replay = f"replay with TR_CHECKER_SEED={report.seed}"
    assert not report.not_quiet, f"never quiet ({replay}): {report.not_quiet}"
    assert report.tally.foreign_count == 0, (
        f"ops raised unexpected errors ({replay}): {report.tally.foreign[:1]}"
    )
    total = sum(report.disagreements.values())
    assert total == 0, f"{total} disagreements with the store ({replay}): {report.examples[:5]}"


# ---- the tests ---------------------------------------------------------------------------------------


@pytest.mark.timeout(240)  # ~20 s a seed when coherent; up to ~60 s when rounds never get quiet
@pytest.mark.parametrize("seed", _seeds())
@pytest.mark.usefixtures("quiet_logs")
async def test_caches_agree_with_the_store_after_random_ops_cancellations_and_redis_faults(
    seed, private_redis, database_url, namespace
) -> None:
    """Short run (every CI run): three rounds of 550 ops (1,650 ops), about 16 s per seed."""
    report = await run_checker(
        seed, private_redis, database_url, namespace,
        rounds=3,
        here=Spec(runners=12, ops=400, pause=0.1),
        there=Spec(runners=4, ops=150, pause=0.1),
    )  # fmt: skip
    _assert_coherent(report)


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long run: set TR_CHECKER_LONG=1")
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", _seeds())
@pytest.mark.usefixtures("quiet_logs")
async def test_long_run_caches_agree_with_the_store(seed, private_redis, database_url, namespace) -> None:
    """Long run: 12 rounds of 1,300 ops (15,600 ops per seed), each ending in a check."""
    report = await run_checker(
        seed, private_redis, database_url, namespace,
        rounds=12,
        here=Spec(runners=16, ops=1000, pause=0.1),
        there=Spec(runners=6, ops=300, pause=0.1),
    )  # fmt: skip
    _assert_coherent(report)
