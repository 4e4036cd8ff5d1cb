"""Two registry backends "of someone else's": plain classes, no base class of ours, records in a dict.

``MinimalForeignBackend`` has only the 13 core methods of the protocol (no metadata, no peek, no
keyword filters) and returns plain dicts. ``FullForeignBackend`` has the extended surface too
(``metadata=``, ``peek``/``peek_config``, keyword filters, ``stream``, ``record_accesses``) and
returns records of its own class. Both count every call (``calls``), so a test can see which of
their methods a stack used.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tiered_registry.query import Query  # a shortcut for the full one's filters and sorting


def _now() -> datetime:
    return datetime.now(UTC)


class ForeignClosedError(RuntimeError):
    """Their own error for use after close()."""


class _Base:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.opened = False
        self.closed = False

    def _use(self, name: str) -> None:
        self.calls[name] += 1
        if self.closed or not self.opened:
            raise ForeignClosedError(f"{type(self).__name__} is not open")

    async def initialize(self) -> None:
        self.calls["initialize"] += 1
        if self.closed:
            raise ForeignClosedError("closed for good")
        self.opened = True

    async def close(self) -> None:
        self.calls["close"] += 1
        self.closed = True


class MinimalForeignBackend(_Base):
    """Only the original protocol's 13 methods; records are dicts with ISO timestamps."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, dict[str, Any]] = {}

    def _out(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "bot_id": record["bot_id"],
            "config": copy.deepcopy(record["config"]),
            "status": record["status"],
            "created_at": record["created_at"].isoformat(),
            "updated_at": record["updated_at"].isoformat(),
            "last_accessed_at": record["last_accessed_at"].isoformat(),
        }

    async def register(
        self, bot_id: str, config: Mapping[str, Any], status: str = "active"
    ) -> dict[str, Any]:
        self._use("register")
        now = _now()
        old = self.records.get(bot_id)
        record = {
            "bot_id": bot_id,
            "config": copy.deepcopy(dict(config)),
            "status": status,
            "created_at": now if old is None else old["created_at"],
            "updated_at": now,
            "last_accessed_at": now if old is None else old["last_accessed_at"],
        }
        self.records[bot_id] = record
        return self._out(record)

    async def get(self, bot_id: str) -> dict[str, Any] | None:
        self._use("get")
        record = self.records.get(bot_id)
        if record is None:
            return None
        record["last_accessed_at"] = _now()
        return self._out(record)

    async def get_config(self, bot_id: str) -> dict[str, Any] | None:
        self._use("get_config")
        record = self.records.get(bot_id)
        if record is None:
            return None
        record["last_accessed_at"] = _now()
        return copy.deepcopy(record["config"])

    async def exists(self, bot_id: str) -> bool:
        self._use("exists")
        record = self.records.get(bot_id)
        return record is not None and record["status"] == "active"

    async def unregister(self, bot_id: str) -> bool:
        self._use("unregister")
        return self.records.pop(bot_id, None) is not None

    async def deactivate(self, bot_id: str) -> bool:
        self._use("deactivate")
        record = self.records.get(bot_id)
        if record is None:
            return False
        record.update(status="inactive", updated_at=_now())
        return True

    async def list_active(self) -> list[dict[str, Any]]:
        self._use("list_active")
        return [self._out(r) for _, r in sorted(self.records.items()) if r["status"] == "active"]

    async def list_all(self) -> list[dict[str, Any]]:
        self._use("list_all")
        return [self._out(r) for _, r in sorted(self.records.items())]

    async def list_ids(self) -> list[str]:
        self._use("list_ids")
        return sorted(b for b, r in self.records.items() if r["status"] == "active")

    async def count(self) -> int:
        self._use("count")
        return sum(1 for r in self.records.values() if r["status"] == "active")

    async def clear(self) -> None:
        self._use("clear")
        self.records.clear()


@dataclass(frozen=True)
class ForeignRecord:
    """Their record class: the Registration fields, plain dicts."""

    bot_id: str
    config: dict[str, Any]
    status: str = "active"
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    last_accessed_at: datetime = field(default_factory=_now)


class FullForeignBackend(_Base):
    """The extended surface too: metadata, peek, keyword filters, stream, record_accesses."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, ForeignRecord] = {}
        self.list_kwargs: list[dict[str, Any]] = []  # what list_all was called with
        self.accessed_batches: list[list[str]] = []  # what record_accesses was called with

    async def register(
        self,
        bot_id: str,
        config: Mapping[str, Any],
        status: str = "active",
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> ForeignRecord:
        self._use("register")
        now = _now()
        old = self.records.get(bot_id)
        config = copy.deepcopy(dict(config))
        if old is None:
            record = ForeignRecord(bot_id, config, status, copy.deepcopy(dict(metadata or {})), now, now, now)
        else:
            kept = old.metadata if metadata is None else copy.deepcopy(dict(metadata))
            record = replace(old, config=config, status=status, metadata=kept, updated_at=now)
        self.records[bot_id] = record
        return copy.deepcopy(record)

    def _read(self, bot_id: str, *, touch: bool) -> ForeignRecord | None:
        record = self.records.get(bot_id)
        if record is None:
            return None
        if touch:
            record = self.records[bot_id] = replace(record, last_accessed_at=_now())
        return copy.deepcopy(record)

    async def get(self, bot_id: str) -> ForeignRecord | None:
        self._use("get")
        return self._read(bot_id, touch=True)

    async def peek(self, bot_id: str) -> ForeignRecord | None:
        self._use("peek")
        return self._read(bot_id, touch=False)

    async def get_config(self, bot_id: str) -> dict[str, Any] | None:
        self._use("get_config")
        record = self._read(bot_id, touch=True)
        return None if record is None else record.config

    async def peek_config(self, bot_id: str) -> dict[str, Any] | None:
        self._use("peek_config")
        record = self._read(bot_id, touch=False)
        return None if record is None else record.config

    async def exists(self, bot_id: str) -> bool:
        self._use("exists")
        record = self.records.get(bot_id)
        return record is not None and record.status == "active"

    async def unregister(self, bot_id: str) -> bool:
        self._use("unregister")
        return self.records.pop(bot_id, None) is not None

    async def deactivate(self, bot_id: str) -> bool:
        self._use("deactivate")
        record = self.records.get(bot_id)
        if record is None:
            return False
        self.records[bot_id] = replace(record, status="inactive", updated_at=_now())
        return True

    def _query(self, **kwargs: Any) -> list[ForeignRecord]:
        query = Query.build(**kwargs)
        mine = {r.bot_id: r for r in query.apply(_as_ours(r) for r in self.records.values())}
        return [copy.deepcopy(self.records[bot_id]) for bot_id in mine]

    async def list_all(
        self,
        *,
        status: str | None = None,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: Any = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[ForeignRecord]:
        self._use("list_all")
        kwargs = {
            "status": status,
            "filter_metadata": filter_metadata,
            "sort": sort,
            "limit": limit,
            "offset": offset,
        }
        self.list_kwargs.append(kwargs)
        return self._query(**kwargs)

    async def list_active(self, **kwargs: Any) -> list[ForeignRecord]:
        return await self.list_all(status="active", **kwargs)

    async def list_inactive(self, **kwargs: Any) -> list[ForeignRecord]:
        return await self.list_all(status="inactive", **kwargs)

    async def list_ids(self) -> list[str]:
        self._use("list_ids")
        return sorted(b for b, r in self.records.items() if r.status == "active")

    async def count_all(
        self, *, status: str | None = None, filter_metadata: Mapping[str, Any] | None = None
    ) -> int:
        self._use("count_all")
        return len(self._query(status=status, filter_metadata=filter_metadata))

    async def count(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        return await self.count_all(status="active", filter_metadata=filter_metadata)

    async def count_inactive(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        return await self.count_all(status="inactive", filter_metadata=filter_metadata)

    async def stream(
        self, *, status: str | None = None, filter_metadata: Mapping[str, Any] | None = None
    ) -> AsyncIterator[ForeignRecord]:
        self._use("stream")
        for record in self._query(status=status, filter_metadata=filter_metadata):
            yield record

    async def record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        self._use("record_accesses")
        self.accessed_batches.append(list(bot_ids))
        for bot_id in bot_ids:
            record = self.records.get(bot_id)
            if record is not None and record.last_accessed_at < at:
                self.records[bot_id] = replace(record, last_accessed_at=at)

    async def clear(self) -> None:
        self._use("clear")
        self.records.clear()


def _as_ours(record: ForeignRecord) -> Any:
    from tiered_registry import Registration

    return Registration.from_dict(
        {
            "bot_id": record.bot_id,
            "config": record.config,
            "status": record.status,
            "metadata": record.metadata,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "last_accessed_at": record.last_accessed_at,
        }
    )
