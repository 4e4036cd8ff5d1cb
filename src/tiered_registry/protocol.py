"""The :class:`RegistryBackend` protocol every backend and every stack implements.

The full contract is in ``docs/protocol.md`` (in the repository) and, executable, in
``tests/contract/``. Summary: reads (``get``, ``get_config``) count as accesses and ``peek_config``
does not; ``get`` shows the time of that access and every later read in the same process a
``last_accessed_at`` at least that late; ``exists``/``list_active``/``list_ids``/``count`` see
only active bots; lists are ordered by ``bot_id`` unless a sort is given; ``clear`` empties only
this registry's namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .models import Registration
from .query import SortArg

__all__ = ["CoreRegistryBackend", "RegistryBackend"]


@runtime_checkable
class CoreRegistryBackend(Protocol):
    """The original protocol's 13 methods, without the extended surface (no ``metadata=``,
    ``peek_config``, keyword filters, ``count_all``/``count_inactive``/``list_inactive``,
    ``stream``). What :class:`~tiered_registry.TieredBackend` needs of a store that is not one of
    ours: it is wrapped in :class:`~tiered_registry.stores.foreign.ForeignStore`. Records may be
    returned as :class:`Registration`, as dicts (``Registration.to_dict`` layout) or as objects
    with the ``Registration`` fields.
    """

    async def initialize(self) -> None: ...

    async def close(self) -> None: ...

    async def register(self, bot_id: str, config: Mapping[str, Any], status: str = "active") -> Any: ...

    async def get(self, bot_id: str) -> Any: ...

    async def get_config(self, bot_id: str) -> Mapping[str, Any] | None: ...

    async def exists(self, bot_id: str) -> bool: ...

    async def unregister(self, bot_id: str) -> bool: ...

    async def deactivate(self, bot_id: str) -> bool: ...

    async def list_active(self) -> Sequence[Any]: ...

    async def list_all(self) -> Sequence[Any]: ...

    async def list_ids(self) -> Sequence[str]: ...

    async def count(self) -> int: ...

    async def clear(self) -> None: ...


@runtime_checkable
class RegistryBackend(Protocol):
    """An async bot registry: ``bot_id -> Registration``."""

    async def initialize(self) -> None:
        """Connect and create what is missing. Idempotent."""

    async def close(self) -> None:
        """Flush pending work, release connections and tasks. Idempotent; later use raises."""

    async def register(
        self,
        bot_id: str,
        config: Mapping[str, Any],
        status: str = "active",
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        """Create or replace; ``created_at`` is kept, ``metadata=None`` keeps the existing metadata."""

    async def get(self, bot_id: str) -> Registration | None:
        """The registration whatever its status; counts as an access (``last_accessed_at`` is its time)."""

    async def get_config(self, bot_id: str) -> dict[str, Any] | None:
        """The (read-only) config whatever the status; counts as an access."""

    async def peek_config(self, bot_id: str) -> dict[str, Any] | None:
        """Like :meth:`get_config` but not an access."""

    async def exists(self, bot_id: str) -> bool:
        """True only if the bot exists and is active."""

    async def unregister(self, bot_id: str) -> bool:
        """Hard delete; True if it existed."""

    async def deactivate(self, bot_id: str) -> bool:
        """Soft delete (status ``inactive``); True if it existed."""

    async def list_active(
        self,
        *,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: SortArg | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Registration]:
        """Active registrations."""

    async def list_inactive(
        self,
        *,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: SortArg | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Registration]:
        """Inactive registrations."""

    async def list_all(
        self,
        *,
        status: str | None = None,
        filter_metadata: Mapping[str, Any] | None = None,
        sort: SortArg | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Registration]:
        """All registrations, optionally of one status."""

    async def list_ids(self) -> list[str]:
        """Ids of the active bots, sorted."""

    async def count(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        """Number of active registrations."""

    async def count_all(
        self, *, status: str | None = None, filter_metadata: Mapping[str, Any] | None = None
    ) -> int:
        """Number of registrations, optionally of one status."""

    async def count_inactive(self, *, filter_metadata: Mapping[str, Any] | None = None) -> int:
        """Number of inactive registrations."""

    def stream(
        self, *, status: str | None = None, filter_metadata: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Registration]:
        """Every matching registration, fetched in batches (bounded memory), ordered by ``bot_id``."""

    async def clear(self) -> None:
        """Remove every registration of this registry's namespace, nothing else."""
