"""Ingots (builds of a sepulka): queries and loaders, cast and temper (which queue jobs for the
worker, app.builds), quench and recall (app.deployments).

Malformed ids are raised as BAD_USER_INPUT by the resolvers; business rules become `errors` of
the payloads.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

import asyncpg

from app import audit, builds, deployments
from app.context import Context, Viewer
from app.core import tempering
from app.core.errors import GRAPHQL_ONLY, Conflict, DomainError, Invalid, NotFound, payload
from app.core.validation import finite, page, parse_id, required_text
from app.infra.db import Pool, fetch_by_ids, group_rows, returned

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
# temperIngot locks the ingot: two tempers of one ingot never run at once.
LOCK_INGOT = """
SELECT i.id, i.status::text AS status FROM ingots i
JOIN sepulkas s ON s.id = i.sepulka_id AND s.deleted_at IS NULL
WHERE i.id = $1 FOR UPDATE OF i
"""
MARK_TEMPERING = "UPDATE ingots SET status = 'TEMPERING' WHERE id = $1 RETURNING *"
TEMPERABLE = ("READY", "TEMPERED", "TEMPER_FAILED")
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
            await builds.enqueue(conn, ingot["id"], "BUILD", {}, viewer.id)
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


def _temper_input(data: dict[str, Any]) -> dict[str, Any]:
    """TemperInput as the job stores it; BAD_USER_INPUT names what is wrong."""
    goals = data.get("goals") or []
    for goal in goals:
        finite(goal.get("weight"), "weight", low=0)
    try:
        tempering.parse_goals(goals)
    except ValueError as exc:
        raise Invalid(f"goals: {exc}", field="input.goals") from None
    try:
        tempering.check_constraints(data.get("constraints"))
    except ValueError as exc:
        raise Invalid(str(exc), field="input.constraints") from None
    return {"goals": [dict(g) for g in goals], "constraints": data.get("constraints")}


async def temper(ctx: Context, viewer: Viewer, ingot_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Queues a temper job: the ingot goes to TEMPERING, the worker records TemperResults."""
    try:
        job_input = _temper_input(data)
        async with ctx.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_INGOT, ingot_id)
            if row is None:
                raise NotFound.of("Ingot", ingot_id)
            if row["status"] not in TEMPERABLE:
                raise Conflict(
                    f"Ingot must be READY, TEMPERED or TEMPER_FAILED to temper, currently: {row['status']}",
                    field="ingotId",
                )
            ingot = dict(returned(await conn.fetchrow(MARK_TEMPERING, ingot_id)))
            await builds.enqueue(conn, ingot_id, "TEMPER", job_input, viewer.id)
            await audit.record(conn, ctx, viewer.id, "temperIngot", "Ingot", ingot_id, job_input)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"ingot": None, "results": None, "errors": [exc.as_payload_error()]}
    return {"ingot": ingot, "results": None, "errors": None}


async def quench(
    ctx: Context, viewer: Viewer, ingot_id: str, fleet_id: str, rollout_percent: int | None
) -> dict[str, Any]:
    return await payload("deployment", deployments.quench(ctx, viewer, ingot_id, fleet_id, rollout_percent))


async def recall(ctx: Context, viewer: Viewer, fleet_id: str, to_version: str) -> dict[str, Any]:
    # A blank version is an argument error (raised), like a malformed id.
    version = required_text(to_version, "toVersion", max_length=64)
    try:
        return await deployments.recall(ctx, viewer, fleet_id, version)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"deployment": None, "errors": [exc.as_payload_error()]}
