"""``RedisCache``: a Redis tier shared by every process, with a TTL on every key.

Keys (``{tag}`` is the bot's hash tag: ``{namespace}`` on a single Redis; on Redis Cluster
one of the namespace's groups ``{namespace:N}``, see :mod:`tiered_registry.keyspace` — every key
a script touches is in one slot):

- ``{tag}:c:<bot_id>`` — the cached registration (the library's one codec) or ``null`` for a
  remembered miss; expires after ``ttl`` (``negative_ttl`` for a miss).
- ``{tag}:v:<bot_id>`` — the key's version, set by every write-through and invalidation to the
  next number of ``{tag}:seq``. Numbers are never reused, also after ``clear()`` deleted the
  version keys, so a token can never match a version that was deleted and made again.
- ``{tag}:epoch`` — incremented by ``clear()`` (and expires once no fill can be in flight); a
  cluster has one per group, and ``clear()`` bumps them all.

A hit is one ``GET`` of the value; a miss also reads version and epoch (one ``MGET``) before
the store is read, and the fill that follows is a small Lua script that writes only if version
and epoch are still what the lookup saw. So a
process whose read started before another process's write can never put the old value back —
the stale-fill guard works across processes, not only inside one.

Write-through is guarded the same way. A writer reads version and epoch *before* its write goes
to the store (:meth:`RedisCache.write_token`); after the commit, one script sets the value only
if neither moved, and otherwise deletes it — either way it bumps the version. Two writers of one
bot can reach Redis in the opposite order of their commits (a reply delayed, a task paused);
whichever comes second finds the version moved and deletes, so Redis never keeps the value of
the earlier commit: the next read takes the store's value. Deletes and clears need no token:
forgetting is always safe.

Failures of Redis surface as :class:`~tiered_registry.errors.BackendUnavailableError`, which the
:class:`~tiered_registry.TieredBackend` counts and skips; the timeouts and retry policy are explicit
(see :mod:`tiered_registry.redis_client`) so a dead Redis costs a bounded time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeAlias

import redis.asyncio as aredis

from ..batching import DEFAULT_MAX_BATCH, Batcher, check_batch_size
from ..codec import CodecError, DecodeCache, decode_registration, encode_registration
from ..errors import ConfigurationError
from ..keyspace import CLUSTER_GROUPS, KeySpace
from ..models import Registration
from ..redis_client import (
    is_cluster,
    is_cluster_source,
    make_client,
    map_redis_errors,
    redact_url,
    validate_namespace,
)
from .base import ABSENT, CacheTier, Lookup, check_seconds

__all__ = ["RedisCache"]

logger = logging.getLogger(__name__)

_MISSING: Final = b"null"
_FILL_IF_UNCHANGED: Final = """
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] and (redis.call('GET', KEYS[3]) or '') == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"""
# Both write scripts end by giving the key a new version. KEYS: value, version, epoch, seq.
_NEW_VERSION: Final = """
local version = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[1])
redis.call('SET', KEYS[2], version, 'PX', ARGV[1])
"""
# ARGV: version ttl ms, then the version and epoch seen before the commit, payload, ttl ms. Sets
# the value if neither moved since, deletes it otherwise.
_PUT_IF_UNCHANGED: Final = (
    """
local written = 0
if (redis.call('GET', KEYS[2]) or '') == ARGV[2] and (redis.call('GET', KEYS[3]) or '') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  written = 1
else
  redis.call('UNLINK', KEYS[1])
end
"""
    + _NEW_VERSION
    + "return written"
)
# Many fills in one call. KEYS: the epoch, then value and version of each bot. ARGV, four per bot:
# the version and epoch its lookup saw, payload, ttl ms. Returns 1 or 0 per bot (written or not).
_FILL_MANY_IF_UNCHANGED: Final = """
local epoch = redis.call('GET', KEYS[1]) or ''
local written = {}
for i = 1, (#KEYS - 1) / 2 do
  local a = (i - 1) * 4
  if (redis.call('GET', KEYS[2 * i + 1]) or '') == ARGV[a + 1] and epoch == ARGV[a + 2] then
    redis.call('SET', KEYS[2 * i], ARGV[a + 3], 'PX', ARGV[a + 4])
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
"""
# ARGV: version ttl ms.
_INVALIDATE: Final = "redis.call('UNLINK', KEYS[1])" + _NEW_VERSION


_Fill: TypeAlias = tuple[str, tuple[bytes, bytes], bytes, int]  # bot id, token, payload, ttl ms
_CLUSTER_CONCURRENCY: Final = 32
"""Script calls in flight at once on a cluster (which cannot pipeline scripts)."""


class RedisCache(CacheTier):
    """A Redis cache tier: ``RedisCache(url_or_client, ttl=300, namespace="tiered_registry")``."""

    name = "redis"

    def __init__(
        self,
        url_or_client: str | aredis.Redis,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 5.0,
        namespace: str = "tiered_registry",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retries: int = 0,
        decode_cache_size: int = 1024,
        batch_size: int = DEFAULT_MAX_BATCH,
    ) -> None:
        """``decode_cache_size``: how many recently read payloads keep their decoded (frozen)
        registration, keyed by the exact bytes — a repeated hit skips JSON parsing and freezing,
        and can never be stale (other bytes, other key). 0 turns it off.
        ``batch_size``: lookups (and fills) of different bots that arrive while one is in flight
        go out together, at most this many per round trip (one ``MGET``, one script call); a
        lone lookup is one ``GET``, sent at once. 1 turns batching off (see
        :mod:`tiered_registry.batching`)."""
        super().__init__()
        ttl = check_seconds(ttl, "RedisCache ttl")
        negative_ttl = check_seconds(negative_ttl, "RedisCache negative_ttl", zero_ok=True)
        for option, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
            check_seconds(value, f"RedisCache {option}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigurationError(f"RedisCache retries must be an int from 0 to 10, got {retries!r}")
        if (
            isinstance(decode_cache_size, bool)
            or not isinstance(decode_cache_size, int)
            or decode_cache_size < 0
        ):
            raise ConfigurationError(
                f"RedisCache decode_cache_size must be an int >= 0, got {decode_cache_size!r}"
            )
        self.namespace = validate_namespace(namespace)
        self.ttl = float(ttl)
        self.negative_ttl = float(negative_ttl)
        self._ttl_ms = max(1, int(self.ttl * 1000))
        self._negative_ttl_ms = int(self.negative_ttl * 1000)
        # A version must outlive any read in flight; long after the value itself is gone is fine.
        self._version_ttl_ms = max(10 * self._ttl_ms, 600_000)
        self._source = url_or_client
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._retries = retries
        self._client: Any = None
        self._owned = False
        self._fill_script: Any = None
        self._put_script: Any = None
        self._invalidate_script: Any = None
        self._cluster = is_cluster_source(url_or_client)
        self._keys = KeySpace(self.namespace, CLUSTER_GROUPS if self._cluster else 1)
        self._epoch_keys = [f"{tag}:epoch" for tag in self._keys.tags]
        self._seq_keys = [f"{tag}:seq" for tag in self._keys.tags]
        self._value_key: Callable[[str], str]
        self._version_key: Callable[[str], str]
        if self._keys.groups == 1:  # a single Redis: no hashing on the read path
            self._value_key = f"{self._keys.tags[0]}:c:".__add__
            self._version_key = f"{self._keys.tags[0]}:v:".__add__
        else:
            tag = self._keys.tag
            self._value_key = lambda bot_id: f"{tag(bot_id)}:c:{bot_id}"
            self._version_key = lambda bot_id: f"{tag(bot_id)}:v:{bot_id}"
        self._warned_corrupt = False
        self._decode = DecodeCache(decode_registration, decode_cache_size)
        self.batch_size = check_batch_size(batch_size, "RedisCache batch_size")
        self._lookups: Batcher[str, tuple[Lookup, object]] = Batcher(
            self._lookup_one, self._lookup_many, max_batch=self.batch_size
        )
        self._fills: Batcher[_Fill, bool] = Batcher(
            self._fill_one, self._fill_many, max_batch=self.batch_size
        )
        self._fill_many_script: Any = None
        self._mget: Callable[[list[str]], Awaitable[list[bytes | None]]]

    def __repr__(self) -> str:
        source = redact_url(self._source) if isinstance(self._source, str) else type(self._source).__name__
        return f"RedisCache({source!r}, ttl={self.ttl}, namespace={self.namespace!r})"

    def invalidation_source(self) -> tuple[Any, str] | None:
        return self._source, self.namespace

    async def initialize(self) -> None:
        if self._client is None:
            self._client, self._owned = make_client(
                self._source,
                socket_timeout=self._socket_timeout,
                connect_timeout=self._connect_timeout,
                retries=self._retries,
            )
            self._fill_script = self._client.register_script(_FILL_IF_UNCHANGED)
            self._fill_many_script = self._client.register_script(_FILL_MANY_IF_UNCHANGED)
            self._put_script = self._client.register_script(_PUT_IF_UNCHANGED)
            self._invalidate_script = self._client.register_script(_INVALIDATE)
            # A cluster client's MGET must stay in one slot; its mget_nonatomic splits by slot.
            self._mget = self._client.mget_nonatomic if is_cluster(self._client) else self._client.mget

    async def check(self) -> None:
        """One ``PING``: :class:`~tiered_registry.BackendUnavailableError` if Redis cannot be reached."""
        async with map_redis_errors("RedisCache check"):
            await self._client.ping()

    async def close(self) -> None:
        await self._lookups.close()
        await self._fills.close()
        client, self._client = self._client, None
        if client is not None and self._owned:
            await client.aclose()

    # ---- CacheTier ------------------------------------------------------------------------------

    async def lookup(self, bot_id: str) -> tuple[Lookup, object]:
        return await self._lookups.load(bot_id)

    @property
    def batch_stats(self) -> dict[str, dict[str, int]]:
        """Round trips of lookups and fills: lone ones, batches and the keys they held."""
        return {"lookups": self._lookups.stats.as_dict(), "fills": self._fills.stats.as_dict()}

    async def _lookup_one(self, bot_id: str) -> tuple[Lookup, object]:
        """A lone lookup: one ``GET``; on a miss, one ``MGET`` of the fill token."""
        async with map_redis_errors("RedisCache lookup"):
            value = await self._client.get(self._value_key(bot_id))
        if value == _MISSING:
            self.stats.hits += 1
            return ABSENT, None
        if value is not None:
            try:
                record = self._decode(value)
            except CodecError as exc:
                self._note_corrupt(bot_id, exc)  # a miss: the fill that follows repairs it
            else:
                self.stats.hits += 1
                return record, None
        self.stats.misses += 1
        return None, await self._fill_token(bot_id)

    async def _fill_token(self, bot_id: str) -> tuple[bytes, bytes]:
        """Version and epoch as they are now, before the caller reads the store: the fill is
        refused if either has moved since (a write, or a clear, happened in between).

        Read only on a miss, so that a hit is one ``GET``, as cheap as a raw read of the value.
        Reading it after the ``GET`` is safe: a write bumps the version only after the store
        committed, so a token that already shows the write comes with a store read that sees it.
        """
        async with map_redis_errors("RedisCache lookup"):
            version, epoch = await self._client.mget(
                self._version_key(bot_id), self._epoch_keys[self._keys.group(bot_id)]
            )
        return version or b"", epoch or b""

    async def _lookup_many(self, bot_ids: list[str]) -> list[tuple[Lookup, object]]:
        """A batch: one ``MGET`` of the values; if some miss, one more of their versions and the
        epoch (as a lone lookup does: a cache tier mostly hits, so hits carry nothing extra)."""
        async with map_redis_errors("RedisCache lookup"):
            values = await self._mget([self._value_key(b) for b in bot_ids])
        stats = self.stats
        results: list[tuple[Lookup, object]] = []
        missed: list[int] = []
        for i, value in enumerate(values):
            if value == _MISSING:
                stats.hits += 1
                results.append((ABSENT, None))
                continue
            if value is not None:
                try:
                    record = self._decode(value)
                except CodecError as exc:
                    self._note_corrupt(bot_ids[i], exc)
                else:
                    stats.hits += 1
                    results.append((record, None))
                    continue
            stats.misses += 1
            missed.append(i)
            results.append((None, None))
        if missed:
            tokens = await self.write_tokens([bot_ids[i] for i in missed])
            for i, token in zip(missed, tokens, strict=True):
                results[i] = (None, token)
        return results

    async def fill(self, bot_id: str, record: Registration | None, token: object) -> None:
        if record is None and self._negative_ttl_ms <= 0:
            return
        assert isinstance(token, tuple)
        payload = _MISSING if record is None else encode_registration(record)
        ttl_ms = self._ttl_ms if record is not None else self._negative_ttl_ms
        if await self._fills.load((bot_id, token, payload, ttl_ms)):
            self.stats.fills += 1

    async def _fill_one(self, fill: _Fill) -> bool:
        bot_id, (version, epoch), payload, ttl_ms = fill
        keys = [
            self._value_key(bot_id),
            self._version_key(bot_id),
            self._epoch_keys[self._keys.group(bot_id)],
        ]
        async with map_redis_errors("RedisCache fill"):
            return bool(await self._fill_script(keys=keys, args=[version, epoch, payload, ttl_ms]))

    async def _fill_many(self, fills: list[_Fill]) -> list[bool]:
        """Fills of many bots in one script call per group (one on a single Redis), each guarded
        by its own token."""
        groups = self._keys.by_group([fill[0] for fill in fills])
        calls = []
        for group, positions in groups.items():
            keys = [self._epoch_keys[group]]
            args: list[bytes | int] = []
            for position in positions:
                bot_id, (version, epoch), payload, ttl_ms = fills[position]
                keys += (self._value_key(bot_id), self._version_key(bot_id))
                args += (version, epoch, payload, ttl_ms)
            calls.append(self._fill_many_script(keys=keys, args=args))
        async with map_redis_errors("RedisCache fill"):
            replies = await _bounded_gather(calls)
        written = [False] * len(fills)
        for positions, reply in zip(groups.values(), replies, strict=True):
            for position, flag in zip(positions, reply, strict=True):
                written[position] = bool(flag)
        return written

    async def write_token(self, bot_id: str) -> tuple[bytes, bytes]:
        return await self._fill_token(bot_id)

    async def put(self, bot_id: str, record: Registration, token: object) -> None:
        if token is None:  # no token could be taken before the commit: forgetting is safe
            await self.invalidate(bot_id)
            return
        assert isinstance(token, tuple)
        version, epoch = token
        args = [self._version_ttl_ms, version, epoch, encode_registration(record), self._ttl_ms]
        async with map_redis_errors("RedisCache write"):
            written = await self._put_script(keys=self._write_keys(bot_id), args=args)
        if written:
            self.stats.fills += 1
        else:
            self.stats.invalidations += 1

    async def write_tokens(self, bot_ids: Sequence[str]) -> list[object]:
        """Versions and epochs of many bots, one ``MGET`` per 1,000 (split by slot on a cluster)."""
        tokens: list[object] = []
        for start in range(0, len(bot_ids), 1000):
            chunk = bot_ids[start : start + 1000]
            groups = [self._keys.group(b) for b in chunk]
            seen = list(dict.fromkeys(groups))
            keys = [self._version_key(b) for b in chunk]
            keys += (self._epoch_keys[g] for g in seen)
            async with map_redis_errors("RedisCache lookup"):
                values = await self._mget(keys)
            epochs = dict(zip(seen, values[len(chunk) :], strict=True))
            tokens += [
                (version or b"", epochs[g] or b"")
                for version, g in zip(values[: len(chunk)], groups, strict=True)
            ]
        return tokens

    async def put_many(self, puts: Sequence[tuple[str, Registration | None, object]]) -> None:
        """Each bot's guarded put (as :meth:`put`; record ``None``: :meth:`invalidate`), in
        pipelines of 1,000: one round trip each."""
        for start in range(0, len(puts), 1000):
            chunk = puts[start : start + 1000]
            async with map_redis_errors("RedisCache write"):
                if self._cluster:  # a cluster cannot pipeline scripts: a few calls at a time
                    written = await _bounded_gather([self._put_call(put, None) for put in chunk])
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for put in chunk:
                            await self._put_call(put, pipe)
                        written = await pipe.execute()
            for (_, record, token), result in zip(chunk, written, strict=True):
                if record is not None and token is not None and result:
                    self.stats.fills += 1
                else:
                    self.stats.invalidations += 1

    def _put_call(self, put: tuple[str, Registration | None, object], pipe: Any) -> Awaitable[Any]:
        """One bot's guarded put or invalidation (queued on ``pipe``, or sent if it is None)."""
        bot_id, record, token = put
        keys = self._write_keys(bot_id)
        if record is None or token is None:  # forgetting is always safe
            return self._invalidate_script(keys=keys, args=[self._version_ttl_ms], client=pipe)  # type: ignore[no-any-return]
        assert isinstance(token, tuple)
        version, epoch = token
        args = [self._version_ttl_ms, version, epoch, encode_registration(record), self._ttl_ms]
        return self._put_script(keys=keys, args=args, client=pipe)  # type: ignore[no-any-return]

    async def invalidate(self, bot_id: str) -> None:
        """Delete the value and give the key a new version (in-flight fills and puts are refused)."""
        async with map_redis_errors("RedisCache write"):
            await self._invalidate_script(keys=self._write_keys(bot_id), args=[self._version_ttl_ms])
        self.stats.invalidations += 1

    def _write_keys(self, bot_id: str) -> list[str]:
        group = self._keys.group(bot_id)
        return [
            self._value_key(bot_id),
            self._version_key(bot_id),
            self._epoch_keys[group],
            self._seq_keys[group],
        ]

    async def clear(self) -> None:
        """Bump the epoch (refuses in-flight fills), then unlink this namespace's keys in batches."""
        async with map_redis_errors("RedisCache clear"):
            # The epoch only has to outlive the fills in flight now; then the namespace is empty.
            # (On a cluster, one transaction per group: a MULTI cannot span slots.)
            for epoch_key in self._epoch_keys:
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.incr(epoch_key)
                    pipe.pexpire(epoch_key, self._version_ttl_ms)
                    await pipe.execute()
            for suffix in (":c:*", ":v:*"):
                batch: list[bytes] = []
                # (A cluster client's scan_iter walks every master.)
                async for key in self._client.scan_iter(match=self._keys.pattern(suffix), count=500):
                    batch.append(key)
                    if len(batch) >= 500:
                        await self._client.unlink(*batch)
                        batch = []
                if batch:
                    await self._client.unlink(*batch)
        self.stats.invalidations += 1

    def _note_corrupt(self, bot_id: str, exc: Exception) -> None:
        self.stats.errors += 1
        if not self._warned_corrupt:
            self._warned_corrupt = True
            logger.warning(
                "RedisCache %s: undecodable value for bot %r treated as a miss (%s); "
                "further ones are counted in stats() only",
                self.namespace,
                bot_id,
                exc,
            )


async def _bounded_gather(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await ``calls`` with at most :data:`_CLUSTER_CONCURRENCY` in flight, results in order
    (one call, the single-Redis case, is just awaited)."""
    if len(calls) == 1:
        return [await calls[0]]
    results: list[Any] = []
    try:
        for start in range(0, len(calls), _CLUSTER_CONCURRENCY):
            results += await asyncio.gather(*calls[start : start + _CLUSTER_CONCURRENCY])
    finally:
        for call in calls[len(results) + _CLUSTER_CONCURRENCY :]:
            if inspect.iscoroutine(call):
                call.close()  # never started: no "was never awaited" warning
    return results
