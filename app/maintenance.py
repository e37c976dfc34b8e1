"""Maintenance of robots: records (work planned or done) and schedules that plan the next record
when one is completed. The next due maintenance of a robot is its earliest open record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app import audit
from app.context import Context, Viewer
from app.core.errors import Conflict, Invalid, NotFound
from app.core.validation import page
from app.infra.db import Connection, Pool, fetch_by_ids, group_rows, returned

MAX_KIND = 100
MAX_TEXT = 4000
MAX_INTERVAL_DAYS = 3650

LIVE_ROBOT = "SELECT id FROM robots WHERE id = $1 AND deleted_at IS NULL"
INSERT_RECORD = """
INSERT INTO maintenance_records (robot_id, schedule_id, kind, description, due_at, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *
"""
INSERT_SCHEDULE = """
INSERT INTO maintenance_schedules (robot_id, kind, description, interval_days, created_by)
VALUES ($1, $2, $3, $4, $5)
RETURNING *
"""
LOCK_RECORD = "SELECT * FROM maintenance_records WHERE id = $1 FOR UPDATE"
COMPLETE = """
UPDATE maintenance_records SET status = 'COMPLETED', completed_at = now(), completed_by = $2, notes = $3
WHERE id = $1
RETURNING *
"""
CANCEL = "UPDATE maintenance_records SET status = 'CANCELLED', notes = $2 WHERE id = $1 RETURNING *"
ACTIVE_SCHEDULE = "SELECT * FROM maintenance_schedules WHERE id = $1 AND active"
# Open records first by due date (undated last), then the finished ones, newest first.
RECORDS_OF_ROBOT = """
SELECT m.* FROM maintenance_records m JOIN robots r ON r.id = m.robot_id AND r.deleted_at IS NULL
WHERE m.robot_id = $1 AND ($2::maintenance_status IS NULL OR m.status = $2::maintenance_status)
ORDER BY (m.status = 'SCHEDULED') DESC, m.due_at NULLS LAST, m.created_at DESC, m.id
LIMIT $3 OFFSET $4
"""
OPEN_BY_ROBOT = """
SELECT * FROM maintenance_records
WHERE robot_id = ANY($1::uuid[]) AND status = 'SCHEDULED'
ORDER BY robot_id, due_at NULLS LAST, created_at, id
"""
SCHEDULES_BY_ROBOT = """
SELECT * FROM maintenance_schedules WHERE robot_id = ANY($1::uuid[]) AND active
ORDER BY robot_id, created_at, id
"""
SCHEDULES_BY_ID = "SELECT * FROM maintenance_schedules WHERE id = ANY($1::uuid[])"


def _text(value: str | None, field: str, limit: int, required: bool = False) -> str | None:
    text = (value or "").strip()
    if required and not text:
        raise Invalid(f"{field} is required", field=field)
    if len(text) > limit or "\x00" in text:
        raise Invalid(f"{field} must be at most {limit} characters of text", field=field)
    return text or None


def _interval(days: int) -> int:
    if not 1 <= days <= MAX_INTERVAL_DAYS:
        raise Invalid(f"intervalDays must be between 1 and {MAX_INTERVAL_DAYS}", field="intervalDays")
    return days


async def open_by_robot_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(OPEN_BY_ROBOT, ids), "robot_id")
    return [grouped.get(i, []) for i in ids]


async def schedules_by_robot_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(SCHEDULES_BY_ROBOT, ids), "robot_id")
    return [grouped.get(i, []) for i in ids]


async def schedules_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, SCHEDULES_BY_ID, ids)


async def list_records(
    pool: Pool, robot_id: str, status: str | None, limit: int | None, offset: int | None
) -> list[dict[str, Any]]:
    size, skip = page(limit, offset)
    return [dict(r) for r in await pool.fetch(RECORDS_OF_ROBOT, robot_id, status, size, skip)]


async def _require_robot(conn: Connection, robot_id: str) -> None:
    if await conn.fetchval(LIVE_ROBOT, robot_id) is None:
        raise NotFound.of("Robot", robot_id)


async def create_record(ctx: Context, viewer: Viewer, robot_id: str, input: dict[str, Any]) -> dict[str, Any]:
    """An open record: work to do on the robot, due at `dueAt` (or undated)."""
    kind = _text(input.get("kind"), "input.kind", MAX_KIND, required=True)
    description = _text(input.get("description"), "input.description", MAX_TEXT)
    due_at: datetime | None = input.get("due_at")
    async with ctx.db.acquire() as conn, conn.transaction():
        await _require_robot(conn, robot_id)
        row = dict(
            returned(await conn.fetchrow(INSERT_RECORD, robot_id, None, kind, description, due_at, viewer.id))
        )
        changes = {"robotId": robot_id, "kind": kind, "dueAt": due_at.isoformat() if due_at else None}
        await audit.record(
            conn, ctx, viewer.id, "createMaintenanceRecord", "MaintenanceRecord", row["id"], changes
        )
    return row


async def create_schedule(
    ctx: Context, viewer: Viewer, robot_id: str, input: dict[str, Any]
) -> dict[str, Any]:
    """A recurring plan and its first open record, due at `firstDueAt` or one interval from now."""
    kind = _text(input.get("kind"), "input.kind", MAX_KIND, required=True)
    description = _text(input.get("description"), "input.description", MAX_TEXT)
    days = _interval(int(input["interval_days"]))
    first_due: datetime | None = input.get("first_due_at")
    async with ctx.db.acquire() as conn, conn.transaction():
        await _require_robot(conn, robot_id)
        schedule = dict(
            returned(await conn.fetchrow(INSERT_SCHEDULE, robot_id, kind, description, days, viewer.id))
        )
        due = first_due or await conn.fetchval("SELECT now() + make_interval(days => $1)", days)
        await conn.execute(INSERT_RECORD, robot_id, schedule["id"], kind, description, due, viewer.id)
        changes = {"robotId": robot_id, "kind": kind, "intervalDays": days, "firstDueAt": due.isoformat()}
        await audit.record(
            conn, ctx, viewer.id, "createMaintenanceSchedule", "MaintenanceSchedule", schedule["id"], changes
        )
    return schedule


async def _lock_open(conn: Connection, record_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(LOCK_RECORD, record_id)
    if row is None:
        raise NotFound.of("MaintenanceRecord", record_id)
    if row["status"] != "SCHEDULED":
        raise Conflict(f"The maintenance record is already {row['status']}", field="id")
    return dict(row)


async def complete(ctx: Context, viewer: Viewer, record_id: str, notes: str | None) -> dict[str, Any]:
    """The open record -> COMPLETED; a scheduled one plans its successor one interval later."""
    text = _text(notes, "notes", MAX_TEXT)
    async with ctx.db.acquire() as conn, conn.transaction():
        before = await _lock_open(conn, record_id)
        row = dict(returned(await conn.fetchrow(COMPLETE, record_id, viewer.id, text)))
        following = None
        schedule = before["schedule_id"] and await conn.fetchrow(ACTIVE_SCHEDULE, before["schedule_id"])
        if schedule:
            due = await conn.fetchval(
                "SELECT $1::timestamptz + make_interval(days => $2)",
                row["completed_at"],
                schedule["interval_days"],
            )
            following = returned(
                await conn.fetchrow(
                    INSERT_RECORD,
                    row["robot_id"],
                    schedule["id"],
                    schedule["kind"],
                    schedule["description"],
                    due,
                    viewer.id,
                )
            )["id"]
        changes = {"status": {"from": "SCHEDULED", "to": "COMPLETED"}, "next": following}
        await audit.record(
            conn, ctx, viewer.id, "completeMaintenance", "MaintenanceRecord", record_id, changes
        )
    return row


async def cancel(ctx: Context, viewer: Viewer, record_id: str, notes: str | None) -> dict[str, Any]:
    """The open record -> CANCELLED (a schedule plans nothing for it)."""
    text = _text(notes, "notes", MAX_TEXT)
    async with ctx.db.acquire() as conn, conn.transaction():
        await _lock_open(conn, record_id)
        row = dict(returned(await conn.fetchrow(CANCEL, record_id, text)))
        changes = {"status": {"from": "SCHEDULED", "to": "CANCELLED"}}
        await audit.record(conn, ctx, viewer.id, "cancelMaintenance", "MaintenanceRecord", record_id, changes)
    return row
