"""Single-flight: concurrent misses of one key share one read of the tier below.

The first caller to miss a key (the *leader*) reads it in its own task; the others (*followers*)
wait for its outcome. A write of the key marks the flight *stale*, so that the leader does not put
what it read (possibly the old value) into the tiers above. See
:class:`~tiered_registry.TieredBackend`.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["RETRY", "Flight"]

RETRY: Final = object()
"""The outcome of a flight whose leader was cancelled: the followers try again."""


class Flight:
    """One in-progress read of one key, done by the first caller (the leader) for everyone.

    ``stale`` once a write to that key has committed. ``outcome`` is created by the first
    follower (most reads have none: no future to make) and resolves to ``(record, None)``,
    ``(None, error)``, or :data:`RETRY` if the leader was cancelled (the followers then try again).
    """

    __slots__ = ("outcome", "stale")

    def __init__(self) -> None:
        self.stale = False
        self.outcome: asyncio.Future[object] | None = None

    def wait(self) -> asyncio.Future[object]:
        """The outcome to wait for (as a follower)."""
        if self.outcome is None:
            self.outcome = asyncio.get_running_loop().create_future()
        return self.outcome

    def land(self, outcome: object) -> None:
        """Hand the leader's outcome to the followers, if any."""
        if self.outcome is not None:
            self.outcome.set_result(outcome)
