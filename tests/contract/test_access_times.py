"""Contract: ``last_accessed_at`` as callers see it (issue #14).

Accesses are written behind in batches, but what a caller sees does not lag: ``get`` returns the
time of that very access; in the process that made an access every later read (``get``,
``list_*``, ``stream``, ``peek``) shows a ``last_accessed_at`` at least that late, and the time
written later is the one shown; ``peek``/``peek_config`` and the lists are not accesses; another
instance on the same namespace sees the access once it is flushed (within
``access_flush_interval``).

Robust to a coarse clock: times are compared with ``>=`` against the clock read just before the
access, and "strictly later" only after a sleep of a few milliseconds.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from tiered_registry import Registration, TieredBackend
from tiered_registry.models import utcnow
from tiered_registry.query import SortSpec
from tiered_registry.stores.foreign import ForeignStore


async def _tick() -> None:
    """Let the clock move so that the next time is strictly later."""
    await asyncio.sleep(0.005)


def _one(records: list[Registration], bot_id: str) -> Registration:
    (record,) = [r for r in records if r.bot_id == bot_id]
    return record


async def _every_read(backend, bot_id: str, status: str = "active") -> dict[str, datetime]:
    """``last_accessed_at`` of ``bot_id`` through every read that is not an access.

    ``peek`` only on a store: on a stack it shows this process's accesses while they are pending,
    but once they are written a copy served from a cache tier shows the time it was cached with
    (``peek`` is not an access, so nothing refreshes it); see ``tests/test_tiered.py``.
    """
    by_status = backend.list_active if status == "active" else backend.list_inactive
    times = {}
    if not isinstance(backend, TieredBackend):
        times["peek"] = (await backend.peek(bot_id)).last_accessed_at
    times["list_all"] = _one(await backend.list_all(), bot_id).last_accessed_at
    times[f"list_{status}"] = _one(await by_status(), bot_id).last_accessed_at
    times["stream"] = _one([r async for r in backend.stream()], bot_id).last_accessed_at
    one_by_one = [r async for r in backend.stream(batch_size=1)]
    times["stream(batch_size=1)"] = _one(one_by_one, bot_id).last_accessed_at
    return times


def _writes_the_times_it_is_given(backend) -> bool:
    """A foreign store may stamp an access with its own clock when it is written (later, not equal)."""
    return not isinstance(getattr(backend, "store", backend), ForeignStore)


async def test_get_returns_the_time_of_that_access(backend) -> None:
    r1 = await backend.register("x", {"v": 1})
    await _tick()
    before = utcnow()
    r2 = await backend.get("x")
    assert r2.last_accessed_at >= before
    assert r2.last_accessed_at > r1.last_accessed_at
    assert (r2.bot_id, r2.config, r2.status, r2.created_at) == ("x", {"v": 1}, "active", r1.created_at)
    await _tick()
    r3 = await backend.get("x")
    assert r3.last_accessed_at > r2.last_accessed_at


async def test_reads_after_get_config_show_the_access(backend) -> None:
    await backend.register("x", {"v": 1})
    await backend.register("y", {"v": 2}, "inactive")
    await _tick()
    before = utcnow()
    assert await backend.get_config("x") == {"v": 1}
    assert await backend.get_config("x") == {"v": 1}  # on a stack, the second one is a local hit
    for read, at in (await _every_read(backend, "x")).items():
        assert at >= before, read
    assert (await backend.get("x")).last_accessed_at >= before
    await _tick()
    before = utcnow()
    await backend.get("y")
    for read, at in (await _every_read(backend, "y", "inactive")).items():
        assert at >= before, read


async def test_later_reads_never_show_an_earlier_time(backend) -> None:
    """Shown, then flushed (by the background task or by hand): the time never goes back."""
    await backend.register("x", {})
    await _tick()
    shown = (await backend.get("x")).last_accessed_at
    for _ in range(3):
        for read, at in (await _every_read(backend, "x")).items():
            assert at >= shown, read
            shown = at
        await backend.flush_accesses()


async def test_the_time_written_is_the_time_shown(backend) -> None:
    exact = _writes_the_times_it_is_given(backend)
    await backend.register("x", {})
    await _tick()
    shown = (await backend.get("x")).last_accessed_at
    await backend.flush_accesses()
    written = _one(await backend.list_all(), "x").last_accessed_at
    assert written == shown if exact else written >= shown
    await _tick()
    await backend.get_config("x")
    await backend.get_config("x")
    shown = _one(await backend.list_all(), "x").last_accessed_at  # pending (or already written)
    assert shown > written
    await backend.flush_accesses()
    written = _one(await backend.list_all(), "x").last_accessed_at
    assert written == shown if exact else written >= shown


async def test_peek_and_peek_config_are_not_accesses(backend) -> None:
    r1 = await backend.register("x", {"v": 1})
    await _tick()
    assert (await backend.peek("x")).last_accessed_at == r1.last_accessed_at
    assert await backend.peek_config("x") == {"v": 1}
    assert await backend.peek_config("x") == {"v": 1}
    assert (await backend.peek("x")).last_accessed_at == r1.last_accessed_at
    await backend.flush_accesses()
    for read, at in (await _every_read(backend, "x")).items():
        assert at == r1.last_accessed_at, read


async def test_another_instance_sees_the_access_once_flushed(
    backend, build_backend, namespace, stack
) -> None:
    if not stack.shared:
        pytest.skip("this backend keeps its data inside one instance")
    other = await build_backend(namespace)
    await backend.register("x", {})
    await _tick()
    before = utcnow()
    await backend.get_config("x")
    await backend.flush_accesses()
    assert _one(await other.list_all(), "x").last_accessed_at >= before
    assert _one([r async for r in other.stream()], "x").last_accessed_at >= before


async def test_another_instance_sees_the_access_within_the_flush_interval(
    backend, build_backend, namespace, stack
) -> None:
    if not stack.shared:
        pytest.skip("this backend keeps its data inside one instance")
    other = await build_backend(namespace)
    await backend.register("x", {})
    await _tick()
    before = utcnow()
    await backend.get_config("x")
    interval = backend._recorder.interval  # the documented bound (1 s by default)
    async with asyncio.timeout(interval + 2):
        while _one(await other.list_all(), "x").last_accessed_at < before:  # noqa: ASYNC110 (polls a server)
            await asyncio.sleep(0.02)


async def test_a_list_sorted_by_access_time_follows_the_times_shown(backend) -> None:
    for bot_id in ("a", "b", "c"):
        await backend.register(bot_id, {})
    await _tick()
    await backend.get("a")  # pending: the store still has the registration time
    await _tick()
    await backend.get_config("b")  # stamped when collected (any time from the access on)
    newest_first = [SortSpec("last_accessed_at", "desc")]
    records = await backend.list_all(sort=newest_first)
    times = [r.last_accessed_at for r in records]
    assert times == sorted(times, reverse=True)  # the order is the order of the times shown
    assert records[-1].bot_id == "c"
    (first,) = await backend.list_all(sort=newest_first, limit=1)
    assert first == records[0]
    if _writes_the_times_it_is_given(backend):  # a foreign store may get one time for the batch
        assert [r.bot_id for r in records] == ["b", "a", "c"]
