"""``ForeignStore``: a :class:`~tiered_registry.RegistryBackend` of someone else's, seen as one of our stores.

:class:`~tiered_registry.TieredBackend` drives its store through ``BackendBase`` primitives
(``_get``, ``_register``, ``_select``, ...). Our own stores implement them; any other object with
the protocol's methods (at least the 13 core ones, :class:`~tiered_registry.protocol.CoreRegistryBackend`)
is wrapped in a ``ForeignStore``, which implements the primitives on its **public** methods only:

- **Point reads** for cache fills (``_get(touch=False)``) use its ``peek`` when it has one, so that
  filling a cache is not an access; otherwise its ``get`` (which then counts one access more in
  that store: it has no other way to read a record).
- **Writes**: ``register(bot_id, config, status)``, plus ``metadata=`` when it is given and the
  store's ``register`` takes it. A store without ``metadata=`` holds none (every record reads as
  ``{}``): ``metadata={}`` is accepted, any other metadata raises :class:`ConfigurationError`
  before anything is written.
- **Lists, counts, streams**: keyword filters, sort and paging are passed through when its methods
  take them (checked once, from their signatures); otherwise the records are filtered, sorted and
  paged here with :class:`~tiered_registry.query.Query` (the same rules every store follows).
  ``stream`` uses its ``stream()`` if it has one, else one ``list_all()``.
- **Accesses**: a cache hit makes no call to the store. The tiers note the bots read and hand them
  to :meth:`_record_accesses` once per ``access_flush_interval``, as one batch. Forwarded as the
  store's own ``record_accesses(bot_ids, at)`` if it has one (one call per flush); otherwise as one
  ``get_config(bot_id)`` per bot read during the interval (at most 64 at a time), because an
  ordinary read is the only access the core protocol has, and unlike a ``register`` it touches
  only ``last_accessed_at`` (so it cannot undo a concurrent write). Either way the store costs one
  write per bot per interval, not one per cache hit.

Records it returns are converted to :class:`Registration` (frozen configs): a ``Registration``,
a dict (``Registration.from_dict``) or an object with the ``Registration`` fields. Errors it raises
pass through unchanged.

Lifecycle: ``initialize``/``close`` are its own. :meth:`release` (a stack whose later part failed
to start) leaves it open, since a backend cannot be initialized again after ``close()``; the next
``initialize()`` calls its (idempotent) ``initialize`` again.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from ..base import BackendBase, RegisterItem
from ..errors import ConfigurationError, InvalidTypeError
from ..frozen import FrozenDict, freeze, thaw
from ..models import FIELD_NAMES, Registration
from ..protocol import CoreRegistryBackend
from ..query import Query, SortSpec

__all__ = ["ForeignStore", "as_store", "to_registration"]

_ACCESS_READS_AT_ONCE: Final = 64  # get_config calls in flight while forwarding accesses
_Method = Callable[..., Awaitable[Any]]


def as_store(store: object) -> BackendBase:
    """``store`` as one of our stores: ours as they are, another backend wrapped in a
    :class:`ForeignStore`; anything else raises :class:`ConfigurationError` naming its type."""
    if isinstance(store, BackendBase):
        return store
    if isinstance(store, CoreRegistryBackend):
        return ForeignStore(store)
    missing = [name for name in _CORE_METHODS if not callable(getattr(store, name, None))]
    raise ConfigurationError(
        f"store must be a RegistryBackend, got {type(store).__name__} (missing: {', '.join(missing)})"
    )


_CORE_METHODS: Final = (
    "initialize",
    "close",
    "register",
    "get",
    "get_config",
    "exists",
    "unregister",
    "deactivate",
    "list_active",
    "list_all",
    "list_ids",
    "count",
    "clear",
)


def _takes(method: Callable[..., Any] | None, *names: str) -> bool:
    """Whether ``method`` accepts every one of ``names`` as a keyword argument."""
    if method is None:
        return False
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read: assume only what the core protocol has
        return False
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return True
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(name in parameters and parameters[name].kind in keyword for name in names)


def _optional(backend: object, name: str) -> _Method | None:
    method = getattr(backend, name, None)
    return method if callable(method) else None


def to_registration(record: object) -> Registration:
    """A record returned by a foreign backend as our :class:`Registration` (frozen config and metadata)."""
    if isinstance(record, Registration):
        if type(record.config) is FrozenDict and type(record.metadata) is FrozenDict:
            return record
        return record.with_changes(config=freeze(record.config), metadata=freeze(record.metadata or {}))
    if isinstance(record, Mapping):
        data = dict(record)
    elif hasattr(record, "bot_id") and hasattr(record, "config"):
        data = {name: getattr(record, name) for name in FIELD_NAMES if hasattr(record, name)}
    else:
        raise InvalidTypeError(
            "record", f"a store returned {type(record).__name__}, expected a Registration, dict or record"
        )
    return Registration.from_dict(data)


def _frozen_config(config: object) -> FrozenDict | None:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise InvalidTypeError("config", f"a store returned {type(config).__name__}, expected a dict")
    return freeze(config)


class ForeignStore(BackendBase):
    """Any :class:`~tiered_registry.RegistryBackend` (or core-protocol backend) as a store of ours.

    ``TieredBackend(store=x)`` wraps ``x`` in one of these by itself; the wrapped backend is
    :attr:`backend`. See the module notes for how each call is forwarded.
    """

    def __init__(self, backend: CoreRegistryBackend) -> None:
        if isinstance(backend, BackendBase) or not isinstance(backend, CoreRegistryBackend):
            raise ConfigurationError(
                f"ForeignStore wraps a RegistryBackend that is not one of ours, got {type(backend).__name__}"
            )
        self._backend = backend
        self._releasing = False
        self._peek = _optional(backend, "peek")
        self._peek_config = _optional(backend, "peek_config")
        self._record = _optional(backend, "record_accesses")
        self._flush = _optional(backend, "flush_accesses")
        self._count_all = _optional(backend, "count_all")
        self._get_many_method = _optional(backend, "get_many")
        self._register_many_method = _optional(backend, "register_many")
        stream = getattr(backend, "stream", None)
        self._stream_method: Callable[..., AsyncIterator[Any]] | None = stream if callable(stream) else None
        self._takes_metadata = _takes(backend.register, "metadata")
        self._list_filters = _takes(backend.list_all, "status", "filter_metadata")
        self._list_paging = self._list_filters and _takes(backend.list_all, "sort", "limit", "offset")
        self._count_filters = _takes(self._count_all, "status", "filter_metadata")
        self._stream_filters = _takes(self._stream_method, "status", "filter_metadata")
        self._stream_batches = _takes(self._stream_method, "batch_size")

    def __repr__(self) -> str:
        return f"ForeignStore({self._backend!r})"

    @property
    def backend(self) -> CoreRegistryBackend:
        """The wrapped backend."""
        return self._backend

    # ---- lifecycle -------------------------------------------------------------------------

    async def _initialize(self) -> None:
        await self._backend.initialize()

    async def _close(self) -> None:
        if not self._releasing:
            await self._backend.close()

    async def release(self) -> None:
        """Back to *not initialized*, leaving the wrapped backend open (it could not be opened again)."""
        self._releasing = True
        try:
            await super().release()
        finally:
            self._releasing = False

    # ---- writes ----------------------------------------------------------------------------

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        if metadata is not None and self._takes_metadata:
            register: _Method = self._backend.register
            record = await register(bot_id, config, status, metadata=metadata)
        elif metadata:
            raise ConfigurationError(
                f"metadata: the store {type(self._backend).__name__} cannot keep metadata "
                "(its register() takes no 'metadata' argument)"
            )
        else:
            record = await self._backend.register(bot_id, config, status)
        return to_registration(record)

    async def _register_many(self, items: Sequence[RegisterItem]) -> list[Registration]:
        """Its ``register_many`` when it has one (tuples of 4 when metadata is given, else of 3),
        otherwise one ``register`` per item. Metadata it cannot keep is refused before any write."""
        with_metadata = any(metadata is not None for _, _, _, metadata in items)
        if with_metadata and not self._takes_metadata:
            if any(metadata for _, _, _, metadata in items):
                raise ConfigurationError(
                    f"metadata: the store {type(self._backend).__name__} cannot keep metadata "
                    "(its register() takes no 'metadata' argument)"
                )
            with_metadata = False
        if self._register_many_method is None:
            return await super()._register_many(items)
        if with_metadata:
            records = await self._register_many_method([tuple(item) for item in items])
        else:
            records = await self._register_many_method([item[:3] for item in items])
        return [to_registration(r) for r in records]

    async def _unregister(self, bot_id: str) -> bool:
        return bool(await self._backend.unregister(bot_id))

    async def _deactivate(self, bot_id: str) -> bool:
        return bool(await self._backend.deactivate(bot_id))

    async def _clear(self) -> None:
        await self._backend.clear()

    # ---- point reads -----------------------------------------------------------------------

    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None:
        if not touch and self._peek is not None:
            record = await self._peek(bot_id)
        else:
            record = await self._backend.get(bot_id)
        return None if record is None else to_registration(record)

    async def _get_config(self, bot_id: str, *, touch: bool) -> FrozenDict | None:
        if touch:
            return _frozen_config(await self._backend.get_config(bot_id))
        if self._peek_config is not None:
            return _frozen_config(await self._peek_config(bot_id))
        record = await self._get(bot_id, touch=False)
        return None if record is None else record.config

    async def _get_many(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, Registration]:
        """Its ``get_many`` for accesses when it has one; otherwise one read per id (at most
        ``_ACCESS_READS_AT_ONCE`` at a time)."""
        if touch and self._get_many_method is not None:
            records = await self._get_many_method(list(bot_ids))
            return {bot_id: to_registration(record) for bot_id, record in dict(records).items()}
        found: dict[str, Registration] = {}
        for start in range(0, len(bot_ids), _ACCESS_READS_AT_ONCE):
            chunk = bot_ids[start : start + _ACCESS_READS_AT_ONCE]
            records = await asyncio.gather(*(self._get(bot_id, touch=touch) for bot_id in chunk))
            found.update((r.bot_id, r) for r in records if r is not None)
        return found

    async def _exists(self, bot_id: str) -> bool:
        return bool(await self._backend.exists(bot_id))

    # ---- lists and counts ------------------------------------------------------------------

    async def _matching(self, query: Query) -> list[Registration]:
        """The records passing ``query``'s filters (not yet sorted or paged)."""
        list_all: _Method = self._backend.list_all
        if self._list_filters:
            records = await list_all(status=query.status, filter_metadata=_plain(query.filter_metadata))
            return [to_registration(r) for r in records]
        if query.status == "active":
            records = await self._backend.list_active()
        else:
            records = await list_all()
        converted = (to_registration(r) for r in records)
        return [r for r in converted if query.matches(r)]

    async def _select(self, query: Query) -> list[Registration]:
        if query.after is not None:  # keyset paging is ours: filter, order and page here
            return query.apply(await self._matching(query))
        if self._list_paging:
            sort = [SortSpec(key.field, "desc" if key.descending else "asc") for key in query.sort]
            list_all: _Method = self._backend.list_all
            records = await list_all(
                status=query.status,
                filter_metadata=_plain(query.filter_metadata),
                sort=sort or None,
                limit=query.limit,
                offset=query.offset or None,
            )
            return [to_registration(r) for r in records]
        return query.page(query.order(await self._matching(query)))

    async def _count(self, query: Query) -> int:
        if self._count_filters:
            assert self._count_all is not None
            count = await self._count_all(status=query.status, filter_metadata=_plain(query.filter_metadata))
            return int(count)
        if query.status == "active" and not query.filter_metadata:
            return int(await self._backend.count())
        return len(await self._matching(query))

    async def _list_ids(self) -> list[str]:
        return sorted(await self._backend.list_ids())

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        if self._stream_method is None:
            for record in await self._select(query):  # a stream's query neither sorts nor pages
                yield record
            return
        kwargs: dict[str, Any] = {}
        if self._stream_filters:
            kwargs.update(status=query.status, filter_metadata=_plain(query.filter_metadata))
        if self._stream_batches:
            kwargs["batch_size"] = batch_size
        async for item in self._stream_method(**kwargs):
            record = to_registration(item)
            if self._stream_filters or query.matches(record):
                yield record

    # ---- access tracking -------------------------------------------------------------------

    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        if self._record is not None:
            await self._record(list(bot_ids), at)
            return
        get_config = self._backend.get_config
        for start in range(0, len(bot_ids), _ACCESS_READS_AT_ONCE):
            chunk = bot_ids[start : start + _ACCESS_READS_AT_ONCE]
            results = await asyncio.gather(*(get_config(b) for b in chunk), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def flush_accesses(self) -> None:
        """Ask the wrapped backend to write its pending accesses, if it batches them too."""
        self._check_open()
        if self._flush is not None:
            await self._flush()


def _plain(metadata: FrozenDict | None) -> dict[str, Any] | None:
    """A filter as a plain dict (another library may want to copy or change it)."""
    return None if metadata is None else thaw(metadata)
