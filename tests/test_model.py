"""Model-based test: random operation sequences against a real stack and ``InMemoryBackend`` agree.

A Hypothesis ``RuleBasedStateMachine`` drives every operation of the protocol (``register`` with
random small configs, statuses and metadata, the point reads, ``deactivate``, ``unregister``,
``clear``, ``list_*`` with filters/sort/paging, ``list_ids``, the counts and ``stream``) through a
stack under test and through ``InMemoryBackend`` (the model), and checks after every step that
both answer the same: ``bot_id``, ``config``, ``status`` and ``metadata`` exactly (JSON equality:
``True`` is not ``1``, ``1`` is ``1.0``), list order included.

Timestamps are not compared with the model's (they come from other clock readings); instead the
machine tracks what the stack itself must return: ``created_at`` is the one the first
``register`` returned and survives re-registration, ``updated_at`` lies between clock readings
taken around the last write of that bot (exact once seen), and ``last_accessed_at`` (written
behind, so nondeterministic) only has to be timezone-aware and not before ``created_at``. Sorting
by ``created_at``/``updated_at`` is compared with the model's order (both follow the order of the
writes); sorting by ``last_accessed_at`` is left out for the same write-behind reason.

Every stack that has Redis is opened twice on the same namespace/table: instance B is another
process's view, and each operation goes through A or B at random. Without a local tier both must
agree with the model at once. With a local tier a write through one instance reaches the other
instance's local tier asynchronously (Redis pub/sub, about a millisecond): a point read of a bot
that another instance wrote since this instance last settled it first polls (``peek``, at most
``SETTLE_TIMEOUT`` seconds) until the record matches the model, then is compared strictly. Lists
and counts always go to the store, so they must agree at once in every stack.

``local+postgres`` runs with one instance only: it has no Redis, so no invalidation channel, and a
second instance's writes reach A's local tier only when A's entry expires (TTL, 30 s) — serving a
stale value until then is the documented behaviour of that stack, not something to converge on.

Scale with ``TR_MODEL_EXAMPLES`` / ``TR_MODEL_STEPS`` (defaults keep the file well under a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tiered_registry import InMemoryBackend, LocalCache, Registration, RegistryBackend, TieredBackend
from tiered_registry.base import BackendBase
from tiered_registry.frozen import thaw
from tiered_registry.models import utcnow
from tiered_registry.query import SortSpec
from tiered_registry.redis_client import make_client
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.stores.redis import RedisBackend
from tiered_registry.tiers.redis import RedisCache

EXAMPLES = int(os.environ.get("TR_MODEL_EXAMPLES", "10"))
STEPS = int(os.environ.get("TR_MODEL_STEPS", "30"))
SETTLE_TIMEOUT = 2.0  # seconds a local tier may take to see another instance's write
FLUSH = 0.05  # access_flush_interval: background access writes run often, between the operations

# ---- the stacks ----------------------------------------------------------------------------------

Build = Callable[[str, str, str], BackendBase]  # (redis_url, database_url, namespace) -> backend


def _pg(database_url: str, ns: str, *, pgbouncer: bool = False) -> PostgresBackend:
    return PostgresBackend(
        database_url, table=ns, access_flush_interval=FLUSH, min_size=0, max_size=2, pgbouncer=pgbouncer
    )


def _rs(redis_url: str, ns: str) -> RedisBackend:
    return RedisBackend(redis_url, namespace=ns, access_flush_interval=FLUSH)


def _rc(redis_url: str, ns: str) -> RedisCache:
    return RedisCache(redis_url, ttl=60, namespace=ns)


@dataclass(frozen=True)
class Stack:
    build: Build
    instances: int  # 2: a second instance on the same namespace (another process's view)
    local: bool  # has a local tier: other instances' writes arrive asynchronously


STACKS: dict[str, Stack] = {
    "redis": Stack(lambda r, d, ns: _rs(r, ns), instances=2, local=False),
    "postgres": Stack(lambda r, d, ns: _pg(d, ns), instances=2, local=False),
    "local+postgres": Stack(
        lambda r, d, ns: TieredBackend(
            tiers=[LocalCache(ttl=30)], store=_pg(d, ns), access_flush_interval=FLUSH
        ),
        instances=1,  # no Redis, no invalidation channel: see the module docstring
        local=True,
    ),
    "redis-cache+postgres": Stack(
        lambda r, d, ns: TieredBackend(tiers=[_rc(r, ns)], store=_pg(d, ns), access_flush_interval=FLUSH),
        instances=2,
        local=False,
    ),
    "local+redis-cache+postgres": Stack(
        lambda r, d, ns: TieredBackend(
            tiers=[LocalCache(ttl=30), _rc(r, ns)], store=_pg(d, ns), access_flush_interval=FLUSH
        ),
        instances=2,
        local=True,
    ),
    "local+redis": Stack(
        lambda r, d, ns: TieredBackend(
            tiers=[LocalCache(ttl=30)], store=_rs(r, ns), access_flush_interval=FLUSH
        ),
        instances=2,
        local=True,
    ),
}

# ---- strategies: small alphabets, so that operations collide -------------------------------------

IDS = ("a", "Z", "a:b", "*", "{é}")  # "Z" < "a" < "{é}" in code-point order; ":", "*", "{" in keys
STATUSES = ("active", "inactive", "error")
META_KEYS = ("k", "n", "t")
# Values that are equal, nearly equal or differently typed: 1 == 1.0, True != 1, [1] != [1, 2] ...
META_VALUES = (None, "", "x", "X", "é", 0, 1, 1.0, 2.5, -1, True, False, [], [1], [1.0, "x"], {}, {"a": 1})
META_VALUES += ({"a": 1, "b": 2},)

ids = st.sampled_from(IDS)
via = st.sampled_from((0, 1))  # which instance (always A when the stack has only one)
statuses = st.sampled_from(STATUSES)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from((0.5, -1.25, 1.0, 1e-7, 1e300, 2**63 - 1, -(2**63))),
    st.text(alphabet='aZé😀 :*{}"\\\n\t', max_size=4),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="ab:é", max_size=2), inner, max_size=3)
    ),
    max_leaves=4,
)
configs = st.dictionaries(st.sampled_from(("v", "name", "nested", "")), json_values, max_size=3)
metadatas = st.none() | st.dictionaries(st.sampled_from(META_KEYS), st.sampled_from(META_VALUES), max_size=3)
filters = st.none() | st.dictionaries(
    st.sampled_from(META_KEYS[:2]), st.sampled_from(META_VALUES), max_size=2
)
SORT_FIELDS = ("bot_id", "status", "created_at", "updated_at", "metadata.k", "metadata.n")
orders = st.sampled_from(("asc", "desc"))
sort_items = st.one_of(
    st.builds(SortSpec, st.sampled_from(SORT_FIELDS), orders),
    st.tuples(st.sampled_from(SORT_FIELDS), orders),
    st.sampled_from(SORT_FIELDS),
)
# One key on its own (a SortSpec or a str; a bare tuple would be read as a list of keys), or a list.
sorts = (
    st.none() | sort_items.filter(lambda item: not isinstance(item, tuple)) | st.lists(sort_items, max_size=2)
)
pages = st.none() | st.integers(0, 4)
QUERIES = (
    "list_all",
    "list_active",
    "list_inactive",
    "list_ids",
    "count",
    "count_all",
    "count_inactive",
    "stream",
)
# The invariant's full list_all() walks through these orders (every field, both directions).
INVARIANT_SORTS = [None] + [
    [SortSpec(field, order), SortSpec(second, "desc")]
    for field, second in zip(SORT_FIELDS, SORT_FIELDS[::-1], strict=True)
    for order in ("asc", "desc")
]


# ---- comparison ----------------------------------------------------------------------------------


def canon(value: Any) -> Any:
    """A JSON value as something ``==`` compares the JSON way: ``1 == 1.0`` but ``True != 1``."""
    if value is None or isinstance(value, bool | str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted(((k, canon(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    raise AssertionError(f"not a JSON value: {value!r} ({type(value).__name__})")


def summary(record: Registration | None) -> Any:
    if record is None:
        return None
    return (record.bot_id, record.status, canon(thaw(record.config)), canon(thaw(record.metadata)))


def shown(record: Registration | None) -> Any:
    if record is None:
        return None
    return (record.bot_id, record.status, thaw(record.config), thaw(record.metadata))


# ---- the machine ---------------------------------------------------------------------------------


class RegistryMachine(RuleBasedStateMachine):
    """A stack (instances A and maybe B) and the model, driven by the same operations."""

    stack: Stack
    redis_url: str
    database_url: str

    def __init__(self) -> None:
        super().__init__()
        self.namespace = f"t_model_{os.urandom(6).hex()}"
        self.loop = asyncio.new_event_loop()
        self.model = InMemoryBackend()
        self.instances: list[BackendBase] = []
        # What the stack must return for each bot: created_at exactly, updated_at in [lo, hi].
        self.created: dict[str, datetime] = {}
        self.updated: dict[str, tuple[datetime, datetime]] = {}
        # Per instance: bots another instance wrote since this one last saw them (local tiers only).
        self.unsettled: list[set[str]] = []
        self.settle_waits: list[float] = []
        self.checks = 0  # invariant checks so far
        try:
            self.run(self.model.initialize())
            for _ in range(self.stack.instances):
                backend = self.stack.build(self.redis_url, self.database_url, self.namespace)
                self.instances.append(backend)
                self.run(backend.initialize())
                assert isinstance(backend, RegistryBackend)
                self.unsettled.append(set())
        except BaseException:
            self.teardown()
            raise

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def pick(self, index: int) -> tuple[int, BackendBase]:
        index %= len(self.instances)
        return index, self.instances[index]

    # ---- bookkeeping -------------------------------------------------------------------------

    def wrote(self, writer: int, bot_id: str | None) -> None:
        """``writer`` changed ``bot_id`` (None: everything): the others' local tiers learn it later."""
        if not self.stack.local:
            return
        for index, pending in enumerate(self.unsettled):
            if index == writer:  # the writer updated or dropped its own local copy itself
                if bot_id is None:
                    pending.clear()
                else:
                    pending.discard(bot_id)
            else:
                pending.update(IDS if bot_id is None else (bot_id,))

    def expected(self, bot_id: str) -> Registration | None:
        return self.model._records.get(bot_id)

    def timestamps_ok(self, record: Registration) -> str | None:
        """Why ``record``'s timestamps are not what the stack must return, or None if they are."""
        for name in ("created_at", "updated_at", "last_accessed_at"):
            moment = getattr(record, name)
            if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
                return f"{name} {moment!r} is not timezone-aware UTC"
        if record.created_at != self.created[record.bot_id]:
            return f"created_at {record.created_at} != {self.created[record.bot_id]} (first register)"
        lo, hi = self.updated[record.bot_id]
        if not lo <= record.updated_at <= hi:
            return f"updated_at {record.updated_at} not within the write's [{lo}, {hi}]"
        if record.last_accessed_at < record.created_at:
            return f"last_accessed_at {record.last_accessed_at} before created_at {record.created_at}"
        return None

    def check_record(self, got: Registration | None, want: Registration | None, what: str) -> None:
        assert summary(got) == summary(want), f"{what}: stack {shown(got)} != model {shown(want)}"
        if got is not None:
            problem = self.timestamps_ok(got)
            assert problem is None, f"{what}: {problem}"
            self.updated[got.bot_id] = (got.updated_at, got.updated_at)  # seen: exact from now on

    def check_records(self, got: list[Registration], want: list[Registration], what: str) -> None:
        assert [summary(r) for r in got] == [summary(r) for r in want], (
            f"{what}:\n stack {[shown(r) for r in got]}\n model {[shown(r) for r in want]}"
        )
        for record in got:
            self.check_record(record, self.expected(record.bot_id), what)

    async def settle(self, index: int, backend: BackendBase, bot_id: str) -> None:
        """Wait until ``backend`` sees another instance's last write of ``bot_id`` (local tiers)."""
        if bot_id not in self.unsettled[index]:
            return
        want = self.expected(bot_id)
        start = time.monotonic()
        while True:
            got = await backend.peek(bot_id)  # type: ignore[attr-defined]
            if summary(got) == summary(want) and (got is None or self.timestamps_ok(got) is None):
                break
            if time.monotonic() - start > SETTLE_TIMEOUT:
                pytest.fail(
                    f"instance {index} still serves {shown(got)} for {bot_id!r} {SETTLE_TIMEOUT}s after "
                    f"another instance wrote {shown(want)}"
                )
            await asyncio.sleep(0.001)
        self.settle_waits.append(time.monotonic() - start)
        self.unsettled[index].discard(bot_id)

    # ---- writes ------------------------------------------------------------------------------

    @initialize(
        bots=st.lists(st.tuples(via, ids, configs, statuses, metadatas), max_size=len(IDS) + 2),
    )
    def populate(self, bots: list[tuple[int, str, dict[str, Any], str, dict[str, Any] | None]]) -> None:
        """Start from a few registrations (so that lists, filters and paging have something to do)."""
        for via_, bot_id, config, status, metadata in bots:
            self.register(via_, bot_id, config, status, metadata)

    @rule(via=via, bot_id=ids, config=configs, status=statuses, metadata=metadatas)
    def register(
        self, via: int, bot_id: str, config: dict[str, Any], status: str, metadata: dict[str, Any] | None
    ) -> None:
        index, backend = self.pick(via)
        existed = bot_id in self.model._records
        before = utcnow()
        got = self.run(backend.register(bot_id, config, status, metadata=metadata))
        after = utcnow()
        want = self.run(self.model.register(bot_id, config, status, metadata=metadata))
        assert summary(got) == summary(want), f"register: stack {shown(got)} != model {shown(want)}"
        if existed:
            assert got.created_at == self.created[bot_id], "re-register must keep created_at"
        else:
            assert before <= got.created_at <= after
            self.created[bot_id] = got.created_at
        assert before <= got.updated_at <= after
        self.updated[bot_id] = (got.updated_at, got.updated_at)
        assert self.timestamps_ok(got) is None, self.timestamps_ok(got)
        self.wrote(index, bot_id)

    @rule(via=via, bot_id=ids)
    def deactivate(self, via: int, bot_id: str) -> None:
        index, backend = self.pick(via)
        before = utcnow()
        got = self.run(backend.deactivate(bot_id))
        after = utcnow()
        assert got == self.run(self.model.deactivate(bot_id)), f"deactivate({bot_id!r}) returned {got}"
        if got:
            self.updated[bot_id] = (before, after)
        self.wrote(index, bot_id)

    @rule(via=via, bot_id=ids)
    def unregister(self, via: int, bot_id: str) -> None:
        index, backend = self.pick(via)
        got = self.run(backend.unregister(bot_id))
        assert got == self.run(self.model.unregister(bot_id)), f"unregister({bot_id!r}) returned {got}"
        self.created.pop(bot_id, None)
        self.updated.pop(bot_id, None)
        self.wrote(index, bot_id)

    @rule(via=via, bots=st.lists(st.tuples(via, ids, configs, statuses, metadatas), max_size=len(IDS)))
    def clear(
        self, via: int, bots: list[tuple[int, str, dict[str, Any], str, dict[str, Any] | None]]
    ) -> None:
        """``clear()``, then start over from a few registrations (maybe none)."""
        index, backend = self.pick(via)
        self.run(backend.clear())
        self.run(self.model.clear())
        self.created.clear()
        self.updated.clear()
        self.wrote(index, None)
        self.populate(bots)

    # ---- point reads -------------------------------------------------------------------------

    @rule(via=via, bot_id=ids, operation=st.sampled_from(("get", "get_config", "peek_config", "exists")))
    def read(self, via: int, bot_id: str, operation: str) -> None:
        index, backend = self.pick(via)
        self.run(self.settle(index, backend, bot_id))
        want = self.expected(bot_id)
        got = self.run(getattr(backend, operation)(bot_id))
        what = f"instance {index}: {operation}({bot_id!r})"
        if operation == "get":
            self.check_record(got, want, what)
        elif operation == "exists":
            assert got is (want is not None and want.status == "active"), f"{what} = {got!r}"
        else:
            expected = None if want is None else canon(thaw(want.config))
            actual = None if got is None else canon(thaw(got))
            assert actual == expected, (
                f"{what}: stack {got!r} != model {None if want is None else want.config}"
            )

    # ---- lists, counts, stream (always answered by the store) --------------------------------

    def compare_list(self, via: int, method: str, **kwargs: Any) -> None:
        index, backend = self.pick(via)
        got = self.run(getattr(backend, method)(**kwargs))
        want = self.run(getattr(self.model, method)(**kwargs))
        self.check_records(got, want, f"instance {index}: {method}({kwargs})")

    # One rule for every list/count method (drawn inside), so that writes and point reads -- where
    # the caches can go wrong -- get most of the steps; the invariant lists after every step anyway.
    @rule(
        via=via,
        method=st.sampled_from(QUERIES),
        status=st.none() | statuses,
        filter_metadata=filters,
        sort=sorts,
        limit=pages,
        offset=pages,
        batch_size=st.integers(1, 3),
    )
    def query(
        self,
        via: int,
        method: str,
        status: str | None,
        filter_metadata: Any,
        sort: Any,
        limit: Any,
        offset: Any,
        batch_size: int,
    ) -> None:
        index, backend = self.pick(via)
        if method in ("list_all", "list_active", "list_inactive"):
            kwargs: dict[str, Any] = {
                "filter_metadata": filter_metadata,
                "sort": sort,
                "limit": limit,
                "offset": offset,
            }
            if method == "list_all":
                kwargs["status"] = status
            self.compare_list(via, method, **kwargs)
        elif method == "list_ids":
            got = self.run(backend.list_ids())
            want = self.run(self.model.list_ids())
            assert got == want, f"instance {index}: list_ids() = {got} != model {want}"
        elif method == "stream":

            async def collect(source: BackendBase) -> list[Registration]:
                return [
                    r
                    async for r in source.stream(
                        status=status, filter_metadata=filter_metadata, batch_size=batch_size
                    )
                ]

            self.check_records(
                self.run(collect(backend)),
                self.run(collect(self.model)),
                f"instance {index}: stream({status=}, {filter_metadata=}, {batch_size=})",
            )
        else:
            kwargs = {"filter_metadata": filter_metadata}
            if method == "count_all":
                kwargs["status"] = status
            got = self.run(getattr(backend, method)(**kwargs))
            want = self.run(getattr(self.model, method)(**kwargs))
            assert got == want, f"instance {index}: {method}({kwargs}) = {got} != model {want}"

    @invariant()
    def same_registrations(self) -> None:
        """After every step the store holds what the model holds, in one of the sort orders (taken
        in turn, through each instance in turn); lists never come from a cache tier."""
        if not self.instances:  # not (or no longer) set up
            return
        self.checks += 1
        sort = INVARIANT_SORTS[self.checks % len(INVARIANT_SORTS)]
        self.compare_list(self.checks, "list_all", sort=sort)  # 13 sorts x 2 instances: all pairs

    # ---- cleanup -----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self.run(self.cleanup())
        finally:
            with contextlib.suppress(Exception):
                self.run(self.loop.shutdown_asyncgens())
                self.run(self.loop.shutdown_default_executor())
            self.loop.close()

    async def cleanup(self) -> None:
        """Close the other instances, remove what the run left through A, close A and the model."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.model.close)
            if not self.instances:
                return
            keeper = self.instances[0]
            stack.push_async_callback(keeper.close)
            for extra in self.instances[1:]:
                await extra.close()
            if not keeper.is_open:
                return
            await keeper.flush_accesses()  # before the table goes: nothing left to write on close
            await keeper.clear()
            store = keeper.store if isinstance(keeper, TieredBackend) else keeper
            if isinstance(store, PostgresBackend):
                await store.drop()
            await self.sweep_redis()

    async def sweep_redis(self) -> None:
        """After ``clear()`` only the cache tier's clear epoch and version sequence may remain
        (both must outlive any write in flight); delete them too."""
        uses_redis = any(
            isinstance(part, RedisBackend | RedisCache)
            for backend in self.instances[:1]
            for part in ([*backend.tiers, backend.store] if isinstance(backend, TieredBackend) else [backend])
        )
        if not uses_redis:
            return
        client, _ = make_client(self.redis_url)  # a cluster URL too: its scan walks every master
        try:
            keys: list[bytes] = []
            for pattern in (f"{{{self.namespace}}}*", f"{{{self.namespace}:*"):  # one slot; cluster groups
                keys += [key async for key in client.scan_iter(match=pattern, count=1000)]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()
        left = {key.decode() for key in keys if not key.endswith((b"}:epoch", b"}:seq"))}
        assert not left, f"clear() left keys of the namespace behind: {sorted(left)}"


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repository
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("stack_name", list(STACKS))
def test_stack_agrees_with_the_in_memory_model(stack_name: str, redis_url: str, database_url: str) -> None:
    machine = type(
        f"RegistryMachine_{stack_name}",
        (RegistryMachine,),
        {"stack": STACKS[stack_name], "redis_url": redis_url, "database_url": database_url},
    )
    run_state_machine_as_test(machine, settings=SETTINGS)


# The full stack with its store behind PgBouncer in transaction pool mode (PGBOUNCER_URL; skipped,
# saying so, without one): the machine's database_url is then the PgBouncer's.
PGBOUNCER_STACK = Stack(
    lambda r, d, ns: TieredBackend(
        tiers=[LocalCache(ttl=30), _rc(r, ns)], store=_pg(d, ns, pgbouncer=True), access_flush_interval=FLUSH
    ),
    instances=2,
    local=True,
)


def test_a_stack_through_pgbouncer_agrees_with_the_in_memory_model(
    redis_url: str, pgbouncer_url: str
) -> None:
    machine = type(
        "RegistryMachine_pgbouncer",
        (RegistryMachine,),
        {"stack": PGBOUNCER_STACK, "redis_url": redis_url, "database_url": pgbouncer_url},
    )
    run_state_machine_as_test(machine, settings=SETTINGS)


# Stacks on Redis Cluster (REDIS_CLUSTER_URL; skipped, saying so, without one): the machine's
# redis_url is then the cluster's. The Redis store keeps a namespace in one slot; the cache tier
# spreads it over every master, so lists, counts and clear() cross all of them.
CLUSTER_STACKS: dict[str, Stack] = {
    "redis-cluster": STACKS["redis"],
    "local+redis-cluster-cache+postgres": STACKS["local+redis-cache+postgres"],
}


@pytest.mark.parametrize("stack_name", list(CLUSTER_STACKS))
def test_a_stack_on_redis_cluster_agrees_with_the_in_memory_model(
    stack_name: str, redis_cluster_url: str, database_url: str
) -> None:
    machine = type(
        f"RegistryMachine_{stack_name.replace('+', '_').replace('-', '_')}",
        (RegistryMachine,),
        {"stack": CLUSTER_STACKS[stack_name], "redis_url": redis_cluster_url, "database_url": database_url},
    )
    run_state_machine_as_test(machine, settings=SETTINGS)
