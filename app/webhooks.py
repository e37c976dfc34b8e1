"""Webhook endpoints (managed by admins), their signatures, and the delivery outbox's SQL.

Each call is a POST of the event's JSON with
`X-Sepulki-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`, plus
`X-Sepulki-Event` and `X-Sepulki-Delivery` (the delivery's id: the same on every retry, so a
receiver drops copies). The secret is shown once, when the endpoint is added; it is kept as is
because signing needs it. An endpoint that fails `webhook_disable_after` calls in a row is
disabled; updateWebhook(active: true) enables it again and its pending calls resume.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from app import audit
from app.context import Context, Viewer
from app.core import keyset
from app.core.errors import Invalid, NotFound
from app.infra.db import Connection, Pool, fetch_by_ids, returned

SEVERITIES = ("INFO", "WARNING", "CRITICAL")
DELIVERY_STATES = ("PENDING", "DELIVERED", "FAILED")

WEBHOOKS = "SELECT * FROM webhooks ORDER BY created_at DESC, id"
WEBHOOKS_BY_ID = "SELECT * FROM webhooks WHERE id = ANY($1::uuid[])"
INSERT_WEBHOOK = """
INSERT INTO webhooks (url, secret, description, severities, fleets, created_by)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING *
"""
UPDATE_WEBHOOK = """
UPDATE webhooks SET url = coalesce($2, url), description = coalesce($3, description),
  severities = coalesce($4, severities), fleets = coalesce($5, fleets),
  active = coalesce($6, active),
  consecutive_failures = CASE WHEN $6 THEN 0 ELSE consecutive_failures END,
  disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END
WHERE id = $1 RETURNING *
"""
DELETE_WEBHOOK = "DELETE FROM webhooks WHERE id = $1 RETURNING id"
DELIVERY_PAGE = """
SELECT * FROM notification_deliveries
WHERE ($1::uuid IS NULL OR webhook_id = $1) AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR channel = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) < ($4::timestamptz, $5::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $6
"""
ATTEMPTS_OF = """
SELECT * FROM notification_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, id
"""

# Claimed rows get a lease: a worker that dies mid-delivery leaves them to another after it.
# Calls of a disabled endpoint wait, PENDING, until it is enabled again.
CLAIM = """
UPDATE notification_deliveries d
SET leased_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
FROM (SELECT x.id FROM notification_deliveries x
      WHERE x.state = 'PENDING' AND x.next_attempt_at <= now()
        AND (x.leased_until IS NULL OR x.leased_until < now())
        AND (x.webhook_id IS NULL OR EXISTS (SELECT FROM webhooks w WHERE w.id = x.webhook_id AND w.active))
      ORDER BY x.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
WHERE d.id = due.id
RETURNING d.*, (SELECT to_jsonb(w) FROM webhooks w WHERE w.id = d.webhook_id) AS webhook
"""
LOG_ATTEMPT = """
INSERT INTO notification_attempts (delivery_id, attempt, status, error, duration_ms)
VALUES ($1, $2, $3, $4, $5)
"""
DELIVERED = """
UPDATE notification_deliveries
SET state = 'DELIVERED', delivered_at = now(), leased_until = NULL, last_status = $2, last_error = NULL
WHERE id = $1
"""
# Retried after backoff * 2^(attempts - 1), at most backoff_max; FAILED after the last attempt.
RETRY = """
UPDATE notification_deliveries
SET state = CASE WHEN attempts >= $4 THEN 'FAILED' ELSE 'PENDING' END,
    next_attempt_at = now() + make_interval(secs => least($5 * 2 ^ (attempts - 1), $6)),
    leased_until = NULL, last_status = $2, last_error = $3
WHERE id = $1
"""
ENDPOINT_OK = "UPDATE webhooks SET consecutive_failures = 0 WHERE id = $1"
ENDPOINT_FAILED = """
UPDATE webhooks SET consecutive_failures = consecutive_failures + 1,
  active = active AND consecutive_failures + 1 < $2,
  disabled_at = CASE WHEN active AND consecutive_failures + 1 >= $2 THEN now() ELSE disabled_at END
WHERE id = $1
"""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Sepulki-Signature header value of `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    """What a receiver does: recompute the HMAC and refuse stale timestamps (replays)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), f"t={t},v1={parts.get('v1', '')}")


def _url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 2000:
        raise Invalid("url must be an http(s) URL of at most 2000 characters", field="url")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url must be an http(s) URL, e.g. https://hooks.example.com/sepulki", field="url")
    return value


def _severities(values: Any) -> list[str] | None:
    if values is None:
        return None
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise Invalid(f"severities must be a non-empty list of {', '.join(SEVERITIES)}", field="severities")
    return list(dict.fromkeys(values))


async def webhooks_by_id(pool: Pool, ids: list[str]) -> list[dict[str, Any] | None]:
    return await fetch_by_ids(pool, WEBHOOKS_BY_ID, ids)


async def list_webhooks(ctx: Context) -> list[dict[str, Any]]:
    return [dict(r) for r in await ctx.db.fetch(WEBHOOKS)]


async def add(ctx: Context, viewer: Viewer, given: dict[str, Any]) -> dict[str, Any]:
    """A new endpoint; the returned row carries its secret (shown this once)."""
    url = _url(given.get("url"))
    severities = _severities(given.get("severities")) or list(SEVERITIES)
    fleets = list(dict.fromkeys(given.get("fleets") or []))
    secret = "whsec_" + secrets.token_urlsafe(32)
    async with ctx.db.acquire() as conn, conn.transaction():
        row = dict(
            returned(
                await conn.fetchrow(
                    INSERT_WEBHOOK, url, secret, given.get("description"), severities, fleets, viewer.id
                )
            )
        )
        await audit.record(conn, ctx, viewer.id, "addWebhook", "Webhook", str(row["id"]), {"url": url})
    return row


async def update(ctx: Context, viewer: Viewer, webhook_id: str, given: dict[str, Any]) -> dict[str, Any]:
    url = _url(given["url"]) if given.get("url") is not None else None
    severities = _severities(given.get("severities"))
    fleets = list(dict.fromkeys(given["fleets"])) if given.get("fleets") is not None else None
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            UPDATE_WEBHOOK, webhook_id, url, given.get("description"), severities, fleets, given.get("active")
        )
        if row is None:
            raise NotFound.of("Webhook", webhook_id)
        changes = {"url": row["url"], "active": row["active"]}
        await audit.record(conn, ctx, viewer.id, "updateWebhook", "Webhook", webhook_id, changes)
    return dict(row)


async def remove(ctx: Context, viewer: Viewer, webhook_id: str) -> str:
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchval(DELETE_WEBHOOK, webhook_id) is None:
            raise NotFound.of("Webhook", webhook_id)
        await audit.record(conn, ctx, viewer.id, "removeWebhook", "Webhook", webhook_id, {})
    return webhook_id


async def deliveries(
    ctx: Context, first: int | None, after: str | None, filter: dict[str, Any]
) -> dict[str, Any]:
    """The delivery log, newest first."""
    size = keyset.page_size(first)
    state = filter.get("state")
    if state is not None and state not in DELIVERY_STATES:
        raise Invalid(f"filter.state must be one of {', '.join(DELIVERY_STATES)}", field="filter.state")
    cursor_at, cursor_id = keyset.decode(after) if after is not None else (None, None)
    rows = await ctx.db.fetch(
        DELIVERY_PAGE, filter.get("webhook_id"), state, filter.get("channel"), cursor_at, cursor_id, size + 1
    )
    return keyset.page_of(rows, size, after)


async def attempts_of(pool: Pool, ids: list[str]) -> list[list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in await pool.fetch(ATTEMPTS_OF, ids):
        grouped[str(row["delivery_id"])].append(dict(row))
    return [grouped[i] for i in ids]


# --- the worker's side (app.workers.notify) -----------------------------------------------------


async def claim(conn: Connection, limit: int, lease_s: float) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(CLAIM, limit, lease_s)]


async def finish(
    conn: Connection,
    delivery: dict[str, Any],
    *,
    ok: bool,
    status: int | None,
    error: str | None,
    duration_ms: float,
    retry: tuple[int, float, float, int],
) -> None:
    """Records the attempt and moves the delivery (and its endpoint's failure count) on;
    `retry` = (max attempts, backoff, backoff max, failures before the endpoint is disabled)."""
    max_attempts, backoff, backoff_max, disable_after = retry
    async with conn.transaction():
        await conn.execute(LOG_ATTEMPT, delivery["id"], delivery["attempts"], status, error, duration_ms)
        if ok:
            await conn.execute(DELIVERED, delivery["id"], status)
        else:
            await conn.execute(RETRY, delivery["id"], status, error, max_attempts, backoff, backoff_max)
        if delivery["webhook_id"] is not None:
            if ok:
                await conn.execute(ENDPOINT_OK, delivery["webhook_id"])
            else:
                await conn.execute(ENDPOINT_FAILED, delivery["webhook_id"], disable_after)
