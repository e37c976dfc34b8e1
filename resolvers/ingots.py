"""Resolvers of schema/ingots.graphql: ingot queries, cast/temper/quench/recall, TemperResults."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable
from graphql import GraphQLResolveInfo

from app import ingots
from app.context import Info
from app.core.validation import parse_id

query = QueryType()
mutation = MutationType()
temper_results = ObjectType("TemperResults")


@query.field("ingots")
async def resolve_ingots(
    _: Any,
    info: Info,
    filter: dict[str, Any] | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    return await ingots.list_ingots(info.context.db, filter, limit, offset)


@query.field("ingot")
async def resolve_ingot(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await ingots.get_ingot(info.context.db, parse_id(id))


@mutation.field("castIngot")
async def resolve_cast_ingot(_: Any, info: Info, sepulka_id: str) -> dict[str, Any]:
    sepulka_id = parse_id(sepulka_id, "sepulkaId")
    viewer = await info.context.require()
    return await ingots.cast(info.context, viewer, sepulka_id)


@mutation.field("temperIngot")
async def resolve_temper_ingot(_: Any, info: Info, ingot_id: str, input: dict[str, Any]) -> dict[str, Any]:
    ingot_id = parse_id(ingot_id, "ingotId")
    viewer = await info.context.require()
    return await ingots.temper(info.context, viewer, ingot_id, input)


@mutation.field("quenchToFleet")
async def resolve_quench_to_fleet(
    _: Any, info: Info, ingot_id: str, fleet_id: str, rollout_percent: int | None = 100
) -> dict[str, Any]:
    ingot_id, fleet_id = parse_id(ingot_id, "ingotId"), parse_id(fleet_id, "fleetId")
    viewer = await info.context.require()
    return await ingots.quench(info.context, viewer, ingot_id, fleet_id, rollout_percent)


@mutation.field("recallFleet")
async def resolve_recall_fleet(_: Any, info: Info, fleet_id: str, to_version: str) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId")
    viewer = await info.context.require()
    return await ingots.recall(info.context, viewer, fleet_id, to_version)


# temper_results JSON keeps the reference's camelCase keys, which the snake_case default misses.
@temper_results.field("optimizedParameters")
def resolve_optimized_parameters(results: dict[str, Any], _: GraphQLResolveInfo) -> Any:
    return results.get("optimizedParameters")


bindables: list[SchemaBindable] = [query, mutation, temper_results]
