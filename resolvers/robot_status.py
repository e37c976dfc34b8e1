"""Resolvers of schema/robot_status.graphql: network status, device logs and status history."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType, QueryType, SchemaBindable

from app import robot_logs, robot_status, robots, smiths
from app.context import Info
from app.core.validation import parse_id

query = QueryType()
change_type = ObjectType("RobotStatusChange")
log_type = ObjectType("RobotLogEntry")


@query.field("networkStatus")
async def resolve_network_status(_: Any, info: Info, robot_id: str) -> dict[str, Any] | None:
    robot = await info.context.loaders.load(robots.robots_by_id, parse_id(robot_id, "robotId"))
    if robot is None:
        return None
    return robot_status.network_view(robot, info.context.resources.settings.robot_offline_after_s)


@query.field("robotLogs")
async def resolve_robot_logs(
    _: Any, info: Info, robot_id: str, level: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    return await robot_logs.logs(info.context.db, parse_id(robot_id, "robotId"), level, limit)


@query.field("robotLogsConnection")
async def resolve_robot_logs_connection(
    _: Any,
    info: Info,
    robot_id: str,
    level: str | None = None,
    first: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    robot = parse_id(robot_id, "robotId")
    return await robot_logs.logs_connection(info.context.db, robot, level, first, after)


@query.field("robotStatusHistory")
async def resolve_robot_status_history(
    _: Any,
    info: Info,
    robot_id: str,
    status: str | None = None,
    first: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    robot = parse_id(robot_id, "robotId")
    return await robot_status.history_connection(info.context.db, robot, status, first, after)


change_type.set_alias("from", "from_status")
change_type.set_alias("to", "to_status")


@change_type.field("actor")
async def resolve_actor(change: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await smiths.smith_or_none(info.context, change["actor_id"])


log_type.set_alias("timestamp", "ts")
log_type.set_alias("level", "severity")

bindables: list[SchemaBindable] = [query, change_type, log_type]
