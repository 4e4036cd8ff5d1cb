"""Contract: register/get/get_config/peek_config/exists/deactivate/unregister."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC

import pytest

from tiered_registry import FrozenDict, InvalidInputError, Registration, thaw

CONFIG = {
    "name": "support-bot",
    "llm": {"model": "m-1", "temperature": 0.2, "max_tokens": 512},
    "tools": ["search", {"name": "calc", "enabled": True}],
    "nothing": None,
    "unicode": "héllo ✓ 日本",
    "big": 2**62,
    "negative": -17,
}


async def _tick() -> None:
    """Let the clock move so timestamps differ."""
    await asyncio.sleep(0.002)


async def test_register_returns_the_record(backend) -> None:
    record = await backend.register("bot-1", CONFIG)
    assert isinstance(record, Registration)
    assert record.bot_id == "bot-1"
    assert record.config == CONFIG
    assert record.status == "active"
    assert record.metadata == {}
    for stamp in (record.created_at, record.updated_at, record.last_accessed_at):
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == UTC.utcoffset(None)


@pytest.mark.usefixtures("needs_metadata")
async def test_get_round_trips_every_field(backend) -> None:
    written = await backend.register("bot-1", CONFIG, "error", metadata={"tenant": "acme"})
    read = await backend.get("bot-1")
    assert read is not None
    assert (read.bot_id, read.config, read.status, read.metadata) == (
        "bot-1",
        CONFIG,
        "error",
        {"tenant": "acme"},
    )
    assert read.created_at == written.created_at
    assert read.updated_at == written.updated_at


async def test_config_json_types_survive_exactly(backend) -> None:
    config = {"t": True, "f": False, "i": 1, "fl": 1.5, "z": 0, "neg_f": -0.25, "s": "1", "l": [1, "1", 1.0]}
    await backend.register("bot", config)
    got = await backend.get_config("bot")
    assert got == config
    assert type(got["t"]) is bool
    assert type(got["i"]) is int
    assert type(got["fl"]) is float
    assert type(got["s"]) is str
    assert type(got["l"][0]) is int


async def test_missing_bot_reads_as_none(backend) -> None:
    assert await backend.get("nope") is None
    assert await backend.get_config("nope") is None
    assert await backend.peek_config("nope") is None
    assert await backend.exists("nope") is False


async def test_reregister_replaces_config_and_status_keeps_created_at(backend) -> None:
    first = await backend.register("bot", {"v": 1})
    await _tick()
    second = await backend.register("bot", {"w": 2}, "inactive")
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert await backend.get_config("bot") == {"w": 2}
    read = await backend.get("bot")
    assert read.status == "inactive"
    assert read.created_at == first.created_at
    assert await backend.count_all() == 1


@pytest.mark.usefixtures("needs_metadata")
async def test_metadata_none_keeps_it_and_a_mapping_replaces_it(backend) -> None:
    await backend.register("bot", {"v": 1}, metadata={"tenant": "acme", "tier": 1})
    await backend.register("bot", {"v": 2})
    assert (await backend.get("bot")).metadata == {"tenant": "acme", "tier": 1}
    await backend.register("bot", {"v": 3}, metadata={"tenant": "other"})
    assert (await backend.get("bot")).metadata == {"tenant": "other"}
    await backend.register("bot", {"v": 4}, metadata={})
    assert (await backend.get("bot")).metadata == {}


@pytest.mark.parametrize("status", ["active", "inactive", "error"])
async def test_get_and_get_config_answer_whatever_the_status(backend, status) -> None:
    await backend.register("bot", {"v": 1}, status)
    assert (await backend.get("bot")).status == status
    assert await backend.get_config("bot") == {"v": 1}
    assert await backend.peek_config("bot") == {"v": 1}
    assert await backend.exists("bot") is (status == "active")


async def test_deactivate_is_a_soft_delete(backend) -> None:
    first = await backend.register("bot", {"v": 1})
    await _tick()
    assert await backend.deactivate("bot") is True
    read = await backend.get("bot")
    assert read.status == "inactive"
    assert read.config == {"v": 1}
    assert read.created_at == first.created_at
    assert read.updated_at > first.updated_at
    assert await backend.exists("bot") is False
    assert await backend.get_config("bot") == {"v": 1}
    assert await backend.deactivate("bot") is True  # still exists
    assert await backend.deactivate("missing") is False


async def test_register_after_deactivate_reactivates(backend) -> None:
    await backend.register("bot", {"v": 1})
    await backend.deactivate("bot")
    await backend.register("bot", {"v": 2})
    assert await backend.exists("bot") is True
    assert await backend.list_ids() == ["bot"]


async def test_unregister_is_a_hard_delete(backend) -> None:
    await backend.register("bot", {"v": 1})
    assert await backend.unregister("bot") is True
    assert await backend.get("bot") is None
    assert await backend.get_config("bot") is None
    assert await backend.exists("bot") is False
    assert await backend.unregister("bot") is False
    assert await backend.count_all() == 0


async def test_register_after_unregister_starts_a_new_record(backend) -> None:
    first = await backend.register("bot", {"v": 1})
    await backend.unregister("bot")
    await _tick()
    second = await backend.register("bot", {"v": 2})
    assert second.created_at > first.created_at


async def test_returned_config_is_read_only_and_shared_state_is_safe(backend) -> None:
    await backend.register("bot", {"a": {"b": [1, 2]}})
    got = await backend.get_config("bot")
    assert isinstance(got, dict)
    assert json.loads(json.dumps(got)) == {"a": {"b": [1, 2]}}
    with pytest.raises(TypeError, match="read-only"):
        got["a"] = 1
    with pytest.raises(TypeError, match="read-only"):
        got["a"]["b"].append(3)
    with pytest.raises(TypeError):
        got.update({"x": 1})
    mutable = thaw(got)
    mutable["a"]["b"].append(3)
    deep = copy.deepcopy(got)
    deep["x"] = 1
    assert await backend.get_config("bot") == {"a": {"b": [1, 2]}}
    record = await backend.get("bot")
    with pytest.raises(TypeError):
        record.metadata["x"] = 1
    assert isinstance(record.config, FrozenDict)


@pytest.mark.usefixtures("needs_metadata")
async def test_caller_mutating_its_input_later_changes_nothing(backend) -> None:
    config = {"a": [1]}
    metadata = {"tenant": "acme"}
    await backend.register("bot", config, metadata=metadata)
    config["a"].append(2)
    config["b"] = 1
    metadata["tenant"] = "evil"
    assert await backend.get_config("bot") == {"a": [1]}
    assert (await backend.get("bot")).metadata == {"tenant": "acme"}


async def test_registering_a_returned_config_works(backend) -> None:
    await backend.register("bot", {"a": {"b": 1}})
    await backend.register("copy", await backend.get_config("bot"))
    assert await backend.get_config("copy") == {"a": {"b": 1}}


async def test_get_and_get_config_count_as_access_peek_does_not(backend) -> None:
    created = await backend.register("bot", {"v": 1})
    await backend.flush_accesses()
    base = (await backend.get("bot")).last_accessed_at
    assert base >= created.last_accessed_at
    await backend.flush_accesses()
    before = (await _peek_record(backend)).last_accessed_at
    for _ in range(3):
        await backend.peek_config("bot")
    await backend.flush_accesses()
    assert (await _peek_record(backend)).last_accessed_at == before
    await _tick()
    await backend.get_config("bot")
    await backend.flush_accesses()
    assert (await _peek_record(backend)).last_accessed_at > before


async def _peek_record(backend) -> Registration:
    """Read a record without counting an access (list_all is not an access)."""
    (record,) = await backend.list_all()
    return record


async def test_access_tracking_does_not_undo_a_concurrent_write(backend) -> None:
    await backend.register("bot", {"v": 1})
    await backend.get_config("bot")  # access pending
    await backend.deactivate("bot")
    await backend.flush_accesses()
    read = await _peek_record(backend)
    assert read.status == "inactive"
    await backend.get_config("bot")
    await backend.unregister("bot")
    await backend.flush_accesses()  # must not resurrect the bot
    assert await backend.count_all() == 0
    assert await backend.get("bot") is None


async def test_many_concurrent_tasks(backend) -> None:
    ids = [f"bot-{i:03d}" for i in range(100)]
    await asyncio.gather(*(backend.register(b, {"n": i}) for i, b in enumerate(ids)))
    configs = await asyncio.gather(*(backend.get_config(b) for b in ids))
    assert configs == [{"n": i} for i in range(100)]
    await asyncio.gather(
        *(backend.deactivate(b) for b in ids[:50]),
        *(backend.register(b, {"n": -1}) for b in ids[50:]),
    )
    assert await backend.count() == 50
    assert await backend.count_inactive() == 50
    assert await backend.list_ids() == ids[50:]


async def test_concurrent_writes_of_one_bot_leave_a_whole_record(backend, stack) -> None:
    def metadata(i: int) -> dict | None:
        return {"w": i} if stack.metadata else None

    await asyncio.gather(
        *(
            backend.register("bot", {"writer": i, "payload": [i] * 10}, metadata=metadata(i))
            for i in range(50)
        )
    )
    record = await backend.get("bot")
    writer = record.config["writer"]
    assert record.config == {"writer": writer, "payload": [writer] * 10}
    assert record.metadata == (metadata(writer) or {})
    assert await backend.count_all() == 1


async def test_get_active_config_answers_only_for_an_active_bot(backend) -> None:
    await backend.register("on", {"v": 1})
    await backend.register("off", {"v": 2}, "inactive")
    await backend.register("broken", {"v": 3}, "error")
    for _ in range(2):  # the second time from a cache tier, where there is one
        assert await backend.get_active_config("on") == {"v": 1}
        assert await backend.get_active_config("off") is None
        assert await backend.get_active_config("broken") is None
        assert await backend.get_active_config("missing") is None
    await backend.deactivate("on")
    assert await backend.get_active_config("on") is None
    assert await backend.get_config("on") == {"v": 1}  # get_config still answers (the contract)
    with pytest.raises(InvalidInputError):
        await backend.get_active_config("")


async def test_invalidate_keeps_what_the_store_holds(backend) -> None:
    await backend.register("bot", {"v": 1})
    assert await backend.get_config("bot") == {"v": 1}
    await backend.invalidate("bot")
    assert await backend.get_config("bot") == {"v": 1}
    await backend.invalidate_all()
    assert await backend.get_config("bot") == {"v": 1}
    await backend.invalidate("missing")
    with pytest.raises(InvalidInputError):
        await backend.invalidate("")
