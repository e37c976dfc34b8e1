"""Shared bench plumbing: a PostgreSQL to run against and a direct ASGI caller."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from app.infra.embedded_postgres import EmbeddedPostgres


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """SEPULKI_DATABASE_URL when set, else a throwaway embedded PostgreSQL."""
    url = os.environ.get("SEPULKI_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="sepulki-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp))
        try:
            yield await pg.start()
        finally:
            await pg.stop()


async def call(app: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One HTTP POST /graphql straight into the ASGI app (no sockets: measures the app)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4000),
        "root_path": "",
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)
