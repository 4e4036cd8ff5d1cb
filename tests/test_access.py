"""``AccessRecorder``: write-behind ``last_accessed_at`` (the store-independent parts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

import pytest

from tiered_registry import Registration
from tiered_registry.access import AccessRecorder
from tiered_registry.errors import BackendUnavailableError
from tiered_registry.frozen import FrozenDict
from tiered_registry.models import utcnow

from .contract.conftest import STACKS, Services


async def test_an_outage_is_logged_once_and_nothing_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    """While the store is down every flush fails; that is one warning (with the error), not one
    per flush interval, then one line when the accesses are written again. The accesses noted
    meanwhile are all written by the first flush that succeeds."""
    caplog.set_level(logging.INFO, logger="tiered_registry.access")
    written: list[str] = []
    all_written = asyncio.Event()
    down = 5  # the next five flushes fail

    async def sink(bot_ids: Mapping[str, datetime]) -> None:
        nonlocal down
        if down:
            down -= 1
            raise BackendUnavailableError("injected: store down")
        written.extend(bot_ids)
        if sorted(written) == ["a", "b", "c"]:
            all_written.set()

    recorder = AccessRecorder(sink, interval=0.01)
    recorder.start()
    try:
        for bot_id in ("a", "b", "c"):  # noted while the flushes fail
            recorder.record(bot_id)
            await asyncio.sleep(0.015)
        async with asyncio.timeout(5):
            await all_written.wait()  # by the first flush that succeeds: nothing was dropped
    finally:
        await recorder.stop()
    failures = [r for r in caplog.records if "flush failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None  # the store's error, once
    recovered = [r for r in caplog.records if "written again" in r.getMessage()]
    assert len(recovered) == 1
    assert "5 failed flushes" in recovered[0].getMessage()


def _record(bot_id: str, accessed: datetime) -> Registration:
    return Registration(
        bot_id, FrozenDict(), created_at=accessed, updated_at=accessed, last_accessed_at=accessed
    )


async def test_each_access_is_written_with_the_time_it_was_shown() -> None:
    """``record_at`` keeps the time the caller saw; ``record`` (no clock) is stamped when
    collected; the sink gets every bot with its own time, in one call."""
    batches: list[dict[str, datetime]] = []

    async def sink(times: Mapping[str, datetime]) -> None:
        batches.append(dict(times))

    recorder = AccessRecorder(sink, interval=3600)
    t0 = utcnow()
    recorder.record_at("a", t0)
    recorder.record_at("b", t0 + timedelta(seconds=1))
    recorder.record_at("b", t0 + timedelta(seconds=2))  # coalesced: the later access wins
    before = utcnow()
    recorder.record("c")
    view = recorder.view()  # a read: stamps "c" now, and that is the time written
    assert view is not None
    shown_c = view.show(_record("c", t0 - timedelta(days=1))).last_accessed_at
    assert shown_c >= before
    assert view.show(_record("a", t0 + timedelta(days=1))).last_accessed_at == t0 + timedelta(
        days=1
    )  # never back
    await recorder.flush()
    assert batches == [{"a": t0, "b": t0 + timedelta(seconds=2), "c": shown_c}]
    await recorder.flush()
    assert len(batches) == 1  # nothing pending, nothing written
    assert recorder.view() is None


async def test_a_read_shows_an_access_whose_write_ends_while_it_runs() -> None:
    """A read that started before (or while) a flush writes an access may have read the old value:
    its view still shows the access after the write ended."""
    release = asyncio.Event()
    written: list[dict[str, datetime]] = []

    async def sink(times: Mapping[str, datetime]) -> None:
        await release.wait()
        written.append(dict(times))

    recorder = AccessRecorder(sink, interval=3600)
    at = utcnow()
    old = _record("a", at - timedelta(seconds=1))
    recorder.record_at("a", at)
    before_flush = recorder.view()
    flush = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0)  # the flush has taken the batch and is writing it
    during_flush = recorder.view()
    release.set()
    await flush
    assert written == [{"a": at}]
    for view in (before_flush, during_flush):
        assert view is not None
        assert view.show(old).last_accessed_at == at
    assert recorder.view() is None  # written: later reads get it from the store


async def test_a_failed_flush_keeps_the_times_and_a_later_access_wins() -> None:
    fail = True
    written: list[dict[str, datetime]] = []
    t0 = utcnow()
    recorder: AccessRecorder

    async def sink(times: Mapping[str, datetime]) -> None:
        if fail:
            recorder.record_at("a", t0 + timedelta(seconds=5))  # an access while the write runs
            raise BackendUnavailableError("injected")
        written.append(dict(times))

    recorder = AccessRecorder(sink, interval=3600)
    recorder.record_at("a", t0)
    recorder.record_at("b", t0)
    with pytest.raises(BackendUnavailableError):
        await recorder.flush()
    view = recorder.view()
    assert view is not None
    assert view.show(_record("b", t0 - timedelta(seconds=1))).last_accessed_at == t0
    fail = False
    await recorder.flush()
    assert written == [{"a": t0 + timedelta(seconds=5), "b": t0}]


@pytest.mark.parametrize("kind", ["memory", "redis", "postgres"])
async def test_a_store_writes_each_access_time_only_forward(
    kind: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    """``record_access_times``: one batch, each bot its own time, never back, never recreating a bot."""
    spec = STACKS[kind]
    backend = spec.build(Services(request), namespace)
    await backend.initialize()
    try:
        a = await backend.register("a", {})
        b = await backend.register("b", {})
        later = a.last_accessed_at + timedelta(seconds=5, microseconds=7)
        await backend.record_access_times(
            {"a": later, "b": b.last_accessed_at - timedelta(days=1), "gone": later}
        )
        times = {r.bot_id: r.last_accessed_at for r in await backend.list_all()}
        assert times == {"a": later, "b": b.last_accessed_at}
    finally:
        await spec.teardown(backend)
        await backend.close()
