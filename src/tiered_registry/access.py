"""Write-behind ``last_accessed_at``: accesses are noted in memory and written in batches.

A read must not cost a database write, and an access write must touch only ``last_accessed_at``
(never rewrite the record, which could undo a concurrent ``deactivate``). So reads call
:meth:`AccessRecorder.record` — one dict store, no clock, no I/O — and a background task hands
every ``interval`` seconds the set of bots read since the last flush to a *sink* (one statement for
all of them), stamped with the flush time. ``close()`` of the owning backend flushes what is left.

Staleness bound: a bot's stored ``last_accessed_at`` lags its real last access by at most
``interval`` seconds (plus the time of one flush); it is never earlier than the access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from .models import utcnow
from .tasks import cancel_and_wait

__all__ = ["DEFAULT_ACCESS_FLUSH_INTERVAL", "AccessRecorder", "AccessSink"]

DEFAULT_ACCESS_FLUSH_INTERVAL = 1.0
"""Seconds between two batched writes of ``last_accessed_at`` (the staleness bound)."""

AccessSink = Callable[[Sequence[str], datetime], Awaitable[None]]

logger = logging.getLogger(__name__)


class AccessRecorder:
    """Collects accessed bot ids and flushes them to ``sink`` on an interval, on demand and on stop."""

    def __init__(
        self,
        sink: AccessSink,
        *,
        interval: float = DEFAULT_ACCESS_FLUSH_INTERVAL,
        max_pending: int = 50_000,
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self._sink = sink
        self._before_flush = before_flush  # lets an owner merge accesses it noted elsewhere
        self.interval = interval
        self._max_pending = max_pending
        self.pending: dict[str, None] = {}  # insertion-ordered set; read on the hot path
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()

    def record(self, bot_id: str) -> None:
        """Note one access (cheap enough for the hot path)."""
        pending = self.pending
        pending[bot_id] = None
        if len(pending) >= self._max_pending:
            self._wake.set()

    def start(self) -> None:
        """Start the background flusher (idempotent); needs a running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tiered-registry-access-flush"
            )

    async def flush(self) -> None:
        """Write every pending access now (one sink call)."""
        async with self._flush_lock:
            if self._before_flush is not None:
                self._before_flush()
            if not self.pending:
                return
            ids = list(self.pending)
            self.pending.clear()  # in place: hot paths may hold a reference to this dict
            try:
                await self._sink(ids, utcnow())
            except BaseException:
                for bot_id in ids:  # keep them for the next flush
                    self.pending.setdefault(bot_id, None)
                raise

    async def stop(self) -> None:
        """Stop the flusher and write what is left (errors are logged, not raised)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        try:
            await self.flush()
        except Exception:
            logger.exception("could not write %d pending access times on close", len(self.pending))

    async def _run(self) -> None:
        failed = 0  # flushes failed in a row: an outage is logged once, not every interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                failed += 1
                if failed == 1:
                    logger.warning("access-time flush failed; will retry", exc_info=True)
                continue
            if failed:
                logger.warning("access times written again after %d failed flushes", failed)
                failed = 0
