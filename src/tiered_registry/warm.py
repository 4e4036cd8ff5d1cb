"""Warm start: fill a new process's local tier with the bots most recently accessed anywhere.

After a deploy, a fresh process's local tier is empty and its first requests all miss (each a
Redis or store round trip). ``TieredBackend(preload=N)`` runs :func:`preload` in
``initialize()``: it asks the store for the ``N`` most recently accessed bot ids (the store's
``last_accessed_at``; PostgreSQL walks an index) and reads their records ``batch`` at a time
(the store's batched ``= ANY`` read, not an access), coldest first so that, if ``N`` exceeds the
tier's ``maxsize``, the LRU keeps the hottest.

Bounded in time: after ``timeout`` seconds it stops, keeps what it has loaded, and the stack
starts serving (a warm start must not turn into a slow or failed start). A store error stops it
the same way (logged): serving cold is better than not serving.

Coherent: each batch is read as one flight per bot (``TieredBackend._flights``), so a write or
an invalidation from another process arriving while the batch is read marks it stale and that
bot is not filled, exactly as for a read-through miss. Nothing is filled while the local tier is
bypassed (invalidation channel down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from .errors import RegistryError
from .flights import Flight

if TYPE_CHECKING:
    from .tiered import TieredBackend

__all__ = ["DEFAULT_PRELOAD_BATCH", "preload"]

DEFAULT_PRELOAD_BATCH: Final = 1000
"""Records per store read during a preload."""

logger = logging.getLogger(__name__)


async def preload(
    stack: TieredBackend, limit: int, seconds: float, batch: int = DEFAULT_PRELOAD_BATCH
) -> int:
    """Fill ``stack``'s local tier with up to ``limit`` recently accessed bots within ``seconds``
    (a budget, not an error: see the module notes); returns how many were filled."""
    local = stack._local
    if local is None or limit <= 0:
        return 0
    limit = min(limit, local.maxsize)
    started = time.perf_counter()
    filled = 0
    try:
        async with asyncio.timeout(seconds):
            ids = await stack._store._recently_accessed(limit)
            ids.reverse()  # coldest first: the hottest end up most recently used
            for start in range(0, len(ids), batch):
                filled += await _fill(stack, ids[start : start + batch])
    except TimeoutError:
        logger.warning("preload stopped after %.1f s (preload_timeout): %d bots loaded", seconds, filled)
    except RegistryError as exc:
        logger.warning("preload stopped by a store error after %d bots: %s", filled, exc)
    else:
        logger.info("preloaded %d bots in %.2f s", filled, time.perf_counter() - started)
    return filled


async def _fill(stack: TieredBackend, bot_ids: list[str]) -> int:
    """Read one batch from the store and fill the local tier with what no write overtook."""
    flights = stack._flights
    mine: dict[str, Flight] = {}
    for bot_id in bot_ids:
        if bot_id not in flights:  # (a read of it in flight fills it anyway)
            flights[bot_id] = mine[bot_id] = Flight()
    try:
        records = await stack._store._get_many(list(mine), touch=False)
    finally:
        for bot_id, flight in mine.items():
            if flights.get(bot_id) is flight:
                del flights[bot_id]
    local = stack._local
    if local is None or stack._hot is not local.entries:  # bypassed meanwhile: fill nothing
        return 0
    filled = 0
    for bot_id, flight in mine.items():
        record = records.get(bot_id)
        if record is not None and not flight.stale:
            local.set(bot_id, record)
            filled += 1
    return filled
