"""What robots and time do to open runs, applied level-triggered: each pass reads the open runs
whose state disagrees with what is stored about them (the DISPATCH_TASK command's state, the
robot's TASK_* reports on robots/{id}/events, the robot's status, the clock) and moves each in a
transaction of its own, locking task then run (SKIP LOCKED for the run: another worker has it).
A missed wake-up only delays a move to the next pass; a pass repeated changes nothing.

- command SUCCEEDED: the robot accepted the run -> RUNNING, task IN_PROGRESS
- command FAILED, EXPIRED or TIMED_OUT before the run started: the run FAILED (retried)
- TASK_PROGRESS {percent, step}: stored on run and task, streamed
- TASK_COMPLETED {metrics?} / TASK_FAILED {reason}: the run ends, the task with it (or retried)
- the robot OFFLINE or deleted: the run FAILED "robot went OFFLINE"; the task is handed over
  through the queue to another robot while attempts remain
- RUNNING longer than task_run_timeout_s: FAILED "run timed out"
"""

from __future__ import annotations

import logging
import math
from typing import Any

from app.core.errors import Conflict
from app.infra.db import Connection
from app.settings import Settings
from app.tasks import lifecycle, rules
from app.tasks.lifecycle import Outbox
from app.tasks.rules import SYSTEM, robot_actor

log = logging.getLogger("sepulki.tasks")

# (run id, what to do, detail); one statement per pass finds every kind.
DUE = """
SELECT ru.id AS run_id, 'ack' AS kind, c.state::text AS state, c.detail AS detail,
       NULL::bigint AS event_id, NULL::jsonb AS data
FROM runs ru JOIN robot_commands c ON c.id = ru.command_id
WHERE ru.status = 'PENDING' AND c.state IN ('SUCCEEDED', 'FAILED', 'EXPIRED', 'TIMED_OUT')
UNION ALL
SELECT ru.id, 'offline', r.status::text, NULL, NULL, NULL
FROM runs ru JOIN robots r ON r.id = ru.robot_id
WHERE ru.status IN ('PENDING', 'RUNNING') AND (r.status = 'OFFLINE' OR r.deleted_at IS NOT NULL)
UNION ALL
SELECT ru.id, 'timeout', NULL, NULL, NULL, NULL FROM runs ru
WHERE ru.status = 'RUNNING' AND ru.started_at < now() - $1::int * interval '1 second'
UNION ALL
SELECT ru.id, 'orphan', t.status::text, NULL, NULL, NULL
FROM runs ru JOIN tasks t ON t.id = ru.task_id
WHERE ru.status IN ('PENDING', 'RUNNING')
  AND (t.status IN ('COMPLETED', 'FAILED', 'CANCELLED') OR t.deleted_at IS NOT NULL)
UNION ALL
SELECT run_id, kind, type, message, event_id, data FROM (
  SELECT ru.id AS run_id, 'report' AS kind, e.type, e.message, e.id AS event_id, e.data,
         ru.progress_event_id,
         row_number() OVER (PARTITION BY ru.id, e.type = 'TASK_PROGRESS' ORDER BY e.ts DESC, e.id DESC) AS n
  FROM runs ru
  JOIN robot_events e ON e.robot_id = ru.robot_id AND e.ts > ru.created_at - interval '1 day'
  WHERE ru.status IN ('PENDING', 'RUNNING')
    AND e.type IN ('TASK_PROGRESS', 'TASK_COMPLETED', 'TASK_FAILED')
    AND (e.data->>'runId' = ru.id::text OR (NOT e.data ? 'runId' AND e.data->>'taskId' = ru.task_id::text))
) x WHERE n = 1 AND (type <> 'TASK_PROGRESS' OR progress_event_id IS DISTINCT FROM event_id)
"""
LOCK_RUN_SKIP = "SELECT * FROM runs WHERE id = $1 FOR UPDATE SKIP LOCKED"
RUN_TASK = "SELECT task_id FROM runs WHERE id = $1"
MAX_STEP = 200
MAX_REASON = 500


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if isinstance(value, str) and value.strip() else None


def _percent(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(100.0, max(0.0, float(value)))


async def _apply(conn: Connection, settings: Settings, due: Any) -> Outbox | None:
    out = Outbox()
    async with conn.transaction():
        task_id = await conn.fetchval(RUN_TASK, due["run_id"])
        task_row = await conn.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        run_row = await conn.fetchrow(LOCK_RUN_SKIP, due["run_id"])
        if task_row is None or run_row is None or run_row["status"] not in rules.OPEN_RUN:
            return None
        task, run = dict(task_row), dict(run_row)
        robot = robot_actor(run["robot_id"])
        kind = due["kind"]
        if kind == "orphan":
            await lifecycle.move_run(conn, run, "CANCELLED", f"task is {task['status']}")
            await lifecycle.free_robot(conn, out, run["robot_id"], task["id"])
        elif kind == "offline":
            why = "robot went OFFLINE" if due["state"] == "OFFLINE" else "robot was deleted"
            await lifecycle.finish_run(conn, out, settings, task, run, "FAILED", SYSTEM, why)
        elif kind == "timeout":
            why = f"run timed out after {settings.task_run_timeout_s} s"
            await lifecycle.finish_run(conn, out, settings, task, run, "FAILED", SYSTEM, why)
        elif kind == "ack":
            if due["state"] == "SUCCEEDED":
                await lifecycle.start_run(conn, out, task, run, robot)
            else:
                why = due["detail"] or f"DISPATCH_TASK command {due['state']}"
                actor = robot if due["state"] == "FAILED" else SYSTEM
                await lifecycle.finish_run(conn, out, settings, task, run, "FAILED", actor, why)
        else:
            await _report(conn, out, settings, task, run, due)
    return out


async def _report(
    conn: Connection, out: Outbox, settings: Settings, task: dict[str, Any], run: dict[str, Any], due: Any
) -> None:
    data = due["data"] if isinstance(due["data"], dict) else {}
    robot = robot_actor(run["robot_id"])
    if due["state"] == rules.PROGRESS:
        if run["status"] == "PENDING":  # progress before the ack: the run evidently started
            await lifecycle.start_run(conn, out, task, run, robot)
            run["status"] = "RUNNING"
        step = _text(data.get("step"), MAX_STEP)
        await lifecycle.report_progress(conn, out, run, _percent(data.get("percent")), step, due["event_id"])
    elif due["state"] == rules.COMPLETED:
        metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else None
        await lifecycle.finish_run(conn, out, settings, task, run, "COMPLETED", robot, None, metrics)
    else:
        why = (
            _text(data.get("reason"), MAX_REASON)
            or _text(due["detail"], MAX_REASON)
            or "robot reported failure"
        )
        await lifecycle.finish_run(conn, out, settings, task, run, "FAILED", robot, why)


async def react(conn: Connection, settings: Settings) -> list[Outbox]:
    """One pass over the open runs; returns what each committed move has to publish."""
    done: list[Outbox] = []
    for due in await conn.fetch(DUE, settings.task_run_timeout_s):
        try:
            out = await _apply(conn, settings, due)
        except Conflict as exc:  # rolled back; the state moved under us, the next pass sees it
            log.info("task report for run %s not applied: %s", due["run_id"], exc.message)
            continue
        if out is not None:
            done.append(out)
    return done
