"""Fleets and loci: their queries and loaders, the emergency stop and moving a fleet's locus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app import audit, commands, robot_status
from app.context import Context, Viewer
from app.core.channels import channels
from app.core.errors import Conflict, NotFound
from app.core.validation import finite
from app.edicts import edicts_by_id
from app.infra.db import Pool, fetch_by_ids, returned
from app.infra.eventlog import record
from app.tasks import lifecycle, rules
from app.tasks.lifecycle import Outbox
from app.tasks.rules import Actor

TELEMETRY_WINDOW = timedelta(hours=1)

LIST_FLEETS = """
SELECT * FROM fleets
WHERE deleted_at IS NULL
  AND ($1::fleet_status IS NULL OR status = $1::fleet_status)
  AND ($2::uuid IS NULL OR locus_id = $2::uuid)
ORDER BY name, id
LIMIT $3 OFFSET $4
"""
FLEETS_BY_ID = "SELECT * FROM fleets WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
LIST_LOCI = "SELECT * FROM loci ORDER BY name, id LIMIT $1 OFFSET $2"
LOCI_BY_ID = "SELECT * FROM loci WHERE id = ANY($1::uuid[])"

LOCK_FLEET = "SELECT * FROM fleets WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
STOP_ROBOTS = """
UPDATE robots SET status = 'MAINTENANCE'
WHERE fleet_id = $1 AND deleted_at IS NULL
RETURNING *
"""
FLEET_EXISTS = "SELECT id FROM fleets WHERE id = $1 AND deleted_at IS NULL"
# A task belongs to the fleet when it was dispatched to it or when one of its robots works on it.
LOCK_FLEET_TASKS = """
SELECT * FROM tasks
WHERE deleted_at IS NULL
  AND status = ANY($2::task_status[])
  AND (fleet_id = $1
       OR id IN (SELECT tr.task_id FROM task_robots tr JOIN robots r ON r.id = tr.robot_id
                 WHERE r.fleet_id = $1))
ORDER BY id
FOR UPDATE
"""
# The cancelled tasks' lifecycle moves have already cleared the fleet's active task.
STOP_FLEET = """
UPDATE fleets SET status = 'MAINTENANCE', emergency_stopped_at = coalesce(emergency_stopped_at, now())
WHERE id = $1
RETURNING *
"""
STOP_REASON = "emergency stop"
RELEASE_FLEET = "UPDATE fleets SET emergency_stopped_at = NULL WHERE id = $1"
FLEET_ROBOT_IDS = "SELECT id FROM robots WHERE fleet_id = $1 AND deleted_at IS NULL ORDER BY id"
FLEET_BY_ID = "SELECT * FROM fleets WHERE id = $1"
MOVE_LOCUS = """
UPDATE loci l SET coordinates = $2
FROM (SELECT id, coordinates FROM loci WHERE id = $1 FOR UPDATE) old
WHERE l.id = old.id
RETURNING old.coordinates
"""


async def list_fleets(
    pool: Pool, status: str | None, locus_id: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(LIST_FLEETS, status, locus_id, limit, offset)]


async def list_loci(pool: Pool, limit: int, offset: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(LIST_LOCI, limit, offset)]


async def fleets_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, FLEETS_BY_ID, ids)


async def loci_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, LOCI_BY_ID, ids)


async def constraints(ctx: Context, edict_ids: list[str] | None) -> list[dict[str, Any]]:
    """The edicts in the stored order; deleted ones drop out."""
    edicts = await ctx.loaders(edicts_by_id).load_many(list(edict_ids or []))
    return [e for e in edicts if e is not None]


async def request_time(_pool: Pool, keys: list[str]) -> list[datetime]:
    """The request's clock, read once: every fleet of a request then asks bellows for the same
    window, which its loader answers with one query instead of one per fleet."""
    now = datetime.now(UTC)
    return [now for _ in keys]


async def telemetry_window(ctx: Context, fleet_id: str) -> dict[str, Any]:
    """The BellowsStream of the last hour; the bellows module reads the stored telemetry for it."""
    end: datetime = await ctx.loaders.load(request_time, "now")
    return {"fleet_id": fleet_id, "start": end - TELEMETRY_WINDOW, "end": end, "real_time": False}


def check_coordinates(coordinates: dict[str, Any], field: str = "coordinates") -> dict[str, Any]:
    """Validated {latitude, longitude, altitude}; altitude stays optional."""
    latitude, longitude = coordinates["latitude"], coordinates["longitude"]
    altitude = coordinates.get("altitude")
    finite(latitude, f"{field}.latitude", low=-90, high=90)
    finite(longitude, f"{field}.longitude", low=-180, high=180)
    finite(altitude, f"{field}.altitude")
    return {"latitude": latitude, "longitude": longitude, "altitude": altitude}


async def emergency_stop(ctx: Context, viewer: Viewer, fleet_id: str) -> dict[str, Any]:
    """Halts the fleet in one transaction: its robots MAINTENANCE and sent EMERGENCY_STOP, its open
    tasks cancelled through the task lifecycle ("emergency stop", by the operator: logged, audited
    per task, streamed after the commit; an open run's robot also gets CANCEL_TASK, so it does not
    pick the run up again on RESUME), the fleet MAINTENANCE until released.

    The tasks are locked first and the fleet last, as the lifecycle does (task, then its run,
    robot and fleet), so a task worker moving one of these tasks waits for the stop, or the stop
    for it, instead of both deadlocking."""
    settings = ctx.resources.settings
    actor = Actor("SMITH", smith_id=viewer.id, client_ip=ctx.client_ip, user_agent=ctx.user_agent)
    out = Outbox()
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchrow(FLEET_EXISTS, fleet_id) is None:
            raise NotFound.of("Fleet", fleet_id)
        open_statuses = list(rules.OPEN)
        await conn.fetch(LOCK_FLEET_TASKS, fleet_id, open_statuses)
        await robot_status.name_cause(conn, robot_status.EMERGENCY_STOP, viewer.id, "emergencyStop")
        robots = [dict(r) for r in await conn.fetch(STOP_ROBOTS, fleet_id)]
        # The robots hear it as a command too; its delivery state shows who got it. It is queued
        # before any CANCEL_TASK, and the dispatcher sends EMERGENCY_STOP ahead of other commands.
        out.commands += await commands.enqueue(
            conn,
            [r["id"] for r in robots],
            "EMERGENCY_STOP",
            {"fleetId": fleet_id},
            issued_by=viewer.id,
            ttl_s=settings.command_ttl_s,
        )
        out.events += [await record(conn, channels.robot(r["id"]), r) for r in robots]
        # Read again now that the robots are held (and no longer free): a task assigned to one of
        # them after the first read is cancelled too.
        tasks = [dict(r) for r in await conn.fetch(LOCK_FLEET_TASKS, fleet_id, open_statuses)]
        runs: list[str] = []
        for task in tasks:
            cancelled, run, _freed = await lifecycle.cancel_task(
                conn, out, settings, task, actor, STOP_REASON, issued_by=viewer.id
            )
            run_id = run["id"] if run else None
            runs += [run_id] if run_id else []
            changes = {"fleetId": fleet_id, "from": task["status"], "to": "CANCELLED",
                       "reason": STOP_REASON, "runId": run_id}  # fmt: skip
            await audit.record(conn, ctx, viewer.id, "emergencyStop", "Task", task["id"], changes)
            if cancelled["fleet_id"] != fleet_id:  # taken through one of our robots from another fleet
                out.events.append(await record(conn, [channels.tasks(fleet_id)], cancelled))
        fleet = dict(returned(await conn.fetchrow(STOP_FLEET, fleet_id)))
        changes = {"robots": [r["id"] for r in robots], "tasks": [t["id"] for t in tasks], "runs": runs}
        await audit.record(conn, ctx, viewer.id, "emergencyStop", "Fleet", fleet_id, changes)
    await out.publish(ctx.events)
    return fleet


async def release_emergency_stop(ctx: Context, viewer: Viewer, fleet_id: str) -> dict[str, Any]:
    """Ends the fleet's emergency stop: each of its robots is sent RESUME, and the fleet's status
    follows its robots' again (at once from what they are now, then as they report back)."""
    async with ctx.db.acquire() as conn, conn.transaction():
        fleet = await conn.fetchrow(LOCK_FLEET, fleet_id)
        if fleet is None:
            raise NotFound.of("Fleet", fleet_id)
        if fleet["emergency_stopped_at"] is None:
            raise Conflict("The fleet is not under an emergency stop", field="fleetId")
        await conn.execute(RELEASE_FLEET, fleet_id)
        robot_ids = [r["id"] for r in await conn.fetch(FLEET_ROBOT_IDS, fleet_id)]
        resumes = await commands.enqueue(
            conn,
            robot_ids,
            "RESUME",
            {"fleetId": fleet_id},
            issued_by=viewer.id,
            ttl_s=ctx.resources.settings.command_ttl_s,
        )
        # With no robot yet reporting back the fleet shows what its robots are now (MAINTENANCE).
        await robot_status.follow_fleets(conn, 0.0, [fleet_id])
        released = dict(returned(await conn.fetchrow(FLEET_BY_ID, fleet_id)))
        changes = {"robots": robot_ids, "stoppedAt": fleet["emergency_stopped_at"].isoformat()}
        await audit.record(conn, ctx, viewer.id, "releaseEmergencyStop", "Fleet", fleet_id, changes)
    await commands.publish(ctx.events, resumes)
    return released


async def update_location(
    ctx: Context, viewer: Viewer, fleet_id: str, coordinates: dict[str, Any]
) -> dict[str, Any]:
    """Rewrites the locus: every robot's local pose then maps to the new place."""
    checked = check_coordinates(coordinates)
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK_FLEET, fleet_id)
        if row is None:
            raise NotFound.of("Fleet", fleet_id)
        fleet = dict(row)
        before = await conn.fetchval(MOVE_LOCUS, fleet["locus_id"], checked)
        changes = {"locus_id": fleet["locus_id"], "from": before, "to": checked}
        await audit.record(conn, ctx, viewer.id, "updateFleetLocation", "Fleet", fleet_id, changes)
    return fleet
