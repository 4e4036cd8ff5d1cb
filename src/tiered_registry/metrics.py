"""Prometheus metrics for :class:`~tiered_registry.TieredBackend` (the ``metrics`` extra).

``pip install 'tiered-registry[metrics]'``, then::

    from tiered_registry.metrics import register_metrics

    register_metrics(registry)  # into prometheus_client's default REGISTRY; or registry=...

:class:`RegistryCollector` reads, when scraped, the counters the stack keeps anyway
(:meth:`TieredBackend.stats`, the invalidation channel's lag histogram): nothing is added to the
hot path, and a scrape costs a few dict reads per tier. Safe to scrape from the exposition
server's thread (plain reads, no awaits); the values of one scrape may be a few operations apart.

Every series has a ``namespace`` label (the stack's Redis namespace, ``"default"`` without
Redis, or what ``namespace=`` says); per-tier series also ``tier`` (``local``, ``redis``, ...).

Per tier:
    ``tiered_registry_tier_{hits,misses,fills,evictions,expirations,invalidations,errors}_total``
    (evictions and expirations are counted by the in-process tier only: Redis evicts and expires
    on its own, see its ``INFO stats``); ``tiered_registry_local_entries`` (gauge, in-process tier).
Per shared tier (Redis):
    ``tiered_registry_circuit_open`` (gauge: 1 while the breaker is open or half-open),
    ``tiered_registry_circuit_opened_total``, ``tiered_registry_owed_invalidations`` (gauge:
    invalidations the tier is owed after writes that could not reach it — one per bot, and an owed
    clear counts as one) and ``tiered_registry_owed_everything`` (gauge: 1 while a clear is owed).
Store:
    ``tiered_registry_store_reads_total``, ``tiered_registry_store_errors_total`` (failed reads).
Invalidation channel (stacks with Redis only):
    ``tiered_registry_invalidations_{published,received,publish_errors}_total``,
    ``tiered_registry_channel_up`` (gauge), ``tiered_registry_channel_drops_total``,
    ``tiered_registry_unannounced_invalidations`` (gauge: PUBLISHes that failed and are still
    owed to the other processes; "everything" counts as one) and
    ``tiered_registry_propagation_lag_seconds`` (histogram: from the sender's clock when it
    published, after its commit, to this process receiving the message and dropping its copy;
    across hosts it includes their clock difference).

A stack without a channel or without a local tier has no such series. Batch sizes: nothing is
batched on the read path yet (see the architecture notes), so there is no batch-size metric; the
write-behind of ``last_accessed_at`` flushes in batches, which are not counted yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:
    raise ImportError(
        "tiered_registry.metrics needs the prometheus-client package: pip install 'tiered-registry[metrics]'"
    ) from exc

from .errors import ConfigurationError
from .tiered import TieredBackend

__all__ = ["RegistryCollector", "namespace_of", "register_metrics"]

PREFIX = "tiered_registry"
DEFAULT_NAMESPACE = "default"

_TIER_COUNTERS = {
    "hits": "Reads the tier answered (a remembered miss counts too).",
    "misses": "Reads the tier did not know (passed to the tier below).",
    "fills": "Values the tier cached (after a read below it, or a write-through).",
    "evictions": "Entries dropped to make room (LRU at maxsize); counted by the in-process tier.",
    "expirations": "Entries dropped when their TTL ran out; counted by the in-process tier.",
    "invalidations": "Invalidations applied to the tier (writes, clears, other processes' messages).",
    "errors": "Failed calls to the tier (then skipped) and undecodable values.",
}
_CHANNEL_COUNTERS = {
    "published": ("invalidations_published", "Invalidations this process published to the others."),
    "received": ("invalidations_received", "Invalidations received from other processes."),
    "publish_errors": ("invalidations_publish_errors", "PUBLISHes of invalidations that failed."),
    "drops": ("channel_drops", "Times the invalidation subscriber connection was lost."),
}


def namespace_of(backend: TieredBackend) -> str:
    """The ``namespace`` label for ``backend``: its Redis namespace, or ``"default"``."""
    channel = backend.channel
    if channel is not None:
        return channel.namespace
    for part in (*backend.tiers, backend.store):
        get_source = getattr(part, "invalidation_source", None)
        found = get_source() if get_source is not None else None
        if found is not None:
            return str(found[1])
    return DEFAULT_NAMESPACE


class _Families:
    """One scrape's metric families (empty ones are left out of it)."""

    def __init__(self) -> None:
        tier, ns = ["namespace", "tier"], ["namespace"]
        self.tier = {
            key: CounterMetricFamily(f"{PREFIX}_tier_{key}", doc, labels=tier)
            for key, doc in _TIER_COUNTERS.items()
        }
        self.entries = GaugeMetricFamily(
            f"{PREFIX}_local_entries", "Entries the in-process tier holds now.", labels=tier
        )
        self.circuit_open = GaugeMetricFamily(
            f"{PREFIX}_circuit_open", "1 while the tier's circuit breaker is open or half-open.", labels=tier
        )
        self.circuit_opened = CounterMetricFamily(
            f"{PREFIX}_circuit_opened", "Times the tier's circuit breaker opened.", labels=tier
        )
        self.owed = GaugeMetricFamily(
            f"{PREFIX}_owed_invalidations",
            "Invalidations the tier is owed after writes that could not reach it (a clear counts as one).",
            labels=tier,
        )
        self.owed_everything = GaugeMetricFamily(
            f"{PREFIX}_owed_everything", "1 while the tier is owed a clear.", labels=tier
        )
        self.store_reads = CounterMetricFamily(
            f"{PREFIX}_store_reads", "Reads that reached the store.", labels=ns
        )
        self.store_errors = CounterMetricFamily(
            f"{PREFIX}_store_errors", "Reads of the store that failed.", labels=ns
        )
        self.channel = {
            key: CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=ns)
            for key, (name, doc) in _CHANNEL_COUNTERS.items()
        }
        self.channel_up = GaugeMetricFamily(
            f"{PREFIX}_channel_up", "1 while subscribed to the invalidation channel.", labels=ns
        )
        self.unannounced = GaugeMetricFamily(
            f"{PREFIX}_unannounced_invalidations",
            "Invalidations whose PUBLISH failed, still owed to the other processes.",
            labels=ns,
        )
        self.lag = HistogramMetricFamily(
            f"{PREFIX}_propagation_lag_seconds",
            "From a write's invalidation being published (after its commit) to this process dropping it.",
            labels=ns,
            unit="seconds",
        )

    def all(self) -> list[Metric]:
        return [
            *self.tier.values(),
            self.entries,
            self.circuit_open,
            self.circuit_opened,
            self.owed,
            self.owed_everything,
            self.store_reads,
            self.store_errors,
            *self.channel.values(),
            self.channel_up,
            self.unannounced,
            self.lag,
        ]

    def add(self, namespace: str, backend: TieredBackend) -> None:
        stats = backend.stats()
        names = list(stats)[: len(backend.tiers)]  # stats() lists the tiers first, nearest first
        for name in names:
            counters = stats[name]
            labels = [namespace, name]
            for key, family in self.tier.items():
                family.add_metric(labels, counters.get(key, 0))
            if "entries" in counters:
                self.entries.add_metric(labels, counters["entries"])
            if "circuit_open" in counters:
                self.circuit_open.add_metric(labels, counters["circuit_open"])
                self.circuit_opened.add_metric(labels, counters["circuit_opened"])
                self.owed.add_metric(labels, counters["owed"])
                self.owed_everything.add_metric(labels, counters["owed_everything"])
        self.store_reads.add_metric([namespace], stats["store"]["reads"])
        self.store_errors.add_metric([namespace], stats["store"]["errors"])
        channel = stats.get("channel")
        if channel is None or backend.channel is None:
            return
        for key, family in self.channel.items():
            family.add_metric([namespace], channel[key])
        self.channel_up.add_metric([namespace], channel["up"])
        self.unannounced.add_metric([namespace], channel["unannounced"])
        lag = backend.channel.lag
        total = lag.sum
        buckets = [(_le(bound), float(count)) for bound, count in lag.cumulative()]
        self.lag.add_metric([namespace], buckets, total)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class RegistryCollector(Collector):
    """A Prometheus collector of one or more :class:`TieredBackend` (see the module notes).

    ``RegistryCollector(backend, namespace=None)``; more stacks: ``collector.add(other,
    namespace=...)``. Each stack needs its own ``namespace`` label (two stacks of one Redis
    namespace in one process: pass ``namespace=`` to tell them apart).
    """

    def __init__(self, *backends: TieredBackend, namespace: str | None = None) -> None:
        self._backends: list[tuple[str, TieredBackend]] = []
        for backend in backends:
            self.add(backend, namespace=namespace)

    def add(self, backend: TieredBackend, *, namespace: str | None = None) -> None:
        """Expose ``backend`` too, labelled ``namespace`` (default: :func:`namespace_of`)."""
        if not isinstance(backend, TieredBackend):
            raise ConfigurationError(f"RegistryCollector takes TieredBackends, got {type(backend).__name__}")
        label = namespace_of(backend) if namespace is None else namespace
        if any(label == taken for taken, _ in self._backends):
            raise ConfigurationError(
                f"two stacks with the namespace label {label!r}: pass namespace= to tell them apart"
            )
        self._backends.append((label, backend))

    def remove(self, backend: TieredBackend) -> None:
        """Stop exposing ``backend``."""
        self._backends = [(label, b) for label, b in self._backends if b is not backend]

    def describe(self) -> list[Metric]:
        """Every family this collector can yield (for the registry's duplicate-name check)."""
        return _Families().all()

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for namespace, backend in list(self._backends):
            families.add(namespace, backend)
        for family in families.all():
            if family.samples:
                yield family


def register_metrics(
    *backends: TieredBackend, registry: CollectorRegistry = REGISTRY, namespace: str | None = None
) -> RegistryCollector:
    """Register a :class:`RegistryCollector` of ``backends`` in ``registry`` (default: the global
    one) and return it (``registry.unregister(collector)`` removes it)."""
    collector = RegistryCollector(*backends, namespace=namespace)
    registry.register(collector)
    return collector
