"""create_backend: any part or stack from a URL or a plain dict; bad specs named clearly."""

from __future__ import annotations

import inspect

import pytest

from tiered_registry import ConfigurationError, InMemoryBackend, LocalCache, RegistryBackend, TieredBackend
from tiered_registry.factory import create_backend


async def test_memory_from_a_string_and_a_dict() -> None:
    assert isinstance(create_backend("memory"), InMemoryBackend)
    assert isinstance(create_backend("memory://"), InMemoryBackend)
    assert isinstance(create_backend({"type": "memory"}), InMemoryBackend)


async def test_a_stack_from_a_dict_works_end_to_end() -> None:
    backend = create_backend(
        {
            "tiers": [{"type": "local", "maxsize": 100, "ttl": 5, "negative_ttl": 1}],
            "store": "memory",
            "access_flush_interval": 0.5,
        }
    )
    assert isinstance(backend, TieredBackend)
    assert isinstance(backend, RegistryBackend)
    (tier,) = backend.tiers
    assert isinstance(tier, LocalCache)
    assert (tier.maxsize, tier.ttl, tier.negative_ttl) == (100, 5.0, 1.0)
    async with backend:
        await backend.register("bot", {"v": 1})
        assert await backend.get_config("bot") == {"v": 1}


async def test_string_tiers() -> None:
    backend = create_backend({"tiers": ["local"], "store": {"type": "memory"}})
    assert isinstance(backend.tiers[0], LocalCache)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "mongo"}, "'type' must be one of"),
        ({"type": "memory", "colour": "red"}, r"unknown option\(s\) \['colour'\]"),
        ({"tiers": [{"type": "local", "max_size": 1}], "store": "memory"}, r"tiers\[0\].*max_size"),
        ({"tiers": [{"type": "memory"}], "store": "memory"}, r"tiers\[0\]: 'type' must be one of"),
        ({"tiers": ["local"]}, "'store' is required"),
        ({"tiers": "local", "store": "memory"}, "must be a list"),
        ({"tiers": [], "store": "memory", "extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ("mysql://db", "cannot tell what"),
        ({"tiers": ["postgresql://x"], "store": "memory"}, r"tiers\[0\]: 'postgresql://x' is a store, not a"),
        (42, "expected a URL string or a dict"),
        ({"tiers": [{"type": "local", "maxsize": -1}], "store": "memory"}, "maxsize"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(spec, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_backend(spec)


# ---- issue 16: config errors that name the mistake --------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"tiers": [{"type": "local", "ttl": "30s"}], "store": "memory"},
            r"^tiers\[0\]\.ttl: expected a number of seconds, got '30s'$",
        ),
        (
            {"tiers": [{"type": "redis", "url": "redis://h", "negative_ttl": "5"}], "store": "memory"},
            r"^tiers\[0\]\.negative_ttl: expected a number of seconds, got '5'$",
        ),
        (
            {"type": "memory", "access_flush_interval": "1"},
            r"^backend\.access_flush_interval: expected a number",
        ),
        (
            {"tiers": [], "store": "memory", "failure_threshold": "3"},
            r"^failure_threshold: expected an integer",
        ),
        ({"tiers": [], "store": "memory", "reset_timeout": None}, r"^reset_timeout: expected a number of"),
        (
            {"tiers": [{"type": "local", "ttl": -1}], "store": "memory"},
            r"^tiers\[0\]: LocalCache ttl must be",
        ),
        ({"store": "local"}, r"^store: 'local' is a cache tier, not a store: list it under 'tiers'"),
        ({"store": {"type": "local"}}, r"'local' is a cache tier, not a store"),
        ({"tiers": ["memory"], "store": "memory"}, r"^tiers\[0\]: 'memory' is a store, not a cache tier"),
        ({"tiers": [{"type": "memory"}], "store": "memory"}, r"'memory' is a store, not a tier"),
        ("redis", r"^backend: 'redis' is not a URL; write it as 'redis://HOST:6379/0'"),
        ("postgresql", r"^backend: 'postgresql' is not a URL; write it as 'postgresql://USER@HOST/DB'"),
        ({"store": "valkey"}, r"^store: 'valkey' is not a URL"),
        ("nonsense", r"^backend: cannot tell what 'nonsense' is; expected 'memory', a redis:// URL"),
        ({"type": "redis"}, r"^backend: type 'redis' needs its URL, as 'url' \(or 'dsn'\)"),
        ({"tiers": [], "store": "memory", "coherence": 3}, r"^coherence: expected true, false, null"),
        ({"tiers": [], "store": "memory", "coherence": {}}, r"^coherence: needs 'url'"),
    ],
)
def test_config_errors_name_the_mistake(spec, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_backend(spec)


@pytest.mark.parametrize("spec", ["user:secret@host", "host?password=secret", "mysql://u:secret@h/db"])
def test_unrecognized_strings_that_may_hold_credentials_stay_masked(spec) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_backend(spec)
    assert "secret" not in str(caught.value)


def test_the_tier_constructors_check_their_numbers_themselves() -> None:
    from tiered_registry.tiers.redis import RedisCache

    with pytest.raises(
        ConfigurationError, match=r"^LocalCache ttl: expected a number of seconds, got '30s'$"
    ):
        LocalCache(ttl="30s")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="LocalCache sweep_interval: expected a number"):
        LocalCache(sweep_interval="1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="RedisCache ttl: expected a number of seconds"):
        RedisCache("redis://h", ttl="30s")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="RedisCache socket_timeout must be positive"):
        RedisCache("redis://h", socket_timeout=0)
    with pytest.raises(ConfigurationError, match="RedisCache retries must be an int"):
        RedisCache("redis://h", retries=-1)
    with pytest.raises(ConfigurationError, match="RedisCache decode_cache_size"):
        RedisCache("redis://h", decode_cache_size="big")  # type: ignore[arg-type]


# ---- issue 16: every constructor option is reachable from the dict ------------------------------


def _keyword_options(cls: type) -> dict[str, object]:
    """Every keyword option of ``cls`` with its default (the connection argument excluded)."""
    params = list(inspect.signature(cls).parameters.values())
    return {
        p.name: p.default
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty
    }


def _part_classes():
    from tiered_registry import factory

    for kind, path in factory._STORES.items():
        yield "store", kind, factory._load(path)
    for kind, path in factory._TIERS.items():
        yield "tier", kind, factory._load(path)


_URLS = {"redis": "redis://127.0.0.1:6390/0", "postgres": "postgresql://user@127.0.0.1:5499/db"}


@pytest.mark.parametrize(
    ("role", "kind", "cls"), list(_part_classes()), ids=lambda v: getattr(v, "__name__", v)
)
def test_every_keyword_of_every_part_is_reachable(role, kind, cls) -> None:
    options = _keyword_options(cls)
    assert options, cls
    part = {"type": kind, **options}
    if kind in _URLS:
        part["url"] = _URLS[kind]
    spec = {"tiers": [part], "store": "memory"} if role == "tier" else part
    built = create_backend(spec)  # no I/O: parts connect in initialize()
    obj = built.tiers[0] if role == "tier" else built
    assert type(obj) is cls


def test_every_keyword_of_the_stack_is_reachable() -> None:
    options = _keyword_options(TieredBackend)
    assert {"coherence", "failure_threshold", "reset_timeout", "access_flush_interval"} <= set(options)
    options = {**options, "failure_threshold": 7, "reset_timeout": 2.5}
    stack = create_backend({"tiers": ["local", "redis://127.0.0.1:6390/0"], "store": "memory", **options})
    assert isinstance(stack, TieredBackend)
    guards = list(stack._guards.values())
    assert [(g.failure_threshold, g.reset_timeout) for g in guards] == [(7, 2.5)]


def test_coherence_from_the_dict() -> None:
    from tiered_registry.coherence import InvalidationChannel

    url = "redis://127.0.0.1:6390/0"
    off = create_backend({"tiers": ["local", url], "store": "memory", "coherence": False})
    assert off._coherence is None
    every = _keyword_options(InvalidationChannel)
    tuned = create_backend(
        {"tiers": ["local", url], "store": "memory", "coherence": {**every, "ping_interval": 0.25}}
    )
    channel = tuned._coherence
    assert isinstance(channel, InvalidationChannel)
    assert (channel.ping_interval, channel.namespace) == (0.25, "tiered_registry")
    own = create_backend(
        {"tiers": ["local"], "store": "memory", "coherence": {"url": url, "namespace": "elsewhere"}}
    )
    assert own._coherence is not None
    assert own._coherence.namespace == "elsewhere"
    with pytest.raises(ConfigurationError, match=r"^coherence: unknown option\(s\) \['pings'\]"):
        create_backend({"tiers": ["local", url], "store": "memory", "coherence": {"pings": 1}})
