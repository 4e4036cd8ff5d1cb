"""What a benchmark run is asked to do and what it found: options, endpoints, results, machine info."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ..redact import redact_url
from .measure import Latency, Throughput
from .stacks import STACKS, FloorName, ServiceName, StackSpec
from .workload import Distribution

__all__ = [
    "BenchOptions",
    "BenchResult",
    "Endpoints",
    "Progress",
    "StackResult",
    "machine_info",
    "redact_url",
]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    stacks: tuple[StackSpec, ...] = tuple(STACKS.values())
    bots: int = 1000
    config_size: int = 2048
    distribution: Distribution = "uniform"
    concurrency: int = 32
    duration: float = 1.0
    seed: int = 0

    @property
    def needs(self) -> frozenset[ServiceName]:
        return frozenset().union(*(spec.needs for spec in self.stacks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "stacks": [spec.name for spec in self.stacks],
            "bots": self.bots,
            "config_size": self.config_size,
            "distribution": self.distribution,
            "concurrency": self.concurrency,
            "duration": self.duration,
            "seed": self.seed,
        }


@dataclass(slots=True)
class Endpoints:
    """Where the servers are, how each was found, and why a missing one is missing."""

    redis_url: str | None = None
    postgres_dsn: str | None = None
    sources: dict[ServiceName, str] = field(default_factory=dict)  # argument / environment / embedded
    errors: dict[ServiceName, str] = field(default_factory=dict)

    def url(self, service: ServiceName) -> str | None:
        return self.redis_url if service == "redis" else self.postgres_dsn


class Progress:
    """Receives progress while the run goes (the command shows a progress bar); no-op by default."""

    def begin(self, total: int) -> None:
        """``total`` steps are planned."""

    def step(self, description: str) -> None:
        """A step starts (the previous one, if any, is done)."""

    def skip(self, count: int, description: str) -> None:
        """``count`` planned steps will not run."""


@dataclass(slots=True)
class StackResult:
    spec: StackSpec
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    get_config: Latency | None = None
    throughput: Throughput | None = None
    miss: Latency | None = None
    register: Latency | None = None
    deactivate: Latency | None = None
    read_after_invalidation: Latency | None = None
    read_after_register: Latency | None = None
    paired_floor: Latency | None = None  # the floor, timed in alternation with get_config
    ratio: float | None = None  # get_config median / the paired floor's median
    tier_stats: dict[str, dict[str, int]] | None = None
    seconds: float = 0.0

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
            "miss": opt(self.miss),
            "register": opt(self.register),
            "deactivate": opt(self.deactivate),
            "read_after_invalidation": opt(self.read_after_invalidation),
            "read_after_register": opt(self.read_after_register),
            "tier_stats": self.tier_stats,
            "seconds": round(self.seconds, 3),
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
    warnings: list[str] = field(default_factory=list)
    namespace: str = ""  # the prefix of every key and table of the run
    started_at: str = ""
    seconds: float = 0.0

    @property
    def skipped(self) -> list[StackResult]:
        return [s for s in self.stacks if s.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 1,
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
            "stacks": [s.to_dict() for s in self.stacks],
            "skipped": [{"name": s.spec.name, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
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
