"""A request's Context from its connection (HTTP request or websocket)."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from app.context import Context
from app.resources import Resources


def context_for(resources: Resources, connection: HTTPConnection | None, token: str | None) -> Context:
    client = connection.client if connection is not None else None
    return Context(
        resources,
        token,
        client_ip=client.host if client else None,
        user_agent=connection.headers.get("user-agent") if connection is not None else None,
    )
