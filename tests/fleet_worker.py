"""One process of the fleet test (``tests/fleet.py``): a reader or the writer.

Run as ``python tests/fleet_worker.py ROLE REDIS_URL DATABASE_URL NAMESPACE SEED OUT``. Each
builds ``local -> redis cache -> postgres`` on the namespace, prints ``ready``, and starts on a
``go`` line on stdin.

- ``reader``: reads bots chosen by a Zipf law over the fleet's bots from a few tasks (a bounded
  rate, so that nine processes share two cores without starving the pub/sub listener), notes
  when each change by another process reached it (the change feed) and what every read of a
  changed bot returned; on ``stop`` it reads every changed bot once more and writes the lot to
  ``OUT`` as JSON.
- ``writer``: changes the configs of :data:`CHANGED` bots and deactivates :data:`DEACTIVATED`
  others, from a few concurrent tasks, noting when each write was acknowledged and whether
  this process then owed something to a tier or to the others (an outage); then waits
  until it owes nothing (a write that could not reach a Redis tier or publish its message
  during an outage is paid in the background once Redis answers), prints ``done`` and writes
  ``OUT`` (with ``settled_after``: how long that took).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tiered_registry import LocalCache, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

BOTS = 10_000
CHANGED = 1_000
DEACTIVATED = 100
READ_TASKS = 2
READ_PAUSE = 0.002  # seconds each read task waits between reads: ~1,000 reads/s per process at most
WRITE_TASKS = 4  # the writer's concurrent requests (each write is one commit: a few ms)
WRITE_PAUSE = 0.012  # seconds each of them waits between two writes: the writes span ~4 s


def bot_name(index: int) -> str:
    return f"bot{index:05d}"


def plan(seed: int) -> tuple[list[str], list[str]]:
    """The bots the writer updates and the bots it deactivates (the same in every process)."""
    chosen = random.Random(seed).sample(range(BOTS), CHANGED + DEACTIVATED)
    return [bot_name(i) for i in chosen[:CHANGED]], [bot_name(i) for i in chosen[CHANGED:]]


def view(record: Any) -> Any:
    """What a read returned, comparable across processes: None, "inactive" or the config's v."""
    if record is None:
        return None
    if record.status != "active":
        return record.status
    return record.config["v"]


def build(redis_url: str, database_url: str, namespace: str) -> TieredBackend:
    return TieredBackend(
        tiers=[LocalCache(maxsize=20_000, ttl=300), RedisCache(redis_url, ttl=300, namespace=namespace)],
        store=PostgresBackend(database_url, table=namespace, max_size=4),
    )


def _owes(stack: TieredBackend) -> bool:
    """Whether some write of this process has not yet reached every tier and every process."""
    stats = stack.stats()
    tiers = [v for v in stats.values() if isinstance(v, dict) and "owed" in v]
    channel = stats.get("channel", {})
    return any(t["owed"] or t["owed_everything"] for t in tiers) or bool(channel.get("unannounced"))


def _save(out: str, result: dict[str, Any]) -> None:
    Path(out).write_bytes(orjson.dumps(result))


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def reader(stack: TieredBackend, seed: int, out: str) -> None:
    updated, deactivated = plan(seed)
    changed = set(updated) | set(deactivated)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(BOTS)]
    order = list(range(BOTS))
    random.Random(seed + 1).shuffle(order)  # which bots are hot: the same in every reader
    cumulative = list(itertools.accumulate(weights))
    received: dict[str, float] = {}
    resyncs: list[float] = []

    def on_change(event: Any) -> None:
        if event.bot_id is None:
            resyncs.append(event.at)
        elif event.remote and event.bot_id not in received:
            received[event.bot_id] = event.at

    stack.on_change(on_change)
    observations: list[tuple[str, Any, float]] = []
    errors: list[str] = []
    counts = {"reads": 0, "failed": 0}
    stopping = asyncio.Event()

    async def read_loop(task: int) -> None:
        rng = random.Random(seed * 100 + task)
        total = cumulative[-1]
        while not stopping.is_set():
            bot_id = bot_name(order[bisect.bisect_left(cumulative, rng.random() * total)])
            started = time.time()
            try:
                record = await stack.get(bot_id)
            except Exception as exc:  # a failed read is what the test counts: it must be 0
                counts["failed"] += 1
                if len(errors) < 10:
                    errors.append(repr(exc))
            else:
                counts["reads"] += 1
                if bot_id in changed:
                    observations.append((bot_id, view(record), started))
            await asyncio.sleep(READ_PAUSE)

    lines = await _lines()
    print("ready", flush=True)
    assert (await lines.readline()).strip() == b"go"
    began = time.time()
    tasks = [asyncio.create_task(read_loop(i)) for i in range(READ_TASKS)]
    await lines.readline()  # "stop" (or end of input)
    stopping.set()
    await asyncio.gather(*tasks)
    ended = time.time()
    final = {bot_id: view(await stack.get(bot_id)) for bot_id in sorted(changed)}
    channel = stack._coherence
    result = {
        "reads": counts["reads"],
        "failed": counts["failed"],
        "errors": errors,
        "seconds": ended - began,
        "received": received,
        "resyncs": resyncs,
        "observations": observations,
        "final": final,
        "channel_drops": channel.drops if channel is not None else None,
        "channel_up": channel.is_up if channel is not None else None,
        "stats": stack.stats(),
    }
    _save(out, result)


async def writer(stack: TieredBackend, seed: int, out: str) -> None:
    updated, deactivated = plan(seed)
    work = [(b, "update") for b in updated] + [(b, "deactivate") for b in deactivated]
    random.Random(seed + 2).shuffle(work)
    acks: dict[str, list[Any]] = {}
    failed: dict[str, str] = {}
    lines = await _lines()
    print("ready", flush=True)
    assert (await lines.readline()).strip() == b"go"

    async def write_loop(share: list[tuple[str, str]]) -> None:
        for bot_id, kind in share:
            started = time.time()
            try:
                if kind == "update":
                    await stack.register(bot_id, {"v": 1, "pad": "x" * 1000})
                else:
                    await stack.deactivate(bot_id)
            except Exception as exc:  # not acknowledged: it may or may not have happened
                failed[bot_id] = repr(exc)
            else:
                acks[bot_id] = [kind, started, time.time(), _owes(stack)]
            await asyncio.sleep(WRITE_PAUSE)

    # When this process owed nothing (every write that missed the Redis tier during an outage
    # paid): sampled every 20 ms. Until then other processes may read an old value from the tier.
    settled: list[float] = []
    writing = asyncio.Event()

    async def sample() -> None:
        while not writing.is_set() or _owes(stack):
            if not _owes(stack):
                settled.append(time.time())
            await asyncio.sleep(0.02)
        settled.append(time.time())

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(write_loop(work[i::WRITE_TASKS]) for i in range(WRITE_TASKS)))
    done = time.monotonic()
    writing.set()
    await asyncio.wait_for(sampler, 30)
    _save(
        out,
        {
            "acks": acks,
            "failed": failed,
            "settled": settled,
            "settled_after": time.monotonic() - done,
            "stats": stack.stats(),
        },
    )
    print("done", flush=True)
    await lines.readline()  # "quit": stay subscribed-free but open until the test says so


async def main(role: str, redis_url: str, database_url: str, namespace: str, seed: str, out: str) -> None:
    async with build(redis_url, database_url, namespace) as stack:
        if role == "reader":
            await reader(stack, int(seed), out)
        else:
            await writer(stack, int(seed), out)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
