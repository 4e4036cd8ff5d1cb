"""``InMemoryBackend``: the reference store, and the model the other backends are tested against.

Everything lives in one dict of immutable :class:`Registration` objects. No method awaits while
it reads-and-writes, so concurrent tasks on one event loop can never interleave inside an
operation. Configs are frozen on the way in, so ``get_config`` hands out the stored object itself
without a copy and no caller can change what the next one gets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..access import DEFAULT_ACCESS_FLUSH_INTERVAL, AccessRecorder
from ..base import BackendBase
from ..frozen import FrozenDict
from ..models import Registration, utcnow
from ..query import Query

__all__ = ["InMemoryBackend"]


class InMemoryBackend(BackendBase):
    """A registry in this process's memory (lost when the process ends).

    Accesses are written behind in batches like every store's (``get_config`` notes the bot id: no
    clock, no copy of the record), every ``access_flush_interval`` seconds; what a read returns does
    not lag (``get`` shows the time of that access, later reads overlay the accesses not yet written).
    """

    _recorder: AccessRecorder  # always set: accesses are written behind

    def __init__(
        self, *, access_flush_interval: float = DEFAULT_ACCESS_FLUSH_INTERVAL, track_access: bool = True
    ) -> None:
        """``track_access=False``: ``last_accessed_at`` is never written (reads are unchanged)."""
        self._records: dict[str, Registration] = {}
        self._recorder = AccessRecorder(
            self._record_access_times, interval=access_flush_interval, track=track_access
        )

    def __repr__(self) -> str:
        return f"InMemoryBackend(bots={len(self._records)})"

    async def _initialize(self) -> None:
        self._recorder.start()

    async def _close(self) -> None:
        await self._recorder.stop()
        self._records = {}

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        now = utcnow()
        old = self._records.get(bot_id)
        if old is None:
            record = Registration(bot_id, config, status, metadata or FrozenDict(), now, now, now)
        else:
            record = old.with_changes(
                config=config,
                status=status,
                metadata=old.metadata if metadata is None else metadata,
                updated_at=now,
            )
        self._records[bot_id] = record
        return record

    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None:
        record = self._records.get(bot_id)
        if record is not None and touch:
            return self._access(record)
        return record

    async def _get_config(self, bot_id: str, *, touch: bool) -> FrozenDict | None:
        record = self._records.get(bot_id)
        if record is None:
            return None
        if touch:
            self._recorder.record(bot_id)
        return record.config

    async def _get_many(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, Registration]:
        records = self._records
        found = {bot_id: records[bot_id] for bot_id in bot_ids if bot_id in records}
        if touch:
            return {bot_id: self._access(record) for bot_id, record in found.items()}
        return found

    async def _get_configs(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, dict[str, Any]]:
        records = self._records
        found: dict[str, dict[str, Any]] = {}
        for bot_id in bot_ids:
            record = records.get(bot_id)
            if record is not None:
                found[bot_id] = record.config
                if touch:
                    self._recorder.record(bot_id)
        return found

    async def _unregister(self, bot_id: str) -> bool:
        return self._records.pop(bot_id, None) is not None

    async def _deactivate(self, bot_id: str) -> bool:
        record = self._records.get(bot_id)
        if record is None:
            return False
        self._records[bot_id] = record.with_changes(status="inactive", updated_at=utcnow())
        return True

    async def _clear(self) -> None:
        self._records.clear()

    async def _select(self, query: Query) -> list[Registration]:
        return query.apply(self._records.values())

    async def _count(self, query: Query) -> int:
        return sum(1 for r in self._records.values() if query.matches(r))

    async def _list_ids(self) -> list[str]:
        return sorted(bot_id for bot_id, r in self._records.items() if r.status == "active")

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        ids = sorted(self._records)
        for start in range(0, len(ids), batch_size):
            for bot_id in ids[start : start + batch_size]:
                record = self._records.get(bot_id)  # may have gone while the caller awaited
                if record is not None and query.matches(record):
                    yield record

    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        await self._record_access_times(dict.fromkeys(bot_ids, at))

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        records = self._records
        for bot_id, at in times.items():
            record = records.get(bot_id)
            if record is not None and record.last_accessed_at < at:
                records[bot_id] = record.accessed_at(at)
