"""Support for the randomized coherence checker (``tests/test_coherence_checker.py``): the stack
under test, the random operation mix with cancellations, quiescence bookkeeping, per-instance
views, and a worker (``python -m tests.checker_support worker ...``) that runs the same operation
mix against its own instance in a second OS process, driven one line at a time over stdin/stdout.

An *op* is one call on one instance: ``register`` (its config carries a unique ``seq`` tag; every
third is a ``register_many`` of that bot and the next one),
``deactivate``, ``unregister``, rarely ``clear``, or a read (``get_config``/``get``). Each op runs
plainly, or is cancelled (``task.cancel()`` after 0-3 ms), or runs under ``asyncio.timeout`` with a
budget of a few ms. Expected failures (``BackendUnavailableError``, its subclass
``WriteOutcomeUnknownError``, our cancellation, our timeout) are tallied; any other exception is a
*foreign error*, kept with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from tiered_registry import (
    BackendUnavailableError,
    LocalCache,
    Registration,
    TieredBackend,
    WriteOutcomeUnknownError,
)

from .faults_support import build_stack
from .worker_process import WorkerProcess

OP_BOUND = 10.0  # an op (plain mode) that takes longer is "hung": tallied, reported
WRITES = ("register", "deactivate", "unregister", "clear")
READS = ("get_config", "get")
# Long-lived background tasks of a stack; any other task still pending means work in flight.
BACKGROUND = frozenset(
    {
        "tiered-registry-coherence",
        "tiered-registry-local-sweep",
        "tiered-registry-access-flush",
        "tiered-registry-pg-deadlines",
    }
)

View = list[Any] | None  # None: no such bot; else [status, seq]


def make_config(bot_id: str, seq: str) -> dict[str, Any]:
    return {"bot": bot_id, "seq": seq, "limits": {"rpm": 60, "burst": [1, 2, 3]}}


def _seq_of(bot_id: str, config: Any) -> str:
    """The config's seq tag; a config that is not exactly what that seq wrote shows as CORRUPT."""
    seq = config.get("seq") if isinstance(config, dict) else None
    if isinstance(seq, str) and config == make_config(bot_id, seq):
        return seq
    return f"CORRUPT:{orjson.dumps(config).decode()}"


def view(bot_id: str, record: Registration | None) -> View:
    return None if record is None else [record.status, _seq_of(bot_id, record.config)]


def config_view(bot_id: str, config: Any) -> str | None:
    return None if config is None else _seq_of(bot_id, config)


# ---- the operation mix ------------------------------------------------------------------------------


@dataclass
class Spec:
    """One round of ops on one side (this process or the worker)."""

    runners: int = 12
    ops: int = 400  # shared by the runners: they all stop within one op of each other
    pause: float = 0.1  # each runner sleeps uniform(0, pause) between ops
    cancel_share: float = 0.2  # task.cancel() after uniform(0, 3 ms)
    timeout_share: float = 0.2  # asyncio.timeout(uniform(0.5, 5 ms))
    inactive_share: float = 0.1  # registers that register status "inactive"
    weights: tuple[float, ...] = (35, 12, 10, 0.25, 25, 12)  # WRITES then READS


@dataclass
class Tally:
    """What one side did: ops by kind, outcomes by kind, cancellations, foreign errors."""

    ops: Counter[str]
    outcomes: Counter[str]  # "<kind> <outcome>"
    cancels: Counter[str]  # requested (op still running when cancelled) / landed / too late
    timeouts: Counter[str]  # armed / fired
    foreign: list[str]  # tracebacks of unexpected exceptions (first few)
    foreign_count: int
    hung: int
    writes_log: dict[str, str]  # seq -> "<op> on <instance>: <outcome>"
    recent: dict[str, list[list[Any]]]  # bot ("*": clear) -> its last writes: [start, end, text]

    @classmethod
    def empty(cls) -> Tally:
        return cls(Counter(), Counter(), Counter(), Counter(), [], 0, 0, {}, {})

    def as_dict(self) -> dict[str, Any]:
        return {
            "ops": dict(self.ops),
            "outcomes": dict(self.outcomes),
            "cancels": dict(self.cancels),
            "timeouts": dict(self.timeouts),
            "foreign": self.foreign,
            "foreign_count": self.foreign_count,
            "hung": self.hung,
            "writes_log": self.writes_log,
            "recent": self.recent,
        }

    def merge(self, other: dict[str, Any]) -> None:
        self.ops.update(other["ops"])
        self.outcomes.update(other["outcomes"])
        self.cancels.update(other["cancels"])
        self.timeouts.update(other["timeouts"])
        self.foreign.extend(other["foreign"][: max(0, 5 - len(self.foreign))])
        self.foreign_count += other["foreign_count"]
        self.hung += other["hung"]
        self.writes_log.update(other["writes_log"])
        for bot_id, writes in other["recent"].items():
            self.note(bot_id, writes)

    def note(self, bot_id: str, writes: list[list[Any]], keep: int = 4) -> None:
        merged = sorted([*self.recent.get(bot_id, []), *writes])
        self.recent[bot_id] = merged[-keep:]

    def history(self, bot_id: str, keep: int = 4) -> str:
        """The last writes of ``bot_id`` (clears too), oldest first, times relative to the last end."""
        writes = sorted([*self.recent.get(bot_id, []), *self.recent.get("*", [])])[-keep:]
        if not writes:
            return "no write"
        last = max(end for _, end, _ in writes)
        return " -> ".join(
            f"{text} [{(start - last) * 1000:+.1f}ms, {(end - start) * 1000:.1f}ms]"
            for start, end, text in writes
        )

    def errors(self) -> Counter[str]:
        """Failed ops by error type (all kinds together)."""
        out: Counter[str] = Counter()
        for key, n in self.outcomes.items():
            outcome = key.split(" ", 1)[1]
            if outcome != "ok":
                out[outcome] += n
        return out


class Runner:
    """``spec.runners`` tasks doing ``spec.ops`` random ops between them on random instances."""

    def __init__(
        self, stacks: Sequence[TieredBackend], names: Sequence[str], bots: Sequence[str], *,
        tag: str, seed: int, spec: Spec,
    ) -> None:  # fmt: skip
        self.stacks = list(stacks)
        self.names = list(names)
        self.bots = list(bots)
        self.tag = tag
        self.spec = spec
        self.rng = random.Random(seed)
        self.tally = Tally.empty()
        self.writing = 0  # writes in flight (including cancelled ones not yet unwound)
        self._seq = 0
        self._remaining = spec.ops
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        seeds = [self.rng.getrandbits(64) for _ in range(self.spec.runners)]
        self._tasks = [
            loop.create_task(self._run(random.Random(s)), name=f"checker-runner-{i}")
            for i, s in enumerate(seeds)
        ]

    async def wait(self) -> None:
        """Until every runner has done its ops."""
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._raise_bugs()

    async def stop(self, bound: float = 30.0) -> None:
        """Stop starting ops; wait (bounded) for the ops in flight; cancel what is left."""
        self._stop = True
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=bound)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = tasks
        try:
            self._raise_bugs()
        finally:
            self._tasks = []
        assert not pending, f"{len(pending)} runners still busy {bound}s after stop"

    def _raise_bugs(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # a bug in the checker itself

    async def _run(self, rng: random.Random) -> None:
        while not self._stop and self._remaining > 0:
            self._remaining -= 1
            await self._one(rng)
            await asyncio.sleep(rng.uniform(0, self.spec.pause))

    async def _one(self, rng: random.Random) -> None:
        spec = self.spec
        kind = rng.choices((*WRITES, *READS), spec.weights)[0]
        bot_id = rng.choice(self.bots)
        index = rng.randrange(len(self.stacks))
        stack, name = self.stacks[index], self.names[index]
        status = "inactive" if rng.random() < spec.inactive_share else "active"
        draw = rng.random()
        mode = "plain"
        if draw < spec.cancel_share:
            mode = "cancel"
        elif draw < spec.cancel_share + spec.timeout_share:
            mode = "timeout"
        delay = rng.uniform(0, 0.003) if mode == "cancel" else rng.uniform(0.0005, 0.005)
        seq = ""
        if kind == "register":
            self._seq += 1
            seq = f"{self.tag}-{self._seq}"
        write = kind in WRITES
        self.tally.ops[kind] += 1
        if write:
            self.writing += 1
        started = time.time()
        try:
            outcome = await self._guarded(kind, stack, bot_id, seq, status, mode, delay)
        finally:
            if write:
                self.writing -= 1
        self.tally.outcomes[f"{kind} {outcome}"] += 1
        if seq:
            self.tally.writes_log[seq] = f"register({status}) on {name}: {outcome}"
        if write:
            what = f"register({status}) {seq}" if seq else kind
            self.tally.note(
                "*" if kind == "clear" else bot_id, [[started, time.time(), f"{what} on {name}: {outcome}"]]
            )

    async def _guarded(
        self, kind: str, stack: TieredBackend, bot_id: str, seq: str, status: str, mode: str, delay: float
    ) -> str:
        """Run the op in ``mode``; return its outcome ("ok", "cancelled", "timeout", an error name)."""
        try:
            if mode == "cancel":
                task = asyncio.get_running_loop().create_task(self._op(kind, stack, bot_id, seq, status))
                try:
                    await asyncio.sleep(delay)
                    if task.done():
                        self.tally.cancels["too late"] += 1
                    else:
                        self.tally.cancels["requested"] += 1
                        task.cancel()
                    done, _ = await asyncio.wait([task], timeout=OP_BOUND)
                    if not done:
                        self.tally.hung += 1
                        task.cancel()
                        await asyncio.wait([task])
                        return "hung"
                finally:
                    if not task.done():  # the runner itself is being cancelled (hard stop)
                        task.cancel()
                        await asyncio.wait([task])
                if task.cancelled():
                    self.tally.cancels["landed"] += 1
                    return "cancelled"
                task.result()  # raises the op's own error, if any
            elif mode == "timeout":
                self.tally.timeouts["armed"] += 1
                scope = asyncio.timeout(delay)
                try:
                    async with scope:
                        await self._op(kind, stack, bot_id, seq, status)
                except TimeoutError:
                    if scope.expired():
                        self.tally.timeouts["fired"] += 1
                        return "timeout"
                    raise
            else:
                scope = asyncio.timeout(OP_BOUND)
                try:
                    async with scope:
                        await self._op(kind, stack, bot_id, seq, status)
                except TimeoutError:
                    if scope.expired():
                        self.tally.hung += 1
                        return "hung"
                    raise
        except WriteOutcomeUnknownError:
            return "WriteOutcomeUnknownError"
        except BackendUnavailableError:
            return "BackendUnavailableError"
        except TimeoutError:
            return "TimeoutError (not ours)"
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being stopped
            return "CancelledError (not requested)"
        except Exception as exc:
            self.tally.foreign_count += 1
            if len(self.tally.foreign) < 5:
                self.tally.foreign.append(f"{kind} {bot_id}: " + "".join(traceback.format_exception(exc)))
            return f"FOREIGN {type(exc).__name__}"
        return "ok"

    async def _op(self, kind: str, stack: TieredBackend, bot_id: str, seq: str, status: str) -> None:
        if kind == "register" and int(seq.rsplit("-", 1)[1]) % 3 == 0:
            # Every third register goes through register_many, with the next bot too (one store
            # statement, one pipeline per Redis tier, one message: the bulk write path).
            other = self.bots[(self.bots.index(bot_id) + 1) % len(self.bots)]
            items = [(b, make_config(b, seq), status) for b in dict.fromkeys((bot_id, other))]
            await stack.register_many(items)
        elif kind == "register":
            await stack.register(bot_id, make_config(bot_id, seq), status)
        elif kind == "deactivate":
            await stack.deactivate(bot_id)
        elif kind == "unregister":
            await stack.unregister(bot_id)
        elif kind == "clear":
            await stack.clear()
        elif kind == "get_config":
            await stack.get_config(bot_id)
        else:
            await stack.get(bot_id)


# ---- quiescence and views ----------------------------------------------------------------------------


def quiet_state(
    stacks: Sequence[TieredBackend], writing: int, baseline: set[asyncio.Task[Any]]
) -> dict[str, Any]:
    """What still keeps these stacks from being quiet (all zero = quiet)."""
    current = asyncio.current_task()
    busy = sorted(
        f"{t.get_name()} {t.get_coro()!r}"
        for t in asyncio.all_tasks()
        if t is not current
        and not t.done()
        and t not in baseline
        and t.get_name() not in BACKGROUND
        # on 3.11, asyncio.wait_for wraps the awaitable in a task: the access flushers' idle waits
        and getattr(t.get_coro(), "__qualname__", "") != "Event.wait"
    )
    return {
        "writes_in_flight": writing,
        "other_tasks": busy,
        "channels_down": sum(1 for s in stacks if s._coherence is None or not s._coherence.is_up),
        "guards_owing": [_owing(g) for s in stacks for g in s._guards.values() if g.owes],
        "unannounced": sum(len(s._owed._unannounced) for s in stacks),
    }


def _owing(guard: Any) -> str:
    """A guard that owes, for the report (its internals differ between versions: best effort)."""
    owed = getattr(guard, "_owed", None)
    what = "?" if owed is None else f"{len(owed)} keys" if owed else "everything"
    return f"{getattr(guard, 'state', '?')} breaker, {what} owed"


def is_quiet(state: dict[str, Any]) -> bool:
    return not any(state.values())


def local_views(stack: TieredBackend, bots: Sequence[str]) -> dict[str, View]:
    """The local tier's entries, no I/O: bot -> view (None = a cached miss); absent bots omitted."""
    local = stack.tiers[0]
    assert isinstance(local, LocalCache)
    out: dict[str, View] = {}
    for bot_id in bots:
        entry = local.entries.get(bot_id)
        if entry is not None:
            out[bot_id] = view(bot_id, entry[0])
    return out


async def read_views(stack: TieredBackend, bots: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each bot as the stack answers it: ``get_config`` (hot path first), then ``peek``."""
    out: dict[str, dict[str, Any]] = {}
    for bot_id in bots:
        async with asyncio.timeout(OP_BOUND):
            config = await stack.get_config(bot_id)
            record = await stack.peek(bot_id)
        out[bot_id] = {"get_config": config_view(bot_id, config), "peek": view(bot_id, record)}
    return out


async def wait_channels_up(stacks: Sequence[TieredBackend], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not all(s._coherence is not None and s._coherence.is_up for s in stacks):
        assert time.monotonic() < deadline, f"invalidation channels still down after {timeout}s"
        await asyncio.sleep(0.01)


# ---- the worker ---------------------------------------------------------------------------------------


class Worker(WorkerProcess):
    """The parent's handle on ``python -m tests.checker_support worker``."""

    @classmethod
    async def start(cls, redis_url: str, database_url: str, namespace: str, bots: Sequence[str]) -> Worker:
        bots_json = orjson.dumps(list(bots)).decode()
        return await cls.spawn("tests.checker_support", redis_url, database_url, namespace, bots_json)


async def _worker_main(redis_url: str, database_url: str, namespace: str, bots_json: str) -> None:
    logging.getLogger("tiered_registry").setLevel(logging.ERROR)  # expected warnings would flood
    bots: list[str] = orjson.loads(bots_json)
    stack = build_stack(redis_url, database_url, namespace)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    stdin, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await _serve(stack, bots, reader)
    finally:
        stdin.close()


async def _serve(stack: TieredBackend, bots: list[str], reader: asyncio.StreamReader) -> None:

    def answer(payload: object = None) -> None:
        print("ok" if payload is None else "ok " + orjson.dumps(payload).decode(), flush=True)

    runner: Runner | None = None
    baseline: set[asyncio.Task[Any]] = set()
    async with stack:
        await wait_channels_up([stack])
        print("ready", flush=True)
        while line := (await reader.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            try:
                if command == "run":  # run <json: seed, tag, spec>
                    order = orjson.loads(argument)
                    baseline = set(asyncio.all_tasks())
                    spec = Spec(**{k: tuple(v) if k == "weights" else v for k, v in order["spec"].items()})
                    runner = Runner([stack], ["W"], bots, tag=order["tag"], seed=order["seed"], spec=spec)
                    runner.start()
                    answer()
                elif command == "stop":
                    assert runner is not None
                    await runner.stop()
                    answer(runner.tally.as_dict())
                elif command == "quiet":
                    answer(quiet_state([stack], runner.writing if runner else 0, baseline))
                elif command == "local":
                    answer(local_views(stack, bots))
                elif command == "views":
                    answer(await read_views(stack, bots))
                elif command == "quit":
                    break
                else:
                    print(f"error unknown command {command!r}", flush=True)
            except Exception as exc:
                traceback.print_exc()
                print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        if runner is not None:
            await runner.stop()


def spec_json(spec: Spec) -> dict[str, Any]:
    return asdict(spec)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    asyncio.run(_worker_main(*sys.argv[2:6]))
