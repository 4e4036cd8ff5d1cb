"""Stopping the library's background tasks (access flusher, local-tier sweeper, invalidation
listener, debt collector) the same way everywhere: cancel, then wait until the task has finished,
so that ``close()`` leaves no pending task behind."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (``None``: nothing to do) and wait for it; its cancellation is not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
