"""Contract: initialize/close, use before/after, async with, isinstance."""

from __future__ import annotations

import asyncio

import pytest

from tiered_registry import (
    BackendClosedError,
    BackendNotInitializedError,
    RegistryBackend,
    RegistryError,
)

from .conftest import Services, StackSpec


async def test_isinstance_of_protocol(backend: RegistryBackend) -> None:
    assert isinstance(backend, RegistryBackend)


async def test_initialize_is_idempotent(backend) -> None:
    await backend.register("bot", {"a": 1})
    await backend.initialize()
    await backend.initialize()
    assert await backend.get_config("bot") == {"a": 1}


async def test_close_is_idempotent_and_use_after_close_raises(build_backend, namespace) -> None:
    backend = await build_backend(namespace)
    await backend.register("bot", {"a": 1})
    await backend.clear()
    await backend.close()
    await backend.close()
    for call in (
        backend.get("bot"),
        backend.get_config("bot"),
        backend.register("bot", {}),
        backend.exists("bot"),
        backend.list_all(),
        backend.count(),
        backend.clear(),
    ):
        with pytest.raises(BackendClosedError, match="closed"):
            await call
    with pytest.raises(BackendClosedError):
        await backend.initialize()
    assert issubclass(BackendClosedError, RegistryError)


async def test_use_before_initialize_raises(stack: StackSpec, request, namespace) -> None:
    backend = stack.build(Services(request), namespace)
    with pytest.raises(BackendNotInitializedError, match="initialize"):
        await backend.get_config("bot")
    await backend.close()  # closing a never-opened backend is harmless


async def test_async_with_initializes_and_closes(stack: StackSpec, request, namespace) -> None:
    backend = stack.build(Services(request), namespace)
    async with backend as opened:
        assert opened is backend
        await backend.register("bot", {"a": 1})
        assert await backend.exists("bot")
        await stack.teardown(backend)
    with pytest.raises(BackendClosedError):
        await backend.get("bot")


async def test_concurrent_initialize_runs_once(stack: StackSpec, request, namespace) -> None:
    backend = stack.build(Services(request), namespace)
    await asyncio.gather(*(backend.initialize() for _ in range(5)))
    try:
        await backend.register("bot", {"a": 1})
        assert await backend.get_config("bot") == {"a": 1}
    finally:
        await stack.teardown(backend)
        await backend.close()
