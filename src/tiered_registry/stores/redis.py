"""``RedisBackend``: the durable store in Redis (redis-py asyncio, hiredis parser).

Data model (every key under the hash tag ``{ns}``, so a cluster keeps a namespace in one slot):

- ``{ns}:bot:<bot_id>`` — a HASH per bot: ``config`` and ``metadata`` (JSON via the library's
  codec), ``status``, and ``created_at``/``updated_at``/``last_accessed_at`` as fixed-width
  ISO-8601 strings (always with microseconds), so string order is time order, also in Lua.
- ``{ns}:all`` and ``{ns}:status:<status>`` — sorted sets of bot ids, all scores 0: ordered by
  UTF-8 bytes, which is code-point order, i.e. the ``bot_id`` order of ``Query``. Lists, counts,
  ``stream`` and ``clear`` walk these (ZRANGE BYLEX / ZCARD), never KEYS or SCAN.

A bot id is only ever a key *suffix* and a set *member*, never part of a pattern, so ids such as
``a:b``, ``*`` or ``{x}`` cannot reach outside the namespace.

The record format — the Lua scripts that write it (one round trip each, atomic, nothing
half-written when a foreign value sits under our key) and the decoding of what is read back —
is in :mod:`~tiered_registry.stores._redis_records`, which says why.

``last_accessed_at`` is written behind (:class:`~tiered_registry.access.AccessRecorder`): a read
costs no write, and one script call per flush sets only that field, each bot to its own access
time, only on records that still exist and only forward in time. Other processes see it within
``access_flush_interval`` seconds; in this process ``get`` returns the time of that access and
later reads show it too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from ..access import DEFAULT_ACCESS_FLUSH_INTERVAL, AccessRecorder
from ..base import BackendBase, RegisterItem
from ..batching import DEFAULT_MAX_BATCH, Batcher, check_batch_size
from ..bulk import JsonItem
from ..codec import CodecError, DecodeCache, dumps
from ..errors import ConfigurationError
from ..frozen import FrozenDict
from ..models import Registration, utcnow
from ..query import Query, metadata_matches
from ..redis_client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RETRIES,
    DEFAULT_SOCKET_TIMEOUT,
    UNAVAILABLE_ERRORS,
    ConnectionSetupError,
    describe_source,
    is_cluster,
    make_client,
    map_redis_errors,
    unavailable_error,
    validate_namespace,
)
from ._redis_records import (
    FIELDS,
    STATUS_ORDER,
    Scripts,
    json_object,
    load_object,
    parse_record,
    wrong_type,
)

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_BATCH: Final = 500  # ids per ZRANGE / UNLINK: bounded memory, short server work
_READ_CHUNK: Final = 200
"""Records per read script: 200 records of 2 KB take Redis ~2-4 ms (500 took up to 17 ms on a
busy machine), so a list, a stream or a batch of point reads never holds the server for long."""
_IDS_CHUNK: Final = 10_000
"""Ids per ``ZRANGE`` of ``list_ids`` (~3 ms of server time; the whole set at once took 30 ms at
100,000 bots)."""
_Row = Sequence[bytes | None] | None  # an HMGET of FIELDS; None: a foreign value under the key


class RedisBackend(BackendBase):
    """A registry in Redis: ``RedisBackend(url_or_client, namespace="tiered_registry")``.

    ``url_or_client`` is a ``redis://``/``rediss://``/``unix://`` URL (the backend owns the
    client it builds, with ``socket_timeout``/``connect_timeout`` in seconds and ``retries``
    extra attempts on connection errors) or a ``redis.asyncio.Redis`` created with
    ``decode_responses=False`` (used as is, never closed here). ``namespace`` prefixes every key;
    two backends on one namespace share the registry. ``access_flush_interval`` is the staleness
    bound of ``last_accessed_at`` for other processes.

    ``batch_size``: point reads (``get``, ``get_config``) of different bots made while one is in
    flight go out together as one script call (one command) for at most that many bots
    (:mod:`~tiered_registry.batching`; a lone read is sent at once; ``1`` turns batching off).

    Connection failures raise :class:`~tiered_registry.BackendUnavailableError` with the driver
    error as ``__cause__``. A stored value that does not decode reads as missing (logged once).
    """

    _recorder: AccessRecorder  # always set: accesses are written behind
    _LOAD_CHUNK = 200
    """Bots per script call of :meth:`load`: a script of 1,000 held Redis for 25-65 ms, one of
    200 for a few, at ~7% more total time."""

    def __init__(
        self,
        url_or_client: str | aredis.Redis,
        *,
        namespace: str = "tiered_registry",
        access_flush_interval: float = DEFAULT_ACCESS_FLUSH_INTERVAL,
        socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        track_access: bool = True,
        batch_size: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.namespace = validate_namespace(namespace)
        check_batch_size(batch_size, "batch_size")
        if isinstance(access_flush_interval, bool) or not (
            isinstance(access_flush_interval, int | float) and access_flush_interval > 0
        ):
            raise ConfigurationError(f"access_flush_interval must be positive, got {access_flush_interval!r}")
        self._target = describe_source(url_or_client)
        self._source = url_or_client
        # Parsing the URL does no I/O: a bad URL or option fails here, not at first use.
        self._client: Any
        self._owned: bool
        self._client, self._owned = make_client(
            url_or_client,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            retries=retries,
            max_connections=max_connections,
        )
        tag = f"{{{self.namespace}}}"
        self._bot_prefix = f"{tag}:bot:"
        self._bot_prefix_b = self._bot_prefix.encode()
        self._all_key = f"{tag}:all"
        self._status_keys = {s: f"{tag}:status:{s}" for s in STATUS_ORDER}
        self._index_keys = [self._all_key, *self._status_keys.values()]
        self._scripts = Scripts(self._client, self._bot_prefix, self._all_key, self._status_keys)
        self._recorder = AccessRecorder(
            self._record_access_times, interval=float(access_flush_interval), track=track_access
        )
        self._warned_corrupt = False
        self._decode_config = DecodeCache(json_object)  # repeated reads skip parsing and freezing
        # Point reads of different bots in flight at once share one round trip (one script call).
        self._batcher: Batcher[str, _Row] = Batcher(self._read_row, self._read_rows, max_batch=batch_size)
        self._config_batcher: Batcher[str, bytes | None] = Batcher(
            self._read_config, self._read_configs, max_batch=batch_size
        )

    def __repr__(self) -> str:
        return f"RedisBackend({self._target!r}, namespace={self.namespace!r})"

    def invalidation_source(self) -> tuple[Any, str]:
        """Where a :class:`TieredBackend` over this store publishes its invalidations."""
        return self._source, self.namespace

    @property
    def batch_stats(self) -> dict[str, dict[str, int]]:
        """Round trips of the point reads (``get``: ``records``, ``get_config``: ``configs``): lone
        ones, batches and the keys they held (see :class:`~tiered_registry.batching.BatchStats`)."""
        return {"records": self._batcher.stats.as_dict(), "configs": self._config_batcher.stats.as_dict()}

    # ---- plumbing --------------------------------------------------------------------------

    def _errors(self, doing: str, *, write: bool = False) -> Any:
        return map_redis_errors(doing, self._target, write=write)

    def _corrupt(self, bot_id: str, problem: BaseException) -> None:
        """A value under our key that we cannot read: a miss, logged loudly once, then quietly."""
        log = logger.debug if self._warned_corrupt else logger.warning
        self._warned_corrupt = True
        log(
            "RedisBackend %s: the stored record of bot %r does not decode (%s: %s); it reads as missing",
            self.namespace,
            bot_id,
            type(problem).__name__,
            problem,
        )

    def _decode(self, bot_id: str, row: Sequence[bytes | None]) -> Registration | None:
        """An HMGET of ``FIELDS`` as a Registration; None when missing or corrupt."""
        try:
            return parse_record(bot_id, row)
        except (CodecError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self._corrupt(bot_id, exc)
            return None

    async def _fetch(self, ids: Sequence[bytes]) -> list[Registration]:
        """The records of ``ids`` (index members) in order, as the batched point reads read them."""
        names = [member.decode() for member in ids]
        rows = await self._read_batch("read records", names, configs=False)
        records = []
        for bot_id, row in zip(names, rows, strict=True):
            record = None if row is None else self._decode(bot_id, row)
            if record is not None:
                records.append(record)
        return records

    async def _members(self, index: str, after: bytes | None, count: int) -> list[bytes]:
        """Up to ``count`` ids of an index, in order, strictly after ``after`` (None: from the start)."""
        start = b"-" if after is None else b"(" + after
        with self._errors("read index"):
            members: list[bytes] = await self._client.zrange(
                index, start, b"+", bylex=True, offset=0, num=count
            )
        return members

    async def _walk(self, index: str, batch_size: int) -> AsyncIterator[list[bytes]]:
        """Every id of an index in batches (keyset paging: ids added or removed meanwhile are fine)."""
        after: bytes | None = None
        while True:
            members = await self._members(index, after, batch_size)
            if members:
                yield members
            if len(members) < batch_size:
                return
            after = members[-1]

    def _index(self, status: str | None) -> str:
        return self._all_key if status is None else self._status_keys[status]

    # ---- lifecycle -------------------------------------------------------------------------

    async def _initialize(self) -> None:
        """Check the server answers, and load the scripts (so no first call pays a NOSCRIPT retry)."""
        try:
            with self._errors("connect"):
                try:
                    if is_cluster(self._client):  # SCRIPT LOAD goes to every master; no pipeline
                        await self._client.ping()
                        for source in self._scripts.sources:
                            await self._client.script_load(source)
                    else:
                        async with self._client.pipeline(transaction=False) as pipe:
                            pipe.ping()
                            for source in self._scripts.sources:
                                pipe.script_load(source)
                            await pipe.execute()
                except ConnectionSetupError as exc:  # a wrong URL or server setting, not an outage
                    raise ConfigurationError(f"RedisBackend at {self._target}: {exc}") from exc
        except BaseException:
            if self._owned:  # (the client stays usable: a later initialize may succeed)
                if is_cluster(self._client):
                    await self._client.aclose()
                else:
                    await self._client.connection_pool.disconnect()
            raise
        self._recorder.start()

    async def _close(self) -> None:
        await self._batcher.close()
        await self._config_batcher.close()
        await self._recorder.stop()  # writes what is pending (failures are logged, not raised)
        if self._owned:
            await self._client.aclose()

    # ---- writes ----------------------------------------------------------------------------

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        now = utcnow()
        config_json, metadata_json = dumps(config), None if metadata is None else dumps(metadata)
        with self._errors("register", write=True):
            row = await self._scripts.register(bot_id, config_json, status, now, metadata_json)
        return self._registered(bot_id, config, status, metadata, row, now)

    def _registered(
        self,
        bot_id: str,
        config: FrozenDict,
        status: str,
        metadata: FrozenDict | None,
        row: Sequence[bytes],
        now: datetime,
    ) -> Registration:
        """The record a register script wrote: its reply ``row`` holds created_at,
        last_accessed_at and (kept when ``metadata`` is ``None``) the stored metadata."""
        if metadata is None:
            try:
                metadata = json_object(row[2])
            except CodecError as exc:  # a corrupt stored metadata is kept as it was
                self._corrupt(bot_id, exc)
                metadata = FrozenDict()
        created_at = datetime.fromisoformat(row[0].decode())
        last_accessed_at = datetime.fromisoformat(row[1].decode())
        return Registration(bot_id, config, status, metadata, created_at, now, last_accessed_at)

    async def _register_many(self, items: Sequence[RegisterItem]) -> list[Registration]:
        """Every item in one atomic script call (all or nothing)."""
        now = utcnow()
        encoded = [
            (bot_id, dumps(config), status, None if metadata is None else dumps(metadata))
            for bot_id, config, status, metadata in items
        ]
        with self._errors("register_many", write=True):
            rows = await self._scripts.register_many(encoded, now)
        records = [
            self._registered(bot_id, config, status, metadata, row, now)
            for (bot_id, config, status, metadata), row in zip(items, rows, strict=True)
        ]
        return records

    _LOADS_JSON = True  # load() hands us JSON text: written as it is, no frozen copies

    async def _load_json_chunk(self, items: Sequence[JsonItem]) -> None:
        """A chunk of :meth:`load`: one atomic script call, as :meth:`_register_many` but with the
        configs' JSON text as :meth:`load` checked it, and no records built to return."""
        encoded = [
            (bot_id, config.encode(), status, None if metadata is None else metadata.encode())
            for bot_id, config, status, metadata in items
        ]
        with self._errors("load", write=True):
            await self._scripts.register_many(encoded, utcnow())

    async def _deactivate(self, bot_id: str) -> bool:
        with self._errors("deactivate", write=True):
            return await self._scripts.deactivate(bot_id, utcnow())

    async def _unregister(self, bot_id: str) -> bool:
        with self._errors("unregister", write=True):
            return await self._scripts.unregister(bot_id)

    async def _clear(self) -> None:
        """Delete this namespace's records, ``_BATCH`` at a time (no long-blocking command).

        Repeatedly takes the first ids of each index and removes them with their records in one
        transaction; emptied sorted sets vanish by themselves. Only ids listed in our own index
        are touched, so no key outside the namespace can be reached.
        """
        for index in self._index_keys:  # the status sets are empty by now, unless out of sync
            while True:
                with self._errors("clear", write=True):
                    members = await self._client.zrange(index, 0, _BATCH - 1)
                    if not members:
                        break
                    async with self._client.pipeline(transaction=True) as pipe:
                        # (execute_command: a cluster pipeline's own unlink() is not queued)
                        pipe.execute_command("UNLINK", *(self._bot_prefix_b + m for m in members))
                        for key in self._index_keys:
                            pipe.zrem(key, *members)
                        await pipe.execute()

    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        await self._record_access_times(dict.fromkeys(bot_ids, at))

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        """Set ``last_accessed_at`` on the records that still exist and were accessed earlier."""
        with self._errors("record accesses"):
            await self._scripts.touch(times)

    # ---- point reads -----------------------------------------------------------------------

    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None:
        row = await self._batcher.load(bot_id)
        record = None if row is None else self._decode(bot_id, row)
        if record is not None and touch:
            return self._access(record)
        return record

    async def _get_config(self, bot_id: str, *, touch: bool) -> FrozenDict | None:
        raw = await self._config_batcher.load(bot_id)
        config = self._config_of(bot_id, raw)
        if config is not None and touch:
            self._recorder.record(bot_id)
        return config

    def _config_of(self, bot_id: str, raw: bytes | None) -> FrozenDict | None:
        if raw is None:
            return None
        try:
            return self._decode_config(raw)
        except CodecError as exc:
            self._corrupt(bot_id, exc)
            return None

    # The batchers' round trips: one id (sent at once), or many in one script call.

    async def _read_row(self, bot_id: str) -> _Row:
        try:
            row: list[bytes | None] = await self._client.hmget(self._bot_prefix + bot_id, FIELDS)
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable_error(exc, "get", self._target) from exc
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            self._corrupt(bot_id, exc)
            return None
        return row

    async def _read_config(self, bot_id: str) -> bytes | None:
        try:
            raw: bytes | None = await self._client.hget(self._bot_prefix + bot_id, "config")
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable_error(exc, "get_config", self._target) from exc
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            self._corrupt(bot_id, exc)
            return None
        return raw

    async def _read_batch(self, doing: str, bot_ids: Sequence[str], configs: bool) -> list[Any]:
        """Per id, one script call per ``_READ_CHUNK`` ids: its row (``configs``: its raw config), or
        ``None`` when it is missing or a foreign value sits under its key (logged as corrupt)."""
        rows: list[Any] = []
        for start in range(0, len(bot_ids), _READ_CHUNK):
            try:
                rows += await self._scripts.read(bot_ids[start : start + _READ_CHUNK], configs=configs)
            except UNAVAILABLE_ERRORS as exc:
                raise unavailable_error(exc, doing, self._target) from exc
        for i, row in enumerate(rows):
            if row == 0:
                self._corrupt(bot_ids[i], ResponseError("WRONGTYPE: not a hash"))
                rows[i] = None
        return rows

    async def _read_rows(self, bot_ids: list[str]) -> list[_Row]:
        return await self._read_batch("get", bot_ids, configs=False)

    async def _read_configs(self, bot_ids: list[str]) -> list[bytes | None]:
        return await self._read_batch("get_config", bot_ids, configs=True)

    async def _get_many(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, Registration]:
        found: dict[str, Registration] = {}
        for bot_id, row in zip(
            bot_ids, await self._read_batch("get_many", bot_ids, configs=False), strict=True
        ):
            record = None if row is None else self._decode(bot_id, row)
            if record is not None:
                found[bot_id] = self._access(record) if touch else record
        return found

    async def _get_configs(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for bot_id, raw in zip(
            bot_ids, await self._read_batch("get_configs", bot_ids, configs=True), strict=True
        ):
            config = self._config_of(bot_id, raw)
            if config is not None:
                found[bot_id] = config
                if touch:
                    self._recorder.record(bot_id)
        return found

    async def _exists(self, bot_id: str) -> bool:
        try:
            status = await self._client.hget(self._bot_prefix + bot_id, "status")
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable_error(exc, "exists", self._target) from exc
        except ResponseError as exc:
            if not wrong_type(exc):
                raise
            return False
        return bool(status == b"active")

    # ---- lists and counts ------------------------------------------------------------------

    async def _select(self, query: Query) -> list[Registration]:
        index = self._index(query.status)
        if query.limit == 0:
            return []
        if not query.filter_metadata and (
            not query.sort or (query.sort[0].field == "bot_id" and not query.sort[0].descending)
        ):
            # Index order is the requested order: page in Redis, fetch only that page.
            with self._errors("list"):
                if query.offset or query.limit is not None or query.after is not None:
                    limit = -1 if query.limit is None else query.limit
                    first = b"-" if query.after is None else b"(" + query.after.encode()
                    members = await self._client.zrange(
                        index, first, b"+", bylex=True, offset=query.offset, num=limit
                    )
                else:
                    members = await self._client.zrange(index, 0, -1)
            records: list[Registration] = []
            for start in range(0, len(members), _BATCH):
                records += await self._fetch(members[start : start + _BATCH])
            return [r for r in records if query.matches(r)]
        matching = [r async for r in self._stream(query, _BATCH)]
        return query.page(query.order(matching))

    async def _count(self, query: Query) -> int:
        index = self._index(query.status)
        if not query.filter_metadata:
            with self._errors("count"):
                return int(await self._client.zcard(index))
        filters = query.filter_metadata
        count = 0
        async for members in self._walk(index, _BATCH):
            with self._errors("count"):
                async with self._client.pipeline(transaction=False) as pipe:
                    for member in members:
                        pipe.hmget(self._bot_prefix_b + member, ("status", "metadata"))
                    rows = await pipe.execute(raise_on_error=False)
            for member, row in zip(members, rows, strict=True):
                if isinstance(row, Exception):
                    if not wrong_type(row):
                        raise row
                    continue
                status, metadata_raw = row
                if status is None or (query.status is not None and status.decode() != query.status):
                    continue
                try:
                    metadata = load_object(metadata_raw)  # only compared: no need to freeze
                except CodecError as exc:
                    self._corrupt(member.decode(), exc)
                    continue
                if metadata_matches(metadata, filters):
                    count += 1
        return count

    async def _list_ids(self) -> list[str]:
        ids: list[str] = []
        with self._errors("list_ids"):
            async for members in self._walk(self._status_keys["active"], _IDS_CHUNK):
                ids += (m.decode() for m in members)
        return ids

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        async for members in self._walk(self._index(query.status), batch_size):
            for record in await self._fetch(members):
                if query.matches(record):
                    yield record
