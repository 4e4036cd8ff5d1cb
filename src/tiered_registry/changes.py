"""The change feed: what changed in a registry, from this process's writes and from other processes'.

A bot server keeps more than configs: it keeps *built* bots (clients, prompts, tools made from a
config), and must drop one when its config changes, in whichever process the change was made.
:meth:`~tiered_registry.TieredBackend.watch` (an async iterator) and
:meth:`~tiered_registry.TieredBackend.on_change` (a callback) deliver a :class:`ChangeEvent` for
every write made through this stack, and, over the invalidation channel, for every write made
through any other process's stack on the same Redis namespace.

Kinds (:data:`KINDS`):

- ``registered``, ``updated``, ``deactivated``, ``unregistered``: that happened to ``bot_id``;
- ``cleared``: every bot was removed (``bot_id`` is ``None``);
- ``invalidated``: ``bot_id`` may have changed (an explicit ``invalidate()``, a write whose
  outcome is unknown, a deactivate or unregister of a bot that did not exist, an announcement
  repeated after Redis was unreachable, or a message from a process of an older version): read it
  again;
- ``resync``: anything may have changed (``bot_id`` is ``None``): an ``invalidate_all()``, or
  invalidations may have been lost (the channel dropped and came back), or a watcher fell too far
  behind. Drop everything.

Delivery follows the writes: an event of this process's write is delivered once every tier of
this process has the new state (a consumer that reads the bot again sees it). Other processes'
events arrive about one pub/sub round trip after their write. Pub/sub delivers at most once; a
lost message is covered by ``resync`` when the channel comes back.

Bounded memory: each :class:`Watch` holds at most ``maxsize`` events; a consumer that falls
further behind loses the queued events and gets one ``resync`` in their place (it must drop
everything anyway), never an unbounded queue. Callbacks run synchronously in the event loop, so
they must be quick (hand work to a task); an exception in one is logged and does not stop the
others.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal, Self

__all__ = ["KINDS", "ChangeEvent", "ChangeFeed", "ChangeKind", "Watch"]

logger = logging.getLogger(__name__)

ChangeKind = Literal[
    "registered", "updated", "deactivated", "unregistered", "cleared", "invalidated", "resync"
]
KINDS: Final[frozenset[str]] = frozenset(
    ("registered", "updated", "deactivated", "unregistered", "cleared", "invalidated", "resync")
)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """``bot_id`` (``None`` for ``cleared`` and ``resync``) changed in the way ``kind`` says.

    ``remote``: the write was made by another process. ``at``: when this process learned of it
    (``time.time()``).
    """

    bot_id: str | None
    kind: ChangeKind
    remote: bool = False
    at: float = field(default_factory=time.time)


def normalize_kind(kind: str) -> ChangeKind:
    """A kind from a message (a newer version may send kinds we do not know): ours or ``invalidated``."""
    return kind if kind in KINDS else "invalidated"  # type: ignore[return-value]


class Watch:
    """An async iterator over the events after :meth:`~tiered_registry.TieredBackend.watch` was
    called; it ends when the backend closes or :meth:`close` is called. Use ``async with``."""

    def __init__(self, feed: ChangeFeed, maxsize: int) -> None:
        self._feed = feed
        self._maxsize = maxsize
        self._queue: collections.deque[ChangeEvent] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self.overflows = 0  # times the queue was full and replaced by one resync

    def _put(self, event: ChangeEvent) -> None:
        queue = self._queue
        if len(queue) >= self._maxsize:
            queue.clear()
            self.overflows += 1
            event = ChangeEvent(None, "resync", remote=event.remote)
        queue.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def close(self) -> None:
        """Stop watching: iteration ends after the events already queued."""
        if not self._closed:
            self._closed = True
            self._feed._watches.discard(self)
            self._wake()

    def __aiter__(self) -> AsyncIterator[ChangeEvent]:
        return self

    async def __anext__(self) -> ChangeEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return self._queue.popleft()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ChangeFeed:
    """The watchers and callbacks of one backend, and :meth:`emit` to reach them all."""

    def __init__(self) -> None:
        self._watches: set[Watch] = set()
        self._callbacks: list[Callable[[ChangeEvent], object]] = []

    @property
    def active(self) -> bool:
        """Is anyone listening? (Nothing to build when not.)"""
        return bool(self._watches or self._callbacks)

    def watch(self, maxsize: int = 1000) -> Watch:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        watch = Watch(self, maxsize)
        self._watches.add(watch)
        return watch

    def on_change(self, callback: Callable[[ChangeEvent], object]) -> Callable[[], None]:
        if not callable(callback):
            raise TypeError(f"on_change needs a callable, got {type(callback).__name__}")
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def emit(self, bot_id: str | None, kind: ChangeKind, *, remote: bool = False) -> None:
        if not (self._watches or self._callbacks):
            return
        event = ChangeEvent(bot_id, kind, remote)
        for watch in list(self._watches):
            watch._put(event)
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("change callback %r failed on %r", callback, event)

    def close(self) -> None:
        """The backend closed: every watch ends, callbacks are dropped."""
        for watch in list(self._watches):
            watch.close()
        self._callbacks.clear()
