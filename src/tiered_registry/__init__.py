"""tiered-registry: fast ``bot_id -> config`` lookups for asyncio bot servers.

Backends (all implement :class:`RegistryBackend`): :class:`InMemoryBackend`, ``RedisBackend``,
``PostgresBackend``, and the caching decorator ``TieredBackend`` that layers them.
"""

from .base import BackendBase
from .errors import (
    BackendClosedError,
    BackendNotInitializedError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
    InvalidTypeError,
    RegistryError,
)
from .factory import create_backend
from .frozen import FrozenDict, FrozenList, freeze, thaw
from .models import Registration
from .protocol import RegistryBackend
from .query import SortSpec
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
    "BackendClosedError",
    "BackendNotInitializedError",
    "BackendUnavailableError",
    "CacheTier",
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
    "SortSpec",
    "TieredBackend",
    "create_backend",
    "freeze",
    "thaw",
]
__version__ = "0.1.0"
