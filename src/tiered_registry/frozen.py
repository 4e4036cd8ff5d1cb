"""Read-only JSON containers handed out by ``get_config`` and friends.

A config is frozen once, when it enters a backend or a cache tier, and the same object is then
handed to every caller: no copy per read, and no caller can corrupt what the next one sees.
``FrozenDict`` *is* a ``dict`` (``isinstance`` and ``json.dumps``/``orjson.dumps`` work) and
``FrozenList`` *is* a ``list``, so equality with plain JSON data holds.

Need a mutable copy?  ``thaw(config)`` or ``copy.deepcopy(config)`` returns plain dicts and lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NoReturn

__all__ = ["FrozenDict", "FrozenList", "freeze", "thaw"]


def _read_only(self: object, *args: object, **kwargs: object) -> NoReturn:
    """Not allowed: the container is read-only (it is shared with the registry's cache), so this
    raises ``TypeError``. ``tiered_registry.thaw(value)`` or ``copy.deepcopy(value)`` gives a
    mutable copy."""
    raise TypeError(
        f"{type(self).__name__} is read-only (it is shared with the registry's cache); "
        "use tiered_registry.thaw(value) or copy.deepcopy(value) for a mutable copy"
    )


class FrozenDict(dict[str, Any]):
    """A ``dict`` whose mutating methods raise ``TypeError``."""

    __slots__ = ()

    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only
    clear = _read_only
    pop = _read_only
    popitem = _read_only
    setdefault = _read_only
    update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: thaw(v) for k, v in self.items()}

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


class FrozenList(list[Any]):
    """A ``list`` whose mutating methods raise ``TypeError``."""

    __slots__ = ()

    __setitem__ = _read_only
    __delitem__ = _read_only
    __iadd__ = _read_only
    __imul__ = _read_only
    append = _read_only
    clear = _read_only
    extend = _read_only
    insert = _read_only
    pop = _read_only
    remove = _read_only
    reverse = _read_only
    sort = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [thaw(v) for v in self]

    def __repr__(self) -> str:
        return f"FrozenList({list.__repr__(self)})"


EMPTY: Final = FrozenDict()
"""The one empty ``FrozenDict`` that freezing returns (read-only, so one object serves every bot
whose metadata or nested dict is empty: ~64 bytes saved per cached bot each)."""
EMPTY_LIST: Final = FrozenList()
"""The one empty ``FrozenList`` that freezing returns."""

_LEAVES: Final = frozenset({str, int, float, bool, type(None)})


def _freeze_value(value: Any) -> Any:
    # Exact type checks first: decoded JSON holds only these types, and `type(x) in set` is
    # several times cheaper than isinstance() against an ABC (this runs on every cache fill).
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is dict:
        if not value:
            return EMPTY
        return FrozenDict({k: v if type(v) in _LEAVES else _freeze_value(v) for k, v in value.items()})
    if kind is list:
        if not value:
            return EMPTY_LIST
        return FrozenList([v if type(v) in _LEAVES else _freeze_value(v) for v in value])
    if kind is FrozenDict or kind is FrozenList:
        return value
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList([_freeze_value(v) for v in value])
    return value


def freeze(value: Mapping[str, Any]) -> FrozenDict:
    """Return a deep read-only copy of JSON data (already-frozen data is returned as is)."""
    if type(value) is FrozenDict:
        return value
    frozen: FrozenDict = _freeze_value(dict(value) if type(value) is not dict else value)
    return frozen


def thaw(value: Any) -> Any:
    """Return a deep mutable copy (plain ``dict``/``list``) of frozen or plain JSON data."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value
