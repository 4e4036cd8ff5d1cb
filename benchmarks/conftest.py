"""Fixtures of the pytest-benchmark suite: real servers, one persistent event loop, namespaces.

Servers come from ``REDIS_URL`` / ``DATABASE_URL`` when set, else throwaway embedded servers are
started for the session (as in ``tests/conftest.py``) -- only when a benchmark needs one.
pytest-benchmark calls synchronous functions, so the async setup and the benchmarks that suspend
run on one event loop kept for the whole session (``bench_loop``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tiered_registry.bench.runner import new_run_prefix


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from tiered_registry.embedded import embedded_redis

    with embedded_redis() as started:
        yield started


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from tiered_registry.embedded import embedded_postgres

    with embedded_postgres() as started:
        yield started


@pytest.fixture(scope="session")
def bench_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every benchmark (not the running loop of any test: there is none)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def namespace() -> str:
    """A key prefix / table name no other benchmark (or concurrent run) uses."""
    return new_run_prefix()
