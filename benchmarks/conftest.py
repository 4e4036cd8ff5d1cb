"""Fixtures of the pytest-benchmark suite: real servers, one persistent event loop, namespaces.

Servers come from ``REDIS_URL`` / ``DATABASE_URL`` when set, else throwaway embedded servers are
started for the session (as in ``tests/conftest.py``) -- only when a benchmark needs one.
pytest-benchmark calls synchronous functions, so the async setup and the benchmarks that suspend
run on one event loop kept for the whole session (``bench_loop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.services import database_url, redis_url

from tiered_registry.bench.runner import new_run_prefix

__all__ = ["database_url", "redis_url"]  # the test suite's server fixtures


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
