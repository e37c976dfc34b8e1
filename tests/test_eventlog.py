"""Events stay replayable for the retention period, then the log forgets them."""

from __future__ import annotations

from app.infra import eventlog
from tests.support import Api


async def test_old_events_are_pruned_and_recent_ones_kept(api: Api) -> None:
    db = api.resources.db
    async with db.acquire() as conn:
        old = await eventlog.append(conn, ["robot-status:x"], {"status": "IDLE"})
        recent = await eventlog.append(conn, ["robot-status:x"], {"status": "WORKING"})
        await conn.execute("UPDATE event_log SET created_at = now() - interval '2 days' WHERE id = $1", old)
    assert await eventlog.prune(db, 86400) == 1
    replayed = await eventlog.replay(db, "robot-status:x", 0)
    assert [event_id for event_id, _ in replayed] == [recent]
    assert await eventlog.latest_id(db) >= recent
