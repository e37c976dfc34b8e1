"""Resolvers of schema/edicts.graphql (Edict fields map from the row: appliesTo -> applies_to)."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, QueryType
from graphql import GraphQLResolveInfo

from app import edicts
from app.validation import page, parse_id

query = QueryType()
mutation = MutationType()


@query.field("edicts")
async def resolve_edicts(
    _: Any,
    info: GraphQLResolveInfo,
    type: str | None = None,
    active: bool | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await edicts.list_edicts(info.context, type, active, limit, offset)


@query.field("edict")
async def resolve_edict(_: Any, info: GraphQLResolveInfo, id: str) -> dict[str, Any] | None:
    return await edicts.get_edict(info.context, parse_id(id))


@mutation.field("addEdict")
async def resolve_add_edict(_: Any, info: GraphQLResolveInfo, input: dict) -> dict[str, Any]:
    return await edicts.add(info.context, input)


@mutation.field("updateEdict")
async def resolve_update_edict(_: Any, info: GraphQLResolveInfo, id: str, input: dict) -> dict[str, Any]:
    return await edicts.update(info.context, id, input)


@mutation.field("deactivateEdict")
async def resolve_deactivate_edict(_: Any, info: GraphQLResolveInfo, id: str) -> dict[str, Any]:
    return await edicts.deactivate(info.context, id)


bindables = [query, mutation]
