"""Live delivery: one channel's messages as a stream for the Subscription resolvers, and the
graphql-transport-ws handler that checks a socket's token once, at `connection_init`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from weakref import WeakKeyDictionary

from ariadne.asgi.handlers import GraphQLTransportWSHandler
from ariadne.asgi.handlers.graphql_transport_ws import ClientContext
from starlette.websockets import WebSocket

from app.context import Context, Services, token_from_init_payload
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


class AuthenticatingWSHandler(GraphQLTransportWSHandler):
    """graphql-transport-ws that refuses a socket whose `connection_init` token is forged, expired
    or revoked: closed with 4403 at once, rather than failing each later subscribe. No token at
    all is an anonymous socket, which may still use the public fields."""

    def __init__(self, services: Callable[[], Services | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._services = services

    async def handle_websocket_connection_init_message(
        self, websocket: WebSocket, message: dict, client_context: ClientContext
    ) -> None:
        if not client_context.connection_init_received:
            token = token_from_init_payload(message.get("payload"))
            if token is not None:
                refusal = await self._refusal(websocket, token)
                if refusal is not None:
                    client_context.connection_init_received = True
                    code, reason = refusal
                    await websocket.close(code=code, reason=reason)
                    return
        # The parent answers a second init with 4429, runs on_connect and sends connection_ack.
        await super().handle_websocket_connection_init_message(websocket, message, client_context)

    async def _refusal(self, websocket: WebSocket, token: str) -> tuple[int, str] | None:
        services = self._services()
        if services is None:
            return 1013, "Starting, try again later"
        # The same check an HTTP request gets: signature, expiry, and a live session.
        context = Context(services, websocket, token, Loaders(services.db))
        try:
            viewer = await context.viewer()
        except Exception:
            log.exception("websocket authentication failed")
            return 1011, "Internal server error"
        return None if viewer is not None else (4403, "Forbidden")
