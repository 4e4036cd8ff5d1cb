"""Batching: concurrent reads of different keys share one round trip to a server.

Below the in-process tier, Python's cost per command, not the server, limits how many reads a
process gets per second: one ``MGET`` of 32 keys costs little more than one ``GET``. A
:class:`Batcher` sits in front of one round trip of one tier or store (a Redis tier's lookup or
fill, a store's point read):

- a read that finds nothing in flight goes out **at once, in the caller's own task**, as a
  single-key command (no timer, no task, no added latency: a lone read costs what it did);
- reads that arrive while a round trip is in flight wait, and go out together as **one batch**
  when it lands (``many(keys)``: one ``MGET``, one ``= ANY($1)``), at most ``max_batch`` keys
  each, or at once when ``max_batch`` keys are waiting, with at most ``max_in_flight`` batches
  under way;
- a batch runs in a task of its own: a caller that is cancelled stops waiting, the batch goes on
  for the others (closing the backend stops it: its callers get ``BackendClosedError``); a
  batch that fails fails each of its callers with that error; one key's error
  (:class:`KeyFailed`) fails only that key.

Single-flight sits above (:mod:`tiered_registry.flights`), so in a stack a key is one slot of a
batch. Many batchers wait for round trips independently: a batch to PostgreSQL does not hold up
the next batch to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

from .errors import BackendClosedError, ConfigurationError

__all__ = ["DEFAULT_MAX_BATCH", "BatchStats", "Batcher", "KeyFailed", "check_batch_size"]

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_MAX_BATCH: Final = 256
"""Keys per round trip: large enough to spread Python's per-command cost, small enough that one
batch does not hold a Redis server (or a PostgreSQL backend) for long."""


def check_batch_size(value: object, name: str) -> int:
    """``value`` if it is an int >= 1, else a :class:`ConfigurationError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1 (1 turns batching off), got {value!r}")
    return value


def _closed() -> BackendClosedError:
    return BackendClosedError("closed while this read was waiting for its round trip")


class KeyFailed:
    """A result of ``many`` for one key that failed on its own (the others succeeded)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class BatchStats:
    """Round trips made by one batcher: ``single`` lone reads, ``batches`` batched round trips
    holding ``batched_keys`` keys in all (``largest`` the biggest)."""

    __slots__ = ("batched_keys", "batches", "largest", "single")

    def __init__(self) -> None:
        self.single = 0
        self.batches = 0
        self.batched_keys = 0
        self.largest = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "single": self.single,
            "batches": self.batches,
            "batched_keys": self.batched_keys,
            "largest": self.largest,
        }


class Batcher(Generic[K, V]):
    """``await batcher.load(key)``: ``one(key)`` at once if nothing is in flight, else the key joins
    the next ``many(keys)`` (a list of results, in the order of ``keys``).

    ``max_batch=1`` turns batching off: every load is ``one(key)``, concurrently, as without a
    batcher.
    """

    def __init__(
        self,
        one: Callable[[K], Awaitable[V]],
        many: Callable[[list[K]], Awaitable[Sequence[V | KeyFailed]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = 4,
    ) -> None:
        self._one = one
        self._many = many
        self.max_batch = check_batch_size(max_batch, "max_batch")
        self._max_in_flight = check_batch_size(max_in_flight, "max_in_flight")
        self._in_flight = 0
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = BatchStats()

    async def load(self, key: K) -> V:
        """The result for ``key``; raises what its round trip raised."""
        if not self._in_flight or self.max_batch == 1:
            self._in_flight += 1
            self.stats.single += 1
            try:
                return await self._one(key)
            finally:
                self._in_flight -= 1
                if self._waiting:
                    self._launch()
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        entry = (key, future)
        self._waiting.append(entry)
        if len(self._waiting) >= self.max_batch and self._in_flight < self._max_in_flight:
            self._launch()
        try:
            return await future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # not sent yet: nobody needs it any more
                self._waiting.remove(entry)
            raise

    def _launch(self) -> None:
        """Send the waiting keys (up to ``max_batch``) as one batch, in a task of its own."""
        batch = self._waiting[: self.max_batch]
        del self._waiting[: self.max_batch]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.batched_keys += len(batch)
        stats.largest = max(stats.largest, len(batch))
        try:
            results = await self._many([key for key, _ in batch])
        except asyncio.CancelledError:  # close(): the callers get an error, not a cancellation
            for _, future in batch:
                if not future.done():
                    future.set_exception(_closed())
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(result, KeyFailed):
                    future.set_exception(result.error)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._launch()
                while len(self._waiting) >= self.max_batch and self._in_flight < self._max_in_flight:
                    self._launch()

    async def close(self) -> None:
        """Stop the batches under way; their callers, and those still waiting, get a
        :class:`~tiered_registry.BackendClosedError`. For shutdown."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for _, future in self._waiting:
            if not future.done():
                future.set_exception(_closed())
        self._waiting.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
