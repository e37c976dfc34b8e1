"""Live delivery: one channel's messages as a stream for the Subscription resolvers, and the
graphql-transport-ws handler that checks a socket's token once, at `connection_init`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from weakref import WeakKeyDictionary

from ariadne.asgi.handlers import GraphQLTransportWSHandler
from ariadne.asgi.handlers.graphql_transport_ws import ClientContext
from starlette.websockets import WebSocket, WebSocketState

from app.context import Context, Services, token_from_init_payload
from app.errors import Unauthenticated
from app.loaders import Loaders
from app.pubsub import Events

log = logging.getLogger("sepulki.realtime")

Message = dict[str, Any]

# Per event bus, so two apps in one process (tests, embedded mode) never mix their counts.
_live: WeakKeyDictionary[Events, Counter[str]] = WeakKeyDictionary()


def live_subscriptions(events: Events, channel: str) -> int:
    """Streams currently listening on `channel` in this process (for metrics and readiness checks)."""
    return _live.get(events, Counter())[channel]


async def channel_messages(
    events: Events, channel: str, accept: Callable[[Message], bool] | None = None
) -> AsyncIterator[Message]:
    """Decoded messages of one channel, those `accept` rejects left out; unsubscribes on close."""
    async with events.subscribe(channel) as messages:
        counts = _live.setdefault(events, Counter())
        # Counted only once the bus has registered us: a message published after this is delivered.
        counts[channel] += 1
        try:
            async for message in messages:
                if accept is None or accept(message):
                    yield message
        finally:
            counts[channel] -= 1


_EXPIRY_TIMER = "sepulki.expiry_timer"


class AuthenticatingWSHandler(GraphQLTransportWSHandler):
    """graphql-transport-ws that refuses a socket whose `connection_init` token is forged, expired
    or revoked: closed with 4403 at once, rather than failing each later subscribe. No token at
    all is an anonymous socket, which may still use the public fields. A signed-in socket is
    closed with 4403 when its token expires, since the viewer is not re-checked per event."""

    def __init__(self, services: Callable[[], Services | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._services = services

    async def handle_websocket(self, websocket: WebSocket) -> None:
        try:
            await super().handle_websocket(websocket)
        finally:
            timer = websocket.scope.pop(_EXPIRY_TIMER, None)
            if timer is not None:
                timer.cancel()

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
        expires_at: int | None = None
        if token is not None:
            verdict = await self._verify(websocket, token)
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

    async def _verify(self, websocket: WebSocket, token: str) -> int | tuple[int, str]:
        """The token's expiry (epoch seconds), or the close code and reason refusing it."""
        services = self._services()
        if services is None:
            return 1013, "Starting, try again later"
        try:
            expires_at = services.tokens.verify(token).expires_at
        except Unauthenticated:
            return 4403, "Forbidden"
        # The same check an HTTP request gets, which also asks whether the session is still live.
        context = Context(services, websocket, token, Loaders(services.db))
        try:
            viewer = await context.viewer()
        except Exception:
            log.exception("websocket authentication failed")
            return 1011, "Internal server error"
        return expires_at if viewer is not None else (4403, "Forbidden")

    async def _close_at_expiry(
        self, websocket: WebSocket, client_context: ClientContext, expires_at: int
    ) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        # Operations stop first: a result sent after the close would fail inside Ariadne's tasks.
        for operation_id in list(client_context.operations):
            await self.stop_websocket_operation(websocket, operation_id, client_context)
        if WebSocketState.DISCONNECTED not in (websocket.client_state, websocket.application_state):
            await websocket.close(code=4403, reason="Token expired")
