"""The admin's controls over smiths: the list of accounts, role changes and deactivation.

Both changes lock every active admin first, so that at least one active admin always remains,
and both close the smith's open websockets (a role change) or sessions (deactivation).
"""

from __future__ import annotations

import logging
from typing import Any

from app import audit
from app.accounts import USE_ALL_RESETS, revoked_count
from app.context import Context, Viewer
from app.core.errors import Conflict, Forbidden, NotFound
from app.core.validation import parse_id
from app.infra.db import Connection, Pool
from app.sessions import announce, permissions_changed, revoke_smith_sessions
from app.smiths import SMITH_COLUMNS, smith_view

log = logging.getLogger("sepulki.accounts")

LIST_SMITHS = (
    f"SELECT {SMITH_COLUMNS} FROM smiths WHERE deleted_at IS NULL "  # noqa: S608
    "ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
)
# Locked in id order before any change of role or activity, so that two admins demoting or
# deactivating each other at once cannot both pass the "one active admin remains" check.
LOCK_ACTIVE_ADMINS = (
    "SELECT id FROM smiths WHERE role = 'ADMIN' AND is_active AND deleted_at IS NULL ORDER BY id FOR UPDATE"
)
LOCK_SMITH = f"SELECT {SMITH_COLUMNS} FROM smiths WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"  # noqa: S608
# Individual grants go with a role change: afterwards the smith holds exactly the role's permissions.
SET_ROLE = (
    "UPDATE smiths SET role = $2::smith_role, permissions = '{}' "  # noqa: S608
    f"WHERE id = $1 RETURNING {SMITH_COLUMNS}"
)
DEACTIVATE = (
    "UPDATE smiths SET is_active = false, deactivated_at = COALESCE(deactivated_at, now()) "  # noqa: S608
    f"WHERE id = $1 RETURNING {SMITH_COLUMNS}"
)


async def list_smiths(pool: Pool, limit: int, offset: int) -> list[dict[str, Any]]:
    return [smith_view(r) for r in await pool.fetch(LIST_SMITHS, limit, offset)]


def _check_admin_change(viewer: Viewer, *roles: str) -> None:
    # MANAGE_SMITHS may be granted to a non-admin: it must not reach admin accounts through it.
    if "ADMIN" in roles and not viewer.is_admin:
        raise Forbidden("Only an admin may change an admin account or grant the ADMIN role")


async def _lock_target(conn: Connection, smith_id: str) -> tuple[dict[str, Any], set[str]]:
    admins = {r["id"] for r in await conn.fetch(LOCK_ACTIVE_ADMINS)}
    target = await conn.fetchrow(LOCK_SMITH, smith_id)
    if target is None:
        raise NotFound.of("Smith", smith_id)
    return dict(target), admins


def _check_admin_remains(target: dict[str, Any], admins: set[str]) -> None:
    if target["id"] in admins and not admins - {target["id"]}:
        raise Conflict("At least one active admin must remain", field="smithId")


async def update_role(ctx: Context, viewer: Viewer, smith_id: str, role: str) -> dict[str, Any]:
    smith_id = parse_id(smith_id, "smithId")
    async with ctx.db.acquire() as conn, conn.transaction():
        target, admins = await _lock_target(conn, smith_id)
        _check_admin_change(viewer, target["role"], role)
        row: Any = target
        changes: dict[str, Any] = {"role": {"from": target["role"], "to": role}}
        changed = None
        if role != target["role"]:
            if role != "ADMIN":
                _check_admin_remains(target, admins)
            row = await conn.fetchrow(SET_ROLE, smith_id, role)
            changes["droppedGrants"] = target["permissions"]
            changed = await permissions_changed(conn, smith_id)
        await audit.record(conn, ctx, viewer.id, "updateSmithRole", "Smith", smith_id, changes)
    # HTTP requests read the role per request; open websockets close and reconnect to pick it up.
    await announce(ctx.events, changed)
    return smith_view(row)


async def deactivate(ctx: Context, viewer: Viewer, smith_id: str) -> dict[str, Any]:
    smith_id = parse_id(smith_id, "smithId")
    if smith_id == viewer.id:
        raise Conflict("You cannot deactivate your own account", field="smithId")
    async with ctx.db.acquire() as conn, conn.transaction():
        target, admins = await _lock_target(conn, smith_id)
        _check_admin_change(viewer, target["role"])
        _check_admin_remains(target, admins)
        row = await conn.fetchrow(DEACTIVATE, smith_id)
        await conn.execute(USE_ALL_RESETS, smith_id)
        revoked = await revoke_smith_sessions(conn, smith_id, reason="deactivated")
        changes = {
            "isActive": {"from": target["is_active"], "to": False},
            "sessionsRevoked": revoked_count(revoked),
        }
        await audit.record(conn, ctx, viewer.id, "deactivateSmith", "Smith", smith_id, changes)
    await announce(ctx.events, revoked)
    log.info("smith %s deactivated by %s", smith_id, viewer.id)
    return smith_view(row)
