"""Resolvers of schema/alerts.graphql: alerts as a Relay connection, their lifecycle, alertUpdates."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable, SubscriptionType

from app import alerts, edicts, smiths
from app.context import Info
from app.core.channels import channels
from app.core.validation import parse_id
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source

query = QueryType()
mutation = MutationType()
subscription = SubscriptionType()
alert = ObjectType("Alert")


def _filter(given: dict[str, Any] | None) -> dict[str, Any]:
    f = dict(given or {})
    for key, name in (("fleet_id", "filter.fleetId"), ("robot_id", "filter.robotId")):
        if f.get(key) is not None:
            f[key] = parse_id(f[key], name)
    return f


@query.field("alerts")
async def resolve_alerts(
    _: Any,
    info: Info,
    first: int | None = None,
    after: str | None = None,
    filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return await alerts.connection(info.context.db, first, after, _filter(filter))


@mutation.field("acknowledgeAlert")
async def resolve_acknowledge(_: Any, info: Info, id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await alerts.acknowledge(info.context, viewer, parse_id(id))


@mutation.field("resolveAlert")
async def resolve_resolve(_: Any, info: Info, id: str, note: str | None = None) -> dict[str, Any]:
    viewer = await info.context.require()
    return await alerts.resolve(info.context, viewer, parse_id(id), note)


@alert.field("edict")
async def resolve_alert_edict(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await edicts.get_edict(info.context, row["edict_id"])


@alert.field("acknowledger")
async def resolve_acknowledger(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await smiths.smith_or_none(info.context, row["acknowledged_by"])


@alert.field("resolver")
async def resolve_resolver(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await smiths.smith_or_none(info.context, row["resolved_by"])


@alert.field("breaches")
async def resolve_alert_breaches(row: dict[str, Any], info: Info) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await info.context.loaders.load(alerts.violations_of_alerts, str(row["id"]))
    return [alerts.breach_payload(r) for r in rows]


# A plain function: a malformed fleet id or `after` is refused at subscribe time.
@subscription.source("alertUpdates")
def alert_updates_source(
    _: Any, info: Info, fleet_id: str | None = None, after: str | None = None
) -> AsyncGenerator[Event, None]:
    fleet = parse_id(fleet_id, "fleetId") if fleet_id is not None else None
    return subscription_source(info, channels.alerts_of(fleet), after)


subscription.set_field("alertUpdates", resolve_event)
alert.set_field("eventId", resolve_event_id)

bindables: list[SchemaBindable] = [query, mutation, subscription, alert]
