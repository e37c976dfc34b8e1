"""The catalog: patterns (robot templates) and alloys (components), their queries and loaders."""

from __future__ import annotations

from typing import Any

from app.core.validation import page, parse_id
from app.infra.db import Pool, fetch_by_ids, group_rows

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
