"""Filters, sorting and paging for ``list_*``/``count_*``/``stream`` — validated once, shared by all.

Backends that cannot push a query down to their server (in-memory, Redis) apply it in Python with
:meth:`Query.apply`; PostgreSQL translates the same validated :class:`Query` to SQL. Both follow the
same ordering rules so every backend returns the same list:

- ties (and the default) are ordered by ``bot_id`` ascending;
- for ``metadata.KEY`` sorts, a missing key sorts last whatever the order, and values of
  different JSON types are ordered null < string < number < boolean < array < object
  (PostgreSQL's ``jsonb`` order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

import orjson

from .errors import InvalidInputError, InvalidTypeError
from .frozen import FrozenDict
from .models import Registration
from .validation import validate_bot_id, validate_metadata, validate_status

__all__ = ["SORTABLE_FIELDS", "Query", "SortArg", "SortItem", "SortKey", "SortLike", "SortSpec"]

SORTABLE_FIELDS: Final = frozenset({"bot_id", "status", "created_at", "updated_at", "last_accessed_at"})
METADATA_PREFIX: Final = "metadata."
MAX_LIMIT: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class SortSpec:
    """A sort key as callers may pass it: ``field`` and ``order`` (``"asc"``/``"desc"``)."""

    field: str
    order: str = "asc"


class SortLike(Protocol):
    """Any object with a ``field`` and an ``order`` (``"asc"``/``"desc"``, or an enum whose
    ``value`` is one), such as dataknobs' sort specs: accepted as a sort key as it is."""

    @property
    def field(self) -> str:
        """A registration field name or ``metadata.KEY``."""

    @property
    def order(self) -> object:
        """``"asc"`` or ``"desc"`` (or an enum whose ``value`` is one)."""


SortItem: TypeAlias = str | tuple[str, str] | SortSpec | SortLike
"""One sort key: a field name (ascending), ``(field, "asc" | "desc")``, or a :class:`SortSpec`."""
SortArg: TypeAlias = SortItem | Sequence[SortItem]
"""What ``sort=`` takes: one sort key or a sequence of them (first key first)."""


@dataclass(frozen=True, slots=True)
class SortKey:
    """A validated sort key: a registration field, or a top-level metadata key."""

    field: str
    descending: bool
    metadata_key: str | None  # set when field is "metadata.KEY"


def _parse_sort_item(item: object, index: int) -> SortKey:
    where = f"sort[{index}]"
    field: object
    order: object
    if isinstance(item, str):
        field, order = item, "asc"
    elif isinstance(item, tuple) and len(item) == 2:
        field, order = item
    else:
        field = getattr(item, "field", None)
        order = getattr(item, "order", "asc")
    order = getattr(order, "value", order)  # enums such as dataknobs' SortOrder
    if not isinstance(field, str):
        raise InvalidTypeError(where, "needs a str .field (or be a str / (field, order) tuple)")
    if not isinstance(order, str) or order.lower() not in ("asc", "desc"):
        raise InvalidInputError(f"{where}.order", f"must be 'asc' or 'desc', got {order!r}")
    if field.startswith(METADATA_PREFIX):
        key = field[len(METADATA_PREFIX) :]
        if not key:
            raise InvalidInputError(f"{where}.field", "'metadata.' needs a key after the dot")
        return SortKey(field, order.lower() == "desc", key)
    if field[:1] in ("-", "+") and (field[1:] in SORTABLE_FIELDS or field[1:].startswith(METADATA_PREFIX)):
        order_word = "desc" if field[0] == "-" else "asc"
        raise InvalidInputError(
            f"{where}.field",
            f"cannot sort by {field!r}: there is no '-'/'+' prefix notation;"
            f" write ({field[1:]!r}, {order_word!r}) or SortSpec({field[1:]!r}, {order_word!r})",
        )
    if field not in SORTABLE_FIELDS:
        raise InvalidInputError(
            f"{where}.field",
            f"cannot sort by {field!r}; use one of {sorted(SORTABLE_FIELDS)} or 'metadata.KEY'",
        )
    return SortKey(field, order.lower() == "desc", None)


def _parse_count(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(field, f"must be an int or None, got {type(value).__name__}")
    if value < 0:
        raise InvalidInputError(field, f"must not be negative, got {value}")
    if value > MAX_LIMIT:
        raise InvalidInputError(field, f"must be at most {MAX_LIMIT}, got {value}")
    return value


def _parse_after(value: object, keys: tuple[SortKey, ...]) -> str:
    """``after=``: a bot id, and only with the ``bot_id`` ascending order it pages through."""
    after = validate_bot_id(value, "after")
    if keys and (len(keys) > 1 or keys[0].field != "bot_id" or keys[0].descending):
        raise InvalidInputError(
            "after",
            "keyset paging walks bot ids in ascending order; drop sort= (or sort by 'bot_id' ascending),"
            " or page another order with offset=",
        )
    return after


_JSON_RANK: Final = {type(None): 0, str: 1, int: 2, float: 2, bool: 3}


def _json_sort_value(value: Any) -> tuple[int, Any]:
    rank = _JSON_RANK.get(type(value))
    if rank is not None:
        return (rank, value)
    if isinstance(value, list):
        return (4, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    if isinstance(value, dict):
        return (5, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    return (1, str(value))  # str/int subclasses


@dataclass(frozen=True, slots=True)
class Query:
    """A validated selection: ``status``, ``filter_metadata`` and ``after`` filter, then sort,
    offset, limit.

    ``after`` is keyset paging: only bot ids greater than it (code-point order), in ``bot_id``
    order. Unlike a deep ``offset``, which makes the server walk and drop every row before the
    page, it starts at the key (PostgreSQL: the primary key index; Redis: the sorted set).
    """

    status: str | None = None
    filter_metadata: FrozenDict | None = None
    sort: tuple[SortKey, ...] = ()
    limit: int | None = None
    offset: int = 0
    after: str | None = None

    @classmethod
    def build(
        cls,
        *,
        status: object = None,
        filter_metadata: object = None,
        sort: object = None,
        limit: object = None,
        offset: object = None,
        after: object = None,
    ) -> Query:
        """Validate the keyword arguments of ``list_*``/``count_*``/``stream``."""
        checked_status = None if status is None else validate_status(status)
        filters = None if filter_metadata is None else validate_metadata(filter_metadata, "filter_metadata")
        keys: tuple[SortKey, ...] = ()
        if sort is not None:
            items: Iterable[object]
            if isinstance(sort, str) or hasattr(sort, "field"):
                items = [sort]  # one key given on its own
            elif isinstance(sort, list | tuple):
                items = sort
            else:
                raise InvalidTypeError("sort", f"must be a list of sort keys, got {type(sort).__name__}")
            keys = tuple(_parse_sort_item(item, i) for i, item in enumerate(items))
        checked_after = None if after is None else _parse_after(after, keys)
        return cls(
            status=checked_status,
            filter_metadata=filters or None,
            sort=keys,
            limit=_parse_count(limit, "limit"),
            offset=_parse_count(offset, "offset") or 0,
            after=checked_after,
        )

    def matches(self, record: Registration) -> bool:
        """Whether ``record`` passes the status, metadata and ``after`` filters."""
        if self.status is not None and record.status != self.status:
            return False
        if self.after is not None and record.bot_id <= self.after:
            return False
        return not self.filter_metadata or metadata_matches(record.metadata, self.filter_metadata)

    def order(self, records: Iterable[Registration]) -> list[Registration]:
        """Sort by the sort keys, ties by ``bot_id`` (stable multi-key sort, last key first)."""
        ordered = sorted(records, key=lambda r: r.bot_id)
        for key in reversed(self.sort):
            if key.metadata_key is None:
                name = key.field
                ordered.sort(key=lambda r: getattr(r, name), reverse=key.descending)
                continue
            mkey = key.metadata_key
            present = [r for r in ordered if mkey in r.metadata]
            missing = [r for r in ordered if mkey not in r.metadata]
            present.sort(key=lambda r: _json_sort_value(r.metadata[mkey]), reverse=key.descending)
            ordered = present + missing
        return ordered

    def page(self, records: Sequence[Registration]) -> list[Registration]:
        """Apply ``offset`` and ``limit`` to an ordered list."""
        end = None if self.limit is None else self.offset + self.limit
        return list(records[self.offset : end])

    def apply(self, records: Iterable[Registration]) -> list[Registration]:
        """Filter, sort and page ``records`` in Python."""
        return self.page(self.order(r for r in records if self.matches(r)))


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1`` (as in PostgreSQL's jsonb), ``1 == 1.0`` is."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def metadata_matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Equality of ``filters`` on the top-level keys of ``metadata``."""
    return all(k in metadata and _json_equal(metadata[k], v) for k, v in filters.items())
