"""The app served for real: uvicorn on a free loopback port, for websocket and SSE stories."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from app.infra.eventlog import record
from app.settings import Settings
from app.web.app import create_app
from app.web.http_server import http_options
from tests.servers import free_port
from tests.support import DEV, Api


@dataclass
class Live:
    api: Api  # over real HTTP to the same server
    ws_url: str

    async def bearer(self, who: tuple[str, str] = DEV) -> dict[str, str]:
        return {"authorization": f"Bearer {await self.api.token(*who)}"}

    async def listening(self, channel: str, within: float = 5) -> None:
        """Returns once a subscriber is registered on the bus, so a publish now is delivered."""
        deadline = time.monotonic() + within
        while self.api.resources.events.subscribers(channel) < 1:
            assert time.monotonic() < deadline, f"nobody subscribed to {channel}"
            await asyncio.sleep(0.01)

    async def publish(self, channel_names: list[str], payload: dict[str, Any]) -> int:
        """As writers do: the event in event_log in its transaction, published after the commit."""
        async with self.api.resources.db.acquire() as conn, conn.transaction():
            recorded = await record(conn, channel_names, payload)
        await self.api.resources.events.publish_recorded([recorded])
        return recorded.id

    async def row(self, table: str, ident: str) -> dict[str, Any]:
        query = {"robots": "SELECT * FROM robots WHERE id = $1", "tasks": "SELECT * FROM tasks WHERE id = $1"}
        return dict(await self.api.resources.db.fetchrow(query[table], ident))


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Live]:
    """The app under uvicorn on a free loopback port with `sepulki serve`'s HTTP options,
    lifespan running, until the block ends."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        lifespan="on",
        log_level="warning",
        **http_options(settings),
    )
    server = uvicorn.Server(config)
    serve = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        if serve.done():
            serve.result()  # startup failed: raise its error here
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield Live(Api(app, client, []), f"ws://127.0.0.1:{port}/graphql")
    finally:
        server.should_exit = True
        await serve
