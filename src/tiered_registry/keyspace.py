"""``KeySpace``: how one namespace's Redis keys are spread over hash slots.

Why: a Lua script (the stale-fill guard, a write-through) may only touch keys of one hash slot
on Redis Cluster, and a namespace-wide value (the epoch that ``clear()`` bumps) must sit in the
slot of every bot it guards. So the keys of a namespace are split into ``groups``: a bot belongs
to one group (a CRC-32 of its id), every key of that bot carries the group's hash tag, and every
group has its own copy of the namespace-wide keys (epoch, version counter). A script then only
ever touches one group's keys — one slot.

- On a single Redis there is one group, tagged ``{namespace}``: the key layout of every earlier
  release, and no hashing on the read path.
- On a cluster there are :data:`CLUSTER_GROUPS` groups, tagged ``{namespace:N}``. The tags are
  chosen so that group *i* lands in the *i*-th equal share of the 16,384 slots, and a cluster
  that gives its masters equal slot ranges (what ``redis-cli --cluster create`` does) gets an
  equal share of the groups on every master, not whatever a hash of 64 strings happens to give.

Namespaces contain no ``:`` (see :func:`~tiered_registry.redis_client.validate_namespace`), so
the SCAN pattern ``{namespace:*}`` of one namespace can never match another's keys.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Final

from redis.crc import key_slot

__all__ = ["CLUSTER_GROUPS", "KeySpace"]

CLUSTER_GROUPS: Final = 64
"""Groups of a namespace on Redis Cluster: enough to spread evenly over up to 64 masters, few
enough that a ``clear()`` (one epoch per group) stays one short round of commands."""
_SLOTS: Final = 16384


def _spread_tags(namespace: str, groups: int) -> tuple[str, ...]:
    """One hash tag per group, group ``i`` in slot share ``i`` (found by trying suffixes in order:
    deterministic, so every process of every release agrees)."""
    tags: list[str] = []
    suffix = 0
    for group in range(groups):
        low, high = group * _SLOTS // groups, (group + 1) * _SLOTS // groups
        while True:
            tag = f"{{{namespace}:{suffix}}}"
            suffix += 1
            if low <= key_slot(tag.encode()) < high:
                tags.append(tag)
                break
    return tuple(tags)


class KeySpace:
    """The hash tags of a namespace and which one each bot's keys carry."""

    __slots__ = ("groups", "namespace", "tags")

    def __init__(self, namespace: str, groups: int = 1) -> None:
        self.namespace = namespace
        self.groups = groups
        self.tags: tuple[str, ...] = (f"{{{namespace}}}",) if groups == 1 else _spread_tags(namespace, groups)

    def group(self, bot_id: str) -> int:
        """The group of ``bot_id`` (always 0 with one group)."""
        if self.groups == 1:
            return 0
        return binascii.crc32(bot_id.encode()) % self.groups

    def tag(self, bot_id: str) -> str:
        """The hash tag every key of ``bot_id`` starts with."""
        return self.tags[self.group(bot_id)]

    def by_group(self, bot_ids: Sequence[str]) -> dict[int, list[int]]:
        """Positions in ``bot_ids`` by group (insertion order kept within a group)."""
        if self.groups == 1:
            return {0: list(range(len(bot_ids)))}
        out: dict[int, list[int]] = {}
        for position, bot_id in enumerate(bot_ids):
            out.setdefault(self.group(bot_id), []).append(position)
        return out

    def pattern(self, suffix: str) -> str:
        """A SCAN ``MATCH`` pattern for keys ``<tag><suffix>`` of every group of this namespace."""
        if self.groups == 1:
            return self.tags[0] + suffix
        return f"{{{self.namespace}:*}}{suffix}"
