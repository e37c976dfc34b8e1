"""Audit trail: every mutation writes who did what to which entity, in its own transaction;
admins read it back newest first as a Relay connection (`auditLogs`).

`resource_type` is the GraphQL type name of the entity (Fleet, Robot, Sepulka, ...), `action` the
mutation's field name, so a filter reads the way the API does.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from app.context import Context
from app.core.errors import Invalid
from app.core.validation import parse_id, storable_text
from app.infra.db import Connection, Pool

DEFAULT_PAGE = 50
MAX_PAGE = 200

INSERT_AUDIT = """
INSERT INTO audit_logs (smith_id, action, resource_type, resource_id, changes, ip_address, user_agent)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
# Keyset pagination on (created_at DESC, id DESC): rows of one transaction share created_at, so
# the id breaks the tie; rows written while a client pages never shift the pages it has not read.
AUDIT_PAGE = """
SELECT id, smith_id, action, resource_type, resource_id, changes, ip_address, user_agent, created_at
FROM audit_logs
WHERE ($1::uuid IS NULL OR smith_id = $1::uuid)
  AND ($2::text IS NULL OR action = $2::text)
  AND ($3::text IS NULL OR resource_type = $3::text)
  AND ($4::text IS NULL OR resource_id = $4::text)
  AND ($5::timestamptz IS NULL OR created_at >= $5::timestamptz)
  AND ($6::timestamptz IS NULL OR created_at < $6::timestamptz)
  AND ($7::timestamptz IS NULL OR (created_at, id) < ($7::timestamptz, $8::bigint))
ORDER BY created_at DESC, id DESC
LIMIT $9
"""


async def record(
    conn: Connection,
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


def encode_cursor(row: dict[str, Any]) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """(created_at, id) of a cursor this module issued; anything else is BAD_USER_INPUT."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode()
        stamp, _, ident = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("cursor time without offset")
        return created_at, int(ident)
    except (UnicodeError, ValueError, binascii.Error):
        raise Invalid("after is not a cursor of this connection", field="after") from None


def _window(filter: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    start, end = filter.get("from"), filter.get("to")
    if start is not None and end is not None and start >= end:
        raise Invalid("filter.from must be before filter.to", field="filter.from")
    return start, end


async def connection(
    pool: Pool, first: int | None, after: str | None, filter: dict[str, Any] | None
) -> dict[str, Any]:
    """One page of `AuditLogConnection`, newest first; `first` is 1..200 (default 50)."""
    size = DEFAULT_PAGE if first is None else first
    if not 1 <= size <= MAX_PAGE:
        raise Invalid(f"first must be between 1 and {MAX_PAGE}", field="first")
    f = filter or {}
    smith_id = parse_id(f["smith_id"], "filter.smithId") if f.get("smith_id") is not None else None
    start, end = _window(f)
    cursor_at, cursor_id = decode_cursor(after) if after is not None else (None, None)
    rows = await pool.fetch(
        AUDIT_PAGE,
        smith_id,
        storable_text(f.get("action"), "filter.action"),
        storable_text(f.get("resource_type"), "filter.resourceType"),
        storable_text(f.get("resource_id"), "filter.resourceId"),
        start,
        end,
        cursor_at,
        cursor_id,
        size + 1,  # one more than asked tells whether another page follows
    )
    page = [dict(r) for r in rows[:size]]
    edges = [{"cursor": encode_cursor(row), "node": row} for row in page]
    return {
        "edges": edges,
        "page_info": {
            "has_next_page": len(rows) > size,
            "has_previous_page": after is not None,
            "start_cursor": edges[0]["cursor"] if edges else None,
            "end_cursor": edges[-1]["cursor"] if edges else None,
        },
    }
