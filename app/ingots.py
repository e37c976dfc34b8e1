"""Ingots (builds of a sepulka) and their rollouts: cast, temper, quench, recall, and the loaders.

Malformed ids are raised as BAD_USER_INPUT by the resolvers; business rules of castIngot and
recallFleet become `errors` of their payloads. Recalls are persisted in `deployments`.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

import asyncpg

from app import audit
from app.context import Context, Viewer
from app.core.errors import GRAPHQL_ONLY, Conflict, DomainError, Invalid, NotFound, NotImplementedYet
from app.core.validation import finite, page, parse_id, required_text
from app.infra.db import Pool, fetch_by_ids, group_rows, returned
from app.robots import record_changes

LIST_INGOTS = """
SELECT i.* FROM ingots i JOIN sepulkas s ON s.id = i.sepulka_id AND s.deleted_at IS NULL
WHERE ($1::uuid IS NULL OR i.sepulka_id = $1::uuid)
  AND ($2::ingot_status IS NULL OR i.status = $2::ingot_status)
ORDER BY i.created_at DESC, i.id DESC
LIMIT $3 OFFSET $4
"""
VISIBLE_INGOT = """
SELECT i.* FROM ingots i JOIN sepulkas s ON s.id = i.sepulka_id AND s.deleted_at IS NULL
WHERE i.id = $1
"""
# Robots keep pointing at their ingot whatever happens to its sepulka, so no deleted_at filter.
INGOTS_BY_ID = "SELECT * FROM ingots WHERE id = ANY($1::uuid[])"
INGOTS_BY_SEPULKA_ID = """
SELECT * FROM ingots WHERE sepulka_id = ANY($1::uuid[]) ORDER BY created_at DESC, id DESC
"""
# The row lock serialises concurrent casts of one sepulka, so the version count stays exact.
LOCK_SEPULKA_FOR_CAST = """
SELECT s.id, s.status::text AS status,
       (SELECT count(*) FROM sepulka_alloys sa WHERE sa.sepulka_id = s.id) AS alloy_count,
       (SELECT count(*) FROM ingots i WHERE i.sepulka_id = s.id) AS ingot_count
FROM sepulkas s WHERE s.id = $1 AND s.deleted_at IS NULL
FOR UPDATE
"""
MARK_CASTING = "UPDATE sepulkas SET status = 'CASTING' WHERE id = $1"
INSERT_INGOT = """
INSERT INTO ingots (sepulka_id, version, build_hash, status, artifacts, build_logs, created_by)
VALUES ($1, $2, $3, 'BUILDING', '[]', ARRAY['Build queued'], $4)
RETURNING *
"""
FLEET_EXISTS = "SELECT EXISTS (SELECT 1 FROM fleets WHERE id = $1 AND deleted_at IS NULL)"
LOCK_FLEET = "SELECT id FROM fleets WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
# Each robot goes back to the ingot of the requested version built from its own sepulka.
RECALL_TARGETS = """
SELECT r.id, r.name, r.current_ingot_id, target.id AS target_ingot_id
FROM robots r
LEFT JOIN LATERAL (
  SELECT i.id FROM ingots i
  WHERE i.sepulka_id = r.sepulka_id AND i.version = $2
    AND i.status IN ('READY', 'TEMPERED', 'DEPLOYED')
  ORDER BY i.created_at DESC LIMIT 1
) target ON true
WHERE r.fleet_id = $1 AND r.deleted_at IS NULL
ORDER BY r.name, r.id
FOR UPDATE OF r
"""
MOVE_ROBOTS = """
UPDATE robots r SET current_ingot_id = m.ingot_id
FROM unnest($1::uuid[], $2::uuid[]) AS m(robot_id, ingot_id)
WHERE r.id = m.robot_id
RETURNING r.*
"""
INSERT_DEPLOYMENT = """
INSERT INTO deployments (ingot_id, fleet_id, status, rollout_percent, kind, details, created_by)
VALUES ($1, $2, $3, 100, 'RECALL', $4, $5)
RETURNING *
"""
RECALLABLE = "READY, TEMPERED or DEPLOYED"
_BASE36 = string.digits + string.ascii_lowercase


async def list_ingots(
    pool: Pool, filter: dict[str, Any] | None, limit: int | None, offset: int | None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    f = filter or {}
    sepulka_id = parse_id(f["sepulka_id"], "sepulkaId") if f.get("sepulka_id") else None
    rows = await pool.fetch(LIST_INGOTS, sepulka_id, f.get("status"), limit, offset)
    return [dict(r) for r in rows]


async def get_ingot(pool: Pool, ingot_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(VISIBLE_INGOT, ingot_id)
    return dict(row) if row is not None else None


async def ingots_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, INGOTS_BY_ID, ids)


async def ingots_by_sepulka_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(INGOTS_BY_SEPULKA_ID, ids), "sepulka_id")
    return [grouped.get(i, []) for i in ids]


def build_hash() -> str:
    suffix = "".join(secrets.choice(_BASE36) for _ in range(9))
    return f"build_{int(time.time() * 1000)}_{suffix}"


async def cast(ctx: Context, viewer: Viewer, sepulka_id: str) -> dict[str, Any]:
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            sepulka = await conn.fetchrow(LOCK_SEPULKA_FOR_CAST, sepulka_id)
            if sepulka is None:
                raise NotFound.of("Sepulka", sepulka_id)
            if sepulka["status"] != "CAST_READY":
                raise Conflict(
                    f"Sepulka must be in CAST_READY status, currently: {sepulka['status']}",
                    field="sepulkaId",
                )
            if sepulka["alloy_count"] == 0:
                raise Invalid("Sepulka is incomplete", field="sepulkaId")
            version = f"1.0.{sepulka['ingot_count']}"
            await conn.execute(MARK_CASTING, sepulka_id)
            ingot = dict(
                returned(await conn.fetchrow(INSERT_INGOT, sepulka_id, version, build_hash(), viewer.id))
            )
            changes = {"sepulkaId": sepulka_id, "version": version, "buildHash": ingot["build_hash"]}
            await audit.record(conn, ctx, viewer.id, "castIngot", "Ingot", ingot["id"], changes)
    except asyncpg.UniqueViolationError:
        # Versions are counted, so an ingot inserted out of band can already hold this one.
        error = Conflict("An ingot with this version already exists", field="sepulkaId")
        return {"ingot": None, "errors": [error.as_payload_error()]}
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"ingot": None, "errors": [exc.as_payload_error()]}
    return {"ingot": ingot, "errors": None}


async def _require_ingot(ctx: Context, ingot_id: str) -> None:
    if await get_ingot(ctx.db, ingot_id) is None:
        raise NotFound.of("Ingot", ingot_id)


async def temper(ctx: Context, ingot_id: str, data: dict[str, Any]) -> dict[str, Any]:
    for goal in data.get("goals") or []:
        finite(goal.get("weight"), "weight", low=0)
    await _require_ingot(ctx, ingot_id)
    raise NotImplementedYet("temperIngot is not implemented yet")


async def quench(ctx: Context, ingot_id: str, fleet_id: str, rollout_percent: int | None) -> dict[str, Any]:
    if rollout_percent is not None and not 0 < rollout_percent <= 100:
        raise Invalid("rolloutPercent must be between 1 and 100", field="rolloutPercent")
    await _require_ingot(ctx, ingot_id)
    if not await ctx.db.fetchval(FLEET_EXISTS, fleet_id):
        raise NotFound.of("Fleet", fleet_id)
    raise NotImplementedYet("quenchToFleet is not implemented yet")


def _recall_error(robot: Any, version: str) -> dict[str, Any]:
    message = (
        f"Robot {robot['name']} ({robot['id']}) has no {RECALLABLE} ingot of version {version} "
        "built from its sepulka"
    )
    return {"code": NotFound.code, "message": message, "field": "robotId"}


async def recall(ctx: Context, viewer: Viewer, fleet_id: str, to_version: str) -> dict[str, Any]:
    version = required_text(to_version, "toVersion", max_length=64)
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            if await conn.fetchrow(LOCK_FLEET, fleet_id) is None:
                raise NotFound.of("Fleet", fleet_id)
            robots = await conn.fetch(RECALL_TARGETS, fleet_id, version)
            if not robots:
                raise Invalid(f"Fleet {fleet_id} has no robots to recall", field="fleetId")
            movable = [r for r in robots if r["target_ingot_id"] is not None]
            failed = [r for r in robots if r["target_ingot_id"] is None]
            moved = await conn.fetch(
                MOVE_ROBOTS, [r["id"] for r in movable], [r["target_ingot_id"] for r in movable]
            )
            status = "FAILED" if not movable else "PARTIAL" if failed else "COMPLETED"
            # deployments.ingot_id is required: a failed recall records the ingot robots stayed on.
            ingot_id = movable[0]["target_ingot_id"] if movable else robots[0]["current_ingot_id"]
            details = {
                "toVersion": version,
                "movedRobotIds": [r["id"] for r in movable],
                "failedRobotIds": [r["id"] for r in failed],
                "ingotIds": {r["id"]: r["target_ingot_id"] for r in movable},
            }
            deployment = dict(
                returned(
                    await conn.fetchrow(INSERT_DEPLOYMENT, ingot_id, fleet_id, status, details, viewer.id)
                )
            )
            changes = {"deploymentId": deployment["id"], "status": status, **details}
            await audit.record(conn, ctx, viewer.id, "recallFleet", "Fleet", fleet_id, changes)
            events = await record_changes(conn, [dict(r) for r in moved])
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"deployment": None, "errors": [exc.as_payload_error()]}
    await ctx.events.publish_recorded(events)
    errors = [_recall_error(r, version) for r in failed]
    return {"deployment": deployment, "errors": errors or None}
