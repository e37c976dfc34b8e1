"""Smiths: how a smith row is shown, who may see its private fields, and the smith loader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.context import Context, Viewer
from app.core.permissions import Perm, effective_permissions
from app.infra.db import Pool

SMITH_COLUMNS = (
    "id, email, name, role::text AS role, permissions, preferences, created_at, is_active, last_login_at"
)
SMITHS_BY_ID = f"SELECT {SMITH_COLUMNS} FROM smiths WHERE id = ANY($1::uuid[])"  # noqa: S608
SMITH_BY_EMAIL = (
    f"SELECT {SMITH_COLUMNS}, password_hash FROM smiths "  # noqa: S608
    "WHERE lower(email) = lower($1) AND deleted_at IS NULL"
)

# Set on a smith shown to a caller who proved in this very request to be that smith without
# being signed in as them yet: a login, sign-up, refresh or password reset answers the account
# it signed in.
_SHOWN_TO_SELF = "_shown_to_self"


def smith_view(row: Any) -> dict[str, Any]:
    smith = dict(row)
    smith.pop("password_hash", None)
    smith["permissions"] = sorted(effective_permissions(smith["role"], smith["permissions"]))
    return smith


def shown_to_self(smith: dict[str, Any]) -> dict[str, Any]:
    """The smith as answered to whoever just proved to be them (a copy: loaders' rows stay as
    they are)."""
    return {**smith, _SHOWN_TO_SELF: True}


def may_see_private_fields(smith: Mapping[str, Any], viewer: Viewer | None, perm: Perm) -> bool:
    """Whether `viewer` sees the smith's private fields (email, role, permissions, preferences,
    isActive, lastLoginAt, createdAt): their own, or anyone's with `perm` (MANAGE_SMITHS)."""
    if smith.get(_SHOWN_TO_SELF) is True:
        return True
    if viewer is None:
        return False
    return viewer.can(perm) or str(smith["id"]) == viewer.id


async def smiths_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    rows = {r["id"]: smith_view(r) for r in await pool.fetch(SMITHS_BY_ID, ids)}
    return [rows.get(i) for i in ids]


async def smith_or_none(ctx: Context, smith_id: str | None) -> dict[str, Any] | None:
    """The smith of an optional reference (who acted, who acknowledged), through the loader."""
    if smith_id is None:
        return None
    smith: dict[str, Any] | None = await ctx.loaders.load(smiths_by_id, smith_id)
    return smith


async def me(ctx: Context, viewer: Viewer) -> dict[str, Any] | None:
    smith: dict[str, Any] | None = await ctx.loaders.load(smiths_by_id, viewer.id)
    return smith
