"""Live delivery: the streams behind every subscription (GraphQL and SSE), and the
graphql-transport-ws handler that checks a socket's token once, at `connection_init`.

A stream (`event_stream`) follows one channel of app.pubsub with an optional `after` cursor:

1. subscribe to the channel first (app.pubsub confirms the subscription with a probe);
2. replay from event_log the committed events with id > `after`, page by page;
3. continue live, dropping events already delivered (replayed, then received live too).

Live events are never dropped for having an id below the last delivered one: ids are taken when a
transaction writes its event, so a transaction that commits later may carry a lower id. When
app.pubsub marks a stretch where messages may be missing (LOST ... BACK: Redis restarted, or the
subscription was made while it was down), the stream replays event_log at BACK after the highest
id it had delivered at LOST, so what was committed during an outage still arrives. A stream
subscribed without `after` takes the newest event_log id at subscription time as its starting
point for that. Known limit: an event whose transaction took its id before, but committed after,
an event already delivered and then went missing in an outage is only replayed to clients that
resume with an older `after`.

Clients read each event's id, the cursor to resume from, in the `extensions` of its
graphql-transport-ws `next` message: `{"payload": {"data": ..., "extensions": {"eventId": "42"}}}`
(the payload types of the reference API stay unchanged). They pass it back as `after: "42"`.

A subscriber that falls `settings.ws_queue_size` events behind is stopped (see app.pubsub): its
operation ends with a `next` carrying one error, `extensions: {code: RATE_LIMITED, after: "<last
delivered id>"}`, then `complete`; the socket and its other operations stay open.

Execute once, send many: subscriptions run on `SharedEventExecutor`. Sockets running the same
document (one DocumentNode per query text, from the parse cache) with the same variables, for
viewers of the same role and permissions, share one execution and one JSON text per event. This
holds because fields of types reachable from subscriptions depend on nothing else of the viewer
(identity only matters to some Query and Mutation fields): keep it so.

Another subscription (e.g. commandUpdates) plugs in with two lines:

    @subscription.source("commandUpdates")
    def source(_, info, robot_id=None, after=None):
        return realtime.subscription_source(info, channels.commands(robot_id), after)

    subscription.set_field("commandUpdates", realtime.resolve_event)

and a channel-level consumer (SSE with Last-Event-ID) iterates `event_stream(...)`, whose
`Event.id` is the cursor, catching `SlowConsumer` (its `.after` is the cursor to resume from).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from inspect import isawaitable
from typing import Any
from weakref import WeakKeyDictionary

import asyncpg
import orjson
from ariadne.asgi.handlers import GraphQLTransportWSHandler
from ariadne.asgi.handlers.graphql_transport_ws import ClientContext
from ariadne.graphql import parse_query, subscribe, validate_data
from ariadne.logger import log_error
from ariadne.types import Operation
from ariadne.utils import get_operation_type
from graphql import GraphQLError, GraphQLResolveInfo, GraphQLSchema
from graphql.execution.executor_throwing_on_incremental import ExecutorThrowingOnIncremental
from graphql.language import OperationType
from starlette.websockets import WebSocket, WebSocketState

from app import eventlog, sessions
from app.context import Context, Services, Viewer, token_from_init_payload
from app.db import Pool
from app.errors import DomainError, Invalid, Unauthenticated
from app.loaders import Loaders
from app.pubsub import BACK, DEFAULT_QUEUE_SIZE, LOST, Event, Events, SubscriberOverflow, channels

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
) -> AsyncIterator[Event]:
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
        queue_size=context.services.settings.ws_queue_size,
    )
    return _graphql_errors(stream)


async def _graphql_errors(stream: AsyncIterator[Event]) -> AsyncIterator[Event]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        try:
            async for event in stream:
                yield event
        except SlowConsumer as exc:
            # The cursor also as data, for clients that resume without parsing the message.
            extensions = {"after": str(exc.after)} if exc.after is not None else {}
            raise GraphQLError(exc.message, extensions=extensions, original_error=exc) from exc


_EVENT_ID: ContextVar[int | None] = ContextVar("sepulki_event_id", default=None)


def resolve_event(event: Event, info: GraphQLResolveInfo, **_: Any) -> Message:
    """The Subscription field's resolver: the event's payload, its id noted for `extensions`."""
    # The operation's context lives as long as the socket: fresh loaders per event, or nested
    # fields (Robot.currentIngot, Task.runs) would be served from the first event's cache.
    info.context.loaders = Loaders(info.context.db)
    # Read back by _EventIdSocket in the same task, when this event's result is sent.
    _EVENT_ID.set(event.id)
    return event.data


class _SharedResults:
    """Execute once, send many: the result of one event for one selection, computed by the first
    operation that needs it and reused by the others, with its JSON text.

    Operations share a result when they run the same parsed document (the parse cache hands out
    one DocumentNode per query text) with the same variables, for viewers of the same role and
    permissions: the fields of types reachable from subscriptions depend on nothing else (the
    viewer's identity only matters to Query and Mutation fields). Results of the latest
    `keep` events are kept; a subscriber further behind computes its own."""

    def __init__(self, keep: int = 512) -> None:
        self._keep = keep
        self._events: OrderedDict[int, dict[tuple[Any, ...], tuple[Any, asyncio.Future[Any]]]] = OrderedDict()

    def result(self, event_id: int, key: tuple[Any, ...], anchor: Any, compute: Callable[[], Any]) -> Any:
        """The shared (awaitable) result; `anchor` is kept alive so that ids in `key` stay unique."""
        results = self._events.get(event_id)
        if results is None:
            results = self._events[event_id] = {}
            if len(self._events) > self._keep:
                self._events.popitem(last=False)
        entry = results.get(key)
        if entry is None:
            value = compute()
            if not isawaitable(value):
                # Computed at once (no resolver awaited anything): the other sockets take it
                # from `done` without an executor of their own.
                computed = asyncio.get_running_loop().create_future()
                computed.set_result(value)
                results[key] = (anchor, computed)
                return value
            # Its own task: a subscriber leaving mid-execution cannot cancel it for the others.
            entry = results[key] = (anchor, asyncio.ensure_future(_awaited(value)))
        return asyncio.shield(entry[1])

    def done(self, event_id: int, key: tuple[Any, ...]) -> Any:
        """The result when it is already computed (and succeeded), else None."""
        results = self._events.get(event_id)
        entry = results.get(key) if results is not None else None
        if entry is None or not entry[1].done() or entry[1].cancelled() or entry[1].exception():
            return None
        return entry[1].result()


_TEXTS: OrderedDict[int, tuple[Any, str]] = OrderedDict()


def _texts(data: Any) -> str:
    """The JSON of a result's `data`, serialised once however many sockets send it (keyed by the
    object, which the entry keeps alive so that its id is not reused)."""
    cached = _TEXTS.get(id(data))
    if cached is not None and cached[0] is data:
        return cached[1]
    text = orjson.dumps(data).decode()
    _TEXTS[id(data)] = (data, text)
    if len(_TEXTS) > 512:
        _TEXTS.popitem(last=False)
    return text


async def _awaited(value: Any) -> Any:
    return await value if isawaitable(value) else value


# One per schema, i.e. per application (tests and embedded mode may run several in a process).
_SHARED: WeakKeyDictionary[GraphQLSchema, _SharedResults] = WeakKeyDictionary()


def _shared(schema: GraphQLSchema) -> _SharedResults:
    shared = _SHARED.get(schema)
    if shared is None:
        shared = _SHARED[schema] = _SharedResults()
    return shared


class _Ready:
    """A per-event "executor" whose result another operation already computed."""

    __slots__ = ("_result",)

    def __init__(self, result: Any) -> None:
        self._result = result

    def execute_operation(self, serially: bool | None = None) -> Any:
        return self._result


_UNKNOWN: Any = object()


class SharedEventExecutor(ExecutorThrowingOnIncremental):
    """The executor of subscription operations: notes each event's id for `extensions.eventId`
    and shares per-event results between identical operations (`_SharedResults`)."""

    _share_key: Any = _UNKNOWN

    def _key(self) -> tuple[Any, ...] | None:
        """What makes two operations' results identical; None when this one shares nothing."""
        if self._share_key is _UNKNOWN:
            # The viewer was loaded when the subscription's permission was checked.
            viewer = getattr(self.context_value, "_viewer", None)
            key: tuple[Any, ...] | None = None
            if isinstance(viewer, Viewer):
                variables = tuple(sorted(self.variable_values.coerced.items()))
                key = (id(self.operation), variables, viewer.role, viewer.permissions)
                try:
                    hash(key)
                except TypeError:  # an input object among the variables
                    key = None
            self._share_key = key
        return self._share_key  # type: ignore[no-any-return]

    def build_per_event_executor(self, payload: Any) -> Any:
        if isinstance(payload, Event):
            key = self._key()
            if key is not None:
                done = _shared(self.schema).done(payload.id, key)
                if done is not None:
                    # Computed for another socket: no copy of the executor, no execution.
                    _EVENT_ID.set(payload.id)
                    return _Ready(done)
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> Any:
        event = self.root_value
        if not isinstance(event, Event):
            return super().execute_operation(serially)
        _EVENT_ID.set(event.id)
        key = self._key()
        if key is None:
            return super().execute_operation(serially)
        compute = super().execute_operation
        return _shared(self.schema).result(event.id, key, self.operation, lambda: compute(serially))


class _EventIdSocket:
    """The operation's websocket as Ariadne's result loop sees it: each `next` message gets the
    id of the event it answers in `payload.extensions.eventId`, and a shared result is sent as
    the JSON text serialised once for all sockets."""

    __slots__ = ("_websocket",)

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._websocket, name)

    async def send_json(self, message: dict[str, Any]) -> None:
        event_id = _EVENT_ID.get()
        if event_id is None or message.get("type") != "next":
            await self._websocket.send_json(message)
            return
        _EVENT_ID.set(None)
        payload = message["payload"]
        if payload.keys() == {"data"}:
            text = (
                f'{{"type":"next","id":{orjson.dumps(message["id"]).decode()},"payload":{{"data":'
                f'{_texts(payload["data"])},"extensions":{{"eventId":"{event_id}"}}}}}}'
            )
            await self._websocket.send_text(text)
            return
        payload["extensions"] = {**payload.get("extensions", {}), "eventId": str(event_id)}
        await self._websocket.send_json(message)


_EXPIRY_TIMER = "sepulki.expiry_timer"
_SESSION_SOCKET = "sepulki.session_socket"
SESSION_REVOKED = "Session revoked"


class _SessionSocket:
    """A signed-in socket, filed under the id of the session its token belongs to."""

    __slots__ = ("answered", "client_context", "reason", "revoked", "session_id", "websocket")

    def __init__(self, websocket: WebSocket, client_context: ClientContext, session_id: str) -> None:
        self.websocket = websocket
        self.client_context = client_context
        self.session_id = session_id
        # Set once `connection_init` is answered: a revocation closes the socket after that,
        # never in the middle of the handshake.
        self.answered = asyncio.Event()
        self.revoked = False
        self.reason = SESSION_REVOKED


class SessionSockets:
    """The signed-in sockets of this process by session id, closed when their session is revoked.

    Revocations arrive on `channels.SESSIONS_REVOKED` (app.sessions announces them after the
    commit) from this replica or any other sharing Redis; one listener per process runs while a
    signed-in socket is open. Where messages may have been missed (BACK after LOST, or the
    listener's queue overflowing), the session of every open socket is checked again in
    PostgreSQL. A session revoked without an announcement (plain SQL) is only noticed then."""

    def __init__(self, close: Callable[[_SessionSocket], Awaitable[None]]) -> None:
        self._close = close
        self._sockets: dict[str, set[_SessionSocket]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()

    async def add(self, services: Services, entry: _SessionSocket) -> None:
        """Files the socket; returns once a revocation announced from now on reaches it (or once
        the transport is known to be down, in which case the check at BACK covers it)."""
        self._sockets.setdefault(entry.session_id, set()).add(entry)
        if self._listener is None or self._listener.done():
            self._listening = asyncio.Event()
            self._listener = asyncio.create_task(
                self._listen(services, self._listening), name="ws:sessions-revoked"
            )
        await self._listening.wait()

    def discard(self, entry: _SessionSocket) -> None:
        entries = self._sockets.get(entry.session_id)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del self._sockets[entry.session_id]
        if not self._sockets and self._listener is not None:
            self._listener.cancel()
            self._listener = None

    def revoke(self, session_ids: list[str], reason: str = SESSION_REVOKED) -> None:
        """Closes (4403, `reason`) every socket of these sessions."""
        for session_id in session_ids:
            for entry in list(self._sockets.get(str(session_id), ())):
                if not entry.revoked:
                    entry.revoked = True
                    entry.reason = reason
                    task = asyncio.create_task(self._close_when_answered(entry))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    async def _close_when_answered(self, entry: _SessionSocket) -> None:
        await entry.answered.wait()
        await self._close(entry)

    async def _listen(self, services: Services, listening: asyncio.Event) -> None:
        stale = False
        try:
            while True:
                try:
                    async with services.events.listen(channels.SESSIONS_REVOKED) as subscriber:
                        listening.set()
                        if stale:
                            await self._recheck(services)
                        async for item in subscriber:
                            if isinstance(item, Event):
                                data = item.data
                                self.revoke(
                                    list(data.get("sessionIds") or []),
                                    str(data.get("reason") or SESSION_REVOKED),
                                )
                            elif item is BACK:
                                await self._recheck(services)
                except SubscriberOverflow:
                    log.warning("the session revocation listener fell behind; re-checking open sockets")
                    stale = True
                except Exception:
                    log.exception("the session revocation listener failed; restarting it")
                    stale = True
                    await asyncio.sleep(1.0)
        finally:
            listening.set()

    async def _recheck(self, services: Services) -> None:
        try:
            live = await sessions.live_session_ids(services.db, list(self._sockets))
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("re-checking the sessions of open websockets failed: %r", exc)
            return
        self.revoke([session_id for session_id in self._sockets if session_id not in live])


class AuthenticatingWSHandler(GraphQLTransportWSHandler):
    """graphql-transport-ws that refuses a socket whose `connection_init` token is forged, expired
    or revoked: closed with 4403 at once, rather than failing each later subscribe. No token at
    all is an anonymous socket, which may still use the public fields. A signed-in socket is
    closed with 4403 when its token expires ("Token expired"), since the viewer is not re-checked
    per event, and when its session is revoked ("Session revoked", see SessionSockets)."""

    def __init__(self, services: Callable[[], Services | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._services = services
        self.sessions = SessionSockets(self._close_revoked)

    async def handle_websocket(self, websocket: WebSocket) -> None:
        try:
            await super().handle_websocket(websocket)
        finally:
            timer = websocket.scope.pop(_EXPIRY_TIMER, None)
            if timer is not None:
                timer.cancel()
            entry = websocket.scope.pop(_SESSION_SOCKET, None)
            if entry is not None:
                self.sessions.discard(entry)

    async def handle_websocket_subscribe(
        self,
        websocket: WebSocket,
        data: Any,
        operation_id: str,
        client_context: ClientContext,
    ) -> None:
        """Ariadne 1.1's, but for one thing: subscriptions run on SharedEventExecutor."""
        if not client_context.connection_acknowledged:
            await websocket.close(code=4401)
            return
        if operation_id in client_context.operations:
            await websocket.close(code=4409)
            return
        validate_data(data)
        context_value = await self.get_context_for_request(websocket, data)
        try:
            query_document = parse_query(context_value, self.query_parser, data)
            operation_type = get_operation_type(query_document, data.get("operationName"))
        except GraphQLError as error:
            log_error(error, self.logger)
            payload = [self.error_formatter(error, self.debug)]
            await websocket.send_json({"type": self.GQL_ERROR, "id": operation_id, "payload": payload})
            return
        if operation_type != OperationType.SUBSCRIPTION:
            await super().handle_websocket_subscribe(websocket, data, operation_id, client_context)
            return
        assert self.schema is not None, "configure() sets the schema"
        success, results = await subscribe(
            self.schema,
            data,
            context_value=context_value,
            root_value=self.root_value,
            query_document=query_document,
            query_validator=self.query_validator,
            validation_rules=self.validation_rules,
            debug=self.debug,
            introspection=self.introspection,
            logger=self.logger,
            error_formatter=self.error_formatter,
            executor_class=SharedEventExecutor,
        )
        if not success:
            errors = results if isinstance(results, list) else [results]
            await websocket.send_json({"type": self.GQL_ERROR, "id": operation_id, "payload": errors})
            return
        operation = Operation(id=operation_id, name=data.get("operationName"), generator=results)
        client_context.operations[operation_id] = operation
        if self.on_operation:
            try:
                result = self.on_operation(websocket, operation)
                if result and isawaitable(result):
                    await result
            except Exception as error:
                if not isinstance(error, GraphQLError):
                    error = GraphQLError(str(error), original_error=error)
                log_error(error, self.logger)
        # Kept so that a `complete` from the client can cancel it.
        client_context.operation_tasks[operation_id] = asyncio.ensure_future(
            self.observe_async_results(websocket, results, operation_id, client_context)
        )

    async def observe_async_results(
        self,
        websocket: WebSocket,
        results_producer: Any,
        operation_id: str,
        client_context: ClientContext,
    ) -> None:
        # Runs as one task per operation, so the event id its resolver noted is this operation's.
        await super().observe_async_results(
            _EventIdSocket(websocket),  # type: ignore[arg-type]
            results_producer,
            operation_id,
            client_context,
        )

    async def handle_websocket_connection_init_message(
        self, websocket: WebSocket, message: dict, client_context: ClientContext
    ) -> None:
        if client_context.connection_init_received:
            await super().handle_websocket_connection_init_message(websocket, message, client_context)
            return
        # Ariadne leaves its init timer asleep for the whole minute; it has nothing left to do.
        if client_context.connection_init_timeout_task is not None:
            client_context.connection_init_timeout_task.cancel()
        token = token_from_init_payload(message.get("payload"))
        try:
            expires_at: int | None = None
            if token is not None:
                verdict = await self._verify(websocket, client_context, token)
                if isinstance(verdict, tuple):
                    client_context.connection_init_received = True
                    await websocket.close(code=verdict[0], reason=verdict[1])
                    return
                expires_at = verdict
            # The parent runs on_connect (which keeps the token in the scope) and sends connection_ack.
            await super().handle_websocket_connection_init_message(websocket, message, client_context)
            if expires_at is not None and client_context.connection_acknowledged:
                websocket.scope[_EXPIRY_TIMER] = asyncio.create_task(
                    self._close_at_expiry(websocket, client_context, expires_at)
                )
        finally:
            entry = websocket.scope.get(_SESSION_SOCKET)
            if entry is not None:
                entry.answered.set()

    async def _verify(
        self, websocket: WebSocket, client_context: ClientContext, token: str
    ) -> int | tuple[int, str]:
        """The token's expiry (epoch seconds), or the close code and reason refusing it."""
        services = self._services()
        if services is None:
            return 1013, "Starting, try again later"
        try:
            claims = services.tokens.verify(token)
        except Unauthenticated:
            return 4403, "Forbidden"
        # Filed and watched before the session is checked: a revocation committed after the
        # check is announced to a listener that already knows this socket.
        entry = _SessionSocket(websocket, client_context, claims.session_id)
        websocket.scope[_SESSION_SOCKET] = entry
        await self.sessions.add(services, entry)
        # The same check an HTTP request gets, which also asks whether the session is still live.
        context = Context(services, websocket, token, Loaders(services.db))
        try:
            viewer = await context.viewer()
        except Exception:
            log.exception("websocket authentication failed")
            return 1011, "Internal server error"
        return claims.expires_at if viewer is not None else (4403, "Forbidden")

    async def _close_at_expiry(
        self, websocket: WebSocket, client_context: ClientContext, expires_at: int
    ) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self._shut(websocket, client_context, "Token expired")

    async def _close_revoked(self, entry: _SessionSocket) -> None:
        await self._shut(entry.websocket, entry.client_context, entry.reason)

    async def _shut(self, websocket: WebSocket, client_context: ClientContext, reason: str) -> None:
        """Closes a signed-in socket with 4403 and `reason`."""
        # Operations stop first: a result sent after the close would fail inside Ariadne's tasks.
        for operation_id in list(client_context.operations):
            await self.stop_websocket_operation(websocket, operation_id, client_context)
        if WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
            # The client may be gone meanwhile: nothing left to tell it.
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(code=4403, reason=reason)
