"""Sessions of signed-in smiths: one row per login (a refresh-token family): login, refresh
rotation, logout and revocation."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from app.context import Context, Viewer
from app.errors import Invalid
from app.pubsub import Events, Recorded, channels, record
from app.smiths import SMITH_BY_EMAIL, smith_view, smiths_by_id

REFRESH_TTL = timedelta(days=7)

INSERT_SESSION = """
INSERT INTO sessions (smith_id, refresh_token_hash, ip_address, user_agent, expires_at)
VALUES ($1, $2, $3, $4, $5) RETURNING id
"""
ROTATE_SESSION = """
UPDATE sessions SET refresh_token_hash = $2, last_used_at = now(), expires_at = $3
WHERE refresh_token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
RETURNING id, smith_id
"""
REVOKE_SESSION = "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
TOUCH_LOGIN = "UPDATE smiths SET last_login_at = now() WHERE id = $1"


REVOKE_SMITH_SESSIONS = """
UPDATE sessions SET revoked_at = now(), revoked_reason = $3
WHERE smith_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2::uuid)
RETURNING id
"""


async def revoke_smith_sessions(
    conn: asyncpg.Connection, smith_id: str, *, reason: str, keep: str | None = None
) -> Recorded | None:
    """Revokes every live session of the smith but `keep`, in the caller's transaction.

    Publish the result with `announce` after the commit: replicas then close those sessions'
    websockets."""
    ids = [row["id"] for row in await conn.fetch(REVOKE_SMITH_SESSIONS, smith_id, keep, reason)]
    return await record(conn, [channels.SESSIONS_REVOKED], {"sessionIds": ids}) if ids else None


async def announce(events: Events, revoked: Recorded | None) -> None:
    if revoked is not None:
        await events.publish_recorded([revoked])


def _hash_refresh(token: str) -> str:
    # Refresh tokens are 256-bit random values: a plain SHA-256 is enough to store them safely.
    return hashlib.sha256(token.encode()).hexdigest()


def _auth_payload(ctx: Context, smith: dict[str, Any], session_id: str, refresh: str) -> dict:
    token, exp = ctx.services.tokens.issue(smith, session_id)
    return {
        "session": {
            "smith_id": smith["id"],
            "token": token,
            "refresh_token": refresh,
            "expires_at": datetime.fromtimestamp(exp, UTC),
            "role": smith["role"],
            "permissions": smith["permissions"],
        },
        "smith": smith,
        "errors": None,
    }


def _failure(message: str, code: str = "UNAUTHENTICATED") -> dict[str, Any]:
    return {"session": None, "smith": None, "errors": [{"code": code, "message": message}]}


async def login(ctx: Context, email: str, password: str) -> dict[str, Any]:
    if not email.strip() or not password:
        raise Invalid("Email and password are required", field="credentials")
    row = await ctx.db.fetchrow(SMITH_BY_EMAIL, email.strip())
    passwords = ctx.services.passwords
    if row is None or not row["is_active"]:
        await passwords.verify(passwords.dummy_hash, password)
        return _failure("Invalid email or password")
    if not await passwords.verify(row["password_hash"], password):
        return _failure("Invalid email or password")
    return await sign_in(ctx, smith_view(row))


async def sign_in(ctx: Context, smith: dict[str, Any]) -> dict[str, Any]:
    """Opens a session (a new refresh-token family) for `smith` and answers the auth payload."""
    refresh = secrets.token_urlsafe(32)
    async with ctx.db.acquire() as conn, conn.transaction():
        session_id = await conn.fetchval(
            INSERT_SESSION,
            smith["id"],
            _hash_refresh(refresh),
            ctx.client_ip,
            ctx.user_agent,
            datetime.now(UTC) + REFRESH_TTL,
        )
        await conn.execute(TOUCH_LOGIN, smith["id"])
    return _auth_payload(ctx, smith, session_id, refresh)


async def refresh(ctx: Context, refresh_token: str) -> dict[str, Any]:
    new_refresh = secrets.token_urlsafe(32)
    row = await ctx.db.fetchrow(
        ROTATE_SESSION,
        _hash_refresh(refresh_token),
        _hash_refresh(new_refresh),
        datetime.now(UTC) + REFRESH_TTL,
    )
    if row is None:
        return _failure("Invalid or expired refresh token")
    smith = await ctx.loaders.load(smiths_by_id, row["smith_id"])
    if smith is None or not smith["is_active"]:
        return _failure("Invalid or expired refresh token")
    return _auth_payload(ctx, smith, row["id"], new_refresh)


async def logout(ctx: Context, viewer: Viewer) -> bool:
    await ctx.db.execute(REVOKE_SESSION, viewer.session_id)
    return True
