"""Resolvers of schema/tasks.graphql: tasks, runs, their transitions, schedules and analytics."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SubscriptionType
from graphql import GraphQLResolveInfo

from app import smiths, tasks
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
transition_type = ObjectType("TaskTransition")
schedule_type = ObjectType("ScheduledTask")
analytics_type = ObjectType("TaskAnalytics")
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
async def resolve_dispatch_task(_: Any, info: Info, fleet_id: str, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.dispatch(info.context, viewer, fleet_id, input)


@mutation.field("cancelTask")
async def resolve_cancel_task(_: Any, info: Info, task_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.cancel(info.context, viewer, task_id)


@query.field("taskHistory")
async def resolve_task_history(_: Any, info: Info, robot_id: str, limit: int | None = None) -> list[dict]:
    return await tasks.history(info.context, parse_id(robot_id, "robotId"), limit)


@query.field("taskAnalytics")
async def resolve_task_analytics(_: Any, info: Info, fleet_id: str, time_range: dict) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId")
    return await tasks.analytics(info.context, fleet_id, time_range["start"], time_range["end"])


@query.field("scheduledTasks")
async def resolve_scheduled_tasks(
    _: Any, info: Info, fleet_id: str | None = None, limit: int | None = None, offset: int | None = None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    fleet_id = parse_id(fleet_id, "fleetId") if fleet_id is not None else None
    return await tasks.list_schedules(info.context, fleet_id, limit, offset)


@mutation.field("scheduleTask")
async def resolve_schedule_task(_: Any, info: Info, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.schedule(info.context, viewer, input)


@mutation.field("unscheduleTask")
async def resolve_unschedule_task(_: Any, info: Info, id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.unschedule(info.context, viewer, parse_id(id))


@mutation.field("updateTaskPriority")
async def resolve_update_task_priority(_: Any, info: Info, task_id: str, priority: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.update_priority(info.context, viewer, parse_id(task_id, "taskId"), priority)


@mutation.field("reassignTask")
async def resolve_reassign_task(_: Any, info: Info, task_id: str, robot_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    task_id, robot_id = parse_id(task_id, "taskId"), parse_id(robot_id, "robotId")
    return await tasks.reassign(info.context, viewer, task_id, robot_id)


@mutation.field("cloneTask")
async def resolve_clone_task(_: Any, info: Info, task_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await tasks.clone(info.context, viewer, parse_id(task_id, "taskId"))


def _progress(row: dict, _: GraphQLResolveInfo) -> dict[str, Any] | None:
    if row.get("progress_at") is None:
        return None
    return {
        "percent": row["progress_percent"],
        "step": row["progress_step"],
        "updated_at": row["progress_at"],
    }


task_type.set_field("progress", _progress)
run_type.set_field("progress", _progress)


@task_type.field("transitions")
async def resolve_transitions(
    task: dict, info: Info, first: int | None = None, after: str | None = None
) -> dict[str, Any]:
    size, after_id = tasks.transitions_page(first, after)
    page_: dict[str, Any] = await info.context.loaders.load(
        tasks.transitions_by_task_page, (task["id"], size, after_id)
    )
    return page_


@transition_type.field("from")
def resolve_transition_from(row: dict, _: GraphQLResolveInfo) -> str | None:
    value = row["from_status"]
    return None if value is None else str(value)


@transition_type.field("to")
def resolve_transition_to(row: dict, _: GraphQLResolveInfo) -> str:
    return str(row["to_status"])


@transition_type.field("actor")
def resolve_transition_actor(row: dict, _: GraphQLResolveInfo) -> str:
    return str(row["actor_type"])


@transition_type.field("smith")
async def resolve_transition_smith(row: dict, info: Info) -> dict[str, Any] | None:
    return await smiths.smith_or_none(info.context, row["smith_id"])


@schedule_type.field("createdBy")
async def resolve_schedule_created_by(row: dict, info: Info) -> dict[str, Any] | None:
    smith: dict[str, Any] | None = await info.context.loaders.load(smiths_by_id, row["created_by"])
    return smith


# The analytics dict's keys are snake_case names Ariadne would not derive from "p50...".
@analytics_type.field("meanDurationSeconds")
def resolve_mean_duration(row: dict, _: GraphQLResolveInfo) -> float | None:
    value = row["mean_duration_seconds"]
    return None if value is None else float(value)


@analytics_type.field("p50DurationSeconds")
def resolve_p50_duration(row: dict, _: GraphQLResolveInfo) -> float | None:
    value = row["p50_duration_seconds"]
    return None if value is None else float(value)


@analytics_type.field("p95DurationSeconds")
def resolve_p95_duration(row: dict, _: GraphQLResolveInfo) -> float | None:
    value = row["p95_duration_seconds"]
    return None if value is None else float(value)


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

bindables = [
    query,
    mutation,
    task_type,
    run_type,
    run_metrics,
    transition_type,
    schedule_type,
    analytics_type,
    subscription,
]
