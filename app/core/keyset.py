"""Relay connections over keyset pages ordered by (created_at DESC, id DESC), ids being uuids."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from app.core.errors import Invalid

MAX_PAGE = 200


def encode(row: dict[str, Any]) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor `encode` issued; anything else is BAD_USER_INPUT."""
    try:
        at, ident = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().split("|")
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("cursor time without offset")
        return parsed, ident
    except (ValueError, binascii.Error, UnicodeError):
        raise Invalid("after is not a cursor of this connection", field="after") from None


def page_size(first: int | None) -> int:
    size = 50 if first is None else first
    if not 1 <= size <= MAX_PAGE:
        raise Invalid(f"first must be between 1 and {MAX_PAGE}", field="first")
    return size


def page_of(rows: list[Any], size: int, after: str | None) -> dict[str, Any]:
    """A connection from rows fetched with one more than `size` (which tells whether more follow)."""
    page = [dict(r) for r in rows[:size]]
    edges = [{"cursor": encode(row), "node": row} for row in page]
    return {
        "edges": edges,
        "page_info": {
            "has_next_page": len(rows) > size,
            "has_previous_page": after is not None,
            "start_cursor": edges[0]["cursor"] if edges else None,
            "end_cursor": edges[-1]["cursor"] if edges else None,
        },
    }
