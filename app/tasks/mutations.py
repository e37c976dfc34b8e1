"""The task mutations: dispatch (into the fleet's queue), cancel, reprioritise, reassign, clone.
Each is one transaction with one audit row naming its transitions; events go out after commit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from app import audit
from app.context import Context, Viewer
from app.core.errors import Conflict, DomainError, Invalid, NotFound
from app.core.validation import parse_id, required_text, storable_text
from app.infra.db import Connection
from app.tasks import lifecycle, queue, rules
from app.tasks.lifecycle import Outbox
from app.tasks.rules import Actor

LOCK_FLEET = "SELECT id FROM fleets WHERE id = $1 AND deleted_at IS NULL"
INSERT_TASK = """
INSERT INTO tasks (name, description, type, parameters, priority, fleet_id, scheduled_at, created_by)
VALUES ($1, $2, $3::task_type, $4, $5::task_priority, $6, $7, $8)
RETURNING *
"""
SET_PRIORITY = "UPDATE tasks SET priority = $2::task_priority WHERE id = $1 RETURNING *"
LOCK_ROBOT = "SELECT * FROM robots WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
ROBOT_BUSY = "SELECT task_id FROM runs WHERE robot_id = $1 AND status IN ('PENDING', 'RUNNING')"


def _actor(ctx: Context, viewer: Viewer) -> Actor:
    return Actor("SMITH", smith_id=viewer.id, client_ip=ctx.client_ip, user_agent=ctx.user_agent)


def _payload_error(error: DomainError) -> dict[str, Any]:
    return {"task": None, "assignments": None, "errors": [error.as_payload_error()]}


async def _lock_task(conn: Connection, task_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(lifecycle.LOCK_TASK, task_id)
    if row is None:
        raise NotFound.of("Task", task_id)
    return dict(row)


async def dispatch(ctx: Context, viewer: Viewer, fleet_id: str, task_input: dict[str, Any]) -> dict[str, Any]:
    """Queues the task in its fleet and, when it is due and heads the queue, assigns it to the
    best free robot at once; otherwise it stays PENDING until the worker assigns it."""
    try:
        fleet_id = parse_id(fleet_id, "fleetId")
        name = required_text(task_input.get("name"), "name")
        description = storable_text(task_input.get("description"), "description")
    except Invalid as exc:
        return _payload_error(exc)
    scheduled_at = task_input.get("scheduled_at") or datetime.now(UTC)
    actor = _actor(ctx, viewer)
    out = Outbox()
    settings = ctx.resources.settings
    assignments: list[dict[str, Any]] = []
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchrow(LOCK_FLEET, fleet_id) is None:
            return _payload_error(NotFound.of("Fleet", fleet_id))
        args = [name, description, task_input["type"], task_input.get("parameters"),
                task_input.get("priority") or "NORMAL", fleet_id, scheduled_at, viewer.id]  # fmt: skip
        task = await lifecycle.create_task(conn, out, INSERT_TASK, args, actor, "dispatchTask")
        changes: dict[str, Any] = {"fleetId": fleet_id, "name": name, "priority": task["priority"]}
        # The queue decides: the new task is assigned now only if it is due and heads its fleet's
        # queue (our own uncommitted row is visible and locked by us); otherwise, or when no robot
        # is free, it stays PENDING and the worker assigns it when a robot frees up.
        head = await conn.fetchrow(queue.NEXT_TASK, fleet_id, [])
        if head is not None and head["id"] == task["id"]:
            placed = Outbox()
            try:
                async with conn.transaction():  # a savepoint: a lost race undoes only the assignment
                    assignment, run = await queue.assign_best(
                        conn, placed, settings, task, actor, issued_by=viewer.id
                    )
                assignments.append(assignment)
                changes |= {"robotId": assignment["robot_id"], "runId": run["id"]}
                out.events += placed.events
                out.commands += placed.commands
            except (queue.NoRobot, queue.Contended, asyncpg.UniqueViolationError):
                task = dict(head)
        changes["status"] = task["status"]
        await audit.record(conn, ctx, viewer.id, "dispatchTask", "Task", task["id"], changes)
    await out.publish(ctx.events)
    return {"task": task, "assignments": assignments, "errors": None}


async def cancel(ctx: Context, viewer: Viewer, task_id: str) -> dict[str, Any]:
    task_id = parse_id(task_id, "taskId")
    out = Outbox()
    settings = ctx.resources.settings
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await _lock_task(conn, task_id)
        task, _run, freed = await lifecycle.cancel_task(
            conn,
            out,
            settings,
            current,
            _actor(ctx, viewer),
            "cancelTask",
            run_reason="task cancelled",
            issued_by=viewer.id,
        )
        changes = {"from": current["status"], "releasedRobots": freed}
        await audit.record(conn, ctx, viewer.id, "cancelTask", "Task", task_id, changes)
    await out.publish(ctx.events)
    return task


async def update_priority(ctx: Context, viewer: Viewer, task_id: str, priority: str) -> dict[str, Any]:
    out = Outbox()
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await _lock_task(conn, task_id)
        if current["status"] not in rules.OPEN:
            raise Conflict(f"Task is already {current['status']}")
        task = dict(await conn.fetchrow(SET_PRIORITY, task_id, priority) or {})
        changes = {"from": current["priority"], "to": priority}
        await audit.record(conn, ctx, viewer.id, "updateTaskPriority", "Task", task_id, changes)
        await lifecycle.announce_task(conn, out, task)
        if task["status"] == "PENDING":
            await conn.execute(lifecycle.NOTIFY)  # the queue's order changed
    await out.publish(ctx.events)
    return task


async def reassign(ctx: Context, viewer: Viewer, task_id: str, robot_id: str) -> dict[str, Any]:
    """Moves an open task to a free robot of its fleet: the current run (if any) is cancelled and
    its robot told so; the new robot gets a new run and DISPATCH_TASK."""
    out = Outbox()
    settings = ctx.resources.settings
    actor = _actor(ctx, viewer)
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            current = await _lock_task(conn, task_id)
            rules.check_task(current["status"], "ASSIGNED")
            robot = await conn.fetchrow(LOCK_ROBOT, robot_id)
            if robot is None:
                raise NotFound.of("Robot", robot_id)
            if robot["fleet_id"] != current["fleet_id"]:
                raise Invalid("the robot belongs to another fleet than the task", field="robotId")
            if robot["status"] not in ("IDLE", "WORKING"):
                raise Conflict(f"Robot is {robot['status']}")
            busy = await conn.fetchval(ROBOT_BUSY, robot_id)
            if busy == task_id:
                raise Conflict("The task is already on this robot")
            if busy is not None:
                raise Conflict(f"Robot is running task {busy}")
            old = await lifecycle.cancel_open_run(conn, out, settings, task_id, "reassigned", viewer.id)
            if old is not None:
                await lifecycle.free_robot(conn, out, old["robot_id"], task_id)
            reason = f"reassigned to robot {robot_id}" + (f" from robot {old['robot_id']}" if old else "")
            task = dict(current)
            await lifecycle.assign(conn, out, settings, task, robot, actor, reason, issued_by=viewer.id)
            changes = {"robotId": robot_id, "fromRobotId": old["robot_id"] if old else None}
            await audit.record(conn, ctx, viewer.id, "reassignTask", "Task", task_id, changes)
    except asyncpg.UniqueViolationError:
        raise Conflict("Robot was given another task meanwhile") from None
    await out.publish(ctx.events)
    return task


async def clone(ctx: Context, viewer: Viewer, task_id: str) -> dict[str, Any]:
    """A new PENDING task like the given one (name, description, type, parameters, priority,
    fleet), queued for dispatch now."""
    out = Outbox()
    async with ctx.db.acquire() as conn, conn.transaction():
        source = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 AND deleted_at IS NULL", task_id)
        if source is None:
            raise NotFound.of("Task", task_id)
        if source["fleet_id"] is None:
            raise Conflict("Task has no fleet to queue a copy in")
        args = [source["name"], source["description"], source["type"], source["parameters"],
                source["priority"], source["fleet_id"], datetime.now(UTC), viewer.id]  # fmt: skip
        task = await lifecycle.create_task(
            conn, out, INSERT_TASK, args, _actor(ctx, viewer), f"cloned from {task_id}"
        )
        await audit.record(conn, ctx, viewer.id, "cloneTask", "Task", task["id"], {"sourceTaskId": task_id})
    await out.publish(ctx.events)
    return task
