"""Resolvers of schema/edicts.graphql (Edict fields map from the row: appliesTo -> applies_to)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SubscriptionType

from app import commands, edicts
from app.context import Info
from app.core.channels import channels
from app.core.validation import page, parse_id
from app.realtime.streams import Event, Message, resolve_event, resolve_event_id, subscription_source

query = QueryType()
mutation = MutationType()
subscription = SubscriptionType()
policy_breach = ObjectType("PolicyBreach")


@query.field("edicts")
async def resolve_edicts(
    _: Any,
    info: Info,
    type: str | None = None,
    active: bool | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await edicts.list_edicts(info.context, type, active, limit, offset)


@query.field("edict")
async def resolve_edict(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await edicts.get_edict(info.context, parse_id(id))


@mutation.field("addEdict")
async def resolve_add_edict(_: Any, info: Info, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    return await edicts.add(info.context, viewer, input)


@mutation.field("updateEdict")
async def resolve_update_edict(_: Any, info: Info, id: str, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    return await edicts.update(info.context, viewer, parse_id(id), input)


@mutation.field("deactivateEdict")
async def resolve_deactivate_edict(_: Any, info: Info, id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await edicts.deactivate(info.context, viewer, parse_id(id))


# A plain function, not an async generator: a malformed id or `after` is refused at subscribe time.
@subscription.source("policyBreaches")
def policy_breaches_source(
    _: Any, info: Info, severity: str | None = None, fleet_id: str | None = None, after: str | None = None
) -> AsyncGenerator[Event, None]:
    def accept(breach: Message) -> bool:
        return severity is None or breach.get("severity") == severity

    fleet = parse_id(fleet_id, "fleetId") if fleet_id is not None else None
    return subscription_source(info, channels.breaches_of(fleet), after, accept)


subscription.set_field("policyBreaches", resolve_event)


policy_breach.set_field("eventId", resolve_event_id)


@policy_breach.field("commands")
async def resolve_breach_commands(breach: dict[str, Any], info: Info) -> list[dict[str, Any]]:
    ids = breach.get("command_ids") or []
    found = await asyncio.gather(*(info.context.loaders.load(commands.commands_by_id, i) for i in ids))
    return [c for c in found if c is not None]


bindables = [query, mutation, subscription, policy_breach]
