"""Memory per cached bot, and the process's RSS: what a worker pays for each bot its local tier holds.

The yardstick is the plain tree ``orjson.loads`` builds for the same config (dicts, lists, strings,
numbers): a cache cannot hold a bot in less without another representation. Both are measured
with :mod:`tracemalloc` (Python allocations, exact and independent of the allocator's pools), in
the same process, so their ratio says what the cache adds: the record, its timestamps, the tier's
dict slots and LRU/TTL index, the read-only copies.
"""

from __future__ import annotations

import gc
import resource
import sys
import tracemalloc
from collections.abc import Sequence

import orjson

from ..base import BackendBase

__all__ = ["cached_bytes_per_bot", "peak_rss_bytes", "plain_tree_bytes", "rss_bytes"]

_READ_CHUNK = 500  # ids per get_many while filling: one batched store read each


def rss_bytes() -> int | None:
    """The process's resident set size now (``/proc/self/statm``; ``None`` where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS;
    never below the current RSS, which the kernel counts a little differently)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak if sys.platform == "darwin" else peak * 1024, rss_bytes() or 0)


class _Traced:
    """Bytes allocated (and still alive) between ``start`` and ``stop``, after a full collection;
    works whether or not tracemalloc was already tracing (then it is left on)."""

    def __init__(self) -> None:
        self._owner = not tracemalloc.is_tracing()
        self._base = 0

    def start(self) -> None:
        gc.collect()
        if self._owner:
            tracemalloc.start(1)
        self._base = tracemalloc.get_traced_memory()[0]

    def stop(self) -> int:
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - self._base
        if self._owner:
            tracemalloc.stop()
        return used


def plain_tree_bytes(payloads: Sequence[bytes]) -> float:
    """Bytes per payload of the trees ``orjson.loads`` builds (kept alive together, as a cache would)."""
    traced = _Traced()
    traced.start()
    trees = [orjson.loads(payload) for payload in payloads]
    used = traced.stop() - sys.getsizeof(trees)
    del trees
    return used / len(payloads)


async def cached_bytes_per_bot(backend: BackendBase, ids: Sequence[str]) -> float:
    """Bytes per bot that reading ``ids`` through ``backend`` (batched ``get_many``) leaves allocated.

    With an empty local tier in front of a store, that is what caching one bot costs, everything
    included (record, frozen config, tier bookkeeping, whatever the store keeps); pending accesses
    are written first, so the access recorder's transient batch is not counted.
    """
    traced = _Traced()
    traced.start()
    for start in range(0, len(ids), _READ_CHUNK):
        await backend.get_many(ids[start : start + _READ_CHUNK])
    await backend.flush_accesses()
    return traced.stop() / len(ids)
