"""How ``RedisBackend`` keeps a record: its hash fields, the Lua scripts that write them, the decoding.

A record is a HASH of :data:`FIELDS`: ``config`` and ``metadata`` as JSON objects (the library's
codec), ``status``, and three times as :func:`stamp` strings. The write side (:class:`Scripts`)
and the read side (:func:`parse_record`) of that format live together so they cannot drift apart.

Why the writes are Lua scripts: each is one round trip and atomic (record and indexes always
agree), and each starts with the write that can fail on a foreign value under our key
(``WRONGTYPE``), so a failure leaves nothing half-written — which MULTI/EXEC does not promise.

Times are fixed-width so that string order is time order, also in Lua: the access-time script
compares them to move ``last_accessed_at`` only forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from redis.exceptions import ResponseError

from ..codec import CodecError, loads
from ..frozen import FrozenDict, freeze
from ..models import Registration
from ..validation import STATUSES

__all__ = [
    "FIELDS",
    "STATUS_ORDER",
    "Scripts",
    "json_object",
    "load_object",
    "parse_record",
    "stamp",
    "wrong_type",
]

STATUS_ORDER: Final = tuple(sorted(STATUSES))
FIELDS: Final = ("config", "status", "metadata", "created_at", "updated_at", "last_accessed_at")
_TOUCH_BATCH: Final = 1000  # records per access-flush script call (bounds the time Redis is busy)


def stamp(moment: datetime) -> str:
    """Fixed-width ISO-8601 in UTC (``isoformat`` alone drops ``.000000``, breaking string order)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def wrong_type(exc: BaseException) -> bool:
    """A foreign value of another type under our key (``WRONGTYPE``): a corrupt record, not a bug."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def load_object(raw: bytes | None) -> dict[str, Any]:
    """Decode a stored config/metadata; anything but a JSON object is corrupt."""
    if raw is None:
        raise CodecError("field is missing")
    value = loads(raw)
    if type(value) is not dict:
        raise CodecError(f"expected a JSON object, got {type(value).__name__}")
    return value


def json_object(raw: bytes | None) -> FrozenDict:
    """A stored config/metadata, frozen once here so it can be handed out without copies."""
    return freeze(load_object(raw))


def parse_record(bot_id: str, row: Sequence[bytes | None]) -> Registration | None:
    """An HMGET of :data:`FIELDS` as a Registration; None when there is no record.

    A corrupt record raises :class:`~tiered_registry.codec.CodecError` or ``ValueError``
    (``UnicodeDecodeError`` is one).
    """
    config_raw, status, metadata_raw, created, updated, accessed = row
    if config_raw is None and status is None and created is None:
        return None  # no such record (or only a stray field: still nothing to return)
    if status is None or created is None or updated is None or accessed is None:
        raise CodecError("a field is missing")
    status_text = status.decode()
    if status_text not in STATUSES:
        raise CodecError(f"unknown status {status_text!r}")
    return Registration(
        bot_id,
        json_object(config_raw),
        status_text,
        json_object(metadata_raw),
        datetime.fromisoformat(created.decode()),
        datetime.fromisoformat(updated.decode()),
        datetime.fromisoformat(accessed.decode()),
    )


# KEYS: record, all, one set per status (STATUS_ORDER)
# ARGV: bot_id, config, status, index of its set in KEYS, now, metadata ('' keeps the stored one)
_REGISTER: Final = """
local key, id, now = KEYS[1], ARGV[1], ARGV[5]
redis.call('HSET', key, 'config', ARGV[2], 'status', ARGV[3], 'updated_at', now)
redis.call('HSETNX', key, 'created_at', now)
redis.call('HSETNX', key, 'last_accessed_at', now)
local keep = ARGV[6] == ''
if keep then
  redis.call('HSETNX', key, 'metadata', '{}')
else
  redis.call('HSET', key, 'metadata', ARGV[6])
end
redis.call('ZADD', KEYS[2], 0, id)
local own = tonumber(ARGV[4])
for i = 3, #KEYS do
  if i == own then redis.call('ZADD', KEYS[i], 0, id) else redis.call('ZREM', KEYS[i], id) end
end
if keep then
  return redis.call('HMGET', key, 'created_at', 'last_accessed_at', 'metadata')
end
return redis.call('HMGET', key, 'created_at', 'last_accessed_at')
"""
# Many registers in one atomic call (register_many), each as _REGISTER writes it.
# KEYS: all, one set per status (STATUS_ORDER), then the records; ARGV: now, how many records,
# then 5 per record: bot_id, config, status, index of its set in KEYS, metadata ('' keeps it).
# Every record key is checked first: a foreign value under one of them fails the call before
# anything is written. Returns per record: created_at, last_accessed_at, stored metadata.
_REGISTER_MANY: Final = """
local now, sets = ARGV[1], #KEYS - tonumber(ARGV[2])
for i = sets + 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a record')
  end
end
local out = {}
for n = 1, tonumber(ARGV[2]) do
  local key, a = KEYS[sets + n], 2 + (n - 1) * 5
  local id, status, own, metadata = ARGV[a + 1], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5]
  redis.call('HSET', key, 'config', ARGV[a + 2], 'status', status, 'updated_at', now)
  redis.call('HSETNX', key, 'created_at', now)
  redis.call('HSETNX', key, 'last_accessed_at', now)
  if metadata == '' then
    redis.call('HSETNX', key, 'metadata', '{}')
  else
    redis.call('HSET', key, 'metadata', metadata)
  end
  redis.call('ZADD', KEYS[1], 0, id)
  for i = 2, sets do
    if i == own then redis.call('ZADD', KEYS[i], 0, id) else redis.call('ZREM', KEYS[i], id) end
  end
  out[n] = redis.call('HMGET', key, 'created_at', 'last_accessed_at', 'metadata')
end
return out
"""
# Batched point reads: one command for many records (redis-py packs one command far faster than
# a pipeline of one HMGET per key). KEYS: records; ARGV: the fields (_READ_RECORDS). Per key: its
# fields (HMGET) or its config (HGET), 0 when a foreign value sits under it (WRONGTYPE).
_READ_RECORDS: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.pcall('HMGET', key, unpack(ARGV))
  if v.err then out[i] = 0 else out[i] = v end
end
return out
"""
_READ_CONFIGS: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.pcall('HGET', key, 'config')
  if type(v) == 'table' and v.err then out[i] = 0 else out[i] = v end
end
return out
"""
# KEYS: record, the inactive set, the other status sets; ARGV: bot_id, now
_DEACTIVATE: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'inactive', 'updated_at', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""
# KEYS: record, all, the status sets; ARGV: bot_id
_UNREGISTER: Final = """
local existed = redis.call('UNLINK', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return existed
"""
# KEYS: records; ARGV[i]: the access time of KEYS[i]. HGET is false for a deleted record: never
# recreated.
_TOUCH: Final = """
local n = 0
for i, key in ipairs(KEYS) do
  local old = redis.call('HGET', key, 'last_accessed_at')
  if old and old < ARGV[i] then
    redis.call('HSET', key, 'last_accessed_at', ARGV[i])
    n = n + 1
  end
end
return n
"""


class Scripts:
    """The write scripts, registered on ``client``, for the keys of one namespace.

    ``bot_prefix`` + bot id is a record's key; ``all_key`` and ``status_keys`` (one per status)
    are the index sets. Driver errors propagate unchanged: the caller maps them.
    """

    def __init__(self, client: Any, bot_prefix: str, all_key: str, status_keys: Mapping[str, str]) -> None:
        self._bot_prefix = bot_prefix
        self._index_keys = [all_key, *(status_keys[s] for s in STATUS_ORDER)]
        self._deactivate_keys_tail = [
            status_keys["inactive"],
            *(status_keys[s] for s in STATUS_ORDER if s != "inactive"),
        ]
        self._register = client.register_script(_REGISTER)
        self._register_many = client.register_script(_REGISTER_MANY)
        self._read_records = client.register_script(_READ_RECORDS)
        self._read_configs = client.register_script(_READ_CONFIGS)
        self._deactivate = client.register_script(_DEACTIVATE)
        self._unregister = client.register_script(_UNREGISTER)
        self._touch = client.register_script(_TOUCH)

    @property
    def sources(self) -> tuple[str, ...]:
        """The Lua text of every script (to ``SCRIPT LOAD`` them ahead of the first call)."""
        scripts = (
            self._register,
            self._register_many,
            self._deactivate,
            self._unregister,
            self._touch,
            self._read_records,
            self._read_configs,
        )
        return tuple(s.script for s in scripts)

    async def register(
        self, bot_id: str, config: bytes, status: str, now: datetime, metadata: bytes | None
    ) -> list[bytes]:
        """Write the record and move its id to its status set (``metadata`` None keeps the stored one).

        Returns the stored ``created_at`` and ``last_accessed_at``, then, when ``metadata`` is
        None, the stored metadata.
        """
        keys = [self._bot_prefix + bot_id, *self._index_keys]
        args = [
            bot_id,
            config,
            status,
            STATUS_ORDER.index(status) + 3,
            stamp(now),
            b"" if metadata is None else metadata,
        ]
        row: list[bytes] = await self._register(keys=keys, args=args)
        return row

    async def register_many(
        self, items: Sequence[tuple[str, bytes, str, bytes | None]], now: datetime
    ) -> list[list[bytes]]:
        """Write every record (``(bot_id, config, status, metadata)``, as :meth:`register` does) in
        one atomic script call: all or nothing. Returns, per item, the stored ``created_at``,
        ``last_accessed_at`` and metadata."""
        keys = [*self._index_keys, *(self._bot_prefix + bot_id for bot_id, _, _, _ in items)]
        args: list[Any] = [stamp(now), len(items)]
        for bot_id, config, status, metadata in items:
            own = STATUS_ORDER.index(status) + 2
            args += [bot_id, config, status, own, b"" if metadata is None else metadata]
        rows: list[list[bytes]] = await self._register_many(keys=keys, args=args)
        return rows

    async def read(self, bot_ids: Sequence[str], *, configs: bool) -> list[Any]:
        """In one command, per id: its :data:`FIELDS` (an HMGET row; ``configs``: its config, or
        None), or ``0`` when a foreign value sits under its key."""
        keys = [self._bot_prefix + bot_id for bot_id in bot_ids]
        if configs:
            rows: list[Any] = await self._read_configs(keys=keys)
        else:
            rows = await self._read_records(keys=keys, args=FIELDS)
        return rows

    async def deactivate(self, bot_id: str, now: datetime) -> bool:
        """Mark an existing record inactive; False when there is none."""
        keys = [self._bot_prefix + bot_id, *self._deactivate_keys_tail]
        return bool(await self._deactivate(keys=keys, args=[bot_id, stamp(now)]))

    async def unregister(self, bot_id: str) -> bool:
        """Delete the record and its index entries; False when there was no record."""
        keys = [self._bot_prefix + bot_id, *self._index_keys]
        return bool(await self._unregister(keys=keys, args=[bot_id]))

    async def touch(self, times: Mapping[str, datetime]) -> None:
        """Set each bot's ``last_accessed_at`` to its time in ``times`` on the records that still
        exist and were accessed earlier."""
        prefix = self._bot_prefix
        items = list(times.items())
        for start in range(0, len(items), _TOUCH_BATCH):
            chunk = items[start : start + _TOUCH_BATCH]
            keys = [prefix + bot_id for bot_id, _ in chunk]
            await self._touch(keys=keys, args=[stamp(at) for _, at in chunk])
