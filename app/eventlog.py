"""The event log: every event subscribers see is first a row, written in the changing transaction.

Its id orders events, so a subscriber can resume `after` the last one it saw: replay from here,
then continue live, skipping ids already replayed. Publish happens only after commit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg

from app.db import Pool, periodically

if TYPE_CHECKING:
    from app.context import Services

log = logging.getLogger("sepulki.eventlog")

APPEND = "INSERT INTO event_log (channels, payload) VALUES ($1, $2) RETURNING id"
LATEST_ID = "SELECT coalesce(max(id), 0) FROM event_log"
PRUNE = "DELETE FROM event_log WHERE created_at < now() - make_interval(secs => $1)"
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


async def latest_id(pool: Pool) -> int:
    """The id of the newest committed event (0 when there is none)."""
    event_id: int = await pool.fetchval(LATEST_ID)
    return event_id


async def prune(pool: Pool, keep_s: int) -> int:
    """Deletes events older than `keep_s` seconds; returns how many."""
    status: str = await pool.execute(PRUNE, float(keep_s))
    return int(status.split()[-1])


@contextlib.asynccontextmanager
async def retention(services: Services, every_s: float = 60.0) -> AsyncIterator[None]:
    """Component: prunes the event log every minute. Replicas may all run it: DELETE is idempotent."""
    keep_s = services.settings.event_retention_s
    if keep_s <= 0:
        yield
        return

    async def prune_once() -> None:
        deleted = await prune(services.db, keep_s)
        if deleted:
            log.info("pruned %d events older than %ds", deleted, keep_s)

    async with periodically("event log pruning", every_s, prune_once):
        yield
