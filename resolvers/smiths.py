"""The signed-in smith (`me`)."""

from __future__ import annotations

from typing import Any

from ariadne import QueryType

from app import smiths
from app.context import Info

query = QueryType()


@query.field("me")
async def resolve_me(_: Any, info: Info) -> dict[str, Any] | None:
    viewer = await info.context.require()
    return await smiths.me(info.context, viewer)


bindables = [query]
