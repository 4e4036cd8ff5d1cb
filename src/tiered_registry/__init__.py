"""tiered-registry: fast ``bot_id -> config`` lookups for asyncio bot servers.

Backends (all implement :class:`RegistryBackend`): :class:`InMemoryBackend`, ``RedisBackend``,
``PostgresBackend``, and the caching decorator ``TieredBackend`` that layers them.
"""

from typing import TYPE_CHECKING

from .base import BackendBase
from .changes import ChangeEvent
from .errors import (
    BackendBusyError,
    BackendClosedError,
    BackendNotInitializedError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
    InvalidTypeError,
    RegistryError,
    WriteOutcomeUnknownError,
)
from .factory import StackSpec, create_backend
from .frozen import FrozenDict, FrozenList, freeze, thaw
from .models import Registration
from .protocol import RegistryBackend
from .query import SortArg, SortSpec
from .stores.memory import InMemoryBackend
from .tiered import TieredBackend
from .tiers.base import ABSENT, CacheTier
from .tiers.local import LocalCache
from .validation import MAX_BOT_ID_LENGTH, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_METADATA_BYTES, STATUSES

__all__ = [
    "ABSENT",
    "MAX_BOT_ID_LENGTH",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_METADATA_BYTES",
    "STATUSES",
    "BackendBase",
    "BackendBusyError",
    "BackendClosedError",
    "BackendNotInitializedError",
    "BackendUnavailableError",
    "CacheTier",
    "ChangeEvent",
    "ConfigurationError",
    "FrozenDict",
    "FrozenList",
    "InMemoryBackend",
    "InvalidInputError",
    "InvalidTypeError",
    "LocalCache",
    "Registration",
    "RegistryBackend",
    "RegistryError",
    "SortArg",
    "SortSpec",
    "StackSpec",
    "TieredBackend",
    "WriteOutcomeUnknownError",
    "create_backend",
    "freeze",
    "thaw",
]
__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers the lazy names below are ordinary imports
    from .coherence import InvalidationChannel as InvalidationChannel
    from .stores.postgres import PostgresBackend as PostgresBackend
    from .stores.redis import RedisBackend as RedisBackend
    from .tiers.redis import RedisCache as RedisCache

# Parts that need an optional extra are imported on first use, so `import tiered_registry` works
# without redis-py or asyncpg installed (pip install 'tiered-registry[redis,postgres]').
_LAZY = {
    "RedisBackend": "tiered_registry.stores.redis",
    "PostgresBackend": "tiered_registry.stores.postgres",
    "RedisCache": "tiered_registry.tiers.redis",
    "InvalidationChannel": "tiered_registry.coherence",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiered_registry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
