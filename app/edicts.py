"""Edicts (fleet policies): listing, rule validation, creator-or-admin changes, deactivation."""

from __future__ import annotations

from typing import Any

from app import audit
from app.context import Context, Viewer
from app.core import edict_rules
from app.core.errors import Forbidden, Invalid, NotFound
from app.core.validation import required_text
from app.infra.db import Pool, fetch_by_ids, returned

APPLIES_TO_KEYS = frozenset({"fleets", "robots", "locations", "taskTypes"})

EDICTS = """
SELECT * FROM edicts
WHERE deleted_at IS NULL
  AND ($1::edict_type IS NULL OR type = $1::edict_type)
  AND ($2::boolean IS NULL OR active = $2)
ORDER BY created_at DESC, id
LIMIT $3 OFFSET $4
"""
EDICTS_BY_ID = "SELECT * FROM edicts WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL"
LOCK_EDICT = "SELECT * FROM edicts WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
INSERT_EDICT = """
INSERT INTO edicts (name, description, type, rules, severity, active, applies_to, created_by)
VALUES ($1, $2, $3::edict_type, $4, $5::edict_severity, $6, $7, $8)
RETURNING *
"""
# An omitted `active` ($7 null) leaves the edict as it is.
REPLACE_EDICT = """
UPDATE edicts SET name = $2, description = $3, type = $4::edict_type, rules = $5,
                  severity = $6::edict_severity, active = coalesce($7, active), applies_to = $8
WHERE id = $1
RETURNING *
"""
DEACTIVATE_EDICT = "UPDATE edicts SET active = false, applies_to = NULL WHERE id = $1 RETURNING *"
RESOLVE_VIOLATIONS = """
UPDATE policy_violations SET resolved = true, resolved_by = $2, resolved_at = now()
WHERE edict_id = $1 AND NOT resolved
RETURNING id
"""


async def edicts_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, EDICTS_BY_ID, ids)


async def list_edicts(
    ctx: Context, edict_type: str | None, active: bool | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await ctx.db.fetch(EDICTS, edict_type, active, limit, offset)]


async def get_edict(ctx: Context, edict_id: str) -> dict[str, Any] | None:
    edict: dict[str, Any] | None = await ctx.loaders.load(edicts_by_id, edict_id)
    return edict


def _check_rules(rules: Any) -> None:
    """The whole rule is parsed as the evaluator will run it (app.core.edict_rules): a bad part
    is BAD_USER_INPUT naming it, e.g. `rules.condition.rules[0].op must be one of gt, ...`."""
    edict_rules.parse(rules)


def _check_applies_to(applies_to: Any) -> None:
    if applies_to is None:
        return
    shape = "appliesTo must be an object with optional lists fleets, robots, locations, taskTypes"
    if not isinstance(applies_to, dict) or not set(applies_to) <= APPLIES_TO_KEYS:
        raise Invalid(shape, field="appliesTo")
    if not all(isinstance(v, list) for v in applies_to.values()):
        raise Invalid(shape, field="appliesTo")


def _values(edict_input: dict[str, Any], *, default_active: bool | None) -> tuple[Any, ...]:
    """The checked column values, in INSERT/UPDATE order (name ... applies_to); an omitted
    `active` becomes `default_active` (true on add, null = unchanged on update)."""
    name = required_text(edict_input.get("name"), "name")
    _check_rules(edict_input.get("rules"))
    _check_applies_to(edict_input.get("applies_to"))
    active = edict_input.get("active")
    return (
        name,
        edict_input.get("description"),
        edict_input["type"],
        edict_input["rules"],
        edict_input["severity"],
        default_active if active is None else active,
        edict_input.get("applies_to"),
    )


def _check_owner(viewer: Viewer, edict: Any) -> None:
    if not viewer.is_admin and edict["created_by"] != viewer.id:
        raise Forbidden("Only the edict's creator or an ADMIN may change it")


async def add(ctx: Context, viewer: Viewer, edict_input: dict[str, Any]) -> dict[str, Any]:
    values = _values(edict_input, default_active=True)
    async with ctx.db.acquire() as conn, conn.transaction():
        edict = dict(returned(await conn.fetchrow(INSERT_EDICT, *values, viewer.id)))
        changes = {"name": edict["name"], "type": edict["type"], "severity": edict["severity"]}
        await audit.record(conn, ctx, viewer.id, "addEdict", "Edict", edict["id"], changes)
    return edict


async def update(ctx: Context, viewer: Viewer, edict_id: str, edict_input: dict[str, Any]) -> dict[str, Any]:
    values = _values(edict_input, default_active=None)
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_EDICT, edict_id)
        if current is None:
            raise NotFound.of("Edict", edict_id)
        _check_owner(viewer, current)
        edict = dict(returned(await conn.fetchrow(REPLACE_EDICT, edict_id, *values)))
        changes = {"name": edict["name"], "active": edict["active"], "severity": edict["severity"]}
        await audit.record(conn, ctx, viewer.id, "updateEdict", "Edict", edict_id, changes)
    return edict


async def deactivate(ctx: Context, viewer: Viewer, edict_id: str) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_EDICT, edict_id)
        if current is None:
            raise NotFound.of("Edict", edict_id)
        _check_owner(viewer, current)
        edict = dict(returned(await conn.fetchrow(DEACTIVATE_EDICT, edict_id)))
        resolved = [r["id"] for r in await conn.fetch(RESOLVE_VIOLATIONS, edict_id, viewer.id)]
        changes = {"active": False, "resolvedViolations": resolved}
        await audit.record(conn, ctx, viewer.id, "deactivateEdict", "Edict", edict_id, changes)
    return edict
