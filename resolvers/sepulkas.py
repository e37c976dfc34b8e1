"""Resolvers of schema/sepulkas.graphql: sepulka queries, forge/delete, and Sepulka's fields."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable

from app import catalog, ingots, sepulkas, smiths
from app.context import Info
from app.core.validation import parse_id

query = QueryType()
mutation = MutationType()
sepulka = ObjectType("Sepulka")


@query.field("sepulkas")
async def resolve_sepulkas(
    _: Any,
    info: Info,
    filter: dict[str, Any] | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    return await sepulkas.list_sepulkas(info.context.db, filter, limit, offset)


@query.field("sepulka")
async def resolve_sepulka(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(sepulkas.sepulkas_by_id, parse_id(id))


@mutation.field("forgeSepulka")
async def resolve_forge_sepulka(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    viewer = await info.context.require()
    return await sepulkas.forge(info.context, viewer, input)


@mutation.field("deleteSepulka")
async def resolve_delete_sepulka(_: Any, info: Info, id: str) -> dict[str, Any]:
    sepulka_id = parse_id(id)
    viewer = await info.context.require()
    return await sepulkas.delete(info.context, viewer, sepulka_id)


@mutation.field("updateSepulka")
async def resolve_update_sepulka(_: Any, info: Info, id: str, input: dict[str, Any]) -> dict[str, Any]:
    sepulka_id = parse_id(id)
    viewer = await info.context.require()
    return await sepulkas.update(info.context, viewer, sepulka_id, input)


@mutation.field("markSepulkaCastReady")
async def resolve_mark_cast_ready(_: Any, info: Info, id: str) -> dict[str, Any]:
    sepulka_id = parse_id(id)
    viewer = await info.context.require()
    return await sepulkas.mark_cast_ready(info.context, viewer, sepulka_id)


@sepulka.field("pattern")
async def resolve_pattern(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    if row["pattern_id"] is None:
        return None
    return await info.context.loaders.load(catalog.patterns_by_id, row["pattern_id"])


@sepulka.field("alloys")
async def resolve_alloys(row: dict[str, Any], info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(catalog.alloys_by_sepulka_id, row["id"])


@sepulka.field("ingots")
async def resolve_ingots(row: dict[str, Any], info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(ingots.ingots_by_sepulka_id, row["id"])


@sepulka.field("createdBy")
async def resolve_created_by(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(smiths.smiths_by_id, row["created_by"])


bindables: list[SchemaBindable] = [query, mutation, sepulka]
