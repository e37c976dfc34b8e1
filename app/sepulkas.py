"""Sepulkas (robot designs): listing, forging, editing, readiness for casting and soft deletion,
and the sepulka loader.

Status rules (docs/builds.md): forgeSepulka and every updateSepulka leave the design FORGING;
markSepulkaCastReady moves a complete design to CAST_READY; castIngot moves it to CASTING and its
build to READY or CAST_FAILED.

Argument format errors (malformed ids) are raised as BAD_USER_INPUT by the resolvers; the
business rules checked here become `errors` of the mutation payloads.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from app import audit
from app.builds import check_parameters
from app.context import Context, Viewer
from app.core.errors import GRAPHQL_ONLY, Conflict, DomainError, Forbidden, Invalid, NotFound
from app.core.validation import page, parse_id, parse_ids, required_text
from app.infra.db import Pool, returned

# A design's parameters, as JSON; like a command's params (app/commands.py).
MAX_PARAMETERS_BYTES = 64 * 1024

LIST_SEPULKAS = """
SELECT s.* FROM sepulkas s LEFT JOIN patterns p ON p.id = s.pattern_id
WHERE s.deleted_at IS NULL
  AND ($1::sepulka_status IS NULL OR s.status = $1::sepulka_status)
  AND ($2::uuid IS NULL OR s.created_by = $2::uuid)
  AND ($3::uuid IS NULL OR s.pattern_id = $3::uuid)
  AND ($4::text[] IS NULL OR p.tags && $4::text[])
ORDER BY s.created_at DESC, s.id
LIMIT $5 OFFSET $6
"""
SEPULKAS_BY_ID = "SELECT * FROM sepulkas WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
EXISTING_ALLOYS = "SELECT id FROM alloys WHERE id = ANY($1::uuid[])"
PATTERN_EXISTS = "SELECT EXISTS (SELECT 1 FROM patterns WHERE id = $1)"
INSERT_SEPULKA = """
INSERT INTO sepulkas (name, description, pattern_id, status, parameters, created_by)
VALUES ($1, $2, $3, 'FORGING', $4, $5)
RETURNING *
"""
INSERT_SEPULKA_ALLOYS = """
INSERT INTO sepulka_alloys (sepulka_id, alloy_id) SELECT $1, unnest($2::uuid[])
"""
LOCK_SEPULKA = "SELECT * FROM sepulkas WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
# A robot running one of its ingots (or built from it), or a deployed ingot, pins the design.
SEPULKA_IN_USE = """
SELECT EXISTS (
  SELECT 1 FROM ingots i
  WHERE i.sepulka_id = $1
    AND (i.status = 'DEPLOYED'
         OR EXISTS (SELECT 1 FROM robots r WHERE r.current_ingot_id = i.id AND r.deleted_at IS NULL))
) OR EXISTS (SELECT 1 FROM robots r WHERE r.sepulka_id = $1 AND r.deleted_at IS NULL)
"""
SOFT_DELETE_SEPULKA = "UPDATE sepulkas SET deleted_at = now() WHERE id = $1"


async def list_sepulkas(
    pool: Pool, filter: dict[str, Any] | None, limit: int | None, offset: int | None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    f = filter or {}
    created_by = parse_id(f["created_by"], "createdBy") if f.get("created_by") else None
    pattern_id = parse_id(f["pattern_id"], "patternId") if f.get("pattern_id") else None
    # An empty tag list means "no tag filter", not "match nothing".
    tags = f.get("tags") or None
    rows = await pool.fetch(LIST_SEPULKAS, f.get("status"), created_by, pattern_id, tags, limit, offset)
    return [dict(r) for r in rows]


async def sepulkas_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    rows = {r["id"]: dict(r) for r in await pool.fetch(SEPULKAS_BY_ID, ids)}
    return [rows.get(i) for i in ids]


def _forge_args(data: dict[str, Any]) -> tuple[str, str | None, str | None, list[str], Any]:
    """Parses ForgeInput; malformed ids raise, the other rules are reported in the payload."""
    pattern_id = parse_id(data["pattern_id"], "patternId") if data.get("pattern_id") else None
    # Duplicates would hit the sepulka_alloys primary key; a set of alloys is what is meant.
    alloy_ids = list(dict.fromkeys(parse_ids(data.get("alloy_ids"), "alloyIds")))
    return data.get("name") or "", data.get("description"), pattern_id, alloy_ids, data.get("parameters")


async def forge(ctx: Context, viewer: Viewer, data: dict[str, Any]) -> dict[str, Any]:
    name, description, pattern_id, alloy_ids, parameters = _forge_args(data)
    try:
        name = required_text(name, "name")
        if description is not None and len(description) > 2000:
            raise Invalid("description must be at most 2000 characters", field="description")
        if not alloy_ids:
            raise Invalid("At least one alloy is required", field="alloyIds")
        if parameters is not None and not isinstance(parameters, dict):
            raise Invalid("parameters must be a JSON object", field="parameters")
        if parameters is not None and len(json.dumps(parameters).encode()) > MAX_PARAMETERS_BYTES:
            raise Invalid(
                f"parameters must be at most {MAX_PARAMETERS_BYTES} bytes of JSON", field="parameters"
            )
        async with ctx.db.acquire() as conn, conn.transaction():
            found = {r["id"] for r in await conn.fetch(EXISTING_ALLOYS, alloy_ids)}
            missing = [a for a in alloy_ids if a not in found]
            if missing:
                raise NotFound(f"Unknown alloy ids: {', '.join(missing)}", field="alloyIds")
            if pattern_id is not None and not await conn.fetchval(PATTERN_EXISTS, pattern_id):
                raise NotFound(f"Pattern with id {pattern_id} not found", field="patternId")
            row = dict(
                returned(
                    await conn.fetchrow(INSERT_SEPULKA, name, description, pattern_id, parameters, viewer.id)
                )
            )
            await conn.execute(INSERT_SEPULKA_ALLOYS, row["id"], alloy_ids)
            changes = {"name": name, "patternId": pattern_id, "alloyIds": alloy_ids}
            await audit.record(conn, ctx, viewer.id, "forgeSepulka", "Sepulka", row["id"], changes)
    except asyncpg.ForeignKeyViolationError:
        # A pattern or alloy removed between the check and the insert.
        return {"sepulka": None, "errors": [NotFound("Pattern or alloy no longer exists").as_payload_error()]}
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"sepulka": None, "errors": [exc.as_payload_error()]}
    return {"sepulka": row, "errors": None}


async def delete(ctx: Context, viewer: Viewer, sepulka_id: str) -> dict[str, Any]:
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_SEPULKA, sepulka_id)
            if row is None:
                raise NotFound.of("Sepulka", sepulka_id)
            if row["created_by"] != viewer.id and not viewer.is_admin:
                raise Forbidden("Only the creator of a sepulka or an ADMIN may delete it")
            if await conn.fetchval(SEPULKA_IN_USE, sepulka_id):
                raise Conflict("Sepulka is in use by robots or has deployed ingots", field="id")
            await conn.execute(SOFT_DELETE_SEPULKA, sepulka_id)
            await audit.record(conn, ctx, viewer.id, "deleteSepulka", "Sepulka", sepulka_id, None)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"success": False, "errors": [exc.as_payload_error()]}
    return {"success": True, "errors": None}


# --- editing a design (EDIT_SEPULKA) ---------------------------------------------------------------

UPDATE_SEPULKA = """
UPDATE sepulkas SET name = $2, description = $3, pattern_id = $4, parameters = $5, status = 'FORGING'
WHERE id = $1 RETURNING *
"""
REPLACE_ALLOYS = "DELETE FROM sepulka_alloys WHERE sepulka_id = $1"
READINESS = """
SELECT (SELECT count(*) FROM sepulka_alloys sa WHERE sa.sepulka_id = $1) AS alloy_count,
       p.parameters AS schema
FROM sepulkas s LEFT JOIN patterns p ON p.id = s.pattern_id WHERE s.id = $1
"""
MARK_CAST_READY = "UPDATE sepulkas SET status = 'CAST_READY' WHERE id = $1 RETURNING *"
# Where a sepulka may be marked CAST_READY from: a design being forged, or one whose last cast
# ended (READY or CAST_FAILED) and is to be cast again.
READYABLE = ("FORGING", "READY", "CAST_FAILED", "CAST_READY")


def _editable(row: Any, viewer: Viewer) -> None:
    if row["created_by"] != viewer.id and not viewer.is_admin:
        raise Forbidden("Only the creator of a sepulka or an ADMIN may edit it")
    if row["status"] == "CASTING":
        raise Conflict("Sepulka is being cast; edit it when the build has finished", field="id")


async def update(ctx: Context, viewer: Viewer, sepulka_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Edits the design; any edit returns it to FORGING (its builds no longer describe it)."""
    pattern_id = parse_id(data["pattern_id"], "patternId") if data.get("pattern_id") else None
    alloy_ids = list(dict.fromkeys(parse_ids(data["alloy_ids"], "alloyIds"))) if "alloy_ids" in data else None
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_SEPULKA, sepulka_id)
            if row is None:
                raise NotFound.of("Sepulka", sepulka_id)
            _editable(row, viewer)
            name = required_text(data["name"], "name") if "name" in data else row["name"]
            description = data["description"] if "description" in data else row["description"]
            if description is not None and len(description) > 2000:
                raise Invalid("description must be at most 2000 characters", field="description")
            parameters = data["parameters"] if "parameters" in data else row["parameters"]
            if parameters is not None and not isinstance(parameters, dict):
                raise Invalid("parameters must be a JSON object", field="parameters")
            if parameters is not None and len(json.dumps(parameters).encode()) > MAX_PARAMETERS_BYTES:
                limit = f"parameters must be at most {MAX_PARAMETERS_BYTES} bytes of JSON"
                raise Invalid(limit, field="parameters")
            if "pattern_id" not in data:
                pattern_id = row["pattern_id"]
            elif pattern_id is not None and not await conn.fetchval(PATTERN_EXISTS, pattern_id):
                raise NotFound(f"Pattern with id {pattern_id} not found", field="patternId")
            if alloy_ids is not None:
                if not alloy_ids:
                    raise Invalid("At least one alloy is required", field="alloyIds")
                found = {r["id"] for r in await conn.fetch(EXISTING_ALLOYS, alloy_ids)}
                missing = [a for a in alloy_ids if a not in found]
                if missing:
                    raise NotFound(f"Unknown alloy ids: {', '.join(missing)}", field="alloyIds")
                await conn.execute(REPLACE_ALLOYS, sepulka_id)
                await conn.execute(INSERT_SEPULKA_ALLOYS, sepulka_id, alloy_ids)
            values = (name, description, pattern_id, parameters)
            updated = dict(returned(await conn.fetchrow(UPDATE_SEPULKA, sepulka_id, *values)))
            changes = dict(data)
            await audit.record(conn, ctx, viewer.id, "updateSepulka", "Sepulka", sepulka_id, changes)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"sepulka": None, "errors": [exc.as_payload_error()]}
    return {"sepulka": updated, "errors": None}


async def mark_cast_ready(ctx: Context, viewer: Viewer, sepulka_id: str) -> dict[str, Any]:
    """FORGING, READY or CAST_FAILED -> CAST_READY once the design is complete: at least one alloy
    and parameters within its pattern's schema (the checks the build repeats)."""
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_SEPULKA, sepulka_id)
            if row is None:
                raise NotFound.of("Sepulka", sepulka_id)
            _editable(row, viewer)
            if row["status"] not in READYABLE:
                raise Conflict(f"Sepulka cannot become CAST_READY from {row['status']}", field="id")
            readiness = returned(await conn.fetchrow(READINESS, sepulka_id))
            if readiness["alloy_count"] == 0:
                raise Invalid("Sepulka is incomplete: it has no alloys", field="alloyIds")
            problems = check_parameters(readiness["schema"], row["parameters"])
            if problems:
                raise Invalid("; ".join(problems), field="parameters")
            updated = dict(returned(await conn.fetchrow(MARK_CAST_READY, sepulka_id)))
            changes = {"status": {"from": row["status"], "to": "CAST_READY"}}
            await audit.record(conn, ctx, viewer.id, "markSepulkaCastReady", "Sepulka", sepulka_id, changes)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"sepulka": None, "errors": [exc.as_payload_error()]}
    return {"sepulka": updated, "errors": None}
