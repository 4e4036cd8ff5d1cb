"""``validate_json`` (the bulk load's check): accepts exactly what ``validate_config`` accepts,
with the same errors, and returns the compact JSON of the config."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import orjson
import pytest

from tiered_registry import FrozenDict, InvalidInputError
from tiered_registry.validation import MAX_DEPTH, validate_config, validate_json


class Color(enum.Enum):
    RED = "red"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


BAD: list[Any] = [
    {"x": float("nan")},
    {"x": float("inf")},
    {"x": (1, 2)},
    {"x": {1, 2}},
    {1: "int key"},
    {"x": 2**63},
    {"x": -(2**63) - 1},
    {"x": "nul\x00"},
    {"nul\x00key": 1},
    {"x": "\ud800"},
    {"x": datetime.datetime(2026, 1, 1)},
    {"x": Color.RED},
    {"x": b"bytes"},
    _nested(MAX_DEPTH + 1),
    {"x": "y" * (1024 * 1024)},
    ["not", "a", "dict"],
]
GOOD: list[Any] = [
    {},
    {"x": 2**63 - 1, "y": -(2**63), "z": 1.5, "t": True, "n": None, "l": [1, [2, {"a": "b"}]]},
    {"digits": "1234567890123456789012345"},  # a long digit run in a string: the slow path accepts
    {"brackets": "[" * 100},
    {"escaped": "\\u0000 is text here"},
    {"ctrl": "tab\tnew\nline"},
    _nested(MAX_DEPTH - 1),
    FrozenDict({"a": 1}),
]


@pytest.mark.parametrize("config", BAD, ids=range(len(BAD)))
def test_what_validate_config_refuses_is_refused_with_its_error(config: Any) -> None:
    with pytest.raises(InvalidInputError) as expected:
        validate_config(config)
    with pytest.raises(type(expected.value)) as got:
        validate_json(config)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("config", GOOD, ids=range(len(GOOD)))
def test_what_validate_config_accepts_comes_back_as_its_json(config: Any) -> None:
    text = validate_json(config)
    assert orjson.loads(text) == validate_config(config)
