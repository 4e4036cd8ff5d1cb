"""A second bot-server process for the coherence tests (run as ``python tests/coherence_worker.py``).

Builds ``local -> redis cache -> postgres`` on the namespace given, then follows commands on stdin:
``expect <json>`` spins on ``get(bot)`` until it equals ``<json>`` (``[status, config]`` or ``null``)
and answers ``seen <time.time_ns()>``; ``quit`` closes the stack. It never writes.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from tiered_registry import LocalCache, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache


def _view(record: object) -> object:
    return None if record is None else [record.status, record.config]  # type: ignore[attr-defined]


async def main(redis_url: str, database_url: str, namespace: str) -> None:
    stack = TieredBackend(
        tiers=[LocalCache(ttl=300), RedisCache(redis_url, ttl=300, namespace=namespace)],
        store=PostgresBackend(database_url, table=namespace),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with stack:
        print("ready", flush=True)
        while line := (await reader.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            if command == "quit":
                break
            expected = orjson.loads(argument)
            deadline = time.monotonic() + 10
            while _view(await stack.get("bot")) != expected:
                if time.monotonic() > deadline:
                    print(f"timeout {orjson.dumps(_view(await stack.get('bot'))).decode()}", flush=True)
                    break
                await asyncio.sleep(0)
            else:
                print(f"seen {time.time_ns()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
