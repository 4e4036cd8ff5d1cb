"""Someone else's RegistryBackend behind the tiers (``stores/foreign.py``), beyond the contract suite.

Which stores are wrapped, that a cache fill is a ``peek`` (not an access) and a cache hit no call
at all, that accesses reach the store in one batch per flush, and how records, metadata, filters,
errors and the lifecycle are carried across. The backends are in ``tests/foreign_backends.py``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tiered_registry import (
    ConfigurationError,
    FrozenDict,
    InMemoryBackend,
    InvalidTypeError,
    LocalCache,
    Registration,
    RegistryBackend,
    SortSpec,
    TieredBackend,
)
from tiered_registry.protocol import CoreRegistryBackend
from tiered_registry.stores.foreign import ForeignStore, to_registration

from .foreign_backends import ForeignRecord, FullForeignBackend, MinimalForeignBackend

FOREIGN = [MinimalForeignBackend, FullForeignBackend]


def _stack(store: object, **options: Any) -> TieredBackend:
    return TieredBackend(tiers=[LocalCache(maxsize=1000, ttl=30)], store=store, **options)


# ---- which stores are wrapped ------------------------------------------------------------------


def test_our_own_stores_keep_their_internal_path() -> None:
    store = InMemoryBackend()
    assert _stack(store).store is store


@pytest.mark.parametrize("cls", FOREIGN)
def test_any_other_backend_is_wrapped(cls: type) -> None:
    foreign = cls()
    store = _stack(foreign).store
    assert isinstance(store, ForeignStore)
    assert store.backend is foreign
    assert "ForeignStore" in repr(store)


def test_the_full_backend_is_a_registry_backend_the_minimal_one_only_a_core_one() -> None:
    assert isinstance(FullForeignBackend(), RegistryBackend)
    assert not isinstance(MinimalForeignBackend(), RegistryBackend)
    assert isinstance(MinimalForeignBackend(), CoreRegistryBackend)


class HalfABackend:
    async def get(self, bot_id: str) -> None:
        return None

    async def get_config(self, bot_id: str) -> None:
        return None


@pytest.mark.parametrize(
    ("store", "name"),
    [
        (object(), "object"),
        ({"type": "memory"}, "dict"),
        (HalfABackend(), "HalfABackend"),
        (None, "NoneType"),
    ],
)
def test_anything_else_is_rejected_naming_its_type(store: object, name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"store must be a RegistryBackend, got {name}") as info:
        _stack(store)
    if isinstance(store, HalfABackend):
        assert "missing: initialize, close, register" in str(info.value)
        assert "get," not in str(info.value)


def test_foreign_store_wraps_only_other_peoples_backends() -> None:
    with pytest.raises(ConfigurationError, match="InMemoryBackend"):
        ForeignStore(InMemoryBackend())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="object"):
        ForeignStore(object())  # type: ignore[arg-type]


# ---- reads: fills peek, hits make no call --------------------------------------------------------


async def test_a_fill_peeks_and_a_hit_makes_no_call() -> None:
    foreign = FullForeignBackend()
    async with _stack(foreign, access_flush_interval=60) as tiered:
        await foreign.register("bot", {"v": 1})  # around the stack: not cached yet
        foreign.calls.clear()
        assert await tiered.get_config("bot") == {"v": 1}
        assert foreign.calls == {"peek": 1}  # the fill: not get, so not an access in that store
        for _ in range(100):
            assert await tiered.get_config("bot") == {"v": 1}
            assert (await tiered.get("bot")).config == {"v": 1}
            assert await tiered.peek_config("bot") == {"v": 1}
            assert await tiered.exists("bot")
        assert foreign.calls == {"peek": 1}
        assert await tiered.get_config("missing") is None  # a miss is cached too (negative caching)
        assert await tiered.get_config("missing") is None
        assert foreign.calls == {"peek": 2}


async def test_without_peek_a_fill_is_a_get() -> None:
    foreign = MinimalForeignBackend()
    async with _stack(foreign, access_flush_interval=60) as tiered:
        await foreign.register("bot", {"v": 1})
        foreign.calls.clear()
        for _ in range(10):
            assert await tiered.get_config("bot") == {"v": 1}
        assert foreign.calls == {"get": 1}


async def test_standalone_point_reads_use_the_matching_method() -> None:
    foreign = FullForeignBackend()
    async with ForeignStore(foreign) as store:
        await store.register("bot", {"v": 1})
        foreign.calls.clear()
        assert await store.peek_config("bot") == {"v": 1}
        assert (await store.peek("bot")).config == {"v": 1}
        assert await store.get_config("bot") == {"v": 1}
        assert (await store.get("bot")).config == {"v": 1}
        assert await store.exists("bot")
        assert foreign.calls == {"peek_config": 1, "peek": 1, "get_config": 1, "get": 1, "exists": 1}
        assert isinstance(await store.get_config("bot"), FrozenDict)


# ---- accesses: one batch per flush, not a call per hit -----------------------------------------


async def test_accesses_reach_record_accesses_once_per_flush() -> None:
    foreign = FullForeignBackend()
    async with _stack(foreign, access_flush_interval=60) as tiered:
        for bot_id in ("a", "b", "c"):
            await tiered.register(bot_id, {})
        registered = foreign.records["a"].last_accessed_at
        foreign.calls.clear()
        for _ in range(50):
            for bot_id in ("a", "b", "c"):
                await tiered.get_config(bot_id)
                await tiered.get(bot_id)
        assert not foreign.calls
        await tiered.flush_accesses()
        assert foreign.calls == {"record_accesses": 1}
        assert sorted(foreign.accessed_batches[-1]) == ["a", "b", "c"]
        assert foreign.records["a"].last_accessed_at > registered
        await tiered.flush_accesses()  # nothing new: no call
        assert foreign.calls == {"record_accesses": 1}


async def test_without_record_accesses_each_accessed_bot_is_read_once_per_flush() -> None:
    foreign = MinimalForeignBackend()
    async with _stack(foreign, access_flush_interval=60) as tiered:
        for bot_id in ("a", "b", "c"):
            await tiered.register(bot_id, {})
        registered = foreign.records["a"]["last_accessed_at"]
        foreign.calls.clear()
        for _ in range(50):
            await tiered.get_config("a")
            await tiered.get_config("b")
        assert not foreign.calls
        await tiered.flush_accesses()
        assert foreign.calls == {"get_config": 2}
        assert foreign.records["a"]["last_accessed_at"] > registered
        assert foreign.records["c"]["last_accessed_at"] == foreign.records["c"]["created_at"]


async def test_many_accessed_bots_are_forwarded_in_bounded_chunks() -> None:
    foreign = MinimalForeignBackend()
    async with _stack(foreign, access_flush_interval=60) as tiered:
        ids = [f"bot-{i:03d}" for i in range(150)]
        for bot_id in ids:
            await tiered.register(bot_id, {})
        foreign.calls.clear()
        for bot_id in ids:
            await tiered.get_config(bot_id)
        await tiered.flush_accesses()
        assert foreign.calls == {"get_config": 150}


async def test_accesses_are_forwarded_on_the_flush_interval() -> None:
    foreign = FullForeignBackend()
    async with _stack(foreign, access_flush_interval=0.05) as tiered:
        await tiered.register("bot", {})
        foreign.calls.clear()
        for _ in range(1000):  # hot-path hits do not yield to the loop: all in one interval
            await tiered.get_config("bot")
        for _ in range(100):
            if foreign.calls["record_accesses"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)  # a few more intervals: nothing new to forward
        assert foreign.calls == {"record_accesses": 1}
        assert foreign.accessed_batches == [["bot"]]


# ---- writes, metadata, errors -------------------------------------------------------------------


async def test_a_store_without_metadata_refuses_it_and_nothing_changes() -> None:
    foreign = MinimalForeignBackend()
    async with _stack(foreign) as tiered:
        await tiered.register("bot", {"v": 1})
        with pytest.raises(
            ConfigurationError, match=r"metadata: .*MinimalForeignBackend cannot keep metadata"
        ):
            await tiered.register("bot", {"v": 2}, metadata={"tenant": "acme"})
        assert await tiered.get_config("bot") == {"v": 1}
        assert foreign.records["bot"]["config"] == {"v": 1}
        record = await tiered.register("bot", {"v": 3}, metadata={})  # nothing to keep: fine
        assert record.metadata == {}
        assert await tiered.get_config("bot") == {"v": 3}


async def test_metadata_is_passed_only_when_given() -> None:
    foreign = FullForeignBackend()
    async with _stack(foreign) as tiered:
        await tiered.register("bot", {"v": 1}, metadata={"tenant": "acme"})
        record = await tiered.register("bot", {"v": 2})  # None: the store keeps what it has
        assert record.metadata == {"tenant": "acme"}
        assert foreign.records["bot"].metadata == {"tenant": "acme"}


class Boom(Exception):
    """Their own error."""


class FailingForeignBackend(FullForeignBackend):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def peek(self, bot_id: str) -> ForeignRecord | None:
        if self.fail:
            raise Boom("peek")
        return await super().peek(bot_id)

    async def register(
        self, bot_id: str, config: Any, status: str = "active", **kwargs: Any
    ) -> ForeignRecord:
        if self.fail:
            raise Boom("register")
        return await super().register(bot_id, config, status, **kwargs)


async def test_its_errors_pass_through_unchanged_and_change_no_tier() -> None:
    foreign = FailingForeignBackend()
    async with _stack(foreign) as tiered:
        await tiered.register("bot", {"v": 1})
        foreign.fail = True
        with pytest.raises(Boom, match="peek"):
            await tiered.get_config("other")  # a miss reaches the store
        with pytest.raises(Boom, match="register"):
            await tiered.register("bot", {"v": 2})
        assert await tiered.get_config("bot") == {"v": 1}  # the tier kept the committed value
        foreign.fail = False
        assert await tiered.get_config("other") is None
        assert tiered.stats()["store"]["errors"] == 1


# ---- lists: passed through when it takes filters, done here otherwise ------------------------


async def _populate(tiered: TieredBackend, *, metadata: bool) -> None:
    for i, (bot_id, status) in enumerate(
        [("a", "active"), ("b", "inactive"), ("c", "active"), ("d", "error")]
    ):
        await tiered.register(bot_id, {"i": i}, status, metadata={"rank": 4 - i} if metadata else None)


async def test_filters_sort_and_paging_are_passed_through_when_it_takes_them() -> None:
    foreign = FullForeignBackend()
    async with _stack(foreign) as tiered:
        await _populate(tiered, metadata=True)
        got = await tiered.list_all(
            filter_metadata={"rank": 4}, sort=[("metadata.rank", "desc")], limit=2, offset=0
        )
        assert [r.bot_id for r in got] == ["a"]
        (kwargs,) = foreign.list_kwargs
        assert kwargs["filter_metadata"] == {"rank": 4}
        assert type(kwargs["filter_metadata"]) is dict  # a plain dict, not our read-only one
        assert kwargs["sort"] == [SortSpec("metadata.rank", "desc")]
        assert (kwargs["status"], kwargs["limit"], kwargs["offset"]) == (None, 2, None)
        foreign.calls.clear()
        assert [r.bot_id async for r in tiered.stream(status="active")] == ["a", "c"]
        assert await tiered.count_inactive() == 1
        assert foreign.calls == {"stream": 1, "count_all": 1}


async def test_without_keyword_filters_lists_are_filtered_sorted_and_paged_here() -> None:
    foreign = MinimalForeignBackend()
    async with _stack(foreign) as tiered:
        await _populate(tiered, metadata=False)
        foreign.calls.clear()
        got = await tiered.list_all(sort=[SortSpec("bot_id", "desc")], limit=2, offset=1)
        assert [r.bot_id for r in got] == ["c", "b"]
        assert [r.bot_id for r in await tiered.list_inactive()] == ["b"]
        assert [r.bot_id for r in await tiered.list_active()] == ["a", "c"]
        assert [r.bot_id async for r in tiered.stream(status="error")] == ["d"]
        assert (await tiered.count(), await tiered.count_all(), await tiered.count_inactive()) == (2, 4, 1)
        assert await tiered.list_all(filter_metadata={"rank": 1}) == []
        assert foreign.calls == {"list_all": 6, "list_active": 1, "count": 1}


# ---- records of every shape ----------------------------------------------------------------------


def test_records_of_every_shape_become_frozen_registrations() -> None:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    as_dict = {
        "bot_id": "x",
        "config": {"a": [1]},
        "status": "inactive",
        "created_at": "2024-05-01T12:00:00Z",
    }
    as_object = ForeignRecord("x", {"a": [1]}, "inactive", {"t": 1}, at, at, at)
    as_ours = Registration("x", {"a": [1]}, "inactive", {"t": 1}, at, at, at)  # type: ignore[arg-type]
    for record in (as_dict, as_object, as_ours):
        converted = to_registration(record)
        assert (converted.bot_id, converted.config, converted.status) == ("x", {"a": [1]}, "inactive")
        assert converted.created_at == at
        assert type(converted.config) is FrozenDict
        assert type(converted.metadata) is FrozenDict
        with pytest.raises(TypeError, match="read-only"):
            converted.config["a"].append(2)
    frozen = to_registration(as_ours)
    assert to_registration(frozen) is frozen
    with pytest.raises(InvalidTypeError, match="returned int"):
        to_registration(42)


# ---- lifecycle -------------------------------------------------------------------------------------


async def test_close_closes_it_and_release_leaves_it_open() -> None:
    foreign = MinimalForeignBackend()
    store = ForeignStore(foreign)
    await store.initialize()
    await store.release()  # a stack whose later part failed to start
    assert not store.is_open
    assert not foreign.closed  # it could not be initialized again after close()
    await store.initialize()
    await store.register("bot", {})
    await store.close()
    assert foreign.closed


class FailsOnceToStart(LocalCache):
    def __init__(self) -> None:
        super().__init__(maxsize=10, ttl=30)
        self.failures = 1

    async def initialize(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("not yet")
        await super().initialize()


async def test_a_stack_that_failed_to_start_can_be_started_again() -> None:
    foreign = FullForeignBackend()
    tiered = TieredBackend(tiers=[FailsOnceToStart()], store=foreign)
    with pytest.raises(ConnectionError):
        await tiered.initialize()
    assert not foreign.closed
    async with tiered:
        await tiered.register("bot", {"v": 1})
        assert await tiered.get_config("bot") == {"v": 1}
    assert foreign.closed
