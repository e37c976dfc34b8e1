"""Reading tasks: lists, loaders, a robot's task history, a task's transition log (a Relay
connection, keyset-paged on the log's id) and a fleet's task analytics (one statement)."""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from datetime import datetime
from typing import Any

from app.context import Context
from app.core.errors import Invalid, NotFound
from app.core.validation import parse_id
from app.infra.db import Pool, fetch_by_ids, group_rows

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
# One page per task: the first $3 + 1 transitions after the cursor (the extra one says whether
# a next page exists).
TRANSITIONS = """
SELECT * FROM (
  SELECT tt.*, row_number() OVER (PARTITION BY tt.task_id ORDER BY tt.id) AS n
  FROM task_transitions tt
  WHERE tt.task_id = ANY($1::uuid[]) AND tt.id > $2
) x WHERE n <= $3 + 1
ORDER BY task_id, id
"""
ROBOT_EXISTS = "SELECT id FROM robots WHERE id = $1 AND deleted_at IS NULL"
# The robot's tasks, by their latest run on it, newest first.
HISTORY = """
SELECT t.*, h.last_run_at FROM (
  SELECT task_id, max(created_at) AS last_run_at FROM runs WHERE robot_id = $1
  GROUP BY task_id ORDER BY last_run_at DESC LIMIT $2
) h JOIN tasks t ON t.id = h.task_id AND t.deleted_at IS NULL
ORDER BY h.last_run_at DESC, t.id
"""
# Tasks created in the window; durations from start (first IN_PROGRESS) to completion of the
# COMPLETED ones; failure reasons of every failed run of those tasks (retried ones included).
ANALYTICS = """
WITH t AS (
  SELECT * FROM tasks
  WHERE fleet_id = $1 AND deleted_at IS NULL AND created_at >= $2 AND created_at <= $3
), d AS (
  SELECT extract(epoch FROM completed_at - started_at)::float8 AS s
  FROM t WHERE status = 'COMPLETED' AND started_at IS NOT NULL AND completed_at IS NOT NULL
)
SELECT
  EXISTS (SELECT 1 FROM fleets WHERE id = $1 AND deleted_at IS NULL) AS fleet_exists,
  (SELECT count(*) FROM t) AS total,
  (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM
     (SELECT status::text, count(*) AS n FROM t GROUP BY status) x) AS by_status,
  (SELECT coalesce(jsonb_object_agg(type, n), '{}') FROM
     (SELECT type::text, count(*) AS n FROM t GROUP BY type) x) AS by_type,
  (SELECT avg(s) FROM d) AS mean_s,
  (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) FROM d) AS p50_s,
  (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY s) FROM d) AS p95_s,
  (SELECT coalesce(jsonb_agg(jsonb_build_object('reason', reason, 'count', n) ORDER BY n DESC, reason), '[]')
   FROM (SELECT coalesce(ru.failure_reason, 'unknown') AS reason, count(*) AS n
         FROM runs ru JOIN t ON t.id = ru.task_id WHERE ru.status = 'FAILED' GROUP BY 1) x) AS failures
"""
TASK_STATUSES = ("PENDING", "ASSIGNED", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED")
TASK_TYPES = ("PICK_AND_PLACE", "ASSEMBLY", "INSPECTION", "TRANSPORT", "MAINTENANCE", "PATROL", "CUSTOM")
MAX_TRANSITIONS_PAGE = 200
MAX_HISTORY = 500


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


def encode_cursor(transition_id: int) -> str:
    return base64.urlsafe_b64encode(f"transition:{transition_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        kind, _, ident = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition(":")
        if kind != "transition":
            raise ValueError(kind)
        return int(ident)
    except (UnicodeError, ValueError, binascii.Error):
        raise Invalid("after is not a cursor of this connection", field="after") from None


def transitions_page(first: int | None, after: str | None) -> tuple[int, int]:
    size = 50 if first is None else first
    if not 0 <= size <= MAX_TRANSITIONS_PAGE:
        raise Invalid(f"first must be between 0 and {MAX_TRANSITIONS_PAGE}", field="first")
    return size, decode_cursor(after)


TransitionKey = tuple[str, int, int]  # (task id, page size, after id)


async def transitions_by_task_page(pool: Pool, keys: list[TransitionKey]) -> list[dict[str, Any]]:
    """Each key's connection; one statement per distinct (page size, cursor) in the batch, so a
    list of tasks asking for the same page costs one statement."""
    pages: dict[tuple[int, int], list[str]] = defaultdict(list)
    for task_id, size, after in keys:
        pages[size, after].append(task_id)
    found: dict[TransitionKey, list[dict[str, Any]]] = {}
    for (size, after), ids in pages.items():
        grouped = group_rows(await pool.fetch(TRANSITIONS, ids, after, size), "task_id")
        for task_id in ids:
            found[task_id, size, after] = grouped.get(task_id, [])
    result = []
    for key in keys:
        rows = found[key]
        _, size, after = key
        page, more = rows[:size], len(rows) > size
        edges = [{"cursor": encode_cursor(r["id"]), "node": r} for r in page]
        info = {
            "has_next_page": more,
            "has_previous_page": after > 0,
            "start_cursor": edges[0]["cursor"] if edges else None,
            "end_cursor": edges[-1]["cursor"] if edges else None,
        }
        result.append({"edges": edges, "page_info": info})
    return result


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


async def history(ctx: Context, robot_id: str, limit: int | None) -> list[dict[str, Any]]:
    size = 50 if limit is None else limit
    if not 1 <= size <= MAX_HISTORY:
        raise Invalid(f"limit must be between 1 and {MAX_HISTORY}", field="limit")
    if await ctx.db.fetchval(ROBOT_EXISTS, robot_id) is None:
        raise NotFound.of("Robot", robot_id)
    return [dict(r) for r in await ctx.db.fetch(HISTORY, robot_id, size)]


async def analytics(ctx: Context, fleet_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    if start > end:
        raise Invalid("timeRange.start must not be after timeRange.end", field="timeRange")
    row = await ctx.db.fetchrow(ANALYTICS, fleet_id, start, end)
    if row is None or not row["fleet_exists"]:
        raise NotFound.of("Fleet", fleet_id)
    by_status, by_type = row["by_status"], row["by_type"]
    ended = sum(by_status.get(s, 0) for s in ("COMPLETED", "FAILED", "CANCELLED"))
    return {
        "fleet_id": fleet_id,
        "total": row["total"],
        "by_status": [{"status": s, "count": by_status.get(s, 0)} for s in TASK_STATUSES],
        "by_type": [{"type": t, "count": by_type.get(t, 0)} for t in TASK_TYPES],
        "completion_rate": by_status.get("COMPLETED", 0) / ended if ended else None,
        "mean_duration_seconds": row["mean_s"],
        "p50_duration_seconds": row["p50_s"],
        "p95_duration_seconds": row["p95_s"],
        "failure_reasons": row["failures"],
    }
