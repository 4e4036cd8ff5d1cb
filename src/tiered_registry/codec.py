"""The one serializer of the library: JSON via orjson, shared by every Redis key and the local tier.

``encode_registration``/``decode_registration`` turn a whole :class:`Registration` into one
compact JSON document (what a cache tier stores under one key); ``dumps``/``loads`` are the plain
JSON functions the stores use for configs and metadata. Decoding freezes the containers once, so
a decoded config can be cached and shared as is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson

from .errors import RegistryError
from .models import Registration

__all__ = [
    "CodecError",
    "DecodeCache",
    "decode_registration",
    "dumps",
    "encode_registration",
    "loads",
]


class CodecError(RegistryError, ValueError):
    """Stored bytes could not be decoded (corrupt or foreign data under our key)."""


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return orjson.dumps(value)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :class:`CodecError` on bad input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"stored value is not valid JSON: {exc}") from exc


def encode_registration(record: Registration) -> bytes:
    """One JSON document holding every field (timestamps as ISO-8601 with offset)."""
    return orjson.dumps(
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


def decode_registration(data: bytes | bytearray | memoryview | str) -> Registration:
    """Inverse of :func:`encode_registration`; raises :class:`CodecError` on anything malformed."""
    doc = loads(data)
    try:
        return Registration.from_trusted(
            doc["bot_id"],
            doc["config"],
            doc["status"],
            doc["metadata"],
            datetime.fromisoformat(doc["created_at"]),
            datetime.fromisoformat(doc["updated_at"]),
            datetime.fromisoformat(doc["last_accessed_at"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CodecError(f"stored registration is malformed: {exc!r}") from exc


_Decoded = TypeVar("_Decoded")


class DecodeCache(Generic[_Decoded]):
    """Decode each distinct stored payload once: ``cache(raw)`` = ``decode(raw)``, remembered.

    Keyed by the exact stored bytes (or text), so a hit can never be stale: other content is
    another key. A bot read again and again from Redis or PostgreSQL then costs a hash of its
    payload instead of JSON parsing plus freezing every nested container (which is most of a
    store's overhead over the raw round trip). Bounded LRU (``functools.lru_cache``: its C
    implementation costs ~0.1 us a hit, where ``cachetools.LRUCache.get`` cost ~1.8 us on every
    read); ``maxsize=0`` turns it off. Decode errors propagate and are not remembered.
    """

    def __init__(self, decode: Callable[[Any], _Decoded], maxsize: int = 1024) -> None:
        self._call: Callable[[Any], _Decoded] = (
            functools.lru_cache(maxsize=maxsize)(decode) if maxsize > 0 else decode
        )

    def __call__(self, raw: bytes | str) -> _Decoded:
        return self._call(raw)
