"""``CacheTier``: what a cache layer of a :class:`~tiered_registry.TieredBackend` must do.

A tier answers ``lookup`` with a registration, :data:`ABSENT` (a remembered miss: the bot is
known not to exist), or ``None`` (this tier does not know). Fills after a read carry the *token*
that the tier's own lookup returned, so a tier shared between processes (Redis) can refuse a fill
whose read started before a newer write or invalidation (a stale fill). Write-through puts carry
a token too, taken before the write went to the store, so that of two writers the one whose
commit came first can never overwrite the other's value in the tier (its put becomes an
invalidation).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, TypeAlias

from ..errors import BackendUnavailableError, ConfigurationError
from ..models import Registration

__all__ = ["ABSENT", "TIER_FAILURES", "CacheTier", "Lookup", "TierStats", "check_seconds"]

TIER_FAILURES: Final = (BackendUnavailableError, OSError, TimeoutError)
"""What a shared tier raises when it cannot be reached; the backend skips the tier for these
(anything else is a bug, and propagates)."""


def check_seconds(value: object, name: str, *, zero_ok: bool = False) -> float:
    """``value`` as a float if it is a number of seconds (> 0, or >= 0 with ``zero_ok``), else a
    :class:`ConfigurationError` naming ``name`` (``"LocalCache ttl"``) and what was given."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name}: expected a number of seconds, got {value!r}")
    if not (value >= 0 if zero_ok else value > 0):  # also rejects NaN
        bound = ">= 0" if zero_ok else "positive"
        raise ConfigurationError(f"{name} must be {bound} seconds, got {value!r}")
    return float(value)


class _Absent(enum.Enum):
    ABSENT = "ABSENT"

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent.ABSENT
"""A cached miss: the bot is known not to exist (negative caching)."""

Lookup: TypeAlias = Registration | _Absent | None


@dataclass(slots=True)
class TierStats:
    """Counters of one tier; plain ints, cheap enough to leave on.

    ``evictions``: entries dropped to make room (LRU, at ``maxsize``); ``expirations``: entries
    dropped because their TTL ran out. Both are counted by the in-process tier only (Redis evicts
    and expires keys on its own: see its ``INFO stats``). ``busy``: reads that skipped a shared
    tier because every connection of its pool stayed busy (a burst; not counted as ``errors``).
    """

    hits: int = 0
    misses: int = 0
    fills: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0
    errors: int = 0
    busy: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class CacheTier(abc.ABC):
    """A cache layer. Subclasses: :class:`LocalCache`, :class:`RedisCache`."""

    name: str = "tier"

    def __init__(self) -> None:
        self.stats = TierStats()

    def invalidation_source(self) -> tuple[Any, str] | None:
        """``(redis url or client, namespace)`` of a tier in Redis (for cross-process invalidation)."""
        return None

    async def initialize(self) -> None:  # noqa: B027 - optional hook
        """Connect (idempotent)."""

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Raise (one of :data:`TIER_FAILURES`) if the tier cannot be reached now; a shared tier
        makes one round trip. Used by ``TieredBackend(strict=True)`` at start."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (idempotent)."""

    @abc.abstractmethod
    async def lookup(self, bot_id: str) -> tuple[Lookup, object]:
        """Return ``(what this tier knows, fill token)``."""

    @abc.abstractmethod
    async def fill(self, bot_id: str, record: Registration | None, token: object) -> None:
        """Cache a value read from below (``None`` = remember the miss), unless ``token`` is stale."""

    async def write_token(self, bot_id: str) -> object:
        """Taken before a write goes to the store, and handed back to :meth:`put` after it
        committed: a tier shared between processes refuses the put if another write of
        ``bot_id`` (or a clear) reached it in between, since that one may have committed later."""
        return None

    @abc.abstractmethod
    async def put(self, bot_id: str, record: Registration, token: object) -> None:
        """Write-through after a committed write: cache ``record``, unless ``token`` (from
        :meth:`write_token`) shows that another write reached the tier since; then forget it."""

    async def write_tokens(self, bot_ids: Sequence[str]) -> list[object]:
        """:meth:`write_token` of many bots (a shared tier: in one round trip)."""
        return [await self.write_token(bot_id) for bot_id in bot_ids]

    async def put_many(self, puts: Sequence[tuple[str, Registration | None, object]]) -> None:
        """:meth:`put` of many bots, each with its own token; a record ``None`` is an
        :meth:`invalidate` (a shared tier: all in one round trip)."""
        for bot_id, record, token in puts:
            if record is None:
                await self.invalidate(bot_id)
            else:
                await self.put(bot_id, record, token)

    @abc.abstractmethod
    async def invalidate(self, bot_id: str) -> None:
        """Forget ``bot_id`` (and make in-flight fills of it stale)."""

    @abc.abstractmethod
    async def clear(self) -> None:
        """Forget everything this tier holds for its namespace."""
