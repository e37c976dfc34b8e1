"""The graphql-transport-ws handler: a socket's token is checked once, at `connection_init`;
signed-in sockets close (4403) when their token expires or their session is revoked; subscription
operations run on the application's SharedEventExecutor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
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
from starlette.websockets import WebSocket, WebSocketState

from app import sessions
from app.context import token_from_init_payload
from app.core.channels import channels
from app.core.errors import Unauthenticated
from app.infra.bus import BACK, Event, SubscriberOverflow
from app.realtime.shared import EventIdSocket, SharedEventExecutor
from app.resources import Resources
from app.web.connection import context_for

log = logging.getLogger("sepulki.realtime")


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
    per event, and when its session is revoked ("Session revoked", see SessionSockets)."""

    def __init__(self, resources: Callable[[], Resources | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resources = resources
        self.executor = SharedEventExecutor.for_app()
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
            executor_class=self.executor,
        )
        if not success:
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
            EventIdSocket(websocket, self.executor),  # type: ignore[arg-type]
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
