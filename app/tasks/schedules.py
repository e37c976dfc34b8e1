"""Scheduled tasks: a one-off time or a cron expression (croniter) in a time zone. The worker
fires a due schedule in one transaction that locks its row (SKIP LOCKED), inserts the task and
moves `next_run_at` on, so an occurrence becomes exactly one task with any number of workers and
across restarts (a unique index on (schedule, occurrence) backs it). Occurrences missed while no
worker ran fire once, late, and the next one is computed from now: no burst of catch-up tasks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter  # type: ignore[import-untyped]

from app import audit
from app.context import Context, Viewer
from app.core.errors import Invalid, NotFound
from app.core.jsonable import jsonable
from app.core.validation import parse_id, required_text, storable_text
from app.infra.db import Connection, Pool, fetch_by_ids, returned
from app.tasks import lifecycle
from app.tasks.lifecycle import Outbox
from app.tasks.rules import SYSTEM

MAX_CRON = 200
FIRE_BATCH = 50

FLEET_EXISTS = "SELECT id FROM fleets WHERE id = $1 AND deleted_at IS NULL"
INSERT_SCHEDULE = """
INSERT INTO scheduled_tasks (fleet_id, name, description, type, parameters, priority, cron, timezone, run_at,
                             next_run_at, created_by)
VALUES ($1, $2, $3, $4::task_type, $5, $6::task_priority, $7, $8, $9, $10, $11)
RETURNING *
"""
SCHEDULES = """
SELECT * FROM scheduled_tasks WHERE ($1::uuid IS NULL OR fleet_id = $1::uuid)
ORDER BY active DESC, next_run_at NULLS LAST, created_at, id LIMIT $2 OFFSET $3
"""
SCHEDULES_BY_ID = "SELECT * FROM scheduled_tasks WHERE id = ANY($1::uuid[])"
DEACTIVATE = "UPDATE scheduled_tasks SET active = false, next_run_at = NULL WHERE id = $1 RETURNING *"
DUE = """
SELECT * FROM scheduled_tasks WHERE active AND next_run_at <= now()
ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED
"""
INSERT_OCCURRENCE = """
INSERT INTO tasks (name, description, type, parameters, priority, fleet_id, scheduled_at, created_by,
                   scheduled_task_id, scheduled_for)
VALUES ($1, $2, $3::task_type, $4, $5::task_priority, $6, $7, $8, $9, $7)
ON CONFLICT DO NOTHING
RETURNING *
"""
ADVANCE = """
UPDATE scheduled_tasks SET next_run_at = $2::timestamptz, active = $2::timestamptz IS NOT NULL,
  last_run_at = $3, fired = fired + 1
WHERE id = $1
"""


def next_after(cron: str, timezone: str, after: datetime) -> datetime:
    """The cron expression's first occurrence strictly after `after`, in UTC."""
    local = after.astimezone(ZoneInfo(timezone))
    nxt: datetime = croniter(cron, local).get_next(datetime)
    return nxt.astimezone(UTC)


def check_schedule(data: dict[str, Any], now: datetime) -> tuple[str | None, str, datetime | None, datetime]:
    """(cron, timezone, run_at, first run) or BAD_USER_INPUT naming the field."""
    cron, run_at = data.get("cron"), data.get("run_at")
    timezone = data.get("timezone") or "UTC"
    if (cron is None) == (run_at is None):
        raise Invalid("give exactly one of runAt (one-off) and cron (recurring)", field="cron")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"unknown time zone {timezone!r}, e.g. Europe/Berlin", field="timezone") from None
    if cron is not None:
        cron = cron.strip()
        if not cron or len(cron) > MAX_CRON or not croniter.is_valid(cron):
            raise Invalid("cron must be a cron expression such as '*/5 * * * *'", field="cron")
        try:
            return cron, timezone, None, next_after(cron, timezone, now)
        except (CroniterBadCronError, ValueError, KeyError):
            raise Invalid("cron must be a cron expression such as '*/5 * * * *'", field="cron") from None
    assert isinstance(run_at, datetime)
    if run_at.tzinfo is None:
        raise Invalid("runAt needs a UTC offset", field="runAt")
    return None, timezone, run_at, run_at


async def schedule(ctx: Context, viewer: Viewer, data: dict[str, Any]) -> dict[str, Any]:
    fleet_id = parse_id(data.get("fleet_id"), "fleetId")
    name = required_text(data.get("name"), "name")
    description = storable_text(data.get("description"), "description")
    cron, timezone, run_at, first = check_schedule(data, datetime.now(UTC))
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchval(FLEET_EXISTS, fleet_id) is None:
            raise NotFound.of("Fleet", fleet_id)
        row = dict(
            returned(
                await conn.fetchrow(
                    INSERT_SCHEDULE,
                    fleet_id,
                    name,
                    description,
                    data["type"],
                    data.get("parameters"),
                    data.get("priority") or "NORMAL",
                    cron,
                    timezone,
                    run_at,
                    first,
                    viewer.id,
                )
            )
        )
        changes = jsonable(
            {"fleetId": fleet_id, "cron": cron, "runAt": run_at, "nextRunAt": first, "name": name}
        )
        await audit.record(conn, ctx, viewer.id, "scheduleTask", "ScheduledTask", row["id"], changes)
        await conn.execute(lifecycle.NOTIFY)
    return row


async def unschedule(ctx: Context, viewer: Viewer, schedule_id: str) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(DEACTIVATE, schedule_id)
        if row is None:
            raise NotFound.of("ScheduledTask", schedule_id)
        await audit.record(conn, ctx, viewer.id, "unscheduleTask", "ScheduledTask", schedule_id, None)
    return dict(row)


async def list_schedules(ctx: Context, fleet_id: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await ctx.db.fetch(SCHEDULES, fleet_id, limit, offset)]


async def schedules_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, SCHEDULES_BY_ID, ids)


async def fire_due(conn: Connection) -> Outbox:
    """Fires the due schedules (up to FIRE_BATCH) in one transaction."""
    out = Outbox()
    async with conn.transaction():
        now = datetime.now(UTC)
        for s in await conn.fetch(DUE, FIRE_BATCH):
            occurrence = s["next_run_at"]
            args = [s["name"], s["description"], s["type"], s["parameters"], s["priority"], s["fleet_id"],
                    occurrence, s["created_by"], s["id"]]  # fmt: skip
            reason = f"scheduled by {s['id']} for {occurrence.isoformat()}"
            task = await lifecycle.create_task(conn, out, INSERT_OCCURRENCE, args, SYSTEM, reason)
            following = next_after(s["cron"], s["timezone"], max(now, occurrence)) if s["cron"] else None
            await conn.execute(ADVANCE, s["id"], following, now)
            changes = jsonable({"occurrence": occurrence, "taskId": task.get("id"), "nextRunAt": following})
            await conn.execute(
                audit.INSERT_AUDIT, None, "fireSchedule", "ScheduledTask", s["id"], changes, None, None
            )
    return out
