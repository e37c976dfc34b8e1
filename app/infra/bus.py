"""The event bus: committed events on named channels, from writers to live subscribers.

broadcaster carries the messages (Redis pub/sub with `SEPULKI_REDIS_URL`, in-process memory
otherwise); this module owns how they are written, published, fanned out and watched.

Publishing (mutations, ingest, commands): write the event in the changing transaction, publish it
after the commit, never before:

    async with pool.acquire() as conn, conn.transaction():
        ...                                              # change rows
        event_id = await eventlog.append(conn, names, payload)
    await events.publish(names, event_id, payload)

`payload` must be JSON-safe (plain dicts, lists, str, numbers; `jsonable()` converts rows with
datetimes, UUIDs and decimals) so that the row in event_log and the live message are identical.
For several events of one transaction, `record()` does the first half for each and
`Events.publish_recorded()` the second:

    recorded = [await record(conn, channels.robot(r["id"]), r) for r in robots]   # inside
    await events.publish_recorded(recorded)                                       # after commit

Wire format: one JSON text per message, `{"id": <event_log id>, "data": <payload>}`; messages
`{"probe": ...}` are this module's health probes and are never delivered.

`publish` does not raise when Redis is unreachable: the change is committed, so failing the caller
would lie. The message is kept in a bounded backlog (10,000 messages) that one background task
publishes, in order, once Redis answers again; new messages queue behind it. Subscribers drop
copies of events they already got (by id), so a late publication never duplicates anything.
What the backlog cannot hold, or still holds after 60 s of outage, is dropped with an error in
the log; it stays in event_log for clients that resume with `after`.

Subscribing (app.realtime builds the GraphQL and SSE streams on this): `Events.listen(channel)`
registers a `Subscriber` with a bounded queue. The process holds one broadcaster subscription per
channel and fans each message out, decoded once, to its local subscribers. `listen` returns once
that subscription is confirmed by a probe published on the channel and received back, so that
whatever is published from then on reaches the subscriber (or after `probe_timeout` while the
transport is down). A subscriber receives `Event`s, and two markers in order with them: `LOST`
where messages may start to be missing (Redis connection lost, or subscribed while it was down)
and `BACK` once the subscription is confirmed again. The consumer notes the last id it delivered
at LOST and, at BACK, replays event_log after it (app.realtime does).

Overflow policy: a subscriber whose queue holds `queue_size` undelivered events when another
arrives is closed: its queue is dropped and its next `get()` raises `SubscriberOverflow`. The
GraphQL layer ends that one operation with a RATE_LIMITED error carrying the cursor to resume
from (`after`); other operations of the socket and other subscribers are unaffected.

Redis supervision: broadcaster 0.3.1's Redis listener dies on the first connection error and
never comes back, and messages lost while redis-py reconnects on its own go unnoticed. While any
channel is subscribed, a supervisor task (1) revives a dead listener (redis-py's PubSub then
reconnects and re-subscribes every channel), (2) publishes a probe on this process's health
channel every `health_interval` seconds and expects it back within `probe_timeout` (an answer
proves Redis, the listener and the subscriptions all work; no answer drops the connection to
force a reconnect), and (3) hears every reconnect of the subscriber connection. Any of these
sends LOST to every subscriber; the next answered probe sends BACK. The supervisor reads
broadcaster's RedisBackend internals (`_pubsub`, `_listener`, `_pubsub_listener`), hence the pin
broadcaster<0.4.

One module of ~540 lines on purpose: publishing, fan-out and supervision all act on the same
topics and subscribers (a LOST from the supervisor must reach exactly the subscribers the pump
feeds); the Redis internals it reads are apart, in app.infra.redis_watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from broadcaster import Broadcast
from broadcaster import Event as BroadcastMessage
from redis.exceptions import RedisError

from app.core.jsonable import dumps
from app.infra.eventlog import Recorded
from app.infra.redis_watch import RedisWatch

log = logging.getLogger("sepulki.pubsub")

DEFAULT_QUEUE_SIZE = 1000


def encode(event_id: int, payload: dict[str, Any]) -> str:
    data = dumps({"id": event_id, "data": payload})
    return data.decode()


@dataclass(frozen=True, slots=True)
class Event:
    """One delivered event and its event_log id."""

    id: int
    data: dict[str, Any]


class Marker(enum.Enum):
    """Where the transport may have dropped messages, in order with the subscriber's events."""

    # From here on, messages may be lost: the consumer notes the last id it delivered.
    LOST = "lost"
    # The subscription is confirmed again: the consumer replays event_log after the id it noted
    # at LOST (the events it received in between are among those replayed).
    BACK = "back"


LOST = Marker.LOST
BACK = Marker.BACK


class SubscriberOverflow(Exception):
    """The subscriber fell `limit` events behind; its queue was dropped."""

    def __init__(self, channel: str, limit: int) -> None:
        super().__init__(f"more than {limit} undelivered events on {channel}")
        self.channel = channel
        self.limit = limit


class _Sync(enum.Enum):
    PENDING = "pending"  # inside listen(), waiting for the channel's confirmation
    SYNCED = "synced"  # everything published since it was confirmed reaches it
    STALE = "stale"  # got LOST; gets BACK once the transport is confirmed again


class Subscriber:
    """The events of one channel for one consumer, in a queue of at most `limit` events."""

    def __init__(self, channel: str, limit: int) -> None:
        self.channel = channel
        self.limit = limit
        self._items: deque[Event | Marker] = deque()
        self._wakeup = asyncio.Event()
        self._error: SubscriberOverflow | None = None
        self._sync = _Sync.PENDING

    def __len__(self) -> int:
        return len(self._items)

    @property
    def overflowed(self) -> bool:
        return self._error is not None

    def _push(self, event: Event) -> bool:
        """False when this event overflowed the queue (and closed the subscriber)."""
        if len(self._items) >= self.limit:
            # Closed at once: the consumer learns it on its next get, without draining first.
            self._items.clear()
            self._error = SubscriberOverflow(self.channel, self.limit)
            self._wakeup.set()
            return False
        self._items.append(event)
        self._wakeup.set()
        return True

    def _mark(self, marker: Marker) -> None:
        # Control items may exceed the bound: dropping one would lose the gap it tells about.
        if self._error is None:
            self._items.append(marker)
            self._wakeup.set()

    def _lose(self) -> None:
        if self._sync is not _Sync.STALE:
            self._sync = _Sync.STALE
            self._mark(LOST)

    def _recover(self) -> None:
        if self._sync is _Sync.STALE:
            self._sync = _Sync.SYNCED
            self._mark(BACK)

    async def get(self) -> Event | Marker:
        """The next event or marker; raises SubscriberOverflow once the subscriber is closed."""
        while True:
            if self._error is not None:
                raise self._error
            if self._items:
                return self._items.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Event | Marker]:
        return self

    async def __anext__(self) -> Event | Marker:
        return await self.get()


@dataclass(eq=False)
class _Topic:
    """One channel this process listens to, shared by its local subscribers."""

    name: str
    subscribers: set[Subscriber] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    # Inside broadcaster's subscribe: re-subscribed by redis-py whenever it reconnects.
    subscribed: bool = False
    # Subscribed when the transport was lost: confirmed again by the next health probe.
    lost: bool = False
    probes: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class Events:
    """JSON events on named channels: publish what is committed, fan it out to bounded queues."""

    def __init__(
        self,
        broadcast: Broadcast,
        *,
        health_interval: float = 1.0,
        probe_timeout: float = 2.0,
        publish_timeout: float = 2.0,
        retry_delay: float = 0.2,
        backlog_limit: int = 10_000,
        backlog_ttl: float = 60.0,
    ) -> None:
        self._broadcast = broadcast
        self._health_interval = health_interval
        self._probe_timeout = probe_timeout
        self._publish_timeout = publish_timeout
        self._retry_delay = retry_delay
        self._topics: dict[str, _Topic] = {}
        self._health_channel = f"sepulki:health:{uuid.uuid4().hex}"
        self._health: _Topic | None = None
        self._watch = RedisWatch.of(broadcast)
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._down = False
        # Messages whose publish failed, retried in order by one background task.
        self._backlog: deque[tuple[str, str]] = deque()
        self._backlog_limit = backlog_limit
        self._backlog_ttl = backlog_ttl
        self._flusher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # published, publish_failed, publish_dropped, delivered, overflowed, transport_lost, recovered
        self.stats: Counter[str] = Counter()

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, names: Sequence[str], event_id: int, payload: dict[str, Any]) -> None:
        """After commit: the event `event_id` (from event_log) on each channel of `names`."""
        await self._send(names, encode(event_id, payload))

    async def publish_recorded(self, recorded: Iterable[Recorded]) -> None:
        for event in recorded:
            await self._send(event.channels, encode(event.id, event.payload))

    async def _send(self, names: Sequence[str], message: str) -> None:
        pending = list(names)
        if not self._backlog:
            try:
                async with asyncio.timeout(self._publish_timeout):
                    while pending:
                        await self._broadcast.publish(channel=pending[0], message=message)
                        pending.pop(0)
                        self.stats["published"] += 1
            except (RedisError, OSError, TimeoutError) as exc:
                # Committed already: the caller must not fail. Kept and retried in order.
                self.stats["publish_failed"] += 1
                log.warning("publishing to %s failed (%r); retrying in the background", pending[0], exc)
        for name in pending:
            if len(self._backlog) >= self._backlog_limit:
                self._backlog.popleft()
                self.stats["publish_dropped"] += 1
            self._backlog.append((name, message))
        if self._backlog and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="events:backlog")

    async def _flush(self) -> None:
        """Publishes the backlog, oldest first, until it is empty or Redis stayed down too long."""
        delay = self._retry_delay
        give_up = time.monotonic() + self._backlog_ttl
        try:
            while self._backlog:
                name, message = self._backlog[0]
                try:
                    async with asyncio.timeout(self._publish_timeout):
                        await self._broadcast.publish(channel=name, message=message)
                except (RedisError, OSError, TimeoutError):
                    if time.monotonic() > give_up:
                        # Still in event_log: clients that resume with `after` get them.
                        self.stats["publish_dropped"] += len(self._backlog)
                        log.error("dropping %d unpublished events: Redis is still down", len(self._backlog))
                        self._backlog.clear()
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self._backlog.popleft()
                self.stats["published"] += 1
                delay = self._retry_delay
                give_up = time.monotonic() + self._backlog_ttl
            log.warning("published the events held while Redis was unreachable")
        finally:
            self._flusher = None

    async def aclose(self) -> None:
        """Stops every background task (the lifespan's broadcaster is closed by its owner)."""
        tasks = [t for t in (self._supervisor, self._flusher) if t is not None]
        for topic in [*self._topics.values(), *([self._health] if self._health else [])]:
            if topic.task is not None:
                tasks.append(topic.task)
        tasks += list(self._closing)
        self._topics.clear()
        self._supervisor = self._health = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- subscribing ------------------------------------------------------------------------

    def subscribers(self, channel: str) -> int:
        """Local subscribers of `channel` in this process past `listen` (so a message published
        from now on reaches them, unless the transport is down)."""
        topic = self._topics.get(channel)
        if topic is None:
            return 0
        return sum(1 for s in topic.subscribers if s._sync is not _Sync.PENDING)

    def lag(self) -> tuple[int, int]:
        """How far this process's bus is behind: (messages waiting in the backlog for Redis,
        the most events queued for one local subscriber). Read at scrape time by GET /metrics."""
        deepest = max((len(s) for topic in self._topics.values() for s in topic.subscribers), default=0)
        return len(self._backlog), deepest

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The payloads published live on `channel` from now on (no ids, no replay, no markers):
        for tests and simple consumers; streams to clients use `listen` through app.realtime."""
        async with self.listen(channel) as subscriber:

            async def payloads() -> AsyncIterator[dict[str, Any]]:
                async for item in subscriber:
                    if isinstance(item, Event):
                        yield item.data

            yield payloads()

    @asynccontextmanager
    async def listen(
        self, channel: str, *, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> AsyncIterator[Subscriber]:
        """A subscriber of `channel`, registered with the transport when this returns (or, when
        the transport is down, starting with LOST and getting BACK once it is up)."""
        topic = self._topics.get(channel)
        if topic is None:
            topic = self._open(channel)
        subscriber = Subscriber(channel, queue_size)
        topic.subscribers.add(subscriber)
        try:
            try:
                async with asyncio.timeout(self._probe_timeout):
                    await topic.confirmed.wait()
            except TimeoutError:
                subscriber._lose()
                log.warning("subscribed to %s while the event transport is down", channel)
            else:
                if subscriber._sync is _Sync.PENDING:
                    subscriber._sync = _Sync.SYNCED
            yield subscriber
        finally:
            topic.subscribers.discard(subscriber)
            if not topic.subscribers and self._topics.get(channel) is topic:
                self._close(topic)

    def _open(self, channel: str) -> _Topic:
        topic = _Topic(channel)
        self._topics[channel] = topic
        topic.task = asyncio.create_task(self._pump(topic), name=f"events:{channel}")
        if self._watch is not None and self._supervisor is None:
            self._health = _Topic(self._health_channel)
            self._health.task = asyncio.create_task(self._pump(self._health), name="events:health")
            self._supervisor = asyncio.create_task(self._supervise(), name="events:supervisor")
        return topic

    def _close(self, topic: _Topic) -> None:
        del self._topics[topic.name]
        self._stop(topic)
        if not self._topics and self._supervisor is not None:
            self._stop_task(self._supervisor)
            self._supervisor = None
            if self._health is not None:
                self._stop(self._health)
                self._health = None

    def _stop(self, topic: _Topic) -> None:
        for probe in topic.probes.values():
            probe.cancel()
        if topic.task is not None:
            self._stop_task(topic.task)

    def _stop_task(self, task: asyncio.Task[None]) -> None:
        # Not awaited: a subscriber leaving must not wait for Redis; kept referenced until done.
        task.cancel()
        self._closing.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Typically unsubscribing while Redis is down: the subscription dies with the connection.
            log.debug("closing %s: %r", task.get_name(), task.exception())

    async def _pump(self, topic: _Topic) -> None:
        """Holds broadcaster's subscription of one channel and fans its messages out."""
        delay = self._retry_delay
        while True:
            try:
                async with self._broadcast.subscribe(channel=topic.name) as messages:
                    topic.subscribed = True
                    confirming = asyncio.create_task(self._confirm(topic))
                    try:
                        # broadcaster 0.3.1 annotates `Subscriber.__aiter__` as an optional generator of
                        # optional events; it yields every message received, never None.
                        async for message in cast("AsyncIterable[BroadcastMessage]", messages):
                            self._dispatch(topic, message.message)
                    finally:
                        topic.subscribed = False
                        confirming.cancel()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # broadcaster raises whatever redis-py raised (or a KeyError of its own) when
                # subscribing while Redis is down: try again until it is back.
                log.warning("subscribing to %s failed (%r); retrying in %.1fs", topic.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _confirm(self, topic: _Topic) -> None:
        """Publishes probes on the channel until one comes back, then marks the topic confirmed."""
        delay = self._retry_delay
        while not await self._probe(topic):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        if topic is self._health:
            return
        self._confirmed(topic)

    def _confirmed(self, topic: _Topic) -> None:
        topic.confirmed.set()
        for subscriber in topic.subscribers:
            subscriber._recover()

    async def _probe(self, topic: _Topic) -> bool:
        """Publishes a probe on the topic's channel: True once this process received it back."""
        token = uuid.uuid4().hex
        received: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        topic.probes[token] = received
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._broadcast.publish(channel=topic.name, message=json.dumps({"probe": token}))
                await received
            return True
        except (RedisError, OSError, TimeoutError):
            return False
        finally:
            topic.probes.pop(token, None)

    def _dispatch(self, topic: _Topic, message: str) -> None:
        try:
            decoded = orjson.loads(message)
            if "probe" in decoded:
                probe = topic.probes.get(decoded["probe"])
                if probe is not None and not probe.done():
                    probe.set_result(None)
                return
            event = Event(int(decoded["id"]), decoded["data"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed message on %s: %s", topic.name, exc)
            return
        for subscriber in topic.subscribers:
            if subscriber.overflowed:
                continue
            if subscriber._push(event):
                self.stats["delivered"] += 1
            else:
                self.stats["overflowed"] += 1
                log.warning(
                    "a subscriber of %s fell %d events behind and was closed", topic.name, subscriber.limit
                )

    # -- supervision (Redis) ----------------------------------------------------------------

    def _on_connect(self, _connection: Any) -> None:
        # redis-py reconnected the subscriber connection: what was published meanwhile is lost.
        self._lost("the Redis subscriber connection was re-established")
        self._wake.set()

    def _on_listener_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here, reported by the supervisor
        self._wake.set()

    def _lost(self, reason: str) -> None:
        if not self._down:
            self._down = True
            self.stats["transport_lost"] += 1
            log.warning("event transport lost: %s; subscribers will catch up once it is back", reason)
        for topic in self._topics.values():
            topic.confirmed.clear()
            topic.lost = topic.lost or topic.subscribed
            for subscriber in topic.subscribers:
                if subscriber._sync is _Sync.SYNCED:
                    subscriber._lose()

    def _recovered(self) -> None:
        self._down = False
        self.stats["recovered"] += 1
        log.warning("event transport is back; subscribers catch up from event_log")
        for topic in self._topics.values():
            # A topic subscribed during the outage is confirmed by its own probe instead.
            if topic.lost and topic.subscribed:
                topic.lost = False
                self._confirmed(topic)

    async def _supervise(self) -> None:
        watch = self._watch
        health = self._health
        assert watch is not None and health is not None
        while True:
            if self._down:
                await asyncio.sleep(self._retry_delay)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._health_interval):
                        await self._wake.wait()
            self._wake.clear()
            watch.hook(self._on_connect, self._on_listener_done)
            failure = watch.listener_failure()
            if failure is not None:
                self._lost(f"the Redis listener stopped ({failure!r})")
                watch.revive()
                continue
            if not health.subscribed:
                continue  # the health channel's own subscription is still being retried
            if await self._probe(health):
                if self._down:
                    self._recovered()
            else:
                self._lost("a health probe went unanswered")
                with contextlib.suppress(RedisError, OSError):
                    await watch.reset()
