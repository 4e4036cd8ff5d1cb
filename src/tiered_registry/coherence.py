"""Cross-process invalidation of local tiers over Redis pub/sub.

Every process has its own :class:`~tiered_registry.LocalCache`; when one process writes a bot, the
others must stop serving their copy. After a write has committed (store, then the shared tiers), the
writer publishes ``{"v": 2, "s": sender, "n": seq, "k": bot_id, "e": kind, "t": sent_at}``
(``"k": null`` = everything, after ``clear()``) on ``{namespace}:invalidations``. Every other
process's listener drops that key from its local tier and marks the key's in-flight read stale, so
a read that started before the message cannot put the old value back. A process ignores its own
messages (it updated its tier itself).

The message format is versioned for rolling deploys. Version 1 had only ``s``, ``n`` and ``k``;
version 2 adds what changed (``e``: a :data:`~tiered_registry.changes.KINDS` value, for the change
feed) and the sender's clock (``t``, Unix seconds: the propagation lag is observed as
``received - t``). A version-1 reader ignores the new fields; a version-2 reader takes a message
without ``e`` as ``"invalidated"`` (the bot may have changed). So old and new processes invalidate
each other throughout a deploy. Version 3 adds one message for many bots (a ``register_many``):
``"ks": [bot ids], "es": [kinds]``, sent with ``"k": null, "e": "resync"`` so that a version-2
reader, which knows only ``k``, flushes its whole local tier: more than needed, never too little.

On Redis Cluster the channel is a *sharded* one by default (``SPUBLISH``/``SSUBSCRIBE``, Redis
7+): a message goes to the one master that owns the channel's slot, and only its subscribers read
it there. Classic ``PUBLISH`` on a cluster is relayed over the cluster bus to every node, so each
message costs every master, and that grows with the cluster (``sharded=False`` keeps it, e.g. for
a server older than 7; docs/scaling.md has the measurements). Either way the listener holds one
plain connection to the node that owns the channel's slot; when that slot moves (the server sends
``sunsubscribe``) or the node fails, the channel is down and the listener finds the new owner.

Coalescing. Every message costs Redis a little per subscriber (docs/scaling.md: with a thousand
processes listening, one message is milliseconds of server CPU), so under a burst of writes
messages are merged: a publish that finds another in flight waits for it and then goes out with
all the others that arrived meanwhile as one version-3 message (a :class:`~tiered_registry.
batching.Batcher` with one message in flight). A lone write still publishes at once.

Why pub/sub and not Redis client-side caching (``CLIENT TRACKING ... BCAST``)? Tracking needs
RESP3 push handling on the connection that reads, which redis-py's asyncio client does not expose
for a separate invalidation connection; plain pub/sub works with every Redis and Valkey version,
is one extra PUBLISH per write, and its failure modes are simple to detect.

Lost messages. Pub/sub delivers at most once: what is published while the subscriber is
disconnected is gone. So the listener treats its connection as the source of trust:

- any error on it (``CLIENT KILL``, a Redis restart) — and a liveness check that PINGs the
  subscriber connection every ``ping_interval`` seconds and gives up after ``ping_timeout`` without
  a reply (a silent drop) — reports the channel *down*: the backend flushes its local tier and
  bypasses it (reads go to the shared tiers and the store);
- the listener reconnects with backoff; once subscribed again it reports *up*: the backend flushes
  the local tier once more (messages may have been lost in between) and uses it again.

Messages not sent. A PUBLISH that fails (Redis unreachable from the writer just then, or slower
than ``publish_timeout``) may leave subscribers that are still connected holding the old value.
The writer owes that message: its :class:`~tiered_registry.owed.OwedInvalidations` publishes it
again from the background until it goes through.

Staleness bound: with the channel up, a process serves an old value for about one pub/sub round
trip after the writer's commit. If messages are lost without the connection noticing, at most
``ping_interval + ping_timeout`` seconds pass before the flush, and in every case no local entry
outlives its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .batching import Batcher
from .errors import BackendClosedError, BackendUnavailableError
from .redis_client import (
    is_cluster,
    is_cluster_source,
    is_setup_error,
    make_client,
    map_redis_errors,
    redact_url,
    validate_namespace,
)
from .tasks import cancel_and_wait

__all__ = ["InvalidationChannel"]

logger = logging.getLogger(__name__)

OnInvalidate = Callable[[str | None, str], None]  # (bot id or None for everything, change kind)
OnState = Callable[[bool], None]
_MAX_BACKOFF: Final = 2.0
MESSAGE_VERSION: Final = 3
"""The newest format this process reads. A message about one bot is still sent as version 2 (all
it needs); only a message for many bots is version 3."""
_ONE_BOT_VERSION: Final = 2
MAX_KEYS_PER_MESSAGE: Final = 1000
"""Bots named in one message (about 30 KB): more are sent as several messages."""
_NODE_OPTIONS: Final = frozenset(
    {"host", "port", "username", "password", "credential_provider", "client_name", "socket_connect_timeout"}
)
"""What a plain connection to one cluster node keeps of the cluster client's node settings."""
_LAG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LagHistogram:
    """Propagation lag of received invalidations (receive time minus the sender's send time, so
    it includes the clock difference of two hosts), counted in fixed buckets (seconds, upper
    bounds, cumulative as Prometheus counts them when read through :meth:`cumulative`)."""

    buckets: tuple[float, ...] = _LAG_BUCKETS

    def __init__(self) -> None:
        self.counts = [0] * (len(_LAG_BUCKETS) + 1)  # the last one: above every bucket
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.count += 1
        self.sum += seconds
        for index, bound in enumerate(_LAG_BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, observations <= it), ..., (inf, all)]``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*_LAG_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class InvalidationChannel:
    """Publishes this process's invalidations and listens for everyone else's."""

    max_keys_per_message: int = MAX_KEYS_PER_MESSAGE

    def __init__(
        self,
        url_or_client: str | aredis.Redis | RedisCluster,
        *,
        namespace: str = "tiered_registry",
        channel: str | None = None,
        ping_interval: float = 1.0,
        ping_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        publish_timeout: float = 0.5,
        sharded: bool | None = None,
        coalesce: bool = True,
    ) -> None:
        """``sharded``: on Redis Cluster, ``SPUBLISH``/``SSUBSCRIBE`` (the default) or classic
        ``PUBLISH``/``SUBSCRIBE`` (``False``); a single Redis always uses classic pub/sub.
        ``coalesce``: publishes made while one is in flight go out together as one message (see
        the module notes); ``False`` sends one message per bot."""
        self.namespace = validate_namespace(namespace)
        self.cluster = is_cluster_source(url_or_client)
        self.sharded = self.cluster if sharded is None else bool(sharded) and self.cluster
        self.channel = channel or f"{{{self.namespace}}}:invalidations"
        self.sender = uuid.uuid4().hex
        self.subscriber_name = f"tiered-registry-sub-{self.namespace}-{self.sender[:8]}"
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._source = url_or_client
        self._publisher: Any = None
        self._owned = False
        self._seq = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._on_invalidate: OnInvalidate = lambda key, kind: None
        self._on_state: OnState = lambda up: None
        self._up = False
        self._first_subscribe = asyncio.Event()
        self._setup_logged = False  # a refused connection setup (a wrong URL) was logged
        self.received = 0
        self.published = 0
        self.publish_errors = 0
        self._failing = 0  # publishes failed in a row
        self.drops = 0
        self.lag = LagHistogram()
        self.since = time.time()  # when :attr:`status` last changed (Unix seconds)
        self._status = "down"
        self.coalesce = coalesce
        self._coalescer: Batcher[tuple[str, str], bool] = Batcher(
            self._publish_one, self._publish_coalesced, max_batch=self.max_keys_per_message, max_in_flight=1
        )

    @property
    def status(self) -> str:
        """``up`` or ``down``; :attr:`since` says since when. Listening: up while subscribed.
        Publishing only (a stack without a local tier): down while its PUBLISHes fail."""
        return self._status

    def _update_status(self) -> None:
        listening = self._task is not None
        up = self._up if listening else self._publisher is not None and not self._failing
        status = "up" if up else "down"
        if status != self._status:
            self._status = status
            self.since = time.time()

    async def check(self) -> None:
        """PING Redis on the publishing connection: raises
        :class:`~tiered_registry.BackendUnavailableError` if it cannot be reached."""
        async with map_redis_errors("invalidation channel check"):
            await self._publisher.ping()

    def __repr__(self) -> str:
        source = redact_url(self._source) if isinstance(self._source, str) else type(self._source).__name__
        return f"InvalidationChannel({source!r}, channel={self.channel!r})"

    @property
    def is_up(self) -> bool:
        """True while subscribed: only then may the local tier be trusted."""
        return self._up

    async def start(self, on_invalidate: OnInvalidate | None = None, on_state: OnState | None = None) -> None:
        """Start publishing and, given the callbacks, listening (waits up to ``connect_timeout`` for
        the first subscription). Without callbacks the channel only publishes: a process with no
        local tier has nothing to evict but must still tell the others about its writes."""
        if self._publisher is not None:
            return
        # A write awaits its PUBLISH: a hung Redis must cost it a bounded, short time, not the
        # library's general 5 s command timeout.
        self._publisher, self._owned = make_client(
            self._source, socket_timeout=self.publish_timeout, connect_timeout=self.publish_timeout, retries=0
        )
        self._update_status()  # publishing only: up until a PUBLISH fails
        if on_invalidate is None or on_state is None:
            return
        self.listen(on_invalidate, on_state)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_subscribe.wait(), self.connect_timeout)

    def listen(self, on_invalidate: OnInvalidate, on_state: OnState) -> None:
        """Start the listener, if it is not running yet (without waiting for its subscription):
        for a stack that only publishes until someone watches its changes."""
        if self._task is not None or self._publisher is None:
            return
        self._on_invalidate = on_invalidate
        self._on_state = on_state
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="tiered-registry-coherence")
        self._update_status()  # listening: down until subscribed

    @property
    def listening(self) -> bool:
        """True once the listener runs (it may not be subscribed yet: see :attr:`is_up`)."""
        return self._task is not None

    async def stop(self) -> None:
        """Stop listening and publishing, and close the connections the channel opened. Idempotent."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._coalescer.close()
        self._up = False
        publisher, self._publisher = self._publisher, None
        self._update_status()
        if publisher is not None and self._owned:
            await publisher.aclose()

    async def publish(self, bot_id: str | None, kind: str = "invalidated") -> bool:
        """Tell the other processes that ``bot_id`` (``None``: everything) changed, and how
        (``kind``); False if Redis could not be reached (logged, not raised: the write itself has
        succeeded; the caller owes the message)."""
        if bot_id is None or not self.coalesce:
            return await self._publish_one((bot_id, kind))
        try:
            return await self._coalescer.load((bot_id, kind))
        except BackendClosedError:  # the channel stopped while this one waited: not sent
            return False

    async def _publish_coalesced(self, changes: list[tuple[str, str]]) -> list[bool]:
        """Publishes that waited for the one in flight: one message for all of them."""
        sent = await self.publish_many(changes)
        return [sent] * len(changes)

    async def _publish_one(self, change: tuple[str | None, str]) -> bool:
        bot_id, kind = change
        return await self._send(
            {
                "v": _ONE_BOT_VERSION,
                "s": self.sender,
                "n": next(self._seq),
                "k": bot_id,
                "e": kind,
                "t": time.time(),
            },
            bot_id,
        )

    async def publish_many(self, changes: Sequence[tuple[str, str]]) -> bool:
        """Like :meth:`publish` for many bots in one message (at most :data:`MAX_KEYS_PER_MESSAGE`):
        ``(bot id, kind)`` pairs."""
        if len(changes) > self.max_keys_per_message:
            raise ValueError(f"at most {self.max_keys_per_message} bots per message, got {len(changes)}")
        return await self._send(
            {
                "v": MESSAGE_VERSION,
                "s": self.sender,
                "n": next(self._seq),
                "k": None,  # what a version-2 reader sees: everything changed
                "e": "resync",
                "ks": [bot_id for bot_id, _ in changes],
                "es": [kind for _, kind in changes],
                "t": time.time(),
            },
            changes[0][0] if changes else None,
        )

    async def _send(self, fields: dict[str, Any], bot_id: str | None) -> bool:
        message = orjson.dumps(fields)
        try:
            async with map_redis_errors("invalidation publish"):
                if self.sharded:
                    await self._publisher.spublish(self.channel, message)
                else:
                    await self._publisher.publish(self.channel, message)
        except BackendUnavailableError:
            # Count it and go on: the write itself succeeded. The caller owes the message and
            # publishes it again later. Logged once per run of failures (a Redis outage fails
            # every publish, and the owed ones are retried).
            self.publish_errors += 1
            self._failing += 1
            if self._failing == 1:
                logger.warning("could not publish the invalidation of %r", bot_id, exc_info=True)
                self._update_status()
            return False
        if self._failing:
            logger.warning("invalidations published again after %d failed attempts", self._failing)
            self._failing = 0
            self._update_status()
        self.published += 1
        return True

    # ---- the listener ---------------------------------------------------------------------------

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            if not up:
                self.drops += 1
            self._update_status()
            self._on_state(up)

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._subscribe_and_read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_setup_error(exc):
                    logger.warning(
                        "invalidation channel %s lost (%r); local tier bypassed", self.channel, exc
                    )
                elif not self._setup_logged:  # a wrong URL will not fix itself: say so once, loudly
                    self._setup_logged = True
                    logger.error(
                        "invalidation channel %s cannot subscribe (%s); local tier bypassed, retrying"
                        " in the background (further failures of this kind are logged at DEBUG)",
                        self.channel,
                        exc,
                    )
                else:
                    logger.debug("invalidation channel %s cannot subscribe (%s)", self.channel, exc)
            self._set_up(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _subscribe_and_read(self) -> None:
        # A dedicated client without retries: an error must reach us, not be papered over by a
        # silent reconnect that would lose the messages published in between.
        if isinstance(self._source, str):
            client, owned = make_client(
                self._source,
                retries=0,
                reconnect=False,
                socket_timeout=None,
                connect_timeout=self.connect_timeout,
                client_name=self.subscriber_name,
            )
        else:  # a client passed in: its pool lends the subscriber a connection of its own
            client, owned = self._source, False
        node_client: Any = None
        pubsub: Any = None
        try:
            async with map_redis_errors("invalidation subscribe"):
                if is_cluster(client):
                    node_client = await self._node_client(client)
                    pubsub = node_client.pubsub()
                else:
                    pubsub = client.pubsub()
                if self.sharded:
                    await pubsub.ssubscribe(self.channel)
                else:
                    await pubsub.subscribe(self.channel)
                await self._read(pubsub)
        finally:
            for closing in (pubsub, node_client, client if owned else None):
                if closing is not None:
                    with contextlib.suppress(Exception):
                        await closing.aclose()

    async def _node_client(self, cluster: RedisCluster) -> aredis.Redis:
        """A plain client (no retries, no timeout) to the cluster node that owns the channel's
        slot: a sharded channel must be read there, and one connection we watch ourselves keeps
        the rule "any error means down" (redis-py's cluster pub/sub would move it silently)."""
        await cluster.initialize()  # the current slot owners (a failover may have moved them)
        node = cluster.get_node_from_key(self.channel)
        if node is None:
            raise BackendUnavailableError(f"{self.channel}: no cluster node serves the channel's slot")
        settings = node.connection_kwargs
        options = {k: v for k, v in settings.items() if k in _NODE_OPTIONS or k.startswith("ssl")}
        pool = aredis.ConnectionPool(
            connection_class=node.connection_class,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=None,
            decode_responses=False,
            client_name=self.subscriber_name,
            **{k: v for k, v in options.items() if k != "client_name"},
        )
        return aredis.Redis.from_pool(pool)

    async def _read(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=self.ping_interval)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                ping_sent = None
                kind = message["type"]
                if kind in ("subscribe", "ssubscribe"):
                    self._set_up(True)
                    self._first_subscribe.set()
                elif kind in ("message", "smessage"):
                    self._handle(message["data"])
                elif kind == "sunsubscribe":  # the server dropped us: the channel's slot moved
                    raise BackendUnavailableError(f"{self.channel}: the cluster moved the channel's slot")
                continue
            if ping_sent is None and now - last_heard >= self.ping_interval:
                await pubsub.ping()
                ping_sent = now
            elif ping_sent is not None and now - ping_sent > self.ping_timeout:
                raise BackendUnavailableError(f"no reply to PING within {self.ping_timeout}s")

    def _handle(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            sender, key = message["s"], message["k"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignoring a malformed invalidation message on %s", self.channel)
            return
        if sender == self.sender:
            return
        self.received += 1
        sent_at = message.get("t")
        if isinstance(sent_at, int | float):
            self.lag.observe(time.time() - sent_at)
        keys, kinds = message.get("ks"), message.get("es")
        if isinstance(keys, list) and isinstance(kinds, list) and len(keys) == len(kinds):
            for bot_id, change in zip(keys, kinds, strict=True):
                if isinstance(bot_id, str):
                    self._on_invalidate(bot_id, change if isinstance(change, str) else "invalidated")
            return
        kind = message.get("e")
        self._on_invalidate(key, kind if isinstance(kind, str) else "invalidated")
