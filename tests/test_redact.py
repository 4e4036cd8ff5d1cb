"""Credentials never reach a repr, a log line or an error message."""

from __future__ import annotations

import pytest

from tiered_registry.redact import redact_url, scrub, url_secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host/1", "rediss://user:***@host/1"),
        ("redis://s3cret@host", "redis://***@host"),
        ("postgresql://app:p%40ss/w@db:5432/bots", "postgresql://app:***@db:5432/bots"),
        (
            "postgresql://app@db/bots?password=s3cret&sslmode=require",
            "postgresql://app@db/bots?password=***&sslmode=require",
        ),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("redis://host:6379", "redis://host:6379"),
        ("not a url", "<unparseable URL>"),
    ],
)
def test_redact_url(url, expected) -> None:
    assert redact_url(url) == expected


def test_secrets_are_found_in_every_spelling_and_scrubbed() -> None:
    url = "postgresql://app:p%40ss@db/bots?sslpassword=k3y"
    secrets = url_secrets(url)
    assert set(secrets) == {"p%40ss", "p@ss", "k3y"}
    text = "could not connect with p@ss (p%40ss) and k3y"
    assert scrub(text, secrets) == "could not connect with *** (***) and ***"
    assert url_secrets("redis://host") == []
