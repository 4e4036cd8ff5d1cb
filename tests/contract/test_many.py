"""Contract (issue #12): ``get_many``, ``get_configs`` and ``register_many`` on every store and stack.

Missing ids are absent from the result, repeated ids count once, the result follows the order in
which ids first appear; every found bot counts as an access; ``register_many`` validates every
item before it writes anything, and an invalid item (or an id given twice) rejects the whole call.
"""

from __future__ import annotations

import asyncio

import pytest

from tiered_registry import FrozenDict, InvalidInputError, InvalidTypeError, Registration
from tiered_registry.models import utcnow


async def _tick() -> None:
    await asyncio.sleep(0.005)


async def _seed(backend, n: int = 5) -> list[str]:
    ids = [f"bot-{i}" for i in range(n)]
    for i, bot_id in enumerate(ids):
        await backend.register(bot_id, {"n": i}, "active" if i % 2 == 0 else "inactive")
    return ids


async def test_get_many_returns_the_found_ones_in_first_occurrence_order(backend) -> None:
    await _seed(backend)
    got = await backend.get_many(["bot-3", "missing", "bot-0", "bot-3", "bot-1", "bot-0"])
    assert list(got) == ["bot-3", "bot-0", "bot-1"]
    assert all(isinstance(r, Registration) for r in got.values())
    assert {b: (r.config, r.status) for b, r in got.items()} == {
        "bot-3": ({"n": 3}, "inactive"),  # whatever the status
        "bot-0": ({"n": 0}, "active"),
        "bot-1": ({"n": 1}, "inactive"),
    }
    assert all(r.bot_id == b for b, r in got.items())


async def test_get_configs_returns_the_found_configs(backend) -> None:
    await _seed(backend)
    got = await backend.get_configs(iter(["bot-4", "nope", "bot-1", "bot-4"]))  # any iterable
    assert got == {"bot-4": {"n": 4}, "bot-1": {"n": 1}}
    assert list(got) == ["bot-4", "bot-1"]
    assert all(isinstance(c, FrozenDict) for c in got.values())


async def test_nothing_found_and_empty_input(backend) -> None:
    assert await backend.get_many([]) == {}
    assert await backend.get_configs(()) == {}
    assert await backend.get_many(["a", "b"]) == {}
    assert await backend.get_configs({"a", "b"}) == {}
    assert await backend.register_many([]) == []
    assert await backend.register_many({}) == []
    assert await backend.count_all() == 0


async def test_get_many_agrees_with_get(backend) -> None:
    ids = await _seed(backend, 8)
    many = await backend.get_many(ids)
    for bot_id in ids:
        one = await backend.get(bot_id)
        assert one is not None
        got = many[bot_id]
        assert (got.config, got.status, got.metadata, got.created_at, got.updated_at) == (
            one.config,
            one.status,
            one.metadata,
            one.created_at,
            one.updated_at,
        )


@pytest.mark.parametrize("method", ["get_many", "get_configs"])
async def test_every_found_bot_counts_as_an_access(backend, method: str) -> None:
    await backend.register("a", {"v": 1})
    await backend.register("b", {"v": 2})
    await backend.register("c", {"v": 3})
    await _tick()
    before = utcnow()
    await getattr(backend, method)(["a", "b", "missing"])
    records = {r.bot_id: r for r in await backend.list_all()}
    assert records["a"].last_accessed_at >= before
    assert records["b"].last_accessed_at >= before
    assert records["c"].last_accessed_at < before  # not asked for: no access
    assert await backend.get("missing") is None


async def test_get_many_shows_the_time_of_this_access(backend) -> None:
    await backend.register("a", {})
    await _tick()
    before = utcnow()
    got = await backend.get_many(["a"])
    assert got["a"].last_accessed_at >= before


@pytest.mark.parametrize("method", ["get_many", "get_configs"])
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        pytest.param(["ok", ""], InvalidInputError, r"bot_ids\[1\].*empty", id="empty"),
        pytest.param(["ok", 7], InvalidTypeError, r"bot_ids\[1\].*7.*str", id="not-a-str"),
        pytest.param(["a\nb"], InvalidInputError, r"bot_ids\[0\].*'a\\nb'.*control", id="control"),
        pytest.param("bot-1", InvalidTypeError, "pass a list of bot ids, not a str", id="bare-str"),
        pytest.param(b"bot-1", InvalidTypeError, "not a bytes", id="bytes"),
        pytest.param(42, InvalidTypeError, "list of bot ids", id="not-iterable"),
        pytest.param(None, InvalidTypeError, "list of bot ids", id="none"),
    ],
)
async def test_bad_ids_are_rejected_naming_the_id(backend, method, bad, error, match) -> None:
    await backend.register("ok", {})
    with pytest.raises(error, match=match):
        await getattr(backend, method)(bad)
    assert isinstance(error("x", "y"), TypeError | ValueError)


async def test_register_many_from_a_mapping(backend) -> None:
    written = await backend.register_many({"b": {"v": 2}, "a": {"v": 1}})
    assert [r.bot_id for r in written] == ["b", "a"]  # input order
    assert [(r.config, r.status, r.metadata) for r in written] == [
        ({"v": 2}, "active", {}),
        ({"v": 1}, "active", {}),
    ]
    assert await backend.get_configs(["a", "b"]) == {"a": {"v": 1}, "b": {"v": 2}}
    assert await backend.list_ids() == ["a", "b"]
    assert await backend.count() == 2


@pytest.mark.usefixtures("needs_metadata")
async def test_register_many_round_trips_status_and_metadata(backend) -> None:
    written = await backend.register_many(
        [
            ("a", {"v": 1}),
            ("b", {"v": 2}, "inactive"),
            ("c", {"v": 3}, "error", {"tenant": "acme"}),
            ("d", {"v": 4}, None, None),
        ],
        status="active",
        metadata={"tenant": "default"},
    )
    expected = {
        "a": ({"v": 1}, "active", {"tenant": "default"}),
        "b": ({"v": 2}, "inactive", {"tenant": "default"}),
        "c": ({"v": 3}, "error", {"tenant": "acme"}),
        "d": ({"v": 4}, "active", {"tenant": "default"}),
    }
    assert {r.bot_id: (r.config, r.status, r.metadata) for r in written} == expected
    read = await backend.get_many(["a", "b", "c", "d"])
    assert {b: (r.config, r.status, r.metadata) for b, r in read.items()} == expected
    for record in written:
        assert read[record.bot_id].created_at == record.created_at
        assert read[record.bot_id].updated_at == record.updated_at
    assert await backend.list_ids() == ["a", "d"]
    assert [r.bot_id for r in await backend.list_inactive()] == ["b"]
    assert await backend.count_all(status="error") == 1
    assert await backend.exists("c") is False


@pytest.mark.usefixtures("needs_metadata")
async def test_register_many_replaces_like_register(backend) -> None:
    first = await backend.register("a", {"v": 1}, metadata={"keep": True})
    await backend.register("b", {"v": 1}, metadata={"old": True})
    await _tick()
    written = await backend.register_many(
        [("a", {"v": 2}, "inactive"), ("b", {"v": 2}, "active", {"new": True}), ("c", {"v": 2})]
    )
    by_id = {r.bot_id: r for r in written}
    assert by_id["a"].created_at == first.created_at  # kept
    assert by_id["a"].updated_at > first.updated_at
    assert by_id["a"].metadata == {"keep": True}  # metadata None keeps the stored one
    assert by_id["b"].metadata == {"new": True}  # a mapping replaces it
    assert by_id["c"].metadata == {}  # a new bot: {}
    read = await backend.get_many(["a", "b", "c"])
    assert {b: (r.config, r.status, r.metadata) for b, r in read.items()} == {
        "a": ({"v": 2}, "inactive", {"keep": True}),
        "b": ({"v": 2}, "active", {"new": True}),
        "c": ({"v": 2}, "active", {}),
    }


async def test_register_many_without_metadata_keeps_what_a_store_holds(backend) -> None:
    await backend.register_many([("a", {"v": 1}, "active"), ("b", {"v": 2}, "inactive")])
    await backend.register_many([("a", {"v": 3}, "inactive")])
    assert await backend.get_configs(["a", "b"]) == {"a": {"v": 3}, "b": {"v": 2}}
    assert await backend.list_ids() == []
    assert await backend.count_inactive() == 2


BAD_ITEMS = [
    pytest.param(
        [("ok", {}), ("", {})], InvalidInputError, r"items\[1\] \(bot_id ''\).*empty", id="empty-id"
    ),
    pytest.param([("ok", {}), (5, {})], InvalidTypeError, r"items\[1\] \(bot_id 5\).*str", id="id-type"),
    pytest.param(
        [("ok", {}), ("x", {"f": float("nan")})],
        InvalidInputError,
        r"items\[1\] \(bot_id 'x'\).*config",
        id="nan",
    ),
    pytest.param(
        [("ok", {}), ("x", ["list"])], InvalidTypeError, r"items\[1\] \(bot_id 'x'\).*config", id="config"
    ),
    pytest.param(
        [("ok", {}), ("x", {}, "gone")], InvalidInputError, r"items\[1\] \(bot_id 'x'\).*status", id="status"
    ),
    pytest.param(
        [("ok", {}), ("x", {}, "active", {"s": {1, 2}})],
        InvalidTypeError,
        r"items\[1\].*metadata",
        id="metadata",
    ),
    pytest.param(
        [("ok", {}), ("x", {}), ("ok", {"v": 2})],
        InvalidInputError,
        r"items\[2\] \(bot_id 'ok'\).*items\[0\]",
        id="dup",
    ),
    pytest.param([("ok", {}), ("x",)], InvalidTypeError, r"items\[1\]", id="short-tuple"),
    pytest.param([("ok", {}), "x"], InvalidTypeError, r"items\[1\]", id="not-a-tuple"),
    pytest.param("bots", InvalidTypeError, "not a str", id="bare-str"),
    pytest.param(7, InvalidTypeError, "items", id="not-iterable"),
]


@pytest.mark.parametrize(("items", "error", "match"), BAD_ITEMS)
async def test_an_invalid_item_rejects_the_whole_call_and_writes_nothing(
    backend, items, error, match
) -> None:
    await backend.register("ok", {"v": 1})
    before = await backend.get("ok")
    with pytest.raises(error, match=match):
        await backend.register_many(items)
    assert await backend.list_ids() == ["ok"]
    assert await backend.count_all() == 1
    after = await backend.get("ok")
    assert after is not None
    assert before is not None
    assert (after.config, after.updated_at) == (before.config, before.updated_at)
    assert await backend.get_many(["x", ""[:0] or "x"]) == {}


@pytest.mark.parametrize(
    ("options", "error"),
    [({"status": "nope"}, InvalidInputError), ({"metadata": {"f": float("inf")}}, InvalidInputError)],
)
async def test_bad_defaults_are_rejected_before_anything_is_written(backend, options, error) -> None:
    with pytest.raises(error):
        await backend.register_many([("a", {})], **options)
    assert await backend.count_all() == 0


async def test_many_ids_at_once(backend) -> None:
    items = [(f"bot-{i:04d}", {"i": i}) for i in range(1200)]
    written = await backend.register_many(items)
    assert [r.bot_id for r in written] == [b for b, _ in items]
    ids = [b for b, _ in items] + [f"missing-{i}" for i in range(100)]
    configs = await backend.get_configs(ids)
    assert len(configs) == 1200
    assert configs["bot-1199"] == {"i": 1199}
    records = await backend.get_many(reversed(ids))
    assert next(iter(records)) == "bot-1199"
    assert len(records) == 1200


async def test_get_and_get_config_of_different_bots_at_once(backend) -> None:
    """Concurrent point reads (which a store batches) each get their own bot's record."""
    ids = await _seed(backend, 40)
    records, configs = await asyncio.gather(
        asyncio.gather(*(backend.get(b) for b in [*ids, "missing"])),
        asyncio.gather(*(backend.get_config(b) for b in [*reversed(ids), "missing"])),
    )
    assert [r.bot_id for r in records[:-1]] == ids
    assert records[-1] is None
    assert [c["n"] for c in configs[:-1]] == list(range(39, -1, -1))
    assert configs[-1] is None
