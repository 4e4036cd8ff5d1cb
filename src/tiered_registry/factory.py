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
from typing import TYPE_CHECKING, Any, Final, Required, TypeAlias, TypedDict, overload

from .base import BackendBase
from .errors import ConfigurationError
from .redact import redact_text
from .tiers.base import CacheTier

if TYPE_CHECKING:
    from .tiered import TieredBackend

__all__ = ["PartSpec", "StackSpec", "create_backend"]

PartSpec: TypeAlias = str | Mapping[str, Any]
"""One store or tier: a URL / ``"memory"`` / ``"local"``, or a dict with a ``type`` and options."""


class StackSpec(TypedDict, total=False):
    """A stack as a dict: ``store`` (required), ``tiers`` (nearest first) and the keyword options of
    :class:`~tiered_registry.TieredBackend`. A dict literal of this shape makes
    :func:`create_backend` typed to return a ``TieredBackend``; for a dict read from a file (typed
    ``dict[str, Any]``) narrow the result: ``assert isinstance(stack, TieredBackend)`` or
    ``cast(TieredBackend, create_backend(spec))``."""

    tiers: Sequence[PartSpec]
    store: Required[PartSpec]
    access_flush_interval: float
    coherence: bool | str | Mapping[str, Any] | None
    failure_threshold: int
    reset_timeout: float
    track_access: bool
    strict: bool
    preload: int
    preload_timeout: float


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


def _stack_keys() -> frozenset[str]:
    """The keys of a stack dict: ``tiers``, ``store`` and every other keyword of TieredBackend."""
    from .tiered import TieredBackend

    return frozenset(inspect.signature(TieredBackend).parameters)


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


_REDIS_SCHEMES: Final = ("redis", "rediss", "unix", "valkey", "valkeys")
_KIND_OF: Final = {**dict.fromkeys(_REDIS_SCHEMES, "redis"), "postgresql": "postgres", "postgres": "postgres"}
_ACCEPTED_STORES: Final = "'memory', a redis:// URL, a postgresql:// URL, or a dict with a 'type'"
_ACCEPTED_TIERS: Final = "'local', a redis:// URL, or a dict with a 'type'"


def _type_of_url(url: str, where: str, *, tier: bool) -> str:
    is_url = "://" in url
    scheme = url.partition("://")[0].lower() if is_url else url.lower()
    accepted = _ACCEPTED_TIERS if tier else _ACCEPTED_STORES
    if scheme in _REDIS_SCHEMES and is_url:
        return "redis"
    if scheme in ("postgres", "postgresql") and is_url and not tier:
        return "postgres"
    if scheme == "memory" and not tier:
        return "memory"
    if scheme == "local" and tier:
        return "local"
    if scheme == "local":
        raise ConfigurationError(
            f"{where}: 'local' is a cache tier, not a store: list it under 'tiers' and name a store"
            f' (e.g. {{"tiers": ["local"], "store": "memory"}}); a store is {_ACCEPTED_STORES}'
        )
    if scheme in ("memory", "postgres", "postgresql") and tier:
        raise ConfigurationError(
            f"{where}: {redact_text(url)!r} is a store, not a cache tier: give it as 'store';"
            f" a tier is {_ACCEPTED_TIERS}"
        )
    if scheme in _KIND_OF:  # a bare word where a URL belongs
        example = "redis://HOST:6379/0" if scheme in _REDIS_SCHEMES else "postgresql://USER@HOST/DB"
        raise ConfigurationError(
            f"{where}: {url!r} is not a URL; write it as {example!r}, or as a dict"
            f" {{'type': {_KIND_OF[scheme]!r}, ...}}; accepted: {accepted}"
        )
    raise ConfigurationError(f"{where}: cannot tell what {redact_text(url)!r} is; expected {accepted}")


def _check_option(where: str, name: str, annotation: object, value: object) -> None:
    """Reject a value whose type cannot be what the option's (simple) annotation says, naming both."""
    label = f"{where}.{name}" if where else name
    if not isinstance(annotation, str):
        return
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None and optional:
        return
    if base == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigurationError(f"{label}: expected a number of seconds, got {value!r}")
    if base == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigurationError(f"{label}: expected an integer, got {value!r}")
    if base == "bool" and not isinstance(value, bool):
        raise ConfigurationError(f"{label}: expected true or false, got {value!r}")
    if base == "str" and not isinstance(value, str):
        raise ConfigurationError(f"{label}: expected a string, got {value!r}")


def _construct(cls: type[Any], where: str, args: list[Any], options: dict[str, Any], kind: str) -> Any:
    """``cls(*args, **options)`` after checking that every option is a keyword of ``cls`` and of a
    fitting type; a :class:`ConfigurationError` of the constructor is prefixed with ``where``."""
    parameters = inspect.signature(cls).parameters
    names = list(parameters)
    accepted = {
        name
        for name, p in parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and (not args or name != names[0])
    }
    unknown = sorted(set(options) - accepted)
    prefix = f"{where}: " if where else ""
    if unknown:
        raise ConfigurationError(
            f"{prefix}unknown option(s) {unknown} for type {kind!r}; accepted: {sorted(accepted)}"
        )
    for name, value in options.items():
        _check_option(where, name, parameters[name].annotation, value)
    try:
        return cls(*args, **options)
    except (ConfigurationError, TypeError) as exc:
        raise ConfigurationError(f"{prefix}{exc}") from exc


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
        hint = ""
        if isinstance(kind, str) and kind in (_STORES if tier else _TIERS):
            hint = (
                f"; {kind!r} is a store, not a tier" if tier else f"; {kind!r} is a cache tier, not a store"
            )
        raise ConfigurationError(f"{where}: 'type' must be one of {sorted(registry)}, got {kind!r}{hint}")
    cls = _load(registry[kind])
    args: list[Any] = []
    for key in _CONNECTION_KEYS:
        if key in options:
            args.append(options.pop(key))
            break
    else:
        first = next(iter(inspect.signature(cls).parameters.values()), None)
        if first is not None and first.default is first.empty and first.name not in options:
            raise ConfigurationError(f"{where}: type {kind!r} needs its URL, as 'url' (or 'dsn')")
    return _construct(cls, where, args, options, kind)


def _channel(spec: object, tiers: Sequence[CacheTier], store: Any) -> Any:
    """The stack's ``coherence`` option: ``None``/``true``/``false`` as they are, a redis:// URL,
    or a dict of :class:`~tiered_registry.coherence.InvalidationChannel` options (``url`` and
    ``namespace`` default to those of the stack's first Redis part)."""
    if spec is None or isinstance(spec, bool):
        return spec
    if isinstance(spec, str):
        spec = {"url": spec}
    if not isinstance(spec, Mapping):
        raise ConfigurationError(
            f"coherence: expected true, false, null, a redis:// URL or a dict, got {type(spec).__name__}"
        )
    options = dict(spec)
    source: object = options.pop("url", None)
    if source is None:
        for part in (*tiers, store):
            get_source = getattr(part, "invalidation_source", None)
            found = get_source() if get_source is not None else None
            if found is not None:
                source = found[0]
                options.setdefault("namespace", found[1])
                break
        else:
            raise ConfigurationError("coherence: needs 'url' (the stack has no Redis tier or store)")
    cls = _load("tiered_registry.coherence:InvalidationChannel")
    return _construct(cls, "coherence", [source], options, "coherence")


@overload
def create_backend(spec: StackSpec) -> TieredBackend: ...


@overload
def create_backend(spec: str | Mapping[str, Any]) -> BackendBase: ...


def create_backend(spec: StackSpec | str | Mapping[str, Any]) -> BackendBase:
    """Build a store or a :class:`TieredBackend` stack (uninitialized) from a URL or a plain dict.

    A dict with ``store`` (and usually ``tiers``) is a stack (see :class:`StackSpec`); anything
    else is one store: ``"memory"``, a ``redis://``/``postgresql://`` URL, or a dict with a
    ``type`` (``memory``, ``redis``, ``postgres``) and that class's keyword options (``url`` or
    ``dsn`` for its connection). Every keyword option of every part is accepted; an unknown one,
    a value of the wrong type or a part in the wrong place raises
    :class:`~tiered_registry.ConfigurationError` naming where (``tiers[0].ttl: ...``).

    Typed to return ``TieredBackend`` for a :class:`StackSpec` literal, ``BackendBase`` otherwise
    (for a stack read from a file: ``cast(TieredBackend, ...)`` or an ``isinstance`` check).
    """
    if isinstance(spec, Mapping) and ("tiers" in spec or "store" in spec):
        stack_keys = _stack_keys()
        unknown = sorted(set(spec) - stack_keys)
        if unknown:
            raise ConfigurationError(f"stack: unknown key(s) {unknown}; accepted: {sorted(stack_keys)}")
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

        options = {k: v for k, v in spec.items() if k not in ("tiers", "store")}
        if "coherence" in options:
            options["coherence"] = _channel(options["coherence"], tiers, store)
        options.update(tiers=tiers, store=store)
        stack: TieredBackend = _construct(TieredBackend, "", [], options, "stack")
        return stack
    backend: BackendBase = _build(spec, "backend", _STORES, tier=False)
    return backend
