"""``create_backend``: build any store or stack from a URL or a plain dict (as read from YAML/JSON).

Examples::

    create_backend("postgresql://app@db/bots")                     # one store
    create_backend({"type": "redis", "url": "redis://cache:6379", "namespace": "bots"})
    create_backend({                                                # a stack
        "tiers": [{"type": "local", "maxsize": 10_000, "ttl": 30},
                  {"type": "redis", "url": "redis://cache:6379", "ttl": 300}],
        "store": {"type": "postgres", "dsn": "postgresql://app@db/bots"},
    })

Strings are accepted wherever a part is expected: ``"memory"``, ``"local"``, a ``redis://``/``rediss://``
URL (a ``RedisBackend`` as the store, a ``RedisCache`` as a tier), a ``postgresql://`` URL. Options are
the keyword arguments of the part's class; an unknown key or type raises :class:`ConfigurationError`
naming it and listing what is accepted. The backend is returned uninitialized.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .base import BackendBase
from .errors import ConfigurationError
from .redact import redact_url
from .tiers.base import CacheTier

__all__ = ["create_backend"]

# type name -> "module:Class" (imported lazily: the redis/postgres extras may not be installed)
_STORES: Final = {
    "memory": "tiered_registry.stores.memory:InMemoryBackend",
    "redis": "tiered_registry.stores.redis:RedisBackend",
    "postgres": "tiered_registry.stores.postgres:PostgresBackend",
}
_TIERS: Final = {
    "local": "tiered_registry.tiers.local:LocalCache",
    "redis": "tiered_registry.tiers.redis:RedisCache",
}
_CONNECTION_KEYS: Final = ("url", "dsn")  # the part's first positional argument, by its usual name
_STACK_KEYS: Final = frozenset({"tiers", "store", "access_flush_interval"})


def _load(path: str) -> type[Any]:
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # an optional extra is missing
        extra = "redis" if "redis" in module_name else "postgres"
        raise ConfigurationError(
            f"{class_name} needs the '{extra}' extra: pip install 'tiered-registry[{extra}]' ({exc})"
        ) from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


def _type_of_url(url: str, where: str, *, tier: bool) -> str:
    scheme = url.partition("://")[0].lower() if "://" in url else url.lower()
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("postgres", "postgresql") and not tier:
        return "postgres"
    if scheme == "memory" and not tier:
        return "memory"
    if scheme == "local" and tier:
        return "local"
    accepted = "'local' or a redis:// URL" if tier else "'memory', a redis:// URL or a postgresql:// URL"
    raise ConfigurationError(f"{where}: cannot tell what {redact_url(url)!r} is; expected {accepted}")


def _build(spec: object, where: str, registry: Mapping[str, str], *, tier: bool) -> Any:
    if isinstance(spec, str):
        kind = _type_of_url(spec, where, tier=tier)
        cls = _load(registry[kind])
        return cls() if kind in ("memory", "local") else cls(spec)
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where}: expected a URL string or a dict, got {type(spec).__name__}")
    options = dict(spec)
    kind = options.pop("type", None)
    if not isinstance(kind, str) or kind not in registry:
        raise ConfigurationError(f"{where}: 'type' must be one of {sorted(registry)}, got {kind!r}")
    cls = _load(registry[kind])
    args: list[Any] = []
    for key in _CONNECTION_KEYS:
        if key in options:
            args.append(options.pop(key))
            break
    parameters = inspect.signature(cls).parameters
    accepted = {
        name
        for name, p in parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and (not args or name != next(iter(parameters)))
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown option(s) {unknown} for type {kind!r}; accepted: {sorted(accepted)}"
        )
    try:
        return cls(*args, **options)
    except TypeError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def create_backend(spec: str | Mapping[str, Any]) -> BackendBase:
    """Build a store or a :class:`TieredBackend` stack (uninitialized) from a URL or a plain dict."""
    if isinstance(spec, Mapping) and ("tiers" in spec or "store" in spec):
        unknown = sorted(set(spec) - _STACK_KEYS)
        if unknown:
            raise ConfigurationError(f"stack: unknown key(s) {unknown}; accepted: {sorted(_STACK_KEYS)}")
        if "store" not in spec:
            raise ConfigurationError("stack: 'store' is required (the source of truth)")
        tiers_spec = spec.get("tiers", [])
        if isinstance(tiers_spec, str | bytes) or not isinstance(tiers_spec, Sequence):
            raise ConfigurationError("stack: 'tiers' must be a list")
        tiers: list[CacheTier] = [
            _build(t, f"tiers[{i}]", _TIERS, tier=True) for i, t in enumerate(tiers_spec)
        ]
        store = _build(spec["store"], "store", _STORES, tier=False)
        from .tiered import TieredBackend

        extra = {k: spec[k] for k in ("access_flush_interval",) if k in spec}
        return TieredBackend(tiers=tiers, store=store, **extra)
    backend: BackendBase = _build(spec, "backend", _STORES, tier=False)
    return backend
