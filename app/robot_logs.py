"""A robot's device log: the events it sent (`robots/{id}/events`, or HTTP ingest), stored in
`robot_events` by the ingest, read newest first and filtered by a minimum level."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.core.errors import Invalid
from app.core.validation import page
from app.infra.db import Pool
from app.robot_status import check_size, connection_of, decode_cursor, encode_cursor

# Levels in rising order; the ingest accepts exactly these severities (docs/mqtt-contract.md).
LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")

# (ts, id) keyset on robot_events_robot_ts_idx; a deleted robot has no log.
LOG_PAGE = """
SELECT e.id, e.robot_id, e.fleet_id, e.seq, e.ts, e.type, e.severity, e.message, e.data, e.received_at
FROM robot_events e JOIN robots r ON r.id = e.robot_id AND r.deleted_at IS NULL
WHERE e.robot_id = $1 AND e.severity = ANY($2::text[])
  AND ($3::timestamptz IS NULL OR (e.ts, e.id) < ($3::timestamptz, $4::bigint))
ORDER BY e.ts DESC, e.id DESC
LIMIT $5
"""


def levels_from(level: str | None) -> list[str]:
    """`level` and every level above it; every level when omitted."""
    if level is None:
        return list(LEVELS)
    return list(LEVELS[LEVELS.index(level) :])


async def logs(pool: Pool, robot_id: str, level: str | None, limit: int | None) -> list[dict[str, Any]]:
    size, _ = page(limit, None)
    return [dict(r) for r in await pool.fetch(LOG_PAGE, robot_id, levels_from(level), None, None, size)]


def _cursor(row: dict[str, Any]) -> str:
    return encode_cursor("log", row["ts"], row["id"])


async def logs_connection(
    pool: Pool, robot_id: str, level: str | None, first: int | None, after: str | None
) -> dict[str, Any]:
    """One page of the robot's log, newest first."""
    size = check_size(first)
    at: datetime | None = None
    before: int | None = None
    if after is not None:
        stamp, ident = decode_cursor("log", after, 2)
        try:
            at, before = datetime.fromisoformat(stamp), int(ident)
        except ValueError:
            raise Invalid("after is not a cursor of this connection", field="after") from None
    rows = [dict(r) for r in await pool.fetch(LOG_PAGE, robot_id, levels_from(level), at, before, size + 1)]
    return connection_of(rows, size, after, _cursor)
