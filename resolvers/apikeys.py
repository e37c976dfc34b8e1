"""Resolvers of schema/apikeys.graphql: robot API keys, issued and revoked by admins."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, QueryType, SchemaBindable

from app import apikeys
from app.context import Info
from app.core.validation import parse_id

query = QueryType()
mutation = MutationType()


@query.field("robotApiKeys")
async def resolve_robot_api_keys(_: Any, info: Info, robot_id: str) -> list[dict[str, Any]]:
    return await apikeys.list_keys(info.context.db, parse_id(robot_id, "robotId"))


@mutation.field("createRobotApiKey")
async def resolve_create_robot_api_key(
    _: Any,
    info: Info,
    robot_id: str,
    name: str | None = None,
    expires_in_days: int | None = None,
) -> dict[str, Any]:
    robot_id = parse_id(robot_id, "robotId")
    viewer = await info.context.require()
    return await apikeys.create(info.context, viewer, robot_id, name, expires_in_days)


@mutation.field("rotateRobotApiKey")
async def resolve_rotate_robot_api_key(_: Any, info: Info, id: str) -> dict[str, Any]:
    key_id = parse_id(id)
    viewer = await info.context.require()
    return await apikeys.rotate(info.context, viewer, key_id)


@mutation.field("revokeRobotApiKey")
async def resolve_revoke_robot_api_key(_: Any, info: Info, id: str) -> dict[str, Any]:
    key_id = parse_id(id)
    viewer = await info.context.require()
    return await apikeys.revoke(info.context, viewer, key_id)


bindables: list[SchemaBindable] = [query, mutation]
