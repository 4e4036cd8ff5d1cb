"""What a program needs from the servers: :func:`ensure_services` and :func:`install_sigterm_handler`.

Resolves the Redis and PostgreSQL URLs (explicit argument > environment > embedded server) and
makes ``SIGTERM`` run the cleanup. Separate from the servers themselves because it is policy --
which URL wins, errors recorded instead of raised -- built on top of them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from types import FrameType, TracebackType
from typing import Literal, Self

from ._process import EmbeddedServerError, _EmbeddedServer
from .postgres import EmbeddedPostgres
from .valkey import EmbeddedRedis

logger = logging.getLogger(__name__)

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
