"""Resolvers of schema/commands.graphql: robot commands, sendRobotCommand and commandUpdates."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SubscriptionType

from app import commands, smiths
from app.context import Info
from app.core.channels import channels
from app.core.validation import page, parse_id
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source

query = QueryType()
mutation = MutationType()
subscription = SubscriptionType()
command_type = ObjectType("RobotCommand")


@query.field("robotCommands")
async def resolve_robot_commands(
    _: Any, info: Info, robot_id: str, limit: int | None = None, offset: int | None = None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await commands.list_commands(info.context.db, parse_id(robot_id, "robotId"), limit, offset)


@query.field("robotCommand")
async def resolve_robot_command(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(commands.commands_by_id, parse_id(id))


@mutation.field("sendRobotCommand")
async def resolve_send_robot_command(
    _: Any,
    info: Info,
    robot_id: str,
    type: str,
    params: Any = None,
    ttl_seconds: int | None = None,
) -> dict[str, Any]:
    viewer = await info.context.require()
    robot_id = parse_id(robot_id, "robotId")
    return await commands.send(info.context, viewer, robot_id, type, params, ttl_seconds)


@command_type.field("issuedBy")
async def resolve_issued_by(command: dict, info: Info) -> dict[str, Any] | None:
    return await smiths.smith_or_none(info.context, command["issued_by"])


# A plain function, not an async generator: a malformed robotId or `after` is refused at
# subscribe time, not at the first event.
@subscription.source("commandUpdates")
def command_updates_source(
    _: Any, info: Info, robot_id: str | None = None, after: str | None = None
) -> AsyncGenerator[Event, None]:
    if robot_id is None:
        return subscription_source(info, channels.COMMANDS_ALL, after)
    return subscription_source(info, channels.commands(parse_id(robot_id, "robotId")), after)


subscription.set_field("commandUpdates", resolve_event)


command_type.set_field("eventId", resolve_event_id)

bindables = [query, mutation, subscription, command_type]
