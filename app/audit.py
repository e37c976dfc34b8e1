"""Audit trail: every mutation writes who did what to which entity, in its own transaction."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.context import Context

INSERT_AUDIT = """
INSERT INTO audit_logs (smith_id, action, resource_type, resource_id, changes, ip_address, user_agent)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def record(
    conn: asyncpg.Connection,
    ctx: Context,
    smith_id: str | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    changes: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        INSERT_AUDIT,
        smith_id,
        action,
        resource_type,
        resource_id,
        changes,
        ctx.client_ip,
        ctx.user_agent,
    )
