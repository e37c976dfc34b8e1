"""Resolvers of schema/bellows.graphql: stored fleet telemetry and one robot's recent samples.

BellowsStream.metrics/events also serve Fleet.telemetry, whose parent is the same
`{fleet_id, start, end, real_time}` dict; a live subscription payload carries them already.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

from ariadne import ObjectType, QueryType, SubscriptionType

from app import bellows, series
from app.context import Info
from app.core.channels import channels
from app.core.errors import Invalid
from app.core.validation import page, parse_id, parse_ids
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source

query = QueryType()
bellows_stream = ObjectType("BellowsStream")
subscription = SubscriptionType()


@query.field("bellows")
async def resolve_bellows(
    _: Any, info: Info, fleet_id: str, time_range: dict, resolution: str | None = None
) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId")
    return await bellows.stream(info.context, fleet_id, time_range["start"], time_range["end"], resolution)


@query.field("robotTelemetry")
async def resolve_robot_telemetry(
    _: Any,
    info: Info,
    robot_id: str,
    time_range: str | None = None,
    limit: int | None = None,
    resolution: str | None = None,
) -> list[dict[str, Any]]:
    limit, _offset = page(100 if limit is None else limit, 0)
    return await bellows.robot_telemetry(info.context, robot_id, time_range, limit, resolution)


@query.field("telemetrySeries")
async def resolve_telemetry_series(
    _: Any,
    info: Info,
    robot_ids: list[str],
    metrics: list[str],
    time_range: dict,
    resolution: str | None = None,
) -> list[dict[str, Any]]:
    robot_ids = parse_ids(robot_ids, "robotIds")  # type: ignore[arg-type]
    return await series.telemetry_series(
        info.context, robot_ids, metrics, time_range["start"], time_range["end"], resolution
    )


@bellows_stream.field("resolution")
def resolve_resolution(stream: dict, _info: Info) -> str:
    # Live messages and Fleet.telemetry carry raw samples.
    resolution: str = stream.get("resolution") or bellows.RAW
    return resolution


@bellows_stream.field("metrics")
async def resolve_metrics(stream: dict, info: Info) -> list[dict[str, Any]]:
    if "samples" in stream:
        return bellows.live_metrics(stream["samples"])
    if "metrics" in stream:
        # Live events logged before they carried every sample: one entry per metric already.
        return stream["metrics"]  # type: ignore[no-any-return]
    resolution = stream.get("resolution") or bellows.RAW
    if resolution != bellows.RAW:
        rolled = (stream["fleet_id"], stream["start"], stream["end"], resolution)
        found: list[dict[str, Any]] = await info.context.loaders.load(
            bellows.rolled_metrics_by_window, rolled
        )
        return found
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
    _: Any, info: Info, fleet_id: str, after: str | None = None, min_interval_ms: int | None = None
) -> AsyncGenerator[Event, None]:
    if min_interval_ms is not None and min_interval_ms < 0:
        raise Invalid("minIntervalMs must be 0 or more", field="minIntervalMs")
    return subscription_source(info, channels.bellows(parse_id(fleet_id, "fleetId")), after)


@subscription.field("bellowsStream")
def resolve_bellows_event(
    event: Event, info: Info, min_interval_ms: int | None = None, **_: Any
) -> dict[str, Any]:
    data = resolve_event(event, info)
    if min_interval_ms and "samples" in data:
        # A new dict: the event's payload is shared by every subscriber of the fleet.
        return data | {"samples": _thinned(data["samples"], min_interval_ms)}
    return data


def _thinned(samples: list[dict[str, Any]], interval_ms: int) -> list[dict[str, Any]]:
    """Each robot's newest sample per `interval_ms` window of time (windows aligned to the epoch,
    so every subscriber asking the same interval gets the same answer and results stay shared).
    Samples come in (robot, ts, seq) order, which the result keeps."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for sample in samples:
        at = datetime.fromisoformat(sample["timestamp"]).timestamp() * 1000
        kept[(sample["robot_id"], int(at // interval_ms))] = sample
    return list(kept.values())


bellows_stream.set_field("eventId", resolve_event_id)

bindables = [query, bellows_stream, subscription]
