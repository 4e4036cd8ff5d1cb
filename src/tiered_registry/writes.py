"""``WriteThrough``: the write path of a :class:`~tiered_registry.TieredBackend`.

A write takes each shared tier's write token, then goes to the store. After the commit — or after
a failure that leaves the outcome unknown (:class:`~tiered_registry.WriteOutcomeUnknownError`, or
the caller cancelled while the store call was in flight: then the write is treated as done and
the bot forgotten everywhere) — it updates every tier, farthest first, and tells the other
processes. A write the store refused (any other error) changes no tier.

Three things make write-through safe when writes race (two processes, or two tasks of one):

- **Order.** A shared tier refuses a put whose write token, taken before the commit, is outdated
  (:meth:`~tiered_registry.tiers.base.CacheTier.write_token`): of two writers, the one that
  committed first cannot overwrite the other's value, whatever order their replies come in.

- **Contention.** Of two writes of one bot whose store calls overlap, nobody here knows which
  committed last, so neither may put its value into the local tier: each deletes instead (the
  next read takes the store's value). The same holds when another process's invalidation of the
  bot arrives while our write is in flight: its commit may be the later one. A
  :class:`PendingWrite` is *contended* once anything of that kind happened during it.
- **Post-commit steps always finish.** Once the store has committed (or may have: a write
  whose outcome is unknown), the tiers and the other processes must hear of it, even if the
  caller is cancelled meanwhile (a request timeout, a client gone away). :class:`AfterCommit`
  runs those steps in a task of their own that the caller's cancellation does not reach, and
  ``close()`` waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

from .changes import ChangeKind
from .circuit import TierGuard
from .errors import WriteOutcomeUnknownError
from .models import Registration
from .owed import OwedInvalidations, TierFailed
from .tiers.base import TIER_FAILURES
from .tiers.local import LocalCache

__all__ = ["AfterCommit", "PendingWrite", "PendingWrites", "WriteThrough"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_FAILED: Final = object()  # the write token of a shared tier that failed just before the commit


async def _nothing() -> None:
    """The commit of an invalidation: the write already happened around the stack."""


class PendingWrite:
    """One write of ``bot_id`` (``None``: a clear) from the moment it is started until its tiers
    are updated. ``since`` maps each shared tier's guard to its debt generation at the start;
    ``tokens`` holds each shared tier's write token (``None`` if it could not be taken)."""

    __slots__ = ("bot_id", "contended", "since", "tokens")

    def __init__(self, bot_id: str | None) -> None:
        self.bot_id = bot_id
        self.contended = False
        self.since: dict[int, int] = {}
        self.tokens: dict[int, object] = {}


class PendingWrites:
    """The :class:`PendingWrite` s of one backend, by bot id."""

    def __init__(self) -> None:
        self._by_bot: dict[str | None, list[PendingWrite]] = {}

    def __len__(self) -> int:
        return sum(len(writes) for writes in self._by_bot.values())

    def begin(self, bot_id: str | None) -> PendingWrite:
        write = PendingWrite(bot_id)
        if bot_id is None:
            self.contend(None)
        else:
            others = self._by_bot.get(bot_id)
            if others:
                write.contended = True
                for other in others:
                    other.contended = True
            if self._by_bot.get(None):  # a clear in flight: which came last is unknown
                write.contended = True
        self._by_bot.setdefault(bot_id, []).append(write)
        return write

    def end(self, write: PendingWrite) -> None:
        writes = self._by_bot.get(write.bot_id)
        if writes is not None and write in writes:
            writes.remove(write)
            if not writes:
                del self._by_bot[write.bot_id]

    def contend(self, bot_id: str | None) -> None:
        """Something else changed ``bot_id`` (``None``: maybe everything) meanwhile."""
        if bot_id is None:
            for writes in self._by_bot.values():
                for write in writes:
                    write.contended = True
            return
        for write in self._by_bot.get(bot_id, ()):
            write.contended = True


class AfterCommit:
    """Runs post-commit steps to completion, whatever happens to the task that awaits them."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    async def run(self, steps: Coroutine[Any, Any, None]) -> None:
        """Run ``steps`` in a task of their own and wait for it. If the caller is cancelled, the
        cancellation reaches the caller only: the steps go on (and :meth:`wait` waits for them)."""
        await asyncio.shield(self.start(steps))

    def start(self, steps: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``steps`` in a task of their own, without waiting for it."""
        task = asyncio.get_running_loop().create_task(steps, name="tiered-registry-after-commit")
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Also seen by the caller if it is still waiting; logged for the case it is not.
            logger.error("post-commit steps failed", exc_info=task.exception())

    async def wait(self) -> None:
        """Wait for the steps still running (their failures were logged already)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


class WriteThrough:
    """Writes of one backend: the store first, then every tier (see the module notes)."""

    def __init__(
        self,
        *,
        local: LocalCache | None,
        shared: Sequence[TierGuard],
        owed: OwedInvalidations,
        inline: bool,
        mark_stale: Callable[[str], None],
        forget_everything_local: Callable[[], None],
        tier_failed: TierFailed,
        changed: Callable[[str | None, ChangeKind], None],
    ) -> None:
        """``shared``: the guards of the shared tiers, nearest first. ``inline``: nothing after a
        commit awaits anything (no shared tier, no channel), so it runs in line, not in a task."""
        self._local = local
        self._shared = list(shared)
        self._owed = owed
        self._inline = inline
        self._mark_stale = mark_stale
        self._forget_everything_local = forget_everything_local
        self._tier_failed = tier_failed
        self._changed = changed  # the change feed of this process
        self._writes = PendingWrites()
        self._after_commit = AfterCommit()

    def contend(self, bot_id: str | None) -> None:
        """Another process changed ``bot_id`` (``None``: maybe everything)."""
        self._writes.contend(bot_id)

    async def wait(self) -> None:
        """Wait until every committed write has finished updating the tiers."""
        await self._after_commit.wait()

    async def write(
        self,
        bot_id: str | None,
        commit: Callable[[], Awaitable[_T]],
        kind: Callable[[_T], ChangeKind],
        *,
        put: bool = False,
    ) -> _T:
        """``commit`` (the store's write of ``bot_id``; ``None``: a clear), then every tier; returns
        what ``commit`` returned. ``kind`` names the change from that (for the change feed and the
        other processes). ``put``: it returns the :class:`Registration` to put into the tiers (a
        register); otherwise the bot is forgotten in every tier."""
        write = await self._begin(bot_id, put)
        unknown: ChangeKind = "invalidated" if bot_id is not None else "resync"
        try:
            result = await commit()
        except asyncio.CancelledError:
            # The statement may have been sent, and commit anyway: forget the bot everywhere. The
            # caller is gone; it does not wait for that.
            self._after_commit.start(self._write_through(write, None, unknown))
            raise
        except WriteOutcomeUnknownError:
            await self._after_commit.run(self._write_through(write, None, unknown))
            raise
        except BaseException:
            self._writes.end(write)  # refused, or known not to have happened: no tier changes
            raise
        record = result if put and isinstance(result, Registration) else None
        steps = self._write_through(write, record, kind(result))
        if self._inline:
            await steps  # nothing to await in it: cannot be cut short
        else:
            await self._after_commit.run(steps)
        return result

    async def write_many(
        self,
        bot_ids: Sequence[str],
        commit: Callable[[], Awaitable[list[Registration]]],
        kind: Callable[[Registration], ChangeKind],
    ) -> list[Registration]:
        """:meth:`write` of many bots in one go (a ``register_many``): ``commit`` returns the
        registrations in the order of ``bot_ids``. Each bot is one :class:`PendingWrite` as
        usual; the tokens, the puts of each shared tier and the announcement are batched."""
        writes = await self._begin_many(bot_ids)
        try:
            records = await commit()
        except asyncio.CancelledError:
            self._after_commit.start(self._write_through_many(writes, None, "invalidated"))
            raise
        except WriteOutcomeUnknownError:
            await self._after_commit.run(self._write_through_many(writes, None, "invalidated"))
            raise
        except BaseException:
            for write in writes:
                self._writes.end(write)
            raise
        kinds = [kind(record) for record in records]
        steps = self._write_through_many(writes, records, kinds)
        if self._inline:
            await steps
        else:
            await self._after_commit.run(steps)
        return records

    async def invalidate(self, bot_id: str | None) -> None:
        """Forget ``bot_id`` (``None``: everything) in every tier and tell the other processes, as
        after a write whose commit happened elsewhere (around the stack): the write path with
        nothing to commit. Kind ``invalidated`` (everything: ``resync``)."""
        kind: ChangeKind = "invalidated" if bot_id is not None else "resync"
        await self.write(bot_id, _nothing, lambda _: kind)

    async def _begin(self, bot_id: str | None, put: bool) -> PendingWrite:
        """Register the write (contention) and, for a ``put``, take each shared tier's write
        token before the store is called: a token taken after the commit could not tell which
        commit came last. (Forgetting needs no token: it is right whatever came last.)"""
        write = self._writes.begin(bot_id)
        try:
            for guard in self._shared:
                write.since[id(guard)] = guard.generation
                if not put or bot_id is None or not guard.available():
                    continue
                try:
                    write.tokens[id(guard)] = await guard.tier.write_token(bot_id)
                except TIER_FAILURES as exc:
                    guard.failed()
                    self._tier_failed(guard.tier, "write token", exc)
                    write.tokens[id(guard)] = _FAILED  # owed at once, not tried again (one timeout)
                except asyncio.CancelledError:
                    guard.abandoned()
                    raise
                else:
                    if not guard.healthy:
                        guard.succeeded()
        except BaseException:
            self._writes.end(write)
            raise
        return write

    async def _begin_many(self, bot_ids: Sequence[str]) -> list[PendingWrite]:
        """:meth:`_begin` of many bots: each shared tier's tokens in one call."""
        writes = [self._writes.begin(bot_id) for bot_id in bot_ids]
        try:
            for guard in self._shared:
                generation = guard.generation
                for write in writes:
                    write.since[id(guard)] = generation
                if not guard.available():
                    continue
                try:
                    tokens = await guard.tier.write_tokens(bot_ids)
                except TIER_FAILURES as exc:
                    guard.failed()
                    self._tier_failed(guard.tier, "write token", exc)
                    tokens = [_FAILED] * len(writes)
                except asyncio.CancelledError:
                    guard.abandoned()
                    raise
                else:
                    if not guard.healthy:
                        guard.succeeded()
                for write, token in zip(writes, tokens, strict=True):
                    write.tokens[id(guard)] = token
        except BaseException:
            for write in writes:
                self._writes.end(write)
            raise
        return writes

    async def _write_through_many(
        self,
        writes: Sequence[PendingWrite],
        records: Sequence[Registration] | None,
        kinds: Sequence[ChangeKind] | ChangeKind,
    ) -> None:
        """:meth:`_write_through` of many bots (``records`` ``None``: forget them all)."""
        try:
            for guard in reversed(self._shared):
                await self._write_shared_many(guard, writes, records)
            changes: list[tuple[str | None, str]] = []
            for index, write in enumerate(writes):
                bot_id = write.bot_id
                assert bot_id is not None
                record = None if records is None else records[index]
                change = kinds if isinstance(kinds, str) else kinds[index]
                self._update_local(write, bot_id, record)
                self._changed(bot_id, change)
                changes.append((bot_id, change))
            await self._owed.announce(changes)
        finally:
            for write in writes:
                self._writes.end(write)

    async def _write_shared_many(
        self, guard: TierGuard, writes: Sequence[PendingWrite], records: Sequence[Registration] | None
    ) -> None:
        """:meth:`_write_shared` of many bots: one ``put_many``; what cannot land is owed."""
        tier = guard.tier
        puts: list[tuple[str, Registration | None, object]] = []
        landing: list[PendingWrite] = []
        for index, write in enumerate(writes):
            token = write.tokens.get(id(guard))
            if token is _FAILED:
                assert write.bot_id is not None
                self._owed.owe(guard, write.bot_id)
                continue
            assert write.bot_id is not None
            puts.append((write.bot_id, None if records is None else records[index], token))
            landing.append(write)
        if not landing:
            return
        if guard.available():
            try:
                await tier.put_many(puts)
            except TIER_FAILURES as exc:
                guard.failed()
                self._tier_failed(tier, "write", exc)
            except asyncio.CancelledError:  # the loop is shutting down under us
                guard.abandoned()
                for write in landing:
                    self._owed.owe(guard, write.bot_id)
                raise
            else:
                if not guard.healthy:
                    for write in landing:
                        guard.written(write.bot_id, write.since[id(guard)])
                    guard.succeeded()
                return
        for write in landing:
            self._owed.owe(guard, write.bot_id)

    async def _write_through(
        self, write: PendingWrite, record: Registration | None, kind: ChangeKind
    ) -> None:
        """After a commit: put ``record`` into (or, ``None``, forget the bot in) every tier,
        farthest first, then announce it to the other processes. The local tier gets the
        record only if no other write of the bot overlapped this one (else it forgets it too)."""
        bot_id = write.bot_id
        try:
            for guard in reversed(self._shared):
                await self._write_shared(guard, write, record)
            if bot_id is None:
                self._forget_everything_local()
            else:
                self._update_local(write, bot_id, record)
            self._changed(bot_id, kind)
            await self._owed.announce(((bot_id, kind),))
        finally:
            self._writes.end(write)

    def _update_local(self, write: PendingWrite, bot_id: str, record: Registration | None) -> None:
        """A read of ``bot_id`` in flight must not fill; the local tier takes ``record`` unless
        another write of the bot overlapped this one (then, or with no record, it forgets it)."""
        self._mark_stale(bot_id)
        if self._local is not None:
            if record is not None and not write.contended:
                self._local.set(bot_id, record)
            else:
                self._local.stats.invalidations += 1
                self._local.delete(bot_id)

    async def _write_shared(self, guard: TierGuard, write: PendingWrite, record: Registration | None) -> None:
        """One shared tier's part of :meth:`_write_through`, through its breaker (whatever it
        owes: a write that lands settles what was owed before it began). A tier that cannot be
        reached is owed it."""
        tier, bot_id = guard.tier, write.bot_id
        token = write.tokens.get(id(guard))
        if token is not _FAILED and guard.available():
            try:
                if bot_id is None:
                    await tier.clear()
                elif record is not None:
                    await tier.put(bot_id, record, token)
                else:
                    await tier.invalidate(bot_id)
            except TIER_FAILURES as exc:
                guard.failed()
                self._tier_failed(tier, "write", exc)
            except asyncio.CancelledError:  # the loop is shutting down under us
                guard.abandoned()
                self._owed.owe(guard, bot_id)
                raise
            else:
                if not guard.healthy:
                    guard.written(bot_id, write.since[id(guard)])
                    guard.succeeded()
                return
        self._owed.owe(guard, bot_id)
