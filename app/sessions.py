"""Sessions of signed-in smiths. A session is one login: a refresh-token family whose token is
rotated on every refresh. Login (with its rate limits and lockout), refresh rotation and reuse
detection, logout, the smith's own session list, and revocation (announced to every API replica
so that the session's websockets close; app.realtime listens). docs/sessions.md has the rules."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from limits import parse

from app import audit
from app.context import Context, Viewer, forget_sessions
from app.core.channels import channels
from app.core.errors import Invalid, NotFound, RateLimited
from app.core.validation import parse_id
from app.infra.bus import Events
from app.infra.db import Connection, Pool
from app.infra.eventlog import Recorded, record
from app.infra.logs import mask_email
from app.infra.security import new_secret, secret_digest
from app.smiths import SMITH_BY_EMAIL, shown_to_self, smith_view, smiths_by_id

log = logging.getLogger("sepulki.sessions")

LOGIN_FAILED = "Invalid email or password"
REFRESH_FAILED = "Invalid or expired refresh token"
TOO_MANY_FROM_IP = "Too many login attempts from this address; try again later"
TOO_MANY_FOR_ACCOUNT = "Too many login attempts for this account; try again later"
LOCKED = "Too many failed logins for this account; try again later"
# Close reason of websockets whose subscriptions were authorized under a role the smith lost.
PERMISSIONS_CHANGED = "Permissions changed"
# Limiter key of a locked email, beside the email's own key that counts its failures.
LOCK_KEY = "locked:"

INSERT_SESSION = """
INSERT INTO sessions (smith_id, refresh_token_hash, ip_address, user_agent, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING id
"""
TOUCH_LOGIN = "UPDATE smiths SET last_login_at = now() WHERE id = $1"
# One statement: the presented token is swapped for the new one and retired in the same instant,
# so a concurrent refresh with the same token finds it retired (reuse), never still current.
ROTATE_SESSION = """
WITH rotated AS (
  UPDATE sessions ses
  SET refresh_token_hash = $2, last_used_at = now(), expires_at = now() + make_interval(secs => $3),
      ip_address = coalesce($4, ses.ip_address), user_agent = coalesce($5, ses.user_agent)
  FROM smiths s
  WHERE ses.refresh_token_hash = $1 AND ses.revoked_at IS NULL AND ses.expires_at > now()
    AND s.id = ses.smith_id AND s.is_active AND s.deleted_at IS NULL
  RETURNING ses.id, ses.smith_id
), retired AS (
  INSERT INTO retired_refresh_tokens (token_hash, session_id) SELECT $1, id FROM rotated
)
SELECT id, smith_id FROM rotated
"""
REVOKE_REUSED = """
UPDATE sessions SET revoked_at = now(), revoked_reason = 'refresh_token_reuse'
WHERE id = (SELECT session_id FROM retired_refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL
RETURNING id, smith_id
"""
REVOKE_SESSION = """
UPDATE sessions SET revoked_at = now(), revoked_reason = $3
WHERE id = $1 AND smith_id = $2 AND revoked_at IS NULL
RETURNING id
"""
REVOKE_SMITH_SESSIONS = """
UPDATE sessions SET revoked_at = now(), revoked_reason = $3
WHERE smith_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2::uuid)
RETURNING id
"""
SMITH_LIVE_SESSIONS = """
SELECT id FROM sessions WHERE smith_id = $1 AND revoked_at IS NULL AND expires_at > now()
"""
MY_SESSIONS = """
SELECT id, ip_address, user_agent, created_at, last_used_at, expires_at FROM sessions
WHERE smith_id = $1 AND revoked_at IS NULL AND expires_at > now()
ORDER BY last_used_at DESC, created_at DESC
"""
# The same conditions as the per-request viewer check (app.context.VIEWER_SQL).
LIVE_SESSIONS = """
SELECT ses.id FROM sessions ses JOIN smiths s ON s.id = ses.smith_id
WHERE ses.id = ANY($1::uuid[]) AND ses.revoked_at IS NULL AND ses.expires_at > now()
  AND s.is_active AND s.deleted_at IS NULL
"""


# -- revocation ---------------------------------------------------------------------------


async def _revocation(conn: Connection, session_ids: list[str], reason: str | None = None) -> Recorded | None:
    """The event (in the caller's transaction) that makes every replica close these sessions'
    websockets once `announce`d after the commit; None when there are none."""
    if not session_ids:
        return None
    data: dict[str, Any] = {"sessionIds": session_ids}
    if reason is not None:
        data["reason"] = reason
    return await record(conn, [channels.SESSIONS_REVOKED], data)


async def revoke_smith_sessions(
    conn: Connection, smith_id: str, *, reason: str, keep: str | None = None
) -> Recorded | None:
    """Revokes every live session of the smith but `keep`, in the caller's transaction.

    Publish the result with `announce` after the commit: replicas then close those sessions'
    websockets."""
    ids = [row["id"] for row in await conn.fetch(REVOKE_SMITH_SESSIONS, smith_id, keep, reason)]
    return await _revocation(conn, ids)


async def _revoke_session(conn: Connection, smith_id: str, session_id: str, reason: str) -> Recorded | None:
    """Revokes one live session of the smith (None when it has no such live session)."""
    revoked = await conn.fetchval(REVOKE_SESSION, session_id, smith_id, reason)
    return await _revocation(conn, [revoked] if revoked else [])


async def announce(events: Events, revoked: Recorded | None) -> None:
    if revoked is not None:
        # This process's viewer caches first: the request that revoked answers only after that,
        # so the very next request here is refused; other replicas drop them on the announcement.
        forget_sessions(revoked.payload["sessionIds"])
        await events.publish_recorded([revoked])


async def permissions_changed(conn: Connection, smith_id: str) -> Recorded | None:
    """Records, in the caller's transaction, that the smith's open websockets must close (publish
    with `announce`): their subscriptions were authorized with the old permissions. HTTP requests
    need nothing, they read the permissions per request; clients reconnect and are authorized anew."""
    ids = [row["id"] for row in await conn.fetch(SMITH_LIVE_SESSIONS, smith_id)]
    return await _revocation(conn, ids, PERMISSIONS_CHANGED)


async def live_session_ids(pool: Pool, session_ids: list[str]) -> set[str]:
    """Those of `session_ids` whose access tokens still work."""
    return {row["id"] for row in await pool.fetch(LIVE_SESSIONS, session_ids)}


# -- login --------------------------------------------------------------------------------


def _auth_payload(ctx: Context, smith: dict[str, Any], session_id: str, refresh: str) -> dict:
    token, exp = ctx.resources.tokens.issue(smith, session_id)
    return {
        "session": {
            "smith_id": smith["id"],
            "token": token,
            "refresh_token": refresh,
            "expires_at": datetime.fromtimestamp(exp, UTC),
            "role": smith["role"],
            "permissions": smith["permissions"],
        },
        # The caller proved to be this smith (password, invitation, refresh token).
        "smith": shown_to_self(smith),
        "errors": None,
    }


def _failure(message: str) -> dict[str, Any]:
    return {"session": None, "smith": None, "errors": [{"code": "UNAUTHENTICATED", "message": message}]}


async def _audit(
    ctx: Context, smith_id: str | None, action: str, session_id: str | None, changes: dict
) -> None:
    async with ctx.db.acquire() as conn:
        await audit.record(conn, ctx, smith_id, action, "SmithSession", session_id, changes)


async def login(ctx: Context, email: str, password: str) -> dict[str, Any]:
    """Signs in with email and password. Unknown email, wrong password and deactivated account
    answer the same and cost the same (one argon2 verification); failures count per lowercased
    email whether it exists or not, so the lockout does not tell which emails exist either."""
    email = email.strip()
    if not email or not password:
        raise Invalid("Email and password are required", field="credentials")
    account = email.lower()
    await _admit(ctx, account, email)
    row = await ctx.db.fetchrow(SMITH_BY_EMAIL, email)
    passwords = ctx.resources.passwords
    stored = row["password_hash"] if row is not None else passwords.dummy_hash
    matches = await passwords.verify(stored, password)
    if row is None or not row["is_active"] or not matches:
        return await _failed(ctx, account, email, row)
    await ctx.resources.limiter.clear("login_lockout", account)
    return await sign_in(ctx, smith_view(row))


async def _admit(ctx: Context, account: str, email: str) -> None:
    """Raises RateLimited when this attempt may not even be checked: too many from the address,
    the email locked, or too many attempts on it."""
    limiter = ctx.resources.limiter
    await limiter.hit("login_ip", ctx.client_ip or "unknown", TOO_MANY_FROM_IP)
    wait = await limiter.retry_after("login_lockout", LOCK_KEY + account)
    if wait is not None:
        await _audit(ctx, None, "login", None, {"outcome": "refused", "email": mask_email(email)})
        raise RateLimited(LOCKED, retry_after=wait)
    await limiter.hit("login_account", account, TOO_MANY_FOR_ACCOUNT)


async def clear_login_failures(ctx: Context, email: str) -> None:
    """Forgets the failed logins of `email` and lifts its lock (e.g. once its password was reset)."""
    account = email.strip().lower()
    await ctx.resources.limiter.clear("login_lockout", account)
    await ctx.resources.limiter.clear("login_lockout", LOCK_KEY + account)


async def _failed(ctx: Context, account: str, email: str, row: Any) -> dict[str, Any]:
    """Counts a failed login; the one past the allowance (`login_lockout`, e.g. the 6th of "5/15
    minutes") still answers as a failure but locks the email: later attempts are refused."""
    limiter = ctx.resources.limiter
    outcome = "failure"
    try:
        await limiter.hit("login_lockout", account)
    except RateLimited:
        outcome = "lockout"
        # A full window on the lock key: `retry_after` on it answers for one whole window from now.
        for _ in range(parse(ctx.resources.settings.login_lockout).amount):
            with contextlib.suppress(RateLimited):  # a concurrent failure locked it already
                await limiter.hit("login_lockout", LOCK_KEY + account)
        log.warning("login locked for %s after repeated failures", mask_email(email))
    changes: dict[str, Any] = {"outcome": outcome}
    if row is None:
        changes["email"] = mask_email(email)
    await _audit(ctx, row["id"] if row is not None else None, "login", None, changes)
    return _failure(LOGIN_FAILED)


async def sign_in(ctx: Context, smith: dict[str, Any]) -> dict[str, Any]:
    """Opens a session (a new refresh-token family) for `smith`, audited as a "login", and answers
    the auth payload."""
    refresh, digest = new_secret()
    ttl = float(ctx.resources.settings.refresh_token_ttl_s)
    async with ctx.db.acquire() as conn, conn.transaction():
        session_id = await conn.fetchval(
            INSERT_SESSION, smith["id"], digest, ctx.client_ip, ctx.user_agent, ttl
        )
        await conn.execute(TOUCH_LOGIN, smith["id"])
        await audit.record(
            conn, ctx, smith["id"], "login", "SmithSession", session_id, {"outcome": "success"}
        )
    return _auth_payload(ctx, smith, session_id, refresh)


# -- refresh, logout, the smith's sessions ------------------------------------------------


async def refresh(ctx: Context, refresh_token: str) -> dict[str, Any]:
    """A new token pair for a current refresh token. A retired one (already rotated away) means
    it leaked or was replayed: its whole session is revoked, with the same answer as a bad token."""
    presented = secret_digest(refresh_token)
    fresh, fresh_digest = new_secret()
    ttl = float(ctx.resources.settings.refresh_token_ttl_s)
    revoked: Recorded | None = None
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(ROTATE_SESSION, presented, fresh_digest, ttl, ctx.client_ip, ctx.user_agent)
        if row is not None:
            await audit.record(
                conn, ctx, row["smith_id"], "refreshToken", "SmithSession", row["id"], {"outcome": "success"}
            )
        else:
            reused = await conn.fetchrow(REVOKE_REUSED, presented)
            if reused is not None:
                revoked = await _revocation(conn, [reused["id"]])
                changes = {"outcome": "reuse", "revokedReason": "refresh_token_reuse"}
                await audit.record(
                    conn, ctx, reused["smith_id"], "refreshToken", "SmithSession", reused["id"], changes
                )
                log.warning("a retired refresh token was presented: session %s revoked", reused["id"])
    if row is None:
        await announce(ctx.events, revoked)
        return _failure(REFRESH_FAILED)
    smith = await ctx.loaders.load(smiths_by_id, row["smith_id"])
    if smith is None:  # deleted since the rotation
        return _failure(REFRESH_FAILED)
    return _auth_payload(ctx, smith, row["id"], fresh)


async def logout(ctx: Context, viewer: Viewer) -> bool:
    """Revokes the current session: its tokens stop working and its websockets close."""
    async with ctx.db.acquire() as conn, conn.transaction():
        revoked = await _revoke_session(conn, viewer.id, viewer.session_id, "logout")
        await audit.record(
            conn, ctx, viewer.id, "logout", "SmithSession", viewer.session_id, {"revokedReason": "logout"}
        )
    await announce(ctx.events, revoked)
    return True


async def my_sessions(ctx: Context, viewer: Viewer) -> list[dict[str, Any]]:
    rows = await ctx.db.fetch(MY_SESSIONS, viewer.id)
    return [dict(row) | {"current": row["id"] == viewer.session_id} for row in rows]


async def revoke(ctx: Context, viewer: Viewer, session_id: str) -> bool:
    """Revokes one of the viewer's own live sessions; any other id is not found."""
    session_id = parse_id(session_id)
    async with ctx.db.acquire() as conn, conn.transaction():
        revoked = await _revoke_session(conn, viewer.id, session_id, "revoked")
        if revoked is None:
            raise NotFound.of("SmithSession", session_id)
        await audit.record(
            conn, ctx, viewer.id, "revokeSession", "SmithSession", session_id, {"revokedReason": "revoked"}
        )
    await announce(ctx.events, revoked)
    return True


# -- housekeeping -------------------------------------------------------------------------

# Ended sessions stay this long (revoked ones show who signed out when), then go with the refresh
# tokens retired from them; spent or expired reset tokens go after a day.
ENDED_SESSION_KEEP_S = 30 * 24 * 3600
PRUNE_SESSIONS = """
DELETE FROM sessions
WHERE coalesce(revoked_at, expires_at) < now() - make_interval(secs => $1)
"""
PRUNE_RESETS = """
DELETE FROM password_resets WHERE coalesce(used_at, expires_at) < now() - interval '1 day'
"""


async def prune(pool: Pool, keep_s: float = ENDED_SESSION_KEEP_S) -> tuple[int, int]:
    """Deletes long-ended sessions (their retired refresh tokens cascade) and spent reset tokens."""
    sessions_status: str = await pool.execute(PRUNE_SESSIONS, float(keep_s))
    resets_status: str = await pool.execute(PRUNE_RESETS)
    return int(sessions_status.split()[-1]), int(resets_status.split()[-1])
