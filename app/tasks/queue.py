"""The dispatch queue: each fleet's due PENDING tasks, by priority then age, go to the best free
robot of the fleet (the score is in `rules` and docs/tasks.md). Each assignment is one
transaction that locks its task and its robot with SKIP LOCKED, so several workers (and the
dispatchTask mutation) split the queue without waiting on each other, and the partial unique
index on open runs makes a double booking fail instead of happen.

An URGENT task that finds no free robot preempts the newest run of a LOW task in its fleet: that
run is cancelled (CANCEL_TASK to its robot), the LOW task goes back to the queue, and the robot
takes the URGENT task in the same transaction."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from app.infra.db import Connection
from app.settings import Settings
from app.tasks import lifecycle, rules
from app.tasks.lifecycle import Outbox
from app.tasks.rules import SYSTEM, Actor

log = logging.getLogger("sepulki.tasks")

# The head of the queue among fleets not yet found without a free robot in this pass.
NEXT_TASK = """
SELECT t.* FROM tasks t
WHERE t.status = 'PENDING' AND t.deleted_at IS NULL AND t.fleet_id IS NOT NULL
  AND coalesce(t.scheduled_at, t.created_at) <= now()
  AND ($1::uuid IS NULL OR t.fleet_id = $1::uuid)
  AND t.fleet_id <> ALL($2::uuid[])
ORDER BY t.priority DESC, t.created_at, t.id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""


# Eligible: IDLE or WORKING (a robot busy outside any task may take one), not deleted, battery at
# least the minimum, no open run. IDLE first; robots that already failed this task last; then the
# score (docs/tasks.md).
def _eligible(fleet: str, min_battery: str) -> str:
    """The condition on robots `r`, with the statement's own placeholders for the two values
    (called only with literal `$n`, at import)."""
    return f"""
r.fleet_id = {fleet} AND r.deleted_at IS NULL AND r.status IN ('IDLE', 'WORKING')
  AND coalesce(r.battery_level, 100) >= {min_battery}
  AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.robot_id = r.id AND o.status IN ('PENDING', 'RUNNING'))
"""  # noqa: S608


PICK_ROBOT = f"""
SELECT r.* FROM robots r
WHERE {_eligible("$1", "$3")}
ORDER BY (r.status = 'IDLE') DESC,
  EXISTS (SELECT 1 FROM runs f WHERE f.task_id = $2 AND f.robot_id = r.id AND f.status = 'FAILED'),
  {rules.W_BATTERY} * coalesce(r.battery_level, 50) / 100
  + {rules.W_HEALTH} * coalesce(r.health_score, 50) / 100
  - {rules.W_LOAD} * least((SELECT count(*) FROM runs l WHERE l.robot_id = r.id
                            AND l.created_at > now() - interval '1 hour'), {rules.LOAD_CAP})::float8
                     / {rules.LOAD_CAP}
  - {rules.W_DISTANCE} * CASE
      WHEN $4::float8 IS NULL OR coalesce(r.floor_position_x, (r.last_pose->'position'->>'x')::float8) IS NULL
      THEN 0
      ELSE least(sqrt(power(coalesce(r.floor_position_x, (r.last_pose->'position'->>'x')::float8) - $4, 2)
                    + power(coalesce(r.floor_position_y, (r.last_pose->'position'->>'y')::float8) - $5, 2))
                 / {rules.DISTANCE_CAP_M}, 1)
    END DESC,
  r.last_seen DESC NULLS LAST, r.id
LIMIT 1
FOR UPDATE OF r SKIP LOCKED
"""  # noqa: S608 (only the module's own numeric constants are interpolated)
# The newest open run of a LOW task on a reachable robot of the fleet, with its task and robot locked.
PREEMPTABLE = """
SELECT ru.* FROM runs ru
JOIN tasks t ON t.id = ru.task_id
JOIN robots r ON r.id = ru.robot_id
WHERE r.fleet_id = $1 AND r.deleted_at IS NULL AND r.status NOT IN ('OFFLINE', 'ERROR', 'MAINTENANCE')
  AND ru.status IN ('PENDING', 'RUNNING') AND t.priority = 'LOW' AND t.status IN ('ASSIGNED', 'IN_PROGRESS')
ORDER BY ru.created_at DESC, ru.id
LIMIT 1
FOR UPDATE OF ru, t, r SKIP LOCKED
"""
# PICK_ROBOT skips robots other transactions hold: when it finds none, this tells a fleet whose
# free robots are only held for a moment (by another dispatcher, or an ingest batch updating them)
# from one that has none.
ANY_ELIGIBLE = f"SELECT EXISTS (SELECT 1 FROM robots r WHERE {_eligible('$1', '$2')})"  # noqa: S608 (constant)
LOCK_ROBOT = "SELECT * FROM robots WHERE id = $1 FOR UPDATE"
# NEXT_TASK skips rows another transaction holds, such as a task whose priority is being raised:
# once a robot is held, a task that has meanwhile come ahead in the fleet's queue must go first.
TASK_AHEAD = """
SELECT EXISTS (
  SELECT 1 FROM tasks t
  WHERE t.status = 'PENDING' AND t.deleted_at IS NULL AND t.fleet_id = $1
    AND coalesce(t.scheduled_at, t.created_at) <= now()
    AND (t.priority > $2::task_priority
         OR (t.priority = $2::task_priority AND (t.created_at, t.id) < ($3::timestamptz, $4::uuid)))
)
"""


class NoRobot(Exception):
    """The task's fleet has no free robot right now."""


class Contended(Exception):
    """The fleet's free robots are all held by other transactions right now."""


class Overtaken(Exception):
    """A task came ahead of this one in its fleet's queue while it was being assigned."""


async def assign_best(
    conn: Connection,
    out: Outbox,
    settings: Settings,
    task: dict[str, Any],
    actor: Actor,
    *,
    issued_by: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Assigns the locked PENDING task to its fleet's best free robot, preempting a LOW run for an
    URGENT task; NoRobot when there is none."""
    x, y = rules.target_location(task.get("parameters"))
    robot = await conn.fetchrow(PICK_ROBOT, task["fleet_id"], task["id"], settings.task_min_battery, x, y)
    if robot is not None:
        return await lifecycle.assign(
            conn, out, settings, task, robot, actor, "dispatched", issued_by=issued_by
        )
    if await conn.fetchval(ANY_ELIGIBLE, task["fleet_id"], settings.task_min_battery):
        raise Contended
    if task["priority"] != "URGENT":
        raise NoRobot
    victim = await conn.fetchrow(PREEMPTABLE, task["fleet_id"])
    if victim is None:
        raise NoRobot
    reason = f"preempted by URGENT task {task['id']}"
    low = dict(await conn.fetchrow(lifecycle.LOCK_TASK, victim["task_id"]) or {})
    cancelled = await lifecycle.move_run(conn, dict(victim), "CANCELLED", reason)
    await lifecycle.stop_robot_task(conn, out, settings, cancelled, issued_by)
    await conn.execute(lifecycle.DROP_ASSIGNMENTS, low["id"], [])
    await lifecycle.move_task(conn, out, low, "PENDING", SYSTEM, reason, run_id=cancelled["id"])
    robot = await conn.fetchrow(LOCK_ROBOT, victim["robot_id"])
    note = f"dispatched, preempting LOW task {low['id']}"
    return await lifecycle.assign(conn, out, settings, task, robot, actor, note, issued_by=issued_by)


async def dispatch_one(
    conn: Connection, settings: Settings, exclude: list[str], fleet_id: str | None = None
) -> tuple[str, Outbox]:
    """One assignment in its own transaction. Answers "assigned", "busy" (the head task's fleet
    has no free robot: added to `exclude`), "raced" (another dispatcher took the robot first, or
    holds the fleet's free robots for now; nothing written) or "empty" (nothing due)."""
    out = Outbox()
    try:
        async with conn.transaction():
            head = await conn.fetchrow(NEXT_TASK, fleet_id, exclude)
            if head is None:
                return "empty", out
            task = dict(head)
            try:
                await assign_best(conn, out, settings, task, SYSTEM)
            except NoRobot:
                exclude.append(task["fleet_id"])
                return "busy", Outbox()
            ahead = await conn.fetchval(
                TASK_AHEAD, task["fleet_id"], task["priority"], task["created_at"], task["id"]
            )
            if ahead:
                raise Overtaken
            return "assigned", out
    except (Overtaken, Contended):
        return "raced", Outbox()
    except asyncpg.UniqueViolationError:
        log.info("task dispatch lost a race for a robot; retrying")
        return "raced", Outbox()


async def dispatch_pass(conn: Connection, settings: Settings, limit: int = 100) -> list[Outbox]:
    """Assigns queued tasks until every fleet's queue is empty or has no free robot; returns
    what each committed assignment has to publish."""
    exclude: list[str] = []
    done: list[Outbox] = []
    raced = 0
    for _ in range(limit):
        outcome, out = await dispatch_one(conn, settings, exclude)
        if outcome == "empty":
            break
        if outcome == "assigned":
            done.append(out)
        elif outcome == "raced":
            # The other transaction commits or rolls back within milliseconds; a short, growing
            # pause lets it instead of spinning on the same locked rows.
            raced += 1
            await asyncio.sleep(min(0.002 * raced, 0.05))
    return done
