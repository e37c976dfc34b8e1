"""Sepulkas (robot designs): listing, forging and soft deletion, and the sepulka loader.

Argument format errors (malformed ids) are raised as BAD_USER_INPUT by the resolvers; the
business rules checked here become `errors` of the mutation payloads.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from app import audit
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
