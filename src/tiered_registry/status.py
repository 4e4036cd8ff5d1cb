"""What a :class:`~tiered_registry.TieredBackend` reports about itself: ``stats()`` and ``health()``.

Both read counters and states the stack keeps anyway, when called: nothing on the hot path.
``stats()`` is for dashboards (plain ints; :mod:`tiered_registry.metrics` exposes them to
Prometheus), ``health()`` for readiness checks and operators (which part is up, degraded or down,
since when). A mixin, so that the stack's own module keeps to reading and writing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .circuit import TierGuard
from .owed import OwedInvalidations
from .tiers.base import CacheTier
from .tiers.local import NO_ENTRIES, Entry, LocalCache

if TYPE_CHECKING:
    from .coherence import InvalidationChannel

__all__ = ["StackStatus"]


class StackStatus:
    """``stats()`` and ``health()`` of a stack; the attributes below are the stack's own."""

    _names: list[str]
    _tiers: list[CacheTier]
    _local: LocalCache | None
    _guards: dict[int, TierGuard]
    _coherence: InvalidationChannel | None
    _owed: OwedInvalidations
    _hot: dict[str, Entry]
    _hot_hits: int
    _store_reads: int
    _store_errors: int
    _store_up: bool
    _store_since: float
    _store_error: str | None
    _started_at: float

    if TYPE_CHECKING:

        @property
        def is_open(self) -> bool: ...  # BackendBase's (it comes first in TieredBackend's bases)

    @property
    def channel(self) -> InvalidationChannel | None:
        """The cross-process invalidation channel, or ``None`` (a stack without Redis, or
        ``coherence=False``). Read-only use: its counters and ``lag`` histogram."""
        return self._coherence

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters as plain dicts of ints, read when called (nothing is added to the hot path).

        One dict per tier, nearest first, under the tier's name: ``hits``, ``misses``, ``fills``,
        ``evictions``, ``expirations``, ``invalidations``, ``errors``, ``busy`` (reads that skipped a
        shared tier whose connection pool stayed busy); the local tier also has ``entries`` (how many
        it holds now) and, with ``max_bytes``, ``bytes`` (their estimated size) and ``too_large``
        (entries not cached: bigger than ``max_bytes`` alone); each shared tier ``circuit_open`` (1
        while its breaker is open or half-open), ``circuit_opened`` (times it opened), ``owed``
        (invalidations owed to it: bots, or 1 for a clear) and ``owed_everything`` (1 if a clear is
        owed). Then ``store``: ``reads``, ``errors``; and with an invalidation channel, ``channel``:
        ``published``, ``received``, ``publish_errors``, ``drops``, ``up`` (1 while subscribed),
        ``unannounced`` (invalidations not published yet: owed to the other processes).
        """
        out: dict[str, dict[str, int]] = {}
        for name, tier in zip(self._names, self._tiers, strict=True):
            counters = tier.stats.as_dict()
            if tier is self._local:
                counters["hits"] += self._hot_hits
                counters["entries"] = len(self._local.entries)
                if self._local.max_bytes is not None:
                    counters["bytes"] = self._local.bytes_used or 0
                    counters["too_large"] = self._local.too_large
            else:
                guard = self._guards[id(tier)]
                counters["circuit_open"] = int(guard.is_open)
                counters["circuit_opened"] = guard.opened
                counters["owed"] = guard.owed_keys + guard.owes_everything
                counters["owed_everything"] = int(guard.owes_everything)
            out[name] = counters
        out["store"] = {"reads": self._store_reads, "errors": self._store_errors}
        channel = self._coherence
        if channel is not None:
            out["channel"] = {
                "published": channel.published,
                "received": channel.received,
                "publish_errors": channel.publish_errors,
                "drops": channel.drops,
                "up": int(channel.is_up),
                "unannounced": self._owed.unannounced,
            }
        return out

    def health(self) -> dict[str, Any]:
        """Is the stack working as configured, and if not, which part is not (JSON-ready).

        ``{"status": "up" | "degraded" | "down", "tiers": {name: {...}}, "store": {...},
        "channel": {...} | None}``. Each part has ``status`` and ``since`` (Unix seconds of its
        last change of status). A shared tier (Redis): ``down`` while its breaker is open (or
        half-open), ``degraded`` while it is owed invalidations or failed since its last success,
        with ``breaker``, ``owed`` and ``owed_everything``. The local tier: ``degraded`` while it is
        bypassed (the channel is down). The store: ``down`` if its last call failed (``error``). The
        channel: ``up`` while subscribed (publishing only: while its PUBLISHes go through), with
        ``drops`` and ``unannounced``. Overall: ``down`` if the store is down or the stack is not
        open, ``degraded`` if any other part is not up, else ``up``.
        """
        channel = self._coherence
        tiers: dict[str, dict[str, Any]] = {}
        for name, tier in zip(self._names, self._tiers, strict=True):
            if tier is self._local:
                bypassed = self._hot is NO_ENTRIES
                since = channel.since if channel is not None and channel.listening else self._started_at
                tiers[name] = {
                    "status": "degraded" if bypassed else "up",
                    "since": since,
                    "bypassed": bypassed,
                }
            else:
                guard = self._guards[id(tier)]
                tiers[name] = {
                    "status": guard.status,
                    "since": guard.since,
                    "breaker": guard.state,
                    "owed": guard.owed_keys + guard.owes_everything,
                    "owed_everything": guard.owes_everything,
                }
        store = {
            "status": "up" if self._store_up else "down",
            "since": self._store_since,
            "error": self._store_error,
        }
        channel_health: dict[str, Any] | None = None
        if channel is not None:
            channel_health = {
                "status": channel.status,
                "since": channel.since,
                "listening": channel.listening,
                "drops": channel.drops,
                "unannounced": self._owed.unannounced,
            }
        parts = [*tiers.values(), *([channel_health] if channel_health is not None else [])]
        if not self.is_open or not self._store_up:
            status = "down"
        elif any(part["status"] != "up" for part in parts):
            status = "degraded"
        else:
            status = "up"
        return {"status": status, "tiers": tiers, "store": store, "channel": channel_health}
