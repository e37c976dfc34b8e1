"""Smiths: how a smith row is shown, and the smith loader."""

from __future__ import annotations

from typing import Any

from app.context import Context, Viewer
from app.core.permissions import effective_permissions
from app.infra.db import Pool

SMITH_COLUMNS = (
    "id, email, name, role::text AS role, permissions, preferences, created_at, is_active, last_login_at"
)
SMITHS_BY_ID = f"SELECT {SMITH_COLUMNS} FROM smiths WHERE id = ANY($1::uuid[])"  # noqa: S608
SMITH_BY_EMAIL = (
    f"SELECT {SMITH_COLUMNS}, password_hash FROM smiths "  # noqa: S608
    "WHERE lower(email) = lower($1) AND deleted_at IS NULL"
)


def smith_view(row: Any) -> dict[str, Any]:
    smith = dict(row)
    smith.pop("password_hash", None)
    smith["permissions"] = sorted(effective_permissions(smith["role"], smith["permissions"]))
    return smith


async def smiths_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    rows = {r["id"]: smith_view(r) for r in await pool.fetch(SMITHS_BY_ID, ids)}
    return [rows.get(i) for i in ids]


async def me(ctx: Context, viewer: Viewer) -> dict[str, Any] | None:
    smith: dict[str, Any] | None = await ctx.loaders.load(smiths_by_id, viewer.id)
    return smith
