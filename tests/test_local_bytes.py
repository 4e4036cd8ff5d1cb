"""``LocalCache(max_bytes=...)``: the local tier bounded in (estimated) bytes as well as in entries."""

from __future__ import annotations

import pytest

from tiered_registry import ConfigurationError, InMemoryBackend, LocalCache, TieredBackend, create_backend
from tiered_registry.frozen import freeze
from tiered_registry.models import Registration
from tiered_registry.tiers.local import ENTRY_OVERHEAD, entry_size


def _record(bot_id: str, text_bytes: int = 1000) -> Registration:
    return Registration(bot_id, freeze({"prompt": "x" * text_bytes, "tools": [{"name": "kb"}]}))


def _size(record: Registration) -> int:
    return entry_size((record, record.config, 0.0))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "64MB", True])
def test_max_bytes_must_be_a_positive_int_or_none(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"LocalCache max_bytes must be a positive int \(bytes\)"):
        LocalCache(max_bytes=bad)  # type: ignore[arg-type]


def test_create_backend_takes_max_bytes_and_names_a_bad_one() -> None:
    stack = create_backend({"tiers": [{"type": "local", "max_bytes": 2**20}], "store": "memory"})
    assert isinstance(stack, TieredBackend)
    local = stack.tiers[0]
    assert isinstance(local, LocalCache)
    assert local.max_bytes == 2**20
    with pytest.raises(ConfigurationError, match=r"tiers\[0\]\.max_bytes: expected an integer"):
        create_backend({"tiers": [{"type": "local", "max_bytes": "1MB"}], "store": "memory"})
    with pytest.raises(ConfigurationError, match=r"tiers\[0\]: LocalCache max_bytes must be a positive"):
        create_backend({"tiers": [{"type": "local", "max_bytes": 0}], "store": "memory"})


def test_the_estimate_grows_with_the_config_and_counts_the_overhead() -> None:
    small, large = _record("a", 100), _record("b", 10_000)
    assert ENTRY_OVERHEAD < _size(small) < _size(large)
    assert _size(large) - _size(small) == pytest.approx(9_900, abs=64)  # the string's bytes
    assert entry_size((None, None, 0.0)) == ENTRY_OVERHEAD  # a remembered miss


def test_lru_entries_are_evicted_when_the_bytes_do_not_fit() -> None:
    records = [_record(f"bot-{i}") for i in range(4)]
    size = _size(records[0])
    local = LocalCache(maxsize=100, ttl=60, max_bytes=3 * size + size // 2)  # room for three
    for record in records[:3]:
        local.set(record.bot_id, record)
    assert local.bytes_used == 3 * size
    local.note_hits(["bot-0"])  # bot-0 is now the most recently used: bot-1 leaves first
    local.set("bot-3", records[3])
    assert set(local.entries) == {"bot-0", "bot-2", "bot-3"}
    assert local.stats.evictions == 1
    assert local.bytes_used == 3 * size <= local.max_bytes  # type: ignore[operator]
    local.delete("bot-2")
    assert local.bytes_used == 2 * size


def test_a_bigger_entry_makes_room_for_itself() -> None:
    small = [_record(f"bot-{i}", 100) for i in range(4)]
    big = _record("big", 3_000)
    local = LocalCache(maxsize=100, ttl=60, max_bytes=_size(big) + _size(small[0]))
    for record in small:
        local.set(record.bot_id, record)
    local.set("big", big)
    assert "big" in local.entries
    assert local.bytes_used is not None
    assert local.bytes_used <= _size(big) + _size(small[0])
    assert len(local.entries) == 2


def test_an_entry_bigger_than_max_bytes_is_simply_not_cached() -> None:
    local = LocalCache(maxsize=100, ttl=60, max_bytes=4_000)
    local.set("small", _record("small", 100))
    local.set("huge", _record("huge", 10_000))
    assert set(local.entries) == {"small"}  # no error, and nothing else was evicted for it
    assert local.too_large == 1
    local.set("small", _record("small", 10_000))  # a replacement too big: the old value goes too
    assert local.entries == {}
    assert local.bytes_used == 0


def test_the_entry_count_still_bounds_a_tier_with_max_bytes() -> None:
    local = LocalCache(maxsize=2, ttl=60, max_bytes=2**30)
    for i in range(3):
        local.set(f"bot-{i}", _record(f"bot-{i}", 10))
    assert set(local.entries) == {"bot-1", "bot-2"}
    assert local.stats.evictions == 1
    assert local.bytes_used == 2 * _size(_record("x", 10))


def test_without_max_bytes_nothing_is_estimated() -> None:
    local = LocalCache(maxsize=10, ttl=60)
    local.set("a", _record("a"))
    assert local.bytes_used is None
    assert "max_bytes" not in repr(local)


async def test_stats_report_the_bytes_used_and_the_entries_too_large() -> None:
    local = LocalCache(maxsize=100, ttl=60, max_bytes=5_000)
    async with TieredBackend(tiers=[local], store=InMemoryBackend(), coherence=False) as stack:
        await stack.register("small", {"prompt": "x" * 100})
        await stack.register("huge", {"prompt": "x" * 10_000})
        assert await stack.get_config("huge") == {"prompt": "x" * 10_000}  # served from the store
        assert await stack.get_config("small") == {"prompt": "x" * 100}
        stats = stack.stats()["local"]
        assert stats["entries"] == 1
        assert stats["bytes"] == local.bytes_used
        assert 100 + ENTRY_OVERHEAD < stats["bytes"] <= 5_000
        assert stats["too_large"] >= 1
        assert "max_bytes=5000" in repr(local)
    unbounded = TieredBackend(tiers=[LocalCache()], store=InMemoryBackend(), coherence=False)
    async with unbounded:
        assert "bytes" not in unbounded.stats()["local"]
