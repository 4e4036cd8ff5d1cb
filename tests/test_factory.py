"""create_backend: any part or stack from a URL or a plain dict; bad specs named clearly."""

from __future__ import annotations

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
        ({"tiers": ["postgresql://x"], "store": "memory"}, "cannot tell what"),
        (42, "expected a URL string or a dict"),
        ({"tiers": [{"type": "local", "maxsize": -1}], "store": "memory"}, "maxsize"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(spec, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_backend(spec)
