"""One benchmark run: floors first, then every selected stack, each in its own namespace.

Per stack, in order (each bounded by ``duration`` seconds):

1. set up: register ``bots`` bots through the stack (write-through, so caches start warm), warm up;
2. ``get_config`` hot path: per-call latency (median, p99) of reads drawn from the key distribution;
3. throughput: calls/s completed by N tasks reading in a loop, for each N of the ``concurrency``
   sweep, timed in alternation with the stack's floor at the same N; the hits of each tier meanwhile;
4. miss path: every cache tier is cleared (the store keeps its data), then each bot is read once —
   a cold read through every tier down to the store, filling the tiers on the way back;
5. writes: for one bot after another, ``deactivate`` (an invalidation of every tier), the next
   ``get_config`` (the cost of that invalidation for the next reader), ``register`` (re-activate,
   write-through) and the read after it;
6. clean up: flush, clear, drop the table, close — also on error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import gc
import random
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ..base import BackendBase
from ..errors import ConfigurationError
from ..tiered import TieredBackend
from .atsize import AT_SIZE_STEPS, measure_at_size
from .floors import (
    dict_floor,
    pg_pool_floor,
    pg_select_floor,
    postgres_pool_size,
    postgres_version,
    redis_cluster_get_floor,
    redis_cluster_version,
    redis_get_floor,
    redis_version,
)
from .measure import (
    Call,
    Latency,
    Throughput,
    checkpoint,
    latency_from,
    measure_latency,
    measure_paired,
    measure_throughput,
    measure_throughput_paired,
)
from .memory import peak_rss_bytes, rss_bytes
from .results import (
    BenchOptions,
    BenchResult,
    Endpoints,
    Progress,
    StackResult,
    SweepPoint,
    machine_info,
    redact_url,
)
from .stacks import (
    FloorName,
    ServiceName,
    StackSpec,
    close_stack,
    open_stack,
    populate,
    remove_namespace,
    stack_namespace,
)
from .workload import KeyStream, bot_ids, key_sequence, make_config

__all__ = ["new_run_prefix", "run_bench", "stack_steps", "steps_for"]

SEQUENCE_LENGTH: Final = 20_000
"""Keys drawn per run at least; 4 per bot with more bots (a repeated short sequence would read
fewer distinct bots than the distribution does, and fit in a local tier that the real one overflows)."""
FLOOR_BOTS: Final = 1000  # the Redis/PostgreSQL floors store at most this many copies
DISTINCT_CONFIGS: Final = 64  # configs cycle over this many distinct documents (bounded memory)
MAX_WRITE_CYCLES: Final = 20_000
MAX_MISS_ROUNDS: Final = 100
REDIS_FLOOR_CONNECTIONS: Final = 100  # redis-py's default pool limit; more if more tasks read at once


_FLOOR_SERVICES: Final[dict[ServiceName, FloorName]] = {
    "redis": "redis_get",
    "postgres": "pg_select",
    "redis-cluster": "redis_cluster_get",
}
"""The floor measured when a stack needs that service (the dict floor is always measured)."""


def stack_steps(options: BenchOptions) -> int:
    """Progress steps of one stack: set up, hot path, one per concurrency, miss, writes, clean up."""
    return 5 + len(options.concurrency)


def steps_for(options: BenchOptions) -> int:
    """How many progress steps a run of ``options`` has (floors twice + :func:`stack_steps` per stack)."""
    floors = 1 + sum(1 for service in _FLOOR_SERVICES if service in options.needs)
    at_size = AT_SIZE_STEPS if options.at_size else 0
    return 2 * floors + stack_steps(options) * len(options.stacks) + at_size


# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Workload:
    ids: list[str]
    configs: list[dict[str, Any]]
    sequence: list[str]
    floor_ids: list[str]
    floor_sequence: list[str]

    @classmethod
    def build(cls, options: BenchOptions) -> _Workload:
        ids = bot_ids(options.bots)
        configs = [make_config(options.config_size, i) for i in range(min(len(ids), DISTINCT_CONFIGS))]
        length = max(SEQUENCE_LENGTH, 4 * len(ids))
        sequence = key_sequence(ids, length, options.distribution, seed=options.seed)
        floor_ids = ids[:FLOOR_BOTS]
        floor_sequence = (
            sequence
            if len(floor_ids) == len(ids)
            else key_sequence(floor_ids, SEQUENCE_LENGTH, options.distribution, seed=options.seed)
        )
        return cls(ids, configs, sequence, floor_ids, floor_sequence)


async def _warm(call: Call, ids: Sequence[str], keys: KeyStream, duration: float) -> None:
    """Read every bot once, then read from the distribution for a short while (untimed)."""
    for start in range(0, len(ids), 256):
        for bot_id in ids[start : start + 256]:
            await call(bot_id)
        await checkpoint()
    deadline = time.perf_counter() + min(0.25, duration / 4)
    while time.perf_counter() < deadline:
        for key in keys.take(64):
            await call(key)
        await checkpoint()


@dataclass(slots=True)
class _Floor:
    """An open floor: what to call, over which bots and key sequence."""

    call: Call
    ids: Sequence[str]
    sequence: list[str]

    async def measure(self, duration: float) -> Latency:
        stream = KeyStream(self.sequence)
        await _warm(self.call, self.ids[:256], stream, duration)
        gc.collect()
        return await measure_latency(self.call, stream, duration=duration)


async def _measure_miss(backend: BackendBase, ids: Sequence[str], duration: float, seed: int) -> Latency:
    """Cold reads: clear every cache tier (not the store), then read each bot once; repeat."""
    tiers = backend.tiers if isinstance(backend, TieredBackend) else ()
    order = list(ids)
    random.Random(seed).shuffle(order)
    clock = time.perf_counter_ns
    samples: list[float] = []
    deadline = time.perf_counter() + duration
    for _ in range(MAX_MISS_ROUNDS):
        for tier in tiers:
            await tier.clear()
        for start in range(0, len(order), 16):
            for bot_id in order[start : start + 16]:
                begin = clock()
                await backend.get_config(bot_id)
                samples.append(clock() - begin)
            await checkpoint()
            if time.perf_counter() >= deadline and len(samples) >= 20:
                return latency_from(samples)
    return latency_from(samples)


async def _measure_writes(
    backend: BackendBase, ids: Sequence[str], configs: Sequence[dict[str, Any]], duration: float, seed: int
) -> tuple[Latency, Latency, Latency, Latency]:
    """deactivate -> read (after the invalidation) -> register (re-activate) -> read, bot after bot."""
    order = list(ids)
    random.Random(seed + 1).shuffle(order)
    clock = time.perf_counter_ns
    deactivate: list[float] = []
    after_invalidation: list[float] = []
    register: list[float] = []
    after_register: list[float] = []
    deadline = time.perf_counter() + duration
    for cycle in range(MAX_WRITE_CYCLES):
        bot_id = order[cycle % len(order)]
        config = configs[(cycle + 1) % len(configs)]
        begin = clock()
        await backend.deactivate(bot_id)
        middle = clock()
        await backend.get_config(bot_id)
        end = clock()
        deactivate.append(middle - begin)
        after_invalidation.append(end - middle)
        begin = clock()
        await backend.register(bot_id, config)
        middle = clock()
        await backend.get_config(bot_id)
        end = clock()
        register.append(middle - begin)
        after_register.append(end - middle)
        if cycle % 8 == 7:
            await checkpoint()
            if time.perf_counter() >= deadline and cycle >= 15:
                break
    return (
        latency_from(deactivate),
        latency_from(after_invalidation),
        latency_from(register),
        latency_from(after_register),
    )


class _Run:
    def __init__(self, options: BenchOptions, endpoints: Endpoints, progress: Progress, prefix: str) -> None:
        self.options = options
        self.endpoints = endpoints
        self.progress = progress
        self.prefix = prefix
        self.available: dict[ServiceName, str] = {}
        self.tables: list[str] = []  # every PostgreSQL table this run may have created
        self.result = BenchResult(
            options, machine_info(), namespace=prefix, started_at=datetime.now(UTC).isoformat()
        )
        self.workload = _Workload.build(options)
        self.open_floors: dict[FloorName, _Floor] = {}
        self.throughput_floors: dict[FloorName, _Floor] = {}  # what N tasks call (pg: a held pool)
        self._steps = 0  # progress steps started for the current stack

    async def probe(self) -> None:
        for service in sorted(self.options.needs):
            url = self.endpoints.url(service)
            info: dict[str, Any] = {"source": self.endpoints.sources.get(service)}
            if url is None:
                info["error"] = self.endpoints.errors.get(service, "no URL given")
            else:
                info["url"] = redact_url(url)
                try:
                    probe = {"redis": redis_version, "redis-cluster": redis_cluster_version}.get(
                        service, postgres_version
                    )
                    info["version"] = await probe(url)
                    if service == "pgbouncer":
                        info["version"] += " via PgBouncer"
                    self.available[service] = url
                except Exception as exc:
                    info["error"] = f"{redact_url(url)} does not answer: {type(exc).__name__}: {exc}"
            self.result.services[service] = info

    async def open_floor_set(self, exits: contextlib.AsyncExitStack) -> None:
        """Set up every floor once; they stay open for the whole run, because each stack's hot path
        is timed in alternation with its floor (:func:`measure_paired`)."""
        w = self.workload
        call = await exits.enter_async_context(dict_floor(w.ids, w.configs[0]))
        self.open_floors["dict"] = self.throughput_floors["dict"] = _Floor(call, w.ids, w.sequence)
        for service, name in _FLOOR_SERVICES.items():
            if service not in self.options.needs:
                continue
            url = self.available.get(service)
            if url is None:
                self.result.floor_errors[name] = f"{service} not available"
                continue
            floor: contextlib.AbstractAsyncContextManager[Call]
            if service == "redis":
                connections = max(REDIS_FLOOR_CONNECTIONS, *self.options.concurrency)
                floor = redis_get_floor(
                    url, self.prefix, w.floor_ids, w.configs[0], max_connections=connections
                )
                self.result.redis_floor_connections = connections
            elif service == "redis-cluster":
                connections = max(REDIS_FLOOR_CONNECTIONS, *self.options.concurrency)
                floor = redis_cluster_get_floor(
                    url, self.prefix, w.floor_ids, w.configs[0], max_connections=connections
                )
                self.result.redis_cluster_floor_connections = connections
            else:
                table = f"{self.prefix}_floor"
                self.tables.append(table)
                floor = pg_select_floor(url, table, w.floor_ids, w.configs[0])
            try:
                call = await exits.enter_async_context(floor)
            except Exception as exc:
                self.result.floor_errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            self.open_floors[name] = _Floor(call, w.floor_ids, w.floor_sequence)
            self.throughput_floors[name] = self.open_floors[name]
            if service == "postgres":
                try:
                    pooled = await exits.enter_async_context(
                        pg_pool_floor(url, f"{self.prefix}_floor", postgres_pool_size())
                    )
                except Exception as exc:
                    del self.throughput_floors[name]
                    self.result.warnings.append(
                        f"the held-connections asyncpg floor could not be set up: {type(exc).__name__}: {exc}"
                    )
                else:
                    self.throughput_floors[name] = _Floor(pooled, w.floor_ids, w.floor_sequence)
                    self.result.pg_floor_connections = postgres_pool_size()

    async def floors(self, *, repeat: bool = False) -> None:
        """Measure the floors on their own, for the floor rows (``repeat``: again, for half as
        long, after the stacks; the repeat with the lower median is kept, both go in the JSON)."""
        duration = self.options.duration / 2 if repeat else self.options.duration
        again = " (again)" if repeat else ""
        labels: dict[FloorName, str] = {
            "dict": "async dict lookup",
            "redis_get": "redis-py GET",
            "pg_select": "asyncpg SELECT",
            "redis_cluster_get": "redis-py RedisCluster GET",
        }
        needed = {name for service, name in _FLOOR_SERVICES.items() if service in self.options.needs}
        for name, label in labels.items():
            if name != "dict" and name not in needed:
                continue
            self.progress.step(f"floor: {label}{again}")
            floor = self.open_floors.get(name)
            if floor is None:
                continue
            try:
                self._keep_floor(name, await floor.measure(duration))
            except Exception as exc:
                self.result.floor_errors.setdefault(name, f"{type(exc).__name__}: {exc}")

    def _keep_floor(self, name: FloorName, latency: Latency) -> None:
        self.result.floor_repeats.setdefault(name, []).append(latency.median_ns)
        best = self.result.floors.get(name)
        if best is None or latency.median_ns < best.median_ns:
            self.result.floors[name] = latency

    def ratios(self) -> None:
        """Each stack's hot-path median over the median of its floor timed alongside it (or, if
        that floor could not be set up, of the floor row)."""
        for stack in self.result.stacks:
            floor = stack.paired_floor or self.result.floors.get(stack.spec.floor)
            if stack.get_config is not None and floor is not None and floor.median_ns > 0:
                stack.ratio = stack.get_config.median_ns / floor.median_ns

    async def stack(self, spec: StackSpec) -> StackResult:
        result = StackResult(spec)
        missing = sorted(spec.needs - set(self.available))
        if missing:
            result.status = "skipped"
            result.reason = "; ".join(
                f"{service}: {self.result.services.get(service, {}).get('error', 'not available')}"
                for service in missing
            )
            self.progress.skip(stack_steps(self.options), f"{spec.name}: skipped")
            return result
        started = time.perf_counter()
        namespace = stack_namespace(self.prefix, spec)
        if spec.store in ("postgres", "postgres-pgbouncer"):
            self.tables.append(namespace)
        self._steps = 0
        self._step(f"{spec.name}: set up")
        backend: BackendBase | None = None
        try:
            backend = await open_stack(
                spec,
                namespace,
                redis_url=self.available.get("redis"),
                postgres_dsn=self.available.get("postgres"),
                bots=self.options.bots,
                local_maxsize=self.options.local_maxsize,
                pgbouncer_dsn=self.available.get("pgbouncer"),
                redis_cluster_url=self.available.get("redis-cluster"),
            )
            await self._measure(backend, result)
        except ConfigurationError as exc:  # e.g. the module of an optional extra is missing
            result.status = "skipped"
            result.reason = str(exc)
        except Exception as exc:
            result.status = "failed"
            result.reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.progress.skip(stack_steps(self.options) - 1 - self._steps, f"{spec.name}: failed")
            self.progress.step(f"{spec.name}: clean up")
            if backend is not None:
                self.result.warnings.extend(await close_stack(backend))
            result.seconds = time.perf_counter() - started
        return result

    def _check_local_hits(self, spec: StackSpec, hot: Latency, hits: int) -> None:
        """A stack with a local tier must serve its hot path from it; say so if it did not."""
        if "local" not in spec.tiers or self.options.local_maxsize < self.options.bots:
            return  # (a local tier smaller than the working set misses by design)
        reads = hot.samples * hot.per
        if hits < 0.9 * reads:
            self.result.warnings.append(
                f"{spec.name}: the local tier served only {hits} of about {reads} hot-path reads "
                "(bypassed or evicting?): its get_config figures are not local hits"
            )

    def _step(self, description: str) -> None:
        self._steps += 1
        self.progress.step(description)

    async def _measure(self, backend: BackendBase, result: StackResult) -> None:
        """The measurement steps of one open stack (set up, hot path, throughput, miss, writes)."""
        options, w, spec = self.options, self.workload, result.spec
        total = len(w.ids)

        def loaded(count: int) -> None:
            self.progress.detail(f"{spec.name}: set up, {count:,} of {total:,} bots loaded")

        setup_started = time.perf_counter()
        await populate(backend, w.ids, w.configs, progress=loaded)
        result.setup_seconds = time.perf_counter() - setup_started
        call = backend.get_config
        keys = KeyStream(w.sequence)
        await _warm(call, w.ids, keys, options.duration)
        gc.collect()
        self._step(f"{spec.name}: get_config hot path")
        hits_before = _local_hits(backend)
        floor = self.open_floors.get(spec.floor)
        if floor is None:
            result.get_config = await measure_latency(call, keys, duration=options.duration)
        else:
            await _warm(floor.call, floor.ids[:256], KeyStream(floor.sequence), options.duration)
            result.get_config, result.paired_floor = await measure_paired(
                call, keys, floor.call, KeyStream(floor.sequence), duration=options.duration
            )
        self._check_local_hits(spec, result.get_config, _local_hits(backend) - hits_before)
        # A local tier smaller than the working set misses: compare with what serves those misses.
        floor_name = spec.floor_behind_local if options.local_maxsize < options.bots else spec.floor
        throughput_floor = self.throughput_floors.get(floor_name)
        for concurrency in options.concurrency:
            self._step(f"{spec.name}: throughput, {concurrency} task{'s' if concurrency > 1 else ''}")
            point = await self._throughput(spec, backend, keys, throughput_floor, concurrency)
            if throughput_floor is not None:
                point.floor_name = floor_name
            result.sweep.append(point)
        self._step(f"{spec.name}: miss path")
        result.miss = await _measure_miss(backend, w.ids, options.duration, options.seed)
        self._step(f"{spec.name}: register / deactivate / invalidation")
        (
            result.deactivate,
            result.read_after_invalidation,
            result.register,
            result.read_after_register,
        ) = await _measure_writes(backend, w.ids, w.configs, options.duration, options.seed)
        if isinstance(backend, TieredBackend):
            result.tier_stats = backend.stats()

    async def _throughput(
        self, spec: StackSpec, backend: BackendBase, keys: KeyStream, floor: _Floor | None, concurrency: int
    ) -> SweepPoint:
        """calls/s of ``concurrency`` tasks reading (and of the floor, in alternation), with each
        tier's hits and misses and the store's reads meanwhile (a stack with tiers)."""
        before = backend.stats() if isinstance(backend, TieredBackend) else None
        gc.collect()
        duration = self.options.duration
        try:
            if floor is None:
                ours = await measure_throughput(
                    backend.get_config, keys, concurrency=concurrency, duration=duration
                )
                point = SweepPoint(concurrency, ours)
            else:
                ours, theirs = await measure_throughput_paired(
                    backend.get_config,
                    keys,
                    floor.call,
                    KeyStream(floor.sequence),
                    concurrency=concurrency,
                    duration=duration,
                )
                point = SweepPoint(concurrency, ours, theirs)
        except Exception as exc:  # this level failed (e.g. a client's pool limit): keep the rest
            error = f"{type(exc).__name__}: {exc}"
            self.result.warnings.append(f"{spec.name}: throughput with {concurrency} tasks failed: {error}")
            point = SweepPoint(concurrency, Throughput(0, 0.0, concurrency), error=error)
            if floor is not None:  # the floor's line stays complete
                try:
                    point.floor = await measure_throughput(
                        floor.call, KeyStream(floor.sequence), concurrency=concurrency, duration=duration / 2
                    )
                except Exception as floor_exc:
                    self.result.warnings.append(
                        f"a throughput floor with {concurrency} tasks failed: "
                        f"{type(floor_exc).__name__}: {floor_exc}"
                    )
        if before is not None and isinstance(backend, TieredBackend):
            after = backend.stats()
            for tier, counters in after.items():
                if tier in ("store", "channel") or "hits" not in counters:
                    continue
                old = before.get(tier, {})
                point.tier_hits[tier] = (
                    counters["hits"] - old.get("hits", 0),
                    counters.get("misses", 0) - old.get("misses", 0),
                )
            point.store_reads = after["store"]["reads"] - before["store"]["reads"]
        return point

    async def sweep(self) -> None:
        """Remove anything left under this run's prefix, whatever happened before."""
        self.result.warnings.extend(
            await remove_namespace(
                self.prefix,
                redis_url=self.available.get("redis"),
                postgres_dsn=self.available.get("postgres") or self.available.get("pgbouncer"),
                tables=self.tables,
                redis_cluster_url=self.available.get("redis-cluster"),
            )
        )


def _local_hits(backend: BackendBase) -> int:
    if not isinstance(backend, TieredBackend):
        return 0
    return backend.stats().get("local", {}).get("hits", 0)


async def _measure_at_size(run: _Run, bots: int) -> None:
    """``--at-size``: memory and hot paths with ``bots`` bots cached (:mod:`.atsize`), on the
    servers of this run; a failure is a warning, its tables are dropped by the run's sweep."""
    options = run.options
    try:
        run.result.at_size = await measure_at_size(
            bots,
            prefix=run.prefix,
            redis_url=run.available.get("redis"),
            postgres_dsn=run.available.get("postgres"),
            config_size=options.config_size,
            distribution=options.distribution,
            duration=options.duration,
            seed=options.seed,
            step=run.progress.step,
            tables=run.tables,
        )
    except Exception as exc:
        run.result.warnings.append(f"at size: {type(exc).__name__}: {exc}")


def new_run_prefix() -> str:
    """A fresh ``trb_<10 hex>``: every key and table of one run starts with it."""
    return f"trb_{uuid.uuid4().hex[:10]}"


async def run_bench(
    options: BenchOptions,
    endpoints: Endpoints,
    progress: Progress | None = None,
    *,
    prefix: str | None = None,
) -> BenchResult:
    """Measure the floors and every stack of ``options``; never leaves data behind on the servers.

    Every Redis key and PostgreSQL table of the run starts with ``prefix`` (default: a fresh
    :func:`new_run_prefix`). A stack whose server is unavailable is skipped, one that fails is
    marked failed; both say why. Cancellation (Ctrl-C under ``asyncio.run``) still closes what is
    open and removes this run's data.
    """
    if prefix is None:
        prefix = new_run_prefix()
    elif not re.fullmatch(r"[a-z][a-z0-9_]{0,20}", prefix):
        raise ValueError(f"prefix must be a short lowercase identifier, got {prefix!r}")
    run = _Run(options, endpoints, progress or Progress(), prefix)
    run.progress.begin(steps_for(options))
    started = time.perf_counter()
    try:
        await run.probe()
        async with contextlib.AsyncExitStack() as floors:
            await run.open_floor_set(floors)
            await run.floors()
            for spec in options.stacks:
                run.result.stacks.append(await run.stack(spec))
            await run.floors(repeat=True)
        run.ratios()
        if options.at_size:
            await _measure_at_size(run, options.at_size)
        run.result.rss_bytes, run.result.peak_rss_bytes = rss_bytes(), peak_rss_bytes()
    finally:
        await run.sweep()
        run.result.seconds = time.perf_counter() - started
    return run.result
