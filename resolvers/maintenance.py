"""Resolvers of schema/maintenance.graphql: maintenance records and schedules of robots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable

from app import maintenance
from app.context import Info
from app.core.validation import parse_id

query = QueryType()
mutation = MutationType()
record_type = ObjectType("MaintenanceRecord")


@query.field("maintenanceRecords")
async def resolve_maintenance_records(
    _: Any,
    info: Info,
    robot_id: str,
    status: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    robot = parse_id(robot_id, "robotId")
    return await maintenance.list_records(info.context.db, robot, status, limit, offset)


@mutation.field("createMaintenanceRecord")
async def resolve_create_record(_: Any, info: Info, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    robot = parse_id(input["robot_id"], "input.robotId")
    return await maintenance.create_record(info.context, viewer, robot, input)


@mutation.field("createMaintenanceSchedule")
async def resolve_create_schedule(_: Any, info: Info, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    robot = parse_id(input["robot_id"], "input.robotId")
    return await maintenance.create_schedule(info.context, viewer, robot, input)


@mutation.field("completeMaintenance")
async def resolve_complete(_: Any, info: Info, id: str, notes: str | None = None) -> dict[str, Any]:
    viewer = await info.context.require()
    return await maintenance.complete(info.context, viewer, parse_id(id), notes)


@mutation.field("cancelMaintenance")
async def resolve_cancel(_: Any, info: Info, id: str, notes: str | None = None) -> dict[str, Any]:
    viewer = await info.context.require()
    return await maintenance.cancel(info.context, viewer, parse_id(id), notes)


@record_type.field("schedule")
async def resolve_schedule(record: dict[str, Any], info: Info) -> dict[str, Any] | None:
    if record["schedule_id"] is None:
        return None
    return await info.context.loaders.load(maintenance.schedules_by_id, record["schedule_id"])


@record_type.field("overdue")
def resolve_overdue(record: dict[str, Any], _info: Info) -> bool:
    due = record["due_at"]
    return record["status"] == "SCHEDULED" and due is not None and due < datetime.now(UTC)


bindables: list[SchemaBindable] = [query, mutation, record_type]
