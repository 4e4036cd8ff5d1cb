"""What the benchmark reads and writes: bot ids, a realistic config of a chosen size, key sequences.

Everything is deterministic for a given seed, so two runs (or the command and the pytest suite)
read the same keys in the same order.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Final, Literal

import orjson

__all__ = [
    "DEFAULT_CONFIG_SIZE",
    "DISTRIBUTIONS",
    "MIN_CONFIG_SIZE",
    "ZIPF_EXPONENT",
    "Distribution",
    "KeyStream",
    "bot_ids",
    "key_sequence",
    "make_config",
]

Distribution = Literal["uniform", "zipf"]
DISTRIBUTIONS: Final[tuple[Distribution, ...]] = ("uniform", "zipf")
DEFAULT_CONFIG_SIZE: Final = 2048
MIN_CONFIG_SIZE: Final = 64
ZIPF_EXPONENT: Final = 1.1
"""``s`` of the Zipf law: the bot of popularity rank ``r`` is read with weight ``1 / r**s``."""

_WORDS: Final = (
    "You are a helpful assistant for the support team. Answer briefly, cite the knowledge base, "
    "escalate billing questions to a human, never invent order numbers, and keep a friendly tone. "
)


def bot_ids(count: int, prefix: str = "bot") -> list[str]:
    """``count`` distinct ids: ``bot-000000``, ``bot-000001``, ..."""
    return [f"{prefix}-{i:06d}" for i in range(count)]


def make_config(size: int = DEFAULT_CONFIG_SIZE, index: int = 0) -> dict[str, Any]:
    """A plausible bot config (LLM settings, tools, prompts) whose compact JSON is ``size`` bytes.

    The system prompt is padded (or the config reduced to a name and a filler) to hit the size;
    ``index`` makes each bot's config distinct.
    """
    if size < MIN_CONFIG_SIZE:
        raise ValueError(f"config size must be at least {MIN_CONFIG_SIZE} bytes, got {size}")
    config: dict[str, Any] = {
        "name": f"support-bot-{index:06d}",
        "version": 3,
        "llm": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 1024},
        "memory": {"type": "buffer", "max_messages": 50, "summarize_after": 40},
        "tools": [
            {"name": "kb_search", "enabled": True, "timeout_s": 10, "top_k": 5},
            {"name": "order_lookup", "enabled": True, "timeout_s": 5},
            {"name": "handoff", "enabled": False},
        ],
        "features": {"streaming": True, "citations": True, "moderation": "strict"},
        "prompts": {"greeting": "Hi! How can I help you today?", "system": ""},
    }
    slot: dict[str, Any] = config["prompts"]
    if len(orjson.dumps(config)) > size:
        config = {"name": f"bot-{index:06d}", "filler": ""}
        slot = config
        key = "filler"
    else:
        key = "system"
    missing = size - len(orjson.dumps(config))
    slot[key] = "".join(itertools.islice(itertools.cycle(_WORDS), max(0, missing)))
    return config


def key_sequence(
    ids: list[str], length: int, distribution: Distribution = "uniform", *, seed: int = 0
) -> list[str]:
    """``length`` ids drawn from ``ids``: uniformly, or Zipf-skewed (a few bots get most reads).

    Under ``zipf`` the popularity ranks are a seeded shuffle of ``ids``, so the hot bots are not
    simply the first ones registered.
    """
    if not ids:
        raise ValueError("no bot ids to draw from")
    rng = random.Random(seed)
    if distribution == "uniform":
        return rng.choices(ids, k=length)
    if distribution == "zipf":
        ranked = list(ids)
        rng.shuffle(ranked)
        cumulative = list(
            itertools.accumulate(1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, len(ids) + 1))
        )
        return rng.choices(ranked, cum_weights=cumulative, k=length)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


class KeyStream:
    """An endless walk over a precomputed key sequence, handed out in chunks (slicing is not timed)."""

    __slots__ = ("_keys", "_position")

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("empty key sequence")
        self._keys = keys
        self._position = 0

    def take(self, count: int) -> list[str]:
        keys = self._keys
        start = self._position
        end = start + count
        # past the end: wrap around (possibly several times for a short sequence)
        chunk = keys[start:end] if end <= len(keys) else [keys[i % len(keys)] for i in range(start, end)]
        self._position = end % len(keys)
        return chunk
