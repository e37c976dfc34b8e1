"""Resolvers of schema/floors.graphql: floors, blueprint uploads and robot placement."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType

from app import floors, robots
from app.context import Info
from app.core.errors import payload
from app.core.validation import page, parse_id
from app.smiths import smiths_by_id

query = QueryType()
mutation = MutationType()
floor_type = ObjectType("FactoryFloor")


@query.field("factoryFloors")
async def resolve_factory_floors(
    _: Any, info: Info, limit: int | None = None, offset: int | None = None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await floors.list_floors(info.context.db, limit, offset)


@query.field("factoryFloor")
async def resolve_factory_floor(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(floors.floors_by_id, parse_id(id))


@mutation.field("createFactoryFloor")
async def resolve_create_factory_floor(
    _: Any, info: Info, input: dict, blueprint_file: Any
) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("factory_floor", floors.create_floor(info.context, viewer, input, blueprint_file))


@mutation.field("updateFactoryFloor")
async def resolve_update_factory_floor(
    _: Any, info: Info, id: str, input: dict | None = None, blueprint_file: Any = None
) -> dict[str, Any]:
    viewer = await info.context.require()
    work = floors.update_floor(info.context, viewer, id, input or {}, blueprint_file)
    return await payload("factory_floor", work)


@mutation.field("deleteFactoryFloor")
async def resolve_delete_factory_floor(_: Any, info: Info, id: str) -> bool:
    viewer = await info.context.require()
    return await floors.delete_floor(info.context, viewer, parse_id(id))


@mutation.field("assignRobotToFloor")
async def resolve_assign_robot_to_floor(
    _: Any, info: Info, robot_id: str, floor_id: str, position: dict | None = None
) -> dict[str, Any]:
    viewer = await info.context.require()
    ids = parse_id(robot_id, "robotId"), parse_id(floor_id, "floorId")
    return await floors.assign_robot(info.context, viewer, *ids, position)


@mutation.field("updateRobotFloorPosition")
async def resolve_update_robot_floor_position(
    _: Any, info: Info, robot_id: str, position: dict
) -> dict[str, Any]:
    viewer = await info.context.require()
    return await floors.move_robot(info.context, viewer, parse_id(robot_id, "robotId"), position)


@floor_type.field("robots")
async def resolve_floor_robots(floor: dict, info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(robots.robots_by_floor_id, floor["id"])


@floor_type.field("createdBy")
async def resolve_created_by(floor: dict, info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(smiths_by_id, floor["created_by"])


bindables = [query, mutation, floor_type]
