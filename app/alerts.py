"""Breaches and alerts: what the rule evaluator records when an edict is breached or clears, and
the alert lifecycle operators drive.

    breach -> policy_violations row + alert (OPEN, or a repeat counted on the one not yet resolved)
              + the edict's actions (THROTTLE / EMERGENCY_STOP as commands through the outbox)
              + notifications and deliveries (app.notifications) + `policyBreaches`, `alertUpdates`
    OPEN -> ACKNOWLEDGED (acknowledgeAlert) -> RESOLVED (resolveAlert, or by itself when the
    condition clears past its hysteresis)

Everything is written in the caller's transaction and logged in event_log; the caller publishes
the returned events after the commit, so a subscriber never sees a breach that was not stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app import audit, commands, notifications
from app.context import Context, Viewer
from app.core import keyset
from app.core.channels import channels
from app.core.edict_rules import Action
from app.core.errors import Conflict, Invalid, NotFound
from app.core.jsonable import jsonable
from app.infra import eventlog
from app.infra.db import Connection, Pool, fetch_by_ids, returned

STATES = ("OPEN", "ACKNOWLEDGED", "RESOLVED")
MAX_NOTE = 2000
COMMAND_ACTIONS = {"THROTTLE": "THROTTLE", "EMERGENCY_STOP": "EMERGENCY_STOP"}
WEBHOOK_EVENTS = {"acknowledgeAlert": "alert.acknowledged", "resolveAlert": "alert.resolved"}

INSERT_VIOLATION = """
INSERT INTO policy_violations (edict_id, robot_id, fleet_id, severity, message, data, created_at)
VALUES ($1, $2, $3, $4::edict_severity, $5, $6, $7)
RETURNING *
"""
LINK_VIOLATION = "UPDATE policy_violations SET alert_id = $2, command_ids = $3 WHERE id = $1 RETURNING *"
# One alert not yet resolved per (edict, robot): a breach while one is open counts on it.
UPSERT_ALERT = """
INSERT INTO alerts (edict_id, robot_id, fleet_id, severity, message, data, first_at, last_at)
VALUES ($1, $2, $3, $4::edict_severity, $5, $6, $7, $7)
ON CONFLICT (edict_id, robot_id) WHERE state <> 'RESOLVED' DO UPDATE SET
  occurrences = alerts.occurrences + 1, last_at = greatest(alerts.last_at, EXCLUDED.last_at),
  severity = EXCLUDED.severity, message = EXCLUDED.message, data = EXCLUDED.data, updated_at = now()
RETURNING *, (xmax = 0) AS opened
"""
# A repeat within the cooldown reopens the alert the last clear resolved by itself (not one an
# operator resolved), counting on it, rather than opening and notifying anew.
REOPEN_ALERT = """
UPDATE alerts SET state = CASE WHEN acknowledged_at IS NULL THEN 'OPEN' ELSE 'ACKNOWLEDGED' END,
  resolved_at = NULL, resolution_note = NULL, occurrences = occurrences + 1,
  last_at = greatest(last_at, $3), message = $4, data = $5, updated_at = now()
WHERE id = (SELECT id FROM alerts WHERE edict_id = $1 AND robot_id = $2 ORDER BY created_at DESC LIMIT 1)
  AND state = 'RESOLVED' AND resolved_by IS NULL
  AND NOT EXISTS (SELECT FROM alerts WHERE edict_id = $1 AND robot_id = $2 AND state <> 'RESOLVED')
RETURNING *, false AS opened
"""
REOPEN_VIOLATIONS = "UPDATE policy_violations SET resolved = false, resolved_at = NULL WHERE alert_id = $1"
AUTO_RESOLVE = """
UPDATE alerts SET state = 'RESOLVED', resolved_at = $3, resolution_note = $4, updated_at = now()
WHERE edict_id = $1 AND robot_id = $2 AND state <> 'RESOLVED'
RETURNING *
"""
RESOLVE_VIOLATIONS = """
UPDATE policy_violations SET resolved = true, resolved_by = $2, resolved_at = now()
WHERE alert_id = $1 AND NOT resolved
"""
LOCK_ALERT = "SELECT * FROM alerts WHERE id = $1 FOR UPDATE"
ACKNOWLEDGE = """
UPDATE alerts SET state = 'ACKNOWLEDGED', acknowledged_by = $2, acknowledged_at = now(), updated_at = now()
WHERE id = $1 RETURNING *
"""
RESOLVE = """
UPDATE alerts SET state = 'RESOLVED', resolved_by = $2, resolved_at = now(), resolution_note = $3,
                  updated_at = now()
WHERE id = $1 RETURNING *
"""
ALERTS_BY_ID = "SELECT * FROM alerts WHERE id = ANY($1::uuid[])"
VIOLATIONS_OF_ALERTS = """
SELECT * FROM policy_violations WHERE alert_id = ANY($1::uuid[]) ORDER BY created_at DESC, id
"""
ALERT_PAGE = """
SELECT * FROM alerts
WHERE ($1::uuid IS NULL OR fleet_id = $1) AND ($2::uuid IS NULL OR robot_id = $2)
  AND ($3::edict_severity IS NULL OR severity = $3::edict_severity)
  AND ($4::text IS NULL OR state = $4)
  AND ($5::timestamptz IS NULL OR (created_at, id) < ($5::timestamptz, $6::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $7
"""


@dataclass(slots=True)
class Breach:
    """What the evaluator found: an edict breached by a robot at `at`."""

    edict_id: str
    edict_name: str
    robot_id: str
    fleet_id: str | None
    severity: str
    message: str
    data: dict[str, Any]
    at: datetime
    actions: tuple[Action, ...]


@dataclass(slots=True)
class Recorded:
    """What a transaction wrote and must publish after its commit."""

    events: list[eventlog.Recorded]
    command_changes: list[dict[str, Any]]

    def extend(self, other: Recorded) -> None:
        self.events += other.events
        self.command_changes += other.command_changes


def breach_payload(violation: dict[str, Any]) -> dict[str, Any]:
    """A PolicyBreach as subscribers get it."""
    return {
        "id": violation["id"],
        "edict_id": violation["edict_id"],
        "robot_id": violation["robot_id"],
        "fleet_id": violation["fleet_id"],
        "severity": violation["severity"],
        "message": violation["message"],
        "data": violation["data"],
        "timestamp": violation["created_at"],
        "alert_id": violation["alert_id"],
        "command_ids": violation["command_ids"],
    }


async def _alert_event(conn: Connection, alert: dict[str, Any]) -> eventlog.Recorded:
    payload = {k: v for k, v in alert.items() if k != "opened"}
    return await eventlog.record(conn, channels.alerts(alert["fleet_id"]), payload)


async def _alert_of(conn: Connection, breach: Breach, repeat: bool) -> dict[str, Any]:
    data = jsonable(breach.data)
    if repeat:
        args = (breach.edict_id, breach.robot_id, breach.at, breach.message, data)
        reopened = await conn.fetchrow(REOPEN_ALERT, *args)
        if reopened is not None:
            await conn.execute(REOPEN_VIOLATIONS, reopened["id"])
            return dict(reopened)
    args2 = (
        breach.edict_id,
        breach.robot_id,
        breach.fleet_id,
        breach.severity,
        breach.message,
        data,
        breach.at,
    )
    return dict(returned(await conn.fetchrow(UPSERT_ALERT, *args2)))


async def record_breach(
    conn: Connection, breach: Breach, command_ttl_s: int, *, repeat: bool = False
) -> Recorded:
    """The violation, its alert, its commands, notifications and events, in `conn`'s transaction;
    a `repeat` (within the edict's cooldown) counts on the last alert and notifies nobody."""
    violation = dict(
        returned(
            await conn.fetchrow(
                INSERT_VIOLATION,
                breach.edict_id,
                breach.robot_id,
                breach.fleet_id,
                breach.severity,
                breach.message,
                jsonable(breach.data),
                breach.at,
            )
        )
    )
    alert = await _alert_of(conn, breach, repeat)
    changes: list[dict[str, Any]] = []
    for action in breach.actions:
        command_type = COMMAND_ACTIONS.get(action.type)
        if command_type is not None:
            changes += await commands.enqueue(
                conn,
                [breach.robot_id],
                command_type,
                {**action.parameters, "edictId": breach.edict_id, "violationId": str(violation["id"])},
                issued_by=None,
                ttl_s=command_ttl_s,
            )
    command_ids = [c["id"] for c in changes]
    violation = dict(returned(await conn.fetchrow(LINK_VIOLATION, violation["id"], alert["id"], command_ids)))
    events = [await eventlog.record(conn, channels.breaches(breach.fleet_id), breach_payload(violation))]
    events.append(await _alert_event(conn, alert))
    if alert["opened"]:
        # Only an alert that opens notifies: repeats count on it without waking anyone again.
        events += await notifications.fan_out(conn, alert, breach.edict_name)
    return Recorded(events, changes)


async def record_clear(conn: Connection, edict_id: str, robot_id: str, at: datetime) -> Recorded:
    """The condition cleared: the open alert resolves by itself, its violations with it."""
    rows = await conn.fetch(AUTO_RESOLVE, edict_id, robot_id, at, "condition cleared")
    events = []
    for row in rows:
        alert = dict(row)
        await conn.execute(RESOLVE_VIOLATIONS, alert["id"], None)
        events.append(await _alert_event(conn, alert))
        await notifications.alert_changed(conn, alert, "alert.resolved")
    return Recorded(events, [])


async def publish(events: Any, recorded: Recorded) -> None:
    """After commit: the events, then the commands' own events."""
    await events.publish_recorded(recorded.events)
    if recorded.command_changes:
        await commands.publish(events, recorded.command_changes)


# --- GraphQL -----------------------------------------------------------------------------------


async def alerts_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, ALERTS_BY_ID, ids)


async def violations_of_alerts(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in await pool.fetch(VIOLATIONS_OF_ALERTS, ids):
        grouped[str(row["alert_id"])].append(dict(row))
    return [grouped[i] for i in ids]


async def connection(
    pool: Pool, first: int | None, after: str | None, filter: dict[str, Any]
) -> dict[str, Any]:
    size = keyset.page_size(first)
    state = filter.get("state")
    if state is not None and state not in STATES:
        raise Invalid(f"filter.state must be one of {', '.join(STATES)}", field="filter.state")
    cursor_at, cursor_id = keyset.decode(after) if after is not None else (None, None)
    rows = await pool.fetch(
        ALERT_PAGE,
        filter.get("fleet_id"),
        filter.get("robot_id"),
        filter.get("severity"),
        state,
        cursor_at,
        cursor_id,
        size + 1,
    )
    return keyset.page_of(rows, size, after)


async def _change(
    ctx: Context, viewer: Viewer, alert_id: str, action: str, sql: str, *args: Any
) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(LOCK_ALERT, alert_id)
        if current is None:
            raise NotFound.of("Alert", alert_id)
        if current["state"] == "RESOLVED":
            raise Conflict(f"Alert {alert_id} is already resolved")
        if action == "acknowledgeAlert" and current["state"] == "ACKNOWLEDGED":
            raise Conflict(f"Alert {alert_id} is already acknowledged")
        alert = dict(returned(await conn.fetchrow(sql, alert_id, viewer.id, *args)))
        if action == "resolveAlert":
            await conn.execute(RESOLVE_VIOLATIONS, alert_id, viewer.id)
        await notifications.alert_changed(conn, alert, WEBHOOK_EVENTS[action])
        event = await _alert_event(conn, alert)
        await audit.record(conn, ctx, viewer.id, action, "Alert", alert_id, {"state": alert["state"]})
    await ctx.events.publish_recorded([event])
    return alert


async def acknowledge(ctx: Context, viewer: Viewer, alert_id: str) -> dict[str, Any]:
    """OPEN -> ACKNOWLEDGED; CONFLICT when it is acknowledged or resolved already."""
    return await _change(ctx, viewer, alert_id, "acknowledgeAlert", ACKNOWLEDGE)


async def resolve(ctx: Context, viewer: Viewer, alert_id: str, note: str | None) -> dict[str, Any]:
    """OPEN or ACKNOWLEDGED -> RESOLVED with the note; CONFLICT when resolved already."""
    if note is not None and len(note) > MAX_NOTE:
        raise Invalid(f"note must be at most {MAX_NOTE} characters", field="note")
    return await _change(ctx, viewer, alert_id, "resolveAlert", RESOLVE, note)
