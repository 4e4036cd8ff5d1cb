"""``OwedInvalidations``: what a process still owes after a committed write could not reach every
part of the stack, and the one background task that pays it.

Two kinds of debt, both left by a write that the store committed:

- **to a shared tier** (Redis) the write could not update (it failed, or its breaker was open):
  the tier may still hold the old value. The key is recorded in the tier's
  :class:`~tiered_registry.circuit.TierGuard`; until it is paid, :class:`~tiered_registry.TieredBackend`
  does not read that key from the tier (other keys as usual), and the next write of the key that
  reaches the tier settles it.
- **to the other processes**: an invalidation whose PUBLISH failed (Redis unreachable from this
  process, or slower than the publish timeout). Subscribers that stayed connected would keep
  serving their local copy until its TTL.

The collector task runs only while something is owed. It pays a tier's debt as soon as the tier's
breaker lets a call through, then publishes every key it paid (other processes may have copied
the old value from the tier meanwhile), and publishes the owed messages, retrying every
``reset_timeout`` (at least 50 ms) or 0.25 s. No request ever waits for a debt (after an outage it
may be thousands of keys); an idle writer does not leave an old value until a TTL either.
Keys announced together go out as few messages (up to 1,000 bots each); more than 10,000 at
once are announced as "everything" (the others flush their local tier: cheaper than reading
10,000 names).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from .circuit import TierGuard
from .tasks import cancel_and_wait
from .tiers.base import TIER_FAILURES, CacheTier

if TYPE_CHECKING:
    from .coherence import InvalidationChannel

__all__ = ["OwedInvalidations"]

logger = logging.getLogger(__name__)

_MAX_ANNOUNCED_KEYS: Final = 10_000
_MIN_SETTLE_PAUSE: Final = 0.05
_ANNOUNCE_RETRY_PAUSE: Final = 0.25

TierFailed = Callable[[CacheTier, str, BaseException], None]


class OwedInvalidations:
    """The debts of one :class:`~tiered_registry.TieredBackend` (see the module notes)."""

    def __init__(
        self, guards: Iterable[TierGuard], channel: InvalidationChannel | None, tier_failed: TierFailed
    ) -> None:
        self._guards = list(guards)
        self._channel = channel
        self._tier_failed = tier_failed  # counts and logs a tier failure (the backend's stats)
        self._unannounced: dict[str | None, str] = {}  # bot id (None: everything) -> change kind
        self._collector: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def unannounced(self) -> int:
        """Invalidations whose PUBLISH failed and that are still owed to the other processes (for
        stats; "everything" counts as one)."""
        return len(self._unannounced)

    def owe(self, guard: TierGuard, bot_id: str | None) -> None:
        """The write of ``bot_id`` (``None``: a clear) did not reach ``guard``'s tier."""
        guard.owe(bot_id)
        self._start_collector()

    async def announce(self, changes: Iterable[tuple[str | None, str]]) -> None:
        """Publish ``(bot id, change kind)`` pairs (``None``: everything) to the other processes, many
        bots per message; what cannot be published now is owed. Very many keys at once (or
        "everything" among them) are announced as one ``resync``."""
        if self._channel is None:
            return
        pending = dict(changes)
        if len(pending) > _MAX_ANNOUNCED_KEYS or (None in pending and len(pending) > 1):
            pending = {None: "resync"}
        items = list(pending.items())
        step = 1 if len(items) == 1 else self._channel.max_keys_per_message
        for index in range(0, len(items), step):
            chunk = items[index : index + step]
            if len(chunk) == 1:
                sent = await self._channel.publish(*chunk[0])
            else:  # None is never among many (see above)
                sent = await self._channel.publish_many(chunk)  # type: ignore[arg-type]
            if not sent:
                self._unannounced.update(items[index:])
                if len(self._unannounced) > _MAX_ANNOUNCED_KEYS or (
                    None in self._unannounced and len(self._unannounced) > 1
                ):
                    self._unannounced = {None: "resync"}
                self._start_collector()
                return

    async def pay(self, guard: TierGuard) -> None:
        """Settle ``guard``'s debts once, through its breaker (a failure counts against it), then
        announce what was paid."""
        paid: list[str | None] = []
        try:
            await guard.settle(paid.append)
        except TIER_FAILURES as exc:
            guard.failed()
            self._tier_failed(guard.tier, "settle", exc)
        except asyncio.CancelledError:  # stopped while the tier had not answered
            guard.abandoned()
            raise
        else:
            guard.succeeded()
        finally:
            if paid:  # other processes may have copied the old values from the tier meanwhile
                await self.announce(
                    (bot_id, "resync" if bot_id is None else "invalidated") for bot_id in paid
                )

    async def stop(self) -> None:
        """Stop the collector (what is owed stays owed)."""
        task, self._collector = self._collector, None
        await cancel_and_wait(task)

    async def close(self) -> None:
        """Stop collecting, then pay what can be paid now (bounded by the tiers' and the publish
        timeouts); what is still owed is logged (a tier's TTL then bounds the staleness)."""
        self._closing = True
        await self.stop()
        for guard in self._guards:
            if guard.owes and guard.available():
                await self.pay(guard)
            if guard.owes:
                logger.warning("closing with invalidations still owed to %r", guard.tier)
        if self._unannounced:
            await self._announce_owed()
            if self._unannounced:
                logger.warning("closing with %d invalidations not published", len(self._unannounced))

    async def _announce_owed(self) -> None:
        changes, self._unannounced = self._unannounced, {}
        await self.announce(changes.items())

    def _start_collector(self) -> None:
        if self._collector is None and not self._closing:
            self._collector = asyncio.get_running_loop().create_task(
                self._collect(), name="tiered-registry-settle"
            )

    async def _collect(self) -> None:
        try:
            while (owing := [g for g in self._guards if g.owes]) or self._unannounced:
                for guard in owing:
                    if guard.available():
                        await self.pay(guard)
                if self._unannounced:
                    await self._announce_owed()
                if any(g.owes for g in owing) or self._unannounced:
                    pauses = [max(g.reset_timeout, _MIN_SETTLE_PAUSE) for g in owing]
                    await asyncio.sleep(min(pauses, default=_ANNOUNCE_RETRY_PAUSE))
        finally:
            if self._collector is asyncio.current_task():
                self._collector = None
