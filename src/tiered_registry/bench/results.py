"""What a benchmark run is asked to do and what it found: options, endpoints, results, machine info."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

from ..redact import redact_url
from .measure import Latency, Throughput
from .stacks import FLOOR_LABELS as FLOOR_ORDER
from .stacks import STACKS, FloorName, ServiceName, StackSpec
from .workload import Distribution

if TYPE_CHECKING:
    from .atsize import AtSizeResult

__all__ = [
    "DEFAULT_CONCURRENCY",
    "BenchOptions",
    "BenchResult",
    "Endpoints",
    "Progress",
    "StackResult",
    "SweepPoint",
    "machine_info",
    "redact_url",
]


DEFAULT_CONCURRENCY: Final = (1, 32)
"""The throughput sweep of a default run (tasks reading at once); ``--concurrency 1,8,32,128`` for more."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    stacks: tuple[StackSpec, ...] = tuple(STACKS.values())
    bots: int = 1000
    config_size: int = 2048
    distribution: Distribution = "uniform"
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY  # the throughput sweep, in this order
    duration: float = 1.0
    seed: int = 0
    local_size: int | None = None  # the local tier's maxsize; None: max(10_000, 2 * bots)
    at_size: int | None = None  # --at-size: also measure memory and hot paths with this many bots

    def __post_init__(self) -> None:
        if isinstance(self.concurrency, int):  # one level, as before the sweep
            object.__setattr__(self, "concurrency", (self.concurrency,))
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError(f"concurrency must be one or more numbers >= 1, got {self.concurrency!r}")

    @property
    def needs(self) -> frozenset[ServiceName]:
        at_size: frozenset[ServiceName] = frozenset({"redis", "postgres"} if self.at_size else ())
        return at_size.union(*(spec.needs for spec in self.stacks))

    @property
    def local_maxsize(self) -> int:
        """The local tier's maxsize: ``local_size``, else large enough to hold every bot."""
        return self.local_size if self.local_size is not None else max(10_000, 2 * self.bots)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stacks": [spec.name for spec in self.stacks],
            "bots": self.bots,
            "config_size": self.config_size,
            "distribution": self.distribution,
            "concurrency": list(self.concurrency),
            "duration": self.duration,
            "seed": self.seed,
            "local_size": self.local_maxsize,
            "at_size": self.at_size,
        }


@dataclass(slots=True)
class Endpoints:
    """Where the servers are, how each was found, and why a missing one is missing."""

    redis_url: str | None = None
    postgres_dsn: str | None = None
    sources: dict[ServiceName, str] = field(default_factory=dict)  # argument / environment / embedded
    errors: dict[ServiceName, str] = field(default_factory=dict)
    pgbouncer_dsn: str | None = None  # a PgBouncer (transaction pool mode), only if asked for
    redis_cluster_url: str | None = None  # a redis+cluster:// URL, only if asked for

    def url(self, service: ServiceName) -> str | None:
        if service == "pgbouncer":
            return self.pgbouncer_dsn
        if service == "redis-cluster":
            return self.redis_cluster_url
        return self.redis_url if service == "redis" else self.postgres_dsn


class Progress:
    """Receives progress while the run goes (the command shows a progress bar); no-op by default."""

    def begin(self, total: int) -> None:
        """``total`` steps are planned."""

    def step(self, description: str) -> None:
        """A step starts (the previous one, if any, is done)."""

    def skip(self, count: int, description: str) -> None:
        """``count`` planned steps will not run."""

    def detail(self, description: str) -> None:
        """How far the current step is (a long set-up: bots loaded so far)."""


@dataclass(slots=True)
class SweepPoint:
    """A stack's throughput at one concurrency, and its floor's, timed in alternation."""

    concurrency: int
    throughput: Throughput
    floor: Throughput | None = None  # the stack's floor at the same concurrency, timed alongside
    tier_hits: dict[str, tuple[int, int]] = field(default_factory=dict)  # tier -> (hits, misses)
    store_reads: int | None = None  # reads that reached the store (a stack with tiers)
    error: str | None = None  # the stack failed at this concurrency (throughput: 0 calls)
    floor_name: FloorName | None = None  # which floor ``floor`` is

    @property
    def ratio(self) -> float | None:
        """The stack's calls/s over its floor's (above 1: faster than the raw operation)."""
        if self.error is not None or self.floor is None or self.floor.ops_per_s <= 0:
            return None
        return self.throughput.ops_per_s / self.floor.ops_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.throughput.to_dict(),
            "floor_name": self.floor_name,
            "floor": None if self.floor is None else self.floor.to_dict(),
            "ratio_to_floor": None if self.ratio is None else round(self.ratio, 3),
            "hit_ratio": {tier: _hit_ratio(hits, misses) for tier, (hits, misses) in self.tier_hits.items()},
            "store_reads": self.store_reads,
            "error": self.error,
        }


def _hit_ratio(hits: int, misses: int) -> float | None:
    return None if hits + misses == 0 else round(hits / (hits + misses), 4)


@dataclass(slots=True)
class StackResult:
    spec: StackSpec
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    get_config: Latency | None = None
    sweep: list[SweepPoint] = field(default_factory=list)  # throughput at each concurrency
    miss: Latency | None = None
    register: Latency | None = None
    deactivate: Latency | None = None
    read_after_invalidation: Latency | None = None
    read_after_register: Latency | None = None
    paired_floor: Latency | None = None  # the floor, timed in alternation with get_config
    ratio: float | None = None  # get_config median / the paired floor's median
    tier_stats: dict[str, dict[str, int]] | None = None
    seconds: float = 0.0
    setup_seconds: float = 0.0  # registering (or bulk-loading) the bots through the stack

    @property
    def throughput(self) -> Throughput | None:
        """The throughput at the highest concurrency of the sweep that did not fail."""
        measured = [point for point in self.sweep if point.error is None]
        return measured[-1].throughput if measured else None

    def hit_ratios(self) -> dict[str, float | None]:
        """Each cache tier's hits / (hits + misses) over the whole sweep; ``store``: the share of
        get_config calls that reached the store. Empty for a lone store."""
        totals: dict[str, list[int]] = {}
        for point in self.sweep:
            for tier, (hits, misses) in point.tier_hits.items():
                total = totals.setdefault(tier, [0, 0])
                total[0] += hits
                total[1] += misses
        out = {tier: _hit_ratio(hits, misses) for tier, (hits, misses) in totals.items()}
        calls = sum(point.throughput.ops for point in self.sweep)
        reads = [point.store_reads for point in self.sweep if point.store_reads is not None]
        if totals and reads:
            out["store"] = round(sum(reads) / calls, 4) if calls else None
        return out

    def to_dict(self) -> dict[str, Any]:
        def opt(value: Latency | Throughput | None) -> dict[str, Any] | None:
            return None if value is None else value.to_dict()

        return {
            "name": self.spec.name,
            "label": self.spec.label,
            "status": self.status,
            "reason": self.reason,
            "floor": self.spec.floor,
            "ratio_to_floor": None if self.ratio is None else round(self.ratio, 2),
            "get_config": opt(self.get_config),
            "paired_floor": opt(self.paired_floor),
            "throughput": opt(self.throughput),
            "sweep": [point.to_dict() for point in self.sweep],
            "hit_ratio": self.hit_ratios(),
            "miss": opt(self.miss),
            "register": opt(self.register),
            "deactivate": opt(self.deactivate),
            "read_after_invalidation": opt(self.read_after_invalidation),
            "read_after_register": opt(self.read_after_register),
            "tier_stats": self.tier_stats,
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
        }


@dataclass(slots=True)
class BenchResult:
    options: BenchOptions
    machine: dict[str, Any]
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    floors: dict[FloorName, Latency] = field(default_factory=dict)
    floor_errors: dict[FloorName, str] = field(default_factory=dict)
    floor_repeats: dict[FloorName, list[float]] = field(default_factory=dict)  # median ns of each repeat
    stacks: list[StackResult] = field(default_factory=list)
    pg_floor_connections: int | None = None  # held connections of the asyncpg throughput floor
    redis_floor_connections: int | None = None  # pool limit of the redis-py GET floor's client
    redis_cluster_floor_connections: int | None = None  # the RedisCluster floor's, per node
    warnings: list[str] = field(default_factory=list)
    namespace: str = ""  # the prefix of every key and table of the run
    at_size: AtSizeResult | None = None  # --at-size: memory and hot paths with that many bots
    rss_bytes: int | None = None  # the process's resident set size at the end of the run
    peak_rss_bytes: int | None = None
    started_at: str = ""
    seconds: float = 0.0

    def throughput_floors(self) -> dict[FloorName, dict[int, float]]:
        """Each floor's calls/s at each concurrency: the median of its runs timed alongside the
        stacks (a floor is run next to every stack compared with it)."""
        runs: dict[FloorName, dict[int, list[float]]] = {}
        for stack in self.stacks:
            for point in stack.sweep:
                if point.floor is not None and point.floor_name is not None:
                    runs.setdefault(point.floor_name, {}).setdefault(point.concurrency, []).append(
                        point.floor.ops_per_s
                    )
        return {
            name: {c: statistics.median(values) for c, values in sorted(by_c.items())}
            for name, by_c in sorted(runs.items(), key=lambda item: list(FLOOR_ORDER).index(item[0]))
        }

    @property
    def skipped(self) -> list[StackResult]:
        return [s for s in self.stacks if s.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 2,  # 2: concurrency is a list (the sweep); per stack "sweep", "hit_ratio"
            "started_at": self.started_at,
            "namespace": self.namespace,
            "seconds": round(self.seconds, 3),
            "machine": self.machine,
            "services": self.services,
            "settings": self.options.to_dict(),
            "floors": {
                name: {
                    **latency.to_dict(),
                    "repeats_median_us": [round(ns / 1000, 4) for ns in self.floor_repeats.get(name, [])],
                }
                for name, latency in self.floors.items()
            },
            "floor_errors": dict(self.floor_errors),
            "throughput_floors": {
                name: {str(c): round(ops, 1) for c, ops in by_concurrency.items()}
                for name, by_concurrency in self.throughput_floors().items()
            },
            "pg_floor_connections": self.pg_floor_connections,
            "redis_floor_connections": self.redis_floor_connections,
            "redis_cluster_floor_connections": self.redis_cluster_floor_connections,
            "stacks": [s.to_dict() for s in self.stacks],
            "skipped": [{"name": s.spec.name, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
            "process": {"rss_bytes": self.rss_bytes, "peak_rss_bytes": self.peak_rss_bytes},
            "at_size": None if self.at_size is None else self.at_size.to_dict(),
        }


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """CPU, cores, OS, Python and client library versions (server versions are probed separately)."""
    packages = ("tiered-registry", "redis", "hiredis", "asyncpg", "orjson", "cachetools")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(terse=True),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": type(asyncio.get_event_loop_policy()).__module__.split(".")[0],
        "packages": {name: _package_version(name) for name in packages},
    }
