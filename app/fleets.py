"""Fleets and loci: their queries and loaders, the emergency stop and moving a fleet's locus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app import audit, commands
from app.context import Context, Viewer
from app.core.channels import channels
from app.core.errors import NotFound
from app.core.validation import finite
from app.edicts import edicts_by_id
from app.infra.db import Pool, fetch_by_ids, returned
from app.infra.eventlog import record

TELEMETRY_WINDOW = timedelta(hours=1)
OPEN_TASK_STATUSES = ["PENDING", "ASSIGNED", "IN_PROGRESS"]

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
# A task belongs to the fleet when it was dispatched to it or when one of its robots works on it.
CANCEL_FLEET_TASKS = """
UPDATE tasks SET status = 'CANCELLED'
WHERE deleted_at IS NULL
  AND status = ANY($2::task_status[])
  AND (fleet_id = $1
       OR id IN (SELECT tr.task_id FROM task_robots tr JOIN robots r ON r.id = tr.robot_id
                 WHERE r.fleet_id = $1))
RETURNING *
"""
CANCEL_RUNS = """
UPDATE runs SET status = 'CANCELLED', completed_at = now()
WHERE task_id = ANY($1::uuid[]) AND status IN ('PENDING', 'RUNNING')
RETURNING id
"""
STOP_FLEET = """
UPDATE fleets SET status = 'MAINTENANCE',
  active_task_id = CASE WHEN active_task_id = ANY($2::uuid[]) THEN NULL ELSE active_task_id END
WHERE id = $1
RETURNING *
"""
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
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchrow(LOCK_FLEET, fleet_id) is None:
            raise NotFound.of("Fleet", fleet_id)
        robots = [dict(r) for r in await conn.fetch(STOP_ROBOTS, fleet_id)]
        tasks = [dict(r) for r in await conn.fetch(CANCEL_FLEET_TASKS, fleet_id, OPEN_TASK_STATUSES)]
        task_ids = [t["id"] for t in tasks]
        runs = await conn.fetch(CANCEL_RUNS, task_ids)
        fleet = dict(returned(await conn.fetchrow(STOP_FLEET, fleet_id, task_ids)))
        # The robots hear it as a command too; its delivery state shows who got it.
        stops = await commands.enqueue(
            conn,
            [r["id"] for r in robots],
            "EMERGENCY_STOP",
            {"fleetId": fleet_id},
            issued_by=viewer.id,
            ttl_s=ctx.resources.settings.command_ttl_s,
        )
        changes = {
            "robots": [r["id"] for r in robots],
            "tasks": task_ids,
            "runs": [r["id"] for r in runs],
        }
        await audit.record(conn, ctx, viewer.id, "emergencyStop", "Fleet", fleet_id, changes)
        events = [await record(conn, channels.robot(r["id"]), r) for r in robots]
        # A task cancelled through one of its robots may have been dispatched to another fleet.
        events += [await record(conn, channels.task(fleet_id, t["fleet_id"]), t) for t in tasks]
    await commands.publish(ctx.events, stops)
    await ctx.events.publish_recorded(events)
    return fleet


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
