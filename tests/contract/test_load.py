"""Contract (issue #15): the bulk ``load`` on every store and stack.

``load`` registers what ``register_many`` would, chunk by chunk, from any iterable (a generator
is read once); it returns the number written, reports progress per chunk, keeps or replaces
metadata like ``register``, and names the index of an invalid item or of a bot id given twice.
"""

from __future__ import annotations

import asyncio

import pytest

from tiered_registry import InvalidInputError, InvalidTypeError


def _items(n: int, start: int = 0):
    for i in range(start, start + n):
        yield (f"bot-{i:05d}", {"i": i, "prompt": "x" * 50}, "active" if i % 3 else "inactive")


async def test_load_writes_every_item_in_chunks(backend) -> None:
    done: list[int] = []
    assert await backend.load(_items(2500), chunk_size=1000, progress=done.append) == 2500
    assert sorted(done) == [500, 1000, 1000]
    assert await backend.count_all() == 2500
    assert await backend.count_all(status="inactive") == 834
    assert await backend.peek_config("bot-01234") == {"i": 1234, "prompt": "x" * 50}
    record = await backend.peek("bot-00003")
    assert record is not None
    assert record.status == "inactive"
    assert await backend.load([]) == 0


async def test_load_replaces_existing_bots_like_register(backend, stack) -> None:
    meta = {"tenant": "acme"} if stack.metadata else None
    first = await backend.register("bot-00001", {"old": True}, metadata=meta)
    assert await backend.load({"bot-00001": {"new": True}, "bot-00002": {"n": 2}}) == 2
    record = await backend.peek("bot-00001")
    assert record is not None
    assert record.config == {"new": True}
    assert record.created_at == first.created_at
    assert record.metadata == (meta or {})  # metadata not given: the stored one is kept
    assert await backend.get_config("bot-00001") == {"new": True}  # no tier serves the old config


@pytest.mark.usefixtures("needs_metadata")
async def test_load_replaces_metadata_when_given(backend) -> None:
    await backend.register("a", {"n": 1}, metadata={"tenant": "old"})
    items = [("a", {"n": 2}, None, {"tenant": "new"}), ("b", {"n": 3})]
    assert await backend.load(items, metadata={"tenant": "default"}) == 2
    a, b = await backend.peek("a"), await backend.peek("b")
    assert a is not None
    assert b is not None
    assert (a.metadata, b.metadata) == ({"tenant": "new"}, {"tenant": "default"})


async def test_an_invalid_item_is_named_by_its_index(backend) -> None:
    def items():
        yield from _items(5)
        yield ("bad", {"x": float("nan")})

    with pytest.raises(InvalidInputError, match=r"^items\[5\] \(bot_id 'bad'\): config\.x: "):
        await backend.load(items(), chunk_size=2)
    # Not all or nothing: the chunks before the bad one's own were written.
    assert await backend.count_all() == 4
    with pytest.raises(InvalidTypeError, match=r"^items\[0\]"):
        await backend.load([("tuple-config", {"t": (1, 2)})])


async def test_a_bot_id_given_twice_in_one_load_is_refused_across_chunks(backend) -> None:
    items = [*_items(3), ("bot-00001", {"again": True})]
    with pytest.raises(InvalidInputError, match=r"items\[3\].*the same bot id as items\[1\]"):
        await backend.load(items, chunk_size=2)


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
async def test_chunk_size_must_be_positive(backend, chunk_size) -> None:
    with pytest.raises(InvalidInputError, match="chunk_size"):
        await backend.load(_items(1), chunk_size=chunk_size)


async def test_recently_accessed_lists_the_latest_accesses_first(backend) -> None:
    await backend.register_many({f"r{i}": {"i": i} for i in range(5)})
    for bot_id in ("r3", "r0", "r4"):
        await asyncio.sleep(0.002)  # distinct access times
        assert await backend.get(bot_id) is not None
        # (one flush per access: a foreign store's record_accesses takes one time per batch)
        await backend.flush_accesses()
    assert (await backend.recently_accessed(3)) == ["r4", "r0", "r3"]
    assert len(await backend.recently_accessed(10)) == 5
    assert await backend.recently_accessed(0) == []
    with pytest.raises(InvalidInputError, match="limit"):
        await backend.recently_accessed(-1)
