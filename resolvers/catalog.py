"""Resolvers of schema/catalog.graphql: patterns, alloys, alloy compatibility entries, and the
mutations that manage them."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable
from graphql import GraphQLResolveInfo

from app import catalog
from app.context import Info
from app.core.errors import payload
from app.core.validation import parse_id

query = QueryType()
mutation = MutationType()
compatibility = ObjectType("AlloyCompatibility")


@query.field("patterns")
async def resolve_patterns(
    _: Any,
    info: Info,
    category: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    return await catalog.list_patterns(info.context.db, category, limit, offset)


@query.field("pattern")
async def resolve_pattern(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(catalog.patterns_by_id, parse_id(id))


@query.field("alloys")
async def resolve_alloys(
    _: Any,
    info: Info,
    filter: dict[str, Any] | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    return await catalog.list_alloys(info.context.db, filter, limit, offset)


@query.field("alloy")
async def resolve_alloy(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(catalog.alloys_by_id, parse_id(id))


@mutation.field("createAlloy")
async def resolve_create_alloy(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("alloy", catalog.create_alloy(info.context, viewer, input))


@mutation.field("updateAlloy")
async def resolve_update_alloy(_: Any, info: Info, id: str, input: dict[str, Any]) -> dict[str, Any]:
    alloy_id = parse_id(id)
    viewer = await info.context.require()
    return await payload("alloy", catalog.update_alloy(info.context, viewer, alloy_id, input))


@mutation.field("createPattern")
async def resolve_create_pattern(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("pattern", catalog.create_pattern(info.context, viewer, input))


@mutation.field("updatePattern")
async def resolve_update_pattern(_: Any, info: Info, id: str, input: dict[str, Any]) -> dict[str, Any]:
    pattern_id = parse_id(id)
    viewer = await info.context.require()
    return await payload("pattern", catalog.update_pattern(info.context, viewer, pattern_id, input))


# The compatibility JSON keeps the reference's camelCase keys, which the snake_case default misses.
@compatibility.field("alloyId")
def resolve_alloy_id(entry: dict[str, Any], _: GraphQLResolveInfo) -> Any:
    return entry.get("alloyId")


@compatibility.field("compatibleWith")
def resolve_compatible_with(entry: dict[str, Any], _: GraphQLResolveInfo) -> list[Any]:
    return entry.get("compatibleWith") or []


bindables: list[SchemaBindable] = [query, mutation, compatibility]
