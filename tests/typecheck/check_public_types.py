"""Checked by mypy --strict (tests/test_typing.py), never run: the public API is precisely typed."""

from __future__ import annotations

from typing import Any, assert_type

from tiered_registry import BackendBase, RegistryBackend, SortArg, SortSpec, TieredBackend, create_backend


def stack_from_a_literal() -> None:
    stack = create_backend(
        {
            "tiers": [{"type": "local", "maxsize": 100, "ttl": 30}, "redis://cache:6379"],
            "store": {"type": "postgres", "dsn": "postgresql://app@db/bots"},
            "failure_threshold": 5,
            "coherence": {"ping_interval": 0.5},
        }
    )
    assert_type(stack, TieredBackend)
    stats: dict[str, Any] = stack.stats()  # no cast needed
    assert stats


def one_store_and_a_dict_from_a_file(loaded: dict[str, Any]) -> None:
    assert_type(create_backend("memory"), BackendBase)
    assert_type(create_backend({"type": "redis", "url": "redis://cache:6379"}), BackendBase)
    assert_type(create_backend(loaded), BackendBase)


async def sorts(registry: RegistryBackend) -> None:
    await registry.list_all(sort="created_at")
    await registry.list_all(sort=("created_at", "desc"))
    await registry.list_all(sort=[("created_at", "desc"), "bot_id", SortSpec("metadata.rank", "asc")])
    await registry.list_all(sort=42)  # type: ignore[arg-type]


async def sorts_on_a_backend(backend: BackendBase, spec: SortArg) -> None:
    await backend.list_all(sort=spec)
    await backend.list_active(sort=[("created_at", "desc"), "bot_id"])
    await backend.list_inactive(sort=SortSpec("metadata.rank", "desc"))
    await backend.list_all(sort=42)  # type: ignore[arg-type]
