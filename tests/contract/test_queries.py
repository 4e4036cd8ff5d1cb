"""Contract: list_*/count_*/list_ids/stream, filters, sort, paging, clear and namespaces."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import pytest

from tiered_registry import InvalidInputError, SortSpec


class Order(enum.Enum):  # what dataknobs passes: an enum whose .value is "asc"/"desc"
    ASC = "asc"
    DESC = "desc"


@dataclass
class ForeignSort:  # any object with .field and .order
    field: str
    order: object


BOTS = [
    # bot_id, status, metadata
    ("delta", "active", {"tenant": "acme", "rank": 3, "vip": True}),
    ("alpha", "active", {"tenant": "acme", "rank": 1}),
    ("echo", "inactive", {"tenant": "zeta", "rank": 2}),
    ("charlie", "error", {"tenant": "zeta"}),
    ("bravo", "inactive", {"tenant": "acme", "rank": 5, "vip": False}),
    ("foxtrot", "active", {}),
]


@pytest.fixture
async def populated(backend, stack):
    for bot_id, status, metadata in BOTS:
        # A store that keeps no metadata gets none; the tests that need it skip there.
        await backend.register(bot_id, {"id": bot_id}, status, metadata=metadata if stack.metadata else None)
        await asyncio.sleep(0.001)  # distinct created_at
    return backend


def ids(records) -> list[str]:
    return [r.bot_id for r in records]


async def test_lists_are_ordered_by_bot_id_and_split_by_status(populated) -> None:
    b = populated
    assert ids(await b.list_all()) == ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    assert ids(await b.list_active()) == ["alpha", "delta", "foxtrot"]
    assert ids(await b.list_inactive()) == ["bravo", "echo"]
    assert ids(await b.list_all(status="error")) == ["charlie"]
    assert await b.list_ids() == ["alpha", "delta", "foxtrot"]


async def test_counts(populated) -> None:
    b = populated
    assert await b.count() == 3
    assert await b.count_all() == 6
    assert await b.count_inactive() == 2
    assert await b.count_all(status="error") == 1


@pytest.mark.usefixtures("needs_metadata")
async def test_counts_with_a_metadata_filter(populated) -> None:
    b = populated
    assert await b.count(filter_metadata={"tenant": "acme"}) == 2
    assert await b.count_all(filter_metadata={"tenant": "zeta"}) == 2
    assert await b.count_inactive(filter_metadata={"tenant": "acme"}) == 1


@pytest.mark.usefixtures("needs_metadata")
async def test_filter_metadata_is_equality_on_top_level_keys(populated) -> None:
    b = populated
    assert ids(await b.list_all(filter_metadata={"tenant": "acme"})) == ["alpha", "bravo", "delta"]
    assert ids(await b.list_active(filter_metadata={"tenant": "acme", "rank": 3})) == ["delta"]
    assert ids(await b.list_all(filter_metadata={"vip": True})) == ["delta"]
    assert ids(await b.list_all(filter_metadata={"vip": False})) == ["bravo"]
    assert ids(await b.list_all(filter_metadata={"rank": 1})) == ["alpha"]
    assert await b.list_all(filter_metadata={"tenant": "nobody"}) == []
    assert await b.list_all(filter_metadata={"missing": None}) == []
    assert ids(await b.list_all(filter_metadata={})) == ids(await b.list_all())


@pytest.mark.usefixtures("needs_metadata")
async def test_filter_on_nested_value(backend) -> None:
    await backend.register("a", {}, metadata={"tags": ["x", "y"], "owner": {"team": "core"}})
    await backend.register("b", {}, metadata={"tags": ["x"], "owner": {"team": "edge"}})
    assert ids(await backend.list_all(filter_metadata={"owner": {"team": "core"}})) == ["a"]
    assert ids(await backend.list_all(filter_metadata={"tags": ["x"]})) == ["b"]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ([SortSpec("bot_id", "desc")], ["foxtrot", "echo", "delta", "charlie", "bravo", "alpha"]),
        ([SortSpec("created_at")], ["delta", "alpha", "echo", "charlie", "bravo", "foxtrot"]),
        ([ForeignSort("created_at", Order.DESC)], ["foxtrot", "bravo", "charlie", "echo", "alpha", "delta"]),
        # a missing metadata key sorts last in both directions
        ([SortSpec("metadata.rank")], ["alpha", "echo", "delta", "bravo", "charlie", "foxtrot"]),
        ([SortSpec("metadata.rank", "desc")], ["bravo", "delta", "echo", "alpha", "charlie", "foxtrot"]),
        # multi-key: status, then rank descending; ties by bot_id
        (
            [SortSpec("status"), ForeignSort("metadata.rank", Order.DESC)],
            ["delta", "alpha", "foxtrot", "charlie", "bravo", "echo"],
        ),
        (["metadata.tenant", ("bot_id", "desc")], ["delta", "bravo", "alpha", "echo", "charlie", "foxtrot"]),
        (SortSpec("status", "desc"), ["bravo", "echo", "charlie", "alpha", "delta", "foxtrot"]),
    ],
)
async def test_sort(populated, stack, sort, expected) -> None:
    if not stack.metadata and "metadata." in repr(sort):
        pytest.skip("this stack's store keeps no metadata to sort by")
    assert ids(await populated.list_all(sort=sort)) == expected


async def test_limit_and_offset_page_through_the_ordered_list(populated) -> None:
    b = populated
    assert ids(await b.list_all(limit=2)) == ["alpha", "bravo"]
    assert ids(await b.list_all(limit=2, offset=2)) == ["charlie", "delta"]
    assert ids(await b.list_all(offset=4)) == ["echo", "foxtrot"]
    assert await b.list_all(offset=10) == []
    assert await b.list_all(limit=0) == []
    assert ids(await b.list_active(limit=1, offset=1, sort=[SortSpec("bot_id", "desc")])) == ["delta"]
    assert ids(await b.list_all(status="inactive", limit=1)) == ["bravo"]


async def test_after_pages_by_key_in_bot_id_order(populated) -> None:
    b = populated
    assert ids(await b.list_all(after="bravo")) == ["charlie", "delta", "echo", "foxtrot"]
    assert ids(await b.list_all(after="bravo", limit=2)) == ["charlie", "delta"]
    assert ids(await b.list_all(after="b")) == ["bravo", "charlie", "delta", "echo", "foxtrot"]  # not an id
    assert ids(await b.list_active(after="alpha")) == ["delta", "foxtrot"]
    assert ids(await b.list_inactive(after="bravo")) == ["echo"]
    assert ids(await b.list_all(after="charlie", limit=1, offset=1)) == ["echo"]  # offset counts from the key
    assert ids(await b.list_all(after="alpha", sort=[("bot_id", "asc")], limit=1)) == ["bravo"]
    assert await b.list_all(after="foxtrot") == []
    assert await b.list_all(after="zzz", limit=3) == []


async def test_after_walks_every_page_once(backend) -> None:
    await backend.register_many({f"k{i:03d}": {"i": i} for i in range(25)})
    await backend.deactivate("k010")
    seen: list[str] = []
    last = None
    while True:
        page = (
            await backend.list_active(limit=7)
            if last is None
            else await backend.list_active(limit=7, after=last)
        )
        if not page:
            break
        seen += ids(page)
        last = page[-1].bot_id
    assert seen == [f"k{i:03d}" for i in range(25) if i != 10]


@pytest.mark.usefixtures("needs_metadata")
async def test_after_with_a_metadata_filter(populated) -> None:
    assert ids(await populated.list_all(after="alpha", filter_metadata={"tenant": "acme"})) == [
        "bravo",
        "delta",
    ]


@pytest.mark.parametrize(
    "sort",
    [[("bot_id", "desc")], "created_at", [("bot_id", "asc"), ("status", "asc")], SortSpec("metadata.rank")],
)
async def test_after_with_another_order_is_refused(populated, sort) -> None:
    with pytest.raises(InvalidInputError, match="after: keyset paging"):
        await populated.list_all(after="alpha", sort=sort)


@pytest.mark.parametrize("after", ["", 3, "a\x00b"])
async def test_after_must_be_a_bot_id(populated, after) -> None:
    with pytest.raises(InvalidInputError, match=r"^after: "):
        await populated.list_all(after=after)


async def test_stream_walks_everything_in_batches(populated) -> None:
    b = populated
    assert [r.bot_id async for r in b.stream(batch_size=2)] == [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
    ]
    assert [r.bot_id async for r in b.stream(status="active", batch_size=1)] == ["alpha", "delta", "foxtrot"]


@pytest.mark.usefixtures("needs_metadata")
async def test_stream_filters_on_metadata(populated) -> None:
    zeta = populated.stream(filter_metadata={"tenant": "zeta"})
    assert [r.bot_id async for r in zeta] == ["charlie", "echo"]
    active_acme = populated.stream(status="active", filter_metadata={"tenant": "acme"})
    assert [r.bot_id async for r in active_acme] == ["alpha", "delta"]


async def test_stream_of_many_bots(backend) -> None:
    await asyncio.gather(*(backend.register(f"b{i:04d}", {"i": i}) for i in range(1200)))
    seen = [r.bot_id async for r in backend.stream(batch_size=100)]
    assert seen == sorted(f"b{i:04d}" for i in range(1200))


async def test_list_all_is_not_an_access(populated) -> None:
    before = {r.bot_id: r.last_accessed_at for r in await populated.list_all()}
    await populated.list_active()
    await populated.flush_accesses()
    assert {r.bot_id: r.last_accessed_at for r in await populated.list_all()} == before


async def test_clear_empties_this_registry(populated) -> None:
    await populated.clear()
    assert await populated.list_all() == []
    assert await populated.count_all() == 0
    assert await populated.get("alpha") is None
    assert await populated.exists("alpha") is False
    await populated.register("alpha", {"again": True})
    assert await populated.get_config("alpha") == {"again": True}


async def test_clear_leaves_other_namespaces_alone(build_backend, namespace) -> None:
    mine = await build_backend(namespace)
    theirs = await build_backend(namespace + "_other")
    await mine.register("bot", {"who": "mine"})
    await theirs.register("bot", {"who": "theirs"})
    await theirs.register("only-theirs", {})
    await mine.clear()
    assert await mine.count_all() == 0
    assert await theirs.get_config("bot") == {"who": "theirs"}
    assert await theirs.count_all() == 2


async def test_a_second_instance_on_the_same_namespace_sees_the_data(stack, build_backend, namespace) -> None:
    if not stack.shared:
        pytest.skip("this backend keeps its data inside one instance")
    first = await build_backend(namespace)
    second = await build_backend(namespace)
    await first.register("bot", {"v": 1})
    assert await second.get_config("bot") == {"v": 1}
    await second.deactivate("bot")
    assert await first.exists("bot") is False
    await second.unregister("bot")
    assert await first.get("bot") is None
