"""Resolvers of schema/analytics.graphql: fleet and robot analytics (app.analytics)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ariadne import QueryType

from app import analytics
from app.context import Info
from app.core.validation import parse_id

query = QueryType()


@query.field("fleetPerformance")
async def resolve_fleet_performance(_: Any, info: Info, fleet_id: str, time_range: dict) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId")
    return await analytics.fleet_performance(info.context, fleet_id, time_range["start"], time_range["end"])


@query.field("robotHealth")
async def resolve_robot_health(_: Any, info: Info, robot_id: str) -> dict[str, Any]:
    return await analytics.robot_health(info.context, parse_id(robot_id, "robotId"), datetime.now(UTC))


@query.field("batteryAnalytics")
async def resolve_battery_analytics(_: Any, info: Info, fleet_id: str) -> dict[str, Any]:
    return await analytics.battery_analytics(info.context, parse_id(fleet_id, "fleetId"), datetime.now(UTC))


@query.field("utilizationReport")
async def resolve_utilization_report(_: Any, info: Info, fleet_id: str, time_range: dict) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId")
    return await analytics.utilization_report(info.context, fleet_id, time_range["start"], time_range["end"])


bindables = [query]
