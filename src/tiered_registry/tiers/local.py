"""``LocalCache``: the bounded in-process tier — the hot path of the whole library.

Reads must cost about a dict lookup, so the tier keeps two structures:

- ``entries``: a plain ``dict`` ``bot_id -> (record, frozen config, deadline)`` that the hot path
  of :class:`~tiered_registry.TieredBackend` reads directly: one ``dict.get``, no clock, no lock,
  no copy (configs are frozen when they enter). An entry in it is live.
- a ``cachetools.TLRUCache`` index holding the same keys, which does the bounding: LRU eviction
  at ``maxsize`` and expiry at each entry's own deadline (``ttl``, or ``negative_ttl`` for a
  remembered miss). Whatever it evicts or expires is dropped from ``entries``. Expiry runs on every
  fill and from a sweep every ``sweep_interval`` seconds (a small task while the tier is open).

Why a sweep and not a deadline check per hit: ``time.monotonic()`` costs about as much as the
dict lookup itself (~0.1 us here), and it was the largest part of the hot path after it.

Hits on the hot path do not reorder the LRU index one by one (that is what makes
``TTLCache.get`` 5-12x a dict lookup); the hit keys the backend records for access tracking are
replayed into the index in one batch (:meth:`note_hits`) every access-flush interval, so the LRU
order is exact to within that interval.

Bounded in bytes too (``max_bytes``): each entry's size is estimated once, when it enters (a
walk over its config and metadata, see :func:`entry_size`), and the index evicts LRU entries
until the estimates fit (cachetools' ``getsizeof`` hook). A hit never looks at sizes. Without
``max_bytes`` nothing is estimated (fills stay as cheap as before).

Staleness bound: an entry is served at most ``ttl + sweep_interval`` seconds after it was filled
(``negative_ttl + sweep_interval`` for a remembered miss), even if every invalidation were lost,
as long as the event loop runs (a coroutine that hogs the loop delays the sweep as it delays
everything else). ``sweep_interval`` defaults to a tenth of the shorter TTL, at most 1 s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

from cachetools import TLRUCache

from ..errors import ConfigurationError
from ..frozen import FrozenDict, FrozenList
from ..models import Registration
from ..tasks import cancel_and_wait
from .base import ABSENT, CacheTier, Lookup, check_seconds

__all__ = ["ENTRY_OVERHEAD", "Entry", "LocalCache", "entry_size"]

Entry: TypeAlias = tuple[Registration | None, FrozenDict | None, float]
"""``(record or None for a remembered miss, its frozen config, monotonic deadline)``."""

NO_ENTRIES: Final[dict[str, Entry]] = {}
"""What a backend reads instead of ``entries`` while its local tier is bypassed (always empty)."""

_monotonic = time.monotonic


def _deadline(bot_id: str, entry: Entry, now: float) -> float:
    return entry[2]


ENTRY_OVERHEAD: Final = 512
"""Bytes an entry costs besides its config and metadata trees (the record, its timestamps, the
slots of the tier's dicts and index): tracemalloc measured 450-570 at 10,000-100,000 cached bots."""

_getsizeof = sys.getsizeof
_CONTAINERS: Final = frozenset({FrozenDict, FrozenList, dict, list})


def _tree_size(value: object) -> int:
    """``sys.getsizeof`` summed over a JSON tree (keys not counted: decoders share them)."""
    size = _getsizeof(value)
    stack = [value]
    while stack:
        node = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:  # type: ignore[attr-defined]
            size += _getsizeof(child)
            if type(child) in _CONTAINERS:
                stack.append(child)
    return size


def entry_size(entry: Entry) -> int:
    """Estimated bytes of one entry: its config and metadata trees plus :data:`ENTRY_OVERHEAD`.

    Within ~10 % of what tracemalloc measures for the configs tried (256 B to 8 KB of JSON);
    ~8 us for a 2 KB config, paid once when the entry enters the tier (never on a hit).
    """
    record = entry[0]
    if record is None:
        return ENTRY_OVERHEAD
    metadata = _tree_size(record.metadata) if record.metadata else 0
    return ENTRY_OVERHEAD + _tree_size(record.config) + metadata


class _BoundedIndex(TLRUCache[str, Entry]):
    """A TLRUCache (expiry at each entry's deadline) that reports every key it evicts or expires
    (to keep ``entries`` in step): ``on_remove(key, expired)``. Both happen on fills and in the
    sweep, never on a hit. With ``max_bytes`` its ``maxsize`` is that many bytes, each entry
    weighing :attr:`pending` (set by :meth:`LocalCache.set` just before it inserts: the size is
    estimated once)."""

    def __init__(
        self, maxsize: int, on_remove: Callable[[str, bool], Any], *, max_bytes: int | None = None
    ) -> None:
        if max_bytes is None:
            super().__init__(maxsize=maxsize, ttu=_deadline, timer=_monotonic)
        else:
            super().__init__(maxsize=max_bytes, ttu=_deadline, timer=_monotonic, getsizeof=self._weight)
        self._on_remove = on_remove
        self.pending = 0

    def _weight(self, entry: Entry) -> int:
        return self.pending

    def popitem(self) -> tuple[str, Entry]:
        key, value = super().popitem()  # an LRU eviction (only at maxsize: clear() does not call it)
        self._on_remove(key, False)
        return key, value

    def expire(self, time: float | None = None) -> list[tuple[str, Entry]]:
        expired = list(super().expire(time))
        for key, _ in expired:
            self._on_remove(key, True)
        return expired


class LocalCache(CacheTier):
    """In-process LRU + TTL cache of registrations (one per process, shared by its tasks)."""

    name = "local"

    def __init__(
        self,
        maxsize: int = 10_000,
        ttl: float = 30.0,
        *,
        negative_ttl: float = 5.0,
        sweep_interval: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """``maxsize``: entries at most; ``max_bytes``: estimated bytes at most (``None``: no bound
        in bytes). The LRU entries leave first when either is reached; an entry estimated bigger
        than ``max_bytes`` on its own is not cached at all (counted in ``stats()`` as
        ``too_large``)."""
        super().__init__()
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigurationError(f"LocalCache maxsize must be a positive int, got {maxsize!r}")
        if max_bytes is not None and (
            not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
        ):
            raise ConfigurationError(
                f"LocalCache max_bytes must be a positive int (bytes) or None, got {max_bytes!r}"
            )
        ttl = check_seconds(ttl, "LocalCache ttl")
        negative_ttl = check_seconds(negative_ttl, "LocalCache negative_ttl", zero_ok=True)
        if sweep_interval is None:
            shortest = min(ttl, negative_ttl) if negative_ttl > 0 else ttl
            sweep_interval = min(1.0, shortest / 10)
        else:
            sweep_interval = check_seconds(sweep_interval, "LocalCache sweep_interval")
        self.maxsize = maxsize
        self.ttl = float(ttl)
        self.negative_ttl = float(negative_ttl)
        self.sweep_interval = float(sweep_interval)
        self.max_bytes = max_bytes
        self.too_large = 0  # entries not cached: estimated bigger than max_bytes on their own
        self.entries: dict[str, Entry] = {}
        self._index = _BoundedIndex(maxsize, self._drop, max_bytes=max_bytes)
        self._sweeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        bound = "" if self.max_bytes is None else f", max_bytes={self.max_bytes}"
        return f"LocalCache(maxsize={self.maxsize}{bound}, ttl={self.ttl}, negative_ttl={self.negative_ttl})"

    @property
    def bytes_used(self) -> int | None:
        """Estimated bytes of the entries held (``None`` without ``max_bytes``: not estimated)."""
        return None if self.max_bytes is None else int(self._index.currsize)

    async def initialize(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="tiered-registry-local-sweep"
            )

    async def close(self) -> None:
        task, self._sweeper = self._sweeper, None
        await cancel_and_wait(task)

    async def _sweep(self) -> None:
        """Drop expired entries (the hot path does not look at deadlines)."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            self._index.expire()

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:  # an empty cache is still a cache (`tier or default` must not skip it)
        return True

    def _drop(self, bot_id: str, expired: bool) -> None:
        """The index evicted (LRU) or expired ``bot_id``."""
        self.entries.pop(bot_id, None)
        if expired:
            self.stats.expirations += 1
        else:
            self.stats.evictions += 1

    # ---- synchronous core (used directly by TieredBackend) ----------------------------------

    def get_entry(self, bot_id: str) -> Entry | None:
        """The live entry for ``bot_id``, or ``None`` (an expired one is dropped)."""
        entry = self.entries.get(bot_id)
        if entry is None:
            return None
        if entry[2] > _monotonic():
            return entry
        self.stats.expirations += 1  # not swept yet
        self.delete(bot_id)
        return None

    def set(self, bot_id: str, record: Registration | None) -> None:
        """Cache ``record`` (``None`` = remember the miss, if negative caching is on)."""
        if record is None:
            if self.negative_ttl <= 0:
                self.delete(bot_id)
                return
            entry: Entry = (None, None, _monotonic() + self.negative_ttl)
        else:
            entry = (record, record.config, _monotonic() + self.ttl)
            if record.bot_id == bot_id:
                bot_id = record.bot_id  # key by the record's own string: the caller's may then go
        index = self._index
        if self.max_bytes is not None:
            size = entry_size(entry)
            if size > self.max_bytes:
                self.delete(bot_id)
                self.too_large += 1
                return
            index.pending = size
            if len(self.entries) >= self.maxsize and bot_id not in self.entries:
                index.expire()  # the count bound (the index itself counts bytes)
                if len(self.entries) >= self.maxsize:
                    index.popitem()
        index[bot_id] = entry  # may evict/expire others (they leave `entries` too)
        self.entries[bot_id] = entry
        self.stats.fills += 1

    def delete(self, bot_id: str) -> None:
        """Forget ``bot_id`` now (no stats counted; :meth:`invalidate` counts one)."""
        self.entries.pop(bot_id, None)
        self._index.pop(bot_id, None)

    def delete_all(self) -> None:
        """Forget every entry now (no stats counted; :meth:`clear` counts one)."""
        self.entries.clear()
        self._index.clear()

    def note_hits(self, bot_ids: Iterable[str]) -> None:
        """Replay hot-path hits into the LRU order (batched; see the module docstring)."""
        index = self._index
        for bot_id in bot_ids:
            if bot_id in index:
                index.get(bot_id)  # moves it to the most-recently-used end

    # ---- CacheTier --------------------------------------------------------------------------

    async def lookup(self, bot_id: str) -> tuple[Lookup, object]:
        entry = self.get_entry(bot_id)
        if entry is None:
            self.stats.misses += 1
            return None, None
        self.stats.hits += 1
        return (ABSENT if entry[0] is None else entry[0]), None

    async def fill(self, bot_id: str, record: Registration | None, token: object) -> None:
        # In-process staleness is handled by the backend's per-key flight (checked synchronously
        # right before this call), so no token is needed here.
        self.set(bot_id, record)

    async def put(self, bot_id: str, record: Registration, token: object) -> None:
        # Concurrent writers of one key are detected by the backend (it deletes instead).
        self.set(bot_id, record)

    async def invalidate(self, bot_id: str) -> None:
        self.stats.invalidations += 1
        self.delete(bot_id)

    async def clear(self) -> None:
        self.stats.invalidations += 1
        self.delete_all()
