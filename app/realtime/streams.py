"""Live delivery: the streams behind every subscription (GraphQL and SSE).

A stream (`event_stream`) follows one channel of app.infra.bus with an optional `after` cursor:

1. subscribe to the channel first (app.infra.bus confirms the subscription with a probe);
2. replay from event_log the committed events with id > `after`, page by page;
3. continue live, dropping events already delivered (replayed, then received live too).

Live events are never dropped for having an id below the last delivered one: ids are taken when a
transaction writes its event, so a transaction that commits later may carry a lower id. When
app.infra.bus marks a stretch where messages may be missing (LOST ... BACK: Redis restarted, or the
subscription was made while it was down), the stream replays event_log at BACK after the highest
id it had delivered at LOST, so what was committed during an outage still arrives. A stream
subscribed without `after` takes the newest event_log id at subscription time as its starting
point for that. Known limit: an event whose transaction took its id before, but committed after,
an event already delivered and then went missing in an outage is only replayed to clients that
resume with an older `after`.

Clients read each event's id, the cursor to resume from, in the `extensions` of its
graphql-transport-ws `next` message: `{"payload": {"data": ..., "extensions": {"eventId": "42"}}}`,
or, for clients that show only `data` (Apollo's useSubscription, gql), in the `eventId` field that
every subscription payload type has (`resolve_event_id`; null outside a subscription's payload).
They pass it back as `after: "42"`.

A subscriber that falls `settings.ws_queue_size` events behind is stopped (see app.infra.bus): its
operation ends with a `next` carrying one error, `extensions: {code: RATE_LIMITED, after: "<last
delivered id>"}`, then `complete`; the socket and its other operations stay open.

Execute once, send many: app.realtime.shared.

Another subscription (e.g. commandUpdates) plugs in with two lines:

    @subscription.source("commandUpdates")
    def source(_, info, robot_id=None, after=None):
        return realtime.subscription_source(info, channels.commands(robot_id), after)

    subscription.set_field("commandUpdates", realtime.resolve_event)

and a channel-level consumer (SSE with Last-Event-ID) iterates `event_stream(...)`, whose
`Event.id` is the cursor, catching `SlowConsumer` (its `.after` is the cursor to resume from).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from graphql import GraphQLError, GraphQLResolveInfo

from app.context import Context, Loaders
from app.core.errors import DomainError, Invalid
from app.infra import eventlog
from app.infra.bus import BACK, DEFAULT_QUEUE_SIZE, LOST, Event, Events, SubscriberOverflow
from app.infra.db import Pool
from app.realtime.shared import EVENT_ID

__all__ = [
    "Event",
    "Message",
    "SlowConsumer",
    "event_stream",
    "parse_after",
    "resolve_event",
    "resolve_event_id",
    "subscription_source",
]

log = logging.getLogger("sepulki.realtime")

Message = dict[str, Any]


REPLAY_PAGE = 500
# Ids a stream remembers to drop the second copy of an event (live and replayed); ids older than
# the window count as seen.
SEEN_WINDOW = 10_000


class SlowConsumer(DomainError):
    """The subscriber fell too far behind and was stopped; it resumes with `after`."""

    code = "RATE_LIMITED"

    def __init__(self, limit: int, after: int | None) -> None:
        resume = f' with after: "{after}"' if after is not None else ""
        super().__init__(
            f"Subscriber fell more than {limit} events behind and was stopped; subscribe again{resume}"
        )
        self.after = after


def parse_after(value: str | None) -> int | None:
    """The `after` cursor: the decimal id of the last event the client saw."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise Invalid("after must be an event id as returned in extensions.eventId", field="after")
    return int(text)


class _Cursor:
    """What a stream delivered: the highest id, and the recent ids (to drop second copies)."""

    def __init__(self, after: int | None) -> None:
        self.floor = after  # the client saw everything up to here (its claim)
        self.last = after or 0
        self._recent: set[int] = set()
        self._order: deque[int] = deque()
        self._forgotten = -1

    def take(self, event: Event) -> bool:
        """True if the event is new to this stream (and now counts as delivered)."""
        event_id = event.id
        if self.floor is not None and event_id <= self.floor:
            return False
        if event_id in self._recent or event_id <= self._forgotten:
            return False
        self._recent.add(event_id)
        self._order.append(event_id)
        if len(self._order) > SEEN_WINDOW:
            old = self._order.popleft()
            self._recent.discard(old)
            self._forgotten = max(self._forgotten, old)
        self.last = max(self.last, event_id)
        return True


async def _replay(
    pool: Pool, channel: str, cursor: _Cursor, page: int, after: int | None = None
) -> AsyncIterator[Event]:
    after = cursor.last if after is None else after
    while True:
        rows = await eventlog.replay(pool, channel, after, page)
        for event_id, payload in rows:
            event = Event(event_id, payload)
            if cursor.take(event):
                yield event
        if len(rows) < page:
            return
        after = rows[-1][0]


async def event_stream(
    events: Events,
    pool: Pool,
    channel: str,
    *,
    after: int | None = None,
    accept: Callable[[Message], bool] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    page: int = REPLAY_PAGE,
) -> AsyncIterator[Event]:
    """The events of one channel: those after `after` from event_log, then live, each once.

    Events `accept` rejects are left out (they still advance the cursor). Raises SlowConsumer
    when the consumer falls `queue_size` events behind."""
    async with events.listen(channel, queue_size=queue_size) as subscriber:
        cursor = _Cursor(after)
        if after is None:
            cursor.last = await eventlog.latest_id(pool)
        else:
            async for event in _replay(pool, channel, cursor, page):
                if accept is None or accept(event.data):
                    yield event
        lost_at: int | None = None
        while True:
            try:
                item = await subscriber.get()
            except SubscriberOverflow as exc:
                raise SlowConsumer(exc.limit, cursor.last or cursor.floor) from exc
            if item is LOST:
                # Events received live from here until BACK may lie after a missing one: the
                # replay at BACK starts here and drops those as already delivered.
                lost_at = cursor.last if lost_at is None else lost_at
            elif item is BACK:
                start, lost_at = lost_at, None
                async for event in _replay(pool, channel, cursor, page, start):
                    if accept is None or accept(event.data):
                        yield event
            elif isinstance(item, Event) and cursor.take(item) and (accept is None or accept(item.data)):
                yield item


def subscription_source(
    info: GraphQLResolveInfo,
    channel: str,
    after: str | None = None,
    accept: Callable[[Message], bool] | None = None,
) -> AsyncGenerator[Event, None]:
    """The source of a Subscription field; call it from a plain (not async) source function so
    that a malformed `after` is refused when the client subscribes."""
    cursor = parse_after(after)
    context: Context = info.context
    stream = event_stream(
        context.events,
        context.db,
        channel,
        after=cursor,
        accept=accept,
        queue_size=context.resources.settings.ws_queue_size,
    )
    return _graphql_errors(stream)


async def _graphql_errors(stream: AsyncIterator[Event]) -> AsyncGenerator[Event, None]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        try:
            async for event in stream:
                yield event
        except SlowConsumer as exc:
            # The cursor also as data, for clients that resume without parsing the message.
            extensions = {"after": str(exc.after)} if exc.after is not None else {}
            raise GraphQLError(exc.message, extensions=extensions, original_error=exc) from exc


def resolve_event(event: Event, info: GraphQLResolveInfo, **_: Any) -> Message:
    """The Subscription field's resolver: the event's payload, its id noted for `extensions`."""
    # The operation's context lives as long as the socket: fresh loaders per event, or nested
    # fields (Robot.currentIngot, Task.runs) would be served from the first event's cache.
    info.context.loaders = Loaders(info.context.db)
    # Read back by EventIdSocket in the same task, when this event's result is sent.
    EVENT_ID.set(event.id)
    return event.data


def resolve_event_id(_obj: Any, info: GraphQLResolveInfo, **_: Any) -> str | None:
    """`eventId` of a subscription payload type: the cursor of the event the payload answers.

    The event is the operation's root value while a subscription event executes; only the
    Subscription field's own value answers (its path is one step below the root), so the same
    type nested deeper, or served by a query, answers null. The id is the event's, the same for
    every socket, so shared results stay shared."""
    path = info.path.prev
    if isinstance(info.root_value, Event) and path is not None and path.prev is None:
        return str(info.root_value.id)
    return None
