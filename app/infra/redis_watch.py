"""The internals of broadcaster 0.3.1's RedisBackend that the bus's supervisor needs (hence the
pin broadcaster<0.4): reconnect hooks, the listener task, reviving it, dropping its connection."""

from __future__ import annotations

import asyncio
from typing import Any

from broadcaster import Broadcast


class RedisWatch:
    """The internals of broadcaster 0.3.1's RedisBackend the supervisor needs."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._hooked_connection: Any = None
        self._hooked_listener: Any = None

    @classmethod
    def of(cls, broadcast: Broadcast) -> RedisWatch | None:
        backend = getattr(broadcast, "_backend", None)
        needed = ("_pubsub", "_listener", "_pubsub_listener")
        if type(backend).__name__ != "RedisBackend" or not all(hasattr(backend, a) for a in needed):
            return None
        return cls(backend)

    def hook(self, on_connect: Any, on_listener_done: Any) -> None:
        """Hears reconnects of the subscriber connection and the end of the listener task."""
        connection = self._backend._pubsub.connection
        if connection is not None and connection is not self._hooked_connection:
            connection.register_connect_callback(on_connect)
            self._hooked_connection = connection
        listener = self._backend._listener
        if listener is not None and listener is not self._hooked_listener:
            listener.add_done_callback(on_listener_done)
            self._hooked_listener = listener

    def listener_failure(self) -> BaseException | None:
        """The error that ended the listener task; None while it runs or once it was cancelled
        (broadcaster's disconnect cancels it: nothing to revive then)."""
        listener = self._backend._listener
        if listener is None or not listener.done() or listener.cancelled():
            return None
        return listener.exception() or RuntimeError("listener stopped")

    def revive(self) -> None:
        """A new listener task; redis-py's PubSub reconnects and re-subscribes its channels."""
        self._backend._listener = asyncio.create_task(self._backend._pubsub_listener())

    async def reset(self) -> None:
        """Drops the subscriber connection so that a listener stuck on a dead socket errors out."""
        connection = self._backend._pubsub.connection
        if connection is not None:
            await connection.disconnect()
