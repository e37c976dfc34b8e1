"""Moving tasks and runs, on the caller's connection and inside its transaction: every task
transition is checked against `rules`, written with a row in `task_transitions`, audited (for
robots and the system here; a mutation audits itself, once) and logged as an event, which
`Outbox.publish` sends after the commit. Assigning a task to a robot and finishing a run live here
too, since both move a task, a run and a robot together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app import audit, commands
from app.core.channels import channels
from app.core.errors import Conflict
from app.infra.bus import Events
from app.infra.db import Connection, returned
from app.infra.eventlog import Recorded, record
from app.settings import Settings
from app.tasks import rules
from app.tasks.rules import Actor

NOTIFY = "SELECT pg_notify('task_worker', '')"

MOVE_TASK = """
UPDATE tasks SET
  status = $2::task_status,
  started_at = CASE WHEN $2 = 'IN_PROGRESS' THEN coalesce(started_at, now()) ELSE started_at END,
  completed_at = CASE WHEN $2 IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN now() ELSE NULL END,
  failure_reason = CASE WHEN $2 = 'FAILED' THEN $4 ELSE failure_reason END,
  progress_percent = CASE WHEN $2 = 'COMPLETED' THEN 100
                          WHEN $2 = 'PENDING' THEN NULL ELSE progress_percent END,
  progress_step = CASE WHEN $2 = 'PENDING' THEN NULL ELSE progress_step END
WHERE id = $1 AND status = $3::task_status
RETURNING *
"""
INSERT_TRANSITION = """
INSERT INTO task_transitions (task_id, run_id, from_status, to_status, actor_type, smith_id, robot_id, reason)
VALUES ($1, $2, $3::task_status, $4::task_status, $5, $6, $7, $8)
"""
LOCK_TASK = "SELECT * FROM tasks WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
LOCK_RUN = "SELECT * FROM runs WHERE id = $1 FOR UPDATE"
TASK_ROBOTS = "SELECT robot_id FROM task_robots WHERE task_id = $1"
OPEN_RUN_OF_TASK = "SELECT * FROM runs WHERE task_id = $1 AND status IN ('PENDING', 'RUNNING') FOR UPDATE"
MOVE_RUN = """
UPDATE runs SET
  status = $2::run_status,
  started_at = CASE WHEN $2 = 'RUNNING' THEN coalesce(started_at, now()) ELSE started_at END,
  completed_at = CASE WHEN $2 IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN now() ELSE completed_at END,
  failure_reason = coalesce($4, failure_reason),
  metrics = coalesce($5::jsonb, metrics),
  progress_percent = CASE WHEN $2 = 'COMPLETED' THEN 100 ELSE progress_percent END
WHERE id = $1 AND status = $3::run_status
RETURNING *
"""
RUN_ATTEMPTS = "SELECT count(*) FROM runs WHERE task_id = $1"
INSERT_RUN = """
INSERT INTO runs (task_id, robot_id, status, attempt) VALUES ($1, $2, 'PENDING', $3) RETURNING *
"""
LINK_COMMAND = "UPDATE runs SET command_id = $2 WHERE id = $1"
UPSERT_ASSIGNMENT = """
INSERT INTO task_robots (task_id, robot_id, confidence, estimated_duration) VALUES ($1, $2, $3, NULL)
ON CONFLICT (task_id, robot_id) DO UPDATE SET assigned_at = now(), confidence = EXCLUDED.confidence
RETURNING task_id, robot_id, confidence, estimated_duration, assigned_at
"""
# A requeued or reassigned task is no longer assigned to the robot it leaves; its runs keep the history.
DROP_ASSIGNMENTS = "DELETE FROM task_robots WHERE task_id = $1 AND robot_id <> ALL($2::uuid[])"
ROBOT_TO_WORKING = "UPDATE robots SET status = 'WORKING' WHERE id = $1 AND status = 'IDLE' RETURNING *"
# A robot still assigned to another open task, or running another run, keeps working on it.
FREE_ROBOT = """
UPDATE robots r SET status = 'IDLE'
WHERE r.id = $1 AND r.status = 'WORKING' AND r.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.robot_id = r.id AND o.status IN ('PENDING', 'RUNNING'))
  AND NOT EXISTS (
    SELECT 1 FROM task_robots other JOIN tasks ot ON ot.id = other.task_id
    WHERE other.robot_id = r.id AND other.task_id <> $2 AND ot.deleted_at IS NULL
      AND ot.status IN ('PENDING', 'ASSIGNED', 'IN_PROGRESS'))
RETURNING r.*
"""
SET_ACTIVE_TASK = "UPDATE fleets SET active_task_id = $2 WHERE id = $1 AND active_task_id IS NULL"
CLEAR_ACTIVE_TASK = "UPDATE fleets SET active_task_id = NULL WHERE active_task_id = $1"
SET_PROGRESS = """
UPDATE runs SET progress_percent = $2, progress_step = $3, progress_at = now(), progress_event_id = $4
WHERE id = $1 RETURNING *
"""
SET_TASK_PROGRESS = """
UPDATE tasks SET progress_percent = $2, progress_step = $3, progress_at = now() WHERE id = $1 RETURNING *
"""


@dataclass
class Outbox:
    """What a transaction decided to tell: events and commands to publish after its commit."""

    events: list[Recorded] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, events: Events) -> None:
        await commands.publish(events, self.commands)
        await events.publish_recorded(self.events)


async def announce_task(conn: Connection, out: Outbox, task: dict[str, Any]) -> None:
    out.events.append(await record(conn, channels.task(task["fleet_id"]), task))


async def move_task(
    conn: Connection,
    out: Outbox,
    task: dict[str, Any] | Any,
    to: str,
    actor: Actor,
    reason: str | None = None,
    *,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The task, locked by the caller, moved to `to`: CONFLICT when the lifecycle forbids it."""
    current = task["status"]
    rules.check_task(current, to)
    moved = await conn.fetchrow(MOVE_TASK, task["id"], to, current, reason)
    if moved is None:  # moved by someone else since the caller read it
        raise Conflict(f"Task {task['id']} changed while being moved")
    row = dict(moved)
    await conn.execute(
        INSERT_TRANSITION, row["id"], run_id, current, to, actor.type, actor.smith_id, actor.robot_id, reason
    )
    out.transitions.append({"from": current, "to": to, "reason": reason})
    if actor.type != "SMITH":  # a mutation audits itself, once, with all its transitions
        changes = {"from": current, "to": to, "reason": reason, "runId": run_id, "robotId": actor.robot_id}
        action = "robotTaskReport" if actor.type == "ROBOT" else "taskLifecycle"
        await conn.execute(audit.INSERT_AUDIT, None, action, "Task", row["id"], changes, None, None)
    if to in rules.ENDED:
        await conn.execute(CLEAR_ACTIVE_TASK, row["id"])
    if to == "PENDING":
        await conn.execute(NOTIFY)
    await announce_task(conn, out, row)
    return row


async def create_task(
    conn: Connection, out: Outbox, insert_sql: str, args: list[Any], actor: Actor, reason: str
) -> dict[str, Any]:
    """Inserts a PENDING task with `insert_sql` (RETURNING *) and logs its creation."""
    row = await conn.fetchrow(insert_sql, *args)
    if row is None:
        return {}
    task = dict(row)
    await conn.execute(
        INSERT_TRANSITION,
        task["id"],
        None,
        None,
        "PENDING",
        actor.type,
        actor.smith_id,
        actor.robot_id,
        reason,
    )
    out.transitions.append({"from": None, "to": "PENDING", "reason": reason})
    await conn.execute(NOTIFY)
    await announce_task(conn, out, task)
    return task


async def free_robot(conn: Connection, out: Outbox, robot_id: str, task_id: str) -> None:
    freed = await conn.fetchrow(FREE_ROBOT, robot_id, task_id)
    if freed is not None:
        out.events.append(await record(conn, channels.robot(freed["id"]), dict(freed)))
        await conn.execute(NOTIFY)  # a free robot may take a queued task


async def assign(
    conn: Connection,
    out: Outbox,
    settings: Settings,
    task: dict[str, Any],
    robot: Any,
    actor: Actor,
    reason: str,
    *,
    issued_by: str | None = None,
    confidence: float = 1.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gives the locked task a PENDING run on the locked robot and sends it DISPATCH_TASK; the
    partial unique indexes on runs refuse a robot (or task) with an open run already."""
    attempt = int(await conn.fetchval(RUN_ATTEMPTS, task["id"])) + 1
    run = dict(returned(await conn.fetchrow(INSERT_RUN, task["id"], robot["id"], attempt)))
    await conn.execute(DROP_ASSIGNMENTS, task["id"], [robot["id"]])
    assignment = dict(returned(await conn.fetchrow(UPSERT_ASSIGNMENT, task["id"], robot["id"], confidence)))
    started = await conn.fetchrow(ROBOT_TO_WORKING, robot["id"])
    if started is not None:
        out.events.append(await record(conn, channels.robot(started["id"]), dict(started)))
    order = {k: task[k] for k in ("name", "type", "parameters", "priority")}
    sent = await commands.enqueue(
        conn,
        [robot["id"]],
        "DISPATCH_TASK",
        {"taskId": task["id"], "runId": run["id"], **order},
        issued_by=issued_by,
        task_id=task["id"],
        ttl_s=settings.command_ttl_s,
    )
    out.commands += sent
    await conn.execute(LINK_COMMAND, run["id"], sent[0]["id"])
    run["command_id"] = sent[0]["id"]
    moved = await move_task(conn, out, task, "ASSIGNED", actor, reason, run_id=run["id"])
    await conn.execute(SET_ACTIVE_TASK, moved["fleet_id"], moved["id"])
    task.clear()
    task.update(moved)
    return assignment, run


async def stop_robot_task(
    conn: Connection, out: Outbox, settings: Settings, run: dict[str, Any], issued_by: str | None
) -> None:
    """Tells the robot to drop a run we ended (CANCEL_TASK, best effort like any command)."""
    out.commands += await commands.enqueue(
        conn,
        [run["robot_id"]],
        "CANCEL_TASK",
        {"taskId": run["task_id"], "runId": run["id"]},
        issued_by=issued_by,
        task_id=run["task_id"],
        ttl_s=settings.command_ttl_s,
    )


async def move_run(
    conn: Connection,
    run: dict[str, Any],
    to: str,
    reason: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rules.check_run(run["status"], to)
    moved = await conn.fetchrow(MOVE_RUN, run["id"], to, run["status"], reason, metrics)
    if moved is None:
        raise Conflict(f"Run {run['id']} changed while being moved")
    return dict(moved)


async def start_run(
    conn: Connection, out: Outbox, task: dict[str, Any], run: dict[str, Any], actor: Actor
) -> None:
    """The robot accepted the run (both rows locked by the caller): run RUNNING, task IN_PROGRESS."""
    if run["status"] != "PENDING":
        return
    await move_run(conn, run, "RUNNING")
    if task["status"] == "ASSIGNED":
        await move_task(conn, out, task, "IN_PROGRESS", actor, "robot started the run", run_id=run["id"])


async def finish_run(
    conn: Connection,
    out: Outbox,
    settings: Settings,
    task: dict[str, Any],
    run: dict[str, Any],
    to: str,
    actor: Actor,
    reason: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """A run (locked by the caller with its task) ends COMPLETED or FAILED. Its task completes,
    or on failure is requeued for another attempt (a robot other than those that failed it is
    preferred) until `task_max_attempts` runs have been made, then fails with the run's reason.
    The robot is freed."""
    if run["status"] not in rules.OPEN_RUN:
        return
    ended = await move_run(conn, run, to, reason, metrics)
    await free_robot(conn, out, run["robot_id"], run["task_id"])
    if task["status"] not in rules.OPEN:
        return
    if to == "COMPLETED":
        if task["status"] == "ASSIGNED":
            task = await move_task(
                conn, out, task, "IN_PROGRESS", actor, "robot started the run", run_id=run["id"]
            )
        await move_task(
            conn, out, task, "COMPLETED", actor, reason or "robot completed the run", run_id=run["id"]
        )
        return
    why = reason or "run failed"
    if ended["attempt"] < settings.task_max_attempts:
        note = f"{why}; retrying (attempt {ended['attempt'] + 1} of {settings.task_max_attempts})"
        await conn.execute(DROP_ASSIGNMENTS, task["id"], [])
        await move_task(conn, out, task, "PENDING", actor, note, run_id=run["id"])
    else:
        await move_task(conn, out, task, "FAILED", actor, why, run_id=run["id"])


async def cancel_open_run(
    conn: Connection, out: Outbox, settings: Settings, task_id: str, reason: str, issued_by: str | None
) -> dict[str, Any] | None:
    """Cancels the task's open run, if any, tells its robot, frees it; returns the cancelled run."""
    open_run = await conn.fetchrow(OPEN_RUN_OF_TASK, task_id)
    if open_run is None:
        return None
    cancelled = await move_run(conn, dict(open_run), "CANCELLED", reason)
    await stop_robot_task(conn, out, settings, cancelled, issued_by)
    return cancelled


async def cancel_task(
    conn: Connection,
    out: Outbox,
    settings: Settings,
    task: dict[str, Any],
    actor: Actor,
    reason: str,
    *,
    run_reason: str | None = None,
    issued_by: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """Cancels the open task (locked by the caller) the one way every canceller shares: its open
    run is cancelled and its robot sent CANCEL_TASK, the task moves to CANCELLED, and the robots
    it held are freed unless other work holds them. Returns the task, the run, the robots."""
    rules.check_task(task["status"], "CANCELLED")
    run = await cancel_open_run(conn, out, settings, task["id"], run_reason or reason, issued_by)
    held = await conn.fetch(TASK_ROBOTS, task["id"])
    moved = await move_task(conn, out, task, "CANCELLED", actor, reason, run_id=run["id"] if run else None)
    freed = list(dict.fromkeys([r["robot_id"] for r in held] + ([run["robot_id"]] if run else [])))
    for robot_id in freed:
        await free_robot(conn, out, robot_id, task["id"])
    return moved, run, freed


async def report_progress(
    conn: Connection, out: Outbox, run: dict[str, Any], percent: float | None, step: str | None, event_id: int
) -> None:
    updated = await conn.fetchrow(SET_PROGRESS, run["id"], percent, step, event_id)
    task = await conn.fetchrow(SET_TASK_PROGRESS, run["task_id"], percent, step)
    if updated is not None and task is not None:
        await announce_task(conn, out, dict(task))
