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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

from .access import AccessRecorder, AccessView
from .bulk import DEFAULT_LOAD_CHUNK, JsonItem, RegisterItem
from .bulk import load as bulk_load
from .errors import BackendClosedError, BackendNotInitializedError, InvalidInputError, InvalidTypeError
from .frozen import FrozenDict
from .models import Registration, utcnow
from .query import Query, SortArg
from .validation import (
    MAX_METADATA_BYTES,
    validate_bot_id,
    validate_config,
    validate_json,
    validate_metadata,
    validate_status,
)

__all__ = ["BackendBase", "RegisterItem"]

_NEW: Final = 0
_OPEN: Final = 1
_CLOSED: Final = 2


class BackendBase(abc.ABC):
    """Shared implementation of :class:`~tiered_registry.RegistryBackend`."""

    _state: int = _NEW
    _recorder: AccessRecorder | None = None  # set by backends that write accesses behind

    # ---- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        """Connect to what the backend stands for and create what is missing (tables, scripts).

        Idempotent, and safe to call from several tasks at once (they wait for the first). Raises
        :class:`~tiered_registry.BackendUnavailableError` if a server cannot be reached,
        :class:`~tiered_registry.ConfigurationError` if it refuses the configuration, and
        :class:`~tiered_registry.BackendClosedError` after :meth:`close`. ``async with backend:`` calls
        it (and :meth:`close` on the way out).
        """
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
        """Write pending access times, stop background tasks and release connections (those the
        backend opened itself; a client or pool passed in stays open). Idempotent and final: later
        calls raise :class:`~tiered_registry.BackendClosedError` (see :meth:`release` to retry a start).
        """
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
        """True between a successful :meth:`initialize` and :meth:`close`."""
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
        """Create or replace the registration of ``bot_id``; returns it as stored.

        ``config`` must be a JSON-compatible dict (at most 1 MiB as JSON); it is validated and frozen
        before anything is written, so a bad one raises :class:`~tiered_registry.InvalidInputError` /
        :class:`~tiered_registry.InvalidTypeError` naming the field and changes nothing. ``status`` is
        ``"active"``, ``"inactive"`` or ``"error"``. ``created_at`` of an existing bot is kept;
        ``metadata=None`` keeps its stored metadata (``{}`` for a new bot), a mapping replaces it.
        """
        bot_id = validate_bot_id(bot_id)
        frozen_config = validate_config(config)
        status = validate_status(status)
        frozen_metadata = None if metadata is None else validate_metadata(metadata)
        self._check_open()
        return await self._register(bot_id, frozen_config, status, frozen_metadata)

    async def unregister(self, bot_id: str) -> bool:
        """Delete ``bot_id`` for good (every tier, every process); True if it existed."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._unregister(bot_id)

    async def deactivate(self, bot_id: str) -> bool:
        """Soft-delete ``bot_id``: its status becomes ``"inactive"`` (kept, listed by
        :meth:`list_inactive`, no longer by :meth:`exists`/:meth:`list_active`); True if it existed.
        """
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._deactivate(bot_id)

    async def clear(self) -> None:
        """Remove every registration of this registry's namespace (Redis key prefix, PostgreSQL
        table), and nothing outside it.
        """
        self._check_open()
        await self._clear()

    # ---- cache invalidation (for writes made around the stack) --------------------------------

    async def invalidate(self, bot_id: str) -> None:
        """Drop every cached copy of ``bot_id``, for a write made around this backend (an admin's
        SQL, a migration script): a :class:`~tiered_registry.TieredBackend` drops it from every tier
        of this process and from the shared tiers (Redis), and tells every other process over the
        invalidation channel (change kind ``invalidated``). The next read takes the store's value.
        A plain store caches nothing: a no-op there."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        await self._invalidate(bot_id)

    async def invalidate_all(self) -> None:
        """Like :meth:`invalidate` for every bot: every tier is emptied, here and (Redis) shared, and
        every other process drops its local tier (change kind ``resync``). A no-op on a plain store."""
        self._check_open()
        await self._invalidate(None)

    async def _invalidate(self, bot_id: str | None) -> None:
        """Nothing cached here (``bot_id`` ``None``: everything)."""
        return None

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
        """The config of ``bot_id`` (a read-only :class:`~tiered_registry.FrozenDict`, shared: no
        copy), or None if there is no such bot — whatever its status (check it with :meth:`get`). Counts
        as an access (``last_accessed_at``). The hot path of a stack: a local-tier hit costs about a dict
        lookup.
        """
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._get_config(bot_id, touch=True)

    async def get_active_config(self, bot_id: str) -> dict[str, Any] | None:
        """Like :meth:`get_config` (an access), but ``None`` unless the bot is ``active``: what a bot
        server that must not run deactivated bots reads, without a :meth:`get` to check the status."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        record = await self._get(bot_id, touch=True)
        return record.config if record is not None and record.status == "active" else None

    async def peek_config(self, bot_id: str) -> dict[str, Any] | None:
        """Like :meth:`get_config` but not an access: ``last_accessed_at`` is not advanced."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._get_config(bot_id, touch=False)

    async def exists(self, bot_id: str) -> bool:
        """True if ``bot_id`` is registered *and active*; not an access."""
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        return await self._exists(bot_id)

    # ---- bulk reads and writes -------------------------------------------------------------

    async def get_many(self, bot_ids: Iterable[str]) -> dict[str, Registration]:
        """The registrations of the bots of ``bot_ids`` that exist, as ``{bot_id: Registration}`` in
        the order the ids first appear (missing ids are absent, repeated ids count once).

        Every found bot counts as an access, exactly like :meth:`get`. The ids are all validated
        before anything is read (a bad one raises :class:`~tiered_registry.InvalidInputError` /
        :class:`~tiered_registry.InvalidTypeError` naming its position and value); a store reads
        them in few round trips (one ``= ANY($1)`` / one Redis pipeline per chunk).
        """
        ids = _unique_ids(bot_ids)
        self._check_open()
        if not ids:
            return {}
        found = await self._get_many(ids, touch=True)
        return {bot_id: found[bot_id] for bot_id in ids if bot_id in found}

    async def get_configs(self, bot_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The configs of the bots of ``bot_ids`` that exist, as ``{bot_id: config}`` (read-only
        :class:`~tiered_registry.FrozenDict` values), whatever their status; like :meth:`get_many`
        (validation, order, missing ids absent), and every found bot counts as an access like
        :meth:`get_config`.
        """
        ids = _unique_ids(bot_ids)
        self._check_open()
        if not ids:
            return {}
        found = await self._get_configs(ids, touch=True)
        return {bot_id: found[bot_id] for bot_id in ids if bot_id in found}

    async def register_many(
        self,
        items: Mapping[str, Mapping[str, Any]] | Iterable[tuple[Any, ...]],
        *,
        status: str = "active",
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Registration]:
        """Create or replace many registrations at once; returns them as stored, in input order.

        ``items`` is a mapping ``{bot_id: config}`` or an iterable of tuples ``(bot_id, config)``,
        ``(bot_id, config, status)`` or ``(bot_id, config, status, metadata)``; ``status`` and
        ``metadata`` apply to the items that do not give their own (``None`` in a tuple too). Each
        item is what :meth:`register` would write. EVERY item is validated before anything is
        written: a bad one (or a bot id given twice) rejects the whole call with an
        :class:`~tiered_registry.InvalidInputError` naming its index and bot id, and nothing changes.
        A store writes them together (PostgreSQL: one statement; Redis: one script call), all or
        nothing. An empty ``items`` returns ``[]`` without I/O.
        """
        checked = _check_items(items, status, metadata)
        self._check_open()
        if not checked:
            return []
        return await self._register_many(checked)

    async def load(
        self,
        items: Mapping[str, Mapping[str, Any]] | Iterable[tuple[Any, ...]],
        *,
        status: str = "active",
        metadata: Mapping[str, Any] | None = None,
        chunk_size: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Bulk load: register every item (as :meth:`register_many` takes them), ``chunk_size`` at
        a time, and return how many were written. For 10^5-10^6 bots: ``items`` may be a generator
        (read once, never held whole), nothing is returned per bot, and the next chunk is validated
        while the last one is being written.

        Not all or nothing: each chunk is written on its own (PostgreSQL: committed), so an
        invalid item (or a bot id given twice anywhere in the call) raises
        :class:`~tiered_registry.InvalidInputError`, naming its index, after the chunks before its
        own were written. Check the input first when that matters (``tiered-registry import``
        does). ``progress(n)`` is called after each chunk with the number of items it wrote.
        ``chunk_size``: items per write, by default ``_LOAD_CHUNK`` of the backend (PostgreSQL
        10,000; others 1,000: one Redis script call of 1,000 bots holds Redis 25-65 ms, of 10,000
        several times that, and was slower overall). See :mod:`~tiered_registry.bulk`.
        """
        return await bulk_load(
            self,
            items,
            status=status,
            metadata=metadata,
            chunk_size=self._LOAD_CHUNK if chunk_size is None else chunk_size,
            progress=progress,
        )

    async def _load_chunk(self, items: Sequence[RegisterItem]) -> None:
        """Write one chunk of :meth:`load` (validated, distinct ids). This default is
        :meth:`_register_many` (a stack writes through its tiers); PostgreSQL overrides it."""
        await self._register_many(items)

    _LOAD_CHUNK = DEFAULT_LOAD_CHUNK
    """Default ``chunk_size`` of :meth:`load`."""

    _LOADS_JSON = False
    """True: :meth:`load` validates items to JSON text (no frozen copies) and calls
    :meth:`_load_json_chunk` instead of :meth:`_load_chunk`."""

    async def _load_json_chunk(self, items: Sequence[JsonItem]) -> None:
        """Write one chunk of :meth:`load` given as JSON text (see ``_LOADS_JSON``)."""
        raise NotImplementedError

    # ---- lists and counts ------------------------------------------------------------------

    async def list_all(
        self,
        *,
        status: str | None = None,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: SortArg | None = None,
        limit: int | None = None,
        offset: int | None = None,
        after: str | None = None,
    ) -> list[Registration]:
        """Registrations, optionally of one ``status``, as a list (not accesses).

        ``filter_metadata``: equality on top-level metadata keys (``{"tenant": "acme"}``). ``sort``: a
        field name, a ``(field, "asc"|"desc")`` tuple, a :class:`~tiered_registry.SortSpec`, or a list
        of these; fields are ``bot_id``, ``status``, ``created_at``, ``updated_at``,
        ``last_accessed_at`` or ``metadata.KEY`` (descending: ``("created_at", "desc")``). Ties and the
        default order are by ``bot_id``. ``offset``/``limit`` page the sorted result.

        ``after``: keyset paging, only bots whose id is greater than ``after`` (code-point order),
        in ``bot_id`` order: pass the last id of a page to get the next one. Each page then costs
        the same however deep it is (a deep ``offset`` reads and drops every row before it). It
        does not combine with another ``sort`` (:class:`~tiered_registry.InvalidInputError`);
        ``offset`` counts from the key.
        """
        query = Query.build(
            status=status, filter_metadata=filter_metadata, sort=sort, limit=limit, offset=offset, after=after
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
        sort: SortArg | None = None,
        limit: int | None = None,
        offset: int | None = None,
        after: str | None = None,
    ) -> list[Registration]:
        """Active registrations; the options are those of :meth:`list_all`."""
        return await self.list_all(
            status="active",
            filter_metadata=filter_metadata,
            sort=sort,
            limit=limit,
            offset=offset,
            after=after,
        )

    async def list_inactive(
        self,
        *,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: SortArg | None = None,
        limit: int | None = None,
        offset: int | None = None,
        after: str | None = None,
    ) -> list[Registration]:
        """Inactive registrations; the options are those of :meth:`list_all`."""
        return await self.list_all(
            status="inactive",
            filter_metadata=filter_metadata,
            sort=sort,
            limit=limit,
            offset=offset,
            after=after,
        )

    async def list_ids(self) -> list[str]:
        """The ids of the active bots, sorted."""
        self._check_open()
        return await self._list_ids()

    async def recently_accessed(self, limit: int) -> list[str]:
        """The ids of the ``limit`` most recently accessed bots (any status), latest first, ties by
        ``bot_id``: what a warm start preloads (``TieredBackend(preload=N)``). This process's
        pending accesses are written first. PostgreSQL walks its index on ``last_accessed_at``;
        the in-memory and Redis stores sort every record in Python (Redis: a walk of all of them).
        """
        checked = _parse_limit(limit)
        self._check_open()
        await self.flush_accesses()
        return await self._recently_accessed(checked) if checked else []

    async def count_all(
        self, *, status: str | None = None, filter_metadata: Mapping[str, Any] | None = None
    ) -> int:
        """How many registrations there are, optionally of one ``status`` and matching
        ``filter_metadata`` (as in :meth:`list_all`).
        """
        query = Query.build(status=status, filter_metadata=filter_metadata)
        self._check_open()
        return await self._count(query)

    async def count(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        """How many active registrations there are (matching ``filter_metadata``, if given)."""
        return await self.count_all(status="active", filter_metadata=filter_metadata)

    async def count_inactive(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        """How many inactive registrations there are (matching ``filter_metadata``, if given)."""
        return await self.count_all(status="inactive", filter_metadata=filter_metadata)

    def stream(
        self,
        *,
        status: str | None = None,
        filter_metadata: Mapping[str, Any] | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[Registration]:
        """Every matching registration, ordered by ``bot_id``, fetched ``batch_size`` at a time
        (bounded memory for large registries): ``async for record in backend.stream(): ...``.

        The arguments are checked at once (a bad ``batch_size`` raises
        :class:`~tiered_registry.InvalidInputError`); the backend must be open when iteration starts.
        """
        query = Query.build(status=status, filter_metadata=filter_metadata)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError("batch_size", f"must be a positive int, got {batch_size!r}")
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
        if recorder is None or not recorder.track:
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

    async def _get_many(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, Registration]:
        """The records of the found ids (validated, distinct); ``touch``: each is an access, as in
        ``_get(touch=True)``. This default reads them one by one."""
        found: dict[str, Registration] = {}
        for bot_id in bot_ids:
            record = await self._get(bot_id, touch=touch)
            if record is not None:
                found[bot_id] = record
        return found

    async def _get_configs(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, dict[str, Any]]:
        """The configs of the found ids; this default takes them from :meth:`_get_many`."""
        records = await self._get_many(bot_ids, touch=touch)
        return {bot_id: record.config for bot_id, record in records.items()}

    async def _register_many(self, items: Sequence[RegisterItem]) -> list[Registration]:
        """Upsert every item (validated, distinct ids), in order; this default calls ``_register``
        for each (a store overrides it to write them in one round trip, all or nothing)."""
        return [await self._register(*item) for item in items]

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

    async def _recently_accessed(self, limit: int) -> list[str]:
        query = Query.build(sort=[("last_accessed_at", "desc")], limit=limit)
        return [r.bot_id for r in await self._select(query)]

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        for record in await self._select(query):
            yield record

    @abc.abstractmethod
    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None: ...

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        """Each bot its own time. This default makes one ``_record_accesses`` call with the latest
        time of the batch (at least as late as every access in it); our stores write each time."""
        await self._record_accesses(list(times), max(times.values()))


# ---- argument checks of the bulk methods -------------------------------------------------------

_SHOWN: Final = 60  # characters of a bad value shown in an error


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _iterable(value: object, name: str, what: str) -> Iterable[Any]:
    if isinstance(value, str | bytes):
        raise InvalidTypeError(name, f"pass {what}, not a {type(value).__name__}")
    if not isinstance(value, Iterable):
        raise InvalidTypeError(name, f"pass {what}, got {type(value).__name__}")
    return value


def _unique_ids(bot_ids: object) -> list[str]:
    """``bot_ids`` validated, first occurrences only, in order."""
    ids: dict[str, None] = {}
    for i, bot_id in enumerate(_iterable(bot_ids, "bot_ids", "a list of bot ids")):
        try:
            validate_bot_id(bot_id)
        except InvalidInputError as exc:
            raise type(exc)(f"bot_ids[{i}]", f"{_shown(bot_id)}: {exc.problem}") from None
        ids[bot_id] = None
    return list(ids)


def _parse_limit(limit: object) -> int:
    checked = Query.build(limit=limit).limit
    if checked is None:
        raise InvalidTypeError("limit", "must be an int, got None")
    return checked


def _check_items(items: object, status: object, metadata: object) -> list[RegisterItem]:
    """The items of ``register_many`` validated and normalized, or an error naming the bad one."""
    default_status = validate_status(status)
    default_metadata = None if metadata is None else validate_metadata(metadata)
    return check_items_part(raw_items(items), 0, default_status, default_metadata, {})


def raw_items(items: object) -> Iterable[Any]:
    """The items of ``register_many``/``load`` as an iterable of tuples (a mapping's items)."""
    what = "a mapping of bot id to config, or a list of (bot_id, config[, status[, metadata]]) tuples"
    return items.items() if isinstance(items, Mapping) else _iterable(items, "items", what)


def _check_part(
    items: Iterable[Any],
    start: int,
    default_status: str,
    default_metadata: Any,
    seen: dict[str, int],
    config_of: Callable[[object], Any],
    metadata_of: Callable[[object], Any],
) -> list[Any]:
    """Validate ``items``, the part of a call's items from index ``start`` on, into
    ``(bot_id, config_of(config), status, metadata_of(metadata) or default_metadata)``; ``seen``
    maps the ids of the earlier parts to their index (a repeated id is an error) and is updated."""
    checked: list[Any] = []
    for i, item in enumerate(items, start):
        if not isinstance(item, tuple | list) or not 2 <= len(item) <= 4:
            raise InvalidTypeError(
                f"items[{i}]", f"expected (bot_id, config[, status[, metadata]]), got {_shown(item)}"
            )
        bot_id, config, *rest = item
        item_status = rest[0] if rest and rest[0] is not None else default_status
        item_metadata = rest[1] if len(rest) > 1 else None
        try:
            bot_id = validate_bot_id(bot_id)
            checked_config = config_of(config)
            item_status = validate_status(item_status)
            checked_metadata = default_metadata if item_metadata is None else metadata_of(item_metadata)
        except InvalidInputError as exc:
            raise type(exc)(f"items[{i}] (bot_id {_shown(bot_id)})", f"{exc.field}: {exc.problem}") from None
        if bot_id in seen:
            raise InvalidInputError(
                f"items[{i}] (bot_id {_shown(bot_id)})",
                f"the same bot id as items[{seen[bot_id]}]; give each bot once per call",
            )
        seen[bot_id] = i
        checked.append((bot_id, checked_config, item_status, checked_metadata))
    return checked


def check_items_part(
    items: Iterable[Any],
    start: int,
    default_status: str,
    default_metadata: FrozenDict | None,
    seen: dict[str, int],
) -> list[RegisterItem]:
    """Validate a part of a call's items (see :func:`_check_part`), configs and metadata frozen."""
    checks = (validate_config, validate_metadata)
    return _check_part(items, start, default_status, default_metadata, seen, *checks)


def _json_text(value: object) -> str:
    return validate_json(value).decode()


def _metadata_json_text(value: object) -> str:
    return validate_json(value, "metadata", MAX_METADATA_BYTES).decode()


def check_json_part(
    items: Iterable[Any],
    start: int,
    default_status: str,
    default_metadata: str | None,
    seen: dict[str, int],
) -> list[JsonItem]:
    """:func:`check_items_part` for a store that writes JSON text (``load`` into PostgreSQL):
    the same checks and errors, each config and metadata returned as its JSON, not frozen."""
    checks = (_json_text, _metadata_json_text)
    return _check_part(items, start, default_status, default_metadata, seen, *checks)
