"""The writes a :class:`~tiered_registry.TieredBackend` has in flight, and the steps after a commit.

Two things make write-through safe when writes race (two processes, or two tasks of one):

- **Contention.** Of two writes of one bot whose store calls overlap, nobody here knows which
  committed last, so neither may put its value into the local tier: each deletes instead (the
  next read takes the store's value). The same holds when another process's invalidation of the
  bot arrives while our write is in flight: its commit may be the later one. A
  :class:`PendingWrite` is *contended* once anything of that kind happened during it.
  (The Redis tier settles the same question across processes with its write token, see
  :meth:`~tiered_registry.tiers.base.CacheTier.write_token`.)
- **Post-commit steps always finish.** Once the store has committed (or may have: a write
  whose outcome is unknown), the tiers and the other processes must hear of it, even if the
  caller is cancelled meanwhile (a request timeout, a client gone away). :class:`AfterCommit`
  runs those steps in a task of their own that the caller's cancellation does not reach, and
  ``close()`` waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["AfterCommit", "PendingWrite", "PendingWrites"]

logger = logging.getLogger(__name__)


class PendingWrite:
    """One write of ``bot_id`` (``None``: a clear) from the moment it is started until its tiers
    are updated. ``since`` maps each shared tier's guard to its debt generation at the start;
    ``tokens`` holds each shared tier's write token (``None`` if it could not be taken)."""

    __slots__ = ("bot_id", "contended", "since", "tokens")

    def __init__(self, bot_id: str | None) -> None:
        self.bot_id = bot_id
        self.contended = False
        self.since: dict[int, int] = {}
        self.tokens: dict[int, object] = {}


class PendingWrites:
    """The :class:`PendingWrite` s of one backend, by bot id."""

    def __init__(self) -> None:
        self._by_bot: dict[str | None, list[PendingWrite]] = {}

    def __len__(self) -> int:
        return sum(len(writes) for writes in self._by_bot.values())

    def begin(self, bot_id: str | None) -> PendingWrite:
        write = PendingWrite(bot_id)
        if bot_id is None:
            self.contend(None)
        else:
            others = self._by_bot.get(bot_id)
            if others:
                write.contended = True
                for other in others:
                    other.contended = True
            if self._by_bot.get(None):  # a clear in flight: which came last is unknown
                write.contended = True
        self._by_bot.setdefault(bot_id, []).append(write)
        return write

    def end(self, write: PendingWrite) -> None:
        writes = self._by_bot.get(write.bot_id)
        if writes is not None and write in writes:
            writes.remove(write)
            if not writes:
                del self._by_bot[write.bot_id]

    def contend(self, bot_id: str | None) -> None:
        """Something else changed ``bot_id`` (``None``: maybe everything) meanwhile."""
        if bot_id is None:
            for writes in self._by_bot.values():
                for write in writes:
                    write.contended = True
            return
        for write in self._by_bot.get(bot_id, ()):
            write.contended = True


class AfterCommit:
    """Runs post-commit steps to completion, whatever happens to the task that awaits them."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    async def run(self, steps: Coroutine[Any, Any, None]) -> None:
        """Run ``steps`` in a task of their own and wait for it. If the caller is cancelled, the
        cancellation reaches the caller only: the steps go on (and :meth:`wait` waits for them)."""
        await asyncio.shield(self.start(steps))

    def start(self, steps: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``steps`` in a task of their own, without waiting for it."""
        task = asyncio.get_running_loop().create_task(steps, name="tiered-registry-after-commit")
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Also seen by the caller if it is still waiting; logged for the case it is not.
            logger.error("post-commit steps failed", exc_info=task.exception())

    async def wait(self) -> None:
        """Wait for the steps still running (their failures were logged already)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
