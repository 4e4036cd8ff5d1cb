"""``StatementDeadlines``: the time bound of every PostgreSQL statement, kept by one watchdog.

Why not asyncpg's ``command_timeout``: it arms and cancels an event-loop timer for every
statement (a ``TimerHandle`` pushed on the loop's heap, two clock reads, a cancel), which
measured ~6 % of a point read on loopback (``get_config`` 1.13-1.15x a raw prepared SELECT
with it, 1.06-1.09x without). Here a statement costs a clock read and two dict operations, and
one task per backend wakes every ``timeout / 10`` seconds and cancels the task of any statement
that has run longer than ``timeout``. That task then gets :class:`TimeoutError` instead of the
cancellation (see :meth:`StatementDeadlines.overdue`). So a statement, including its wait for a
free connection, is bounded by about ``1.1 * timeout``, whether the server answers slowly, hangs
with its sockets open, or is gone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from ..tasks import cancel_and_wait

__all__ = ["StatementDeadlines"]

_TICKS_PER_TIMEOUT: Final = 10
_MIN_TICK: Final = 0.01
_monotonic = time.monotonic
_current_task = asyncio.current_task


class StatementDeadlines:
    """Statements in flight (by the task awaiting each), and the watchdog that ends overdue ones.

    ``timeout=None``: no bound, no watchdog (every method is then a no-op).
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._started: dict[asyncio.Task[Any], float] = {}
        self._overdue: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.timeout is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(), name="tiered-registry-pg-deadlines"
            )

    async def stop(self) -> None:
        task, self._watchdog = self._watchdog, None
        await cancel_and_wait(task)

    def begin(self) -> asyncio.Task[Any] | None:
        """A statement starts in the current task; pass the result to :meth:`end`."""
        if self._watchdog is None:
            return None
        task = _current_task()
        if task is not None:
            self._started[task] = _monotonic()
        return task

    def end(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._started.pop(task, None)
            self._overdue.discard(task)

    def is_overdue(self, task: asyncio.Task[Any] | None) -> bool:
        """Was ``task`` cancelled by the watchdog (its statement ran out of time)?"""
        return task is not None and task in self._overdue

    def overdue(self, task: asyncio.Task[Any] | None) -> bool:
        """Call on ``CancelledError``: True if the watchdog cancelled ``task`` and nobody else
        did (then the caller raises its timeout error instead); the cancellation is withdrawn."""
        if task is None or task not in self._overdue:
            return False
        self._overdue.discard(task)
        return task.uncancel() == 0

    async def _watch(self) -> None:
        timeout = self.timeout
        assert timeout is not None
        tick = max(timeout / _TICKS_PER_TIMEOUT, _MIN_TICK)
        started = self._started
        while True:
            await asyncio.sleep(tick)
            now = _monotonic()
            for task, since in list(started.items()):
                if now - since > timeout:
                    del started[task]
                    self._overdue.add(task)
                    task.cancel("statement timeout")
