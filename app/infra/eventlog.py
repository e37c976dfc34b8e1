"""The event log: every event subscribers see is first a row, written in the changing transaction.

Its id orders events, so a subscriber can resume `after` the last one it saw: replay from here,
then continue live, skipping ids already replayed. Publish happens only after commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core.jsonable import jsonable
from app.infra.db import Connection, Pool

APPEND = "INSERT INTO event_log (channels, payload) VALUES ($1, $2) RETURNING id"
LATEST_ID = "SELECT coalesce(max(id), 0) FROM event_log"
PRUNE = "DELETE FROM event_log WHERE created_at < now() - make_interval(secs => $1)"
REPLAY = """
SELECT id, payload FROM event_log
WHERE channels @> ARRAY[$1::text] AND id > $2
ORDER BY id
LIMIT $3
"""


async def append(conn: Connection, channels: list[str], payload: dict[str, Any]) -> int:
    """Records one event for these channels; returns its id."""
    event_id: int = await conn.fetchval(APPEND, channels, payload)
    return event_id


async def replay(pool: Pool, channel: str, after: int, limit: int = 1000) -> list[tuple[int, Any]]:
    """Committed events of a channel with id > after, oldest first."""
    return [(row["id"], row["payload"]) for row in await pool.fetch(REPLAY, channel, after, limit)]


async def latest_id(pool: Pool) -> int:
    """The id of the newest committed event (0 when there is none)."""
    event_id: int = await pool.fetchval(LATEST_ID)
    return event_id


async def prune(pool: Pool, keep_s: int) -> int:
    """Deletes events older than `keep_s` seconds; returns how many."""
    status: str = await pool.execute(PRUNE, float(keep_s))
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event written to event_log in a transaction, to publish after its commit."""

    channels: list[str]
    id: int
    payload: dict[str, Any]


async def record(conn: Connection, names: Sequence[str], payload: dict[str, Any]) -> Recorded:
    """Writes the event in the caller's transaction; publish the result after the commit."""
    data = jsonable(payload)
    event_id = await append(conn, list(names), data)
    return Recorded(list(names), event_id, data)
