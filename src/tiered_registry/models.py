"""The record every backend stores: :class:`Registration`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Final

from .errors import InvalidInputError, InvalidTypeError
from .frozen import FrozenDict, freeze, thaw

__all__ = ["FIELD_NAMES", "Registration", "parse_timestamp", "utcnow"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every timestamp in the library comes from here)."""
    return datetime.now(UTC)


def parse_timestamp(value: object, field: str) -> datetime:
    """Read an ISO-8601 string or a datetime as an aware UTC datetime (naive means UTC)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # 3.11+ accepts a trailing "Z"
        except ValueError as exc:
            raise InvalidInputError(field, f"{value!r} is not an ISO-8601 timestamp") from exc
    else:
        raise InvalidTypeError(field, f"must be an ISO-8601 str or datetime, got {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Registration:
    """One bot's registration.

    Immutable: ``config`` and ``metadata`` are read-only dicts (see :mod:`tiered_registry.frozen`),
    so a cached ``Registration`` can be shared between callers safely. ``with_changes`` returns a
    modified copy.
    """

    bot_id: str
    config: FrozenDict
    status: str = "active"
    metadata: FrozenDict = field(default_factory=FrozenDict)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    last_accessed_at: datetime = field(default_factory=utcnow)

    @property
    def is_active(self) -> bool:
        """True if ``status`` is ``"active"``."""
        return self.status == "active"

    def with_changes(self, **changes: Any) -> Registration:
        """Return a copy with some fields replaced."""
        return replace(self, **changes)

    def accessed_at(self, at: datetime) -> Registration:
        """A copy with ``last_accessed_at = at``: what a read shows for an access not yet written.

        The positional constructor, about twice as fast as ``with_changes`` (0.9 µs against 2 µs).
        """
        return Registration(
            self.bot_id, self.config, self.status, self.metadata, self.created_at, self.updated_at, at
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (mutable copies, ISO-8601 timestamps)."""
        return {
            "bot_id": self.bot_id,
            "config": thaw(self.config),
            "status": self.status,
            "metadata": thaw(self.metadata),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "last_accessed_at": self.last_accessed_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Registration:
        """Inverse of :meth:`to_dict`; naive timestamps are read as UTC, a trailing ``Z`` is fine.

        Missing timestamps default to now; ``last_accessed_at`` defaults to ``updated_at``.
        """
        from .validation import validate_bot_id, validate_config, validate_metadata, validate_status

        if not isinstance(data, dict):
            raise InvalidTypeError("data", f"must be a dict, got {type(data).__name__}")
        if "bot_id" not in data or "config" not in data:
            raise InvalidInputError("data", "needs at least 'bot_id' and 'config'")
        now = utcnow()
        created = parse_timestamp(data.get("created_at", now), "created_at")
        updated = parse_timestamp(data.get("updated_at", created), "updated_at")
        accessed = parse_timestamp(data.get("last_accessed_at", updated), "last_accessed_at")
        return cls(
            bot_id=validate_bot_id(data["bot_id"]),
            config=validate_config(data["config"]),
            status=validate_status(data.get("status", "active")),
            metadata=validate_metadata(data.get("metadata")),
            created_at=created,
            updated_at=updated,
            last_accessed_at=accessed,
        )

    @classmethod
    def from_trusted(
        cls,
        bot_id: str,
        config: dict[str, Any],
        status: str,
        metadata: dict[str, Any],
        created_at: datetime,
        updated_at: datetime,
        last_accessed_at: datetime,
    ) -> Registration:
        """Build from data a backend decoded from its own storage (already validated once).

        Every cached record is built here, so it shares what it can (each saved object is saved
        once per cached bot): the status string is the one canonical copy (a driver hands out a
        new ``"active"`` per row), equal timestamps are one object, empty metadata is one object.
        """
        if updated_at == created_at:
            updated_at = created_at
        if last_accessed_at == updated_at:
            last_accessed_at = updated_at
        return cls(
            bot_id,
            freeze(config),
            _CANONICAL_STATUS.get(status, status),
            freeze(metadata),
            created_at,
            updated_at,
            last_accessed_at,
        )


_CANONICAL_STATUS: Final = {status: status for status in ("active", "inactive", "error")}
"""One shared string per status (the statuses of :mod:`~tiered_registry.validation`)."""

FIELD_NAMES: Final = tuple(f.name for f in fields(Registration))
"""The fields of a registration, in order (also the PostgreSQL table's columns)."""
