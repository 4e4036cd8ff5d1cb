"""``AccessRecorder``: write-behind ``last_accessed_at`` (the store-independent parts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

import pytest

from tiered_registry.access import AccessRecorder
from tiered_registry.errors import BackendUnavailableError


async def test_an_outage_is_logged_once_and_nothing_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    """While the store is down every flush fails; that is one warning (with the error), not one
    per flush interval, then one line when the accesses are written again. The accesses noted
    meanwhile are all written by the first flush that succeeds."""
    caplog.set_level(logging.INFO, logger="tiered_registry.access")
    written: list[str] = []
    all_written = asyncio.Event()
    down = 5  # the next five flushes fail

    async def sink(bot_ids: Sequence[str], at: datetime) -> None:
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
