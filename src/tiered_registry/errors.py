"""One exception hierarchy for the whole library, rooted at :class:`RegistryError`.

Callers catch ``RegistryError`` for anything this library raises on purpose. Input errors also
subclass the built-in ``ValueError``/``TypeError`` so code written against plain Python
conventions keeps working.
"""

from __future__ import annotations

__all__ = [
    "BackendBusyError",
    "BackendClosedError",
    "BackendNotInitializedError",
    "BackendUnavailableError",
    "ConfigurationError",
    "InvalidInputError",
    "InvalidTypeError",
    "RegistryError",
    "WriteOutcomeUnknownError",
]


class RegistryError(Exception):
    """Base class of every error raised on purpose by tiered-registry."""


class InvalidInputError(RegistryError, ValueError):
    """An argument has the right type but a bad value (too long, unknown status, NaN, ...).

    ``field`` names the argument (``"bot_id"``, ``"config"``, ``"config.a.b"``, ``"limit"``...).
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument has a type the protocol does not accept (a non-``str`` id, a set in a config...)."""


class ConfigurationError(RegistryError, ValueError):
    """A backend or stack was configured wrongly (unknown option, bad URL, bad namespace)."""


class BackendClosedError(RegistryError, RuntimeError):
    """The backend was used after ``close()``."""


class BackendNotInitializedError(RegistryError, RuntimeError):
    """The backend was used before ``initialize()`` (or outside ``async with``)."""


class BackendUnavailableError(RegistryError, ConnectionError):
    """The server behind a backend could not be reached or failed; ``__cause__`` holds the driver error."""


class BackendBusyError(BackendUnavailableError):
    """Every connection of the client's pool stayed busy for the whole wait: the client is
    overloaded, the server is not down. A cache tier that answers this is skipped for that read
    (the store answers it) without counting towards its circuit breaker."""


class WriteOutcomeUnknownError(BackendUnavailableError):
    """A write failed in a way that leaves its outcome unknown: it may or may not have happened.

    Raised when the statement may have reached the server before the failure (a timeout, a
    connection lost mid-statement, a cancellation after it was sent), the way database clients
    report an indeterminate commit. Every cache tier has dropped the bot (and other processes
    were told), so the next read shows whatever the store holds; read it back to find out.
    """
