"""Resolvers of schema/bellows.graphql: stored fleet telemetry and one robot's recent samples.

BellowsStream.metrics/events also serve Fleet.telemetry, whose parent is the same
`{fleet_id, start, end, real_time}` dict; a live subscription payload carries them already.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import ObjectType, QueryType, SubscriptionType

from app import bellows
from app.context import Info
from app.core.channels import channels
from app.core.validation import page, parse_id
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source

query = QueryType()
bellows_stream = ObjectType("BellowsStream")
subscription = SubscriptionType()


@query.field("bellows")
async def resolve_bellows(
    _: Any, info: Info, fleet_id: str, time_range: dict
) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId")
    return await bellows.stream(info.context, fleet_id, time_range["start"], time_range["end"])


@query.field("robotTelemetry")
async def resolve_robot_telemetry(
    _: Any, info: Info, robot_id: str, time_range: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    limit, _offset = page(100 if limit is None else limit, 0)
    return await bellows.robot_telemetry(info.context, robot_id, time_range, limit)


@bellows_stream.field("metrics")
async def resolve_metrics(stream: dict, info: Info) -> list[dict[str, Any]]:
    if "metrics" in stream:
        return stream["metrics"]  # type: ignore[no-any-return]
    key = (stream["fleet_id"], stream["start"], stream["end"])
    metrics: list[dict[str, Any]] = await info.context.loaders.load(bellows.metrics_by_window, key)
    return metrics


@bellows_stream.field("events")
async def resolve_events(stream: dict, info: Info) -> list[dict[str, Any]]:
    if "events" in stream:
        return stream["events"]  # type: ignore[no-any-return]
    key = (stream["fleet_id"], stream["start"], stream["end"])
    events: list[dict[str, Any]] = await info.context.loaders.load(bellows.events_by_window, key)
    return events


# A plain function, not an async generator: a malformed id or `after` is refused at subscribe time.
@subscription.source("bellowsStream")
def bellows_stream_source(
    _: Any, info: Info, fleet_id: str, after: str | None = None
) -> AsyncGenerator[Event, None]:
    return subscription_source(info, channels.bellows(parse_id(fleet_id, "fleetId")), after)


subscription.set_field("bellowsStream", resolve_event)


bellows_stream.set_field("eventId", resolve_event_id)

bindables = [query, bellows_stream, subscription]
