"""The event log: every event subscribers see is first a row, written in the changing transaction.

Its id orders events, so a subscriber can resume `after` the last one it saw: replay from here,
then continue live, skipping ids already replayed. Publish happens only after commit.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.db import Pool

APPEND = "INSERT INTO event_log (channels, payload) VALUES ($1, $2) RETURNING id"
REPLAY = """
SELECT id, payload FROM event_log
WHERE channels @> ARRAY[$1::text] AND id > $2
ORDER BY id
LIMIT $3
"""


async def append(conn: asyncpg.Connection, channels: list[str], payload: dict[str, Any]) -> int:
    """Records one event for these channels; returns its id."""
    event_id: int = await conn.fetchval(APPEND, channels, payload)
    return event_id


async def replay(pool: Pool, channel: str, after: int, limit: int = 1000) -> list[tuple[int, Any]]:
    """Committed events of a channel with id > after, oldest first."""
    return [(row["id"], row["payload"]) for row in await pool.fetch(REPLAY, channel, after, limit)]
