"""Robots' status over time: the history of every change and its cause, their network status,
the inactivity timeout that marks silent robots OFFLINE, and fleets whose status follows their
robots (docs/robots.md).

The history is written by a trigger on `robots` (migration 20261202_30), so no writer can forget
it; a writer names the cause of its changes with `name_cause` in its transaction, and a change
nobody named is recorded as UPDATED. The ingest names its own REPORTED.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from app.core.channels import channels
from app.core.errors import Invalid
from app.infra.db import Connection, Pool, group_rows
from app.infra.eventlog import Recorded, record

# Causes of a status change, as the history shows them.
REGISTERED = "REGISTERED"
REPORTED = "REPORTED"
OPERATOR = "OPERATOR"
EMERGENCY_STOP = "EMERGENCY_STOP"
INACTIVITY_TIMEOUT = "INACTIVITY_TIMEOUT"
HEARD_AGAIN = "HEARD_AGAIN"

MAX_PAGE = 200
DEFAULT_PAGE = 50
# Robots marked per statement: a fleet that went silent at once is handled in slices.
LIVENESS_BATCH = 500
# Fleets whose robots changed status this recently are brought in line again: a pass that
# failed, or a change committed late, is caught by the next one (the update is idempotent).
FOLLOW_GRACE_S = 5.0

SET_CAUSE = """
SELECT set_config('sepulki.status_cause', $1, true), set_config('sepulki.status_actor', $2, true),
       set_config('sepulki.status_detail', $3, true)
"""
HISTORY_BY_ROBOT = """
SELECT * FROM (
  SELECT c.*, row_number() OVER (PARTITION BY c.robot_id ORDER BY c.id DESC) AS n
  FROM robot_status_changes c WHERE c.robot_id = ANY($1::uuid[])
) x
WHERE n <= $2
ORDER BY robot_id, id DESC
"""
HISTORY_PAGE = """
SELECT c.* FROM robot_status_changes c JOIN robots r ON r.id = c.robot_id AND r.deleted_at IS NULL
WHERE c.robot_id = $1 AND ($2::bigint IS NULL OR c.id < $2)
  AND ($3::robot_status IS NULL OR c.to_status = $3::robot_status)
ORDER BY c.id DESC
LIMIT $4
"""
# A robot never heard from counts from its registration. SKIP LOCKED: a robot whose row an
# ingest batch holds is being heard right now; several processes mark each robot once.
MARK_SILENT = """
UPDATE robots r SET status = 'OFFLINE'
FROM (SELECT id FROM robots
      WHERE deleted_at IS NULL AND status <> 'OFFLINE'
        AND coalesce(last_seen, created_at) < now() - make_interval(secs => $1)
      ORDER BY id LIMIT $2
      FOR UPDATE SKIP LOCKED) due
WHERE r.id = due.id
RETURNING r.*
"""
# Only what the timeout did is undone: a robot heard since it was marked returns to the status it
# had; one that reported OFFLINE itself (its Will) stays so until it reports again.
REVIVE_HEARD = """
UPDATE robots r SET status = c.from_status
FROM robots x
CROSS JOIN LATERAL (SELECT h.cause, h.from_status, h.changed_at FROM robot_status_changes h
                    WHERE h.robot_id = x.id ORDER BY h.id DESC LIMIT 1) c
WHERE x.status = 'OFFLINE' AND x.deleted_at IS NULL AND r.id = x.id AND r.status = 'OFFLINE'
  AND c.cause = 'INACTIVITY_TIMEOUT' AND c.from_status IS NOT NULL AND r.last_seen > c.changed_at
RETURNING r.*
"""
# The fleet's status from its robots' (docs/robots.md): working beats everything, then all
# offline, a fault, all halted; otherwise idle. A fleet under emergency stop keeps MAINTENANCE.
FOLLOW_FLEETS = """
WITH touched AS (
  SELECT r.fleet_id FROM robot_status_changes c JOIN robots r ON r.id = c.robot_id
  WHERE c.changed_at > now() - make_interval(secs => $1)
  UNION SELECT unnest($2::uuid[])
), derived AS (
  SELECT r.fleet_id,
         (CASE WHEN bool_or(r.status = 'WORKING') THEN 'ACTIVE'
               WHEN bool_and(r.status = 'OFFLINE') THEN 'OFFLINE'
               WHEN bool_or(r.status = 'ERROR') THEN 'ERROR'
               WHEN bool_and(r.status IN ('MAINTENANCE', 'OFFLINE')) THEN 'MAINTENANCE'
               ELSE 'IDLE' END)::fleet_status AS status
  FROM robots r
  WHERE r.deleted_at IS NULL AND r.fleet_id IN (SELECT fleet_id FROM touched)
  GROUP BY r.fleet_id
)
UPDATE fleets f SET status = d.status
FROM derived d
WHERE f.id = d.fleet_id AND f.deleted_at IS NULL AND f.emergency_stopped_at IS NULL
  AND f.status IS DISTINCT FROM d.status
RETURNING f.*
"""


async def name_cause(
    conn: Connection, cause: str, actor_id: str | None = None, detail: str | None = None
) -> None:
    """Names the cause of the status changes the caller's transaction makes (history rows)."""
    await conn.execute(SET_CAUSE, cause, actor_id or "", detail or "")


# --- History -----------------------------------------------------------------------------------


async def history_by_robot_id(pool: Pool, keys: list[tuple[str, int]]) -> list[list[dict[str, Any]]]:
    """Loader keyed by (robot id, limit): one statement per distinct limit, whatever the robots."""
    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for limit in {limit for _, limit in keys}:
        ids = [robot_id for robot_id, n in keys if n == limit]
        grouped = group_rows(await pool.fetch(HISTORY_BY_ROBOT, ids, limit), "robot_id")
        found.update({(robot_id, limit): grouped.get(robot_id, []) for robot_id in ids})
    return [found[key] for key in keys]


def check_size(first: int | None, field: str = "first") -> int:
    size = DEFAULT_PAGE if first is None else first
    if not 1 <= size <= MAX_PAGE:
        raise Invalid(f"{field} must be between 1 and {MAX_PAGE}", field=field)
    return size


def encode_cursor(kind: str, *parts: Any) -> str:
    raw = "|".join([kind, *(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(kind: str, cursor: str, parts: int) -> list[str]:
    """The parts of a cursor of this kind; anything else is BAD_USER_INPUT."""
    try:
        found = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().split("|")
    except (UnicodeError, ValueError, binascii.Error):
        found = []
    if len(found) != parts + 1 or found[0] != kind:
        raise Invalid("after is not a cursor of this connection", field="after")
    return found[1:]


def connection_of(rows: list[dict[str, Any]], size: int, after: str | None, cursor: Any) -> dict[str, Any]:
    """A Relay connection of `rows` (read with one more than `size`, to tell a next page)."""
    edges = [{"cursor": cursor(row), "node": row} for row in rows[:size]]
    return {
        "edges": edges,
        "page_info": {
            "has_next_page": len(rows) > size,
            "has_previous_page": after is not None,
            "start_cursor": edges[0]["cursor"] if edges else None,
            "end_cursor": edges[-1]["cursor"] if edges else None,
        },
    }


async def history_connection(
    pool: Pool, robot_id: str, status: str | None, first: int | None, after: str | None
) -> dict[str, Any]:
    """One page of a robot's status changes, newest first."""
    size = check_size(first)
    before: int | None = None
    if after is not None:
        (ident,) = decode_cursor("status", after, 1)
        if not ident.isdigit():
            raise Invalid("after is not a cursor of this connection", field="after")
        before = int(ident)
    rows = [dict(r) for r in await pool.fetch(HISTORY_PAGE, robot_id, before, status, size + 1)]
    return connection_of(rows, size, after, lambda row: encode_cursor("status", row["id"]))


# --- Network status ----------------------------------------------------------------------------


def network_view(robot: dict[str, Any], offline_after_s: int) -> dict[str, Any]:
    """RobotNetworkStatus from the robot's row: MQTT connectivity as its on-connect status and
    Will report it; a robot that never spoke MQTT is an HTTP robot once heard (docs/robots.md)."""
    connected = robot["mqtt_connected"]
    transport = "MQTT" if connected is not None else ("HTTP" if robot["last_seen"] is not None else None)
    return {
        "robot_id": robot["id"],
        "transport": transport,
        "mqtt_connected": bool(connected),
        "since": robot["mqtt_changed_at"],
        "last_seen": robot["last_seen"],
        "online": robot["status"] != "OFFLINE",
        "offline_after_seconds": offline_after_s or None,
    }


# --- Liveness ----------------------------------------------------------------------------------


async def _changed(conn: Connection, rows: list[Any]) -> tuple[list[dict[str, Any]], list[Recorded]]:
    robots = [dict(r) for r in rows]
    return robots, [await record(conn, channels.robot(r["id"]), r) for r in robots]


async def mark_silent(conn: Connection, offline_after_s: int) -> tuple[list[dict[str, Any]], list[Recorded]]:
    """Silent robots -> OFFLINE (cause INACTIVITY_TIMEOUT), at most LIVENESS_BATCH; the events to
    publish after the commit."""
    async with conn.transaction():
        await name_cause(conn, INACTIVITY_TIMEOUT, detail=f"nothing heard for {offline_after_s} s")
        return await _changed(conn, await conn.fetch(MARK_SILENT, float(offline_after_s), LIVENESS_BATCH))


async def revive_heard(conn: Connection) -> tuple[list[dict[str, Any]], list[Recorded]]:
    """Robots the timeout marked OFFLINE and heard from since -> the status they had."""
    async with conn.transaction():
        await name_cause(conn, HEARD_AGAIN, detail="heard from again after the inactivity timeout")
        return await _changed(conn, await conn.fetch(REVIVE_HEARD))


async def follow_fleets(
    conn: Connection | Pool, window_s: float, fleet_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Fleets whose robots changed status in the last `window_s` seconds (and `fleet_ids`) take
    the status their robots give them; returns the fleets that changed."""
    return [dict(r) for r in await conn.fetch(FOLLOW_FLEETS, window_s + FOLLOW_GRACE_S, fleet_ids or [])]
