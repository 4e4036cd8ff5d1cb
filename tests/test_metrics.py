"""Prometheus metrics: real stacks (local -> Redis cache -> PostgreSQL), scraped through
``prometheus_client``'s text exposition and parser, as a Prometheus server would see them."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

from tiered_registry import ConfigurationError, LocalCache, TieredBackend
from tiered_registry.metrics import RegistryCollector, register_metrics
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CHANNEL_SERIES = (
    "tiered_registry_invalidations_",
    "tiered_registry_channel_",
    "tiered_registry_unannounced_",
    "tiered_registry_propagation_lag_",
)


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of one scrape, by (sample name, sorted labels)."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout}s")
        await asyncio.sleep(0.005)


def test_importing_metrics_without_the_extra_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    import tiered_registry.metrics\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "tiered-registry[metrics]" in result.stdout


async def test_a_scrape_shows_reads_writes_and_invalidations_moving(make_stack, namespace: str) -> None:
    writer, reader = await make_stack(), await make_stack()
    registry = CollectorRegistry()
    collector = register_metrics(writer, registry=registry, namespace="writer")
    collector.add(reader, namespace="reader")
    r_local = {"namespace": "reader", "tier": "local"}
    r_redis = {"namespace": "reader", "tier": "redis"}
    before = scrape(registry)
    assert value(before, "tiered_registry_channel_up", namespace="reader") == 1
    assert value(before, "tiered_registry_circuit_open", **r_redis) == 0
    assert value(before, "tiered_registry_owed_invalidations", **r_redis) == 0
    assert value(before, "tiered_registry_propagation_lag_seconds_count", namespace="reader") == 0

    await writer.register("bot", {"v": 1})
    await _eventually(lambda: reader.stats()["channel"]["received"] == 1)  # so it evicts nothing later
    assert await reader.get_config("bot") == {"v": 1}  # local miss, Redis hit (the writer's put)
    assert await reader.get_config("bot") == {"v": 1}  # local hit (the hot path)
    assert await reader.get_config("nobody") is None  # misses everywhere: one store read
    after = scrape(registry)
    assert moved(before, after, "tiered_registry_invalidations_published_total", namespace="writer") == 1
    assert moved(before, after, "tiered_registry_tier_hits_total", **r_redis) == 1
    assert moved(before, after, "tiered_registry_tier_misses_total", **r_redis) == 1
    assert moved(before, after, "tiered_registry_tier_fills_total", **r_redis) == 1  # the remembered miss
    assert moved(before, after, "tiered_registry_tier_hits_total", **r_local) == 1
    assert moved(before, after, "tiered_registry_tier_misses_total", **r_local) == 2
    assert moved(before, after, "tiered_registry_tier_fills_total", **r_local) == 2
    assert moved(before, after, "tiered_registry_store_reads_total", namespace="reader") == 1
    assert moved(before, after, "tiered_registry_store_errors_total", namespace="reader") == 0
    assert value(after, "tiered_registry_local_entries", **r_local) == 2
    assert value(after, "tiered_registry_tier_evictions_total", **r_local) == 0

    # Another process's write: the reader receives it, drops its copy, and observes the lag.
    await writer.register("bot", {"v": 2})
    await _eventually(
        lambda: (
            value(scrape(registry), "tiered_registry_invalidations_received_total", namespace="reader") == 2
        )
    )
    last = scrape(registry)
    assert moved(after, last, "tiered_registry_tier_invalidations_total", **r_local) == 1
    assert value(last, "tiered_registry_local_entries", **r_local) == 1  # "bot" dropped
    count = value(last, "tiered_registry_propagation_lag_seconds_count", namespace="reader")
    assert count == 2  # one per message received
    assert value(last, "tiered_registry_propagation_lag_seconds_sum", namespace="reader") >= 0
    buckets = sorted(
        (float(dict(labels)["le"]), seen)
        for (name, labels), seen in last.items()
        if name == "tiered_registry_propagation_lag_seconds_bucket" and dict(labels)["namespace"] == "reader"
    )
    assert buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert value(last, "tiered_registry_invalidations_publish_errors_total", namespace="writer") == 0
    assert value(last, "tiered_registry_unannounced_invalidations", namespace="writer") == 0
    assert reader.stats()["channel"]["received"] == 2  # the same numbers as stats()


async def test_a_stack_without_redis_has_no_channel_series(make_stack) -> None:
    stack = await make_stack(redis=None, local=LocalCache(maxsize=2, ttl=0.2))
    registry = CollectorRegistry()
    register_metrics(stack, registry=registry)
    for bot_id in ("a", "b", "c"):
        await stack.register(bot_id, {"v": 1})  # the third fill evicts the least recently used
    samples = scrape(registry)
    names = {name for name, _ in samples}
    assert not [name for name in names if name.startswith(CHANNEL_SERIES)]
    assert not [name for name in names if "circuit" in name or "owed" in name]  # no shared tier
    local = {"namespace": "default", "tier": "local"}
    assert value(samples, "tiered_registry_tier_evictions_total", **local) == 1
    assert value(samples, "tiered_registry_local_entries", **local) == 2
    await _eventually(lambda: stack.stats()["local"]["entries"] == 0)  # swept at the TTL
    samples = scrape(registry)
    assert value(samples, "tiered_registry_tier_expirations_total", **local) == 2
    assert value(samples, "tiered_registry_tier_evictions_total", **local) == 1


async def test_a_redis_outage_shows_in_breaker_debts_and_channel(make_stack, private_redis) -> None:
    url, _start, stop = private_redis
    stack = await make_stack(redis=url)
    registry = CollectorRegistry()
    register_metrics(stack, registry=registry, namespace="s")
    redis = {"namespace": "s", "tier": "redis"}
    stop()
    await _eventually(lambda: value(scrape(registry), "tiered_registry_channel_up", namespace="s") == 0)
    for bot_id in ("a", "b", "c"):  # the local tier is bypassed while the channel is down
        assert await stack.get_config(bot_id) is None
    await stack.register("bot", {"v": 1})  # committed; Redis is owed it, and so are the others
    samples = scrape(registry)
    assert value(samples, "tiered_registry_circuit_open", **redis) == 1
    assert value(samples, "tiered_registry_circuit_opened_total", **redis) >= 1
    assert value(samples, "tiered_registry_tier_errors_total", **redis) >= 3
    assert value(samples, "tiered_registry_owed_invalidations", **redis) >= 1
    assert value(samples, "tiered_registry_channel_drops_total", namespace="s") == 1
    assert value(samples, "tiered_registry_invalidations_publish_errors_total", namespace="s") >= 1
    assert value(samples, "tiered_registry_unannounced_invalidations", namespace="s") >= 1
    assert value(samples, "tiered_registry_store_reads_total", namespace="s") == 3


async def test_each_stack_needs_its_own_namespace_label(redis_url: str, database_url: str) -> None:
    def stack() -> TieredBackend:  # never initialized: nothing to connect
        return TieredBackend(
            tiers=[LocalCache(), RedisCache(redis_url, namespace="same")],
            store=PostgresBackend(database_url, table="same"),
        )

    first, second = stack(), stack()
    with pytest.raises(ConfigurationError, match="namespace"):
        RegistryCollector(first, second)
    collector = RegistryCollector(first)
    collector.add(second, namespace="other")
    assert {labels for _, labels in scrape(_registered(collector))} >= {
        (("namespace", "same"), ("tier", "local")),
        (("namespace", "other"), ("tier", "local")),
    }
    registry = _registered(collector)
    with pytest.raises(DuplicateTimeseries):  # one collector per registry, holding every stack
        registry.register(RegistryCollector(stack(), namespace="third"))


def _registered(collector: RegistryCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
