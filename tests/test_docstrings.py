"""Issue 16, "help": every public class, function and method of the package has its own docstring
(``help()`` and ``inspect.getdoc`` show ours, never text inherited from ``abc``/``object``/``typing``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import tiered_registry


def _public_names() -> list[str]:
    return sorted({*tiered_registry.__all__, *tiered_registry._LAZY})


def _function_of(raw: object) -> object:
    if isinstance(raw, property):
        return raw.fget
    if isinstance(raw, staticmethod | classmethod):
        return raw.__func__
    return raw


def _doc_source(cls: type, name: str) -> type | None:
    """The class of ``cls``'s MRO whose ``name`` carries the docstring ``getdoc`` shows."""
    for klass in cls.__mro__:
        raw = vars(klass).get(name)
        if raw is not None and (getattr(_function_of(raw), "__doc__", None) or "").strip():
            return klass
    return None


def _ours(klass: type | None) -> bool:
    return klass is not None and klass.__module__.startswith("tiered_registry")


def _public_members(cls: type) -> list[str]:
    members = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if not _ours(owner):
            continue  # a dict's or an exception's own method: documented where it comes from
        raw = _function_of(vars(owner)[name])
        if callable(raw) or isinstance(vars(owner)[name], property):
            members.append(name)
    return members


def _cases() -> list[tuple[str, str | None]]:
    cases: list[tuple[str, str | None]] = []
    for public in _public_names():
        obj = getattr(tiered_registry, public)
        if inspect.isclass(obj):
            cases.append((public, None))
            cases += [(public, member) for member in _public_members(obj)]
        elif inspect.isfunction(obj):
            cases.append((public, None))
    return cases


@pytest.mark.parametrize(("public", "member"), _cases())
def test_has_its_own_docstring(public: str, member: str | None) -> None:
    obj = getattr(tiered_registry, public)
    if member is None:
        own = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert (own or "").strip(), f"{public} has no docstring"
        if inspect.isclass(obj):
            assert not own.startswith(f"{obj.__name__}("), f"{public}: only the generated dataclass text"
        return
    assert inspect.getdoc(getattr(obj, member)), f"{public}.{member} has no docstring"
    source = _doc_source(obj, member)
    assert _ours(source), f"{public}.{member} shows the docstring of {source}"


def test_the_classic_case_register_is_not_abc_register() -> None:
    doc = inspect.getdoc(tiered_registry.TieredBackend.register) or ""
    assert "virtual subclass" not in doc
    assert "bot_id" in doc


def test_protocol_points_to_a_document_that_exists() -> None:
    import tiered_registry.protocol as protocol

    doc = protocol.__doc__ or ""
    root = Path(__file__).resolve().parents[1]
    assert "docs/protocol.md" in doc
    assert (root / "docs" / "protocol.md").is_file()
