"""Resolvers of schema/tasks.graphql: tasks, runs, dispatch and cancel."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SubscriptionType
from graphql import GraphQLResolveInfo

from app import tasks
from app.context import Info
from app.core.channels import channels
from app.core.validation import page, parse_id
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source
from app.smiths import smiths_by_id

query = QueryType()
mutation = MutationType()
task_type = ObjectType("Task")
run_type = ObjectType("Run")
run_metrics = ObjectType("RunMetrics")
subscription = SubscriptionType()


@query.field("tasks")
async def resolve_tasks(
    _: Any,
    info: Info,
    filter: dict | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await tasks.list_tasks(info.context, filter or {}, limit, offset)


@query.field("task")
async def resolve_task(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await tasks.get_task(info.context, parse_id(id))


@query.field("runs")
async def resolve_runs(
    _: Any,
    info: Info,
    task_id: str | None = None,
    robot_id: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    task_id = parse_id(task_id, "taskId") if task_id is not None else None
    robot_id = parse_id(robot_id, "robotId") if robot_id is not None else None
    return await tasks.list_runs(info.context, task_id, robot_id, limit, offset)


@mutation.field("dispatchTask")
async def resolve_dispatch_task(
    _: Any, info: Info, fleet_id: str, input: dict
) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.dispatch(info.context, viewer, fleet_id, input)


@mutation.field("cancelTask")
async def resolve_cancel_task(_: Any, info: Info, task_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.cancel(info.context, viewer, task_id)


@task_type.field("assignedRobots")
async def resolve_assigned_robots(task: dict, info: Info) -> list[dict[str, Any]]:
    robots: list[dict[str, Any]] = await info.context.loaders.load(tasks.robots_by_task_id, task["id"])
    return robots


@task_type.field("runs")
async def resolve_task_runs(task: dict, info: Info) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = await info.context.loaders.load(tasks.runs_by_task_id, task["id"])
    return runs


@task_type.field("createdBy")
async def resolve_created_by(task: dict, info: Info) -> dict[str, Any] | None:
    smith: dict[str, Any] | None = await info.context.loaders.load(smiths_by_id, task["created_by"])
    return smith


@run_type.field("metrics")
def resolve_run_metrics(run: dict, _: GraphQLResolveInfo) -> dict[str, Any] | None:
    metrics = run.get("metrics")
    return metrics if isinstance(metrics, dict) else None


# Run.metrics is stored as the reference's camelCase JSON; counts default to 0 when missing.
@run_metrics.field("duration")
def resolve_duration(metrics: dict, _: GraphQLResolveInfo) -> int:
    return int(metrics.get("duration") or 0)


@run_metrics.field("energyConsumed")
def resolve_energy_consumed(metrics: dict, _: GraphQLResolveInfo) -> float | None:
    return metrics.get("energyConsumed")


@run_metrics.field("accuracy")
def resolve_accuracy(metrics: dict, _: GraphQLResolveInfo) -> float | None:
    return metrics.get("accuracy")


@run_metrics.field("errors")
def resolve_errors(metrics: dict, _: GraphQLResolveInfo) -> int:
    return int(metrics.get("errors") or 0)


@run_metrics.field("warnings")
def resolve_warnings(metrics: dict, _: GraphQLResolveInfo) -> int:
    return int(metrics.get("warnings") or 0)


@run_metrics.field("performance")
def resolve_performance(metrics: dict, _: GraphQLResolveInfo) -> Any:
    return metrics.get("performance")


# A plain function, not an async generator: a malformed id or `after` is refused at subscribe time.
@subscription.source("taskUpdates")
def task_updates_source(
    _: Any, info: Info, fleet_id: str | None = None, after: str | None = None
) -> AsyncGenerator[Event, None]:
    if fleet_id is None:
        return subscription_source(info, channels.TASKS_ALL, after)
    return subscription_source(info, channels.tasks(parse_id(fleet_id, "fleetId")), after)


subscription.set_field("taskUpdates", resolve_event)


task_type.set_field("eventId", resolve_event_id)

bindables = [query, mutation, task_type, run_type, run_metrics, subscription]
