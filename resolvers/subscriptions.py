"""Subscriptions: robotStatus, taskUpdates, policyBreaches and bellowsStream.

Each source is a plain function, not an async generator, so a malformed argument is refused
when the client subscribes (BAD_USER_INPUT) instead of when the first event arrives. The
@requires directive checks permissions before any source runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ariadne import SubscriptionType
from graphql import GraphQLResolveInfo

from app.loaders import Loaders
from app.pubsub import channels
from app.realtime import Message, channel_messages
from app.validation import parse_id

subscription = SubscriptionType()


@subscription.source("robotStatus")
def robot_status_source(
    _: Any, info: GraphQLResolveInfo, robot_id: str | None = None
) -> AsyncIterator[Message]:
    if robot_id is None:
        return channel_messages(info.context.events, channels.ROBOT_STATUS_ALL)
    return channel_messages(info.context.events, channels.robot_status(parse_id(robot_id, "robotId")))


@subscription.source("taskUpdates")
def task_updates_source(
    _: Any, info: GraphQLResolveInfo, fleet_id: str | None = None
) -> AsyncIterator[Message]:
    if fleet_id is None:
        return channel_messages(info.context.events, channels.TASKS_ALL)
    return channel_messages(info.context.events, channels.tasks(parse_id(fleet_id, "fleetId")))


@subscription.source("policyBreaches")
def policy_breaches_source(
    _: Any, info: GraphQLResolveInfo, severity: str | None = None
) -> AsyncIterator[Message]:
    def accept(breach: Message) -> bool:
        return severity is None or breach.get("severity") == severity

    return channel_messages(info.context.events, channels.BREACHES, accept)


@subscription.source("bellowsStream")
def bellows_stream_source(_: Any, info: GraphQLResolveInfo, fleet_id: str) -> AsyncIterator[Message]:
    return channel_messages(info.context.events, channels.bellows(parse_id(fleet_id, "fleetId")))


def resolve_event(payload: Message, info: GraphQLResolveInfo, **_: Any) -> Message:
    # The operation's context lives as long as the socket: fresh loaders per event, or nested
    # fields (Robot.currentIngot, Task.runs) would be served from the first event's cache.
    info.context.loaders = Loaders(info.context.db)
    return payload


for _name in ("robotStatus", "taskUpdates", "policyBreaches", "bellowsStream"):
    subscription.set_field(_name, resolve_event)

bindables = [subscription]
