"""``TierGuard``: a circuit breaker plus a list of owed invalidations, for one shared cache tier.

A Redis tier that is down must not add a timeout to every request: after ``failure_threshold``
consecutive failures the guard *opens* and the tier is skipped entirely; after ``reset_timeout``
seconds one request is let through (*half-open*); its success closes the guard again.

A write that cannot reach the tier (failed, or skipped while open) leaves the tier possibly
holding the old value — harmless while the tier is unreachable, stale the moment it is back. So
the guard remembers those keys (*owed invalidations*, or "everything" after a ``clear`` or when
more than ``max_owed`` keys pile up) and :meth:`TierGuard.settle` pays them. Nothing stale is
served when Redis comes back.

:class:`~tiered_registry.TieredBackend` does not read an owed key from the tier (other keys are
read as usual) and writes through to the tier whenever the breaker lets it (a write that lands
settles that key: :meth:`TierGuard.written`); :class:`~tiered_registry.owed.OwedInvalidations`
pays the rest in the background. Debts are per key on purpose: when the whole tier was skipped
until all was paid, every write under load was owed too and the debt never shrank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from .tiers.base import TIER_FAILURES, CacheTier

__all__ = ["TierGuard"]

logger = logging.getLogger(__name__)

_CLOSED: Final = "closed"
_OPEN: Final = "open"
_HALF_OPEN: Final = "half-open"
_FAILURES_PER_SETTLE: Final = 3


class TierGuard:
    """Breaker state and owed invalidations of one tier (no I/O of its own but :meth:`settle`).

    Debts carry a *generation* (a counter bumped by every :meth:`owe`), so paying one never
    discards a newer one: :meth:`settle` removes a key only if it was not owed again while its
    invalidation was in flight, and a write that lands settles only what was owed before it
    started (:meth:`written`, given :attr:`generation` as it was then).
    """

    def __init__(
        self,
        tier: CacheTier,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 1.0,
        max_owed: int = 10_000,
    ) -> None:
        self.tier = tier
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.max_owed = max_owed
        self.state = _CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at = 0.0
        self.generation = 0  # bumped by every owe()
        self._owed: dict[str, int] = {}  # bot id -> generation of its latest debt
        self._everything: int | None = None  # generation of the latest "everything" debt
        self.opened = 0  # how many times the breaker opened (for stats)
        # Closed, no failure since the last success and nothing owed: a call needs no bookkeeping
        # before or after (kept up to date by every method here; read on every shared-tier call).
        self.healthy = True
        self._status = "up"
        self.since = time.time()  # when :attr:`status` last changed (Unix seconds)
        self._outage: tuple[float, int] | None = None  # (start, failures) of an outage being logged

    @property
    def status(self) -> str:
        """``up`` (closed, nothing owed), ``degraded`` (closed, but owed invalidations or failures
        since the last success) or ``down`` (breaker open or half-open); :attr:`since` says since
        when. Updated by every state change (not on the hot path: a healthy guard is not called)."""
        return self._status

    def _changed(self) -> None:
        if self.state != _CLOSED:
            status = "down"
        elif self._failures or self.owes:
            status = "degraded"
        else:
            status = "up"
        if status != self._status:
            self._status = status
            self.since = time.time()
            if status == "up" and self._outage is not None:
                started, failures = self._outage
                self._outage = None
                logger.warning(
                    "cache tier %r answers again after %.1f s (%d failures); nothing owed to it",
                    self.tier,
                    time.monotonic() - started,
                    failures,
                )

    def note_failure(self) -> bool:
        """Count a failure for the outage log: True for the first of an outage (log it loudly; the
        others quietly). The outage ends (logged once) when the tier is up again."""
        if self._outage is None:
            self._outage = (time.monotonic(), 1)
            return True
        self._outage = (self._outage[0], self._outage[1] + 1)
        return False

    def available(self) -> bool:
        """May the tier be called now? (Closed; or open long enough to try one request.)

        Half-open lets one probe through. A probe that neither fails nor succeeds (its caller
        was cancelled, or it hangs) must not keep the breaker half-open for ever: after
        ``reset_timeout`` without an answer another probe is let through.
        """
        if self.state == _CLOSED:
            return True
        now = time.monotonic()
        if (self.state == _OPEN and now - self._opened_at >= self.reset_timeout) or (
            self.state == _HALF_OPEN and now - self._probe_at >= self.reset_timeout
        ):
            self.state = _HALF_OPEN
            self._probe_at = now
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self.state = _CLOSED
        self.healthy = not self.owes
        self._changed()

    def failed(self) -> None:
        self.healthy = False
        self._failures += 1
        if self.state == _HALF_OPEN or self._failures >= self.failure_threshold:
            if self.state != _OPEN:
                self.opened += 1
            self.state = _OPEN
            self._opened_at = time.monotonic()
        self._changed()

    def abandoned(self) -> None:
        """A call through the breaker was cancelled before it answered: if it was the half-open
        probe, the breaker is open again (the next probe after ``reset_timeout``)."""
        if self.state == _HALF_OPEN:
            self.state = _OPEN
            self._opened_at = time.monotonic()

    @property
    def owes(self) -> bool:
        return self._everything is not None or bool(self._owed)

    @property
    def is_open(self) -> bool:
        """Open or half-open (for stats: the tier is being skipped, or probed)."""
        return self.state != _CLOSED

    @property
    def owed_keys(self) -> int:
        """How many bots the tier is owed an invalidation of (for stats; 0 while it is owed a
        clear, which covers them: :attr:`owes_everything`)."""
        return len(self._owed)

    @property
    def owes_everything(self) -> bool:
        """Is the tier owed a clear (after a ``clear()``, or more than ``max_owed`` keys)?"""
        return self._everything is not None

    def owes_for(self, bot_id: str) -> bool:
        """May the tier hold an old value of ``bot_id``? (Then a read must not trust it.)"""
        return self._everything is not None or bot_id in self._owed

    def written(self, bot_id: str | None, since: int) -> None:
        """A write of ``bot_id`` (``None``: a clear) that started when :attr:`generation` was
        ``since`` reached the tier: what was owed for that key before it started is settled (the
        write committed after those writes did). Call :meth:`succeeded` after it."""
        if bot_id is None:
            if self._everything is not None and self._everything <= since:
                self._everything = None
            self._forget_owed(since)
        else:
            owed_at = self._owed.get(bot_id)
            if owed_at is not None and owed_at <= since:
                del self._owed[bot_id]
        self._changed()

    def owe(self, bot_id: str | None) -> None:
        """Remember that the tier may still hold an old value of ``bot_id`` (``None``: of anything)."""
        self.healthy = False
        self.generation += 1
        if bot_id is None or len(self._owed) >= self.max_owed:
            self._everything = self.generation
            self._owed.clear()  # a clear paid later covers them
        else:
            self._owed[bot_id] = self.generation
        self._changed()

    async def settle(self, paid: Callable[[str | None], object] = lambda bot_id: None) -> None:
        """Pay the owed invalidations, calling ``paid`` with each key as it is paid (``None``:
        everything). Raises the tier's (first) error if some key could not be paid; what was
        paid stays paid.
        A debt incurred while its payment was in flight stays owed (the next settle pays it)."""
        if self._everything is not None:
            owed_at, since = self._everything, self.generation
            await self.tier.clear()
            if self._everything == owed_at:
                self._everything = None
            self._forget_owed(since)
            paid(None)
        # One key failing does not stop the others: on a Redis Cluster with one master down,
        # the keys on the other masters are paid now, not when that master is back. Three
        # failures in a row (a whole Redis down: each costs a timeout) end this round.
        first_error: BaseException | None = None
        in_a_row = 0
        for bot_id, owed_at in list(self._owed.items()):
            try:
                await self.tier.invalidate(bot_id)
            except TIER_FAILURES as exc:
                first_error = first_error or exc
                in_a_row += 1
                if in_a_row >= _FAILURES_PER_SETTLE:
                    break
                continue
            in_a_row = 0
            if self._owed.get(bot_id) == owed_at:
                del self._owed[bot_id]
            paid(bot_id)
        if first_error is not None:
            raise first_error
        self.healthy = self.state == _CLOSED and self._failures == 0 and not self.owes
        self._changed()

    def _forget_owed(self, since: int) -> None:
        """Settle every key owed at or before generation ``since`` (a clear paid them)."""
        for bot_id, owed_at in list(self._owed.items()):
            if owed_at <= since:
                del self._owed[bot_id]
