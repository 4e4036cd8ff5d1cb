"""The change feed (``watch``/``on_change``): what a bot server hears of every write, in any process.

Two ``local -> redis cache -> postgres`` stacks on one namespace and table stand in for two
processes; one test uses a real second OS process (the worked example of ``examples/``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tiered_registry.changes import ChangeEvent, Watch

from .faults_support import wait_channel_up
from .test_coherence import _kill_subscriber

ROOT = Path(__file__).resolve().parent.parent


async def _next(watch: Watch, timeout: float = 5.0) -> ChangeEvent:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        return await anext(watch)


def _kinds(events: list[ChangeEvent]) -> list[tuple[str | None, str]]:
    return [(e.bot_id, e.kind) for e in events]


async def test_every_write_of_this_process_is_an_event_once_the_tiers_have_it(make_stack) -> None:
    stack = await make_stack()
    seen_in_callback: list[tuple[str | None, str]] = []
    remove = stack.on_change(lambda e: seen_in_callback.append((e.bot_id, e.kind)))
    async with stack.watch() as changes:
        await stack.register("bot", {"v": 1})
        event = await _next(changes)
        assert (event.bot_id, event.kind, event.remote) == ("bot", "registered", False)
        await stack.register("bot", {"v": 2})
        assert (await _next(changes)).kind == "updated"
        assert await stack.get_config("bot") == {"v": 2}  # the event came after the tiers had it
        await stack.deactivate("bot")
        assert (await _next(changes)).kind == "deactivated"
        await stack.unregister("bot")
        assert (await _next(changes)).kind == "unregistered"
        await stack.unregister("bot")  # nothing there: the caches were dropped all the same
        assert (await _next(changes)).kind == "invalidated"
        await stack.clear()
        assert _kinds([await _next(changes)]) == [(None, "cleared")]
    remove()
    await stack.register("other", {})
    assert seen_in_callback == [
        ("bot", "registered"),
        ("bot", "updated"),
        ("bot", "deactivated"),
        ("bot", "unregistered"),
        ("bot", "invalidated"),
        (None, "cleared"),
    ]


@pytest.mark.parametrize("local", [True, False], ids=["with-local-tier", "redis-tier-only"])
async def test_other_processes_writes_arrive_as_remote_events(make_stack, local: bool) -> None:
    writer, watcher = await make_stack(), await make_stack(local=local)
    async with watcher.watch() as changes:
        await wait_channel_up([watcher])  # a stack without a local tier starts listening now
        await writer.register("bot", {"v": 1})
        await writer.register("bot", {"v": 2})
        await writer.deactivate("bot")
        await writer.unregister("bot")
        await writer.clear()
        events = [await _next(changes) for _ in range(5)]
    assert all(e.remote for e in events)
    assert _kinds(events) == [
        ("bot", "registered"),
        ("bot", "updated"),
        ("bot", "deactivated"),
        ("bot", "unregistered"),
        (None, "cleared"),
    ]


async def test_a_slow_watcher_gets_a_resync_instead_of_an_unbounded_queue(make_stack) -> None:
    stack = await make_stack()
    changes = stack.watch(maxsize=3)
    for index in range(10):
        await stack.register(f"bot-{index}", {})
    assert len(changes._queue) <= 3
    assert changes.overflows >= 1
    events = []
    while changes._queue:
        events.append(await _next(changes))
    assert any(e.kind == "resync" and e.bot_id is None for e in events)  # covers what was lost
    await stack.register("later", {})  # a consumer that caught up gets events as before
    assert _kinds([await _next(changes)]) == [("later", "registered")]
    changes.close()


async def test_a_channel_that_dropped_and_came_back_yields_a_resync(make_stack, redis_url) -> None:
    stack = await make_stack()
    async with stack.watch() as changes:
        assert await _kill_subscriber(redis_url, stack)
        event = await _next(changes)
        assert (event.bot_id, event.kind) == (None, "resync")


async def test_watching_ends_when_the_backend_closes(make_stack) -> None:
    stack = await make_stack()
    changes = stack.watch()
    await stack.register("bot", {})
    await stack.close()
    assert [e.kind async for e in changes] == ["registered"]


async def test_messages_of_the_previous_version_are_understood(make_stack, redis_url, namespace) -> None:
    """Rolling deploy: a version-1 message (no kind, no time) invalidates and is an event."""
    stack = await make_stack()
    await stack.register("bot", {"v": 1})
    assert await stack.get_config("bot") == {"v": 1}
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with stack.watch() as changes:
            old = orjson.dumps({"s": "an-old-process", "n": 1, "k": "bot"})
            await client.publish(f"{{{namespace}}}:invalidations", old)
            event = await _next(changes)
            assert (event.bot_id, event.kind, event.remote) == ("bot", "invalidated", True)
            assert stack.tiers[0].get_entry("bot") is None  # type: ignore[attr-defined]
            # and what we send now still has what a version-1 reader needs
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(f"{{{namespace}}}:invalidations")
                await stack.deactivate("bot")
                async with asyncio.timeout(5):
                    while (message := await pubsub.get_message(timeout=1)) is None or message[
                        "type"
                    ] != "message":
                        pass
            sent = orjson.loads(message["data"])
            assert sent["k"] == "bot"
            assert isinstance(sent["s"], str)
            assert sent["e"] == "deactivated"
            assert sent["v"] == 2
            assert sent["t"] <= time.time()
    finally:
        await client.aclose()


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("instance_cache", ROOT / "examples" / "instance_cache.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["instance_cache"] = module
    spec.loader.exec_module(module)
    return module


_OTHER_PROCESS = """
import asyncio, sys
from tiered_registry import LocalCache, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

async def main(redis_url, database_url, namespace):
    stack = TieredBackend(
        tiers=[LocalCache(), RedisCache(redis_url, namespace=namespace)],
        store=PostgresBackend(database_url, table=namespace),
    )
    async with stack:
        await stack.register("support-bot", {"model": "m-2"})

asyncio.run(main(*sys.argv[1:]))
"""


async def test_worked_example_an_instance_cache_drops_a_bot_changed_in_another_process(
    make_stack, redis_url, database_url, namespace
) -> None:
    example = _load_example()
    stack = await make_stack()
    await stack.register("support-bot", {"model": "m-1"})
    builds: list[dict[str, Any]] = []

    def build(bot_id: str, config: dict[str, Any]) -> dict[str, Any]:
        builds.append(dict(config))
        return {"bot": bot_id, "model": config["model"]}

    cache = example.InstanceCache(stack, build)
    assert (await cache.get("support-bot"))["model"] == "m-1"
    assert (await cache.get("support-bot"))["model"] == "m-1"
    assert len(builds) == 1  # built once, then reused
    heard = asyncio.Event()
    stack.on_change(lambda event: heard.set())
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OTHER_PROCESS, redis_url, database_url, namespace, cwd=ROOT
    )
    assert await asyncio.wait_for(other.wait(), 60) == 0
    await asyncio.wait_for(heard.wait(), 5)
    assert "support-bot" not in cache  # dropped on the event from the other process
    assert (await cache.get("support-bot"))["model"] == "m-2"
    assert len(builds) == 2
    cache.close()


async def test_worked_example_does_not_keep_a_bot_built_from_a_config_changed_meanwhile(make_stack) -> None:
    example = _load_example()
    writer, stack = await make_stack(), await make_stack()
    await writer.register("bot", {"v": 1})
    gate = asyncio.Event()
    original = stack.get_config

    async def slow_get_config(bot_id: str) -> dict[str, Any] | None:
        config = await original(bot_id)
        await gate.wait()  # the change arrives while the bot is being built
        return config

    stack.get_config = slow_get_config  # type: ignore[method-assign]
    cache = example.InstanceCache(stack, lambda bot_id, config: dict(config))
    building = asyncio.create_task(cache.get("bot"))
    await asyncio.sleep(0.01)
    async with stack.watch() as changes:
        await writer.register("bot", {"v": 2})
        await _next(changes)
    gate.set()
    assert await building == {"v": 1}  # what it read, handed to its caller...
    assert "bot" not in cache  # ...but not kept
    cache.close()
