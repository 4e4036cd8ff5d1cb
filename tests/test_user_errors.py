"""Issue 16, "errors a user can act on": every error is a RegistryError and names the problem."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tiered_registry import (
    BackendUnavailableError,
    ConfigurationError,
    InMemoryBackend,
    InvalidInputError,
    RegistryError,
    TieredBackend,
    create_backend,
)


def _with_db(url: str, db: int) -> str:
    return re.sub(r"/\d*$", "", url) + f"/{db}"


async def test_a_database_the_server_lacks_is_a_configuration_error(redis_url: str) -> None:
    backend = create_backend({"type": "redis", "url": _with_db(redis_url, 99)})
    with pytest.raises(ConfigurationError) as caught:
        await backend.initialize()
    message = str(caught.value)
    assert "DB index is out of range" in message
    assert "database 99" in message
    assert isinstance(caught.value, RegistryError)
    await backend.close()


async def test_a_database_the_server_lacks_in_a_redis_tier_is_skipped_and_logged_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack = create_backend(
        {
            "tiers": ["local", {"type": "redis", "url": _with_db(redis_url, 99), "namespace": "e16"}],
            "store": "memory",
            "coherence": {"ping_interval": 0.05, "connect_timeout": 0.2},
        }
    )
    assert isinstance(stack, TieredBackend)
    with caplog.at_level(logging.DEBUG, logger="tiered_registry"):
        async with stack:
            await stack.register("bot", {"v": 1})  # the tier fails as unavailable, the write succeeds
            assert await stack.get_config("bot") == {"v": 1}
            await asyncio.sleep(0.5)  # the listener retries a few times meanwhile
    channel_errors = [
        r for r in caplog.records if r.name == "tiered_registry.coherence" and r.levelno >= logging.ERROR
    ]
    assert len(channel_errors) == 1, [r.getMessage() for r in caplog.records]
    assert "DB index is out of range" in channel_errors[0].getMessage()
    assert "database 99" in channel_errors[0].getMessage()
    tier_warnings = [r.getMessage() for r in caplog.records if r.name == "tiered_registry.tiered"]
    assert tier_warnings
    assert all("BackendUnavailableError" in m for m in tier_warnings)
    assert any("DB index is out of range" in m for m in tier_warnings)


async def test_a_command_meeting_a_refused_setup_is_backend_unavailable(redis_url: str) -> None:
    from tiered_registry.redis_client import ConnectionSetupError, is_setup_error
    from tiered_registry.tiers.redis import RedisCache

    tier = RedisCache(_with_db(redis_url, 99))
    await tier.initialize()
    try:
        with pytest.raises(BackendUnavailableError, match="DB index is out of range") as caught:
            await tier.lookup("bot")
        assert isinstance(caught.value.__cause__, ConnectionSetupError)
        assert is_setup_error(caught.value)
    finally:
        await tier.close()


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "10"])
async def test_stream_batch_size_is_an_input_error(batch_size: object) -> None:
    async with InMemoryBackend() as backend:
        with pytest.raises(InvalidInputError, match=r"^batch_size: must be a positive int") as caught:
            backend.stream(batch_size=batch_size)  # type: ignore[arg-type]
        assert caught.value.field == "batch_size"
        assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("sort", "hint"),
    [
        ("-created_at", "('created_at', 'desc')"),
        (["bot_id", "-metadata.rank"], "('metadata.rank', 'desc')"),
        ("+updated_at", "('updated_at', 'asc')"),
    ],
)
async def test_a_minus_prefixed_sort_says_how_to_sort_descending(sort: object, hint: str) -> None:
    async with InMemoryBackend() as backend:
        with pytest.raises(InvalidInputError, match=r"no '-'/'[+]' prefix notation") as caught:
            await backend.list_all(sort=sort)  # type: ignore[arg-type]
        assert hint in str(caught.value)
