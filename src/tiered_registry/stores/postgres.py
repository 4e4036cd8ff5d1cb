"""``PostgresBackend``: the durable store, one row per bot in one PostgreSQL table (asyncpg).

Design notes (the why):

- Every write is ONE statement (an ``INSERT ... ON CONFLICT ... RETURNING`` upsert, an
  ``UPDATE``/``DELETE ... RETURNING``), so a failed write changes nothing and concurrent writers
  of one bot always leave a whole record.
- The SQL text (every statement, and a :class:`~tiered_registry.query.Query` as ``WHERE``/
  ``ORDER BY``/``LIMIT``) is in :mod:`~tiered_registry.stores._pgsql`, with why values only
  travel as bind parameters and why ``bot_id`` and ``status`` are ``COLLATE "C"``.
- JSON crosses the wire as text (``config::text`` out, ``$n::text::jsonb`` in) and is parsed with
  orjson here, instead of through a connection-level jsonb codec: the server does the same work
  either way (``jsonb_out``/``jsonb_in``), and a pool passed in by the caller then works whatever
  codecs it has (or has not) registered.
- ``last_accessed_at`` is written behind (:class:`~tiered_registry.access.AccessRecorder`): a read
  costs no write; one ``UPDATE`` per flush touches only that column, each bot to its own access
  time, only forward.
- No statement of this backend changes session state (no ``SET``, ``LISTEN``, session advisory
  lock, or cursor outside a transaction), so a connection needs no cleaning between two
  statements. The pool we create therefore skips asyncpg's per-release reset (``RESET ALL``,
  ``UNLISTEN *``..., one more round trip), and keeps its connections checked out
  (:class:`~tiered_registry.stores._pglease.LeasedConnections`), handing them from task to task
  instead of a pool acquire/release per statement. Measured on loopback, ``get_config`` of a
  2 KB config: ~190-260 µs, against ~300-375 µs through ``pool.fetchval`` with the default
  reset and ~145-170 µs for the bare query on one held connection. A pool passed in by the caller
  is used with a plain checkout per statement (it may be shared; we must not hoard it).
- Behind PgBouncer in transaction pool mode (``pgbouncer=True``), statements are unnamed and
  carry their own Parse, one round trip each; why and what it costs:
  :mod:`~tiered_registry.stores._pgbouncer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg

from ..access import DEFAULT_ACCESS_FLUSH_INTERVAL, AccessRecorder
from ..base import BackendBase, RegisterItem
from ..batching import DEFAULT_MAX_BATCH, Batcher, check_batch_size
from ..bulk import JsonItem
from ..codec import DecodeCache, dumps, loads
from ..errors import BackendUnavailableError, ConfigurationError, WriteOutcomeUnknownError
from ..frozen import FrozenDict, freeze
from ..models import Registration, utcnow
from ..query import Query
from ..redact import redact_url, scrub, url_secrets
from ._pgbouncer import STATEMENT_LOST, PgBouncerConnection, pgbouncer_option, pooler_error
from ._pgdeadline import StatementDeadlines
from ._pglease import LeasedConnections
from ._pgsql import (
    ADVISORY_LOCK,
    COLUMN_NAMES,
    DEFAULT_SCHEMA,
    DEFAULT_TABLE,
    NESTED,
    SCHEMA_EXISTS,
    TABLE_COLUMNS,
    TABLE_EXISTS,
    Statements,
    check_identifier,
)

__all__ = ["PgBouncerConnection", "PostgresBackend"]

# Driver errors that mean "the server could not be reached or failed", as opposed to a bug.
_UNAVAILABLE: Final = (
    OSError,  # refused, reset, unreachable; TimeoutError (command_timeout) is an OSError too
    asyncpg.PostgresConnectionError,  # connection lost / does not exist
    asyncpg.InterfaceError,  # pool or connection closed under us
    asyncpg.OperatorInterventionError,  # admin/crash shutdown, cannot connect now, query canceled
    asyncpg.InsufficientResourcesError,  # too many connections, disk full, out of memory
    asyncpg.InvalidAuthorizationSpecificationError,  # bad user/password when (re)connecting
    asyncpg.InvalidCatalogNameError,  # database does not exist when (re)connecting
    # The connection is in a state it cannot be used in: seen when the server shut down while a
    # statement was failing on it (it is terminated; the statement did not happen).
    asyncpg.InternalClientError,
)


# Errors that mean the server answered our statement and did not run it: it failed, nothing
# changed (its single-statement transaction was rolled back). Every other failure after the
# statement was sent leaves the outcome unknown. The shutdown errors are not among them: the
# server may end a connection right after a commit it has not confirmed yet.
_SERVER_REFUSED: Final = asyncpg.PostgresError
_CONNECTION_ENDED: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
# How long a cancelled write waits for the server to confirm the cancellation (see
# LeasedConnections.discard_cancelled), as a share of command_timeout, within these bounds.
_CANCEL_WAIT_SHARE: Final = 0.1
_CANCEL_WAIT_MIN: Final = 0.05
_CANCEL_WAIT_MAX: Final = 1.0
# Ids per ``= ANY($1)`` statement of get_many/get_configs (a batcher's batches are smaller).
_MANY_CHUNK: Final = 1000
# Bots per ``UPDATE`` of access times: each holds its row locks ~0.15-0.3 s (1,000,000-row table).
_TOUCH_CHUNK: Final = 5000


def _refused(exc: BaseException) -> bool:
    """Did the server answer the statement with an error (so it did not happen)?"""
    return isinstance(exc, _SERVER_REFUSED) and not isinstance(exc, _CONNECTION_ENDED)


async def _keep_session(connection: object) -> None:
    """Pool ``reset`` hook: nothing to undo (see the module notes), so skip the round trip."""


def _decode_config(text: str) -> FrozenDict:
    return freeze(loads(text))


class PostgresBackend(BackendBase):
    """A registry in one PostgreSQL table, created on :meth:`initialize` if missing.

    ``dsn_or_pool`` is a ``postgresql://`` DSN (the backend then owns its pool of
    ``min_size``..``max_size`` connections) or an existing ``asyncpg.Pool`` (used as is, and
    never closed by :meth:`close`: whoever created it closes it). ``command_timeout`` bounds each
    statement, the wait for a free connection included, to about ``1.1 * command_timeout``
    seconds (see :mod:`~tiered_registry.stores._pgdeadline`; ``None``: unbounded), and
    ``connect_timeout`` each connection attempt (an own pool only).
    ``access_flush_interval`` is how long other processes may see an older ``last_accessed_at``
    (accesses are written in batches); in this process ``get`` returns the time of that access and
    later reads show it too. ``track_access=False``: ``last_accessed_at`` is never written.
    ``create_schema=False``: :meth:`initialize` runs no DDL at all (for a role that may not create),
    it checks that the table exists with the expected columns, else raises
    :class:`~tiered_registry.ConfigurationError`; ``tiered-registry schema`` prints the DDL to run
    beforehand (a migration tool's script).

    ``batch_size``: point reads (``get``, ``get_config``) of different bots made while one is in
    flight go out together as one ``WHERE bot_id = ANY($1)`` statement of at most that many ids
    (:mod:`~tiered_registry.batching`; a lone read is sent at once; ``1`` turns batching off).

    ``pgbouncer=True`` (or ``?pgbouncer=true`` in the DSN; ``None``: the DSN decides, else off):
    the server is reached through PgBouncer in transaction (or statement) pool mode, which does
    not keep prepared statements across transactions (before 1.21, or without
    ``max_prepared_statements``). asyncpg's statement cache is then off and every statement is
    sent unnamed, Parse + Bind + Execute in one round trip (:mod:`~tiered_registry.stores._pgbouncer`;
    a lone read through PgBouncer measured 2.8-3.6x the direct one on a shared 2-core machine: the
    hop, and the server planning each statement again). It is an explicit option, not detected:
    PgBouncer is invisible on the wire. Without it, the errors a pooler causes raise
    :class:`~tiered_registry.ConfigurationError` naming the option. A pool passed in with
    ``pgbouncer=True`` must have been created with ``statement_cache_size=0`` (and
    ``connection_class=PgBouncerConnection``, from this module, for one round trip per statement).

    Connection failures raise :class:`~tiered_registry.BackendUnavailableError` with the driver
    error as ``__cause__``.
    """

    _recorder: AccessRecorder  # always set: accesses are written behind

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool[Any],
        *,
        table: str = DEFAULT_TABLE,
        schema: str = DEFAULT_SCHEMA,
        access_flush_interval: float = DEFAULT_ACCESS_FLUSH_INTERVAL,
        command_timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        min_size: int = 1,
        max_size: int = 10,
        track_access: bool = True,
        create_schema: bool = True,
        batch_size: int = DEFAULT_MAX_BATCH,
        pgbouncer: bool | None = None,
    ) -> None:
        table = check_identifier(table, "table")
        self._schema_name = check_identifier(schema, "schema")
        self._table_name = table
        if not isinstance(create_schema, bool):
            raise ConfigurationError(f"create_schema must be true or false, got {create_schema!r}")
        self._create_schema = create_schema
        self._sql = Statements(self._schema_name, table)
        if isinstance(dsn_or_pool, asyncpg.Pool):
            self._dsn: str | None = None
            self._pool: asyncpg.Pool[Any] | None = dsn_or_pool
            self._owns_pool = False
            self._pgbouncer = pgbouncer_option("postgresql://", pgbouncer)[1]
        elif isinstance(dsn_or_pool, str):
            if urlsplit(dsn_or_pool).scheme not in ("postgres", "postgresql"):
                raise ConfigurationError(
                    f"expected a postgresql:// DSN or an asyncpg.Pool, got {redact_url(dsn_or_pool)!r}"
                )
            self._dsn, self._pgbouncer = pgbouncer_option(dsn_or_pool, pgbouncer)
            self._pool = None
            self._owns_pool = True
        else:
            raise ConfigurationError(
                f"expected a postgresql:// DSN or an asyncpg.Pool, got {type(dsn_or_pool).__name__}"
            )
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
            raise ConfigurationError(f"min_size must be an int >= 0, got {min_size!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < max(1, min_size):
            raise ConfigurationError(f"max_size must be an int >= max(1, min_size), got {max_size!r}")
        if command_timeout is not None and not command_timeout > 0:
            raise ConfigurationError(f"command_timeout must be positive or None, got {command_timeout!r}")
        if not connect_timeout > 0:
            raise ConfigurationError(f"connect_timeout must be positive, got {connect_timeout!r}")
        if not access_flush_interval > 0:
            raise ConfigurationError(f"access_flush_interval must be positive, got {access_flush_interval!r}")
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._min_size = min_size
        self._max_size = max_size
        self._secrets = url_secrets(self._dsn) if self._dsn else []
        self._recorder = AccessRecorder(
            self._record_access_times, interval=access_flush_interval, track=track_access
        )
        # Repeated reads of one config skip parsing and freezing (keyed by the stored text).
        self._decode_config = DecodeCache(_decode_config)
        self._init_lock = asyncio.Lock()  # two tasks initializing one backend must not make two pools
        self._deadlines = StatementDeadlines(command_timeout)
        share = _CANCEL_WAIT_SHARE * command_timeout if command_timeout is not None else _CANCEL_WAIT_MAX
        self._cancel_wait = min(_CANCEL_WAIT_MAX, max(_CANCEL_WAIT_MIN, share))
        self._lease: LeasedConnections | None = None
        # Point reads of different bots in flight at once share one ``= ANY($1)`` statement.
        self._batcher: Batcher[str, Any] = Batcher(
            self._read_row, self._read_rows, max_batch=check_batch_size(batch_size, "batch_size")
        )
        self._config_batcher: Batcher[str, str | None] = Batcher(
            self._read_config, self._read_configs, max_batch=batch_size
        )

    def __repr__(self) -> str:
        source = f"dsn={redact_url(self._dsn)!r}" if self._dsn is not None else "pool=<caller's asyncpg.Pool>"
        mode = ", pgbouncer=True" if self._pgbouncer else ""
        return f"PostgresBackend({source}, table={self.qualified_table!r}{mode})"

    @property
    def pgbouncer(self) -> bool:
        """Is this backend in PgBouncer (transaction pool) mode? See the class notes."""
        return self._pgbouncer

    @property
    def qualified_table(self) -> str:
        """The quoted ``"schema"."table"`` this backend keeps its rows in."""
        return self._sql.table

    @property
    def batch_stats(self) -> dict[str, dict[str, int]]:
        """Round trips of the point reads (``get``: ``records``, ``get_config``: ``configs``): lone
        ones, batches and the keys they held (see :class:`~tiered_registry.batching.BatchStats`)."""
        return {"records": self._batcher.stats.as_dict(), "configs": self._config_batcher.stats.as_dict()}

    # ---- plumbing --------------------------------------------------------------------------

    @property
    def _db(self) -> asyncpg.Pool[Any]:
        pool = self._pool
        if pool is None:  # only reachable if a subclass bypasses BackendBase's open check
            raise BackendUnavailableError(f"{self!r} has no connection pool")
        return pool

    async def _call(self, doing: str, method: str, *args: Any) -> Any:
        """``conn.<method>(*args)``: one statement on a leased connection (or a pool checkout for a
        caller's pool). Written for the point reads: no closure, no coroutine for the lease when
        a connection is idle."""
        deadlines = self._deadlines
        task = deadlines.begin()
        try:
            lease = self._lease
            if lease is None:
                async with self._db.acquire() as pooled:
                    return await getattr(pooled, method)(*args)
            conn = lease.take_idle() or await lease.take()
            try:
                result = await getattr(conn, method)(*args)
            except BaseException as exc:
                broken = isinstance(exc, _UNAVAILABLE) or deadlines.is_overdue(task)
                await lease.discard(conn, broken=broken)
                raise
            if not lease.give_nowait(conn):
                await lease.discard(conn)
            return result
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc, doing) from exc
        except STATEMENT_LOST as exc:
            raise pooler_error(self, exc, pgbouncer=self._pgbouncer) from exc
        except asyncio.CancelledError:
            if deadlines.overdue(task):
                late = TimeoutError(f"statement not done within command_timeout={deadlines.timeout}s")
                raise self._unavailable(late, doing) from late
            raise
        finally:
            deadlines.end(task)

    async def _write(self, doing: str, method: str, *args: Any) -> Any:
        """A write statement: :meth:`_call` with two differences, because a write that failed may
        still have happened. A statement that ran out of time, or whose caller was cancelled,
        is cancelled on the server (asyncpg sends the cancel request; we wait for it briefly),
        not left running behind a terminated connection. And a failure after the statement was
        sent, other than the server refusing it, raises :class:`WriteOutcomeUnknownError`."""
        deadlines = self._deadlines
        task = deadlines.begin()
        sent = False
        try:
            lease = self._lease
            if lease is None:
                async with self._db.acquire() as pooled:  # its release waits for a cancellation
                    sent = True
                    return await getattr(pooled, method)(*args)
            conn = lease.take_idle() or await lease.take()
            sent = True
            try:
                result = await getattr(conn, method)(*args)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    await lease.discard_cancelled(conn, self._cancel_wait)
                else:
                    await lease.discard(conn, broken=isinstance(exc, _UNAVAILABLE))
                raise
            if not lease.give_nowait(conn):
                await lease.discard(conn)
            return result
        except _UNAVAILABLE as exc:
            if sent and not _refused(exc):
                raise self._unavailable(exc, doing, unknown=True) from exc
            raise self._unavailable(exc, doing) from exc
        except STATEMENT_LOST as exc:  # refused before it ran (Parse or Bind failed)
            raise pooler_error(self, exc, pgbouncer=self._pgbouncer) from exc
        except asyncio.CancelledError:
            if deadlines.overdue(task):
                late = TimeoutError(f"statement not done within command_timeout={deadlines.timeout}s")
                raise self._unavailable(late, doing, unknown=sent) from late
            raise
        finally:
            deadlines.end(task)

    async def _fetchval(self, doing: str, sql: str, *args: Any) -> Any:
        return await self._call(doing, "fetchval", sql, *args)

    async def _fetchrow(self, doing: str, sql: str, *args: Any) -> Any:
        return await self._call(doing, "fetchrow", sql, *args)

    async def _fetch(self, doing: str, sql: str, *args: Any) -> list[Any]:
        result: list[Any] = await self._call(doing, "fetch", sql, *args)
        return result

    async def _execute(self, doing: str, sql: str, *args: Any) -> None:
        await self._call(doing, "execute", sql, *args)

    def _unavailable(
        self, exc: BaseException, doing: str = "query", *, unknown: bool = False
    ) -> BackendUnavailableError:
        message = f"PostgreSQL unavailable for {self!r} ({doing}): {type(exc).__name__}: {exc}"
        if unknown:
            message += "; the write may or may not have been committed"
            return WriteOutcomeUnknownError(scrub(message, self._secrets))
        return BackendUnavailableError(scrub(message, self._secrets))

    @staticmethod
    def _decode(row: Sequence[Any]) -> Registration:
        return Registration.from_trusted(row[0], loads(row[1]), row[2], loads(row[3]), row[4], row[5], row[6])

    # ---- lifecycle -------------------------------------------------------------------------

    async def _initialize(self) -> None:
        async with self._init_lock:
            await self._open()

    async def _open(self) -> None:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    command_timeout=None,  # bounded by self._deadlines instead (cheaper per statement)
                    timeout=self._connect_timeout,
                    reset=_keep_session,
                    **self._pgbouncer_options(),
                )
            except _UNAVAILABLE as exc:
                raise self._unavailable(exc, "connect") from exc
        try:
            doing = "create table" if self._create_schema else "check table"
            try:
                async with asyncio.timeout(self._command_timeout):
                    if self._create_schema:
                        await self._create_table()
                    else:
                        await self._check_table()
            except TimeoutError as exc:  # a server that accepts connections but does not answer
                raise self._unavailable(exc, doing) from exc
        except BaseException:
            if self._owns_pool:
                await self._release_pool()
            raise
        if self._owns_pool and self._lease is None:
            assert self._pool is not None
            self._lease = LeasedConnections(self._pool, self._max_size)
        self._deadlines.start()
        self._recorder.start()

    def _pgbouncer_options(self) -> dict[str, Any]:
        """``asyncpg.create_pool`` options of PgBouncer mode: no named statements, and
        connections that send each statement in one round trip (see ``_pgbouncer``)."""
        if not self._pgbouncer:
            return {}
        return {"statement_cache_size": 0, "connection_class": PgBouncerConnection}

    async def _create_table(self) -> None:
        """Create schema, table and indexes if missing; safe when several processes race here.

        DDL runs under a transaction-scoped advisory lock keyed on the table name, and only when
        the table is missing (checked first without the lock, then again under it), so a role
        with only DML rights can use a table created beforehand.
        """
        t, schema = self._sql.table, self._sql.schema
        try:
            async with self._db.acquire() as conn:
                if await conn.fetchval(TABLE_EXISTS, t):
                    return
                async with conn.transaction():
                    await conn.execute(ADVISORY_LOCK, f"tiered_registry:{t}")
                    if await conn.fetchval(TABLE_EXISTS, t):
                        return  # another process created it while we waited
                    if not await conn.fetchval(SCHEMA_EXISTS, schema):
                        await conn.execute(ADVISORY_LOCK, f"tiered_registry:{schema}")
                        await conn.execute(self._sql.create_schema)
                    await conn.execute(self._sql.create_table)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigurationError(
                f"{self!r}: table {t} does not exist and this role may not create it ({exc});"
                f" create it beforehand with the DDL of {self._schema_command()}"
                " and pass create_schema=False"
            ) from exc
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc, "create table") from exc
        except STATEMENT_LOST as exc:
            raise pooler_error(self, exc, pgbouncer=self._pgbouncer) from exc

    def _schema_command(self) -> str:
        """The ``tiered-registry schema`` command printing this backend's DDL."""
        command = f"'tiered-registry schema --table {self._table_name}"
        if self._schema_name != DEFAULT_SCHEMA:
            command += f" --schema {self._schema_name}"
        return command + "'"

    async def _check_table(self) -> None:
        """``create_schema=False``: no DDL; the table must exist and have the expected columns."""
        t = self._sql.table
        try:
            async with self._db.acquire() as conn:
                found = {row[0] for row in await conn.fetch(TABLE_COLUMNS, t)}
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc, "check table") from exc
        except STATEMENT_LOST as exc:
            raise pooler_error(self, exc, pgbouncer=self._pgbouncer) from exc
        if not found:
            raise ConfigurationError(
                f"{self!r}: table {t} does not exist, and create_schema=False does not create it;"
                f" create it with the DDL printed by {self._schema_command()}"
            )
        missing = [name for name in COLUMN_NAMES if name not in found]
        if missing:
            raise ConfigurationError(
                f"{self!r}: table {t} lacks the column(s) {missing}; it is not a registry table"
                f" of this version (the DDL: {self._schema_command()})"
            )

    async def _close(self) -> None:
        await self._batcher.close()
        await self._config_batcher.close()
        await self._recorder.stop()  # writes what is pending (failures are logged, not raised)
        await self._deadlines.stop()
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.close()
        if self._owns_pool:
            await self._release_pool()

    async def _release_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._connect_timeout)
        except (TimeoutError, *_UNAVAILABLE):
            pool.terminate()

    async def drop(self) -> None:
        """Drop this backend's table (and its indexes) for good: for tests and decommissioning.

        Pending access times are discarded. The backend stays open but has no table any more:
        close it (a new backend's ``initialize`` would create the table again).
        """
        self._check_open()
        self._recorder.discard()
        await self._execute("drop table", self._sql.drop)

    # ---- writes ----------------------------------------------------------------------------

    async def _register(
        self, bot_id: str, config: FrozenDict, status: str, metadata: FrozenDict | None
    ) -> Registration:
        now = utcnow()
        metadata_json = None if metadata is None else dumps(metadata).decode()
        row = await self._write(
            "register",
            "fetchrow",
            self._sql.register,
            bot_id,
            dumps(config).decode(),
            status,
            metadata_json,
            now,
        )
        assert row is not None  # an upsert always returns its row
        created_at, last_accessed_at, stored_metadata = row
        if metadata is None:
            metadata = freeze(loads(stored_metadata))
        return Registration(bot_id, config, status, metadata, created_at, now, last_accessed_at)

    async def _register_many(self, items: Sequence[RegisterItem]) -> list[Registration]:
        """One ``INSERT ... SELECT FROM unnest(...) ON CONFLICT`` for every item: all or nothing.
        Rows go in ``bot_id`` order, so two concurrent calls lock shared rows in the same order
        (in any other order they can deadlock)."""
        now = utcnow()
        ordered = sorted(items, key=lambda item: item[0])
        rows = await self._write(
            "register_many",
            "fetch",
            self._sql.register_many,
            [bot_id for bot_id, _, _, _ in ordered],
            [dumps(config).decode() for _, config, _, _ in ordered],
            [status for _, _, status, _ in ordered],
            [None if metadata is None else dumps(metadata).decode() for _, _, _, metadata in ordered],
            now,
        )
        stored = {row[0]: row for row in rows}
        records = []
        for bot_id, config, status, metadata in items:
            _, created_at, last_accessed_at, stored_metadata = stored[bot_id]
            if metadata is None:
                metadata = freeze(loads(stored_metadata))
            records.append(Registration(bot_id, config, status, metadata, created_at, now, last_accessed_at))
        return records

    _LOADS_JSON = True  # load() hands us JSON text: no frozen copies of a million configs
    _LOAD_CHUNK = 10_000  # ~20 MB of 2 KB configs per statement, ~0.4 s of server work

    async def _load_json_chunk(self, items: Sequence[JsonItem]) -> None:
        """A chunk of :meth:`load`: one upsert per kind of item (metadata given / kept), nothing
        returned. Not one transaction with the next chunk: a bulk load must not hold the locks of
        a million rows (see :mod:`~tiered_registry.bulk`)."""
        now = utcnow()
        replacing = [item for item in items if item[3] is not None]
        keeping = [item for item in items if item[3] is None]
        if replacing:
            await self._write(
                "load",
                "execute",
                self._sql.load,
                [item[0] for item in replacing],
                [item[1] for item in replacing],
                [item[2] for item in replacing],
                now,
                [item[3] for item in replacing],
            )
        if keeping:
            await self._write(
                "load",
                "execute",
                self._sql.load_keep,
                [item[0] for item in keeping],
                [item[1] for item in keeping],
                [item[2] for item in keeping],
                now,
            )

    async def _deactivate(self, bot_id: str) -> bool:
        return await self._write("deactivate", "fetchval", self._sql.deactivate, bot_id, utcnow()) is True

    async def _unregister(self, bot_id: str) -> bool:
        return await self._write("unregister", "fetchval", self._sql.unregister, bot_id) is True

    async def _clear(self) -> None:
        await self._write("clear", "execute", self._sql.clear)

    async def _record_accesses(self, bot_ids: Sequence[str], at: datetime) -> None:
        await self._record_access_times(dict.fromkeys(bot_ids, at))

    async def _record_access_times(self, times: Mapping[str, datetime]) -> None:
        """One ``UPDATE`` per ``_TOUCH_CHUNK`` bots, each its own transaction; touches only
        ``last_accessed_at``, never moves it back. Chunked so that 100,000 bots read within one
        flush interval hold their row locks (and a connection) one short chunk at a time, never
        all at once: a concurrent write of one of them waits for one chunk at most."""
        bot_ids = sorted(times)
        for start in range(0, len(bot_ids), _TOUCH_CHUNK):
            chunk = bot_ids[start : start + _TOUCH_CHUNK]
            await self._execute("record accesses", self._sql.touch, chunk, [times[b] for b in chunk])

    # ---- point reads -----------------------------------------------------------------------

    async def _get(self, bot_id: str, *, touch: bool) -> Registration | None:
        row = await self._batcher.load(bot_id)
        if row is None:
            return None
        if touch:
            return self._access(self._decode(row))
        return self._decode(row)

    async def _get_config(self, bot_id: str, *, touch: bool) -> FrozenDict | None:
        text = await self._config_batcher.load(bot_id)
        if text is None:
            return None
        if touch:
            self._recorder.record(bot_id)
        return self._decode_config(text)

    # The batchers' round trips: one id (sent at once), or many in one statement.

    async def _read_row(self, bot_id: str) -> Any:
        return await self._fetchrow("get", self._sql.get, bot_id)

    async def _read_rows(self, bot_ids: list[str]) -> list[Any]:
        rows = await self._rows_of(bot_ids)
        return [rows.get(bot_id) for bot_id in bot_ids]

    async def _read_config(self, bot_id: str) -> str | None:
        text: str | None = await self._call("get_config", "fetchval", self._sql.get_config, bot_id)
        return text

    async def _read_configs(self, bot_ids: list[str]) -> list[str | None]:
        rows = await self._rows_of(bot_ids, "get_config", self._sql.get_configs)
        return [None if (row := rows.get(bot_id)) is None else row[1] for bot_id in bot_ids]

    async def _rows_of(
        self, bot_ids: Sequence[str], doing: str = "get_many", sql: str | None = None
    ) -> dict[str, Any]:
        """The rows (of ``sql``, by default whole records) of the ids that exist, by id (the
        first column): one ``= ANY($1)`` statement per ``_MANY_CHUNK`` ids."""
        rows: dict[str, Any] = {}
        for start in range(0, len(bot_ids), _MANY_CHUNK):
            chunk = list(bot_ids[start : start + _MANY_CHUNK])
            for row in await self._fetch(doing, sql or self._sql.get_many, chunk):
                rows[row[0]] = row
        return rows

    async def _get_many(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, Registration]:
        rows = await self._rows_of(bot_ids)
        found: dict[str, Registration] = {}
        for bot_id in bot_ids:
            row = rows.get(bot_id)
            if row is not None:
                record = self._decode(row)
                found[bot_id] = self._access(record) if touch else record
        return found

    async def _get_configs(self, bot_ids: Sequence[str], *, touch: bool) -> dict[str, dict[str, Any]]:
        texts = await self._read_configs(list(bot_ids))
        found: dict[str, dict[str, Any]] = {}
        for bot_id, text in zip(bot_ids, texts, strict=True):
            if text is not None:
                found[bot_id] = self._decode_config(text)
                if touch:
                    self._recorder.record(bot_id)
        return found

    async def _exists(self, bot_id: str) -> bool:
        return await self._fetchval("exists", self._sql.exists, bot_id) is True

    # ---- lists and counts ------------------------------------------------------------------

    async def _select(self, query: Query) -> list[Registration]:
        text, params, checks_nested = self._sql.select(query)
        rows = await self._fetch("list", text, *params)
        if checks_nested and rows and rows[0][NESTED]:
            # Rare: jsonb orders arrays/objects by size first, Query.order by their JSON text.
            # Sort the whole filtered set in Python so every backend returns the same list.
            matching = await self._select(Query(status=query.status, filter_metadata=query.filter_metadata))
            return query.page(query.order(matching))
        return [self._decode(row) for row in rows]

    async def _count(self, query: Query) -> int:
        text, params = self._sql.count(query)
        return int(await self._fetchval("count", text, *params))

    async def _list_ids(self) -> list[str]:
        rows = await self._fetch("list_ids", self._sql.list_ids)
        return [row[0] for row in rows]

    async def _recently_accessed(self, limit: int) -> list[str]:
        rows = await self._fetch("recently_accessed", self._sql.recently_accessed, limit)
        return [row[0] for row in rows]

    async def _stream(self, query: Query, batch_size: int) -> AsyncIterator[Registration]:
        """Keyset pagination on ``bot_id``: bounded memory, and no connection held between batches."""
        first_text, next_text, params = self._sql.stream(query, batch_size)
        rows = await self._fetch("stream", first_text, *params)
        while rows:
            for row in rows:
                yield self._decode(row)
            if len(rows) < batch_size:
                return
            rows = await self._fetch("stream", next_text, *params, rows[-1][0])
