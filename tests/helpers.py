"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime

from tiered_registry import BackendBase, Registration
from tiered_registry.frozen import FrozenDict
from tiered_registry.query import Query


class CountingStore(BackendBase):
    """Wraps a real store: counts point reads and can hold them at a gate (to stage races).

    While ``gate`` is cleared, every point read reads the inner store, notes ``read_started``
    and then waits at the gate before returning what it read: a test can write in between, so the
    read returns the value from before the write (as a slow read would).
    """

    def __init__(self, inner: BackendBase) -> None:
        self.inner = inner
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.read_started = asyncio.Event()

    def __repr__(self) -> str:
        return f"CountingStore({self.inner!r})"

    async def _initialize(self) -> None:
        await self.inner.initialize()

    async def _close(self) -> None:
        await self.inner.close()

    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None:
        self.reads += 1
        old = await self.inner._get(bot_id, touch=touch)
        self.read_started.set()
        await self.gate.wait()
        return old

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        return await self.inner._register(bot_id, config, status, metadata)

    async def _unregister(self, bot_id: str) -> bool:
        return await self.inner._unregister(bot_id)

    async def _deactivate(self, bot_id: str) -> bool:
        return await self.inner._deactivate(bot_id)

    async def _clear(self) -> None:
        await self.inner._clear()

    async def _select(self, query: Query) -> list[Registration]:
        return await self.inner._select(query)

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        async for record in self.inner._stream(query, batch_size):
            yield record

    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        await self.inner._record_accesses(bot_ids, at)

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        await self.inner._record_access_times(times)

    async def flush_accesses(self) -> None:
        await self.inner.flush_accesses()


class Hold:
    """One armed pause of :class:`PausingStore`: ``reached`` is set once the write has committed
    in the inner store; the write then waits until ``gate`` is set."""

    def __init__(self, op: str | None) -> None:
        self.op = op
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()


class PausingStore(CountingStore):
    """A :class:`CountingStore` that also stages races after a write has committed.

    After the inner store's write returns (committed), ``committed`` is set and ``commits`` counted;
    if a :class:`Hold` is armed (``hold_next``; ``op`` one of ``register``/``unregister``/
    ``deactivate``/``clear``, or None for any), the first write it matches sets ``hold.reached``
    and waits at ``hold.gate`` before returning: the caller has committed but not yet touched a tier.
    """

    def __init__(self, inner: BackendBase) -> None:
        super().__init__(inner)
        self.committed = asyncio.Event()
        self.commits = 0
        self._holds: list[Hold] = []

    def __repr__(self) -> str:
        return f"PausingStore({self.inner!r})"

    def hold_next(self, op: str | None = None) -> Hold:
        hold = Hold(op)
        self._holds.append(hold)
        return hold

    async def _after_commit(self, op: str) -> None:
        self.commits += 1
        self.committed.set()
        for hold in self._holds:
            if hold.op is None or hold.op == op:
                self._holds.remove(hold)
                hold.reached.set()
                await hold.gate.wait()
                return

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        record = await self.inner._register(bot_id, config, status, metadata)
        await self._after_commit("register")
        return record

    async def _unregister(self, bot_id: str) -> bool:
        existed = await self.inner._unregister(bot_id)
        await self._after_commit("unregister")
        return existed

    async def _deactivate(self, bot_id: str) -> bool:
        existed = await self.inner._deactivate(bot_id)
        await self._after_commit("deactivate")
        return existed

    async def _clear(self) -> None:
        await self.inner._clear()
        await self._after_commit("clear")
