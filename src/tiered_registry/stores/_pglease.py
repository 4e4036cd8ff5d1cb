"""``LeasedConnections``: pool connections kept checked out and handed between tasks directly.

Why: every ``asyncpg.Pool`` checkout costs about a third of a point query on loopback
(measured ~100 µs of ~300 µs): ``release`` runs under ``asyncio.shield`` (a new task and one more
loop iteration per query), re-arms an inactivity timer and, by default, sends a reset query. A
backend whose statements are all single, self-contained and change no session state (no ``SET``,
``LISTEN``, cursor or transaction left behind) can instead keep up to ``size`` connections
checked out and pass them from task to task: a checkout is then a list pop.

Behind PgBouncer in transaction pool mode (``PostgresBackend(pgbouncer=True)``) this holds as it
is: a leased connection is a client connection to PgBouncer, each statement its own transaction on
whichever server connection is free, and nothing is left on either between two statements (no
named prepared statements in that mode; see :mod:`~tiered_registry.stores._pgbouncer`). A
cancelled statement's cancel request is forwarded by PgBouncer to the server connection running it.

What stays asyncpg's job: connecting, reconnecting and cleaning up after a failure. A connection
whose query failed or was cancelled is released to the pool (which waits for the cancellation,
rolls back, or terminates it); one the server closed, or that failed at the connection level, is
terminated, released and replaced. Tasks that find all ``size`` connections busy wait in FIFO
order for the next one handed back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["Connection", "LeasedConnections"]

Connection: TypeAlias = "PoolConnectionProxy[Any]"


def _usable(conn: Connection) -> bool:
    """False once the connection is lost (asyncpg then detaches the proxy and recycles the holder)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # "connection has been released back to the pool"
        return False


class LeasedConnections:
    """Up to ``size`` connections leased from ``pool``; :meth:`take` one, then :meth:`give` it back."""

    def __init__(self, pool: asyncpg.Pool[Any], size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._pool = pool
        self._size = size
        self._leased = 0
        self._idle: list[Connection] = []
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._open = True
        self._making: set[asyncio.Future[Connection]] = set()  # new connections nobody waits for

    @property
    def leased(self) -> int:
        """Connections currently checked out of the pool by this lease (idle or in use)."""
        return self._leased

    def take_idle(self) -> Connection | None:
        """An idle, usable connection at once, or ``None`` (then ``await take()``): the common case
        without a coroutine."""
        idle = self._idle
        if idle and _usable(idle[-1]):
            return idle.pop()
        return None

    async def take(self) -> Connection:
        """A connection for one statement; hand it back with :meth:`give` or :meth:`discard`."""
        while True:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if _usable(conn):
                    return conn
                await self._return_to_pool(conn)  # the server closed it: the pool replaces it
            if self._leased < self._size:
                self._leased += 1
                # A new connection is being made: let it finish even if we are cancelled (it
                # then serves the next caller). asyncpg cancelled in the middle of its TLS
                # negotiation leaves a future whose error is never retrieved (logged as an
                # ERROR each time), and the attempt would be wasted anyway.
                acquiring = asyncio.ensure_future(self._pool.acquire())
                try:
                    return await asyncio.shield(acquiring)
                except asyncio.CancelledError:
                    self._making.add(acquiring)
                    acquiring.add_done_callback(self._adopt)
                    raise
                except BaseException:
                    self._leased -= 1
                    self._wake_one(None)
                    raise
            waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn_or_slot = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()  # handed over just as we were cancelled: pass it on
                    if handed is not None:
                        await self.give(handed)
                    else:
                        self._wake_one(None)
                else:  # cancelled while waiting; a hand-over may have dropped it already
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if conn_or_slot is not None:
                return conn_or_slot
            # a lease was given up (None): loop and take the free slot

    def _adopt(self, acquiring: asyncio.Future[Connection]) -> None:
        """A connection whose caller was cancelled while it was made: keep it for the next one."""
        self._making.discard(acquiring)
        if acquiring.cancelled() or acquiring.exception() is not None:
            self._leased -= 1
            self._wake_one(None)
        elif not self._wake_one(acquiring.result()):
            self._idle.append(acquiring.result())  # (closing: close() returns it to the pool)

    async def give(self, conn: Connection) -> None:
        """Hand back a connection whose statement succeeded: to the next waiter, else keep it idle."""
        if not self.give_nowait(conn):
            await self._return_to_pool(conn)

    def give_nowait(self, conn: Connection) -> bool:
        """:meth:`give` without a coroutine; False if the lease is closing (then :meth:`discard` it)."""
        if not self._open:
            return False
        if not self._wake_one(conn):
            self._idle.append(conn)
        return True

    async def discard(self, conn: Connection, *, broken: bool = False) -> None:
        """Hand back a connection whose statement failed or was cancelled: the pool cleans it up.

        ``broken``: it failed at the connection level (lost, timed out, server shutting down).
        It is terminated first: a server going down can leave a connection open but half-way
        through the protocol, and the pool (we skip its reset query) would hand it out again.
        """
        if broken:
            with contextlib.suppress(Exception):
                conn.terminate()
        await self._return_to_pool(conn)

    async def discard_cancelled(self, conn: Connection, wait: float) -> None:
        """Hand back a connection whose statement was cancelled in flight (by its caller, or by
        the statement deadline) once the server has ended that statement.

        asyncpg sent the server a cancel request when the statement was cancelled; the pool
        waits for the server to confirm it (at most ``wait`` seconds, else it terminates the
        connection). Terminating at once would drop the cancel request too: a statement waiting
        for a lock would then go on waiting on the server and commit when the lock is released.
        """
        await self._return_to_pool(conn, wait)

    async def close(self) -> None:
        """Stop leasing: idle connections go back to the pool now, busy ones when handed back."""
        self._open = False
        if self._making:
            await asyncio.gather(*self._making, return_exceptions=True)  # they join the idle ones
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._return_to_pool(conn)

    def _wake_one(self, value: Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(value)
                return True
        return False

    async def _return_to_pool(self, conn: Connection, wait: float | None = None) -> None:
        """``wait``: at most that long for a cancelled statement to end (asyncpg's release timeout)."""
        self._leased -= 1
        try:
            await self._pool.release(conn, timeout=wait)
        except Exception:  # the pool has terminated it already; nothing else to undo
            pass
        finally:
            self._wake_one(None)  # a slot is free: a waiter may lease a new connection
