"""Contract: every class of bad input raises a clear error and writes nothing anywhere."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from tiered_registry import (
    MAX_BOT_ID_LENGTH,
    MAX_CONFIG_BYTES,
    MAX_METADATA_BYTES,
    InvalidInputError,
    InvalidTypeError,
    RegistryError,
)


def _cycle() -> dict:
    loop: dict = {"a": {}}
    loop["a"]["back"] = loop
    return loop


def _deep(levels: int) -> dict:
    doc: dict = {}
    for _ in range(levels):
        doc = {"d": doc}
    return doc


BAD_IDS = [
    pytest.param("", InvalidInputError, "empty", id="empty"),
    pytest.param("x" * (MAX_BOT_ID_LENGTH + 1), InvalidInputError, "maximum", id="too-long"),
    pytest.param("a\x00b", InvalidInputError, "NUL|control", id="nul"),
    pytest.param("a\nb", InvalidInputError, "control", id="newline"),
    pytest.param("tab\there", InvalidInputError, "control", id="tab"),
    pytest.param("del\x7f", InvalidInputError, "control", id="del"),
    pytest.param("\ud800", InvalidInputError, "surrogate", id="lone-surrogate"),
    pytest.param(123, InvalidTypeError, "str", id="int"),
    pytest.param(None, InvalidTypeError, "str", id="none"),
    pytest.param(b"bot", InvalidTypeError, "str", id="bytes"),
    pytest.param(["bot"], InvalidTypeError, "str", id="list"),
]

BAD_CONFIGS = [
    pytest.param(["a"], InvalidTypeError, "must be a dict", id="list"),
    pytest.param(None, InvalidTypeError, "must be a dict", id="none"),
    pytest.param("{}", InvalidTypeError, "must be a dict", id="json-string"),
    pytest.param({1: "a"}, InvalidTypeError, "keys must be str", id="int-key"),
    pytest.param({"a": {("t",): 1}}, InvalidTypeError, "keys must be str", id="nested-tuple-key"),
    pytest.param({"a": math.nan}, InvalidInputError, "NaN", id="nan"),
    pytest.param({"a": [1, math.inf]}, InvalidInputError, "NaN/Infinity", id="infinity"),
    pytest.param(_cycle(), InvalidInputError, "cycle", id="cycle"),
    pytest.param({"a": b"x"}, InvalidTypeError, "bytes", id="bytes"),
    pytest.param({"a": {1, 2}}, InvalidTypeError, "set", id="set"),
    pytest.param({"a": (1, 2)}, InvalidTypeError, "tuple", id="tuple"),
    pytest.param({"a": datetime(2020, 1, 1)}, InvalidTypeError, "datetime", id="datetime"),
    pytest.param({"a": object()}, InvalidTypeError, "object", id="object"),
    pytest.param({"a": 2**70}, InvalidInputError, "64 bits", id="huge-int"),
    pytest.param({"a": "x\x00y"}, InvalidInputError, "NUL", id="nul-in-string"),
    pytest.param({"a\x00": 1}, InvalidInputError, "NUL", id="nul-in-key"),
    pytest.param({"a": "\udc00"}, InvalidInputError, "surrogate", id="surrogate"),
    pytest.param({"a": "x" * MAX_CONFIG_BYTES}, InvalidInputError, "maximum", id="too-big"),
    pytest.param(_deep(100), InvalidInputError, "deeper", id="too-deep"),
]

BAD_STATUSES = [
    pytest.param("deleted", InvalidInputError, "unknown status", id="unknown"),
    pytest.param("ACTIVE", InvalidInputError, "unknown status", id="wrong-case"),
    pytest.param("", InvalidInputError, "unknown status", id="empty"),
    pytest.param(None, InvalidTypeError, "str", id="none"),
    pytest.param(1, InvalidTypeError, "str", id="int"),
]

BAD_METADATA = [
    pytest.param(["tenant"], InvalidTypeError, "must be a dict", id="list"),
    pytest.param({"a": math.nan}, InvalidInputError, "NaN", id="nan"),
    pytest.param({2: "x"}, InvalidTypeError, "keys must be str", id="int-key"),
    pytest.param({"a": "x" * MAX_METADATA_BYTES}, InvalidInputError, "maximum", id="too-big"),
]


async def _assert_nothing_written(backend) -> None:
    assert await backend.count_all() == 0
    assert await backend.list_all() == []


@pytest.mark.parametrize(("bad", "error", "message"), BAD_IDS)
async def test_bad_bot_id_is_rejected_by_every_method(backend, bad, error, message) -> None:
    calls = [
        lambda: backend.register(bad, {"a": 1}),
        lambda: backend.get(bad),
        lambda: backend.get_config(bad),
        lambda: backend.peek_config(bad),
        lambda: backend.exists(bad),
        lambda: backend.deactivate(bad),
        lambda: backend.unregister(bad),
    ]
    for call in calls:
        with pytest.raises(error, match=message) as info:
            await call()
        assert "bot_id" in str(info.value)
    await _assert_nothing_written(backend)


@pytest.mark.parametrize(("bad", "error", "message"), BAD_CONFIGS)
async def test_bad_config_is_rejected_and_nothing_written(backend, bad, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        await backend.register("bot", bad)
    assert "config" in str(info.value)
    await _assert_nothing_written(backend)


@pytest.mark.parametrize(("bad", "error", "message"), BAD_STATUSES)
async def test_bad_status_is_rejected_and_nothing_written(backend, bad, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        await backend.register("bot", {"a": 1}, bad)
    assert "status" in str(info.value)
    await _assert_nothing_written(backend)
    if bad is None:
        return  # status=None is valid for lists: "any status"
    with pytest.raises(error):
        await backend.list_all(status=bad)
    with pytest.raises(error):
        await backend.count_all(status=bad)


@pytest.mark.parametrize(("bad", "error", "message"), BAD_METADATA)
async def test_bad_metadata_is_rejected_and_nothing_written(backend, bad, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        await backend.register("bot", {"a": 1}, metadata=bad)
    assert "metadata" in str(info.value)
    await _assert_nothing_written(backend)


async def test_a_rejected_write_leaves_the_existing_record_as_it_was(backend, stack) -> None:
    metadata = {"tenant": "acme"} if stack.metadata else {}
    before = await backend.register("bot", {"good": True}, metadata=metadata)
    for bad_call in (
        lambda: backend.register("bot", {"bad": math.nan}),
        lambda: backend.register("bot", {"ok": 1}, "bogus"),
        lambda: backend.register("bot", {"ok": 1}, metadata={"x": {1, 2}}),
    ):
        with pytest.raises(RegistryError):
            await bad_call()
    after = await backend.get("bot")
    assert (after.config, after.status, after.metadata) == ({"good": True}, "active", metadata)
    assert after.updated_at == before.updated_at


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"sort": [("no_such_field", "asc")]}, InvalidInputError, "cannot sort", id="sort-field"),
        pytest.param({"sort": [("bot_id", "sideways")]}, InvalidInputError, "asc", id="sort-order"),
        pytest.param({"sort": ["metadata."]}, InvalidInputError, "key after", id="sort-empty-key"),
        pytest.param({"sort": [42]}, InvalidTypeError, "field", id="sort-item-type"),
        pytest.param({"sort": 42}, InvalidTypeError, "sort", id="sort-type"),
        pytest.param({"limit": -1}, InvalidInputError, "negative", id="limit-negative"),
        pytest.param({"offset": -5}, InvalidInputError, "negative", id="offset-negative"),
        pytest.param({"limit": "10"}, InvalidTypeError, "int", id="limit-str"),
        pytest.param({"limit": 1.5}, InvalidTypeError, "int", id="limit-float"),
        pytest.param({"limit": True}, InvalidTypeError, "int", id="limit-bool"),
        pytest.param({"offset": 10**12}, InvalidInputError, "at most", id="offset-huge"),
        pytest.param({"filter_metadata": ["tenant"]}, InvalidTypeError, "dict", id="filter-type"),
        pytest.param({"filter_metadata": {"a": math.nan}}, InvalidInputError, "NaN", id="filter-nan"),
    ],
)
async def test_bad_query_arguments_are_rejected(backend, kwargs, error, message) -> None:
    await backend.register("bot", {})
    with pytest.raises(error, match=message):
        await backend.list_all(**kwargs)


async def test_errors_are_both_ours_and_builtin() -> None:
    assert issubclass(InvalidInputError, RegistryError)
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(InvalidTypeError, TypeError)
    assert issubclass(InvalidTypeError, InvalidInputError)


async def test_ids_with_special_characters_are_just_ids(backend) -> None:
    odd = [
        "a:b",
        "*",
        "{x}",
        "ns:*:bot",
        "'; DROP TABLE bots; --",
        "héllo 日本 ✓",
        "a b",
        "x" * MAX_BOT_ID_LENGTH,
    ]
    for i, bot_id in enumerate(odd):
        await backend.register(bot_id, {"i": i})
    for i, bot_id in enumerate(odd):
        assert await backend.get_config(bot_id) == {"i": i}
    assert await backend.list_ids() == sorted(odd)
    assert await backend.count() == len(odd)
    await backend.unregister("*")
    assert await backend.count() == len(odd) - 1
