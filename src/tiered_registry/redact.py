"""Keeping credentials out of reprs, logs and error messages — one implementation for every URL.

Redis and PostgreSQL URLs carry passwords the same two ways: in the userinfo
(``scheme://user:secret@host``) or as a query parameter (``?password=secret``). ``redact_url``
masks both on the text itself (no parse-and-rebuild, so ``unix:///path`` and other odd but valid
URLs come back as written); ``url_secrets`` lists every spelling of them, so a driver's error
message that quotes one can be scrubbed with ``scrub``.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote

__all__ = ["redact_text", "redact_url", "scrub", "url_secrets"]

_SECRET_PARAMS: Final = frozenset({"password", "sslpassword", "ssl_password"})


def _split(url: str) -> tuple[str, str, str] | None:
    """``(scheme, authority-and-path, query-and-fragment)``, or None if there is no ``://``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return scheme, rest[:cut], rest[cut:]


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or a ``password=`` parameter) replaced by ``***``."""
    parts = _split(url)
    if parts is None:
        return "<unparseable URL>"
    scheme, head, tail = parts
    userinfo, at, hosts = head.rpartition("@")  # the last "@": a password may hold "@" or "/"
    if at:
        user, colon, _password = userinfo.partition(":")
        if colon:
            head = f"{user}:***@{hosts}"
        elif user and scheme.lower().startswith(("redis", "valkey")):
            head = f"***@{hosts}"  # Redis clients may read a lone userinfo as the password
    before, question, query = tail.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        items = []
        for item in query.split("&"):
            key, eq, _value = item.partition("=")
            items.append(f"{key}=***" if eq and unquote(key).lower() in _SECRET_PARAMS else item)
        tail = f"{before}?{'&'.join(items)}{hash_}{fragment}"
    return f"{scheme}://{head}{tail}"


def redact_text(text: str) -> str:
    """What a caller wrote where a URL was expected, fit to show: a URL redacted; a string that is
    no URL as written when it cannot hold a credential (``"redis"``, ``"local"``), else masked."""
    if "://" in text:
        return redact_url(text)
    lowered = text.lower()
    if "@" in text or any(name in lowered for name in _SECRET_PARAMS):
        return "<unparseable URL>"
    return text


def url_secrets(url: str) -> list[str]:
    """Every spelling (raw and percent-decoded) of the passwords in ``url``."""
    parts = _split(url)
    if parts is None:
        return []
    scheme, head, tail = parts
    found: list[str] = []
    userinfo = head.rpartition("@")[0]
    if userinfo:
        lone_is_password = scheme.lower().startswith(("redis", "valkey"))
        found.append(userinfo.partition(":")[2] or (userinfo if lone_is_password else ""))
    query = tail.partition("?")[2].partition("#")[0]
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        if unquote(key).lower() in _SECRET_PARAMS and value:
            found.append(value)
    return sorted({s for raw in found for s in (raw, unquote(raw)) if s}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***`` (longest first)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
