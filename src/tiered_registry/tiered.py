"""``TieredBackend``: the caching decorator — cache tiers in front of a store, itself a backend.

Reads go down the tiers (nearest first) until one answers, then fill every tier above it. Writes go
to the store first (if the store refuses, no tier changes), then through the tiers from the farthest
to the nearest. Five things make this correct and fast:

- **Hot path.** ``get_config`` on a local hit is one ``dict.get`` on the local tier's entries
  (which holds only live entries: the tier sweeps expired ones) and a dict store to note the
  access: no lock, no copy, no I/O, no clock. Everything else takes the slow path.
- **Stale fills.** Each key being read has one *flight*. A write marks the key's flight stale after
  the store committed and after the lower tiers were updated, so a read that started earlier never
  puts the old value back; tiers shared between processes also check a version token (see
  :class:`~tiered_registry.tiers.redis.RedisCache`).
- **Single-flight.** Concurrent misses of one key share that flight: one read of the tier below.
- **Negative caching.** A miss all the way down is remembered (``ABSENT``) for the tiers'
  ``negative_ttl``; ``register`` replaces it at once.
- **Racing writes.** Write-through never lets an earlier commit overwrite a later one: shared tiers
  refuse a put whose write token (taken before the commit) is outdated, the local tier takes no
  put from a write that overlapped another change of the bot. The steps after a commit always run
  to completion (a caller's cancellation does not cut them short), and a write whose outcome is
  unknown is treated as done: the bot is forgotten everywhere. See :mod:`tiered_registry.writes`.

``last_accessed_at``: every ``get``/``get_config`` that answers with a bot counts as an access,
recorded in memory and written to the store in batches (:mod:`tiered_registry.access`). ``get``
returns the record with the time of that access; lists and ``peek`` overlay this process's
accesses not yet written (a hot-path hit is stamped when it is collected: at the next flush, or at
the next such read). A record ``peek`` serves from a cache tier otherwise carries the
``last_accessed_at`` it had when it was cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .access import DEFAULT_ACCESS_FLUSH_INTERVAL, AccessRecorder
from .base import BackendBase
from .changes import ChangeEvent, ChangeFeed, ChangeKind, Watch, normalize_kind
from .circuit import TierGuard
from .errors import BackendBusyError, BackendUnavailableError, ConfigurationError, RegistryError
from .flights import RETRY, Flight
from .frozen import FrozenDict
from .models import Registration
from .owed import OwedInvalidations
from .protocol import CoreRegistryBackend
from .query import Query
from .status import StackStatus
from .stores.foreign import as_store
from .tiers.base import ABSENT, TIER_FAILURES, CacheTier, Lookup, check_seconds
from .tiers.local import NO_ENTRIES, Entry, LocalCache
from .validation import validate_bot_id
from .warm import preload
from .writes import WriteThrough

if TYPE_CHECKING:  # coherence needs redis-py, an optional extra: imported only when used
    from .coherence import InvalidationChannel

__all__ = ["TieredBackend"]

logger = logging.getLogger(__name__)
_SKIPPED: Final = object()  # a shared tier that was skipped (breaker open) or failed
_T = TypeVar("_T")


class TieredBackend(BackendBase, StackStatus):
    """Cache tiers (nearest first) in front of a store; a drop-in :class:`RegistryBackend`.

    ``TieredBackend(tiers=[LocalCache(maxsize=10_000, ttl=30), RedisCache(REDIS_URL, ttl=300)],
    store=PostgresBackend(DATABASE_URL))``. ``initialize``/``close`` cover every part it holds.
    """

    _recorder: AccessRecorder  # always set: accesses are written behind

    def __init__(
        self,
        *,
        tiers: Sequence[CacheTier],
        store: BackendBase | CoreRegistryBackend,
        access_flush_interval: float = DEFAULT_ACCESS_FLUSH_INTERVAL,
        coherence: InvalidationChannel | bool | None = None,
        failure_threshold: int = 3,
        reset_timeout: float = 1.0,
        track_access: bool = True,
        strict: bool = False,
        preload: int = 0,
        preload_timeout: float = 10.0,
    ) -> None:
        """``store``: one of our stores, or any other :class:`RegistryBackend` (it is then used through
        its public methods: :class:`~tiered_registry.stores.foreign.ForeignStore`).
        ``coherence``: ``None`` (default) invalidates other processes' local tiers over Redis
        pub/sub whenever the stack has a Redis tier or store (and, with a local tier of its own,
        listens for theirs); ``False`` turns that off; or pass a configured
        :class:`~tiered_registry.coherence.InvalidationChannel`.
        ``failure_threshold``/``reset_timeout``: a shared tier (Redis) that fails that many times in
        a row is skipped for that many seconds (circuit breaker, see :mod:`tiered_registry.circuit`).
        ``track_access=False``: ``last_accessed_at`` is never written (no access writes at all;
        reads are unchanged), for deployments that do not use it.
        ``strict=True``: :meth:`initialize` raises :class:`~tiered_registry.BackendUnavailableError`
        if a shared tier or the invalidation channel cannot be reached, instead of starting
        degraded (a flag rather than an ``initialize`` argument, so that ``async with`` and
        :func:`~tiered_registry.create_backend` configs can set it).
        ``preload=N``: a warm start. :meth:`initialize` fills the local tier with the ``N`` bots
        most recently accessed (the store's ``last_accessed_at``), in batches, before it returns,
        spending at most ``preload_timeout`` seconds on it (then it serves with what it has);
        see :mod:`~tiered_registry.warm`.
        """
        tiers = list(tiers)
        store = as_store(store)  # ours as is; any other RegistryBackend wrapped (stores/foreign.py)
        for tier in tiers:
            if not isinstance(tier, CacheTier):
                raise ConfigurationError(f"tiers must be cache tiers, got {type(tier).__name__}")
        if len({id(t) for t in tiers}) != len(tiers):
            raise ConfigurationError("the same tier object appears twice in tiers")
        self._tiers = tiers
        self._store = store
        self._local = tiers[0] if tiers and isinstance(tiers[0], LocalCache) else None
        self._hot: dict[str, Entry] = NO_ENTRIES  # the local tier's entries while open and trusted
        self._flights: dict[str, Flight] = {}
        self._recorder = AccessRecorder(
            self._store.record_access_times,
            interval=access_flush_interval,
            before_collect=self._collect_hot_hits,
            track=track_access,
        )
        self._strict = strict
        if isinstance(preload, bool) or not isinstance(preload, int) or preload < 0:
            raise ConfigurationError(f"preload must be an int >= 0 (a number of bots), got {preload!r}")
        if preload and self._local is None:
            raise ConfigurationError("preload fills the local tier: the first tier must be a LocalCache")
        self._preload = preload
        self._preload_timeout = check_seconds(preload_timeout, "preload_timeout")
        self._hot_accessed: dict[str, None] = {}  # accesses served by the hot path (also LRU hints)
        self._hot_hits = 0
        self._store_reads = 0
        self._store_errors = 0
        self._store_up = True  # the last store call did not fail (for health())
        self._store_since = time.time()
        self._store_error: str | None = None
        self._started_at = time.time()
        self._names = _tier_names(tiers)
        self._guards = {
            id(t): TierGuard(t, failure_threshold=failure_threshold, reset_timeout=reset_timeout)
            for t in tiers
            if t is not self._local
        }
        self._shared_guards = [self._guards[id(t)] for t in tiers if t is not self._local]  # nearest first
        self._closing = False
        self._coherence = _coherence_for(coherence, tiers, store)
        self._owed = OwedInvalidations(self._guards.values(), self._coherence, self._tier_failed)
        self._changes = ChangeFeed()
        self._channel_was_up = False  # a later "up" is a recovery: messages may have been lost
        self._writer = WriteThrough(
            local=self._local,
            shared=self._shared_guards,
            owed=self._owed,
            inline=not self._shared_guards and self._coherence is None,
            mark_stale=self._mark_stale,
            forget_everything_local=self._forget_everything_local,
            tier_failed=self._tier_failed,
            changed=self._changes.emit,
        )

    def __repr__(self) -> str:
        return f"TieredBackend(tiers={self._tiers!r}, store={self._store!r})"

    @property
    def tiers(self) -> tuple[CacheTier, ...]:
        """The cache tiers, nearest first (as given)."""
        return tuple(self._tiers)

    @property
    def store(self) -> BackendBase:
        """The source of truth (a store that is not one of ours shows as its ``ForeignStore`` adapter)."""
        return self._store

    # ---- lifecycle -------------------------------------------------------------------------

    async def _initialize(self) -> None:
        try:
            await self._store.initialize()
            for tier in self._tiers:
                await tier.initialize()
            if self._strict:
                await self._check_tiers()
            self._recorder.start()
            if self._coherence is not None and self._local is not None:
                # The local tier is used only while the channel is up (see _coherence_changed).
                await self._coherence.start(self._remote_invalidation, self._coherence_changed)
            elif self._coherence is not None:
                await self._coherence.start()  # nothing local to evict: publish only
            elif self._local is not None:
                self._hot = self._local.entries
            if self._strict and self._coherence is not None:
                await self._check_channel(self._coherence)
            if self._preload:
                await preload(self, self._preload, self._preload_timeout)
            self._started_at = time.time()
        except BaseException:
            # Failed or cancelled half-way: release what was opened (close() would not: the stack
            # never became open), then let the error through; initialize() may be called again.
            await asyncio.shield(self._release_parts(final=False))
            raise

    async def _check_tiers(self) -> None:
        """``strict``: every shared tier must answer now."""
        for name, tier in zip(self._names, self._tiers, strict=True):
            if tier is self._local:
                continue
            try:
                await tier.check()
            except TIER_FAILURES as exc:
                raise BackendUnavailableError(
                    f"cache tier {name!r} ({tier!r}) cannot be reached, and strict=True: {exc}"
                ) from exc

    async def _check_channel(self, channel: InvalidationChannel) -> None:
        """``strict``: the invalidation channel must be subscribed (or, publishing only, reach Redis)."""
        if channel.listening:
            if not channel.is_up:
                raise BackendUnavailableError(
                    f"{channel!r} not subscribed within {channel.connect_timeout}s, and strict=True"
                )
            return
        try:
            await channel.check()
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"{channel!r} cannot reach Redis, and strict=True: {exc}") from exc

    async def _release_parts(self, *, final: bool = True) -> None:
        """Close every part, whatever state it is in; errors are logged, not raised. Not
        ``final`` (a failed initialize): the store goes back to *not initialized*, so that
        ``initialize()`` can be tried again once the server is up."""
        self._hot = NO_ENTRIES
        steps: list[Callable[[], Awaitable[None]]] = [self._owed.stop, self._recorder.stop]
        if self._coherence is not None:
            steps.insert(0, self._coherence.stop)
        steps += [tier.close for tier in self._tiers]
        steps.append(self._store.close if final else self._store.release)
        for step in steps:
            try:
                await step()
            except Exception:
                logger.warning("error while releasing %r", step, exc_info=True)
        self._flights.clear()

    async def _close(self) -> None:
        self._closing = True
        await self._writer.wait()  # writes that committed finish updating the tiers
        await self._owed.close()  # last chance to pay what this process owes
        await self._release_parts()
        self._changes.close()

    # ---- the hot path ----------------------------------------------------------------------

    async def get_config(self, bot_id: str) -> dict[str, Any] | None:
        try:
            entry = self._hot.get(bot_id)
        except TypeError:  # unhashable id: the slow path raises the clear error
            entry = None
        if entry is not None:
            self._hot_hits += 1
            config = entry[1]
            if config is not None:
                self._hot_accessed[bot_id] = None
            return config
        return await self._get_config_slow(bot_id)

    async def get_active_config(self, bot_id: str) -> dict[str, Any] | None:
        """Like :meth:`get_config`, but ``None`` unless the bot is ``active``. On a local hit it costs
        one attribute read more than :meth:`get_config` (the entry holds the record)."""
        try:
            entry = self._hot.get(bot_id)
        except TypeError:  # unhashable id: the slow path raises the clear error
            entry = None
        if entry is not None:
            self._hot_hits += 1
            record = entry[0]
            if record is None:
                return None
            self._hot_accessed[bot_id] = None
            return entry[1] if record.status == "active" else None
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        record = await self._read_through(bot_id)
        if record is None:
            return None
        self._recorder.record(bot_id)
        return record.config if record.status == "active" else None

    async def _get_config_slow(self, bot_id: str) -> FrozenDict | None:
        bot_id = validate_bot_id(bot_id)
        self._check_open()
        record = await self._read_through(bot_id)  # what _get_config does, one call shorter
        if record is None:
            return None
        self._recorder.record(bot_id)
        return record.config

    # ---- reads -----------------------------------------------------------------------------

    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None:
        record = await self._read_through(bot_id)
        if touch and record is not None:
            return self._access(record)  # shows the time of this access
        return record

    async def _get_config(self, bot_id: str, *, touch: bool) -> FrozenDict | None:
        record = await self._get(bot_id, touch=touch)
        return None if record is None else record.config

    async def _get_many(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, Registration]:
        """Local hits at once; every other id read through the tiers concurrently, so that its
        lookups, store reads and fills join one batch per tier (see :mod:`tiered_registry.batching`)."""
        found: dict[str, Registration | None] = {}
        missing: list[str] = []
        local = self._local if self._hot is not NO_ENTRIES else None
        for bot_id in bot_ids:
            entry = local.get_entry(bot_id) if local is not None else None
            if entry is None:
                missing.append(bot_id)
                found[bot_id] = None  # keeps the order of bot_ids
            else:
                self._hot_hits += 1
                found[bot_id] = entry[0]
        if missing:
            answers = await asyncio.gather(*map(self._read_through, missing), return_exceptions=True)
            for bot_id, answer in zip(missing, answers, strict=True):
                if isinstance(answer, BaseException):
                    raise answer  # the others finished: nothing is left running
                found[bot_id] = answer
        records = {bot_id: record for bot_id, record in found.items() if record is not None}
        if touch:
            return {bot_id: self._access(record) for bot_id, record in records.items()}
        return records

    async def _read_through(self, bot_id: str) -> Registration | None:
        if self._local is not None and self._hot is not NO_ENTRIES:
            entry = self._local.get_entry(bot_id)
            if entry is not None:
                self._hot_hits += 1
                return entry[0]
        while (flight := self._flights.get(bot_id)) is not None:
            # A read of this key is in flight: wait for its outcome (shielded, so that our own
            # cancellation does not cancel it for the others).
            outcome = await asyncio.shield(flight.wait())
            if outcome is not RETRY:
                assert isinstance(outcome, tuple)
                answer: Registration | None = outcome[0]
                error: Exception | None = outcome[1]
                if error is not None:
                    raise error
                return answer
        # We lead: the read happens in our own task (no task per miss), the others wait for it.
        flight = Flight()
        self._flights[bot_id] = flight
        try:
            record = await self._load(bot_id, flight)
        except asyncio.CancelledError:
            flight.land(RETRY)
            raise
        except Exception as exc:
            flight.land((None, exc))
            raise
        else:
            flight.land((record, None))
            return record
        finally:
            if self._flights.get(bot_id) is flight:
                del self._flights[bot_id]

    async def _load(self, bot_id: str, flight: Flight) -> Registration | None:
        """Ask the tiers nearest first, then the store; fill the tiers above the one that answered."""
        tokens: list[object] = []
        found: Lookup = None
        for tier in self._tiers:
            if tier is self._local:
                if self._hot is NO_ENTRIES:
                    tokens.append(_SKIPPED)  # the local tier is bypassed (closed or not trusted)
                    continue
                found, token = await tier.lookup(bot_id)
            else:
                answer = await self._shared(tier, "lookup", tier.lookup, bot_id)
                if answer is _SKIPPED:
                    tokens.append(_SKIPPED)
                    continue
                found, token = answer  # type: ignore[misc]
            if found is not None:
                break
            tokens.append(token)
        if found is None:
            try:
                found = await self._store._get(bot_id, touch=False)
            except Exception as exc:
                self._store_errors += 1
                self._store_failed(exc)
                raise
            self._store_reads += 1
            if not self._store_up:
                self._store_answered()
        record = None if found is None or found is ABSENT else found
        assert record is None or isinstance(record, Registration)
        if not tokens:  # the nearest tier answered: nothing to fill
            return record
        # `tokens` covers exactly the tiers above the one that answered: fill them, farthest first,
        # unless a write to this key committed meanwhile (then our value may be the old one).
        for tier, token in zip(reversed(self._tiers[: len(tokens)]), reversed(tokens), strict=True):
            if flight.stale:
                break
            if token is _SKIPPED:
                continue
            if tier is self._local:
                await tier.fill(bot_id, record, token)
            else:
                await self._shared(tier, "fill", tier.fill, bot_id, record, token)
        return record

    async def _shared(
        self, tier: CacheTier, operation: str, call: Callable[..., Awaitable[_T]], bot_id: str, *args: Any
    ) -> _T | object:
        """A read (``lookup``/``fill`` of ``bot_id``) on a shared tier, through its guard: skipped
        (``_SKIPPED``) while the breaker is open, when it fails, and while the tier is owed an
        invalidation of ``bot_id`` (it may hold the old value; see :mod:`tiered_registry.owed`)."""
        guard = self._guards[id(tier)]
        healthy = guard.healthy  # closed, no recent failure, nothing owed: the common case
        if not healthy and (guard.owes_for(bot_id) or not guard.available()):
            return _SKIPPED
        try:
            result = await call(bot_id, *args)
        except BackendBusyError:
            # Our own pool had no free connection in time: a burst, not an outage. This read goes
            # to the store; the breaker does not count it (it would send the whole burst there).
            tier.stats.busy += 1
            if not healthy:
                guard.abandoned()
            return _SKIPPED
        except TIER_FAILURES as exc:
            guard.failed()
            self._tier_failed(tier, operation, exc)
            return _SKIPPED
        except asyncio.CancelledError:
            if not healthy:
                guard.abandoned()  # it may have been the half-open probe
            raise
        if not healthy:
            guard.succeeded()
        return result

    # ---- writes: the store, then every tier (see writes.py) -----------------------------------

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        commit = partial(self._watched, partial(self._store._register, bot_id, config, status, metadata))
        return await self._writer.write(bot_id, commit, _registered, put=True)

    async def _register_many(
        self, items: Sequence[tuple[str, FrozenDict, str, FrozenDict | None]]
    ) -> list[Registration]:
        commit = partial(self._watched, partial(self._store._register_many, items))
        return await self._writer.write_many([item[0] for item in items], commit, _registered)

    async def _deactivate(self, bot_id: str) -> bool:
        commit = partial(self._watched, partial(self._store._deactivate, bot_id))
        return await self._writer.write(bot_id, commit, _deactivated)

    async def _unregister(self, bot_id: str) -> bool:
        commit = partial(self._watched, partial(self._store._unregister, bot_id))
        return await self._writer.write(bot_id, commit, _unregistered)

    async def _clear(self) -> None:
        await self._writer.write(None, partial(self._watched, self._store._clear), _cleared)

    async def _watched(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """A store write, its outcome noted for :meth:`health`."""
        try:
            result = await call()
        except Exception as exc:
            self._store_failed(exc)
            raise
        if not self._store_up:
            self._store_answered()
        return result

    def _store_failed(self, exc: Exception) -> None:
        """A store call failed: the store is down for :meth:`health`, unless the error is about the
        input (a caller's mistake says nothing about the store)."""
        if isinstance(exc, RegistryError) and not isinstance(exc, BackendUnavailableError):
            return
        self._store_error = f"{type(exc).__name__}: {exc}"
        if self._store_up:
            self._store_up = False
            self._store_since = time.time()

    def _store_answered(self) -> None:
        self._store_up = True
        self._store_since = time.time()
        self._store_error = None

    async def _invalidate(self, bot_id: str | None) -> None:
        await self._writer.invalidate(bot_id)

    def _mark_stale(self, bot_id: str) -> None:
        """A write of ``bot_id`` committed: a read of it in flight must not fill what it read."""
        flight = self._flights.pop(bot_id, None)
        if flight is not None:
            flight.stale = True

    # ---- cross-process coherence -----------------------------------------------------------------

    def _forget_everything_local(self) -> None:
        self._writer.contend(None)
        for flight in self._flights.values():
            flight.stale = True
        self._flights.clear()
        if self._local is not None:
            self._local.stats.invalidations += 1
            self._local.delete_all()

    def _remote_invalidation(self, bot_id: str | None, kind: str) -> None:
        """Another process wrote ``bot_id`` (``None``: cleared everything), as ``kind`` says."""
        change = normalize_kind(kind)
        if bot_id is None:
            self._forget_everything_local()
            self._changes.emit(None, change if change in ("cleared", "resync") else "resync", remote=True)
            return
        self._writer.contend(bot_id)  # a write of ours in flight may have committed first
        self._mark_stale(bot_id)
        if self._local is not None:
            self._local.stats.invalidations += 1
            self._local.delete(bot_id)
        self._changes.emit(bot_id, change, remote=True)

    def _coherence_changed(self, up: bool) -> None:
        """Channel down: flush and bypass the local tier. Up again: flush (messages may be lost), use it;
        watchers are told to resync."""
        self._forget_everything_local()
        if up:
            if self._channel_was_up:
                self._changes.emit(None, "resync", remote=True)
            self._channel_was_up = True
        if self._local is not None and not self._closing:
            self._hot = self._local.entries if up else NO_ENTRIES

    # ---- the change feed (see changes.py) -----------------------------------------------------

    def watch(self, maxsize: int = 1000) -> Watch:
        """An async iterator of :class:`~tiered_registry.changes.ChangeEvent` for every write from
        now on, in this process and (over the invalidation channel) in the others; it ends when
        the backend closes. At most ``maxsize`` events wait; beyond that they become one
        ``resync``. ``async with registry.watch() as changes: async for event in changes: ...``"""
        self._check_open()
        self._listen_for_changes()
        return self._changes.watch(maxsize)

    def on_change(self, callback: Callable[[ChangeEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every write from now on (see :meth:`watch`), in the event
        loop: keep it quick. Returns a function that removes the callback."""
        self._check_open()
        self._listen_for_changes()
        return self._changes.on_change(callback)

    def _listen_for_changes(self) -> None:
        """A stack without a local tier only publishes; someone watching needs the others' news."""
        if self._coherence is not None and not self._coherence.listening:
            self._coherence.listen(self._remote_invalidation, self._coherence_changed)

    # ---- lists go to the store ---------------------------------------------------------------

    async def _select(self, query: Query) -> list[Registration]:
        return await self._store._select(query)

    async def _count(self, query: Query) -> int:
        return await self._store._count(query)

    async def _list_ids(self) -> list[str]:
        return await self._store._list_ids()

    async def _recently_accessed(self, limit: int) -> list[str]:
        return await self._store._recently_accessed(limit)

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        async for record in self._store._stream(query, batch_size):
            yield record

    # ---- access tracking -----------------------------------------------------------------------

    def _collect_hot_hits(self) -> None:
        """Before each access flush, and before a read shows the pending accesses: hand the hot
        path's hits to the LRU order and to the recorder, which stamps them now (any time from the
        hit on is right: the hot path reads no clock)."""
        hot = self._hot_accessed
        if hot:
            if self._local is not None:
                self._local.note_hits(hot)
            self._recorder.unstamped.update(hot)
            hot.clear()

    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        await self._store._record_accesses(bot_ids, at)

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        await self._store._record_access_times(times)

    async def flush_accesses(self) -> None:
        self._check_open()
        await self._recorder.flush()
        await self._store.flush_accesses()

    def _tier_failed(self, tier: CacheTier, operation: str, exc: BaseException) -> None:
        """Count a shared tier's failure; log the first of an outage at WARNING, the rest at DEBUG
        (its end is logged once, by the guard, when the tier is up again)."""
        tier.stats.errors += 1
        guard = self._guards.get(id(tier))
        first = guard is None or guard.note_failure()
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "cache tier %r failed during %s; skipped%s: %r",
            tier,
            operation,
            " until it answers again (further failures at DEBUG; health() has its state)" if first else "",
            exc,
        )


# What a write changed, from what the store answered (for the change feed and other processes).
def _registered(record: Registration) -> ChangeKind:
    return "registered" if record.created_at == record.updated_at else "updated"


def _deactivated(existed: bool) -> ChangeKind:
    return "deactivated" if existed else "invalidated"


def _unregistered(existed: bool) -> ChangeKind:
    return "unregistered" if existed else "invalidated"


def _cleared(_: None) -> ChangeKind:
    return "cleared"


def _coherence_for(
    setting: InvalidationChannel | bool | None, tiers: Sequence[CacheTier], store: BackendBase
) -> InvalidationChannel | None:
    if setting is False:
        return None
    if setting is not None and setting is not True:
        from .coherence import InvalidationChannel

        if isinstance(setting, InvalidationChannel):
            return setting
        raise ConfigurationError(f"coherence must be None, a bool or an InvalidationChannel, got {setting!r}")
    for part in (*tiers, store):
        get_source = getattr(part, "invalidation_source", None)
        found = get_source() if get_source is not None else None
        if found is not None:
            from .coherence import InvalidationChannel

            source, namespace = found
            return InvalidationChannel(source, namespace=namespace)
    if setting is True:
        raise ConfigurationError(
            "coherence=True needs a Redis tier or store (or pass an InvalidationChannel)"
        )
    return None


def _tier_names(tiers: Sequence[CacheTier]) -> list[str]:
    names: list[str] = []
    for tier in tiers:
        name = tier.name
        if name in names:
            name = f"{name}{sum(1 for n in names if n.startswith(tier.name)) + 1}"
        names.append(name)
    return names
