"""What both embedded servers share: the start/stop bookkeeping, the process helpers, the error.

:class:`_EmbeddedServer` gives :class:`~tiered_registry.embedded.valkey.EmbeddedRedis` and
:class:`~tiered_registry.embedded.postgres.EmbeddedPostgres` their atexit fallback, fork guard and
idempotent stop; the helpers find, wait for and terminate server processes with ``psutil``. Kept
apart from the two servers so that each of them holds only what is particular to its wheel.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import RegistryError

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
