"""Tasks and runs: listing, dispatching a task to a fleet's best robot, cancelling, and their loaders."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app import audit, commands
from app.context import Context, Viewer
from app.core.channels import channels
from app.core.errors import Conflict, DomainError, Invalid, NotFound
from app.core.validation import parse_id, required_text
from app.infra.db import Pool, Record, fetch_by_ids, group_rows, returned
from app.infra.eventlog import record

OPEN_STATUSES = ("PENDING", "ASSIGNED", "IN_PROGRESS")

TASKS = """
SELECT t.* FROM tasks t
WHERE t.deleted_at IS NULL
  AND ($1::task_status IS NULL OR t.status = $1::task_status)
  AND ($2::task_type IS NULL OR t.type = $2::task_type)
  AND ($3::task_priority IS NULL OR t.priority = $3::task_priority)
  AND ($4::uuid IS NULL OR EXISTS (
        SELECT 1 FROM task_robots tr WHERE tr.task_id = t.id AND tr.robot_id = $4::uuid))
ORDER BY t.created_at DESC, t.id
LIMIT $5 OFFSET $6
"""
TASKS_BY_ID = "SELECT * FROM tasks WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
# A run is shown while its task and its robot are: a deleted one takes its runs out of sight too.
RUNS = """
SELECT ru.* FROM runs ru
JOIN tasks t ON t.id = ru.task_id AND t.deleted_at IS NULL
JOIN robots r ON r.id = ru.robot_id AND r.deleted_at IS NULL
WHERE ($1::uuid IS NULL OR ru.task_id = $1::uuid) AND ($2::uuid IS NULL OR ru.robot_id = $2::uuid)
ORDER BY ru.started_at NULLS LAST, ru.created_at, ru.id
LIMIT $3 OFFSET $4
"""
RUNS_BY_TASK_ID = """
SELECT ru.* FROM runs ru JOIN robots r ON r.id = ru.robot_id AND r.deleted_at IS NULL
WHERE ru.task_id = ANY($1::uuid[])
ORDER BY ru.started_at NULLS LAST, ru.created_at, ru.id
"""
ROBOTS_BY_TASK_ID = """
SELECT tr.task_id AS assigned_task_id, r.*
FROM task_robots tr JOIN robots r ON r.id = tr.robot_id
WHERE tr.task_id = ANY($1::uuid[]) AND r.deleted_at IS NULL
ORDER BY tr.assigned_at, r.id
"""

LOCK_FLEET = "SELECT id, active_task_id FROM fleets WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
INSERT_TASK = """
INSERT INTO tasks (name, description, type, parameters, priority, fleet_id, scheduled_at, created_by)
VALUES ($1, $2, $3::task_type, $4, $5::task_priority, $6, $7, $8)
RETURNING *
"""
# IDLE robots first (they are free now), then the most recently seen (most likely reachable).
PICK_ROBOT = """
SELECT * FROM robots
WHERE fleet_id = $1 AND deleted_at IS NULL AND status IN ('IDLE', 'WORKING')
ORDER BY (status = 'IDLE') DESC, last_seen DESC NULLS LAST, id
LIMIT 1
FOR UPDATE
"""
INSERT_ASSIGNMENT = """
INSERT INTO task_robots (task_id, robot_id, confidence, estimated_duration)
VALUES ($1, $2, 1.0, NULL)
RETURNING task_id, robot_id, confidence, estimated_duration, assigned_at
"""
SET_TASK_STATUS = "UPDATE tasks SET status = $2::task_status WHERE id = $1 RETURNING *"
ROBOT_TO_WORKING = "UPDATE robots SET status = 'WORKING' WHERE id = $1 AND status = 'IDLE' RETURNING *"
INSERT_RUN = "INSERT INTO runs (task_id, robot_id, status) VALUES ($1, $2, 'PENDING') RETURNING *"
SET_ACTIVE_TASK = "UPDATE fleets SET active_task_id = $2 WHERE id = $1 AND active_task_id IS NULL"

LOCK_TASK = "SELECT * FROM tasks WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
CANCEL_RUNS = """
UPDATE runs SET status = 'CANCELLED', completed_at = now()
WHERE task_id = $1 AND status IN ('PENDING', 'RUNNING')
"""
# A robot still assigned to another open task keeps working on that one.
RELEASE_ROBOTS = """
UPDATE robots r SET status = 'IDLE'
FROM task_robots tr
WHERE tr.task_id = $1 AND tr.robot_id = r.id AND r.status = 'WORKING' AND r.deleted_at IS NULL
  AND NOT EXISTS (
    SELECT 1 FROM task_robots other JOIN tasks ot ON ot.id = other.task_id
    WHERE other.robot_id = r.id AND other.task_id <> $1 AND ot.deleted_at IS NULL
      AND ot.status IN ('PENDING', 'ASSIGNED', 'IN_PROGRESS'))
RETURNING r.*
"""
CLEAR_ACTIVE_TASK = "UPDATE fleets SET active_task_id = NULL WHERE active_task_id = $1"


async def tasks_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, TASKS_BY_ID, ids)


async def runs_by_task_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(RUNS_BY_TASK_ID, ids), "task_id")
    return [grouped.get(i, []) for i in ids]


def _robot(row: Any) -> dict[str, Any]:
    robot = dict(row)
    robot.pop("assigned_task_id")
    return robot


async def robots_by_task_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(ROBOTS_BY_TASK_ID, ids), "assigned_task_id", _robot)
    return [grouped.get(i, []) for i in ids]


async def list_tasks(ctx: Context, task_filter: dict[str, Any], limit: int, offset: int) -> list[dict]:
    robot_id = task_filter.get("assigned_robot_id")
    rows = await ctx.db.fetch(
        TASKS,
        task_filter.get("status"),
        task_filter.get("type"),
        task_filter.get("priority"),
        parse_id(robot_id, "assignedRobotId") if robot_id is not None else None,
        limit,
        offset,
    )
    return [dict(r) for r in rows]


async def get_task(ctx: Context, task_id: str) -> dict[str, Any] | None:
    task: dict[str, Any] | None = await ctx.loaders.load(tasks_by_id, task_id)
    return task


async def list_runs(
    ctx: Context, task_id: str | None, robot_id: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await ctx.db.fetch(RUNS, task_id, robot_id, limit, offset)]


class _NoRobots(Exception):
    """Raised inside the dispatch transaction so that it rolls back."""


def _payload_error(error: DomainError) -> dict[str, Any]:
    return {"task": None, "assignments": None, "errors": [error.as_payload_error()]}


async def dispatch(ctx: Context, viewer: Viewer, fleet_id: str, task_input: dict[str, Any]) -> dict[str, Any]:
    try:
        fleet_id = parse_id(fleet_id, "fleetId")
        name = required_text(task_input.get("name"), "name")
    except Invalid as exc:
        return _payload_error(exc)
    scheduled_at = task_input.get("scheduled_at") or datetime.now(UTC)
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            if await conn.fetchrow(LOCK_FLEET, fleet_id) is None:
                return _payload_error(NotFound.of("Fleet", fleet_id))
            # The inserted row, then the row as dispatched (a dict).
            task: Record | dict[str, Any] = returned(
                await conn.fetchrow(
                    INSERT_TASK,
                    name,
                    task_input.get("description"),
                    task_input["type"],
                    task_input.get("parameters"),
                    task_input.get("priority") or "NORMAL",
                    fleet_id,
                    scheduled_at,
                    viewer.id,
                )
            )
            robot = await conn.fetchrow(PICK_ROBOT, fleet_id)
            if robot is None:
                # Rolled back: nothing schedules PENDING tasks later, so an unassigned task
                # would only linger; the caller retries once a robot is free.
                raise _NoRobots
            assignment = dict(returned(await conn.fetchrow(INSERT_ASSIGNMENT, task["id"], robot["id"])))
            task = dict(returned(await conn.fetchrow(SET_TASK_STATUS, task["id"], "ASSIGNED")))
            started = await conn.fetchrow(ROBOT_TO_WORKING, robot["id"])
            # The reference created no run; one PENDING run gives the task something to track.
            run = returned(await conn.fetchrow(INSERT_RUN, task["id"], robot["id"]))
            await conn.execute(SET_ACTIVE_TASK, fleet_id, task["id"])
            order = {k: task[k] for k in ("name", "type", "parameters", "priority")}
            sent = await commands.enqueue(
                conn,
                [robot["id"]],
                "DISPATCH_TASK",
                {"taskId": task["id"], **order},
                issued_by=viewer.id,
                task_id=task["id"],
                ttl_s=ctx.resources.settings.command_ttl_s,
            )
            changes = {"fleetId": fleet_id, "robotId": robot["id"], "runId": run["id"], "name": name}
            await audit.record(conn, ctx, viewer.id, "dispatchTask", "Task", task["id"], changes)
            events = [await record(conn, channels.task(fleet_id), task)]
            if started is not None:
                # A robot that was already WORKING did not change, so there is nothing to announce.
                events.append(await record(conn, channels.robot(started["id"]), dict(started)))
    except _NoRobots:
        return _payload_error(Conflict("No available robots in fleet"))
    await commands.publish(ctx.events, sent)
    await ctx.events.publish_recorded(events)
    return {"task": task, "assignments": [assignment], "errors": None}


async def cancel(ctx: Context, viewer: Viewer, task_id: str) -> dict[str, Any]:
    task_id = parse_id(task_id, "taskId")
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_TASK, task_id)
        if current is None:
            raise NotFound.of("Task", task_id)
        if current["status"] not in OPEN_STATUSES:
            # The reference answered NotFound here; the task exists, so CONFLICT says what happened.
            raise Conflict(f"Task is already {current['status']}")
        task = dict(returned(await conn.fetchrow(SET_TASK_STATUS, task_id, "CANCELLED")))
        await conn.execute(CANCEL_RUNS, task_id)
        released = [dict(r) for r in await conn.fetch(RELEASE_ROBOTS, task_id)]
        await conn.execute(CLEAR_ACTIVE_TASK, task_id)
        changes = {"from": current["status"], "releasedRobots": [r["id"] for r in released]}
        await audit.record(conn, ctx, viewer.id, "cancelTask", "Task", task_id, changes)
        events = [await record(conn, channels.task(task["fleet_id"]), task)]
        events += [await record(conn, channels.robot(r["id"]), r) for r in released]
    await ctx.events.publish_recorded(events)
    return task
