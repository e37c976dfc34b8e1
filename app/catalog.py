"""The catalog: patterns (robot templates) and alloys (components), their queries and loaders,
and their creation and editing (MANAGE_PATTERNS, MANAGE_ALLOYS)."""

from __future__ import annotations

import json
from typing import Any

from app import audit
from app.context import Context, Viewer
from app.core.errors import Invalid, NotFound
from app.core.validation import page, parse_id, parse_ids, required_text, storable_text
from app.infra.db import Pool, fetch_by_ids, group_rows, returned

LIST_PATTERNS = """
SELECT * FROM patterns
WHERE ($1::pattern_category IS NULL OR category = $1::pattern_category)
ORDER BY name, id
LIMIT $2 OFFSET $3
"""
PATTERNS_BY_ID = "SELECT * FROM patterns WHERE id = ANY($1::uuid[])"

# `compatibility` holds [{alloyId, compatibleWith: [id], constraints}]; an alloy matches the
# filter when either side lists the other, so one-sided catalog entries still pair up.
LIST_ALLOYS = """
SELECT a.* FROM alloys a
WHERE ($1::alloy_type IS NULL OR a.type = $1::alloy_type)
  AND ($2::text[] IS NULL OR a.tags && $2::text[])
  AND ($3::text IS NULL OR (
    a.id::text <> $3::text AND (
      EXISTS (SELECT 1 FROM jsonb_array_elements(a.compatibility) e
              WHERE e->'compatibleWith' ? $3::text)
      OR EXISTS (SELECT 1 FROM alloys b, jsonb_array_elements(b.compatibility) e
                 WHERE b.id::text = $3::text AND e->'compatibleWith' ? a.id::text))))
ORDER BY a.name, a.id
LIMIT $4 OFFSET $5
"""
ALLOYS_BY_ID = "SELECT * FROM alloys WHERE id = ANY($1::uuid[])"
ALLOYS_BY_SEPULKA_ID = """
SELECT sa.sepulka_id, a.* FROM sepulka_alloys sa JOIN alloys a ON a.id = sa.alloy_id
WHERE sa.sepulka_id = ANY($1::uuid[])
ORDER BY a.name, a.id
"""


async def list_patterns(
    pool: Pool, category: str | None, limit: int | None, offset: int | None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return [dict(r) for r in await pool.fetch(LIST_PATTERNS, category, limit, offset)]


async def list_alloys(
    pool: Pool, filter: dict[str, Any] | None, limit: int | None, offset: int | None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    f = filter or {}
    # An empty tag list means "no tag filter", not "match nothing".
    tags = f.get("tags") or None
    compatible = f.get("compatibility")
    compatible = parse_id(compatible, "compatibility") if compatible is not None else None
    rows = await pool.fetch(LIST_ALLOYS, f.get("type"), tags, compatible, limit, offset)
    return [dict(r) for r in rows]


async def patterns_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, PATTERNS_BY_ID, ids)


async def alloys_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, ALLOYS_BY_ID, ids)


async def alloys_by_sepulka_id(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped = group_rows(await pool.fetch(ALLOYS_BY_SEPULKA_ID, ids), "sepulka_id")
    return [grouped.get(i, []) for i in ids]


# --- managing the catalog (MANAGE_ALLOYS, MANAGE_PATTERNS) -----------------------------------------

MAX_JSON_BYTES = 64 * 1024
INSERT_ALLOY = """
INSERT INTO alloys (name, description, type, specifications, mesh_assets, urdf_template, compatibility, tags,
                    version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING *
"""
SET_COMPATIBILITY = "UPDATE alloys SET compatibility = $2 WHERE id = $1 RETURNING *"
LOCK_ALLOY = "SELECT * FROM alloys WHERE id = $1 FOR UPDATE"
UPDATE_ALLOY = """
UPDATE alloys SET name = $2, description = $3, type = $4, specifications = $5, mesh_assets = $6,
  urdf_template = $7, compatibility = $8, tags = $9, version = $10
WHERE id = $1 RETURNING *
"""
INSERT_PATTERN = """
INSERT INTO patterns (name, description, category, parameters, defaults, template, tags)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""
LOCK_PATTERN = "SELECT * FROM patterns WHERE id = $1 FOR UPDATE"
UPDATE_PATTERN = """
UPDATE patterns SET name = $2, description = $3, category = $4, parameters = $5, defaults = $6, template = $7,
  tags = $8
WHERE id = $1 RETURNING *
"""
EXISTING_ALLOYS = "SELECT id FROM alloys WHERE id = ANY($1::uuid[])"
PARAMETER_TYPES = frozenset({"number", "string", "boolean"})


def _json_object(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid(f"{field} must be a JSON object", field=field)
    if len(json.dumps(value).encode()) > MAX_JSON_BYTES:
        raise Invalid(f"{field} must be at most {MAX_JSON_BYTES} bytes of JSON", field=field)
    return value


def _texts(values: list[str] | None, field: str) -> list[str]:
    return [required_text(v, field, max_length=500) for v in values or []]


def _merged(current: dict[str, Any] | None, data: dict[str, Any], key: str, column: str | None = None) -> Any:
    """The input's value when given (an update may leave fields out), else the row's."""
    if key in data:
        return data[key]
    return current.get(column or key) if current else None


def _alloy_values(data: dict[str, Any], current: dict[str, Any] | None = None) -> list[Any]:
    name = required_text(_merged(current, data, "name"), "name")
    description = storable_text(_merged(current, data, "description"), "description")
    type_ = _merged(current, data, "type")
    if type_ is None:
        raise Invalid("type is required", field="type")
    version = required_text(_merged(current, data, "version") or "1.0.0", "version", max_length=64)
    if "compatibility" in data:
        compatibility = [
            {
                "alloyId": current["id"] if current else None,
                "compatibleWith": parse_ids(entry.get("compatible_with"), "compatibility.compatibleWith"),
                "constraints": _json_object(entry.get("constraints"), "compatibility.constraints"),
            }
            for entry in data.get("compatibility") or []
        ]
    else:
        compatibility = current["compatibility"] if current else []
    return [
        name,
        description,
        type_,
        _json_object(_merged(current, data, "specifications"), "specifications"),
        _texts(_merged(current, data, "mesh_assets", "mesh_assets"), "meshAssets"),
        storable_text(_merged(current, data, "urdf_template", "urdf_template"), "urdfTemplate"),
        compatibility,
        _texts(_merged(current, data, "tags"), "tags"),
        version,
    ]


async def _check_compatible_ids(conn: Any, compatibility: list[dict[str, Any]]) -> None:
    wanted = sorted({i for entry in compatibility for i in entry["compatibleWith"]})
    found = {r["id"] for r in await conn.fetch(EXISTING_ALLOYS, wanted)}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound(f"Unknown alloy ids: {', '.join(missing)}", field="compatibility.compatibleWith")


async def create_alloy(ctx: Context, viewer: Viewer, data: dict[str, Any]) -> dict[str, Any]:
    values = _alloy_values(data)
    async with ctx.db.acquire() as conn, conn.transaction():
        await _check_compatible_ids(conn, values[6])
        alloy = dict(returned(await conn.fetchrow(INSERT_ALLOY, *values)))
        # The entries name the alloy itself, whose id exists only now.
        if values[6]:
            for entry in values[6]:
                entry["alloyId"] = alloy["id"]
            alloy = dict(returned(await conn.fetchrow(SET_COMPATIBILITY, alloy["id"], values[6])))
        await audit.record(conn, ctx, viewer.id, "createAlloy", "Alloy", alloy["id"], {"name": values[0]})
    return alloy


async def update_alloy(ctx: Context, viewer: Viewer, alloy_id: str, data: dict[str, Any]) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_ALLOY, alloy_id)
        if current is None:
            raise NotFound.of("Alloy", alloy_id)
        values = _alloy_values(data, dict(current))
        await _check_compatible_ids(conn, values[6])
        alloy = dict(returned(await conn.fetchrow(UPDATE_ALLOY, alloy_id, *values)))
        changes = {k: v for k, v in data.items() if k != "compatibility"}
        await audit.record(conn, ctx, viewer.id, "updateAlloy", "Alloy", alloy_id, changes)
    return alloy


def check_parameter_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pattern's parameters: {name: {type: number|string|boolean, min?, max?}}, min <= max."""
    for name, spec in (schema or {}).items():
        field = f"parameters.{name}"
        if not isinstance(spec, dict) or spec.get("type") not in PARAMETER_TYPES:
            raise Invalid(
                f"{field} must be an object with type number, string or boolean", field="parameters"
            )
        bounds = [spec[k] for k in ("min", "max") if k in spec]
        if any(not isinstance(b, int | float) or isinstance(b, bool) for b in bounds):
            raise Invalid(f"{field} min and max must be numbers", field="parameters")
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise Invalid(f"{field} min must not exceed max", field="parameters")
    return schema


def _pattern_values(data: dict[str, Any], current: dict[str, Any] | None = None) -> list[Any]:
    category = _merged(current, data, "category")
    if category is None:
        raise Invalid("category is required", field="category")
    return [
        required_text(_merged(current, data, "name"), "name"),
        storable_text(_merged(current, data, "description"), "description"),
        category,
        check_parameter_schema(_json_object(_merged(current, data, "parameters"), "parameters")),
        _json_object(_merged(current, data, "defaults"), "defaults"),
        storable_text(_merged(current, data, "template"), "template"),
        _texts(_merged(current, data, "tags"), "tags"),
    ]


async def create_pattern(ctx: Context, viewer: Viewer, data: dict[str, Any]) -> dict[str, Any]:
    values = _pattern_values(data)
    async with ctx.db.acquire() as conn, conn.transaction():
        pattern = dict(returned(await conn.fetchrow(INSERT_PATTERN, *values)))
        await audit.record(
            conn, ctx, viewer.id, "createPattern", "Pattern", pattern["id"], {"name": values[0]}
        )
    return pattern


async def update_pattern(
    ctx: Context, viewer: Viewer, pattern_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_PATTERN, pattern_id)
        if current is None:
            raise NotFound.of("Pattern", pattern_id)
        values = _pattern_values(data, dict(current))
        pattern = dict(returned(await conn.fetchrow(UPDATE_PATTERN, pattern_id, *values)))
        await audit.record(conn, ctx, viewer.id, "updatePattern", "Pattern", pattern_id, dict(data))
    return pattern
