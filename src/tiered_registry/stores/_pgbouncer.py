"""PostgreSQL through PgBouncer in transaction pool mode: ``PostgresBackend(..., pgbouncer=True)``.

Why a mode of its own: in transaction (or statement) pool mode PgBouncer hands each transaction —
each statement outside ``BEGIN``/``COMMIT`` — to whichever server connection is free. Anything a
client leaves on a server connection between two transactions is then lost, or met by another
client. asyncpg's default keeps a cache of *named* prepared statements per connection: PgBouncer
before 1.21 (Debian's 1.18 among them; 1.21+ only with ``max_prepared_statements``) does not carry
them over, so the store fails with ``InvalidSQLStatementNameError`` (prepared statement
"__asyncpg_stmt_…" does not exist) or ``DuplicatePreparedStatementError`` (another process's
statement of the same name is on the server connection it landed on) — or, worse, executes that
other statement: asyncpg numbers its statements per process, so the same names recur in every
process, and a Bind landing where another process prepared one runs that process's SQL (seen in
the tests as ``UndefinedTableError`` for a dropped table; with matching types it would be wrong
rows, which no error-based detection can catch).

What the mode does, and what it costs:

- asyncpg's statement cache is off (``statement_cache_size=0``): nothing named is ever prepared.
- :class:`PgBouncerConnection` keeps, per client connection, the *description* of each
  statement (parameter and column types, learnt once by a Parse/Describe round trip) and sends
  every execution as one message batch, Parse (unnamed) + Bind + Execute + Sync: ONE round trip
  per statement, no state left behind on the server. asyncpg's own ``statement_cache_size=0``
  path takes two (Parse/Describe/Sync, then Parse/Bind/Execute/Sync) on every call. The
  server plans the statement each time (an unnamed statement is not kept); for this store's
  primary-key and ``= ANY($1)`` statements that is a few microseconds.
- Nothing else changes: no statement of ``PostgresBackend`` depends on session state (no ``SET``,
  ``LISTEN``, session advisory lock, cursor or temporary table; the DDL at ``initialize`` runs in
  one transaction under a transaction-scoped advisory lock), so its pool skips asyncpg's reset
  and its connections are handed from task to task as they are without PgBouncer
  (:mod:`~tiered_registry.stores._pglease`). A cancelled statement's cancel request goes to
  PgBouncer, which forwards it to the server connection running it.

Why not detect PgBouncer instead of an option: it is transparent on the wire (it forwards the
server's ``ParameterStatus``; ``SHOW`` commands exist only on its admin console), and switching
modes after a first failure would make that failure — perhaps a write — the detector, and the
silent case above raises nothing to detect. Instead,
without the option, the errors that betray a transaction pooler are turned into a
:class:`~tiered_registry.ConfigurationError` that names the option (:func:`pooler_error`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from asyncpg.prepared_stmt import PreparedStatement

    _Connection = asyncpg.Connection[asyncpg.Record]
else:
    _Connection = asyncpg.Connection

__all__ = ["DSN_PARAMETER", "STATEMENT_LOST", "PgBouncerConnection", "pgbouncer_option", "pooler_error"]

DSN_PARAMETER: Final = "pgbouncer"
"""``postgresql://...?pgbouncer=true``: the option in the DSN (removed before asyncpg sees it,
which would send an unknown parameter to the server as a setting)."""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_MAX_STATEMENTS: Final = 256
"""Statement descriptions kept per connection (the fixed statements, plus the most recent of the
list/count queries, whose text depends on their filters and sort)."""

STATEMENT_LOST: Final = (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)
"""What asyncpg's named statements meet behind a transaction pooler (and nowhere else)."""


def pgbouncer_option(dsn: str, pgbouncer: bool | None) -> tuple[str, bool]:
    """The DSN without the ``pgbouncer`` query parameter, and whether the mode is on: the keyword
    if given, else the parameter's value, else off. Raises :class:`ConfigurationError` for a value
    that is not a boolean word, or a keyword and a parameter that disagree."""
    if pgbouncer is not None and not isinstance(pgbouncer, bool):
        raise ConfigurationError(f"pgbouncer must be true, false or None, got {pgbouncer!r}")
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in query if key == DSN_PARAMETER]
    if not values:
        return dsn, bool(pgbouncer)
    word = values[-1].strip().lower()
    if word not in _TRUE | _FALSE:
        raise ConfigurationError(
            f"the DSN's {DSN_PARAMETER}= parameter must be true or false, got {values[-1]!r}"
        )
    in_dsn = word in _TRUE
    if pgbouncer is not None and pgbouncer != in_dsn:
        raise ConfigurationError(
            f"pgbouncer={pgbouncer} contradicts the DSN's {DSN_PARAMETER}={values[-1]}; give it once"
        )
    rest = urlencode([(key, value) for key, value in query if key != DSN_PARAMETER])
    return urlunsplit(parts._replace(query=rest)), in_dsn


def pooler_error(backend: object, exc: BaseException, *, pgbouncer: bool) -> ConfigurationError:
    """The error for a :data:`STATEMENT_LOST` failure: most likely a transaction pooler in front
    of the server, which this backend was not told about (the statement did not run)."""
    if pgbouncer:  # cannot happen in this mode unless a caller's pool caches named statements
        hint = (
            "pgbouncer=True is set, but a named prepared statement was used: a pool passed in"
            " must be created with statement_cache_size=0"
            " (and connection_class=PgBouncerConnection for one round trip per statement)"
        )
    else:
        hint = (
            "the server lost or mixed up asyncpg's prepared statements, as happens behind PgBouncer"
            " (or another pooler) in transaction or statement pool mode: pass pgbouncer=True"
            f" (or ?{DSN_PARAMETER}=true in the DSN)"
        )
    detail = str(exc).split("\nHINT:")[0]  # asyncpg's hint suggests a different fix
    return ConfigurationError(f"{backend!r}: {hint} ({type(exc).__name__}: {detail})")


class PgBouncerConnection(_Connection):
    """An asyncpg connection for PgBouncer's transaction pool mode: no named statements, and one
    round trip per statement (see the module notes). Create it through ``asyncpg.create_pool(...,
    statement_cache_size=0, connection_class=PgBouncerConnection)``.

    ``fetch``, ``fetchrow``, ``fetchval`` and ``execute`` with arguments run an unnamed statement
    whose description this connection keeps; ``execute`` without arguments is a simple query (one
    round trip, several statements allowed), as in asyncpg. A call with a ``timeout`` or a
    ``record_class`` takes asyncpg's own path (two round trips). The signatures are asyncpg's,
    ``timeout`` included.
    """

    __slots__ = ("_described", "_described_for")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._described: dict[str, PreparedStatement[asyncpg.Record]] = {}
        self._described_for = -1  # the pool checkout the descriptions belong to

    async def _statement(self, query: str) -> PreparedStatement[asyncpg.Record]:
        """The kept description of ``query`` (one Parse/Describe round trip the first time).

        asyncpg ties a prepared-statement object to one pool checkout of its connection (it
        refuses it after a release, even though an unnamed one holds nothing on the server), so
        the descriptions are dropped when the connection was released and checked out again.
        """
        checkout: int = self._pool_release_ctr  # type: ignore[attr-defined]
        described = self._described
        if checkout != self._described_for:
            described.clear()
            self._described_for = checkout
        statement = described.get(query)
        if statement is None:
            # With the statement cache off, asyncpg prepares an unnamed statement and marks it
            # "unprepared": each execution sends its Parse again, in the same batch as its Bind.
            statement = await self.prepare(query)
            if len(described) >= _MAX_STATEMENTS:
                del described[next(iter(described))]  # the oldest
            described[query] = statement
        return statement

    def _forget(self, query: str) -> None:
        """After a failure (a table dropped or altered, a closed statement): describe it anew."""
        self._described.pop(query, None)

    async def _run(self, query: str, method: str, *args: object, **options: Any) -> Any:
        """``statement.<method>(*args)`` on the described statement of ``query``: one round trip."""
        statement = await self._statement(query)
        try:
            return await getattr(statement, method)(*args, **options)
        except Exception:
            self._forget(query)
            raise

    async def fetchval(
        self,
        query: str,
        *args: object,
        column: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """asyncpg's ``fetchval``, in one round trip (an unnamed statement, its Parse re-sent)."""
        if timeout is not None:
            return await super().fetchval(query, *args, column=column, timeout=timeout)
        return await self._run(query, "fetchval", *args, column=column)

    async def fetchrow(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109
        record_class: Any = None,
    ) -> Any:
        """asyncpg's ``fetchrow``, in one round trip (an unnamed statement, its Parse re-sent)."""
        if timeout is not None or record_class is not None:
            return await super().fetchrow(query, *args, timeout=timeout, record_class=record_class)
        return await self._run(query, "fetchrow", *args)

    async def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109
        record_class: Any = None,
    ) -> Any:
        """asyncpg's ``fetch``, in one round trip (an unnamed statement, its Parse re-sent)."""
        if timeout is not None or record_class is not None:
            return await super().fetch(query, *args, timeout=timeout, record_class=record_class)
        return await self._run(query, "fetch", *args)

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:  # noqa: ASYNC109
        """asyncpg's ``execute``: with arguments, one round trip (an unnamed statement, its Parse
        re-sent) returning the status tag; without, a simple query, as in asyncpg."""
        if not args or timeout is not None:
            return await super().execute(query, *args, timeout=timeout)
        statement = await self._statement(query)
        try:
            await statement.fetch(*args)
        except Exception:
            self._forget(query)
            raise
        return statement.get_statusmsg() or ""
