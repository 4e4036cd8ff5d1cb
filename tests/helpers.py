"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
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

    async def flush_accesses(self) -> None:
        await self.inner.flush_accesses()
