"""Subscriptions: robotStatus, taskUpdates, policyBreaches and bellowsStream.

Each accepts `after` (the `extensions.eventId` of the last event the client saw): committed
events after it are replayed from event_log, then the stream continues live (app.realtime).
Each source is a plain function, not an async generator, so a malformed argument is refused
when the client subscribes (BAD_USER_INPUT) instead of when the first event arrives. The
@requires directive checks permissions before any source runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ariadne import SubscriptionType
from graphql import GraphQLResolveInfo

from app.pubsub import Event, channels
from app.realtime import Message, resolve_event, subscription_source
from app.validation import parse_id

subscription = SubscriptionType()


@subscription.source("robotStatus")
def robot_status_source(
    _: Any, info: GraphQLResolveInfo, robot_id: str | None = None, after: str | None = None
) -> AsyncIterator[Event]:
    if robot_id is None:
        return subscription_source(info, channels.ROBOT_STATUS_ALL, after)
    return subscription_source(info, channels.robot_status(parse_id(robot_id, "robotId")), after)


@subscription.source("taskUpdates")
def task_updates_source(
    _: Any, info: GraphQLResolveInfo, fleet_id: str | None = None, after: str | None = None
) -> AsyncIterator[Event]:
    if fleet_id is None:
        return subscription_source(info, channels.TASKS_ALL, after)
    return subscription_source(info, channels.tasks(parse_id(fleet_id, "fleetId")), after)


@subscription.source("policyBreaches")
def policy_breaches_source(
    _: Any, info: GraphQLResolveInfo, severity: str | None = None, after: str | None = None
) -> AsyncIterator[Event]:
    def accept(breach: Message) -> bool:
        return severity is None or breach.get("severity") == severity

    return subscription_source(info, channels.BREACHES, after, accept)


@subscription.source("bellowsStream")
def bellows_stream_source(
    _: Any, info: GraphQLResolveInfo, fleet_id: str, after: str | None = None
) -> AsyncIterator[Event]:
    return subscription_source(info, channels.bellows(parse_id(fleet_id, "fleetId")), after)


for _name in ("robotStatus", "taskUpdates", "policyBreaches", "bellowsStream"):
    subscription.set_field(_name, resolve_event)

bindables = [subscription]
