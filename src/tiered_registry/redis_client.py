"""The one place that turns a URL (or a caller's client) into a ``redis.asyncio.Redis``.

Every Redis-using part of the library (the ``RedisBackend`` store, the ``RedisCache`` tier, the
pub/sub invalidation channel) gets its client here, so they all share the same decisions:

- **Explicit failure budget.** redis-py 8 retries a failing command 10 times with backoff up to
  1 s by default (a GET to a dead server took ~3 s to raise). Here the timeouts and the retry
  policy are always set: ``retries`` extra attempts with a short capped exponential backoff, for
  connection errors and timeouts only; more only delays the error a caller has to handle anyway.
- **A dead pooled connection is replaced, not reported.** A server restart closes every pooled
  connection at once; each would fail the next command sent on it ("Connection closed by
  server"), one by one. So even with ``retries=0`` a command that fails with a *connection* error
  is sent once more, at once, on a new connection (``reconnect``, on by default). A timeout is
  never retried that way: a hung server costs one ``socket_timeout``, not two. Only a reader that
  must see every lost connection (the pub/sub listener) turns this off.
- **Bytes in, bytes out** (``decode_responses=False``): values are JSON that the library decodes
  itself with orjson, straight from bytes. A caller's client that decodes responses is refused.
- **One cluster or one server, the same way.** A ``redis+cluster://host:port`` URL (also
  ``rediss+cluster``, ``valkey+cluster``) or a ``redis.asyncio.RedisCluster`` passed in gives a
  cluster client with the same timeouts and retry policy; :func:`is_cluster` tells the callers,
  which then keep each script's keys in one slot (:mod:`tiered_registry.keyspace`).
- **Secrets stay secret.** ``redact_url`` masks the password of a URL for reprs, logs and errors.
- **One error type.** ``map_redis_errors`` turns "the server could not be reached or failed" into
  :class:`~tiered_registry.errors.BackendUnavailableError` with the driver error as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from types import TracebackType
from typing import Any, Final, Literal

import redis.asyncio as aredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from .errors import (
    BackendBusyError,
    BackendUnavailableError,
    ConfigurationError,
    WriteOutcomeUnknownError,
)
from .redact import redact_text, redact_url, scrub, url_secrets

__all__ = [
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RETRIES",
    "DEFAULT_SOCKET_TIMEOUT",
    "UNAVAILABLE_ERRORS",
    "ConnectionSetupError",
    "RedisErrorMap",
    "WaitingConnectionPool",
    "WaitingRedisCluster",
    "describe_source",
    "is_cluster",
    "is_cluster_source",
    "is_setup_error",
    "make_client",
    "map_redis_errors",
    "outcome_unknown",
    "redact_url",
    "unavailable_error",
    "validate_namespace",
]

DEFAULT_SOCKET_TIMEOUT: Final = 5.0
"""Seconds one command may take to answer (a large list or a ``clear`` batch must fit)."""
DEFAULT_CONNECT_TIMEOUT: Final = 1.0
"""Seconds one connection attempt may take (an unreachable host fails after this)."""
DEFAULT_RETRIES: Final = 1
"""Extra attempts after a connection error or timeout (redis-py's own default is 10)."""
DEFAULT_BACKOFF_CAP: Final = 0.1
"""Longest pause between two attempts, in seconds."""
DEFAULT_MAX_CONNECTIONS: Final = 100
"""Connections per client; more concurrent commands wait for one (redis-py's own pool fails them)."""
_BACKOFF_BASE: Final = 0.01

_SCHEMES: Final = {
    "redis": "redis",
    "rediss": "rediss",
    "unix": "unix",
    "valkey": "redis",
    "valkeys": "rediss",
}
_CLUSTER_SCHEMES: Final = {
    "redis+cluster": "redis",
    "rediss+cluster": "rediss",
    "valkey+cluster": "redis",
    "valkeys+cluster": "rediss",
}
_NAMESPACE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

UNAVAILABLE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    rexc.ConnectionError,  # refused, reset, auth failed, loading, pool exhausted
    rexc.TimeoutError,  # socket_timeout / connect_timeout
    rexc.ReadOnlyError,  # a write reached a replica (failover in progress)
    rexc.OutOfMemoryError,  # maxmemory reached with a noeviction policy
    rexc.ClusterDownError,  # includes MasterDownError
    rexc.SlotNotCoveredError,  # a cluster slot without a master (one is down, none promoted)
    OSError,  # raw socket errors, builtins TimeoutError
)
"""Driver errors meaning "the server could not be reached or failed", as opposed to a bug."""


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is a safe key prefix (letters, digits, ``_ . -``; 1-64 chars).

    No glob characters (``* ? [ ] \\``), braces or colons: a namespace is put inside a hash tag
    ``{ns}`` and may appear in a SCAN pattern, and must never match another namespace's keys.
    """
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"namespace must match {_NAMESPACE.pattern} (letters, digits, '_', '.', '-'), got {namespace!r}"
        )
    return namespace


def is_cluster(client: object) -> bool:
    """Whether ``client`` talks to a Redis Cluster (no cross-slot scripts, no pipelined scripts)."""
    return isinstance(client, RedisCluster)


def is_cluster_source(url_or_client: object) -> bool:
    """Whether a URL (``redis+cluster://``...) or a client given by a caller names a cluster."""
    if isinstance(url_or_client, str):
        return url_or_client.partition("://")[0].lower() in _CLUSTER_SCHEMES
    return is_cluster(url_or_client)


def describe_source(url_or_client: object) -> str:
    """A printable, secret-free name for what a component connects to (for ``repr``)."""
    if isinstance(url_or_client, str):
        return redact_url(url_or_client)
    return f"<{type(url_or_client).__name__} client>"


def _retry(retries: int, backoff_cap: float, reconnect: bool) -> Retry:
    if retries > 0:  # covers connection errors too
        return Retry(ExponentialBackoff(cap=backoff_cap, base=min(_BACKOFF_BASE, backoff_cap)), retries)
    if reconnect:
        return Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,))
    return Retry(NoBackoff(), 0)


def _check_options(
    socket_timeout: float | None, connect_timeout: float | None, retries: int, backoff_cap: float
) -> None:
    for name, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ConfigurationError(f"{name} must be a positive number of seconds or None, got {value!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ConfigurationError(f"retries must be an int from 0 to 10, got {retries!r}")
    if isinstance(backoff_cap, bool) or not isinstance(backoff_cap, int | float) or backoff_cap < 0:
        raise ConfigurationError(f"backoff_cap must be a number of seconds >= 0, got {backoff_cap!r}")


class ConnectionSetupError(rexc.ConnectionError):
    """The server refused to set up a new connection (``SELECT`` of a database it does not have,
    say): a mistake in the URL or the server's settings, not an outage. A ``ConnectionError``, so
    a command that meets it fails like any unreachable server (a tier is skipped); ``initialize``
    of a store reports it as :class:`~tiered_registry.errors.ConfigurationError`."""


def is_setup_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the driver error it was raised from) is a :class:`ConnectionSetupError`."""
    while exc is not None:
        if isinstance(exc, ConnectionSetupError):
            return True
        exc = exc.__cause__
    return False


def _setup_hint(problem: str, db: object) -> str:
    if "DB index" in problem:
        return (
            f"; the URL selects database {db}, which the server does not have"
            " (its 'databases' setting; 16 by default: 0-15)"
        )
    return ""


class WaitingConnectionPool(aredis.ConnectionPool):
    """A connection pool whose callers wait for a free connection when all are busy.

    redis-py 8's ``ConnectionPool`` fails a command at once with ``MaxConnectionsError`` when its
    ``max_connections`` (100) are all busy — a burst of concurrent lookups would fail — and its
    ``BlockingConnectionPool`` waits but costs ~20 µs on *every* checkout (a condition lock and a
    timeout per command; measured ~150 vs ~127 µs per GET on loopback). Here the common case (a
    free connection, or room for a new one) takes the plain pool's path unchanged; only a caller
    that would have failed queues, first come first served, for up to ``wait_timeout`` seconds.
    """

    def __init__(self, *, wait_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_timeout = wait_timeout
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._handed_over = 0  # waiters woken by a release that have not taken their turn yet

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._waiters or self._handed_over or not self.can_get_connection():
            await self._wait_for_room()  # behind everyone already waiting: first come, first served
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except rexc.ResponseError as exc:  # an error reply to the setup (SELECT, CLIENT SETNAME, ...)
            problem = str(exc)
            hint = _setup_hint(problem, self.connection_kwargs.get("db"))
            raise ConnectionSetupError(
                f"the Redis server refused the connection setup: {problem}{hint}"
            ) from exc

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._handed_over += 1
                return

    async def _wait_for_room(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.wait_timeout):
                while True:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._handed_over -= 1
                            self._wake_one()  # we were woken but leave: pass the turn on
                        raise
                    self._handed_over -= 1
                    if self.can_get_connection():
                        return
        except TimeoutError:
            raise rexc.MaxConnectionsError(
                f"no free Redis connection within {self.wait_timeout}s ({self.max_connections} busy)"
            ) from None


def make_client(
    url_or_client: str | aredis.Redis | RedisCluster,
    *,
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff_cap: float = DEFAULT_BACKOFF_CAP,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    client_name: str | None = None,
    reconnect: bool = True,
) -> tuple[Any, bool]:
    """Return ``(client, owned)``: a client to use, and whether the caller must ``aclose()`` it.

    A URL (``redis://``, ``rediss://`` for TLS, ``unix://``; ``valkey://``/``valkeys://`` are
    read as their ``redis`` twins) builds a new client with the given timeouts and retry policy
    (``owned=True``); options in the URL's query string win over these keyword arguments.
    A ``redis.asyncio.Redis`` or ``RedisCluster`` passed in is returned as is (``owned=False``):
    its owner chose its settings and closes it. ``redis+cluster://host:port`` (any one node of
    the cluster) builds a ``RedisCluster``, which finds the others; there ``max_connections``
    bounds each node's pool, and a command finding it full fails at once (``BackendBusyError``).
    ``socket_timeout=None`` waits forever (for a pub/sub reader only). ``max_connections``
    bounds the pool: more concurrent commands wait for a free connection (up to
    ``socket_timeout``; see :class:`WaitingConnectionPool`). ``client_name`` is set on every
    connection (``CLIENT SETNAME``: it shows in ``CLIENT LIST``). ``reconnect``: see the module
    notes (a command that fails on a closed connection is sent once more on a new one).

    The client is typed ``Any``: redis-py's annotations return sync/async unions that every call
    site would have to narrow.
    """
    if isinstance(url_or_client, aredis.Redis):
        kwargs = url_or_client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "the Redis client must be created with decode_responses=False (values are JSON bytes)"
            )
        return url_or_client, False
    if isinstance(url_or_client, RedisCluster):
        if url_or_client.get_connection_kwargs().get("decode_responses"):
            raise ConfigurationError(
                "the RedisCluster client must be created with decode_responses=False (values are JSON bytes)"
            )
        return url_or_client, False
    if not isinstance(url_or_client, str):
        raise ConfigurationError(
            f"expected a redis:// URL or a redis.asyncio.Redis client, got {type(url_or_client).__name__}"
        )
    _check_options(socket_timeout, connect_timeout, retries, backoff_cap)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ConfigurationError(f"max_connections must be a positive int, got {max_connections!r}")
    url = url_or_client
    scheme, sep, rest = url.partition("://")
    cluster = scheme.lower() in _CLUSTER_SCHEMES
    mapped = (_CLUSTER_SCHEMES if cluster else _SCHEMES).get(scheme.lower()) if sep else None
    if mapped is None:
        raise ConfigurationError(
            f"expected a redis://, rediss://, unix:// or redis+cluster:// URL, got {redact_text(url)!r}"
        )
    url = f"{mapped}://{rest}"
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": _retry(retries, backoff_cap, reconnect),
        "decode_responses": False,
    }
    if client_name is not None:
        options["client_name"] = client_name
    if cluster:
        return _make_cluster(url, max_connections, options), True
    try:
        pool = WaitingConnectionPool.from_url(
            url, max_connections=max_connections, wait_timeout=socket_timeout, **options
        )
    except (ValueError, TypeError) as exc:
        # not chained: the driver's message or traceback could quote the URL with its password
        detail = scrub(str(exc), url_secrets(url))
        raise ConfigurationError(f"bad Redis URL {redact_url(url)!r}: {detail}") from None
    if pool.connection_kwargs.get("decode_responses"):
        raise ConfigurationError(
            f"{redact_url(url)!r}: decode_responses must stay off (values are JSON bytes)"
        )
    return aredis.Redis.from_pool(pool), True


class WaitingRedisCluster(RedisCluster):
    """A ``RedisCluster`` whose commands wait for a turn when ``max_connections`` are in flight.

    What :class:`WaitingConnectionPool` is to one server: redis-py's cluster client opens a new
    connection per concurrent command, and a burst (a thousand writes publishing at once)
    opened a thousand connections to one node at once; the refused ones reset the client's view
    of the cluster and broke the commands in flight on other connections. Here at most
    ``max_connections`` commands run at once (an uncontended turn costs ~1 µs), the rest queue,
    first come first served, for up to ``wait_timeout`` seconds, then fail as busy.
    """

    def __init__(self, *args: Any, wait_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(kwargs.get("max_connections", DEFAULT_MAX_CONNECTIONS))
        self._wait_timeout = wait_timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            # redis-py 8.1 picks a command's routing before it learns the slots: commands started
            # together on a new client went to one node, drew MOVED, and every 5th MOVED closed
            # every connection, in use or not. So the first ones wait for the slots (one fetch).
            try:
                await self.initialize()
            except rexc.RedisClusterException as exc:  # no node answered: the cluster is down
                raise rexc.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        turns = self._turns
        if turns.locked():
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await turns.acquire()
            except TimeoutError:
                raise rexc.MaxConnectionsError(
                    f"no free Redis Cluster connection within {self._wait_timeout}s"
                ) from None
        else:
            await turns.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        except rexc.RedisClusterException as exc:
            if "cannot be connected" not in str(exc):  # a usage error, not an outage
                raise
            raise rexc.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc
        except AttributeError as exc:
            # redis-py 8.1's cluster client, refreshing its view of the cluster after a timeout
            # under load, can close a connection another command is using; that command then
            # fails inside the driver ("'NoneType' object has no attribute 'writelines'"). It
            # is a lost connection, and is reported as one (a write's outcome is then unknown).
            raise rexc.ConnectionError(f"Redis Cluster connection lost while in use ({exc})") from exc
        finally:
            turns.release()


def _make_cluster(url: str, max_connections: int, options: dict[str, Any]) -> RedisCluster:
    """A ``RedisCluster`` for a cluster URL (no I/O yet: it finds the nodes on first use)."""
    try:
        client = WaitingRedisCluster.from_url(
            url,
            max_connections=max_connections,
            wait_timeout=options["socket_timeout"],
            # redis-py 8 asks every new cluster connection for "maintenance notifications"; a
            # Redis 7.0 node under a burst of new connections closed some of them during that
            # handshake, and the client then tore down its other connections, in use or not.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **options,
        )
    except (ValueError, TypeError, rexc.RedisClusterException) as exc:
        detail = scrub(str(exc), url_secrets(url))
        raise ConfigurationError(f"bad Redis Cluster URL {redact_url(url)!r}: {detail}") from None
    if client.get_connection_kwargs().get("decode_responses"):
        raise ConfigurationError(
            f"{redact_url(url)!r}: decode_responses must stay off (values are JSON bytes)"
        )
    return client


_REFUSED: Final = (
    rexc.ReadOnlyError,
    rexc.OutOfMemoryError,
    rexc.ClusterDownError,
    rexc.SlotNotCoveredError,
    rexc.MaxConnectionsError,
)
"""Failures that leave a write undone: the server answered with an error, or no connection
was had. (A failure to connect says so in its message: redis-py raises the same classes.)"""


def outcome_unknown(exc: BaseException) -> bool:
    """Might a write that failed with driver error ``exc`` have been carried out all the same?
    Yes unless the server refused it or it never left this process: a timeout or a connection
    lost after the command was sent leaves it unknown."""
    return not isinstance(exc, _REFUSED) and "connecting to" not in str(exc)


def unavailable_error(
    exc: BaseException, doing: str, target: str | None = None, *, write: bool = False
) -> BackendUnavailableError:
    """The :class:`BackendUnavailableError` for a driver error (raise it ``from exc``); for a
    ``write`` whose outcome the error leaves unknown, a :class:`WriteOutcomeUnknownError`."""
    where = f" at {target}" if target else ""
    message = f"Redis unavailable{where} ({doing}): {type(exc).__name__}: {exc}"
    if isinstance(exc, rexc.MaxConnectionsError):  # our pool's wait ran out: busy, not down (and
        return BackendBusyError(message)  # a write that got no connection was never sent)
    if write and outcome_unknown(exc):
        return WriteOutcomeUnknownError(message + "; the write may or may not have been carried out")
    return BackendUnavailableError(message)


class RedisErrorMap:
    """Context manager (``with`` or ``async with``) that re-raises driver errors as ours."""

    __slots__ = ("doing", "target", "write")

    def __init__(self, doing: str, target: str | None = None, *, write: bool = False) -> None:
        self.doing = doing
        self.target = target
        self.write = write

    def __enter__(self) -> RedisErrorMap:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is not None and isinstance(exc, UNAVAILABLE_ERRORS):
            raise unavailable_error(exc, self.doing, self.target, write=self.write) from exc
        return False

    async def __aenter__(self) -> RedisErrorMap:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


def map_redis_errors(doing: str, target: str | None = None, *, write: bool = False) -> RedisErrorMap:
    """``async with map_redis_errors("get"):`` — connection failures become ``BackendUnavailableError``.

    ``target`` (a :func:`redact_url`-ed URL, say) is named in the message; the driver's error is
    the ``__cause__``. Other errors (a bug, a ``WRONGTYPE`` reply) pass through unchanged.
    ``write``: a failure that leaves the outcome unknown raises :class:`WriteOutcomeUnknownError`.
    """
    return RedisErrorMap(doing, target, write=write)
