"""Registration round-trips, timestamp parsing, and the frozen containers."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from tiered_registry import FrozenDict, FrozenList, InvalidInputError, Registration, freeze, thaw


def _record() -> Registration:
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    return Registration(
        "bot",
        freeze({"a": [1, {"b": None}], "c": "ü"}),
        "inactive",
        freeze({"tenant": "acme"}),
        stamp,
        stamp + timedelta(seconds=1),
        stamp + timedelta(seconds=2),
    )


def test_to_dict_from_dict_round_trip() -> None:
    record = _record()
    data = record.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert data["created_at"] == "2026-01-02T03:04:05.678901+00:00"
    assert Registration.from_dict(data) == record


def test_to_dict_gives_mutable_copies() -> None:
    data = _record().to_dict()
    data["config"]["a"].append(2)  # no TypeError: a plain list
    assert _record().config == {"a": [1, {"b": None}], "c": "ü"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # naive means UTC
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # converted
    ],
)
def test_from_dict_reads_every_timestamp_as_aware_utc(text, expected) -> None:
    record = Registration.from_dict({"bot_id": "b", "config": {}, "created_at": text})
    assert record.created_at == expected
    assert record.created_at.tzinfo is UTC
    assert record.updated_at == expected  # defaults to created_at
    assert record.last_accessed_at == expected


def test_from_dict_defaults_and_validation() -> None:
    record = Registration.from_dict({"bot_id": "b", "config": {"x": 1}})
    assert (record.status, record.metadata) == ("active", {})
    assert record.created_at.tzinfo is not None
    with pytest.raises(InvalidInputError, match="needs at least"):
        Registration.from_dict({"bot_id": "b"})
    with pytest.raises(InvalidInputError, match="ISO-8601"):
        Registration.from_dict({"bot_id": "b", "config": {}, "created_at": "yesterday"})
    with pytest.raises(InvalidInputError, match="status"):
        Registration.from_dict({"bot_id": "b", "config": {}, "status": "gone"})
    with pytest.raises(InvalidInputError, match="bot_id"):
        Registration.from_dict({"bot_id": "", "config": {}})


def test_registration_is_immutable() -> None:
    record = _record()
    with pytest.raises(AttributeError):
        record.status = "active"  # type: ignore[misc]
    assert record.with_changes(status="active").status == "active"
    assert record.status == "inactive"


def test_frozen_containers_behave_like_json_data() -> None:
    frozen = freeze({"a": [1, {"b": [2]}]})
    assert isinstance(frozen, dict)
    assert isinstance(frozen["a"], list)
    assert isinstance(frozen["a"], FrozenList)
    assert frozen == {"a": [1, {"b": [2]}]}
    assert json.dumps(frozen) == '{"a": [1, {"b": [2]}]}'
    assert orjson.loads(orjson.dumps(frozen)) == frozen
    assert pickle.loads(pickle.dumps(frozen)) == frozen
    assert type(pickle.loads(pickle.dumps(frozen))) is FrozenDict
    for mutate in (
        lambda: frozen.__setitem__("x", 1),
        lambda: frozen.pop("a"),
        lambda: frozen.setdefault("x", 1),
        lambda: frozen["a"].append(3),
        lambda: frozen["a"][1]["b"].sort(),
        lambda: frozen["a"].__setitem__(0, 9),
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    with pytest.raises(TypeError):
        frozen |= {"x": 1}
    assert frozen == {"a": [1, {"b": [2]}]}


def test_thaw_and_deepcopy_give_plain_mutable_copies() -> None:
    frozen = freeze({"a": [1, {"b": [2]}]})
    for mutable in (thaw(frozen), copy.deepcopy(frozen)):
        assert type(mutable) is dict
        assert type(mutable["a"]) is list
        assert type(mutable["a"][1]) is dict
        mutable["a"][1]["b"].append(3)
    assert frozen == {"a": [1, {"b": [2]}]}
    assert copy.copy(frozen) is frozen  # shallow copy of an immutable value: itself


def test_freeze_returns_frozen_input_as_is() -> None:
    frozen = freeze({"a": 1})
    assert freeze(frozen) is frozen


def test_non_utc_timestamps_given_directly_are_normalised() -> None:
    tz = timezone(timedelta(hours=5))
    record = Registration.from_dict(
        {"bot_id": "b", "config": {}, "created_at": datetime(2026, 1, 1, 5, tzinfo=tz)}
    )
    assert record.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert record.created_at.utcoffset() == timedelta(0)
