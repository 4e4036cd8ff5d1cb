"""``BackendBase``: what every backend shares — lifecycle, argument validation, derived methods.

A concrete backend implements a handful of primitives on already-validated arguments
(``_register``, ``_get``, ``_deactivate``, ``_unregister``, ``_select``, ``_count``, ``_clear``,
...). The public protocol methods here validate their input first (so nothing bad reaches any
storage), check that the backend is open, and derive the extended surface (``list_inactive``,
``count_inactive``, ...) from the primitives.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

from .access import AccessRecorder, AccessView
from .errors import BackendClosedError, BackendNotInitializedError
from .frozen import FrozenDict
from .models import Registration, utcnow
from .query import Query
from .validation import validate_bot_id, validate_config, validate_metadata, validate_status

__all__ = ["BackendBase"]

_NEW: Final = 0
_OPEN: Final = 1
_CLOSED: Final = 2


class BackendBase(abc.ABC):
    """Shared implementation of :class:`~tiered_registry.RegistryBackend`."""

    _state: int = _NEW
    _recorder: AccessRecorder | None = None  # set by backends that write accesses behind

    # ---- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        if self._state == _OPEN:
            return
        lock = self.__dict__.setdefault("_initialize_lock", asyncio.Lock())
        async with lock:  # two tasks initializing at once: the second waits for the first
            if self._state == _OPEN:
                return
            if self._state == _CLOSED:
                raise BackendClosedError(f"{self!r} was closed; create a new backend")
            await self._initialize()
            self._state = _OPEN

    async def close(self) -> None:
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        self._state = _CLOSED
        if was_open:
            await self._close()

    async def release(self) -> None:
        """Close what :meth:`initialize` opened and go back to *not initialized*, so that
        ``initialize()`` may be tried again (unlike :meth:`close`, which is final).

        For a stack whose later part failed to start: it releases the parts it had started, and a
        caller that retries once the server is up gets a working stack, not ``BackendClosedError``.
        """
        if self._state != _OPEN:
            return
        self._state = _CLOSED  # nothing new starts while it closes
        try:
            await self._close()
        finally:
            self._state = _NEW

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    def _check_open(self) -> None:
        if self._state != _OPEN:
            self._raise_not_open()

    def _raise_not_open(self) -> None:
        if self._state == _CLOSED:
            raise BackendClosedError(f"{self!r} is closed")
        raise BackendNotInitializedError(
            f"{self!r} is not initialized; call 'await backend.initialize()' or use 'async with'"
        )

    # ---- writes ----------------------------------------------------------------------------

    async def register(
        self,
        bot_id: str,
        config: Mapping[str, Any],
        status: str = "active",
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        bot_id = validate_bot_id(bot_id)
        frozen_config = validate_config(config)
        status = validate_status(status)
        frozen_metadata = None if metadata is None else validate_metadata(metadata)
        self._check_open()
        return await self._register(bot_id, frozen_config, status, frozen_metadata)

    async def unregister(self, bot_id: str) -> bool:
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._unregister(bot_id)

    async def deactivate(self, bot_id: str) -> bool:
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._deactivate(bot_id)

    async def clear(self) -> None:
        self._check_open()
        await self._clear()

    # ---- point reads -----------------------------------------------------------------------

    async def get(self, bot_id: str) -> Registration | None:
        """The registration, as of this access: its ``last_accessed_at`` is the time of this call."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._get(bot_id, touch=True)

    async def peek(self, bot_id: str) -> Registration | None:
        """Like :meth:`get` but not an access: ``last_accessed_at`` is not advanced. It shows, like
        the lists, this process's earlier accesses that are not written yet."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        view = self._access_view()
        record = await self._get(bot_id, touch=False)
        return record if record is None or view is None else view.show(record)

    async def get_config(self, bot_id: str) -> dict[str, Any] | None:
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._get_config(bot_id, touch=True)

    async def peek_config(self, bot_id: str) -> dict[str, Any] | None:
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._get_config(bot_id, touch=False)

    async def exists(self, bot_id: str) -> bool:
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._exists(bot_id)

    # ---- lists and counts ------------------------------------------------------------------

    async def list_all(
        self,
        *,
        status: str | None = None,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: Any = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Registration]:
        query = Query.build(
            status=status, filter_metadata=filter_metadata, sort=sort, limit=limit, offset=offset
        )
        self._check_open()
        if any(key.field == "last_accessed_at" for key in query.sort):
            # Sorted (and paged) by access time: the store must order by the times shown, so
            # this process's pending accesses are written first (one batch write, if any).
            await self.flush_accesses()
        view = self._access_view()
        records = await self._select(query)
        return records if view is None else view.show_all(records)

    async def list_active(
        self,
        *,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: Any = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Registration]:
        return await self.list_all(
            status="active", filter_metadata=filter_metadata, sort=sort, limit=limit, offset=offset
        )

    async def list_inactive(
        self,
        *,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: Any = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Registration]:
        return await self.list_all(
            status="inactive",
            filter_metadata=filter_metadata,
            sort=sort,
            limit=limit,
            offset=offset,
        )

    async def list_ids(self) -> list[str]:
        self._check_open()
        return await self._list_ids()

    async def count_all(
        self, *, status: str | None = None, filter_metadata: Mapping[str, Any] | None = None
    ) -> int:
        query = Query.build(status=status, filter_metadata=filter_metadata)
        self._check_open()
        return await self._count(query)

    async def count(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        return await self.count_all(status="active", filter_metadata=filter_metadata)

    async def count_inactive(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        return await self.count_all(status="inactive", filter_metadata=filter_metadata)

    def stream(
        self,
        *,
        status: str | None = None,
        filter_metadata: Mapping[str, Any] | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[Registration]:
        query = Query.build(status=status, filter_metadata=filter_metadata)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return self._checked_stream(query, batch_size)

    async def _checked_stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        self._check_open()
        view = self._access_view()
        async for record in self._stream(query, batch_size):
            yield record if view is None else view.show(record)

    # ---- access tracking -------------------------------------------------------------------

    async def flush_accesses(self) -> None:
        """Write pending ``last_accessed_at`` updates now (they are otherwise batched)."""
        self._check_open()
        if self._recorder is not None:
            await self._recorder.flush()

    async def record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        """Set ``last_accessed_at = at`` for the bots that exist (and were accessed earlier).

        One batch write that touches only that field.
        """
        self._check_open()
        if bot_ids:
            await self._record_accesses(bot_ids, at)

    async def record_access_times(self, times: Mapping[str, datetime]) -> None:
        """Set each bot's ``last_accessed_at`` to its time in ``times``, where that moves it forward.

        One batch write that touches only that field; what write-behind access tracking calls.
        """
        self._check_open()
        if times:
            await self._record_access_times(times)

    def _access(self, record: Registration) -> Registration:
        """Note an access of ``record`` now (for a ``get``): returns what the caller is shown, the
        record with ``last_accessed_at`` at that time (the time written later)."""
        recorder = self._recorder
        if recorder is None:
            return record
        now = utcnow()
        recorder.record_at(record.bot_id, now)
        if record.last_accessed_at >= now:  # another process wrote a later time (its clock is ahead)
            return record
        return record.accessed_at(now)

    def _access_view(self) -> AccessView | None:
        """The accesses not yet written that a read starting now must show (see ``access.py``)."""
        recorder = self._recorder
        return None if recorder is None else recorder.view()

    # ---- primitives ------------------------------------------------------------------------

    @abc.abstractmethod
    async def _initialize(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        """Upsert. ``metadata=None`` keeps the stored metadata (``{}`` for a new bot)."""

    @abc.abstractmethod
    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None: ...

    async def _get_config(self, bot_id: str, *, touch: bool) -> dict[str, Any] | None:
        record = await self._get(bot_id, touch=touch)
        return None if record is None else record.config

    async def _exists(self, bot_id: str) -> bool:
        record = await self._get(bot_id, touch=False)
        return record is not None and record.status == "active"

    @abc.abstractmethod
    async def _unregister(self, bot_id: str) -> bool: ...

    @abc.abstractmethod
    async def _deactivate(self, bot_id: str) -> bool: ...

    @abc.abstractmethod
    async def _clear(self) -> None: ...

    @abc.abstractmethod
    async def _select(self, query: Query) -> list[Registration]: ...

    async def _count(self, query: Query) -> int:
        return len(await self._select(query))

    async def _list_ids(self) -> list[str]:
        return [r.bot_id for r in await self._select(Query(status="active"))]

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        for record in await self._select(query):
            yield record

    @abc.abstractmethod
    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None: ...

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        """Each bot its own time. This default makes one ``_record_accesses`` call with the latest
        time of the batch (at least as late as every access in it); our stores write each time."""
        await self._record_accesses(list(times), max(times.values()))
