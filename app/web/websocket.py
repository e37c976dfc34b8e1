"""The graphql-transport-ws handler: a socket's token is checked once, at `connection_init`;
signed-in sockets close (4403) when their token expires or their session is revoked; subscription
operations run on the application's SharedEventExecutor. What one client may hold and send
(app/web/ws_limits.py) is enforced here: sockets per IP and per smith, messages per second,
subscriptions per socket and per smith, the connection_init wait and anonymous idle sockets.
Every frame is checked against the protocol first (app/web/ws_protocol.py, docs/realtime.md).
Longer than 400 lines: each rule hooks into one of Ariadne's protocol methods, and those overrides
read best side by side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import timedelta
from inspect import isawaitable
from typing import Any, cast

import asyncpg
from ariadne.asgi.handlers import GraphQLTransportWSHandler
from ariadne.asgi.handlers.graphql_transport_ws import ClientContext
from ariadne.graphql import parse_query, subscribe, validate_data
from ariadne.logger import log_error
from ariadne.types import Operation
from ariadne.utils import get_operation_type
from graphql import ExecutionResult, GraphQLError
from graphql.language import OperationType
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app import sessions
from app.context import token_from_init_payload
from app.core.channels import channels
from app.core.errors import Unauthenticated
from app.infra.bus import BACK, Event, SubscriberOverflow
from app.realtime.shared import EventIdSocket, SharedEventExecutor
from app.resources import Resources
from app.settings import Settings
from app.web import ws_limits, ws_protocol
from app.web.connection import context_for
from app.web.ws_limits import SocketLimits, SocketState

log = logging.getLogger("sepulki.realtime")


_EXPIRY_TIMER = "sepulki.expiry_timer"
_IDLE_TIMER = "sepulki.idle_timer"
_SESSION_SOCKET = "sepulki.session_socket"
_LIMITS = "sepulki.ws_limits"
SESSION_REVOKED = "Session revoked"
INIT_TIMEOUT = "Connection initialisation timeout"
IDLE = "Idle"


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

    async def add(self, resources: Resources, entry: _SessionSocket) -> None:
        """Files the socket; returns once a revocation announced from now on reaches it (or once
        the transport is known to be down, in which case the check at BACK covers it)."""
        self._sockets.setdefault(entry.session_id, set()).add(entry)
        if self._listener is None or self._listener.done():
            self._listening = asyncio.Event()
            self._listener = asyncio.create_task(
                self._listen(resources, self._listening), name="ws:sessions-revoked"
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

    async def _listen(self, resources: Resources, listening: asyncio.Event) -> None:
        stale = False
        try:
            while True:
                try:
                    async with resources.events.listen(channels.SESSIONS_REVOKED) as subscriber:
                        listening.set()
                        if stale:
                            await self._recheck(resources)
                        async for item in subscriber:
                            if isinstance(item, Event):
                                data = item.data
                                self.revoke(
                                    list(data.get("sessionIds") or []),
                                    str(data.get("reason") or SESSION_REVOKED),
                                )
                            elif item is BACK:
                                await self._recheck(resources)
                except SubscriberOverflow:
                    log.warning("the session revocation listener fell behind; re-checking open sockets")
                    stale = True
                except Exception:
                    log.exception("the session revocation listener failed; restarting it")
                    stale = True
                    await asyncio.sleep(1.0)
        finally:
            listening.set()

    async def _recheck(self, resources: Resources) -> None:
        try:
            live = await sessions.live_session_ids(resources.db, list(self._sockets))
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("re-checking the sessions of open websockets failed: %r", exc)
            return
        self.revoke([session_id for session_id in self._sockets if session_id not in live])


class AuthenticatingWSHandler(GraphQLTransportWSHandler):
    """graphql-transport-ws that refuses a socket whose `connection_init` token is forged, expired
    or revoked: closed with 4403 at once, rather than failing each later subscribe. No token at
    all is an anonymous socket, which may still use the public fields. A signed-in socket is
    closed with 4403 when its token expires ("Token expired"), since the viewer is not re-checked
    per event, and when its session is revoked ("Session revoked", see SessionSockets).

    Limits (docs/security.md): a socket past its IP's or its smith's socket cap, or sending
    messages faster than its token bucket allows, is closed with 4429; a subscription past the
    socket's or the smith's cap gets an `error` (RATE_LIMITED) and the socket stays open;
    no `connection_init` in time closes with 4408, and an anonymous socket running nothing closes
    (1000 "Idle") once idle."""

    def __init__(self, resources: Callable[[], Resources | None], settings: Settings, **kwargs: Any) -> None:
        kwargs.setdefault("connection_init_wait_timeout", timedelta(seconds=settings.ws_init_timeout_s))
        super().__init__(**kwargs)
        self._resources = resources
        self.executor = SharedEventExecutor.for_app()
        self.sessions = SessionSockets(self._close_revoked)
        self.limits = SocketLimits(settings)
        self.anonymous_idle_s = settings.ws_anonymous_idle_s

    async def handle_websocket(self, websocket: WebSocket) -> None:
        client = websocket.client
        state = self.limits.admit_socket(client.host if client else "unknown")
        if state is None:
            # Accepted to be closed: the close code reaches the client, a refused handshake's does not.
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.accept("graphql-transport-ws")
                await websocket.close(code=ws_limits.CLOSE_TOO_MANY, reason=ws_limits.TOO_MANY_CONNECTIONS)
            return
        websocket.scope[_LIMITS] = state
        try:
            await self._serve(websocket)
        finally:
            for name in (_EXPIRY_TIMER, _IDLE_TIMER):
                timer = websocket.scope.pop(name, None)
                if timer is not None:
                    timer.cancel()
            entry = websocket.scope.pop(_SESSION_SOCKET, None)
            if entry is not None:
                self.sessions.discard(entry)
            self.limits.release_socket(state)

    async def _serve(self, websocket: WebSocket) -> None:
        """Ariadne's receive loop, but frames are decoded and checked here: a frame that is not a
        valid graphql-transport-ws message closes the socket with 4400 (Ariadne's loop would raise
        and leave uvicorn to close with 1011), and a failure while handling a message closes it
        with 4500 rather than dropping the connection."""
        await websocket.accept("graphql-transport-ws")
        client_context = ClientContext()
        client_context.connection_init_timeout_task = asyncio.create_task(
            self.handle_connection_init_timeout(websocket, client_context)
        )
        try:
            while WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                message = ws_protocol.decode(frame)
                if isinstance(message, ws_protocol.Invalid):
                    bad = ws_protocol.CLOSE_BAD_REQUEST
                    await self._close(websocket, client_context, bad, message.reason)
                    break
                try:
                    await self.handle_websocket_message(websocket, message, client_context)
                except Exception:
                    log.exception("handling a websocket message failed")
                    internal = ws_protocol.CLOSE_INTERNAL
                    await self._close(websocket, client_context, internal, ws_protocol.INTERNAL)
                    break
        except WebSocketDisconnect:
            pass
        finally:
            timeout_task = client_context.connection_init_timeout_task
            if timeout_task is not None:
                timeout_task.cancel()
            for operation_id in list(client_context.operations):
                await self.stop_websocket_operation(websocket, operation_id, client_context)
            if self.on_disconnect:
                try:
                    result = self.on_disconnect(websocket)
                    if result and isawaitable(result):
                        await result
                except Exception:
                    log.exception("the websocket disconnect hook failed")

    async def handle_websocket_message(
        self, websocket: WebSocket, message: dict, client_context: ClientContext
    ) -> None:
        state: SocketState | None = websocket.scope.get(_LIMITS)
        if state is not None and not state.bucket.take():
            too_many = ws_limits.CLOSE_TOO_MANY
            await self._close(websocket, client_context, too_many, ws_limits.TOO_MANY_MESSAGES)
            return
        if not isinstance(message, dict):
            # What Ariadne answers a message of an unknown type; it would fail on a non-object.
            await self._close(websocket, client_context, 4400, "Invalid message")
            return
        if state is not None and message.get("type") == self.GQL_SUBSCRIBE:
            state.active_at = time.monotonic()
        await super().handle_websocket_message(websocket, message, client_context)

    async def handle_connection_init_timeout(
        self, websocket: WebSocket, client_context: ClientContext
    ) -> None:
        """Ariadne's, with the reason graphql-transport-ws names."""
        await asyncio.sleep(self.connection_init_wait_timeout.total_seconds())
        if not client_context.connection_init_received:
            await self._close(websocket, client_context, 4408, INIT_TIMEOUT)

    async def handle_websocket_subscribe(
        self,
        websocket: WebSocket,
        data: Any,
        operation_id: str,
        client_context: ClientContext,
    ) -> None:
        """Ariadne 1.1's, but subscriptions run on SharedEventExecutor and each takes a slot of the
        socket's and the smith's caps until it ends."""
        if not client_context.connection_acknowledged:
            unauthorized = ws_protocol.CLOSE_UNAUTHORIZED
            await self._close(websocket, client_context, unauthorized, ws_protocol.UNAUTHORIZED)
            return
        if operation_id in client_context.operations:
            exists = ws_protocol.CLOSE_SUBSCRIBER_EXISTS
            reason = f"Subscriber for {operation_id} already exists"
            await self._close(websocket, client_context, exists, reason)
            return
        context_value = await self.get_context_for_request(websocket, data)
        try:
            # The message's shape was checked (ws_protocol); this refuses what Ariadne refuses
            # beyond it, such as an empty query, as an `error` for the operation.
            validate_data(data)
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
        state: SocketState | None = websocket.scope.get(_LIMITS)
        smith_id = state.smith_id if state is not None else None
        if state is not None:
            refusal = self.limits.reserve_subscription(state)
            if refusal is not None:
                refused = GraphQLError(refusal, extensions={"code": "RATE_LIMITED"})
                payload = [self.error_formatter(refused, self.debug)]
                await websocket.send_json({"type": self.GQL_ERROR, "id": operation_id, "payload": payload})
                return
        try:
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
                executor_class=self.executor,
            )
        except BaseException:
            if state is not None:
                self.limits.release_subscription(state, smith_id)
            raise
        if not success:
            if state is not None:
                self.limits.release_subscription(state, smith_id)
            errors = results if isinstance(results, list) else [results]
            await websocket.send_json({"type": self.GQL_ERROR, "id": operation_id, "payload": errors})
            return
        # ariadne's result type does not tie the results to `success`: on success, the stream.
        stream = cast(AsyncGenerator[ExecutionResult, None], results)
        operation = Operation(id=operation_id, name=data.get("operationName"), generator=stream)
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
        task = client_context.operation_tasks[operation_id] = asyncio.ensure_future(
            self.observe_async_results(websocket, results, operation_id, client_context)
        )
        if state is not None:
            # However the operation ends (its stream, `complete`, the socket closing), its slot frees.
            task.add_done_callback(lambda _task: self.limits.release_subscription(state, smith_id))

    async def observe_async_results(
        self,
        websocket: WebSocket,
        results_producer: Any,
        operation_id: str,
        client_context: ClientContext,
    ) -> None:
        # Runs as one task per operation, so the event id its resolver noted is this operation's.
        await super().observe_async_results(
            EventIdSocket(websocket, self.executor),  # type: ignore[arg-type]
            results_producer,
            operation_id,
            client_context,
        )

    async def handle_websocket_connection_init_message(
        self, websocket: WebSocket, message: dict, client_context: ClientContext
    ) -> None:
        if client_context.connection_init_received:
            many = ws_protocol.CLOSE_TOO_MANY_INITS
            await self._close(websocket, client_context, many, ws_protocol.TOO_MANY_INITS)
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
            elif token is None and client_context.connection_acknowledged:
                websocket.scope[_IDLE_TIMER] = asyncio.create_task(
                    self._close_when_idle(websocket, client_context)
                )
        finally:
            entry = websocket.scope.get(_SESSION_SOCKET)
            if entry is not None:
                entry.answered.set()

    async def _verify(
        self, websocket: WebSocket, client_context: ClientContext, token: str
    ) -> int | tuple[int, str]:
        """The token's expiry (epoch seconds), or the close code and reason refusing it."""
        resources = self._resources()
        if resources is None:
            return 1013, "Starting, try again later"
        try:
            claims = resources.tokens.verify(token)
        except Unauthenticated:
            return 4403, "Forbidden"
        # Filed and watched before the session is checked: a revocation committed after the
        # check is announced to a listener that already knows this socket.
        entry = _SessionSocket(websocket, client_context, claims.session_id)
        websocket.scope[_SESSION_SOCKET] = entry
        await self.sessions.add(resources, entry)
        # The same check an HTTP request gets, which also asks whether the session is still live.
        context = context_for(resources, websocket, token)
        try:
            viewer = await context.viewer()
        except Exception:
            log.exception("websocket authentication failed")
            return ws_protocol.CLOSE_INTERNAL, ws_protocol.INTERNAL
        if viewer is None:
            return 4403, "Forbidden"
        state: SocketState | None = websocket.scope.get(_LIMITS)
        if state is not None and not self.limits.admit_smith(state, viewer.id):
            return ws_limits.CLOSE_TOO_MANY, ws_limits.TOO_MANY_CONNECTIONS
        return claims.expires_at

    async def _close_at_expiry(
        self, websocket: WebSocket, client_context: ClientContext, expires_at: int
    ) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self._shut(websocket, client_context, "Token expired")

    async def _close_when_idle(self, websocket: WebSocket, client_context: ClientContext) -> None:
        """Closes an anonymous socket once it has run nothing and sent no subscribe message for
        `anonymous_idle_s` (pings do not count: they would keep a socket for ever)."""
        state: SocketState | None = websocket.scope.get(_LIMITS)
        if state is None:
            return
        state.active_at = time.monotonic()
        while True:
            wait = state.active_at + self.anonymous_idle_s - time.monotonic()
            if wait <= 0 and not client_context.operations:
                await self._close(websocket, client_context, 1000, IDLE)
                return
            await asyncio.sleep(wait if wait > 0 else self.anonymous_idle_s)

    async def _close_revoked(self, entry: _SessionSocket) -> None:
        await self._shut(entry.websocket, entry.client_context, entry.reason)

    async def _shut(self, websocket: WebSocket, client_context: ClientContext, reason: str) -> None:
        """Closes a signed-in socket with 4403 and `reason`."""
        await self._close(websocket, client_context, 4403, reason)

    async def _close(
        self, websocket: WebSocket, client_context: ClientContext, code: int, reason: str
    ) -> None:
        # Operations stop first: a result sent after the close would fail inside Ariadne's tasks.
        for operation_id in list(client_context.operations):
            await self.stop_websocket_operation(websocket, operation_id, client_context)
        if WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
            # The client may be gone meanwhile: nothing left to tell it.
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(code=code, reason=reason)
