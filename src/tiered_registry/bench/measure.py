"""Timing primitives: per-call latency (batched or one by one), throughput, and a loop-free driver.

How latency is taken (the reason this module exists):

- Everything is timed inside one coroutine with :func:`time.perf_counter_ns`; no per-call task,
  no ``run_until_complete`` per call, so the figures are what an ``await`` in a bot server costs.
- **Fast paths** (a median under :data:`SLOW_PATH_NS`, e.g. a local-cache hit): batches of
  :data:`BATCH` awaits are timed together and divided, because one call (~0.1-1 µs) is close to
  the clock's own cost. Median and p99 are then over per-batch averages.
- **Slow paths** (a network round trip): every call is timed on its own, so p99 is a true tail.
- Between batches the loop yields once (:func:`checkpoint`, not timed): background tasks (access
  flushes) get their turn as in a real server, and Ctrl-C is acted on within one batch.
- **Ratios** to a floor come from :func:`measure_paired`: the stack and its floor are timed in
  alternation (batch by batch, or call by call), so both see the same machine. On a shared machine
  whose speed changes from one second to the next, a floor measured at another moment could make
  a ratio look up to twice better or worse than it is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from .workload import KeyStream

__all__ = [
    "BATCH",
    "MAX_SAMPLES",
    "SLOW_PATH_NS",
    "Call",
    "Latency",
    "Throughput",
    "checkpoint",
    "completes_synchronously",
    "drive",
    "latency_from",
    "measure_latency",
    "measure_paired",
    "measure_throughput",
    "measure_throughput_paired",
    "timed",
]

T = TypeVar("T")
Call = Callable[[str], Awaitable[Any]]

BATCH: Final = 100
"""Awaits per timed batch on fast paths."""
SLOW_PATH_NS: Final = 20_000
"""A path whose calibration median is at least this (ns) is timed call by call."""
MAX_SAMPLES: Final = 200_000
"""Upper bound on the samples of one measurement (bounds memory whatever the duration)."""
_CALIBRATION_CALLS: Final = 50
_CHECK_EVERY: Final = 16  # individually timed calls between two deadline checks


@dataclass(frozen=True, slots=True)
class Latency:
    """Per-call latency of one operation, in nanoseconds."""

    median_ns: float
    p99_ns: float
    min_ns: float
    mean_ns: float
    samples: int
    per: int  # calls per sample: 1 = each call timed alone; BATCH = averages of batches

    @property
    def method(self) -> str:
        return "per call" if self.per == 1 else f"batches of {self.per}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_us": round(self.median_ns / 1000, 4),
            "p99_us": round(self.p99_ns / 1000, 4),
            "min_us": round(self.min_ns / 1000, 4),
            "mean_us": round(self.mean_ns / 1000, 4),
            "samples": self.samples,
            "calls_per_sample": self.per,
            "method": self.method,
        }


@dataclass(frozen=True, slots=True)
class Throughput:
    """Calls completed by ``concurrency`` tasks in ``seconds``."""

    ops: int
    seconds: float
    concurrency: int

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops_per_s": round(self.ops_per_s, 1),
            "ops": self.ops,
            "seconds": round(self.seconds, 4),
            "concurrency": self.concurrency,
        }


async def checkpoint() -> None:
    """Yield to the event loop once; raise ``CancelledError`` if this task was asked to stop.

    The explicit check makes Ctrl-C reliable: on Python 3.11, ``asyncio.wait_for`` (used inside
    redis-py for every command) can swallow a cancellation that arrives as its inner operation
    completes; the request stays visible in ``Task.cancelling()``, so it is honoured here.
    """
    await asyncio.sleep(0)
    if _stop_requested():
        raise asyncio.CancelledError


def _stop_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def latency_from(samples: Sequence[float], per: int = 1) -> Latency:
    """Median, p99 (nearest rank), min and mean of per-call samples."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    n = len(ordered)
    middle = n // 2
    median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    p99 = ordered[max(0, math.ceil(0.99 * n) - 1)]
    return Latency(float(median), float(p99), float(ordered[0]), sum(ordered) / n, n, per)


async def timed(awaitable: Awaitable[T]) -> tuple[T, int]:
    """Await ``awaitable``; return its result and the nanoseconds it took."""
    start = time.perf_counter_ns()
    result = await awaitable
    return result, time.perf_counter_ns() - start


async def _calibrate(call: Call, keys: KeyStream) -> float:
    samples: list[float] = []
    for key in keys.take(_CALIBRATION_CALLS):
        start = time.perf_counter_ns()
        await call(key)
        samples.append(time.perf_counter_ns() - start)
    return latency_from(samples).median_ns


async def measure_latency(
    call: Call,
    keys: KeyStream,
    *,
    duration: float,
    batch: int | None = None,
    max_samples: int = MAX_SAMPLES,
) -> Latency:
    """Per-call latency of ``await call(key)`` over ``duration`` seconds (at least a few samples).

    ``batch=None`` picks batches of :data:`BATCH` for a fast path and single calls for a slow one
    (after a short calibration); ``batch=1`` forces call-by-call timing.
    """
    if batch is None:
        batch = 1 if await _calibrate(call, keys) >= SLOW_PATH_NS else BATCH
    clock = time.perf_counter_ns
    samples: list[float] = []
    deadline = time.perf_counter() + duration
    min_samples = 5 if batch > 1 else 20
    while True:
        if batch > 1:
            chunk = keys.take(batch)
            start = clock()
            for key in chunk:
                await call(key)
            samples.append((clock() - start) / batch)
        else:
            for key in keys.take(_CHECK_EVERY):
                start = clock()
                await call(key)
                samples.append(clock() - start)
        await checkpoint()
        if len(samples) >= max_samples or (time.perf_counter() >= deadline and len(samples) >= min_samples):
            break
    return latency_from(samples, batch)


async def measure_paired(
    call: Call,
    keys: KeyStream,
    floor: Call,
    floor_keys: KeyStream,
    *,
    duration: float,
    max_samples: int = MAX_SAMPLES,
) -> tuple[Latency, Latency]:
    """Per-call latency of ``call`` and of ``floor``, timed in alternation over ``duration`` seconds.

    Batches of :data:`BATCH` (or single calls, for a slow ``call``) alternate between the two, so
    their medians are taken under the same conditions and their ratio means something even when
    the machine's speed drifts. Returns ``(call's latency, floor's latency)``.
    """
    batch = 1 if await _calibrate(call, keys) >= SLOW_PATH_NS else BATCH
    clock = time.perf_counter_ns
    ours: list[float] = []
    theirs: list[float] = []
    pairs = ((call, keys, ours), (floor, floor_keys, theirs))
    deadline = time.perf_counter() + duration
    min_samples = 5 if batch > 1 else 20
    while True:
        if batch > 1:
            for function, stream, samples in pairs:
                chunk = stream.take(batch)
                start = clock()
                for key in chunk:
                    await function(key)
                samples.append((clock() - start) / batch)
        else:
            for _ in range(_CHECK_EVERY // 2):
                for function, stream, samples in pairs:
                    key = stream.take(1)[0]
                    start = clock()
                    await function(key)
                    samples.append(clock() - start)
        await checkpoint()
        if len(ours) >= max_samples or (time.perf_counter() >= deadline and len(ours) >= min_samples):
            break
    return latency_from(ours, batch), latency_from(theirs, batch)


async def measure_throughput(call: Call, keys: KeyStream, *, concurrency: int, duration: float) -> Throughput:
    """Calls per second completed by ``concurrency`` tasks that each call in a loop for ``duration``.

    A call that never suspends (a local hit) runs to the deadline in the first task: on one event
    loop that *is* the throughput, whatever the number of tasks. If a call fails, the other tasks
    are stopped and the first error is raised (not left running into the next measurement).

    The tasks walk ``keys`` together (each takes the next few keys in turn), so the reads follow
    the whole distribution: a local tier smaller than the working set misses as it would in
    production, instead of serving a short sequence repeated.
    """
    counts = [0] * concurrency
    take = keys.take

    async def worker(slot: int) -> None:
        done = 0
        while time.perf_counter() < deadline:
            for key in take(_CHECK_EVERY):
                await call(key)
            if _stop_requested():
                raise asyncio.CancelledError
            done += _CHECK_EVERY
        counts[slot] = done

    start = time.perf_counter()
    deadline = start + duration
    # Not a TaskGroup: on Python 3.11 a failing child leaves the parent's cancel request standing,
    # which checkpoint() would then take for Ctrl-C.
    tasks = [asyncio.ensure_future(worker(slot)) for slot in range(concurrency)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return Throughput(sum(counts), time.perf_counter() - start, concurrency)


async def measure_throughput_paired(
    call: Call,
    keys: KeyStream,
    floor: Call,
    floor_keys: KeyStream,
    *,
    concurrency: int,
    duration: float,
) -> tuple[Throughput, Throughput]:
    """Throughput of ``call`` and of ``floor`` at the same ``concurrency``, timed in alternation.

    Four runs of ``duration / 4`` seconds each, in the order call, floor, floor, call (so a drift of
    the machine's speed during the measurement weighs on both alike); the calls and seconds of the
    two runs of each are added up. Returns ``(call's throughput, floor's throughput)``.
    """
    slice_ = duration / 4
    ops = [0, 0]
    seconds = [0.0, 0.0]
    runs = ((0, call, keys), (1, floor, floor_keys), (1, floor, floor_keys), (0, call, keys))
    for which, function, stream in runs:
        run = await measure_throughput(function, stream, concurrency=concurrency, duration=slice_)
        ops[which] += run.ops
        seconds[which] += run.seconds
        await checkpoint()
    return Throughput(ops[0], seconds[0], concurrency), Throughput(ops[1], seconds[1], concurrency)


def drive(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run ``coro`` to completion without an event loop if it never suspends (a local hit).

    If it does suspend, it is finished on ``loop`` (``RuntimeError`` without one). Used by the
    pytest-benchmark suite, which can only call synchronous functions.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    if loop is None:
        coro.close()
        raise RuntimeError("the coroutine suspended and no event loop was given to finish it")
    return loop.run_until_complete(_finish(coro, yielded))


async def _finish(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Continue a coroutine that suspended on ``yielded`` (a future, or None for a bare yield).

    A small stand-in for a task: wait until the future is done (its outcome is read by the
    coroutine itself when resumed), then resume; a cancellation of this driver is passed in.
    """
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([yielded])
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                result: T = stop.value
                return result
            continue
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            result = stop.value
            return result


def completes_synchronously(
    start: Callable[[], Coroutine[Any, Any, Any]], loop: asyncio.AbstractEventLoop
) -> bool:
    """Call ``start()`` and run the coroutine it returns; True if it never suspended.

    The first step runs inside ``loop`` (so a client that asks for the running loop works); a
    coroutine that suspends is finished there too.
    """

    async def probe() -> bool:
        coro = start()
        try:
            yielded = coro.send(None)
        except StopIteration:
            return True
        await _finish(coro, yielded)
        return False

    return loop.run_until_complete(probe())
