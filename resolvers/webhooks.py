"""Resolvers of schema/webhooks.graphql: endpoints (admins) and the delivery log."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable

from app import webhooks
from app.context import Info
from app.core.validation import parse_id, parse_ids

query = QueryType()
mutation = MutationType()
delivery = ObjectType("NotificationDelivery")


def _input(given: dict[str, Any]) -> dict[str, Any]:
    result = dict(given)
    if result.get("fleets") is not None:
        result["fleets"] = parse_ids(result["fleets"], "fleets")
    return result


@query.field("webhooks")
async def resolve_webhooks(_: Any, info: Info) -> list[dict[str, Any]]:
    return await webhooks.list_webhooks(info.context)


@query.field("notificationDeliveries")
async def resolve_deliveries(
    _: Any,
    info: Info,
    first: int | None = None,
    after: str | None = None,
    filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    f = dict(filter or {})
    if f.get("webhook_id") is not None:
        f["webhook_id"] = parse_id(f["webhook_id"], "filter.webhookId")
    return await webhooks.deliveries(info.context, first, after, f)


@mutation.field("addWebhook")
async def resolve_add(_: Any, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    viewer = await info.context.require()
    row = await webhooks.add(info.context, viewer, _input(input))
    return {"webhook": row, "secret": row["secret"]}


@mutation.field("updateWebhook")
async def resolve_update(_: Any, info: Info, id: str, input: dict[str, Any]) -> dict[str, Any]:
    viewer = await info.context.require()
    return await webhooks.update(info.context, viewer, parse_id(id), _input(input))


@mutation.field("removeWebhook")
async def resolve_remove(_: Any, info: Info, id: str) -> str:
    viewer = await info.context.require()
    return await webhooks.remove(info.context, viewer, parse_id(id))


@delivery.field("attemptLog")
async def resolve_attempts(row: dict[str, Any], info: Info) -> list[dict[str, Any]]:
    attempts: list[dict[str, Any]] = await info.context.loaders.load(webhooks.attempts_of, str(row["id"]))
    return attempts


bindables: list[SchemaBindable] = [query, mutation, delivery]
