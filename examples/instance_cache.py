"""A bot server's cache of *built* bots that drops a bot when its config changes, in any process.

A bot server does not only look up configs: it builds bots from them (model clients, prompt
templates, tools) and keeps those. When a config changes, through this process or any other, the
built bot must go. ``registry.on_change`` tells it::

    cache = InstanceCache(registry, build=make_bot)   # make_bot(bot_id, config) -> your bot
    bot = await cache.get("support-bot")              # built once, then reused
    ...                                               # another process registers a new config:
    bot = await cache.get("support-bot")              # dropped on the change, built again

One race to get right: a change that arrives while a bot is being built (``get_config`` is
awaited) must win, or the cache would keep a bot built from the old config. A per-bot generation,
bumped by every change, tells ``get`` not to keep what it built.

Run ``python examples/instance_cache.py`` twice, with ``REDIS_URL`` and ``DATABASE_URL`` set, and
type ``set <bot> <value>`` in one: the other rebuilds that bot.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from tiered_registry import LocalCache, TieredBackend
from tiered_registry.changes import ChangeEvent
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache


class InstanceCache:
    """Built bots by id, dropped when the registry reports their config changed."""

    def __init__(self, registry: TieredBackend, build: Callable[[str, dict[str, Any]], Any]) -> None:
        self._registry = registry
        self._build = build
        self._built: dict[str, Any] = {}
        self._generation: dict[str, int] = {}  # per bot, bumped by every change
        self._everything = 0  # bumped by clear/resync
        self._stop_listening = registry.on_change(self._changed)

    def _changed(self, event: ChangeEvent) -> None:
        if event.bot_id is None:  # cleared, or resync: anything may have changed
            self._built.clear()
            self._everything += 1
        else:
            self._built.pop(event.bot_id, None)
            self._generation[event.bot_id] = self._generation.get(event.bot_id, 0) + 1

    async def get(self, bot_id: str) -> Any | None:
        """The built bot, building it on first use (``None`` if there is no such bot)."""
        bot = self._built.get(bot_id)
        if bot is not None:
            return bot
        seen = (self._generation.get(bot_id, 0), self._everything)
        config = await self._registry.get_config(bot_id)
        if config is None:
            return None
        bot = self._build(bot_id, config)
        if (self._generation.get(bot_id, 0), self._everything) == seen:  # no change meanwhile
            self._built[bot_id] = bot
        return bot

    def __contains__(self, bot_id: str) -> bool:
        return bot_id in self._built

    def close(self) -> None:
        self._stop_listening()


async def _demo() -> None:  # pragma: no cover - interactive
    registry = TieredBackend(
        tiers=[LocalCache(), RedisCache(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))],
        store=PostgresBackend(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")),
    )
    async with registry:
        cache = InstanceCache(
            registry, build=lambda bot_id, config: print(f"built {bot_id}: {config}") or config
        )
        registry.on_change(lambda event: print(f"change: {event.kind} {event.bot_id}"))
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            words = line.split()
            if len(words) == 3 and words[0] == "set":
                await registry.register(words[1], {"value": words[2]})
            elif len(words) == 2 and words[0] == "get":
                print(await cache.get(words[1]))


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_demo())
