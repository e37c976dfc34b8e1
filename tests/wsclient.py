"""A small graphql-transport-ws client for the tests, on the `websockets` package.

    async with subscribe(url, QUERY, {"id": robot_id}, init={"authToken": jwt}) as updates:
        data = await updates.next()

A refused `connection_init` surfaces as websockets' `ConnectionClosed` (its `rcvd.code` is the
close code); an `error` message or a `next` carrying errors raises `SubscriptionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PROTOCOL = "graphql-transport-ws"


class SubscriptionError(AssertionError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors

    @property
    def codes(self) -> list[str | None]:
        return [e.get("extensions", {}).get("code") for e in self.errors]


class SubscriptionComplete(AssertionError):
    pass


class Subscription:
    """The messages of one operation id, in order."""

    def __init__(self, op_id: str, queue: asyncio.Queue[dict[str, Any] | BaseException]) -> None:
        self.id = op_id
        self._queue = queue

    async def next(self, timeout: float = 5) -> dict[str, Any]:  # noqa: ASYNC109 - the client API
        """`data` of the next result; raises on errors, completion or a closed socket."""
        message = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(message, BaseException):
            raise message
        kind = message["type"]
        if kind == "error":
            raise SubscriptionError(message["payload"])
        if kind == "complete":
            raise SubscriptionComplete(self.id)
        payload = message["payload"]
        if payload.get("errors"):
            raise SubscriptionError(payload["errors"])
        data: dict[str, Any] = payload["data"]
        return data

    async def errors(self, timeout: float = 5) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The errors the next message carries; fails if it is a plain result."""
        try:
            data = await self.next(timeout)
        except SubscriptionError as exc:
            return exc.errors
        raise AssertionError(f"expected errors, got data {data}")


class Connection:
    """One acknowledged socket; a reader task routes messages to their operation."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[dict[str, Any] | BaseException]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message.get("type") == "ping":
                    await self.ws.send(json.dumps({"type": "pong"}))
                queue = self._queues.get(message.get("id", ""))
                if queue is not None:
                    queue.put_nowait(message)
            # A server close ends the iteration without an error; report it to the waiters.
            await self.ws.recv()
        except ConnectionClosed as exc:
            for queue in self._queues.values():
                queue.put_nowait(exc)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, query: str, variables: dict[str, Any] | None = None
    ) -> AsyncIterator[Subscription]:
        op_id = str(next(self._ids))
        queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._queues[op_id] = queue
        payload = {"query": query, "variables": variables or {}}
        await self.ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))
        try:
            yield Subscription(op_id, queue)
        finally:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"id": op_id, "type": "complete"}))
            del self._queues[op_id]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def connected(
    url: str, init: dict[str, Any] | None = None, within: float = 5
) -> AsyncIterator[Connection]:
    """A socket past `connection_init`/`connection_ack`, closed on exit."""
    async with connect(url, subprotocols=[PROTOCOL], open_timeout=within) as ws:  # type: ignore[list-item]
        message: dict[str, Any] = {"type": "connection_init"}
        if init is not None:
            message["payload"] = init
        await ws.send(json.dumps(message))
        ack = json.loads(await asyncio.wait_for(ws.recv(), within))
        assert ack["type"] == "connection_ack", ack
        connection = Connection(ws)
        try:
            yield connection
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def subscribe(
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    init: dict[str, Any] | None = None,
) -> AsyncIterator[Subscription]:
    """One subscription on its own socket."""
    async with connected(url, init) as connection, connection.subscribe(query, variables) as subscription:
        yield subscription
