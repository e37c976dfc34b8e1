"""Resolvers of schema/notifications.graphql: the signed-in smith's notifications and preferences."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable, SubscriptionType

from app import notifications
from app.context import Info
from app.core.channels import channels
from app.core.validation import parse_id, parse_ids
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source

query = QueryType()
mutation = MutationType()
subscription = SubscriptionType()
notification = ObjectType("Notification")


@query.field("notifications")
async def resolve_notifications(
    _: Any, info: Info, first: int | None = None, after: str | None = None, unread_only: bool = False
) -> dict[str, Any]:
    viewer = await info.context.require()
    return await notifications.connection(info.context, viewer, first, after, bool(unread_only))


@query.field("unreadNotificationCount")
async def resolve_unread(_: Any, info: Info) -> int:
    viewer = await info.context.require()
    return await notifications.unread_count(info.context, viewer)


@query.field("notificationPreferences")
async def resolve_preferences(_: Any, info: Info) -> dict[str, Any]:
    viewer = await info.context.require()
    return await notifications.preferences(info.context, viewer)


@mutation.field("markNotificationRead")
async def resolve_mark_read(_: Any, info: Info, id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await notifications.mark_read(info.context, viewer, parse_id(id))


@mutation.field("markAllNotificationsRead")
async def resolve_mark_all_read(_: Any, info: Info) -> int:
    viewer = await info.context.require()
    return await notifications.mark_all_read(info.context, viewer)


@mutation.field("updateNotificationPreferences")
async def resolve_save_preferences(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    viewer = await info.context.require()
    given = dict(input)
    if given.get("fleets") is not None:
        given["fleets"] = parse_ids(given["fleets"], "fleets")
    return await notifications.save_preferences(info.context, viewer, given)


# Not a plain source function like the others: whose notifications needs the signed-in smith.
@subscription.source("notifications")
async def notifications_source(_: Any, info: Info, after: str | None = None) -> AsyncGenerator[Event, None]:
    viewer = await info.context.require()
    async for event in subscription_source(info, channels.notifications(viewer.id), after):
        yield event


subscription.set_field("notifications", resolve_event)
notification.set_field("eventId", resolve_event_id)

bindables: list[SchemaBindable] = [query, mutation, subscription, notification]
