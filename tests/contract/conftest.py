"""The contract suite's one parameter: which backend or stack is under test.

``STACKS`` maps a name to a :class:`StackSpec` whose ``build(services, namespace)`` returns an
uninitialized backend. A new store or stack joins the whole contract suite by adding one entry
here. Servers are only started for the stacks that need them (``services`` is lazy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from tiered_registry import InMemoryBackend, LocalCache, RegistryBackend, TieredBackend
from tiered_registry.base import BackendBase


class Services:
    """Lazy access to the session's servers (a memory-only test starts none)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    @property
    def redis_url(self) -> str:
        return str(self._request.getfixturevalue("redis_url"))

    @property
    def database_url(self) -> str:
        return str(self._request.getfixturevalue("database_url"))


async def _clear(backend: BackendBase) -> None:
    await backend.clear()


@dataclass(frozen=True)
class StackSpec:
    build: Callable[[Services, str], BackendBase]
    # True when two instances built on one namespace see the same data (a second process's view).
    shared: bool = True
    # Removes what the test left on the servers (default: clear()); runs before close().
    teardown: Callable[[BackendBase], Awaitable[None]] = _clear


STACKS: dict[str, StackSpec] = {
    "memory": StackSpec(lambda services, ns: InMemoryBackend(), shared=False),
    "local+memory": StackSpec(
        lambda services, ns: TieredBackend(tiers=[LocalCache(maxsize=1000, ttl=30)], store=InMemoryBackend()),
        shared=False,
    ),
}

BuildBackend = Callable[[str], Awaitable[BackendBase]]


@pytest.fixture(params=sorted(STACKS))
def stack(request: pytest.FixtureRequest) -> StackSpec:
    return STACKS[request.param]


@pytest.fixture
async def build_backend(stack: StackSpec, request: pytest.FixtureRequest) -> AsyncIterator[BuildBackend]:
    """Build (and initialize) more backends of the stack under test; all cleaned up afterwards."""
    services = Services(request)
    built: list[BackendBase] = []

    async def build(namespace: str) -> BackendBase:
        backend = stack.build(services, namespace)
        built.append(backend)
        await backend.initialize()
        return backend

    yield build
    for backend in reversed(built):
        if backend.is_open:
            await stack.teardown(backend)
            await backend.close()


@pytest.fixture
async def backend(build_backend: BuildBackend, namespace: str) -> RegistryBackend:
    return await build_backend(namespace)
