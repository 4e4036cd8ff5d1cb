"""Bulk load (``backend.load(items)``): 10^5-10^6 registrations in chunks, validated as they go.

Why a path of its own rather than one big ``register_many``: that call returns a record per bot
and holds every validated config at once (~5 KB per 2 KB config), and one statement of a million
rows is one transaction of gigabytes. ``load`` reads ``items`` once (a generator of JSON lines is
fine), validates ``chunk_size`` items at a time, and writes each chunk with one write call
(PostgreSQL: one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT`` without ``RETURNING``;
Redis: the store's script; a stack: through its tiers).

Both cores work: each chunk being written is a task (at most :data:`_IN_FLIGHT` at once, each on
its own connection), and the next chunk is validated meanwhile, yielding to the event loop every
:data:`_CHECK_STEP` items so that the writes' bytes keep flowing to the server. A store that
writes JSON text (PostgreSQL) gets each config checked by
:func:`~tiered_registry.validation.validate_json`, without the frozen copy: ~30 µs per 2 KB
config instead of ~55 µs, below the server's ~40 µs per row.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .codec import dumps
from .errors import InvalidInputError
from .frozen import FrozenDict
from .validation import validate_metadata, validate_status

if TYPE_CHECKING:
    from .base import BackendBase

__all__ = ["DEFAULT_LOAD_CHUNK", "JsonItem", "RegisterItem", "load"]

RegisterItem = tuple[str, FrozenDict, str, FrozenDict | None]
"""One validated item of ``register_many``: bot id, config, status, metadata (None keeps the stored)."""
JsonItem = tuple[str, str, str, str | None]
"""One validated item of a load into a store that takes JSON text: bot id, config JSON, status,
metadata JSON (None keeps the stored)."""

DEFAULT_LOAD_CHUNK: Final = 1000
"""Items per write of :func:`load` unless the backend says otherwise (``_LOAD_CHUNK``)."""
_CHECK_STEP: Final = 500  # items validated between two yields to the event loop
# Chunks being written at once. Two: the server's work per row (~40 µs) exceeds the validation's
# (~30 µs), and a second connection lets the server use the second core. Order does not matter:
# a bot id may occur once per call.
_IN_FLIGHT: Final = 2


async def load(
    backend: BackendBase,
    items: Mapping[str, Mapping[str, Any]] | Iterable[tuple[Any, ...]],
    *,
    status: str = "active",
    metadata: Mapping[str, Any] | None = None,
    chunk_size: int = DEFAULT_LOAD_CHUNK,
    progress: Callable[[int], object] | None = None,
) -> int:
    """What :meth:`BackendBase.load <tiered_registry.base.BackendBase.load>` does (see there)."""
    from .base import check_items_part, check_json_part, raw_items  # base imports this module

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInputError("chunk_size", f"must be a positive int, got {chunk_size!r}")
    default_status = validate_status(status)
    default_metadata = None if metadata is None else validate_metadata(metadata)
    default_json = None if default_metadata is None else dumps(default_metadata).decode()
    as_json = backend._LOADS_JSON
    source = iter(raw_items(items))
    backend._check_open()
    seen: dict[str, int] = {}
    checked_count = 0
    written = 0
    in_flight: list[tuple[asyncio.Future[None], int]] = []  # oldest first: (write, its size)

    async def finish_oldest() -> None:
        nonlocal written
        write, size = in_flight[0]
        await write
        del in_flight[0]
        written += size
        if progress is not None:
            progress(size)

    try:
        while chunk := list(itertools.islice(source, chunk_size)):
            checked: list[Any] = []
            for step in range(0, len(chunk), _CHECK_STEP):
                part = chunk[step : step + _CHECK_STEP]
                if as_json:
                    checked += check_json_part(part, checked_count, default_status, default_json, seen)
                else:
                    checked += check_items_part(part, checked_count, default_status, default_metadata, seen)
                checked_count += len(part)
                await asyncio.sleep(0)  # the writes in flight send their bytes meanwhile
            while len(in_flight) >= _IN_FLIGHT:
                await finish_oldest()
            write = backend._load_json_chunk(checked) if as_json else backend._load_chunk(checked)
            in_flight.append((asyncio.ensure_future(write), len(checked)))
            await asyncio.sleep(0)  # let it start sending before the next chunk is validated
        while in_flight:
            await finish_oldest()
    finally:
        if in_flight:
            # Validation or a write failed (or we were cancelled) while chunks were being
            # written: let those writes finish rather than cancel them (a cancelled write's
            # outcome is unknown); the error raised is the first one.
            await asyncio.wait([task for task, _ in in_flight])
            for task, _ in in_flight:
                if not task.cancelled():
                    task.exception()  # retrieved
    return written
