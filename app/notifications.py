"""Notifications of smiths: who hears of an alert (preferences), the in-app list with its unread
count, and the outbox rows of e-mails and webhook calls that app.workers.notify delivers.

Who: every active smith who may manage fleets (OVER_SMITH, ADMIN or a MANAGE_FLEET grant), and
any smith who saved preferences, when the alert's severity and fleet pass those preferences. A
smith without saved preferences gets every severity of every fleet, in-app only. Webhooks are
chosen by their own severities and fleets (app.webhooks).
"""

from __future__ import annotations

from typing import Any

from app import audit
from app.context import Context, Viewer
from app.core import keyset
from app.core.channels import channels
from app.core.errors import Invalid, NotFound
from app.core.jsonable import jsonable
from app.infra import eventlog
from app.infra.db import Connection, returned

CHANNELS = ("IN_APP", "EMAIL")
SEVERITIES = ("INFO", "WARNING", "CRITICAL")
DELIVERIES_NOTIFY = "SELECT pg_notify('notification_deliveries', '')"

RECIPIENTS = """
SELECT s.id, s.email, coalesce(p.channels, '{IN_APP}') AS channels
FROM smiths s LEFT JOIN notification_preferences p ON p.smith_id = s.id
WHERE s.deleted_at IS NULL AND s.is_active
  AND (s.role IN ('OVER_SMITH', 'ADMIN') OR 'MANAGE_FLEET' = ANY(s.permissions) OR p.smith_id IS NOT NULL)
  AND $1 = ANY(coalesce(p.severities, '{INFO,WARNING,CRITICAL}'))
  AND (p.fleets IS NULL OR cardinality(p.fleets) = 0 OR $2::uuid = ANY(p.fleets))
ORDER BY s.id
"""
INSERT_NOTIFICATIONS = """
INSERT INTO notifications (smith_id, alert_id, severity, title, body, data)
SELECT u.smith_id, $2, $3::edict_severity, $4, $5, $6
FROM unnest($1::uuid[]) AS u(smith_id)
RETURNING *
"""
INSERT_EMAILS = """
INSERT INTO notification_deliveries (channel, smith_id, alert_id, event, payload)
SELECT 'EMAIL', u.smith_id, $2, 'alert.opened', jsonb_build_object('to', u.email, 'subject', $3::text,
       'body', $4::text)
FROM unnest($1::uuid[], $5::text[]) AS u(smith_id, email)
"""
INSERT_WEBHOOK_CALLS = """
INSERT INTO notification_deliveries (channel, webhook_id, alert_id, event, payload)
SELECT 'WEBHOOK', w.id, $1, $5, $2
FROM webhooks w
WHERE w.active AND $3 = ANY(w.severities)
  AND (cardinality(w.fleets) = 0 OR $4::uuid = ANY(w.fleets))
RETURNING id
"""
NOTIFICATION_PAGE = """
SELECT * FROM notifications
WHERE smith_id = $1 AND (NOT $2 OR read_at IS NULL)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3::timestamptz, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
UNREAD = "SELECT count(*) FROM notifications WHERE smith_id = $1 AND read_at IS NULL"
MARK_READ = """
UPDATE notifications SET read_at = coalesce(read_at, now()) WHERE id = $1 AND smith_id = $2 RETURNING *
"""
MARK_ALL_READ = "UPDATE notifications SET read_at = now() WHERE smith_id = $1 AND read_at IS NULL"
PREFERENCES = "SELECT * FROM notification_preferences WHERE smith_id = $1"
SAVE_PREFERENCES = """
INSERT INTO notification_preferences (smith_id, severities, fleets, channels)
VALUES ($1, $2, $3, $4)
ON CONFLICT (smith_id) DO UPDATE SET severities = EXCLUDED.severities, fleets = EXCLUDED.fleets,
  channels = EXCLUDED.channels, updated_at = now()
RETURNING *
"""
DEFAULT_PREFERENCES = {"severities": list(SEVERITIES), "fleets": [], "channels": ["IN_APP"]}


def _text(alert: dict[str, Any], edict_name: str) -> tuple[str, str]:
    title = f"[{alert['severity']}] {edict_name}"
    body = (
        f"{alert['message']}\n\nRobot: {alert['robot_id']}\nFleet: {alert['fleet_id']}\n"
        f"Alert: {alert['id']} (opened {alert['first_at'].isoformat()})"
    )
    return title, body


async def fan_out(conn: Connection, alert: dict[str, Any], edict_name: str) -> list[eventlog.Recorded]:
    """In-app notifications, e-mails and webhook calls of a newly opened alert, in the caller's
    transaction; returns the in-app notifications' events to publish after the commit."""
    severity, fleet_id = alert["severity"], alert["fleet_id"]
    recipients = await conn.fetch(RECIPIENTS, severity, fleet_id)
    title, body = _text(alert, edict_name)
    data = jsonable({"alertId": alert["id"], "edictId": alert["edict_id"], "robotId": alert["robot_id"]})
    in_app = [r["id"] for r in recipients if "IN_APP" in r["channels"]]
    rows = await conn.fetch(INSERT_NOTIFICATIONS, in_app, alert["id"], severity, title, body, data)
    events = [
        await eventlog.record(conn, [channels.notifications(str(row["smith_id"]))], dict(row)) for row in rows
    ]
    mailed = [r for r in recipients if "EMAIL" in r["channels"]]
    if mailed:
        await conn.execute(
            INSERT_EMAILS, [r["id"] for r in mailed], alert["id"], title, body, [r["email"] for r in mailed]
        )
    calls = await _webhook_calls(conn, alert, "alert.opened")
    if mailed or calls:
        await conn.execute(DELIVERIES_NOTIFY)
    return events


async def _webhook_calls(conn: Connection, alert: dict[str, Any], event: str) -> int:
    payload = jsonable({"event": event, "alert": {k: v for k, v in alert.items() if k != "opened"}})
    rows = await conn.fetch(
        INSERT_WEBHOOK_CALLS, alert["id"], payload, alert["severity"], alert["fleet_id"], event
    )
    return len(rows)


async def alert_changed(conn: Connection, alert: dict[str, Any], event: str) -> None:
    """Webhook calls of an alert acknowledged or resolved (`alert.acknowledged`, `alert.resolved`),
    in the caller's transaction: an incident tool that opened a page on `alert.opened` can close
    it. People are told only of openings; the alert's own state is in the app for them."""
    if await _webhook_calls(conn, alert, event):
        await conn.execute(DELIVERIES_NOTIFY)


# --- GraphQL -----------------------------------------------------------------------------------


async def connection(
    ctx: Context, viewer: Viewer, first: int | None, after: str | None, unread_only: bool
) -> dict[str, Any]:
    size = keyset.page_size(first)
    cursor_at, cursor_id = keyset.decode(after) if after is not None else (None, None)
    rows = await ctx.db.fetch(NOTIFICATION_PAGE, viewer.id, unread_only, cursor_at, cursor_id, size + 1)
    return keyset.page_of(rows, size, after)


async def unread_count(ctx: Context, viewer: Viewer) -> int:
    count: int = await ctx.db.fetchval(UNREAD, viewer.id)
    return count


async def mark_read(ctx: Context, viewer: Viewer, notification_id: str) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(MARK_READ, notification_id, viewer.id)
        if row is None:
            # Another smith's notification is as unknown as one that does not exist.
            raise NotFound.of("Notification", notification_id)
        await audit.record(conn, ctx, viewer.id, "markNotificationRead", "Notification", notification_id)
    return dict(row)


async def mark_all_read(ctx: Context, viewer: Viewer) -> int:
    async with ctx.db.acquire() as conn, conn.transaction():
        status: str = await conn.execute(MARK_ALL_READ, viewer.id)
        count = int(status.split()[-1])
        await audit.record(
            conn, ctx, viewer.id, "markAllNotificationsRead", "Notification", None, {"count": count}
        )
    return count


async def preferences(ctx: Context, viewer: Viewer) -> dict[str, Any]:
    row = await ctx.db.fetchrow(PREFERENCES, viewer.id)
    return dict(row) if row is not None else dict(DEFAULT_PREFERENCES)


def _choices(values: Any, allowed: tuple[str, ...], field: str) -> list[str]:
    if values is None:
        return list(allowed) if field != "channels" else ["IN_APP"]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise Invalid(f"{field} may hold only {', '.join(allowed)}; got {bad[0]!r}", field=field)
    return list(dict.fromkeys(values))


async def save_preferences(ctx: Context, viewer: Viewer, given: dict[str, Any]) -> dict[str, Any]:
    severities = _choices(given.get("severities"), SEVERITIES, "severities")
    chosen = _choices(given.get("channels"), CHANNELS, "channels")
    fleets = list(dict.fromkeys(given.get("fleets") or []))
    async with ctx.db.acquire() as conn, conn.transaction():
        row = dict(returned(await conn.fetchrow(SAVE_PREFERENCES, viewer.id, severities, fleets, chosen)))
        changes = {"severities": severities, "fleets": fleets, "channels": chosen}
        await audit.record(
            conn,
            ctx,
            viewer.id,
            "updateNotificationPreferences",
            "NotificationPreferences",
            viewer.id,
            changes,
        )
    return row
