"""Resolvers of schema/fleets.graphql: fleets, loci, the emergency stop and fleet location."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType

from app import fleets, robots, tasks
from app.context import Info
from app.core.validation import page, parse_id

query = QueryType()
mutation = MutationType()
fleet_type = ObjectType("Fleet")
locus_type = ObjectType("Locus")


@query.field("fleets")
async def resolve_fleets(
    _: Any,
    info: Info,
    filter: dict | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    status = (filter or {}).get("status")
    locus_id = (filter or {}).get("locus_id")
    locus_id = parse_id(locus_id, "filter.locusId") if locus_id is not None else None
    return await fleets.list_fleets(info.context.db, status, locus_id, limit, offset)


@query.field("fleet")
async def resolve_fleet(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(fleets.fleets_by_id, parse_id(id))


@query.field("loci")
async def resolve_loci(
    _: Any, info: Info, limit: int | None = None, offset: int | None = None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await fleets.list_loci(info.context.db, limit, offset)


@query.field("locus")
async def resolve_locus(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(fleets.loci_by_id, parse_id(id))


@mutation.field("emergencyStop")
async def resolve_emergency_stop(_: Any, info: Info, fleet_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await fleets.emergency_stop(info.context, viewer, parse_id(fleet_id, "fleetId"))


@mutation.field("releaseEmergencyStop")
async def resolve_release_emergency_stop(_: Any, info: Info, fleet_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await fleets.release_emergency_stop(info.context, viewer, parse_id(fleet_id, "fleetId"))


@mutation.field("updateFleetLocation")
async def resolve_update_fleet_location(
    _: Any, info: Info, fleet_id: str, coordinates: dict
) -> dict[str, Any]:
    viewer = await info.context.require()
    return await fleets.update_location(info.context, viewer, parse_id(fleet_id, "fleetId"), coordinates)


@fleet_type.field("locus")
async def resolve_fleet_locus(fleet: dict, info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(fleets.loci_by_id, fleet["locus_id"])


@fleet_type.field("robots")
async def resolve_fleet_robots(fleet: dict, info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(robots.robots_by_fleet_id, fleet["id"])


@fleet_type.field("activeTask")
async def resolve_active_task(fleet: dict, info: Info) -> dict[str, Any] | None:
    if fleet["active_task_id"] is None:
        return None
    return await info.context.loaders.load(tasks.tasks_by_id, fleet["active_task_id"])


@fleet_type.field("constraints")
@locus_type.field("constraints")
async def resolve_constraints(parent: dict, info: Info) -> list[dict[str, Any]]:
    return await fleets.constraints(info.context, parent["constraint_ids"])


@fleet_type.field("telemetry")
async def resolve_telemetry(fleet: dict, info: Info) -> dict[str, Any]:
    return await fleets.telemetry_window(info.context, fleet["id"])


bindables = [query, mutation, fleet_type, locus_type]
